"""Weight scaling: constants t / max|W| computed independently, stored words from NumPy casts."""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from saf_ref.bits.quantize import Quantizer
from saf_ref.protect.scaling import scale_constants, scale_target, weight_scaling_spec
from saf_ref.protect.storage import (
    StorageRule,
    StorageSpec,
    default_spec,
    effective_weights,
    effective_weights_backward,
    load,
    store,
)

SHAPES = {
    "conv1.weight": (4, 3, 3, 3),
    "bn1.weight": (4,),
    "bn1.bias": (4,),
    "fc.weight": (3, 4),
    "fc.bias": (3,),
}
WEIGHTS = ("conv1.weight", "fc.weight")
DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}


def make_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    # Different magnitudes per tensor, so the constants differ.
    return {
        k: (rng.standard_normal(shape) * (0.05 + 0.4 * i)).astype(dtype)
        for i, (k, shape) in enumerate(SHAPES.items())
    }


def test_scale_target():
    assert scale_target("q2.5") == 4 - 2**-5
    assert scale_target("q0.7") == 1 - 2**-7
    assert scale_target(Quantizer(8)) == 1.0
    # IEEE: the largest power of two <= the largest finite value (ml_dtypes' finfo, independently).
    for name, dtype in DTYPES.items():
        fmax = float(ml_dtypes.finfo(dtype).max)
        assert scale_target(name) == 2.0 ** math.floor(math.log2(fmax)), name
    assert scale_target("float64") == 2.0**1023


def test_scale_constants_against_independent_max():
    params = make_params()
    consts = scale_constants(params, 2.0)
    assert list(consts) == list(WEIGHTS)  # only conv/linear weights by default, in order
    for k, c in consts.items():
        m = max(abs(float(x)) for x in params[k].reshape(-1))  # a plain loop
        assert c == 2.0 / m
    every = scale_constants(params, 1.0, roles=("weight", "bias", "bn"))
    assert list(every) == list(SHAPES)


def test_scale_constants_power_of_two_and_zeros():
    params = make_params()
    params["fc.weight"][...] = 0.0
    consts = scale_constants(params, 3.0, power_of_two=True)
    assert consts["fc.weight"] == 1.0
    c = consts["conv1.weight"]
    m = float(np.abs(params["conv1.weight"]).max())
    assert math.log2(c) == int(math.log2(c))  # a power of two
    assert c <= 3.0 / m < 2 * c


@pytest.mark.parametrize("fmt", ["float32", "float16"])
def test_stored_words_are_scaled_and_read_back(fmt):
    params = make_params()
    spec = weight_scaling_spec(params, 1.0, fmt)
    consts = scale_constants(params, 1.0)
    stored = store(params, spec)
    eff = load(stored)
    np_dtype = np.float32 if fmt == "float32" else np.float16
    view = np.uint32 if fmt == "float32" else np.uint16
    for k, u in params.items():
        s = np.float32(consts.get(k, 1.0))
        ref = (u * s).astype(np_dtype)  # scaled in float32, then NumPy's RNE cast
        np.testing.assert_array_equal(stored[k].codes, ref.view(view))
        np.testing.assert_array_equal(eff[k], ref.astype(np.float32) / s)
    # The largest stored magnitude of each scaled tensor is the target (rounding aside).
    for k in WEIGHTS:
        assert abs(np.abs(stored[k].codes.view(np_dtype)).max() - 1.0) <= 2**-10


def test_power_of_two_scaling_is_exact_in_float32():
    params = make_params()
    eff = load(store(params, weight_scaling_spec(params, 1.0, "float32", power_of_two=True)))
    for k, u in params.items():
        np.testing.assert_array_equal(eff[k].view(np.uint32), u.view(np.uint32))


