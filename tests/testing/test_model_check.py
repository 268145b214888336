"""The whole-model check: the extra float32 samples are equivalent networks, the transform chain is built
from the backend's own ops, and at float64 the check still fails a backend that is wrong by a hair."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from saf_ref.nn.registry import model_fns
from saf_ref.testing import strategies as sst
from saf_ref.testing.checks import Context, SuiteOptions, Unsupported, all_checks
from saf_ref.testing.checks.models import (
    block_channel_permutations,
    permute_block_channels,
    transformed_names,
)
from saf_ref.testing.contracts import ContractFailure
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.protocol import describe_backend
from saf_ref.testing.suite import run_suite


@pytest.mark.parametrize(
    "case",
    [
        sst.ModelCase("resnet20", 3, 4, 3, 9, True, None, 5),
        sst.ModelCase("resnet18", 2, 3, 2, 33, False, None, 7),
    ],
    ids=lambda c: c.arch,
)
def test_permuting_block_channels_gives_the_same_network(case):
    params, state, x, labels = case.arrays(np.float64)
    b = NumpyBackend(dtype="float64")
    ref = b.model_forward_backward(case.arch, params, state, x, labels, train=case.train)
    perms = block_channel_permutations(params, case.seed)
    assert len(perms) == 2 and set(perms[0]) == {k[: -len("conv1.weight")] for k in params if ".conv1." in k}
    for p in perms:
        for q in p.values():  # permutations of the hidden channels
            assert sorted(q) == list(range(len(q)))
        assert any((q != np.arange(len(q))).all() for q in p.values())  # reversal moves every channel
        pp, sp = permute_block_channels(params, p), permute_block_channels(state, p)
        assert all(pp[k].shape == v.shape for k, v in params.items())
        r = b.model_forward_backward(case.arch, pp, sp, x, labels, train=case.train)
        # the same function: logits and loss equal to rounding; gradients and state equal once mapped back
        np.testing.assert_allclose(r.logits, ref.logits, rtol=0, atol=1e-12)
        for group in ("grads", "new_state"):
            back = permute_block_channels(getattr(r, group), p, inverse=True)
            for k, v in getattr(ref, group).items():
                np.testing.assert_allclose(
                    back[k], v, rtol=0, atol=1e-12 * max(1.0, np.abs(v).max()), err_msg=k
                )
        # ... and a different layout before mapping back (the permutation did something)
        moved = [k for k in params if not np.array_equal(pp[k], params[k])]
        assert any(k.endswith("bn1.weight") for k in moved) and any(k.endswith("conv2.weight") for k in moved)


def test_the_transform_applies_to_conv_and_linear_weights_only():
    params, _, _, _ = sst.ModelCase("resnet20", 2, 3, 2, 8, True, "tanh", 0).arrays(np.float32)
    names = transformed_names(params)
    assert names == [k for k, v in params.items() if k.endswith(".weight") and v.ndim in (2, 4)]
    assert "fc.weight" in names and "bn1.weight" not in names and "fc.bias" not in names


class _TransformVjpForgotten(NumpyBackend):
    """Applies tanh in transform_forward but forgets the chain rule: transform_vjp returns dw."""

    def transform_vjp(self, name, u, dw, *, scale):
        return dw.copy()


class _NoTransforms:
    """A backend with a model and no transform ops."""

    def __init__(self):
        self._b = NumpyBackend()

    def model_forward_backward(self, *args, **kwargs):
        return self._b.model_forward_backward(*args, **kwargs)


def _run_model_check(backend, case):
    check = next(c for c in all_checks() if c.name == f"model[{case.arch}]")
    ctx = Context(backend, describe_backend(backend), SuiteOptions(), check_name=check.name)
    return check.run(ctx, case)


TANH_CASE = sst.ModelCase("resnet20", 2, 3, 2, 8, True, "tanh", 3)


def test_model_check_with_a_transform_uses_the_backends_transform_ops():
    assert _run_model_check(NumpyBackend(), TANH_CASE)[0] <= 1
    with pytest.raises(ContractFailure, match=r"transform=tanh.*grads\['conv1.weight'\]"):
        _run_model_check(_TransformVjpForgotten(), TANH_CASE)


def test_model_check_without_transform_ops_skips_only_the_transform_cases():
    with pytest.raises(Unsupported, match="no transform_forward/transform_vjp"):
        _run_model_check(_NoTransforms(), TANH_CASE)
    assert _run_model_check(_NoTransforms(), dataclasses.replace(TANH_CASE, transform=None))[0] <= 1


def test_numpy_backend_model_is_saf_refs_model():
    case = sst.ModelCase("resnet20", 2, 3, 2, 8, True, None, 1)
    params, state, x, labels = case.arrays(np.float32)
    got = NumpyBackend().model_forward_backward("resnet20", params, state, x, labels, train=True)
    fns = model_fns("resnet20")
    logits, new_state, _ = fns.forward(params, state, x, train=True)
    assert np.array_equal(got.logits, logits)
    assert all(np.array_equal(got.new_state[k], v) for k, v in new_state.items())
    assert set(got.grads) == set(params) and got.loss.shape == ()


# ---------------------------------------------------------------------------------------------------------
# float64: the check still fails a wrong backend
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_float64_contract_fails_a_batchnorm_eps_off_by_one_millionth():
    torch = pytest.importorskip("torch")
    from saf_ref.testing.torch_backend import TorchBackend

    class EpsOffByOneMillionth(TorchBackend):
        """Batch norm with eps = 1e-5 * (1 + 1e-6): relative errors of about 5e-12, invisible in float32."""

        def _t_batch_norm(self, x, weight, bias, running_mean, running_var, train, momentum, eps):
            return super()._t_batch_norm(
                x, weight, bias, running_mean, running_var, train, momentum, eps * (1 + 1e-6)
            )

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        only = ["batchnorm2d*", "model*"]
        opts = dict(examples=4, model_examples=1, seed=0, only=only)
        # float32 cannot see it ...
        assert run_suite(EpsOffByOneMillionth(dtype="float32"), **opts).ok
        # ... the unmodified float64 backend passes ...
        assert run_suite(TorchBackend(dtype="float64"), **opts).ok
        # ... and float64 fails it in every check that runs batch norm, by a wide margin
        report = run_suite(EpsOffByOneMillionth(dtype="float64"), **opts)
        assert {r.name for r in report.failed} == {
            "batchnorm2d_forward",
            "batchnorm2d_vjp",
            "model[resnet20]",
            "model[resnet18_cifar]",
            "model[resnet18]",
        }
        for r in report.failed:
            assert "u_ref = 1.110e-16" in r.message
            ratio = float(r.message.split(" x; allowed")[0].rsplit("(", 1)[1])
            assert ratio > 50, (r.name, ratio)
    finally:
        torch.set_num_threads(old)
