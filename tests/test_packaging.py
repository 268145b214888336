"""Packaging: the wheel built from this tree ships the datasets and golden vectors, and an installed copy
finds them from any working directory.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``, with the setuptools of the test
extra) from a copy of the files a build reads, so that the test never writes ``build/`` or ``*.egg-info``
into the checkout. The expected members and checksums come from the source tree itself, read here with
``hashlib``, not from saf_ref. Both tests together take about 2.5 s (the build: 2 s).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = REPO / "saf_ref" / "data" / "files"  # package data in the source tree
#: The SHA-256 of the shipped datasets, as published in saf_ref/data/files/README.md.
DATASETS = {
    "digits.npz": "f94976fca6c486c427d81cef081dc3794e38230882a498d548003a2bc46031d7",
    "mnist5k.npz": "98c8605cd81af20c932e47043939a1d77656a36d3838d169e03ba974e0d9f1b3",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_data_files() -> dict[str, bytes]:
    """Every file under saf_ref/data/files/, as its wheel member name -> bytes."""
    return {
        f"saf_ref/data/files/{p.relative_to(FILES).as_posix()}": p.read_bytes()
        for p in sorted(FILES.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="77", reason="building the wheel needs setuptools>=77")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "saf_ref", src / "saf_ref", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [*cmd, "-w", str(out), str(src)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("saf_ref-*.whl")
    return path


def test_wheel_ships_the_data_files_byte_for_byte(wheel):
    expected = source_data_files()
    # the datasets and the golden vectors (with their index and README) are all there
    assert {f"saf_ref/data/files/{n}" for n in DATASETS} <= set(expected)
    assert "saf_ref/data/files/golden/index.json" in expected and len(expected) >= 20
    with zipfile.ZipFile(wheel) as z:
        members = {n for n in z.namelist() if not n.endswith("/")}
        shipped = {n: z.read(n) for n in members if n.startswith("saf_ref/data/files/")}
        record = z.read(next(n for n in members if n.endswith(".dist-info/RECORD"))).decode()
        entry_points = z.read(next(n for n in members if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert sorted(shipped) == sorted(expected)
    for name, data in expected.items():
        assert sha256(shipped[name]) == sha256(data), name
    for name, digest in DATASETS.items():
        assert sha256(shipped[f"saf_ref/data/files/{name}"]) == digest, name
    # RECORD, which pip checks on install, lists each data file with the same digest (urlsafe base64)
    rows = {row[0]: row[1] for row in csv.reader(io.StringIO(record))}
    for name, data in expected.items():
        b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert rows[name] == f"sha256={b64}", name
    # the code is there, the checkout's other folders are not, and the command is declared
    assert {"saf_ref/__init__.py", "saf_ref/cli.py", "saf_ref/data/shipped.py"} <= members
    assert not any(n.startswith(("tests/", "data/", "scripts/", "tutorials/")) for n in members)
    assert "saf-ref = saf_ref.cli:main" in entry_points


def test_installed_wheel_finds_its_data_from_another_directory(wheel, tmp_path):
    # A wheel is a zip of the installed tree (purelib): unpacking it is what pip install does with it.
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import saf_ref, saf_ref.data as d; "
        "print(saf_ref.__file__); print(d.data_dir()); print(d.golden_dir()); "
        "print(d.load_digits(split='test').x.shape, d.load_mnist5k(split='train').x.shape)"
    )
    env = {k: v for k, v in os.environ.items() if k != "SAF_REF_DATA"}
    env["PYTHONPATH"] = str(site)  # ahead of the checkout's editable install
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    module, data_dir, golden, shapes = proc.stdout.splitlines()
    assert Path(module) == site / "saf_ref" / "__init__.py"
    assert Path(data_dir) == site / "saf_ref" / "data" / "files"
    assert Path(golden) == site / "saf_ref" / "data" / "files" / "golden"
    assert shapes == "(359, 1, 8, 8) (4000, 1, 28, 28)"
