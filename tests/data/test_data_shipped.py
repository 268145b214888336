"""The shipped datasets: checksums, layout, split stratification, loader options and errors."""

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from saf_ref.data import shipped as S
from saf_ref.data.download import ChecksumError

REPO = Path(__file__).resolve().parents[2]
# package data (shipped in the wheel); the top-level data/ folder is for user-supplied datasets
DATA = REPO / "saf_ref" / "data" / "files"
EXPECTED = {  # name: (pixel max, side, train size, test size)
    "digits": (16, 8, 1438, 359),
    "mnist5k": (255, 28, 4000, 1000),
}
LOADERS = {"digits": S.load_digits, "mnist5k": S.load_mnist5k}


def raw_arrays(name):
    """The stored arrays, read directly with np.load (not through the loader)."""
    with np.load(DATA / S.SHIPPED[name].file_name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", sorted(S.SHIPPED))
def test_file_checksum_matches_the_recorded_one(name):
    spec = S.SHIPPED[name]
    assert hashlib.sha256((DATA / spec.file_name).read_bytes()).hexdigest() == spec.sha256


def test_readme_lists_the_recorded_checksums():
    text = (DATA / "README.md").read_text()
    listed = dict((m.group(2), m.group(1)) for m in re.finditer(r"\b([0-9a-f]{64})\s+(\w+\.npz)\b", text))
    assert listed == {spec.file_name: spec.sha256 for spec in S.SHIPPED.values()}


@pytest.mark.parametrize("name", sorted(S.SHIPPED))
def test_stored_layout(name):
    pixel_max, side, n_train, n_test = EXPECTED[name]
    z = raw_arrays(name)
    assert sorted(z) == ["test_images", "test_labels", "train_images", "train_labels"]
    assert z["train_images"].shape == (n_train, 1, side, side) and z["test_images"].shape == (
        n_test,
        1,
        side,
        side,
    )
    assert z["train_images"].dtype == np.uint8 and z["test_images"].dtype == np.uint8
    assert z["train_labels"].shape == (n_train,) and z["train_labels"].dtype == np.int64
    assert z["test_labels"].shape == (n_test,) and z["test_labels"].dtype == np.int64
    for key in ("train_images", "test_images"):
        assert z[key].max() == pixel_max and z[key].min() == 0
    spec = S.SHIPPED[name]
    assert (spec.side, spec.pixel_max, spec.n_train, spec.n_test) == (side, pixel_max, n_train, n_test)


@pytest.mark.parametrize("name", sorted(S.SHIPPED))
def test_split_is_stratified_80_20(name):
    z = raw_arrays(name)
    train = np.bincount(z["train_labels"], minlength=10)
    test = np.bincount(z["test_labels"], minlength=10)
    assert set(np.unique(z["train_labels"])) == set(range(10)) == set(np.unique(z["test_labels"]))
    for c in range(10):
        total = int(train[c] + test[c])
        assert test[c] == round(total / 5), (c, train[c], test[c])  # total / 5 is never a tie
    if name == "mnist5k":  # 500 per class in the source
        assert train.tolist() == [400] * 10 and test.tolist() == [100] * 10
    else:  # the class counts of the UCI test set (sklearn's load_digits)
        assert (train + test).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_train_and_test_do_not_share_images():
    # exact duplicates are possible in principle; there are none across the splits of these files
    for name in S.SHIPPED:
        z = raw_arrays(name)
        train = {img.tobytes() for img in z["train_images"]}
        assert not any(img.tobytes() in train for img in z["test_images"])


@pytest.mark.parametrize("name", sorted(S.SHIPPED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loader_normalizes_to_unit_interval(name, dtype):
    pixel_max = EXPECTED[name][0]
    z = raw_arrays(name)
    ds = LOADERS[name](dtype=dtype)
    assert isinstance(ds, S.Dataset)
    for got, key in zip(ds, ("train_images", "train_labels", "test_images", "test_labels"), strict=True):
        if key.endswith("images"):
            # the correctly rounded quotient: exact float64 division then one rounding (pixel values < 2^8)
            want = (z[key].astype(np.float64) / pixel_max).astype(dtype)
            assert got.dtype == dtype and got.min() == 0.0 and got.max() == 1.0
        else:
            want = z[key]
            assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(S.SHIPPED))
def test_loader_raw_values_and_single_splits(name):
    z = raw_arrays(name)
    x, y = LOADERS[name](split="train", dtype=np.uint8, normalize=False)
    np.testing.assert_array_equal(x, z["train_images"])
    np.testing.assert_array_equal(y, z["train_labels"])
    test = S.load_shipped(name, split="test", dtype=np.float64, normalize=False)
    assert isinstance(test, S.Split)
    np.testing.assert_array_equal(test.x, z["test_images"].astype(np.float64))
    np.testing.assert_array_equal(test.y, z["test_labels"])
    x[...] = 0  # a fresh array each call
    np.testing.assert_array_equal(
        LOADERS[name](split="train", dtype=np.uint8, normalize=False).x, z["train_images"]
    )


def test_data_dir_default_and_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(S.DATA_ENV, raising=False)
    assert S.data_dir() == DATA == S.package_data_dir()
    assert S.golden_dir() == DATA / "golden" and (S.golden_dir() / "index.json").is_file()
    monkeypatch.setenv(S.DATA_ENV, "")  # empty: as if unset
    assert S.data_dir() == DATA
    monkeypatch.setenv(S.DATA_ENV, str(tmp_path))
    assert S.data_dir() == tmp_path
    assert S.package_data_dir() == DATA and S.golden_dir() == DATA / "golden"  # not moved by the variable
    with pytest.raises(FileNotFoundError) as info:
        S.load_digits()
    assert str(info.value) == (
        f"load_digits: SAF_REF_DATA={str(tmp_path)!r} must be a directory holding digits.npz, got no file "
        f"{tmp_path}/digits.npz; unset SAF_REF_DATA to use the copy shipped with saf_ref"
    )
    shutil.copy(DATA / "digits.npz", tmp_path / "digits.npz")
    np.testing.assert_array_equal(S.load_digits(split="test").y, raw_arrays("digits")["test_labels"])


def test_missing_file_messages_are_one_line_and_name_the_cause(tmp_path, monkeypatch):
    monkeypatch.delenv(S.DATA_ENV, raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        S.load_mnist5k(root=empty)
    assert str(info.value) == (
        f"load_mnist5k: root {str(empty)!r} must be a directory holding mnist5k.npz, got no file "
        f"{empty}/mnist5k.npz"
    )
    # An installation without its package data (a broken wheel): say so, and how to recover; no script
    # of the source tree is named, since a wheel does not contain it.
    monkeypatch.setattr(S, "package_data_dir", lambda: empty)
    with pytest.raises(FileNotFoundError) as info:
        S.load_shipped("digits")
    message = str(info.value)
    assert message == (
        f"load_shipped: the shipped file {empty}/digits.npz is missing, so this saf_ref installation is "
        "incomplete; reinstall it (pip install --force-reinstall saf_ref) or set SAF_REF_DATA to a "
        "directory holding digits.npz"
    )
    assert "\n" not in message and "scripts/" not in message


@pytest.mark.parametrize("name", sorted(S.SHIPPED))
def test_corrupt_file_is_refused_with_both_checksums(tmp_path, name):
    spec = S.SHIPPED[name]
    data = bytearray((DATA / spec.file_name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (tmp_path / spec.file_name).write_bytes(bytes(data))
    got = hashlib.sha256(bytes(data)).hexdigest()
    pattern = (
        rf"load_{name}: .*{spec.file_name} has SHA-256 {got}, expected {spec.sha256}; the file is corrupt"
    )
    with pytest.raises(ChecksumError, match=pattern):
        LOADERS[name](root=tmp_path)
    (tmp_path / spec.file_name).write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(ChecksumError, match=rf"expected {spec.sha256}"):
        LOADERS[name](root=tmp_path)
    assert issubclass(ChecksumError, ValueError)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: S.load_digits(split="validation"),
            ValueError,
            r"load_digits: split must be one of \('both', 'train', 'test'\), got 'validation'",
        ),
        (
            lambda: S.load_mnist5k(dtype=np.float16),
            TypeError,
            r"load_mnist5k: dtype must be one of \(float32, float64, uint8\), got",
        ),
        (lambda: S.load_mnist5k(dtype=int), TypeError, r"load_mnist5k: dtype must be one of"),
        (lambda: S.load_mnist5k(dtype=[1]), TypeError, r"load_mnist5k: dtype must be one of"),
        (
            lambda: S.load_digits(dtype=np.uint8),
            ValueError,
            r"load_digits: dtype uint8 returns the stored values and needs normalize=False",
        ),
        (
            lambda: S.load_digits(normalize=None),
            TypeError,
            r"load_digits: normalize must be a bool, got NoneType",
        ),
        (
            lambda: S.load_shipped("cifar10"),
            ValueError,
            r"load_shipped: name must be one of \('digits', 'mnist5k'\), got 'cifar10'",
        ),
        (lambda: S.load_shipped("digits", split=1), ValueError, r"load_shipped: split must be one of"),
    ],
)
def test_argument_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
