"""MNIST (and Fashion-MNIST, same format) from the IDX files, plain or gzipped.

*IDX format* (http://yann.lecun.com/exdb/mnist/): a big-endian header, then the data.

====== ======================================================================================
bytes  meaning
====== ======================================================================================
0, 1   zero
2      element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
3      number of dimensions d
4..    d sizes, each a big-endian uint32
then   prod(sizes) elements, big-endian, row-major (the last dimension varies fastest)
====== ======================================================================================

MNIST's image files have type 0x08 and d = 3 (N, 28, 28); label files type 0x08 and d = 1 (N,).
So the image magic number read as a big-endian int32 is 2051 and the label one 2049.
Get the files with :func:`saf_ref.data.download.download_mnist`.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..validation import check_choice
from .shipped import Dataset, Split, check_image_options, convert_images, select_split

#: IDX element-type code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLITS = ("both", "train", "test")


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes (already decompressed) into an array in native byte order.

    Parameters
    ----------
    data : bytes
        The whole file: header and elements.
    source : str
        Name used in error messages.

    Returns
    -------
    numpy.ndarray
        Shape given by the header; dtype from :data:`IDX_DTYPES`, converted to native byte order
        (uint8 for MNIST). A new, writeable array.
    """
    fn = "parse_idx"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{fn}: data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{fn}: {source} is not an IDX file: its first two bytes must be zero, got {data[:4]!r}"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{fn}: {source} has element type 0x{code:02X}, expected one of ({codes})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{fn}: {source} is truncated: {len(data)} bytes, the header alone needs {header}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    # math.prod of Python ints: a crafted header (sizes up to 2**32 - 1 each) cannot overflow int64 here.
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{fn}: {source} has {len(data)} bytes, expected {expected} for shape {shape} of {dtype.name}"
        )
    # frombuffer is a read-only view of the bytes; astype to the native byte order makes a new array
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or not (recognised by the gzip magic bytes, not by the name).

    A truncated or corrupt gzip file (its CRC is checked) is a ``ValueError`` naming the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_idx: path must be a str or path-like, got {type(path).__name__}")
    raw = Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:  # truncated, or a CRC/header error (BadGzipFile)
            raise ValueError(
                f"read_idx: {os.fspath(path)} must be a complete gzip file, got {type(e).__name__}: {e}"
            ) from None
    return parse_idx(raw, source=os.fspath(path))


def _find(directory: Path, stem: str, fn: str) -> Path:
    """``stem`` or ``stem.gz`` in ``directory``, also accepting ``.idx`` for ``-idx`` (as some mirrors)."""
    stems = (stem, stem.replace("-idx", ".idx"))
    for s in stems:
        for name in (s, s + ".gz"):
            if (directory / name).is_file():
                return directory / name
    raise FileNotFoundError(f"{fn}: {directory} has no {stem} or {stem}.gz")


def _read_pair(image_path: Path, label_path: Path, fn: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one images file and its labels file."""
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} {images.shape}"
        raise ValueError(f"{fn}: {image_path} must hold uint8 images (N, H, W), got {got}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{fn}: {label_path} must hold uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{fn}: {image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{fn}: {label_path} labels must be in [0, 9], got a {labels.max()}")
    return images, labels


def load_mnist(
    path: str | os.PathLike, *, split: str = "both", dtype: Any = np.float32, normalize: bool = True
) -> Split | Dataset:
    """MNIST from a directory of IDX files (torchvision: ``datasets.MNIST``).

    Parameters
    ----------
    path : path-like
        Directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each possibly gzipped (``.gz``).
        Fashion-MNIST uses the same names and format.
    split : {"both", "train", "test"}
        ``"both"``: a :class:`~saf_ref.data.shipped.Dataset`; otherwise a
        :class:`~saf_ref.data.shipped.Split`.
    dtype : float32, float64 or uint8
        dtype of the images.
    normalize : bool
        ``True``: divide by 255, giving ``[0, 1]``; ``False``: the stored 0..255 values (required for uint8).

    Returns
    -------
    Dataset or Split
        Images (N, 1, 28, 28) in ``dtype`` (N = 60,000 train, 10,000 test) and int64 labels 0..9.
    """
    fn = "load_mnist"
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or path-like, got {type(path).__name__}")
    check_choice(split, "split", fn, _SPLITS)
    dt = check_image_options(dtype, normalize, fn)
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{fn}: {directory} is not a directory")
    parts = {}
    for which in ("train", "test"):
        if split in (which, "both"):
            images, labels = _read_pair(*(_find(directory, stem, fn) for stem in _FILES[which]), fn)
            x = convert_images(images[:, None], 255, dt, normalize)  # (N, H, W) -> (N, 1, H, W)
            parts[which] = (x, labels.astype(np.int64))
    return select_split(parts.get("train"), parts.get("test"), split)


__all__ = ["IDX_DTYPES", "load_mnist", "parse_idx", "read_idx"]
