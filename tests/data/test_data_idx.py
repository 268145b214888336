"""MNIST IDX reader and loader on files written here with :mod:`struct` (an independent writer)."""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.data import mnist as M

# type code -> (struct format character, NumPy dtype) for the independent writer
CODES = {0x08: ("B", np.uint8), 0x09: ("b", np.int8), 0x0B: ("h", np.int16), 0x0C: ("i", np.int32),
         0x0D: ("f", np.float32), 0x0E: ("d", np.float64)}  # fmt: skip


def idx_bytes(array, code):
    """Header and big-endian elements, written value by value with struct (not with NumPy's byteswap)."""
    fmt, _ = CODES[code]
    head = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return head + b"".join(struct.pack(">" + fmt, v) for v in array.ravel().tolist())


@given(
    code=st.sampled_from(sorted(CODES)),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_parse_idx_round_trips_every_type(code, shape, seed):
    dtype = CODES[code][1]
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    else:
        a = rng.standard_normal(shape).astype(dtype)
    got = M.parse_idx(idx_bytes(a, code))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative and got.shape == tuple(shape)
    np.testing.assert_array_equal(got, a)
    got[...] = 0  # writeable, not a view of the bytes


def test_mnist_magic_numbers():
    """The classic check: images start with int32 2051, labels with 2049."""
    assert struct.unpack(">i", idx_bytes(np.zeros((1, 28, 28), np.uint8), 0x08)[:4])[0] == 2051
    assert struct.unpack(">i", idx_bytes(np.zeros(1, np.uint8), 0x08)[:4])[0] == 2049


def write_mnist_dir(directory, *, gz, n_train=7, n_test=3, names=None, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(exist_ok=True)
    for stem, a in arrays.items():
        data = idx_bytes(a, 0x08)
        name = (names or {}).get(stem, stem)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_plain_and_gzipped_files(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz=gz)
    ds = M.load_mnist(tmp_path, dtype=np.uint8, normalize=False)
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.x_test[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.x_train.shape == (7, 1, 28, 28) and ds.y_train.dtype == np.int64
    x, y = M.load_mnist(str(tmp_path), split="test", dtype=np.float64)
    np.testing.assert_array_equal(x[:, 0], arrays["t10k-images-idx3-ubyte"] / 255.0)
    assert x.dtype == np.float64 and y.dtype == np.int64


def test_gzip_is_detected_by_content_and_dotted_names_are_accepted(tmp_path):
    names = {
        "train-images-idx3-ubyte": "train-images.idx3-ubyte",
        "t10k-labels-idx1-ubyte": "t10k-labels.idx1-ubyte",
    }
    arrays = write_mnist_dir(tmp_path, gz=False, names=names)
    path = tmp_path / "train-images.idx3-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))  # gzipped content without a .gz suffix
    np.testing.assert_array_equal(M.read_idx(path), arrays["train-images-idx3-ubyte"])
    x, y = M.load_mnist(tmp_path, split="train", dtype=np.float32)
    np.testing.assert_array_equal(x[:, 0], (arrays["train-images-idx3-ubyte"] / 255.0).astype(np.float32))


HEADER_3D = bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 2, 2)


@pytest.mark.parametrize(
    "data, exc, match",
    [
        ("abc", TypeError, r"parse_idx: data must be bytes, got str"),
        (b"\x00\x00", ValueError, r"parse_idx: f is not an IDX file: its first two bytes must be zero"),
        (b"\x01\x00\x08\x01" + bytes(8), ValueError, r"first two bytes must be zero, got b'\\x01"),
        (
            b"\x00\x00\x0a\x01" + bytes(8),
            ValueError,
            r"f has element type 0x0A, expected one of \(0x08, 0x09",
        ),
        (b"\x00\x00\x08\x03" + bytes(5), ValueError, r"f is truncated: 9 bytes, the header alone needs 16"),
        (HEADER_3D + bytes(7), ValueError, r"f has 23 bytes, expected 24 for shape \(2, 2, 2\) of uint8"),
        (HEADER_3D + bytes(9), ValueError, r"f has 25 bytes, expected 24"),
        (
            bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + bytes(11),
            ValueError,
            r"expected 20 for shape \(3,\) of int32",
        ),
        (  # a crafted header whose element count overflows int64: the expected size is still exact
            bytes([0, 0, 0x0E, 3]) + struct.pack(">III", *(3 * [2**32 - 1])),
            ValueError,
            rf"f has 16 bytes, expected {16 + 8 * (2**32 - 1) ** 3} for shape",
        ),
    ],
)
def test_parse_idx_errors(data, exc, match):
    with pytest.raises(exc, match=match):
        M.parse_idx(data, source="f")


def test_read_idx_errors(tmp_path):
    with pytest.raises(TypeError, match=r"read_idx: path must be a str or path-like, got int"):
        M.read_idx(5)
    (tmp_path / "bad").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match=r"read_idx: .*bad must be a complete gzip file, got BadGzipFile"):
        M.read_idx(tmp_path / "bad")
    (tmp_path / "bad2").write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match=r"parse_idx: .*bad2 is not an IDX file"):
        M.read_idx(tmp_path / "bad2")


def _overwrite(directory, stem, array, code=0x08):
    (directory / f"{stem}.gz").unlink()
    (directory / stem).write_bytes(idx_bytes(array, code))


@pytest.mark.parametrize(
    "stem, array, code, match",
    [
        (
            "train-images-idx3-ubyte",
            np.zeros((7, 784), np.uint8),
            0x08,
            r"must hold uint8 images \(N, H, W\), got",
        ),
        (
            "train-images-idx3-ubyte",
            np.zeros((7, 28, 28), np.int32),
            0x0C,
            r"must hold uint8 images .* int32",
        ),
        ("train-labels-idx1-ubyte", np.zeros((7, 1), np.uint8), 0x08, r"must hold uint8 labels \(N,\), got"),
        ("train-labels-idx1-ubyte", np.zeros(6, np.uint8), 0x08, r"has 7 images but .* has 6 labels"),
        ("train-labels-idx1-ubyte", np.full(7, 10, np.uint8), 0x08, r"labels must be in \[0, 9\], got a 10"),
    ],
)
def test_load_mnist_structural_errors(tmp_path, stem, array, code, match):
    write_mnist_dir(tmp_path, gz=True)
    _overwrite(tmp_path, stem, array, code)
    with pytest.raises(ValueError, match=r"load_mnist: .*" + match):
        M.load_mnist(tmp_path, split="train")


def test_load_mnist_path_and_argument_errors(tmp_path):
    with pytest.raises(TypeError, match=r"load_mnist: path must be a str or path-like, got list"):
        M.load_mnist([tmp_path])
    with pytest.raises(FileNotFoundError, match=r"load_mnist: .*missing is not a directory"):
        M.load_mnist(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"load_mnist: .* has no t10k-images-idx3-ubyte or .*\.gz"):
        M.load_mnist(tmp_path, split="test")
    with pytest.raises(ValueError, match=r"load_mnist: split must be one of \('both', 'train', 'test'\)"):
        M.load_mnist(tmp_path, split="all")
    with pytest.raises(TypeError, match=r"load_mnist: dtype must be one of"):
        M.load_mnist(tmp_path, dtype=np.float16)
    with pytest.raises(ValueError, match=r"load_mnist: dtype uint8 returns the stored values"):
        M.load_mnist(tmp_path, dtype=np.uint8)
    with pytest.raises(TypeError, match=r"load_mnist: normalize must be a bool, got str"):
        M.load_mnist(tmp_path, normalize="yes")
