"""The pytest entry points: conformance_tests() builds one parametrized test per check (pass, skip or fail
with the suite's message), assert_conforms() raises with every failure, and ``pytest --pyargs
saf_ref.testing`` runs the suite on a backend named by environment variables."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from saf_ref.testing.checks import CHECKS
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.pytest_plugin import assert_conforms, conformance_tests


class BrokenRelu(NumpyBackend):
    def relu_vjp(self, x, dy):
        return np.where(x >= 0, dy, dy.dtype.type(0))  # ReLU'(0) = 1


class OnlyRelu:
    def relu_forward(self, x):
        return np.where(x < 0, x.dtype.type(0), x)


def _params(test) -> list[str]:
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return list(mark.args[1])


def test_conformance_tests_is_parametrized_over_the_checks():
    test = conformance_tests(NumpyBackend, examples=2)
    assert _params(test) == list(CHECKS)
    assert _params(conformance_tests(NumpyBackend, only=["relu*"])) == ["relu_forward", "relu_vjp"]


def test_conformance_tests_pass_skip_and_fail():
    calls = []

    def factory():
        calls.append(1)
        return OnlyRelu()

    test = conformance_tests(factory, examples=2, only=["relu*"])
    test("relu_forward")  # passes
    with pytest.raises(pytest.skip.Exception, match="backend has no relu_vjp"):
        test("relu_vjp")
    assert len(calls) == 1  # the factory runs once

    failing = conformance_tests(BrokenRelu(), examples=2, only=["relu_vjp"])  # an instance works too
    with pytest.raises(pytest.fail.Exception, match=r"relu_vjp: not bit-exact at index"):
        failing("relu_vjp")


def test_strict_fails_known_divergences():
    class PlusZeroRelu(NumpyBackend):
        def relu_forward(self, x):
            return np.maximum(x, x.dtype.type(0))  # relu(-0.0) = +0.0: a known divergence

    conformance_tests(PlusZeroRelu(), examples=2, only=["relu_forward"])("relu_forward")
    strict = conformance_tests(PlusZeroRelu(), examples=2, only=["relu_forward"], strict=True)
    with pytest.raises(pytest.fail.Exception, match="relu-negative-zero"):
        strict("relu_forward")


def test_assert_conforms():
    report = assert_conforms(NumpyBackend(), examples=2, only=["relu*", "encode[float16]"])
    assert [r.name for r in report.results] == ["encode[float16]", "relu_forward", "relu_vjp"]
    with pytest.raises(AssertionError, match="fails the saf_ref conformance suite:\n\nrelu_vjp: "):
        assert_conforms(BrokenRelu(), examples=2, only=["relu*"])


def test_pytest_pyargs_entry_point():
    env = dict(os.environ, SAF_REF_BACKEND="numpy", SAF_REF_EXAMPLES="2", SAF_REF_DTYPE="float64")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "saf_ref.testing",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "relu or encode",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "13 passed" in proc.stdout  # relu_forward, relu_vjp, 5 encode[*], 6 mx_encode[*]
