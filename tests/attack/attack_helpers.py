"""Shared fixtures of the attack tests: a tiny MLP, reference evaluation and replay through the public
storage pipeline (``store`` -> ``inject`` -> ``load``), never through the attack's own code."""

from __future__ import annotations

import numpy as np

from saf_ref.bits import FaultList, Quantizer
from saf_ref.nn.loss import cross_entropy_forward
from saf_ref.nn.registry import model_fns
from saf_ref.nn.small import init_mlp
from saf_ref.protect import default_spec, inject, load, store

FWD = model_fns("mlp")


def tiny_mlp(seed=0, n=48, features=4, hidden=(6,), classes=3):
    """A tiny MLP (4-6-3: 51 parameters) with a fixed attack batch; weights scaled up so it is confident."""
    params, state = init_mlp(features, hidden=hidden, num_classes=classes, rng=seed)
    params = {k: (3 * v).astype(np.float32) for k, v in params.items()}
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal((n, features)).astype(np.float32)
    z, _, _ = FWD.forward(params, state, x, train=False)
    y = np.argmax(z, axis=1)  # the clean model is right on every example: the attack has work to do
    y[: n // 4] = rng.integers(0, classes, n // 4)
    return params, state, x, y


def loss_acc(weights, state, x, y, fwd=FWD):
    """Reference evaluation: mean cross-entropy and accuracy of the weights."""
    with np.errstate(all="ignore"):
        z, _, _ = fwd.forward(weights, state, x, train=False)
        loss, _ = cross_entropy_forward(z, y)
    return float(loss), float(np.mean(np.argmax(z, axis=1) == y))


def replay(params, spec, records):
    """Effective weights after the flips ``records`` through store -> inject -> load (public pipeline)."""
    stored = store(params, spec)
    return load(inject(stored, FaultList(records)).stored)


def all_exposed_bits(params, spec):
    """Every (tensor, index, bit, format) an attack may flip: a plain loop over the stored model."""
    stored = store(params, spec)
    for name in stored.exposed_names:
        t = stored[name]
        for i in range(t.codes.size):
            for b in range(t.nbits):
                yield name, i, b, t.format


SPECS = {
    "quant4": default_spec(Quantizer(4)),
    "quant8_sym_twos": default_spec(Quantizer(8, scheme="symmetric", code="twos_complement")),
    "q2.5": default_spec("q2.5"),
    "float16": default_spec("float16"),
    "bfloat16_tanh": default_spec("bfloat16", "tanh"),
    "float32_tanh_clip": default_spec("float32", "tanh", weight_clip=1.0),
}
