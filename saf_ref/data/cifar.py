"""CIFAR-10 and CIFAR-100 from the official "python version" archives, read without running code.

Layout of the official files (https://www.cs.toronto.edu/~kriz/cifar.html):

- ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``
  (10,000 training images each), ``test_batch`` (10,000) and ``batches.meta`` (``label_names``).
- ``cifar-100-python.tar.gz`` holds ``cifar-100-python/`` with ``train`` (50,000), ``test`` (10,000)
  and ``meta`` (``fine_label_names``, ``coarse_label_names``).

Each batch is a pickled dict with ``b"data"``, a uint8 array of shape (n, 3072), and ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` and ``b"coarse_labels"`` (CIFAR-100), lists of ints. A row of ``data``
is the 32x32 red plane, then green, then blue, each in row-major order, so ``data.reshape(n, 3, 32, 32)``
is NCHW directly.

The pickles are read with :class:`saf_ref.data.unpickle.RestrictedUnpickler`, which resolves only the
NumPy names these files use (and builds the arrays itself from checked bytes), so a malicious file raises
:class:`pickle.UnpicklingError` instead of running code or reading memory it does not hold. The archive
is read in place (members are streamed from the tar file, nothing is extracted to disk).
Get the archives with :func:`saf_ref.data.download.download_cifar10` / ``download_cifar100``.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..validation import check_choice
from .shipped import Dataset, Split, check_image_options, convert_images, select_split
from .unpickle import restricted_loads

_SIDE = 32
_ROW = 3 * _SIDE * _SIDE  # 3072 bytes per image
_SPLITS = ("both", "train", "test")


def _read_members(path: Any, folder: str, names: tuple[str, ...], fn: str) -> dict[str, bytes]:
    """The bytes of ``folder/<name>`` for each name, from a tar archive or a directory.

    ``path`` is the archive (any compression tarfile reads), the extracted ``folder`` itself, or the
    directory that contains ``folder``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or path-like, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        for base in (path, path / folder):
            if all((base / n).is_file() for n in names):
                return {n: (base / n).read_bytes() for n in names}
        raise FileNotFoundError(
            f"{fn}: {path} holds neither {list(names)} nor {folder}/ with them; "
            f"give the archive, the extracted {folder}/ directory or its parent"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{fn}: {path} does not exist")
    wanted = {f"{folder}/{n}": n for n in names}
    found: dict[str, bytes] = {}
    try:
        if not tarfile.is_tarfile(path):  # (reads the first member's header: a truncated .gz can raise)
            raise ValueError(f"{fn}: {path} is neither a directory nor a tar archive")
        # Iterate in archive order: a .tar.gz is a stream, so looking members up by name in a different
        # order would decompress it again from the start for each one.
        with tarfile.open(path, mode="r:*") as tf:
            for member in tf:
                key = member.name.removeprefix("./")
                if key in wanted and member.isfile():
                    found[wanted[key]] = tf.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
            _read_to_the_end(tf)
    except PermissionError:
        raise  # not a corrupt file: the OSError clause below is for gzip's and bz2's format errors
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise ValueError(
            f"{fn}: {path} must be a complete, uncorrupted tar archive, got {type(e).__name__}: {e}"
        ) from None
    missing = [k for k, n in wanted.items() if n not in found]
    if missing:
        raise FileNotFoundError(f"{fn}: {path} has no member(s) {missing}")
    return found


def _read_to_the_end(tf: tarfile.TarFile) -> None:
    """Decompress what is left of a compressed archive, so that its checksum is verified.

    gzip, bzip2 and xz check their CRC only at the end of the stream; reading stops at the last member
    needed (or at tar's end-of-archive marker), which would leave a corrupted byte undetected.
    """
    if isinstance(tf.fileobj, (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)):
        while tf.fileobj.read(1 << 20):
            pass


def _get(d: dict, key: str, source: str, fn: str) -> Any:
    """``d[b"key"]`` (the Python 2 files have bytes keys), or ``d["key"]`` for re-pickled files."""
    for k in (key.encode("ascii"), key):
        if k in d:
            return d[k]
    raise ValueError(f"{fn}: {source} has no key {key!r}; keys are {sorted(map(repr, d))}")


def _parse_batch(raw: bytes, source: str, label_key: str, n_classes: int, fn: str) -> tuple[np.ndarray, ...]:
    """One unpickled batch -> (images uint8 (n, 3, 32, 32), labels int64 (n,)), with its checks."""
    batch = restricted_loads(raw, source=source)
    if not isinstance(batch, dict):
        raise ValueError(f"{fn}: {source} must unpickle to a dict, got {type(batch).__name__}")
    data = _get(batch, "data", source, fn)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        is_array = isinstance(data, np.ndarray)
        got = f"{data.dtype} array of shape {data.shape}" if is_array else type(data).__name__
        raise ValueError(f"{fn}: {source} data must be a uint8 array of shape (n, {_ROW}), got {got}")
    labels = _get(batch, label_key, source, fn)
    if not isinstance(labels, (list, np.ndarray)):
        raise ValueError(f"{fn}: {source} {label_key} must be a list of ints, got {type(labels).__name__}")
    bad = [v for v in labels if not isinstance(v, (int, np.integer)) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"{fn}: {source} {label_key} must be a list of ints, got an entry {bad[0]!r}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except OverflowError:  # a Python int beyond int64
        big = max(labels, key=abs)
        raise ValueError(f"{fn}: {source} {label_key} must be in [0, {n_classes - 1}], got {big}") from None
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{fn}: {source} has {data.shape[0]} images but {labels.shape[0]} {label_key}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{fn}: {source} {label_key} must be in [0, {n_classes - 1}], "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    # each row is the R plane, G plane, B plane, each 32x32 row-major: exactly C, H, W order
    return data.reshape(-1, 3, _SIDE, _SIDE).copy(), labels


def _load(
    path: Any,
    folder: str,
    batches: dict[str, tuple[str, ...]],
    label_key: str,
    n_classes: int,
    fn: str,
    split: str,
    dtype: Any,
    normalize: bool,
) -> Split | Dataset:
    check_choice(split, "split", fn, _SPLITS)
    dt = check_image_options(dtype, normalize, fn)
    needed = tuple(n for which in ("train", "test") if split in (which, "both") for n in batches[which])
    raw = _read_members(path, folder, needed, fn)
    parts = {}
    for which in ("train", "test"):
        if split in (which, "both"):
            pieces = [_parse_batch(raw[n], f"{folder}/{n}", label_key, n_classes, fn) for n in batches[which]]
            images = np.concatenate([p[0] for p in pieces])
            labels = np.concatenate([p[1] for p in pieces])
            parts[which] = (convert_images(images, 255, dt, normalize), labels)
    return select_split(parts.get("train"), parts.get("test"), split)


def load_cifar10(
    path: str | os.PathLike, *, split: str = "both", dtype: Any = np.float32, normalize: bool = True
) -> Split | Dataset:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` or its extraction (torchvision: ``datasets.CIFAR10``).

    Parameters
    ----------
    path : path-like
        The archive, the extracted ``cifar-10-batches-py/`` directory, or the directory containing it.
    split : {"both", "train", "test"}
        ``"both"``: a :class:`~saf_ref.data.shipped.Dataset` ``(x_train, y_train, x_test, y_test)``;
        otherwise a :class:`~saf_ref.data.shipped.Split` ``(x, y)``. ``"test"`` reads only ``test_batch``.
    dtype : float32, float64 or uint8
        dtype of the images.
    normalize : bool
        ``True``: divide by 255, giving ``[0, 1]`` (as torchvision's ``ToTensor``); ``False``: the stored
        0..255 values (required for uint8).

    Returns
    -------
    Dataset or Split
        Images (N, 3, 32, 32) in ``dtype`` (N = 50,000 train, 10,000 test), int64 labels 0..9, in file
        order (``data_batch_1`` .. ``data_batch_5``). Memory: the training images take 147 MiB as uint8,
        586 MiB as float32; loading briefly holds the raw batches as well.

    Raises
    ------
    FileNotFoundError
        A batch is missing.
    pickle.UnpicklingError
        A batch is not a pickle, references anything but the NumPy array constructors, or describes an
        array that is not plain numbers exactly filled by its bytes (:mod:`saf_ref.data.unpickle`).
    ValueError
        A batch has the wrong structure (keys, array dtype or shape, label count or range), or the archive
        is truncated or corrupt (a compressed archive is read to its end, so that its CRC is checked).
    """
    batches = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    return _load(path, "cifar-10-batches-py", batches, "labels", 10, "load_cifar10", split, dtype, normalize)


def load_cifar100(
    path: str | os.PathLike,
    *,
    split: str = "both",
    label_mode: str = "fine",
    dtype: Any = np.float32,
    normalize: bool = True,
) -> Split | Dataset:
    """CIFAR-100 from ``cifar-100-python.tar.gz`` or its extraction (torchvision: ``datasets.CIFAR100``).

    ``label_mode="fine"`` gives the 100 class labels (torchvision's), ``"coarse"`` the 20 superclass
    labels (as Keras' ``label_mode``). ``path`` is the archive, the extracted ``cifar-100-python/``
    directory or its parent; other arguments, return value and errors as :func:`load_cifar10`
    (images (N, 3, 32, 32), N = 50,000 train and 10,000 test).
    """
    fn = "load_cifar100"
    check_choice(label_mode, "label_mode", fn, ("fine", "coarse"))
    n_classes = 100 if label_mode == "fine" else 20
    batches = {"train": ("train",), "test": ("test",)}
    label_key = f"{label_mode}_labels"
    return _load(path, "cifar-100-python", batches, label_key, n_classes, fn, split, dtype, normalize)


def _label_names(path: Any, folder: str, member: str, key: str, fn: str) -> tuple[str, ...]:
    raw = _read_members(path, folder, (member,), fn)[member]
    meta = restricted_loads(raw, source=f"{folder}/{member}")
    if not isinstance(meta, dict):
        raise ValueError(f"{fn}: {folder}/{member} must unpickle to a dict, got {type(meta).__name__}")
    names = _get(meta, key, f"{folder}/{member}", fn)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        got = type(names).__name__ if not isinstance(names, list) else "a list holding " + ", ".join(
            sorted({type(n).__name__ for n in names if not isinstance(n, (bytes, str))})
        )
        raise ValueError(f"{fn}: {folder}/{member} {key} must be a list of strings, got {got}")
    return tuple(n.decode("ascii") if isinstance(n, bytes) else n for n in names)


def cifar10_label_names(path: str | os.PathLike) -> tuple[str, ...]:
    """The 10 class names, from ``batches.meta`` (``("airplane", "automobile", ...)`` in label order)."""
    return _label_names(path, "cifar-10-batches-py", "batches.meta", "label_names", "cifar10_label_names")


def cifar100_label_names(path: str | os.PathLike, *, label_mode: str = "fine") -> tuple[str, ...]:
    """The 100 fine (or 20 coarse) class names, from ``meta``, in label order."""
    fn = "cifar100_label_names"
    check_choice(label_mode, "label_mode", fn, ("fine", "coarse"))
    return _label_names(path, "cifar-100-python", "meta", f"{label_mode}_label_names", fn)


__all__ = [
    "cifar10_label_names",
    "cifar100_label_names",
    "load_cifar10",
    "load_cifar100",
]