def test_fixed_point_scaling_fills_the_range_and_shrinks_the_error():
    params = make_params()
    spec = weight_scaling_spec(params, "auto", "q2.5")
    consts = scale_constants(params, 4 - 2**-5)
    eff = load(store(params, spec))
    plain = load(store(params, default_spec("q2.5")))
    for k in WEIGHTS:
        x = params[k].astype(np.float64)
        s = consts[k]
        err = np.abs(eff[k] - x).max()
        # Error <= half a step of the scaled grid, divided back by s (plus float32 roundings of s u, / s).
        assert err <= 2**-6 / s + 4 * np.spacing(np.float32(np.abs(x).max()))
        assert err < np.abs(plain[k] - x).max()
    for k in ("bn1.weight", "bn1.bias", "fc.bias"):  # not scaled
        np.testing.assert_array_equal(eff[k], plain[k])


def test_scaled_spec_serialises_and_keeps_base_rules():
    params = make_params()
    base = default_spec("float16", "tanh", expose_non_weights=False, weight_clip=2.0)
    spec = weight_scaling_spec(params, 0.5, base=base)
    assert spec.rules[len(WEIGHTS):] == base.rules
    rules = spec.resolve(SHAPES)
    consts = scale_constants(params, 0.5)
    for k in SHAPES:
        r = rules[k]
        assert r.scale == consts.get(k)
        assert r.format_name == "float16"
        assert r.exposed == (k in WEIGHTS)
        assert r.transform.name == ("tanh" if k in WEIGHTS else "identity")
        assert r.clip == (2.0 if k in WEIGHTS else None)
    again = StorageSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_names_with_glob_characters_are_matched_exactly():
    params = {"a[0].weight": np.ones((2, 2), np.float32), "a0.weight": np.full((2, 2), 4.0, np.float32)}
    rules = weight_scaling_spec(params, 1.0).resolve({k: v.shape for k, v in params.items()})
    assert rules["a[0].weight"].scale == 1.0 and rules["a0.weight"].scale == 0.25


def test_gradient_through_scaling_is_the_transform_derivative():
    # w = f((s u) / s): the scale cancels in the chain rule, du = f'(u_hat / s) dw, checked against
    # central differences in float64.
    params = make_params(np.float64)
    spec = weight_scaling_spec(params, 3.0, "float64", transform="arctan")
    rng = np.random.default_rng(2)
    g = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    _, cache = effective_weights(params, spec)
    grads = effective_weights_backward(g, cache)

    def loss(p):
        eff, _ = effective_weights(p, spec)
        return sum(float(np.sum(g[k] * eff[k])) for k in eff)

    h = 1e-6
    for k in WEIGHTS:
        for i in (0, params[k].size - 1):
            plus = {n: v.copy() for n, v in params.items()}
            minus = {n: v.copy() for n, v in params.items()}
            plus[k].reshape(-1)[i] += h
            minus[k].reshape(-1)[i] -= h
            fd = (loss(plus) - loss(minus)) / (2 * h)
            assert abs(grads[k].reshape(-1)[i] - fd) <= 1e-7 * max(1.0, abs(fd))
            u = params[k].reshape(-1)[i]
            assert abs(grads[k].reshape(-1)[i] - g[k].reshape(-1)[i] / (1 + u * u)) <= 1e-12


