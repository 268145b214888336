"""The third-party style backend in examples/my_backend, checked with one command (a subprocess, as a
user runs it): it passes, with the known divergences and skips its README describes.

What the backend's casts do depends on the installed ml_dtypes (before 0.7 it rounded float64 to bfloat16
and float8 through float32, twice; 0.7 rounds once), so the test does not assume either: it asks
ml_dtypes directly, on a double-rounding trap whose correct code is derived by hand below, and expects
the suite to report exactly that ("pass" or the known divergence ``narrowing-via-float32``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")

ROOT = Path(__file__).resolve().parents[2]

# format -> (float64 trap x, the code of x rounded once, the code of x rounded through float32).
# x = 1 + h + 2**-30 with h half the format's spacing at 1 (2**-8, 2**-4, 2**-3 for 7, 3, 2 mantissa
# bits): x is above the midpoint 1 + h, so rounding once gives 1 + 2h (code of 1.0, plus one); float32
# first drops the 2**-30 (less than its half-ulp 2**-24), leaving the exact midpoint, which ties to the
# even code of 1.0. Codes of 1.0: bfloat16 0x3F80, float8_e4m3fn 0x38 (bias 7), float8_e5m2 0x3C (bias 15).
TRAPS = {
    "bfloat16": (1 + 2.0**-8 + 2.0**-30, 0x3F81, 0x3F80),
    "float8_e4m3fn": (1 + 2.0**-4 + 2.0**-30, 0x39, 0x38),
    "float8_e5m2": (1 + 2.0**-3 + 2.0**-30, 0x3D, 0x3C),
}


def ml_dtypes_narrowing(name: str) -> str:
    """``"direct"`` if the installed ml_dtypes rounds float64 to ``name`` once, ``"via-float32"`` if twice."""
    x, once, twice = TRAPS[name]
    dtype = np.dtype(getattr(ml_dtypes, name))
    code = int(np.array([x]).astype(dtype).view(f"u{dtype.itemsize}")[0])
    assert code in (once, twice), f"ml_dtypes encodes {x!r} to {name} as {code:#x}: neither rounding"
    return "direct" if code == once else "via-float32"


def test_example_backend_one_command(tmp_path):
    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "saf_ref",
        "check",
        "examples/my_backend/backend.py:MyBackend",
        "--examples",
        "8",
        "--json",
        str(report_path),
        "--quiet",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "my_backend (numpy + ml_dtypes)" in proc.stdout
    report = json.loads(report_path.read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    # NumPy's float casts keep NaN payloads (saf_ref writes the canonical quiet NaN): the NaN kinds of the
    # boundary tables show it as the documented nan-payload divergence, and only that
    divs = {c["name"]: set(c["divergences"]) for c in report["checks"]}
    assert status["encode[float16]"] in ("pass", "known divergence")
    assert divs["encode[float16]"] <= {"nan-payload"}
    for name in (
        "flip_by_uniform",
        "relu_vjp",
        "conv2d_forward",
        "linear_vjp",
        "cross_entropy_forward",
        "cross_entropy_vjp",
        "sgd",
    ):
        assert status[name] == "pass", name
    divergences = set(report["known_divergences"])
    # np.maximum(-0.0, 0) is +0.0 or -0.0 depending on NumPy's kernel (SIMD max returns its second
    # operand on ties): either is accepted, and a divergence must be the documented one.
    assert status["relu_forward"] in ("pass", "known divergence")
    assert (status["relu_forward"] == "known divergence") == ("relu-negative-zero" in divergences)
    narrowing = {name: ml_dtypes_narrowing(name) for name in TRAPS}
    for name, how in narrowing.items():
        assert ("narrowing-via-float32" in divs[f"encode[{name}]"]) == (how != "direct"), name
        assert divs[f"encode[{name}]"] <= {"narrowing-via-float32", "nan-payload"}, name
    assert ("narrowing-via-float32" in divergences) == ("via-float32" in narrowing.values())
    for name in ("conv2d_vjp", "batchnorm2d_forward", "model[resnet20]", "transform_vjp[tanh]", "quantize"):
        assert status[name] == "skip", name
    assert report["summary"]["fail"] == 0 and report["ok"] is True
