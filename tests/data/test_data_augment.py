"""Augmentation, minibatching and channel normalisation against naive per-image loops.

The loops replay the draws each function documents (same seed, same calls, same order), so the
vectorised code must agree with them exactly.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.data import augment as A

DTYPES = [np.uint8, np.float32, np.float64]


def _images(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(dtype)


# ---- naive references ----------------------------------------------------------------------------


def naive_crop(x, offsets, pad):
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for k in range(n):
        canvas = np.zeros((c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
        canvas[:, pad : pad + h, pad : pad + w] = x[k]
        top, left = offsets[k]
        for i in range(h):
            for j in range(w):
                out[k, :, i, j] = canvas[:, top + i, left + j]
    return out


def naive_flip(x, flips):
    out = np.empty_like(x)
    w = x.shape[3]
    for k in range(x.shape[0]):
        for j in range(w):
            out[k, :, :, j] = x[k, :, :, w - 1 - j] if flips[k] else x[k, :, :, j]
    return out


shapes = st.tuples(st.integers(0, 5), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))  # N may be 0


# ---- crop and flip ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes, pad=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_random_crop_matches_naive_loop_with_same_draws(dtype, shape, pad, seed):
    x = _images(seed, shape, dtype)
    before = x.copy()
    got = A.random_crop(x, pad=pad, rng=np.random.default_rng(seed))
    offsets = np.random.default_rng(seed).integers(0, 2 * pad + 1, size=(shape[0], 2))
    np.testing.assert_array_equal(got, naive_crop(x, offsets, pad))
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_array_equal(x, before)  # input untouched


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes, p=st.sampled_from([0.0, 0.3, 0.5, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_random_hflip_matches_naive_loop_with_same_draws(dtype, shape, p, seed):
    x = _images(seed, shape, dtype)
    before = x.copy()
    got = A.random_hflip(x, p=p, rng=seed)  # an int seed means default_rng(seed)
    flips = np.random.default_rng(seed).random(shape[0]) < p
    np.testing.assert_array_equal(got, naive_flip(x, flips))
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(x, before)


@given(shape=shapes, pad=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_random_crop_flip_is_crop_then_flip_from_one_generator(shape, pad, seed):
    x = _images(seed, shape, np.float32)
    got = A.random_crop_flip(x, pad=pad, rng=np.random.default_rng(seed))
    g = np.random.default_rng(seed)
    offsets = g.integers(0, 2 * pad + 1, size=(shape[0], 2))
    flips = g.random(shape[0]) < 0.5
    np.testing.assert_array_equal(got, naive_flip(naive_crop(x, offsets, pad), flips))
    g = np.random.default_rng(seed)  # the documented equivalence with the two separate calls
    np.testing.assert_array_equal(got, A.random_hflip(A.random_crop(x, pad=pad, rng=g), rng=g))


def test_crop_offsets_cover_the_whole_range_and_centre_is_identity():
    x = _images(0, (2000, 1, 3, 3), np.float64) + 10.0  # nonzero, so padding is visible
    out = A.random_crop(x, pad=2, rng=1)
    offsets = np.random.default_rng(1).integers(0, 5, size=(2000, 2))
    assert set(map(tuple, offsets)) == {(a, b) for a in range(5) for b in range(5)}
    centre = np.all(offsets == 2, axis=1)
    np.testing.assert_array_equal(out[centre], x[centre])
    corner = np.all(offsets == 0, axis=1)  # shifted down-right by 2: only pixel (2, 2) <- x[0, 0]
    assert np.all(out[corner][:, :, :2, :] == 0) and np.all(out[corner][:, :, 2, 2] == x[corner][:, :, 0, 0])


def test_flip_probability_is_respected_statistically():
    x = np.arange(2, dtype=np.float32).reshape(1, 1, 1, 2).repeat(20000, axis=0)
    out = A.random_hflip(x, p=0.3, rng=5)
    rate = np.mean(out[:, 0, 0, 0] == 1.0)
    assert abs(rate - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 20000)  # 4 sigma


def test_same_seed_same_result_and_generator_advances():
    x = _images(3, (8, 3, 5, 5), np.float32)
    np.testing.assert_array_equal(A.random_crop_flip(x, rng=7), A.random_crop_flip(x, rng=7))
    g = np.random.default_rng(7)
    first, second = A.random_crop_flip(x, rng=g), A.random_crop_flip(x, rng=g)
    assert not np.array_equal(first, second)


# ---- minibatches --------------------------------------------------------------------------------


@given(
    n=st.integers(0, 30),
    batch_size=st.integers(1, 12),
    drop_last=st.booleans(),
    seed=st.none() | st.integers(0, 2**32 - 1),
)
def test_iterate_minibatches_against_reference_order(n, batch_size, drop_last, seed):
    x = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    y = np.arange(n, dtype=np.int64) * 10
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    expected = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and expected and len(expected[-1]) < batch_size:
        expected.pop()
    got = list(A.iterate_minibatches(x, y, batch_size, rng=seed, drop_last=drop_last))
    assert len(got) == len(expected)
    for (xb, yb), idx in zip(got, expected, strict=True):
        np.testing.assert_array_equal(xb, x[idx])
        np.testing.assert_array_equal(yb, y[idx])
    if not drop_last:  # every sample exactly once
        seen = np.concatenate([yb for _, yb in got]) if got else np.array([], dtype=np.int64)
        np.testing.assert_array_equal(np.sort(seen), y)


def test_minibatches_are_copies():
    x = np.zeros((6, 1, 2, 2), dtype=np.float32)
    y = np.zeros(6, dtype=np.int64)
    for xb, yb in A.iterate_minibatches(x, y, 4):  # in-order batches could have been views
        xb += 1.0
        yb += 1
    assert not x.any() and not y.any()


def test_minibatch_shuffle_differs_per_epoch_with_one_generator():
    x = np.arange(50)[:, None]
    y = np.arange(50)
    g = np.random.default_rng(0)
    e1 = np.concatenate([b for _, b in A.iterate_minibatches(x, y, 7, rng=g)])
    e2 = np.concatenate([b for _, b in A.iterate_minibatches(x, y, 7, rng=g)])
    assert not np.array_equal(e1, e2) and np.array_equal(np.sort(e1), y) and np.array_equal(np.sort(e2), y)


# ---- channel statistics and normalisation ------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_channel_stats_against_float64_numpy(dtype):
    # 4,100 images: more than one accumulation chunk (4,096)
    x = _images(11, (4100, 3, 2, 3), dtype)
    if np.dtype(dtype) != np.uint8:
        x = (
            x * np.array([1.0, 3.0, 0.5])[None, :, None, None]
            + np.array([5.0, -2.0, 100.0])[None, :, None, None]
        ).astype(dtype)
    mean, std = A.channel_stats(x)
    ref = x.astype(np.float64)
    want_mean = ref.mean(axis=(0, 2, 3))
    want_std = ref.std(axis=(0, 2, 3))
    out_dtype = np.float64 if np.dtype(dtype) == np.uint8 else dtype
    assert mean.dtype == out_dtype and std.dtype == out_dtype and mean.shape == (3,)
    tol = np.finfo(out_dtype).eps  # float64 sums, rounded once to the output dtype
    np.testing.assert_allclose(mean, want_mean, rtol=tol, atol=0)
    np.testing.assert_allclose(std, want_std, rtol=4 * tol if out_dtype == np.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_normalize_channels_matches_naive_loop_exactly(dtype, shape, seed):
    x = _images(seed, shape, dtype)
    rng = np.random.default_rng(seed + 1)
    mean = rng.standard_normal(shape[1]).astype(dtype)
    std = rng.uniform(0.1, 3.0, shape[1]).astype(dtype)
    before = x.copy(), mean.copy(), std.copy()
    got = A.normalize_channels(x, mean, std)
    want = np.empty_like(x)
    for c in range(shape[1]):  # elementwise IEEE ops in the same dtype: bit-identical
        want[:, c] = (x[:, c] - mean[c]) / std[c]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == x.dtype
    for a, b in zip((x, mean, std), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_normalize_channels_gives_zero_mean_unit_std_and_accepts_sequences():
    x = _images(2, (500, 3, 4, 4), np.float64) * 3.0 + 7.0
    out = A.normalize_channels(x, *A.channel_stats(x))
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, rtol=1e-12)
    x32 = x.astype(np.float32)
    seq = A.normalize_channels(x32, (0.5, 1, np.float64(2.0)), [2.0, 2.0, 2.0])
    arr = A.normalize_channels(x32, np.array([0.5, 1, 2], np.float32), np.full(3, 2, np.float32))
    np.testing.assert_array_equal(seq, arr)
    np.testing.assert_array_equal(A.normalize_channels(x32, 1.0, 2.0), (x32 - np.float32(1)) / np.float32(2))


# ---- errors --------------------------------------------------------------------------------------


X = np.zeros((2, 1, 3, 3), dtype=np.float32)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: A.random_crop([[1]], rng=0), TypeError, r"random_crop: x must be a numpy.ndarray"),
        (
            lambda: A.random_crop(X[0], rng=0),
            ValueError,
            r"random_crop: x must be 4-dimensional \(N, C, H, W\)",
        ),
        (
            lambda: A.random_crop(X, pad=-1, rng=0),
            ValueError,
            r"random_crop: pad must be in \[0, inf\], got -1",
        ),
        (lambda: A.random_crop(X, pad=1.0, rng=0), TypeError, r"random_crop: pad must be an integer"),
        (lambda: A.random_crop(X, rng=None), TypeError, r"random_crop: rng must be a numpy.random.Generator"),
        (lambda: A.random_hflip(X, p=1.5, rng=0), ValueError, r"random_hflip: p must be a probability"),
        (lambda: A.random_hflip(X, p="a", rng=0), TypeError, r"random_hflip: p must be a real number"),
        (lambda: A.random_hflip(X, rng=-3), ValueError, r"random_hflip: rng must be"),
        (lambda: A.random_hflip(X[None], rng=0), ValueError, r"random_hflip: x must be 4-dimensional"),
        (lambda: A.random_crop_flip(X, pad=-2, rng=0), ValueError, r"random_crop_flip: pad must be in"),
        (
            lambda: A.random_crop_flip(X, p=-0.1, rng=0),
            ValueError,
            r"random_crop_flip: p must be a probability",
        ),
        (lambda: A.random_crop_flip(X, rng="x"), TypeError, r"random_crop_flip: rng must be"),
        (lambda: A.random_crop_flip(1.0, rng=0), TypeError, r"random_crop_flip: x must be a numpy.ndarray"),
        (lambda: A.channel_stats(X[0]), ValueError, r"channel_stats: x must be 4-dimensional"),
        (
            lambda: A.channel_stats(X.astype(bool)),
            TypeError,
            r"channel_stats: x must have a float or integer",
        ),
        (lambda: A.channel_stats(X[:0]), ValueError, r"channel_stats: x must hold at least one pixel"),
        (
            lambda: A.normalize_channels(X.astype(np.uint8), 0.0, 1.0),
            TypeError,
            r"normalize_channels: x must have dtype in",
        ),
        (
            lambda: A.normalize_channels(X, np.zeros(1), np.ones(1, np.float32)),
            TypeError,
            r"mean.dtype \(=float64\) must equal x.dtype",
        ),
        (
            lambda: A.normalize_channels(X, [0.0, 1.0], 1.0),
            ValueError,
            r"normalize_channels: mean must have shape \(1,\), got \(2,\)",
        ),
        (
            lambda: A.normalize_channels(X, 0.0, [0.0]),
            ValueError,
            r"normalize_channels: std must be finite and > 0",
        ),
        (
            lambda: A.normalize_channels(X, 0.0, [np.inf]),
            ValueError,
            r"normalize_channels: std must be finite and > 0",
        ),
        (
            lambda: A.normalize_channels(X, [np.nan], 1.0),
            ValueError,
            r"normalize_channels: mean must be finite",
        ),
        (
            lambda: A.normalize_channels(X, ["a"], 1.0),
            TypeError,
            r"normalize_channels: mean must be real numbers",
        ),
        (
            lambda: A.normalize_channels(X, True, 1.0),
            TypeError,
            r"normalize_channels: mean must be an ndarray",
        ),
        (
            lambda: A.normalize_channels(X, 0.0, {1: 2}),
            TypeError,
            r"normalize_channels: std must be an ndarray",
        ),
        (
            lambda: A.iterate_minibatches([1], np.zeros(1), 1),
            TypeError,
            r"iterate_minibatches: x must be a numpy",
        ),
        (lambda: A.iterate_minibatches(X, [0, 1], 1), TypeError, r"iterate_minibatches: y must be a numpy"),
        (
            lambda: A.iterate_minibatches(X, np.zeros(3), 1),
            ValueError,
            r"y.shape\[0\] \(=3\) must equal x.shape\[0\] \(=2\)",
        ),
        (lambda: A.iterate_minibatches(np.zeros(()), np.zeros(()), 1), ValueError, r"leading sample axis"),
        (
            lambda: A.iterate_minibatches(X, np.zeros(2), 0),
            ValueError,
            r"batch_size must be in \[1, inf\], got 0",
        ),
        (lambda: A.iterate_minibatches(X, np.zeros(2), 2.0), TypeError, r"batch_size must be an integer"),
        (
            lambda: A.iterate_minibatches(X, np.zeros(2), 1, drop_last=1),
            TypeError,
            r"drop_last must be a bool",
        ),
        (
            lambda: A.iterate_minibatches(X, np.zeros(2), 1, rng=1.5),
            TypeError,
            r"iterate_minibatches: rng must be",
        ),
        (lambda: A.crop_with_offsets(X[0], np.zeros((2, 2), int), 1), ValueError, r"crop_with_offsets: x"),
        (lambda: A.crop_with_offsets(X, np.zeros((2, 2), int), -1), ValueError, r"pad must be in \[0, inf\]"),
        (lambda: A.crop_with_offsets(X, [[0, 0], [0, 0]], 1), TypeError, r"offsets must be a numpy.ndarray"),
        (lambda: A.crop_with_offsets(X, np.zeros((2, 2)), 1), TypeError, r"offsets must have an integer dt"),
        (
            lambda: A.crop_with_offsets(X, np.zeros((3, 2), int), 1),
            ValueError,
            r"crop_with_offsets: offsets must have shape \(2, 2\), got \(3, 2\)",
        ),
        (  # a negative offset would wrap around to the last window if it reached the indexing
            lambda: A.crop_with_offsets(X, np.array([[0, 0], [-1, 0]]), 1),
            ValueError,
            r"crop_with_offsets: offsets must be in \[0, 2 \* pad\] = \[0, 2\], got values in \[-1, 0\]",
        ),
        (lambda: A.crop_with_offsets(X, np.array([[0, 3], [0, 0]]), 1), ValueError, r"values in \[0, 3\]"),
        (lambda: A.flip_where(X, [True, False]), TypeError, r"flip_where: flip must be a numpy.ndarray"),
        (lambda: A.flip_where(X, np.ones(2)), TypeError, r"flip_where: flip must have dtype bool, got float"),
        (lambda: A.flip_where(X, np.ones(3, bool)), ValueError, r"flip must have shape \(2,\), got \(3,\)"),
        (lambda: A.flip_where(X[0], np.ones(2, bool)), ValueError, r"flip_where: x must be 4-dimensional"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()  # the generator function validates at the call, before any next()