def test_validation():
    params = make_params()
    with pytest.raises(ValueError, match="scale_constants: target must be a finite positive number"):
        scale_constants(params, 0.0)
    with pytest.raises(TypeError, match="scale_constants: target must be a real number"):
        scale_constants(params, "1")
    with pytest.raises(TypeError, match="scale_constants: power_of_two must be a bool"):
        scale_constants(params, 1.0, power_of_two=1)
    with pytest.raises(TypeError, match="scale_constants: roles must be a tuple of role names"):
        scale_constants(params, 1.0, roles="weight")
    with pytest.raises(ValueError, match=r"scale_constants: roles\[1\] must be one of .*, got 'conv'"):
        scale_constants(params, 1.0, roles=("weight", "conv"))
    tiny = {"fc.weight": np.full((2, 2), 1e-320)}  # a subnormal float64 maximum: 1e10 / 1e-320 overflows
    for p2 in (False, True):  # the power-of-two rounding used to turn the inf into 0.5
        match = r"scale_constants: the scale for 'fc.weight', target / max\|W\| = 10000000000.0 / 1e-320, "
        with pytest.raises(ValueError, match=match + "must be finite and positive, got inf"):
            scale_constants(tiny, 1e10, power_of_two=p2)
    with pytest.raises(TypeError, match="scale_constants: params must be a dict"):
        scale_constants([params["fc.weight"]], 1.0)
    bad = dict(params)
    bad["fc.weight"] = np.float32([[np.inf, 1.0]])
    with pytest.raises(ValueError, match=r"scale_constants: params\['fc.weight'\] must be finite"):
        scale_constants(bad, 1.0)
    with pytest.raises(TypeError, match="weight_scaling_spec: target must be a real number"):
        weight_scaling_spec(params, "max")
    with pytest.raises(ValueError, match="weight_scaling_spec: target must be a finite positive number"):
        weight_scaling_spec(params, -1.0)
    with pytest.raises(TypeError, match="weight_scaling_spec: base must be a StorageSpec"):
        weight_scaling_spec(params, 1.0, base=[StorageRule()])
    with pytest.raises(ValueError, match="weight_scaling_spec: format, transform and expose_non_weights"):
        weight_scaling_spec(params, 1.0, "float16", base=default_spec())
    with pytest.raises(ValueError, match="weight_scaling_spec: parameter 'fc.bias'"):
        weight_scaling_spec(params, 1.0, base=StorageSpec([StorageRule("*", role="weight"),
                                                            StorageRule("bn*")]))
    with pytest.raises(ValueError, match="scale_target: format must be an IEEE format name"):
        scale_target("float12")


# ==================================================================================================
# The analysis of docs/weight_scaling.md, checked number by number against an enumeration of codes
# (ml_dtypes / NumPy bit views; nothing of saf_ref) and, at the end, against the library's read path.
# ==================================================================================================

DOC = Path(__file__).resolve().parents[2] / "docs" / "weight_scaling.md"


def doc_table(name):
    """The rows of the markdown table after ``<!-- table: name -->`` in the doc, as lists of cells."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- table: {name} -->") + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    assert len(rows) > 2, name
    return rows[2:]  # without the header and the |---| line


def number(text):
    """``2^-14``, ``7/6``, ``65504``, ``3.4e38`` -> float (exact for the forms used in the doc)."""
    if "^" in text:
        base, exp = text.split("^")
        return float(base) ** int(exp)
    if "/" in text:
        return float(Fraction(text))
    return float(text)


def layout(dtype):
    """(exponent bits E, mantissa bits m, word bits, unsigned view dtype) from ml_dtypes.finfo."""
    fi = ml_dtypes.finfo(dtype)
    nbits = 1 + fi.nexp + fi.nmant
    return fi.nexp, fi.nmant, nbits, {8: np.uint8, 16: np.uint16, 32: np.uint32}[nbits]


def codes_of(dtype):
    """Every code of a format of <= 16 bits; for float32 every exponent field with 8 mantissas and both
    signs (the exponent-bit flips depend on the field only, the mantissa decides inf vs NaN)."""
    E, m, nbits, view = layout(dtype)
    if nbits <= 16:
        return np.arange(2**nbits, dtype=np.uint32).astype(view)
    rng = np.random.default_rng(0)
    mant = np.concatenate([[0, 1, 2**22, 2**22 + 1, 2**23 - 1], rng.integers(0, 2**23, 3)]).astype(np.uint32)
    fields = np.arange(2**E, dtype=np.uint32)
    words = (fields[:, None] << np.uint32(m)) | mant[None, :]
    return np.concatenate([words.ravel(), words.ravel() | np.uint32(1 << 31)])


def values(codes, dtype):
    with np.errstate(invalid="ignore"):
        return codes.view(dtype).astype(np.float64)


def single_flips(codes, dtype):
    """Decoded values of every single-bit flip: shape (n_codes, nbits), column b = bit b flipped."""
    _, _, nbits, view = layout(dtype)
    masks = np.left_shift(np.ones(nbits, dtype=view), np.arange(nbits, dtype=view))
    return values(codes[:, None] ^ masks[None, :], dtype)


def flip_stats(dtype):
    """Finite nonzero codes: |x|, whether some single flip is non-finite, the largest |x'| / |x|."""
    codes = codes_of(dtype)
    x = values(codes, dtype)
    keep = np.isfinite(x) & (x != 0)
    codes, x = codes[keep], np.abs(x[keep])
    flipped = np.abs(single_flips(codes, dtype))
    nonfinite = ~np.isfinite(flipped).all(axis=1)
    growth = np.where(np.isfinite(flipped), flipped, 0.0).max(axis=1) / x
    return x, nonfinite, growth


