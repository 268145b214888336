"""Shared helpers for the tests of :mod:`saf_ref.nn` ops: error measures and central differences.

Imported by the test modules of this folder (pytest puts the folder on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

#: Float64 forward results must match the naive loops to this normwise relative error.
NAIVE_RTOL = 1e-12
#: Analytic float64 gradients must match central differences to this normwise relative error.
FD_RTOL = 1e-7


def rel_error(got, ref) -> float:
    """Normwise relative error ``max|got - ref| / max|ref|`` (0 when both are all zero).

    Normwise rather than elementwise, so that outputs that cancel to nearly zero do not dominate; the
    float32 tests use the elementwise dot-product bound instead.
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = np.max(np.abs(ref), initial=0.0)
    diff = np.max(np.abs(got - ref), initial=0.0)
    return 0.0 if diff == 0.0 else diff / scale if scale > 0 else np.inf


def numerical_vjp(f, x: np.ndarray, dy, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of ``sum(f(x) * dy)`` with respect to ``x`` (cs231n style).

    ``x`` is copied to float64 and perturbed one element at a time (``x +- h``); ``f`` must be a pure
    function of its argument. Cost: ``2 * x.size`` calls of ``f``, so keep the shapes small.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    dy = np.asarray(dy, np.float64)
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        plus = np.sum(np.asarray(f(x), np.float64) * dy)
        x[idx] = old - h
        minus = np.sum(np.asarray(f(x), np.float64) * dy)
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * h)
    return grad


def assert_gradient(analytic, f, x, dy, *, what: str, h: float = 1e-6, rtol: float = FD_RTOL) -> None:
    """Check an analytic float64 gradient against :func:`numerical_vjp`."""
    numeric = numerical_vjp(f, x, dy, h)
    err = rel_error(analytic, numeric)
    assert err <= rtol, f"{what}: analytic vs central differences, relative error {err:.3e} > {rtol:.0e}"


def assert_model_gradients(loss, params, x, grads, dx, rng, *, per_tensor, h=1e-6, what="model") -> int:
    """Central differences of a whole model against its backward pass; returns the coordinates checked.

    ``loss(params, x)`` is a scalar (float64). For ``per_tensor`` random coordinates of every parameter
    tensor and of the input ``x``, ``(loss(+h) - loss(-h)) / 2h`` must match the analytic gradient
    (``grads[name]`` or ``dx``) within ``1e-6 + 1e-5 * |analytic|``.
    """
    checked = 0
    targets = [(k, params[k], grads[k]) for k in params] + [("x", x, dx)]
    for name, value, analytic in targets:
        for _ in range(per_tensor):
            idx = tuple(int(rng.integers(n)) for n in value.shape)
            plus, minus = value.copy(), value.copy()
            plus[idx] += h
            minus[idx] -= h
            if name == "x":
                fd = (loss(params, plus) - loss(params, minus)) / (2 * h)
            else:
                fd = (loss({**params, name: plus}, x) - loss({**params, name: minus}, x)) / (2 * h)
            an = analytic[idx]
            assert abs(fd - an) <= 1e-6 + 1e-5 * abs(an), (
                f"{what}: d/d{name}{list(idx)} analytic {an!r} vs central difference {fd!r}"
            )
            checked += 1
    return checked


class WeightMap(NamedTuple):
    """How latents ``u`` become the weights a model computes with, and the chain rule back.

    ``forward(latents) -> (weights, ctx)``; ``backward(weight_grads, ctx) -> latent_grads``. Models in
    :mod:`saf_ref.nn` compute with the weights they are given; a transform ``w = f(u)`` is applied
    before them (by :mod:`saf_ref.protect`, or by a test), and its gradient after their backward pass.
    """

    forward: Callable[[dict[str, np.ndarray]], tuple[dict[str, np.ndarray], Any]]
    backward: Callable[[dict[str, np.ndarray], Any], dict[str, np.ndarray]]


