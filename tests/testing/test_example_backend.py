"""The third-party style backend in examples/my_backend, checked with one command (a subprocess, as a
user runs it): it passes, with the known divergences and skips its README describes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ml_dtypes")

ROOT = Path(__file__).resolve().parents[2]


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
    for name in (
        "encode[float16]",
        "flip_by_uniform",
        "relu_vjp",
        "conv2d_forward",
        "linear_vjp",
        "cross_entropy_forward",
        "cross_entropy_vjp",
        "sgd",
    ):
        assert status[name] == "pass", name
    assert status["relu_forward"] == "known divergence"  # np.maximum(-0.0, 0) is +0.0
    assert status["encode[bfloat16]"] == "known divergence"  # ml_dtypes narrows float64 via float32
    for name in ("conv2d_vjp", "batchnorm2d_forward", "model[resnet20]", "transform_vjp[tanh]", "quantize"):
        assert status[name] == "skip", name
    divergences = set(report["known_divergences"])
    assert {"relu-negative-zero", "narrowing-via-float32"} <= divergences
    assert report["summary"]["fail"] == 0 and report["ok"] is True
