"""An example whose activations are all non-finite (an earlier fault) passes a quantizer tap unchanged.

The module docstring of saf_ref.faults_act: activations that are already NaN or infinite when they reach
a tap are passed on unchanged and are not exposed. With a per-example quantizer (``"int8"``) an example
with *no* finite activation has no range; the hook used to raise (``x must be non-empty for an adaptive
range``), so one weight fault that made a whole example NaN stopped a forward pass.
"""

from __future__ import annotations

import numpy as np

from saf_ref.faults_act import ActivationFaults, activation_taps
from saf_ref.nn.registry import model_fns
from saf_ref.nn.small import init_mlp


def _int8_by_hand(row: np.ndarray) -> np.ndarray:
    """The symmetric 8-bit quantizer of one example, float64: q = max|h|, step q / 127, round half even."""
    step = np.abs(row).astype(np.float64).max() / 127
    return np.round(row / step) * step


def test_an_all_non_finite_example_passes_an_int8_tap_unchanged():
    h = np.array([[np.inf, np.nan, -np.inf], [0.5, -2.0, 1.25]], dtype=np.float32)
    h_before = h.copy()
    faults = ActivationFaults("a", taps=("a",), format="int8", p=0.0, rng=0)
    out = faults("a", h)
    assert out[0].tobytes() == h[0].tobytes()  # inf, NaN, -inf, bit for bit
    np.testing.assert_allclose(out[1], _int8_by_hand(h[1]), rtol=1e-6)
    assert faults.counts["a"].words == 3  # only the finite activations are stored
    assert h.tobytes() == h_before.tobytes()


def test_with_a_rate_only_finite_examples_are_exposed():
    h = np.array([[np.nan, np.nan], [1.0, 2.0], [np.inf, 3.0]], dtype=np.float32)
    faults = ActivationFaults("a", taps=("a",), format="int8", p=1.0, rng=0)
    out = faults("a", h)
    assert out[0].tobytes() == h[0].tobytes()
    assert np.isposinf(out[2, 0])
    c = faults.counts["a"]
    assert c.words == 3 and c.bits == 3 * 8 and c.flips == 3 * 8  # p = 1: every stored bit flips


def test_a_weight_fault_that_makes_an_example_nan_does_not_stop_an_int8_forward_pass():
    params, state = init_mlp(16, hidden=(8, 8), rng=1)
    fns = model_fns("mlp")
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    broken = dict(params)
    w = params["fc1.weight"].copy()
    w[:, 0] = np.inf  # exponent bits flipped to all ones: every hidden unit sees inf * x[n, 0]
    broken["fc1.weight"] = w
    assert x[0, 0] > 0 > x[1, 0]  # example 0: +inf into relu1, then NaN; example 1: -inf, relu gives 0
    taps = activation_taps("mlp", params)
    def hook():
        return ActivationFaults("*", taps=taps, format="int8", p=0.0, rng=0)

    with np.errstate(invalid="ignore", over="ignore"):
        clean = fns.forward(broken, state, x, train=False)[0]
        got = fns.forward(broken, state, x, train=False, activation_faults=hook())[0]
        alone = fns.forward(broken, state, x[1:], train=False, activation_faults=hook())[0]
    assert np.isnan(clean[0]).all() and np.isnan(got[0]).all()  # example 0: NaN with or without the hook
    assert np.isfinite(clean[1]).all()
    assert got[1].tobytes() == alone[0].tobytes()  # the NaN example does not change its neighbour
