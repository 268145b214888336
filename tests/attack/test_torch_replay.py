"""An attack's FaultList replays in PyTorch: torch quantizes, flips and dequantizes to the same bits, and
its ResNet gives the same logits within the model contract (saf_ref.testing.contracts.assert_relative)."""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.attack import bit_flip_attack
from saf_ref.bits import Quantizer
from saf_ref.protect import default_spec, effective_weights, store
from saf_ref.testing import strategies as sst
from saf_ref.testing.contracts import U32, assert_relative
from saf_ref.testing.numpy_backend import NumpyBackend

pytest.importorskip("torch")
from saf_ref.testing.torch_backend import TorchBackend  # noqa: E402


def test_attack_replays_through_the_pytorch_adapter():
    case = sst.ModelCase("resnet20", 2, 3, 6, 8, False, None, 4)
    params64, state64, x64, labels = case.arrays(np.float64)
    params = {k: v.astype(np.float32) for k, v in params64.items()}  # float32-representable by design
    state = {k: v.astype(np.float32) for k, v in state64.items()}
    x = x64.astype(np.float32)
    quantizer = Quantizer(8)
    spec = default_spec(quantizer)
    res = bit_flip_attack("resnet20", params, state, spec, x, labels, k=3, candidates=2)
    assert len(res.faults) == 3

    # torch's own chain: quantize, apply the FaultList, dequantize; the same bits as saf_ref's pipeline
    tb = TorchBackend(dtype="float32")
    config = quantizer.to_json()["quantizer"]
    stored = store(params, spec)
    w_ours, _ = effective_weights(params, spec, faults=res.faults)
    w_torch = {}
    for name, u in params.items():
        codes, context = tb.quantize(u, config)
        assert np.array_equal(codes, stored[name].codes), name
        if name in res.faults.tensors:
            codes = tb.apply_faults(codes, res.faults.select(name), nbits=8)
        w_torch[name] = np.asarray(tb.dequantize(codes, context, config), dtype=np.float32)
        assert w_torch[name].tobytes() == w_ours[name].tobytes(), name

    # torch's ResNet on those weights against saf_ref's, within the composite (relative) contract
    got = tb.model_forward_backward("resnet20", w_torch, state, x, labels, train=False).logits
    ref64 = NumpyBackend(dtype="float64").model_forward_backward(
        "resnet20", {k: v.astype(np.float64) for k, v in w_ours.items()}, state64, x64, labels, train=False
    ).logits
    ours32 = []
    for order in (np.arange(x.shape[0]), np.arange(x.shape[0])[::-1]):
        z = NumpyBackend(dtype="float32").model_forward_backward(
            "resnet20", w_ours, state, x[order], labels[order], train=False).logits
        ours32.append(z[np.argsort(order)])
    assert_relative(got, ref64, ours32, u=U32, what="logits of the attacked ResNet-20")
    # the saf_ref logits are the ones the attack reported on
    accuracy = float(np.mean(np.argmax(ours32[0], axis=1) == labels))
    assert accuracy == res.final.accuracy