def test_doc_formats_table():
    rows = doc_table("formats")
    assert [r[0] for r in rows] == list(DTYPES)
    for name, e_bits, m_bits, bias, msb, fmax, target, g, factor, one in rows:
        dtype = DTYPES[name]
        E, m, nbits, view = layout(dtype)
        fi = ml_dtypes.finfo(dtype)
        assert (int(e_bits), int(m_bits), int(msb)) == (E, m, m + E - 1), name
        assert int(bias) == 2 ** (E - 1) - 1, name
        assert number(fmax) == float(fi.max), name
        assert number(target) == scale_target(name) == 2.0 ** math.floor(math.log2(float(fi.max))), name
        assert number(g) == float(fi.max) / number(target), name
        # The exponent MSB flipped in 0.5 (field bias-1) multiplies by 2**(bias+1); in 1.0, what the doc says.
        half, unit = np.array([0.5, 1.0], dtype=dtype).view(view)
        msb_mask = view(1 << (m + E - 1))
        assert number(factor) == 2.0 ** (int(bias) + 1), name
        assert values(np.array([half ^ msb_mask]), dtype)[0] == 0.5 * number(factor), name
        got = values(np.array([unit ^ msb_mask]), dtype)[0]
        assert (str(got) if not np.isfinite(got) else repr(int(got))) == one, name


def test_doc_windows_table():
    """Each range [lo, hi): no single flip of a code in it is non-finite, the largest growth |x'|/|x| is
    the stated one (and attained), and the range is maximal (the codes just outside break one of the
    two: a non-finite flip or a larger growth)."""
    rows = doc_table("windows")
    assert sorted({r[0] for r in rows}) == sorted(DTYPES)
    for name in DTYPES:
        x, nonfinite, growth = flip_stats(DTYPES[name])
        for _, lo, hi, bound in (r for r in rows if r[0] == name):
            lo, hi, bound = number(lo), number(hi), number(bound)
            inside = (x >= lo) & (x < hi)
            assert inside.any() and not nonfinite[inside].any(), (name, lo)
            assert growth[inside].max() == bound, (name, lo, growth[inside].max())
            below = x == x[x < lo].max()
            assert (nonfinite[below] | (growth[below] > bound)).any(), (name, lo)
            if (x >= hi).any():
                above = x == x[x >= hi].min()
                assert (nonfinite[above] | (growth[above] > bound)).any(), (name, hi)


