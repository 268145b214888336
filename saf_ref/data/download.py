"""Checksums, and an optional download helper for the official CIFAR and MNIST files.

Nothing in saf_ref downloads at import or test time: :func:`download` runs only when a user calls it.
It needs internet access; the datasets shipped inside the package (``saf_ref/data/files/``) do not.

The SHA-256 values below were not computed here (this project is built offline). Each was cross-checked
against several independent public sources that pin the same file with it: Keras' and torchvision's
dataset code, and many projects' download scripts, which also agree on the byte sizes recorded here. The
CIFAR MD5 values are the ones published on the CIFAR page
(https://www.cs.toronto.edu/~kriz/cifar.html); the MNIST MD5 values are torchvision's. :func:`download`
verifies the SHA-256 (which covers the size); the size and the MD5 are recorded for reference only. A
user who distrusts a recorded value, or who downloads another file, passes ``sha256=`` (and ``url=``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

from ..validation import check_real


class KnownFile(NamedTuple):
    """A file :func:`download` knows: where to get it and what its bytes must hash to."""

    urls: tuple[str, ...]  # tried in order
    sha256: str
    size: int  # bytes
    md5: str  # the published MD5, for reference


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's mirror
    "http://yann.lecun.com/exdb/mnist/",  # the original site, often unavailable
)


def _mnist(name: str, sha256: str, size: int, md5: str) -> KnownFile:
    return KnownFile(tuple(m + name for m in _MNIST_MIRRORS), sha256, size, md5)


KNOWN_FILES: dict[str, KnownFile] = {
    "cifar-10-python.tar.gz": KnownFile(
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        170_498_071,
        "c58f30108f718f92721af3b95e74349a",
    ),
    "cifar-100-python.tar.gz": KnownFile(
        ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        169_001_437,
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
    "train-images-idx3-ubyte.gz": _mnist(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        9_912_422,
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    "train-labels-idx1-ubyte.gz": _mnist(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        28_881,
        "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    "t10k-images-idx3-ubyte.gz": _mnist(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        1_648_877,
        "9fb629c4189551a2d022fa330f9573f3",
    ),
    "t10k-labels-idx1-ubyte.gz": _mnist(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        4_542,
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
}

_CHUNK = 1 << 20
_MAX_TIMEOUT = 1e9  # seconds (31 years); what socket.settimeout accepts, with a margin


class ChecksumError(ValueError):
    """A file's SHA-256 is not the expected one (corrupt, truncated, or another file)."""


