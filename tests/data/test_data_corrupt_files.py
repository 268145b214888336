"""Truncated and corrupt dataset files are refused with a message naming the function and the file, and a
corrupted byte in a CIFAR .tar.gz is detected (the gzip CRC is checked) instead of loading as a wrong pixel.
Also the type check of the shipped loaders' ``root``.
"""

import gzip
import io
import pickle
import tarfile
import zlib

import numpy as np
import pytest

from saf_ref.data import cifar as C
from saf_ref.data import mnist as M
from saf_ref.data import shipped as S


# ---- shipped loaders: root -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, fn",
    [
        (lambda root: S.load_digits(root=root), "load_digits"),
        (lambda root: S.load_mnist5k(root=root), "load_mnist5k"),
        (lambda root: S.load_shipped("digits", root=root), "load_shipped"),
    ],
)
@pytest.mark.parametrize("root, got", [(5, "int"), (b"/tmp", "bytes"), (["/tmp"], "list")])
def test_root_of_the_wrong_type_is_a_templated_type_error(call, fn, root, got):
    with pytest.raises(TypeError, match=rf"^{fn}: root must be a str, a path-like or None, got {got}$"):
        call(root)


# ---- MNIST IDX ---------------------------------------------------------------------------------
def _idx_gz(n=50):
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    raw = bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">u4").tobytes() + images.tobytes()
    return images, gzip.compress(raw)


def test_truncated_gzip_idx_is_a_value_error_naming_the_file(tmp_path):
    _, gz = _idx_gz()
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match=r"read_idx: .*train-images-idx3-ubyte.gz must be a complete gzip "
                                         r"file, got EOFError"):  # fmt: skip
        M.read_idx(path)


def test_corrupt_gzip_idx_is_detected_by_its_crc(tmp_path):
    images, gz = _idx_gz()
    bad = bytearray(gz)
    bad[len(bad) // 2] ^= 0x01
    # the deflate stream itself still decodes (to other bytes): only the CRC in the last 8 bytes can tell
    assert zlib.decompressobj(31).decompress(bytes(bad[:-8])) != gzip.decompress(gz)
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"read_idx: .*x.gz must be a complete gzip file, got BadGzipFile"):
        M.read_idx(path)


# ---- CIFAR archives ----------------------------------------------------------------------------
def _cifar_tar_gz():
    """A CIFAR-10 test batch of random (incompressible) images in a .tar.gz, then a readme after it."""
    images = np.random.default_rng(1).integers(0, 256, (20, 3072), dtype=np.uint8)
    batch = pickle.dumps({b"data": images, b"labels": [3] * 20}, protocol=3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("test_batch", batch), ("readme.html", b"<html>" * 1000)):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return images, buf.getvalue()


def test_intact_archive_loads(tmp_path):
    images, raw = _cifar_tar_gz()
    path = tmp_path / "c.tar.gz"
    path.write_bytes(raw)
    x, y = C.load_cifar10(path, split="test", dtype=np.uint8, normalize=False)
    assert x.tobytes() == images.tobytes() and y.tolist() == [3] * 20


@pytest.mark.parametrize("where", ["header", "batch", "trailer"])
def test_truncated_archive_is_a_value_error_naming_the_file(tmp_path, where):
    """Cut inside the gzip header, inside the batch, and in the gzip trailer (after every needed byte)."""
    _, raw = _cifar_tar_gz()
    cut = {"header": 30, "batch": len(raw) // 2, "trailer": len(raw) - 8}[where]
    path = tmp_path / "c.tar.gz"
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=r"load_cifar10: .*c.tar.gz must be a complete, uncorrupted tar "
                                         r"archive, got"):  # fmt: skip
        C.load_cifar10(path, split="test")


def test_a_flipped_byte_in_the_archive_is_detected(tmp_path):
    images, raw = _cifar_tar_gz()
    bad = bytearray(raw)
    bad[len(bad) // 3] ^= 0x01  # inside the stored (incompressible) image bytes
    # without its CRC (the last 8 bytes) it decompresses without a zlib error, to other bytes
    assert zlib.decompressobj(31).decompress(bytes(bad[:-8])) != gzip.decompress(raw)
    path = tmp_path / "c.tar.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"load_cifar10: .*c.tar.gz must be a complete, uncorrupted tar "
                                         r"archive, got BadGzipFile: CRC check failed"):  # fmt: skip
        C.load_cifar10(path, split="test", dtype=np.uint8, normalize=False)


@pytest.mark.parametrize("bad", [2**70, -(2**70)])
def test_a_label_beyond_int64_is_a_value_error(tmp_path, bad):
    """It was numpy's OverflowError from the int64 conversion, before the range check."""
    raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, bad]}, protocol=3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(raw)
        tf.addfile(info, io.BytesIO(raw))
    path = tmp_path / "c.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=rf"load_cifar10: cifar-10-batches-py/test_batch labels must be in "
                                         rf"\[0, 9\], got {bad}$"):  # fmt: skip
        C.load_cifar10(path, split="test")


def test_a_permission_error_is_not_reported_as_a_corrupt_archive(tmp_path, monkeypatch):
    """The archive clause catches OSError for gzip's and bz2's format errors; an unreadable file is no
    corrupt archive and keeps its PermissionError."""
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"\x1f\x8b" + b"\0" * 64)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(C.tarfile, "is_tarfile", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        C.load_cifar10(path, split="test")