def test_doc_float16_binades_table():
    """float16 stored with the auto target t = 2**15: per binade d (|x| / t in [2**-d, 2**(1-d))), which
    exponent bits grow the value and by what, which give inf/NaN, and the largest |x'| / t of a finite
    single flip."""
    dtype, t = np.float16, 2.0**15
    E, m, _, _ = layout(dtype)
    codes = codes_of(dtype)
    x = values(codes, dtype)
    rows = doc_table("float16_binades")
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    for d_text, field_bits, grows, to_inf, sup in rows:
        d = int(d_text)
        sel = np.isfinite(x) & (np.abs(x) >= t * 2.0**-d) & (np.abs(x) < t * 2.0 ** (1 - d))
        fields = (codes[sel] >> m) & ((1 << E) - 1)
        assert set(fields.tolist()) == {int(field_bits, 2)}, d
        flipped = single_flips(codes[sel], dtype)
        with np.errstate(invalid="ignore"):  # inf / x and NaN / x
            ratio = np.abs(flipped) / np.abs(x[sel])[:, None]
        stated_growth = dict(re.findall(r"(\d+): (2\^\d+)", grows))
        stated_inf = [] if to_inf == "none" else [int(k) for k in to_inf.split(",")]
        for k in range(E):
            col = ratio[:, m + k]
            if k in stated_inf:
                assert not np.isfinite(col).any(), (d, k)
            elif str(k) in stated_growth:
                assert (col == number(stated_growth[str(k)])).all(), (d, k)
            else:
                assert (col < 1).all(), (d, k)  # the bit is set: flipping it shrinks the value
        finite = np.where(np.isfinite(flipped), np.abs(flipped), 0.0)
        assert finite.max() / t == number(sup), (d, finite.max() / t)