#: ``w = u``: the model computes with the latents themselves.
IDENTITY_MAP = WeightMap(lambda u: (dict(u), None), lambda g, _ctx: g)


def protect_map(transform: Any, dtype: Any = np.float64) -> WeightMap:
    """The storage pipeline of :mod:`saf_ref.protect` with ``f = transform`` on conv/linear weights.

    Everything is stored in ``dtype`` (encode/decode exact), so the weights are ``f(u)`` for the tensors
    of role ``"weight"`` and ``u`` for the rest: ``effective_weights`` forward, and
    ``effective_weights_backward`` (``du = f'(u) * dw``) back.
    """
    from saf_ref.protect import default_spec, effective_weights, effective_weights_backward

    spec = default_spec(np.dtype(dtype).name, transform)
    return WeightMap(lambda u: effective_weights(u, spec), effective_weights_backward)


def assert_latent_gradients(
    forward,
    backward,
    latents,
    x,
    r,
    rng,
    *,
    weights: WeightMap = IDENTITY_MAP,
    per_tensor,
    h=1e-6,
    what="model",
) -> int:
    """Central differences of ``L(u, x) = sum(forward(weights(u), x)[0] * r)`` against the chain rule.

    The analytic gradient is the composition under test: ``weights.forward`` (latents to weights), the
    model's ``forward(w, x)`` and ``backward(r, cache)`` (a :class:`saf_ref.nn.blocks.ModelGrads`), then
    ``weights.backward`` (weight gradients to latent gradients); the input gradient is
    ``ModelGrads.x``. Checked with :func:`assert_model_gradients` (same coordinates and tolerance).
    Returns the number of coordinates checked.

    The weight map is elementwise per tensor, so a perturbed latent tensor is mapped on its own and the
    other tensors' weights are reused (this saves running the pipeline on every tensor at every point).
    """
    base, ctx = weights.forward(latents)

    def loss(u, xx):
        changed = {k: v for k, v in u.items() if v is not latents[k]}
        w = {**base, **weights.forward(changed)[0]} if changed else base
        return float(np.sum(np.asarray(forward(w, xx)[0], np.float64) * r))

    _, _, cache = forward(base, x)
    model_grads = backward(r, cache)
    grads = weights.backward(model_grads.params, ctx)
    assert list(grads) == list(latents), what
    return assert_model_gradients(
        loss, latents, x, grads, model_grads.x, rng, per_tensor=per_tensor, h=h, what=what
    )


def float32_and_64(rng: np.random.Generator, *shapes, scale: float = 1.0):
    """Random float32 arrays and their exact float64 copies: ``[(a32, a64), ...]``.

    Drawing in float32 and widening makes the two precisions see *the same* inputs, so the float32
    result's error is the op's own, not the inputs' rounding.
    """
    out = []
    for shape in shapes:
        a32 = (scale * rng.standard_normal(shape)).astype(np.float32)
        out.append((a32, a32.astype(np.float64)))
    return out


def snapshot(*arrays):
    """Byte copies of arrays (None kept), to check later that nothing was modified."""
    return [None if a is None else (a.shape, a.dtype, a.tobytes()) for a in arrays]


def assert_unchanged(before, *arrays) -> None:
    """Fail when an array differs from its :func:`snapshot` (bit for bit)."""
    for i, (snap, a) in enumerate(zip(before, arrays, strict=True)):
        if snap is None:
            assert a is None
            continue
        assert (a.shape, a.dtype, a.tobytes()) == snap, f"input {i} was modified"


def assert_no_alias(outputs, inputs) -> None:
    """No returned array shares memory with an input (a caller may then modify outputs freely)."""
    for o in outputs:
        if isinstance(o, np.ndarray):
            for a in inputs:
                if isinstance(a, np.ndarray):
                    assert not np.shares_memory(o, a), "an output aliases an input"


U32 = 2.0**-24


