"""saf_ref.testing.jax_backend: JAX through the conformance suite, and the flush-to-zero divergence it needs.

The first tests need no JAX: they check that the suite recognises a flush to zero (XLA's FTZ/DAZ modes on
the CPU) only where saf_ref's result or an intermediate is below the normal range, and still fails a
zero elsewhere. The rest run JaxBackend through the suite and are skipped where jax is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.testing.checks import SuiteOptions
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.suite import run_suite

OPTIONS = SuiteOptions(examples=5, model_examples=1, seed=0)


class FlushingBackend(NumpyBackend):
    """saf_ref with flush-to-zero: float64 -> float32 conversions and transform results below the normal
    range become +-0 (what XLA's CPU runtime does)."""

    def encode(self, format_name, x):
        if x.dtype == np.float64:
            tiny = np.finfo(np.float32).tiny
            x = np.where(np.abs(x) < tiny, np.copysign(0.0, x), x)
        return super().encode(format_name, x)

    def transform_forward(self, name, u, *, scale):
        w = super().transform_forward(name, u, scale=scale)
        small = np.abs(u) < max(1.0, scale) * np.finfo(u.dtype).tiny
        return np.where(small, np.copysign(np.zeros_like(w), w), w)


class ZeroAtOne(NumpyBackend):
    """A bug, not a flush: tanh returns 0 for |u| < 1 (a normal range)."""

    def transform_forward(self, name, u, *, scale):
        w = super().transform_forward(name, u, scale=scale)
        return np.where(np.abs(u) < 1, np.zeros_like(w), w) if name == "tanh" else w

    def encode(self, format_name, x):
        codes = super().encode(format_name, x)
        return np.where(np.abs(x) < 1e-30, np.zeros_like(codes), codes)  # normal float32 values lost


def _statuses(report):
    return {r.name: r for r in report.results}


def test_flush_to_zero_is_a_known_divergence_where_values_are_subnormal():
    report = run_suite(FlushingBackend(), OPTIONS, only=["encode[float32]", "encode[bfloat16]",
                                                          "transform_forward*"])
    results = _statuses(report)
    for name in ("encode[float32]", "encode[bfloat16]", "transform_forward[tanh]",
                 "transform_forward[arctan]"):
        assert results[name].status == "known divergence", (name, results[name].message)
        assert results[name].divergences.get("flush-to-zero", 0) > 0, name
    assert report.ok
    strict = SuiteOptions(examples=5, model_examples=1, seed=0, strict=True)
    assert not run_suite(FlushingBackend(), strict, only=["encode[float32]"]).ok


def test_a_zero_in_the_normal_range_is_not_excused():
    results = _statuses(run_suite(ZeroAtOne(), OPTIONS, only=["encode[float32]", "transform_forward[tanh]"]))
    assert results["encode[float32]"].status == "fail"
    assert results["transform_forward[tanh]"].status == "fail"


class FlushingRelu(NumpyBackend):
    """ReLU under denormals-are-zero: a subnormal input reads as 0."""

    def relu_forward(self, x):
        return super().relu_forward(np.where(np.abs(x) < np.finfo(x.dtype).tiny, np.zeros_like(x), x))

    def relu_vjp(self, x, dy):
        return super().relu_vjp(np.where(np.abs(x) < np.finfo(x.dtype).tiny, np.zeros_like(x), x), dy)


class ReluVjpZeroBelowOne(NumpyBackend):
    """A bug, not a flush: the ReLU gradient is 0 for 0 < x < 1."""

    def relu_vjp(self, x, dy):
        return np.where((x > 0) & (x < 1), np.zeros_like(dy), super().relu_vjp(x, dy))


def test_relu_flush_to_zero_is_recognised_and_a_real_zero_gradient_is_not():
    results = _statuses(run_suite(FlushingRelu(), OPTIONS, only=["relu_*"]))
    for name in ("relu_forward", "relu_vjp"):
        assert results[name].status == "known divergence", (name, results[name].message)
        assert results[name].divergences.get("flush-to-zero", 0) > 0
    buggy = _statuses(run_suite(ReluVjpZeroBelowOne(), OPTIONS, only=["relu_vjp"]))
    assert buggy["relu_vjp"].status == "fail"


# ------------------------------------------------------------------------------- JAX through the suite
# JAX runs in a child process (``python -m saf_ref.testing.runner jax ... --json``): JAX starts threads,
# and a test that forks afterwards in this process (a process pool) could deadlock.
def _jax_report(tmp_path, *args):
    """The JSON report of ``saf-ref check jax ARGS`` run in a fresh interpreter (skip without jax)."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install 'saf_ref[jax]')")
    path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "saf_ref.testing.runner", "jax", "--quiet", "--json", str(path), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    assert path.exists(), done.stderr[-3000:]
    report = json.loads(path.read_text())
    return done.returncode, report, {c["name"]: c for c in report["checks"]}


CHEAP = ["encode*", "decode*", "flip_by_uniform", "apply_faults", "quantize", "dequantize", "transform_*",
         "relu_*", "sgd", "linear_*", "cross_entropy_*", "mx_*", "groupnorm_*"]


def test_jax_passes_the_elementwise_and_bit_checks(tmp_path):
    only = [a for pattern in CHEAP for a in ("--only", pattern)]
    status, report, checks = _jax_report(tmp_path, "--examples", "5", "--model-examples", "1", *only)
    assert status == 0 and report["ok"], [c["message"] for c in checks.values() if c["status"] == "fail"]
    assert all(c["status"] in ("pass", "known divergence") for c in checks.values())
    # the divergences JAX shows, each where it is expected (README of the oracle kit)
    assert checks["encode[float32]"]["divergences"].get("flush-to-zero", 0) > 0  # float64 -> float32
    assert checks["encode[bfloat16]"]["divergences"].get("narrowing-via-float32", 0) > 0
    assert checks["encode[float8_e4m3fn]"]["status"] == "pass"  # IEEE-style overflow, as saf_ref
    assert checks["relu_forward"]["divergences"].get("flush-to-zero", 0) > 0
    assert checks["relu_vjp"]["divergences"].get("relu-nan-gradient", 0) > 0
    assert checks["quantize"]["unsupported"] > 0  # subnormal inputs declined, and said so
    assert checks["mx_encode[mxfp4]"]["unsupported"] > 0  # the same for MX blocks
    assert all(checks[f"mx_{op}[mxfp8_e4m3]"]["status"] == "pass" for op in ("encode", "decode"))
    assert checks["groupnorm_vjp"]["status"] == "pass"


def test_jax_passes_layers_and_a_model_in_float64(tmp_path):
    layers = ["conv2d_*", "maxpool2d_*", "batchnorm2d_*", "global_avgpool_*", "model[[]resnet20]"]
    only = [a for pattern in layers for a in ("--only", pattern)]
    status, report, checks = _jax_report(
        tmp_path, "--dtype", "float64", "--examples", "3", "--model-examples", "1", *only
    )
    assert status == 0 and report["ok"], [c["message"] for c in checks.values() if c["status"] == "fail"]
    assert set(checks) >= {"conv2d_vjp", "batchnorm2d_vjp", "model[resnet20]"}
    assert {c["status"] for c in checks.values()} == {"pass"}  # float64: nothing flushed in these cases


def _run_with_jax(code: str):
    """Run ``code`` in a fresh Python (JAX's process-wide settings stay out of this one); skip without
    jax."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install 'saf_ref[jax]')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_jax_backend_rejects_a_bad_dtype_and_device(tmp_path):
    code = (
        "from saf_ref.testing.jax_backend import JaxBackend\n"
        "for kw in ({'dtype': 'float16'}, {'device': 'no_such_platform'}):\n"
        "    try:\n"
        "        JaxBackend(**kw)\n"
        "    except ValueError as err:\n"
        "        print(err)\n"
    )
    out = _run_with_jax(code).stdout
    assert "JaxBackend: dtype must be one of ('float32', 'float64'), got 'float16'" in out
    assert "JaxBackend: device must be a JAX platform this machine has, got 'no_such_platform'" in out


def test_jax_mx_methods_reject_bad_arguments():
    code = (
        "import numpy as np\n"
        "from saf_ref.testing.jax_backend import JaxBackend\n"
        "b = JaxBackend()\n"
        "calls = [\n"
        "    lambda: b.mx_encode('mxfp8_e4m3', np.ones((2, 31), np.float32)),\n"
        "    lambda: b.mx_encode('mxfp8_e4m3', np.float32(1.0)),\n"
        "    lambda: b.mx_decode('mxfp8_e4m3', np.zeros(1, np.uint8), np.zeros(16, np.uint8)),\n"
        "    lambda: b.mx_encode('mxfp5', np.ones(32, np.float32)),\n"
        "    lambda: b.mx_encode('mxfp8_e4m3', np.full(32, 1e-40, np.float32)),\n"
        "]\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "        print('no error')\n"
        "    except (ValueError, NotImplementedError) as err:\n"
        "        print(type(err).__name__, err)\n"
    )
    run = _run_with_jax(code)
    lines = run.stdout.splitlines()
    assert lines == [
        "ValueError JaxBackend.mx_encode: the last axis must be a multiple of 32, got shape (2, 31)",
        "ValueError JaxBackend.mx_encode: the last axis must be a multiple of 32, got shape ()",
        "ValueError JaxBackend.mx_decode: the last axis must be a multiple of 32, got shape (16,)",
        "NotImplementedError JaxBackend: no MX format 'mxfp5'",
        "NotImplementedError JaxBackend.mx_encode: subnormal inputs (XLA on the CPU treats them as zero: "
        "denormals-are-zero)",
    ], run.stderr