@pytest.mark.parametrize("name", list(DTYPES))
def test_exponent_flip_rule_of_the_auto_target(name):
    """The rule of the doc for every finite normal code of the format: with x in binade d below
    t = 2**emax, a flip of exponent bit k shrinks x when the bit is set in the field, gives inf/NaN when it
    completes the all-ones field (IEEE; e4m3fn: only into S.1111.111), else multiplies by 2**(2**k) and
    stays below 2 t."""
    dtype = DTYPES[name]
    E, m, _, _ = layout(dtype)
    fmax = float(ml_dtypes.finfo(dtype).max)
    t = 2.0 ** math.floor(math.log2(fmax))
    codes = codes_of(dtype)
    x = values(codes, dtype)
    fields = ((codes >> m) & ((1 << E) - 1)).astype(np.int64)
    normal = np.isfinite(x) & (fields > 0)
    codes, x, fields = codes[normal], np.abs(x[normal]), fields[normal]
    d = np.round(np.log2(t) - np.floor(np.log2(x))).astype(np.int64)
    ieee = name != "float8_e4m3fn"
    # The field of binade d: the complement of d + 1 (IEEE: the top finite field is all ones but bit 0),
    # of d (e4m3fn: the all-ones field is finite).
    np.testing.assert_array_equal(fields, (2**E - 1) - (d + 1 if ieee else d))
    flipped = single_flips(codes, dtype)
    for k in range(E):
        col = np.abs(flipped[:, m + k])
        bit_set = (fields >> k) & 1 == 1
        shrink = bit_set & (fields - 2**k >= 1)
        np.testing.assert_array_equal(col[shrink], x[shrink] / 2.0 ** (2**k))
        to_sub = bit_set & (fields - 2**k == 0)  # lands in the subnormals
        assert (col[to_sub] < x[to_sub] * 2.0 ** (1 - 2**k)).all()
        grow = ~bit_set
        completes = fields + 2**k == 2**E - 1
        if ieee:
            assert not np.isfinite(col[grow & completes]).any()
            ok = grow & ~completes
        else:
            mant_all_ones = (codes & ((1 << m) - 1)) == (1 << m) - 1
            assert not np.isfinite(col[grow & completes & mant_all_ones]).any()
            ok = grow & ~(completes & mant_all_ones)
        np.testing.assert_array_equal(col[ok], x[ok] * 2.0 ** (2**k))
        assert (col[ok] < 2 * t).all()


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_any_corrupted_word_reads_back_bounded(name):
    """Every possible stored word (all 2**n codes, i.e. any number of flips) read through the library with
    the auto target and nonfinite="zero" equals the ml_dtypes decoding / s, inf/NaN -> 0, and is at most
    max_finite / 2**emax times max|W|."""
    dtype = DTYPES[name]
    _, _, nbits, view = layout(dtype)
    w = (np.random.default_rng(3).standard_normal((2**nbits // 16, 16)) * 0.1).astype(np.float32)
    params = {"fc.weight": w}
    spec = weight_scaling_spec(params, "auto", name)
    s = spec.rules[0].scale
    # Capped at the largest float32 (bfloat16 here, max|W| < 1/2).
    assert s == min(scale_target(name) / float(np.abs(w).max()), float(np.finfo(np.float32).max))
    every = np.arange(2**nbits, dtype=np.uint32).astype(view).reshape(w.shape)
    got = load(store(params, spec).with_codes({"fc.weight": every}), nonfinite="zero")["fc.weight"]
    with np.errstate(invalid="ignore", over="ignore"):
        ref = every.view(dtype).astype(np.float32)
    ref = np.where(np.isfinite(ref), ref, np.float32(0)) / np.float32(s)
    np.testing.assert_array_equal(got, ref)
    # max_finite / s: (2 - 2**-m) max|W|, or for bfloat16 with the cap (max|W| < 1/2 here) about 1.
    bound = float(ml_dtypes.finfo(dtype).max) / s
    assert np.abs(got).max() <= bound * (1 + 2**-20)  # float32 rounding of s
    if s < float(np.finfo(np.float32).max):
        assert bound == float(ml_dtypes.finfo(dtype).max) / scale_target(name) * float(np.abs(w).max())


def test_auto_scale_is_capped_in_the_latent_dtype():
    # float32 latents: 2**127 / max|W| is not a float32 number when max|W| < 1/2, so s stops at the
    # largest float32 (at 2**127 with power_of_two).
    f32max = float(np.finfo(np.float32).max)
    params = {"a.weight": np.full((2, 2), 0.25, np.float32), "b.weight": np.full((2, 2), 0.75, np.float32)}
    shapes = {k: v.shape for k, v in params.items()}
    rules = weight_scaling_spec(params, "auto", "float32").resolve(shapes)
    assert rules["a.weight"].scale == f32max
    assert rules["b.weight"].scale == 2.0**127 / 0.75
    p2 = weight_scaling_spec(params, "auto", "float32", power_of_two=True).resolve(shapes)
    assert p2["a.weight"].scale == 2.0**127 and p2["b.weight"].scale == 2.0**127
    stored = store(params, weight_scaling_spec(params, "auto", "float32"))
    a = stored["a.weight"].codes.view(np.float32)
    assert (a == np.float32(0.25) * np.float32(f32max)).all() and np.isfinite(a).all()
    # float64 latents are not capped below 1.8e308; an explicit target is never capped (store refuses it).
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    assert weight_scaling_spec(p64, "auto", "float32").rules[0].scale == 2.0**127 / 0.25
    too_big = weight_scaling_spec(params, 2.0**127, "float32")
    assert too_big.rules[0].scale == 2.0**127 / 0.25
    with pytest.raises(ValueError, match="store: the scale of the rule for 'a.weight' must be finite"):
        store(params, too_big)


def test_roles_select_the_scaled_tensors():
    params = make_params()
    spec = weight_scaling_spec(params, 2.0, "float16", roles=("weight", "bias", "bn"))
    rules = spec.resolve(SHAPES)
    for k in SHAPES:
        assert rules[k].scale == 2.0 / float(np.abs(params[k]).max()), k
    only_bn = weight_scaling_spec(params, 2.0, "float16", roles=("bn",)).resolve(SHAPES)
    assert [k for k in SHAPES if only_bn[k].scale is not None] == ["bn1.weight", "bn1.bias"]
    with pytest.raises(TypeError, match="weight_scaling_spec: roles must be a tuple of role names"):
        weight_scaling_spec(params, roles="weight")
    with pytest.raises(ValueError, match=r"weight_scaling_spec: roles\[0\] must be one of .*, got 'conv'"):
        weight_scaling_spec(params, roles=("conv",))