def bn_bounds(x, weight, bias, running_mean, running_var, dy, *, train, momentum=0.1, eps=1e-5):
    """Magnitudes (float64) and term counts ``K`` for the float32 error bound of batchnorm2d.

    Batch norm is not a single dot product, but its error follows from the same rounding model (each
    operation contributes a factor ``1 + delta``, ``|delta| <= u``; sums of ``n`` terms contribute at most
    ``gamma_n`` times the sum of magnitudes). With ``n = N*H*W`` per channel, ``s = sqrt(var + eps)``,
    ``x_hat = (x - mean) / s`` and the *cancellation factor* ``a = mean|x| / s`` (large when the data sit far
    from zero compared with their spread, which is where float32 batch norm loses accuracy):

    - the computed mean is off by at most ``gamma_n * mean|x|``, i.e. ``a * s * gamma_n``;
    - the variance is a sum of non-negative terms: relative error ``gamma_{n+3}`` plus a second-order
      term from the mean's error; ``s`` inherits half of it;
    - so the errors of ``x_hat`` and ``y`` are at most ``gamma_{n+8} * (a + |x_hat|)`` and
      ``gamma_{n+10} * (|w| (a + |x_hat|) + |b|)``.

    The backward formula ``dx = w/s * (dy - mean(dy) - x_hat * mean(dy * x_hat))`` adds the errors of the
    two means and of ``x_hat``; with ``T = mean(|dy| (a + |x_hat|))`` its magnitude is
    ``|w|/s * (|dy| + mean|dy| + 2 (a + |x_hat|) T)``. We allow ``c = 2`` times ``gamma_{n+10}`` times these
    magnitudes: a rigorous-in-spirit first-order bound that is orders of magnitude below what a wrong
    formula or a float16 intermediate would produce, and that scales correctly with ``a``.

    Returns ``{name: (magnitude, K)}`` for ``y``, ``mean``, ``var``, ``dx``, ``dweight``, ``dbias``.
    """
    x, weight, bias, rm, rv, dy = (
        np.asarray(v, np.float64) for v in (x, weight, bias, running_mean, running_var, dy)
    )
    n = x.shape[0] * x.shape[2] * x.shape[3]
    ch = (0, 2, 3)

    def per(v):
        return v[None, :, None, None]

    abs_w, abs_dy = per(np.abs(weight)), np.abs(dy)
    if train:
        mean, var = x.mean(axis=ch), x.var(axis=ch)
        s = np.sqrt(var + eps)
        x_hat = (x - per(mean)) / per(s)
        a = per(np.abs(x).mean(axis=ch) / s)
        k = n + 10
        t = per(np.mean(abs_dy * (a + np.abs(x_hat)), axis=ch))
        gamma_n = n * U32 / (1 - n * U32)
        mean_abs = np.abs(x).mean(axis=ch)
        out = {
            "y": (abs_w * (a + np.abs(x_hat)) + per(np.abs(bias)), k),
            "mean": ((1 - momentum) * np.abs(rm) + momentum * mean_abs, k),
            "var": ((1 - momentum) * rv + momentum * n / (n - 1) * (var + gamma_n * mean_abs**2), k),
            "dx": (abs_w / per(s) * (abs_dy + per(abs_dy.mean(axis=ch)) + 2 * (a + np.abs(x_hat)) * t), k),
            "dweight": (np.sum(abs_dy * (a + 2 * np.abs(x_hat)), axis=ch), k),
        }
    else:
        s = np.sqrt(rv + eps)
        spread = (np.abs(x) + per(np.abs(rm))) / per(s)
        out = {
            "y": (abs_w * spread + per(np.abs(bias)), 6),
            "mean": (np.abs(rm), 1),
            "var": (np.abs(rv), 1),
            "dx": (abs_w * abs_dy / per(s), 4),
            "dweight": (np.sum(abs_dy * spread, axis=ch), n + 6),
        }
    out["dbias"] = (np.sum(abs_dy, axis=ch), n)
    return out
