"""``saf-ref check`` and the suite engine's handling of backends: loading by name, partial backends,
NotImplementedError, modified inputs, wrong results, exit status, JSON report, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saf_ref.cli import main
from saf_ref.testing.checks import CHECKS, SuiteOptions
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.protocol import describe_backend
from saf_ref.testing.runner import load_backend
from saf_ref.testing.suite import run_suite, select_checks


def run(argv, capsys):
    status = main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


# ------------------------------------------------------------------------------------------ the CLI
def test_check_numpy_writes_json_and_exits_zero(tmp_path, capsys):
    path = tmp_path / "report.json"
    status, out, _ = run(
        ["check", "numpy", "--only", "encode*", "--examples", "3", "--json", str(path)], capsys
    )
    assert status == 0
    assert "encode[bfloat16]" in out and "5 passed, 0 passed with known divergences, 0 failed" in out
    report = json.loads(path.read_text())
    assert report["schema"] == "saf_ref.check_report" and report["version"] == 1 and report["ok"] is True
    assert [c["name"] for c in report["checks"]] == [c for c in CHECKS if c.startswith("encode")]
    assert all(c["status"] == "pass" and c["examples"] >= 4 for c in report["checks"])
    assert report["options"]["examples"] == 3 and report["spec"] == "numpy"


def test_check_fails_with_status_one_and_a_reproduction(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "report.json"
    spec = "saf_ref.testing.mutants:ReluGradOneAtZero"
    argv = [
        "check",
        spec,
        "--only",
        "relu*",
        "--examples",
        "3",
        "--quiet",
        "--threads",
        "1",
        "--json",
        str(path),
    ]
    status, out, _ = run(argv, capsys)
    assert status == 1
    assert "relu_vjp" in out and "FAILED" in out
    assert f"reproduce: saf-ref check {spec} --only 'relu_vjp'" in out
    report = json.loads(path.read_text())
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert report["ok"] is False and [c["name"] for c in failed] == ["relu_vjp"]
    assert failed[0]["worst_ratio"] is None and failed[0]["first_failure"] == 1  # inf is written as null


def test_check_list(capsys):
    status, out, _ = run(["check", "numpy", "--list"], capsys)
    assert status == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == list(CHECKS)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "nope"], "BACKEND must be 'numpy', 'torch', 'jax', 'package.module:Name'"),
        (["check", "no_such_module_xyz:B"], "cannot import 'no_such_module_xyz'"),
        (["check", "saf_ref.testing.numpy_backend:Missing"], "has no attribute 'Missing'"),
        (["check", "missing_dir/b.py:B"], "no such file 'missing_dir/b.py'"),
        (["check", "numpy", "--device", "cuda"], "NumpyBackend: device must be 'cpu'"),
        (["check", "numpy", "--only", "no_such_check"], "no check matches only=\\['no_such_check'\\]"),
        # Options are checked before the backend is loaded (an unimportable one would be reported first
        # otherwise), and named as typed, not as SuiteOptions' fields.
        (["check", "gone_xyz:B", "--examples", "0"], "^saf-ref check: error: --examples must be in"),
        (["check", "gone_xyz:B", "--model-examples", "0"], "error: --model-examples must be in"),
        (["check", "gone_xyz:B", "--rel-factor", "0.5"], "error: --rel-factor must be a finite"),
        (["check", "gone_xyz:B", "--json", "no_such_dir/r.json"], "error: --json must be a writable"),
        (["check", "gone_xyz:B", "--json", "."], "error: --json must be a writable file path"),
    ],
)
def test_check_usage_errors_exit_two(argv, message, capsys):
    status, _, err = run(argv, capsys)
    assert status == 2
    import re

    assert re.search(message, err), err


def test_check_leaves_no_hypothesis_folder_behind(tmp_path):
    """hypothesis caches what it reads from source files under ./.hypothesis by default; ``saf-ref
    check`` points it at a temporary directory while the suite runs (a separate process, as a user
    runs it: pytest's own hypothesis plugin would hide the effect)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "saf_ref", "check", "numpy", "--examples", "2", "--only", "relu*"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_suite_gives_the_hypothesis_home_back():
    from hypothesis.configuration import storage_directory

    before = storage_directory(intent_to_write=False).home_directory
    run_suite(NumpyBackend(), examples=2, only=["relu*"])
    assert storage_directory(intent_to_write=False).home_directory == before


# ----------------------------------------------------------------------------------------- loading
BACKEND_FILE = """
import numpy as np

class Relu:
    name = "file relu"
    def __init__(self, dtype="float32"):
        self.dtype = dtype
    def relu_forward(self, x):
        return np.where(x < 0, x.dtype.type(0), x)

def make():
    return Relu("float64")

instance = Relu()
"""


def test_load_backend_from_a_file(tmp_path):
    path = tmp_path / "my_relu.py"
    path.write_text(BACKEND_FILE)
    b = load_backend(f"{path}:Relu", dtype="float64")
    assert b.name == "file relu" and b.dtype == "float64"
    assert load_backend(f"{path}:make").dtype == "float64"
    assert load_backend(f"{path}:instance").dtype == "float32"
    with pytest.raises(ValueError, match=r"does not accept \['device'\]"):
        load_backend(f"{path}:Relu", device="cuda")
    with pytest.raises(ValueError, match=r"is an instance; it cannot take \['dtype'\]"):
        load_backend(f"{path}:instance", dtype="float64")
    with pytest.raises(TypeError, match="load_backend: spec must be a str, got int"):
        load_backend(3)


def test_load_backend_builtins_and_modules():
    assert isinstance(load_backend("numpy", dtype="float64"), NumpyBackend)
    assert load_backend("saf_ref.testing.numpy_backend:NumpyBackend").dtype == "float32"


# ------------------------------------------------------------------------ the engine and backends
class OnlyRelu:
    """Implements relu_forward only."""

    def relu_forward(self, x):
        return np.where(x < 0, x.dtype.type(0), x)


def test_partial_backend_skips_what_is_missing():
    report = run_suite(OnlyRelu(), examples=3)
    assert report.ok
    statuses = {r.name: r.status for r in report.results}
    assert statuses.pop("relu_forward") == "pass"
    assert set(statuses.values()) == {"skip"}
    assert report.result("relu_vjp").message == "backend has no relu_vjp"
    assert "54 skipped" in report.table()


class NoBfloat16(NumpyBackend):
    def encode(self, format_name, x):
        if format_name == "bfloat16":
            raise NotImplementedError("no bfloat16 here")
        return super().encode(format_name, x)


def test_not_implemented_skips_the_check():
    report = run_suite(NoBfloat16(), examples=3, only=["encode*"])
    r = report.result("encode[bfloat16]")
    assert (
        r.status == "skip" and "not implemented (encode: no bfloat16 here)" in r.message and r.unsupported > 0
    )
    assert report.result("encode[float16]").status == "pass" and report.ok


class ModifiesInput(NumpyBackend):
    def relu_vjp(self, x, dy):
        out = super().relu_vjp(x, dy)
        dy[x <= 0] = 0  # the classic in-place bug
        return out


class WrongDtype(NumpyBackend):
    def linear_forward(self, x, w, b):
        return super().linear_forward(x, w, b).astype(np.float64)


class Raises(NumpyBackend):
    def conv2d_forward(self, x, w, b, *, stride, padding):
        raise RuntimeError("kernel launch failed")


@pytest.mark.parametrize(
    "backend, check, message",
    [
        (ModifiesInput(), "relu_vjp", "relu_vjp: backend.relu_vjp modified its argument 1"),
        (WrongDtype(), "linear_forward", "got dtype float64, expected float32"),
        (Raises(), "conv2d_forward", "RuntimeError: kernel launch failed"),
    ],
)
def test_engine_fails_bad_behaviour(backend, check, message):
    report = run_suite(backend, examples=2, only=[check])
    r = report.result(check)
    assert r.status == "fail" and message in r.message and r.first_failure == 1
    assert not report.ok


def test_select_checks_patterns():
    assert [c.name for c in select_checks(["model*"])] == [
        "model[resnet20]",
        "model[resnet18_cifar]",
        "model[resnet18]",
    ]
    assert [c.name for c in select_checks(["encode[bfloat16]"])] == ["encode[bfloat16]"]
    assert "relu_vjp" not in [c.name for c in select_checks(None, ["*vjp*"])]


# ------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"examples": 0}, ValueError, r"SuiteOptions: examples must be in \[1, inf\], got 0"),
        ({"seed": -1}, ValueError, r"SuiteOptions: seed must be in \[0, inf\], got -1"),
        ({"model_examples": 0}, ValueError, "SuiteOptions: model_examples must be in"),
        ({"e4m3_overflow": "clamp"}, ValueError, "SuiteOptions: e4m3_overflow must be one of"),
        ({"narrowing": "twice"}, ValueError, "SuiteOptions: narrowing must be one of"),
        ({"nan_payloads": "ignore"}, ValueError, "SuiteOptions: nan_payloads must be one of"),
        ({"rel_factor": 0.5}, ValueError, "SuiteOptions: rel_factor must be a finite number >= 1, got 0.5"),
        ({"rel_factor": "2"}, TypeError, "SuiteOptions: rel_factor must be a real number"),
        ({"examples": 2.5}, TypeError, "SuiteOptions: examples must be an integer"),
    ],
)
def test_suite_options_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        SuiteOptions(**kwargs)


