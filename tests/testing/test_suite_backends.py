"""The whole suite on saf_ref's own NumPy backend and on PyTorch (CPU): both pass, with exactly the known
divergences the installed PyTorch shows; the policy options move those divergences as they should.

Which divergences a PyTorch release has is its business (2.13 rounds float64 to bfloat16 through float32
and saturates float8_e4m3fn; a later release may not), so the tests do not assume them: ``torch_quirks``
asks PyTorch directly, on one input per divergence whose correct result is derived by hand, and the suite
must report exactly those.
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.testing.checks import CHECKS
from saf_ref.testing.contracts import KNOWN_DIVERGENCES
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.suite import run_suite

#: examples per check (the command line default); the boundary examples run in addition
CI_EXAMPLES = 30


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest (and immune to a busy CI box)
    yield torch
    torch.set_num_threads(old)


def _divergences(report) -> set[str]:
    return {part for r in report.results for k in r.divergences for part in k.split("+")}


def _parts(result) -> set[str]:
    return {part for k in result.divergences for part in k.split("+")}


def torch_quirks(torch, dtype: str = "float32") -> set[str]:
    """The documented divergences (other than NaN payloads) this PyTorch shows in ``dtype``, probed one
    input each."""
    F = torch.nn.functional
    quirks = set()
    # 1 + 2**-8 + 2**-30 lies above the bfloat16 midpoint 1 + 2**-8: rounded once it is 1 + 2**-7
    # (0x3F81); through float32 the 2**-30 is lost, the midpoint ties to even, 1.0 (0x3F80).
    code = torch.tensor([1 + 2.0**-8 + 2.0**-30], dtype=torch.float64).to(torch.bfloat16).view(torch.int16)
    if int(code.item()) == 0x3F80:
        quirks.add("narrowing-via-float32")
    # 1e4 overflows float8_e4m3fn (max 448): IEEE-style conversion gives NaN 0x7F, saturation 448 0x7E.
    if int(torch.tensor([1e4]).to(torch.float8_e4m3fn).view(torch.uint8).item()) == 0x7E:
        quirks.add("e4m3fn-overflow")
    # softsign(inf) is 1 in the limit; x / (1 + |x|) evaluates inf / inf = NaN.
    if torch.isnan(F.softsign(torch.tensor([float("inf")]))).item():
        quirks.add("softsign-infinity")
    # the derivative of hardtanh at a NaN latent is undefined (NaN); autograd passes dw or 0 instead
    u = torch.tensor([float("nan")], requires_grad=True)
    (du,) = torch.autograd.grad(F.hardtanh(u, -1.0, 1.0), u, torch.ones(1))
    if not torch.isnan(du).item():
        quirks.add("nan-latent-gradient")
    # hardtanh's bound a = 0.7 is no float32 number: float32(0.7) < 0.7 is inside, where the gradient is
    # dw; a kernel that compares with the bound rounded to float32 finds it on the bound and returns 0.
    # (0.7 is a float64 number: in float64 the latent is on the bound for both.)
    if dtype == "float32":
        u = torch.tensor([0.7], dtype=torch.float32, requires_grad=True)
        (du,) = torch.autograd.grad(F.hardtanh(u, -0.7, 0.7), u, torch.ones(1))
        if du.item() == 0.0:
            quirks.add("hardtanh-bound-gradient")
    return quirks


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_backend_passes_every_check_without_divergences(dtype):
    report = run_suite(NumpyBackend(dtype=dtype), examples=5)
    assert report.ok, report.failures_text()
    assert [r.name for r in report.results] == list(CHECKS)
    assert {r.status for r in report.results} == {"pass"}
    assert all(0 <= r.worst_ratio <= 1 for r in report.results)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_backend_passes_the_whole_suite_on_cpu(torch, dtype):
    from saf_ref.testing.torch_backend import TorchBackend

    report = run_suite(TorchBackend(dtype=dtype), examples=CI_EXAMPLES, seed=0)
    assert report.ok, report.table()
    assert report.count("skip") == 0 and report.count("fail") == 0
    assert len(report.results) == len(CHECKS) == 55
    # Exactly the documented divergences this PyTorch shows (probed above), NaN payloads aside (IEEE 754
    # leaves them to the implementation), and nothing else.
    quirks = torch_quirks(torch, dtype)
    assert _divergences(report) - {"nan-payload"} == quirks
    assert _divergences(report) <= set(KNOWN_DIVERGENCES)
    by_name = {r.name: r for r in report.results}
    assert ("e4m3fn-overflow" in _parts(by_name["encode[float8_e4m3fn]"])) == ("e4m3fn-overflow" in quirks)
    # float64 -> float32 keeps NaN payloads in PyTorch (the NaN kinds of the boundary table show it)
    assert _parts(by_name["encode[float32]"]) <= {"nan-payload"}
    for name in (
        "flip_by_uniform",
        "apply_faults",
        "quantize",
        "dequantize",
        "relu_vjp",
        "conv2d_vjp",
        "batchnorm2d_vjp",
        "sgd",
        "model[resnet20]",
    ):
        assert by_name[name].status == "pass", name
    assert all(r.worst_ratio <= 1 for r in report.results)


@pytest.mark.torch
def test_torch_policies_move_the_divergences(torch):
    from saf_ref.testing.torch_backend import TorchBackend

    backend = TorchBackend()
    quirks = torch_quirks(torch)
    saturates, via_float32 = "e4m3fn-overflow" in quirks, "narrowing-via-float32" in quirks
    matching = {
        "e4m3_overflow": "saturate" if saturates else "ieee",
        "narrowing": "via-float32" if via_float32 else "direct",
    }
    opposite = {
        "e4m3_overflow": "ieee" if saturates else "saturate",
        "narrowing": "direct" if via_float32 else "via-float32",
    }
    # Checked against the policies PyTorch follows, its codecs are bit-exact (NaN payloads aside) ...
    report = run_suite(backend, examples=10, only=["encode*"], **matching)
    assert report.ok
    assert _divergences(report) <= {"nan-payload"}
    assert report.result("encode[float8_e4m3fn]").status == "pass"
    # ... and against the other policies, the difference is reported as those known divergences.
    report = run_suite(backend, examples=10, only=["encode*"], **opposite)
    assert report.ok
    assert {"e4m3fn-overflow", "narrowing-via-float32"} <= _divergences(report)
    assert "e4m3fn-overflow" in _parts(report.result("encode[float8_e4m3fn]"))
    # Strict NaN payloads fail the bfloat16 codec exactly when the lenient run saw a NaN-payload
    # divergence (PyTorch 2.13 writes 0xFFFF for every NaN; the same inputs in both runs).
    lenient = run_suite(backend, examples=3, only=["encode[bfloat16]"], **matching)
    strict = run_suite(backend, examples=3, only=["encode[bfloat16]"], nan_payloads="strict", **matching)
    assert lenient.ok
    assert strict.ok == ("nan-payload" not in _divergences(lenient))
    if not strict.ok:
        assert "not bit-exact" in strict.result("encode[bfloat16]").message
    # strict mode turns known divergences into a failed verdict without changing the statuses
    report = run_suite(backend, examples=3, only=["encode[float8_e4m3fn]"], strict=True, **opposite)
    assert report.result("encode[float8_e4m3fn]").status == "known divergence" and not report.ok


@pytest.mark.torch
def test_torch_backend_declares_tf32_roundoff(torch):
    from saf_ref.testing.torch_backend import TorchBackend

    assert TorchBackend().unit_roundoff("float32") == 2.0**-24
    assert TorchBackend(tf32=True).unit_roundoff("float32") == 2.0**-24  # TF32 exists on CUDA only
    cuda = TorchBackend(device="cuda", tf32=True)  # a device descriptor: nothing runs on it here
    assert cuda.unit_roundoff("float32") == 2.0**-11 and cuda.unit_roundoff("float64") == 2.0**-53
    assert TorchBackend(device="cuda", tf32=False).unit_roundoff("float32") == 2.0**-24


@pytest.mark.torch
def test_torch_backend_does_not_touch_its_inputs_and_copies_outputs(torch):
    from saf_ref.testing.torch_backend import TorchBackend

    b = TorchBackend()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    y, new_m, new_v = b.batchnorm2d_forward(x, rv, rm, rm, rv, train=True, momentum=0.5, eps=1e-5)
    assert (rm == 0).all() and (rv == 1).all()  # F.batch_norm updates its own copies in place
    assert not np.shares_memory(new_m, rm) and not np.allclose(new_m, 0)


def test_backend_validation():
    with pytest.raises(
        ValueError, match=r"NumpyBackend: dtype must be one of \('float32', 'float64'\), got 'f16'"
    ):
        NumpyBackend(dtype="f16")
    with pytest.raises(ValueError, match="NumpyBackend: device must be 'cpu'"):
        NumpyBackend(device="cuda")


@pytest.mark.torch
def test_torch_backend_validation(torch):
    from saf_ref.testing.torch_backend import TorchBackend

    with pytest.raises(ValueError, match=r"TorchBackend: dtype must be one of \('float32', 'float64'\)"):
        TorchBackend(dtype="bfloat16")
    with pytest.raises(TypeError, match="TorchBackend: tf32 must be None or a bool, got str"):
        TorchBackend(tf32="yes")
    with pytest.raises(NotImplementedError, match="no torch dtype for format 'q2.5'"):
        TorchBackend().encode("q2.5", np.zeros(1, np.float32))