def _check_path(path: object, name: str, fn: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: {name} must be a str or path-like, got {type(path).__name__}")
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as 64 lowercase hex digits (read in 1 MiB chunks)."""
    path = _check_path(path, "path", "sha256_file")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256_hex(value: object, name: str, fn: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{fn}: {name} must be a str of 64 hex digits, got {type(value).__name__}")
    v = value.strip().lower()
    if len(v) != 64 or any(ch not in "0123456789abcdef" for ch in v):
        raise ValueError(f"{fn}: {name} must be 64 hex digits (a SHA-256), got {value!r}")
    return v


def verify_sha256(path: str | os.PathLike, expected: str, *, fn: str = "verify_sha256") -> None:
    """Raise :class:`ChecksumError` naming the file, expected and got digests unless they match.

    Parameters
    ----------
    path : path-like
        The file to hash.
    expected : str
        64 hex digits (case and surrounding whitespace ignored).
    fn : str
        Name of the calling function, used as the message prefix.
    """
    _check_path(path, "path", fn)  # named after the caller, not sha256_file
    expected = _check_sha256_hex(expected, "expected", fn)
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(
            f"{fn}: {os.fspath(path)} has SHA-256 {got}, expected {expected}; "
            "the file is corrupt, truncated or not the expected one"
        )


def download(
    name: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download one file into a directory and verify its SHA-256 (torchvision: ``download_url``).

    If ``dest/name`` already exists with the expected checksum, nothing is downloaded. Otherwise each
    URL is tried in turn; the bytes are streamed into a temporary file in ``dest`` while being hashed,
    and the file is renamed to ``dest/name`` only when the SHA-256 matches, so ``dest/name`` is either
    absent or complete and verified.

    Parameters
    ----------
    name : str
        A key of :data:`KNOWN_FILES` (``"cifar-10-python.tar.gz"``, ``"cifar-100-python.tar.gz"``,
        ``"train-images-idx3-ubyte.gz"``, ``"train-labels-idx1-ubyte.gz"``, ``"t10k-images-idx3-ubyte.gz"``,
        ``"t10k-labels-idx1-ubyte.gz"``), or any plain file name when both ``url`` and ``sha256`` are given.
    dest : path-like
        Directory to write into (created if missing).
    sha256 : str, optional
        Expected SHA-256 (64 hex digits). Required for unknown names; overrides the recorded value.
    url : str, optional
        Download from this URL instead of the recorded ones (any scheme :mod:`urllib` opens, including
        ``file://``).
    timeout : float
        Seconds a connection may stay silent, in ``(0, 1e9]``.

    Returns
    -------
    pathlib.Path
        ``dest/name``.

    Raises
    ------
    ChecksumError
        The downloaded bytes do not hash to the expected SHA-256 (from every URL tried).
    OSError
        Every URL failed to download (the message lists each failure).
    """
    fn = "download"
    _check_path(dest, "dest", fn)
    if not isinstance(name, str):
        raise TypeError(f"{fn}: name must be a str, got {type(name).__name__}")
    if not name or name != os.path.basename(name) or name in (".", ".."):
        raise ValueError(f"{fn}: name must be a plain file name without directories, got {name!r}")
    known = KNOWN_FILES.get(name)
    if known is None and (sha256 is None or url is None):
        raise ValueError(
            f"{fn}: name must be one of {tuple(KNOWN_FILES)} unless url and sha256 are both given, "
            f"got {name!r}"
        )
    expected = _check_sha256_hex(sha256, "sha256", fn) if sha256 is not None else known.sha256
    if url is not None and not isinstance(url, str):
        raise TypeError(f"{fn}: url must be a str, got {type(url).__name__}")
    urls = (url,) if url is not None else known.urls
    timeout = check_real(timeout, "timeout", fn)
    # a socket refuses (OverflowError) a timeout beyond about 9.2e9 s (int64 nanoseconds), inf included
    if not 0 < timeout <= _MAX_TIMEOUT:
        raise ValueError(f"{fn}: timeout must be > 0 seconds and at most {_MAX_TIMEOUT:.0e}, got {timeout!r}")
    dest = _check_path(dest, "dest", fn)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    if target.is_file() and sha256_file(target) == expected:
        return target
    failures = []
    for u in urls:
        try:
            got = _fetch_to(u, target, expected, timeout)
        except (OSError, ValueError) as exc:  # URLError is an OSError; a bad URL is a ValueError
            failures.append(f"{u}: {exc}")
            continue
        if got == expected:
            return target
        failures.append(f"{u}: SHA-256 {got}, expected {expected}")
    if all("SHA-256" in f for f in failures):
        raise ChecksumError(f"{fn}: {name}: no URL gave the expected bytes: " + "; ".join(failures))
    raise OSError(f"{fn}: {name}: every URL failed: " + "; ".join(failures))


def _fetch_to(url: str, target: Path, expected: str, timeout: float) -> str:
    """Stream ``url`` into a temporary file beside ``target``; rename it to ``target`` if it hashes to
    ``expected``. Returns the SHA-256 of what was received; the temporary file never outlives the call."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if got == expected:
            os.replace(tmp_name, target)  # atomic on POSIX and Windows within one directory
        return got
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def download_cifar10(dest: str | os.PathLike, **kwargs) -> Path:
    """Download ``cifar-10-python.tar.gz`` (163 MiB) into ``dest``; see :func:`download`."""
    return download("cifar-10-python.tar.gz", dest, **kwargs)


def download_cifar100(dest: str | os.PathLike, **kwargs) -> Path:
    """Download ``cifar-100-python.tar.gz`` (161 MiB) into ``dest``; see :func:`download`."""
    return download("cifar-100-python.tar.gz", dest, **kwargs)


def download_mnist(dest: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Download the four gzipped MNIST IDX files (11 MiB) into ``dest``; returns ``dest``."""
    dest = _check_path(dest, "dest", "download_mnist")
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        download(name, dest, timeout=timeout)
    return dest


__all__ = [
    "KNOWN_FILES",
    "ChecksumError",
    "KnownFile",
    "download",
    "download_cifar10",
    "download_cifar100",
    "download_mnist",
    "sha256_file",
    "verify_sha256",
]