class Declares:
    def __init__(self, dtype="float32", u=2.0**-24):
        self.dtype, self._u = dtype, u

    def unit_roundoff(self, dtype):
        return self._u


def test_describe_backend_defaults_and_validation():
    info = describe_backend(OnlyRelu())
    assert info == ("OnlyRelu", "cpu", np.dtype(np.float32), 2.0**-24)
    assert describe_backend(Declares("float64", 2.0**-53)).roundoff == 2.0**-53
    with pytest.raises(
        TypeError, match="describe_backend: backend.dtype must be 'float32' or 'float64', got 'float16'"
    ):
        describe_backend(Declares("float16"))
    with pytest.raises(
        ValueError, match=r"describe_backend: backend.unit_roundoff\('float32'\) must be in \(0, 1\)"
    ):
        describe_backend(Declares(u=2.0))
    with pytest.raises(TypeError, match=r"must return a float, got 'small'"):
        describe_backend(Declares(u="small"))


def test_run_suite_argument_errors():
    with pytest.raises(TypeError, match="run_suite: give options or keyword options, not both"):
        run_suite(OnlyRelu(), SuiteOptions(), examples=3)
    report = run_suite(OnlyRelu(), examples=1, only=["relu_forward"])
    with pytest.raises(KeyError, match="no check named 'nope'"):
        report.result("nope")
