"""Bad input to ``saf-ref check``: every broken backend gets a one-line report naming what is wrong (the
backend, the file, the method), never a traceback from the suite's internals.

Loading (exit status 2, one line on stderr): an unknown backend name, a module or file that raises on
import, a name the file does not define, a constructor that raises (a missing optional dependency).
Running (the check fails, its message names the method): a missing method (skipped, named), a method
that raises, results of the wrong dtype, shape, type or arity.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.cli import main
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.suite import run_suite

BROKEN_FILE = '''
import numpy as np
from saf_ref.testing.numpy_backend import NumpyBackend

class NeedsGpu:
    def __init__(self):
        import no_such_gpu_library_xyz  # noqa: F401

class Fine(NumpyBackend):
    pass

class Half(NumpyBackend):
    def __init__(self):
        super().__init__()
        self.dtype = "float16"

class IgnoresDtype(NumpyBackend):
    def __init__(self, dtype="float32"):
        super().__init__()  # the dtype asked for is dropped: the backend stays float32

class ReturnsFloat64(NumpyBackend):
    def relu_forward(self, x):  # declares float32, computes in float64
        return super().relu_forward(x.astype(np.float64))

class LinearOnly:
    dtype = "float64"

    def linear_forward(self, x, w, b):
        return (x @ w.T).astype(np.float32)
'''


def _run(argv, capsys):
    status = main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize(
    "backend, message",
    [
        ("nosuch", "load_backend: BACKEND must be 'numpy', 'torch', 'jax', 'package.module:Name' or "
                   "'path/to/file.py:Name', got 'nosuch'"),
        ("no_such_pkg_xyz.backend:B", "load_backend: cannot import 'no_such_pkg_xyz.backend' (from BACKEND "
                                      "'no_such_pkg_xyz.backend:B'): ModuleNotFoundError"),
        ("{raises}:B", "load_backend: cannot import '{raises}' (from BACKEND '{raises}:B'): RuntimeError: "
                       "boom at import"),
        ("{broken}:Missing", "load_backend: module '{broken}' has no attribute 'Missing'"),
        ("{broken}:NeedsGpu", "load_backend: cannot build the backend '{broken}:NeedsGpu': "
                              "ModuleNotFoundError: No module named 'no_such_gpu_library_xyz'"),
        # the declared dtype: valid, the one asked for, and what the network ops return
        ("{broken}:Half", "load_backend: backend '{broken}:Half': describe_backend: backend.dtype must be "
                          "'float32' or 'float64', got 'float16'"),
        ("{broken}:IgnoresDtype --dtype float64",
         "load_backend: backend '{broken}:IgnoresDtype' must declare the dtype it was asked for (--dtype "
         "float64), got backend.dtype = 'float32'"),
        ("{broken}:ReturnsFloat64", "load_backend: backend '{broken}:ReturnsFloat64' declares dtype float32 "
                                    "but its relu_forward returned float64 for float32 inputs"),
        ("{broken}:LinearOnly", "load_backend: backend '{broken}:LinearOnly' declares dtype float64 but its "
                                "linear_forward returned float32 for float64 inputs"),
    ],
)
def test_a_backend_that_cannot_be_loaded_is_one_line_with_status_two(backend, message, tmp_path, capsys):
    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('boom at import')\n")
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN_FILE)
    paths = {"raises": str(raises), "broken": str(broken)}
    status, out, err = _run(["check", *backend.format(**paths).split(), "--only", "relu_forward"], capsys)
    assert status == 2 and out == ""
    assert err.startswith("saf-ref check: error: load_backend: ") and message.format(**paths) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_verify_dtype_accepts_the_builtin_backends_and_a_backend_without_probes():
    from saf_ref.testing.runner import load_backend, verify_dtype

    assert load_backend("numpy", dtype="float64").dtype == "float64"
    verify_dtype(OnlyDecode(), "only-decode", "float32")  # no network op to probe: nothing to say
    with pytest.raises(ValueError, match="must declare the dtype it was asked for"):
        verify_dtype(NumpyBackend(), "numpy", "float64")

    class HugeRoundoff(NumpyBackend):
        def unit_roundoff(self, dtype):
            return 2.0

    with pytest.raises(ValueError, match=r"load_backend: backend 'h': describe_backend: "
                                         r"backend.unit_roundoff\('float32'\) must be in \(0, 1\), got 2.0"):
        verify_dtype(HugeRoundoff(), "h")


def test_a_file_backend_that_loads_runs(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN_FILE)
    status, out, _ = _run(["check", f"{broken}:Fine", "--only", "relu_forward", "--examples", "2"], capsys)
    assert status == 0 and "relu_forward" in out


class OnlyDecode:
    name = "only-decode"

    def decode(self, format_name, codes):
        return NumpyBackend().decode(format_name, codes)


def test_a_missing_method_is_reported_by_name():
    report = run_suite(OnlyDecode(), examples=2, only=["encode[float16]", "decode[float16]"])
    r = report.result("encode[float16]")
    assert r.status == "skip" and r.message == "backend has no encode"
    assert report.result("decode[float16]").status == "pass"


class Broken(NumpyBackend):
    """One broken method per check below."""

    def encode(self, format_name, x):  # wrong dtype
        return super().encode(format_name, x).astype(np.int64)

    def decode(self, format_name, codes):  # wrong shape
        return super().decode(format_name, codes).reshape(-1)[:-1]

    def relu_forward(self, x):  # not an array
        return list(np.ravel(super().relu_forward(x)))

    def relu_vjp(self, x, dy):  # raises
        raise ZeroDivisionError("internal kernel error")

    def conv2d_vjp(self, x, w, b, dy, *, stride, padding):  # wrong arity
        return super().conv2d_vjp(x, w, b, dy, stride=stride, padding=padding)[:2]

    def quantize(self, x, config):  # codes only, no context
        return super().quantize(x, config)[0]

    def batchnorm2d_forward(self, *args, **kwargs):  # y only
        return super().batchnorm2d_forward(*args, **kwargs)[0]

    def linear_forward(self, x, w, b):  # wrong output shape
        return super().linear_forward(x, w, b).T


@pytest.mark.parametrize(
    "check, message",
    [
        ("encode[float16]", "encode[float16](x float32): got dtype int64, expected uint16"),
        ("decode[float16]", "decode[float16]: got shape (65535,), expected (65536,)"),
        ("relu_forward", "relu_forward: expected a numpy.ndarray, got list"),
        ("relu_vjp", "relu_vjp: backend.relu_vjp raised ZeroDivisionError: internal kernel error"),
        ("conv2d_vjp", "conv2d_vjp: backend.conv2d_vjp must return a tuple (dx, dw, db), got tuple"),
        ("quantize", "quantize: backend.quantize must return a tuple (codes, context), got ndarray"),
        ("batchnorm2d_forward", "batchnorm2d_forward: backend.batchnorm2d_forward must return a tuple (y, "
                                "new_running_mean, new_running_var), got ndarray"),
        ("linear_forward", "got shape"),
    ],
)
def test_a_wrong_result_or_an_error_fails_the_check_naming_the_method(check, message):
    report = run_suite(Broken(), examples=2, only=[check])
    r = report.result(check)
    assert r.status == "fail" and not report.ok
    first_line = r.message.splitlines()[0]
    assert message in first_line, first_line
    assert "Traceback" not in r.message and "File \"" not in r.message
