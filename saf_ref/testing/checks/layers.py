"""Checks of the network layers: pooling, conv2d and linear (dot-product bound), batch norm, group norm
and cross-entropy (relative to saf_ref float32).

Each op has a forward check and a vector-Jacobian-product check under the same contract, built from one
table (:func:`layer_checks`). The dot-product bound's magnitudes come from the same saf_ref op applied
to absolute values in float64; batch norm and cross-entropy floor their relative allowance at the
magnitude of their terms (:func:`bn_scales`, :func:`ce_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from saf_ref.testing import strategies as sst
from saf_ref.testing.checks.core import (
    REF32,
    REF64,
    Boundary,
    Check,
    Context,
    Outcome,
    Tally,
    abs64,
    check_relative,
    check_tuple,
    f32,
    f64,
    result,
    simple_check,
)
from saf_ref.testing.contracts import ContractFailure, assert_dot_bound, assert_exact

__all__ = [
    "CHANNELS",
    "avgpool_classes",
    "bn_classes",
    "bn_scales",
    "ce_classes",
    "ce_scale",
    "conv_classes",
    "GNCase",
    "gn_classes",
    "gn_scales",
    "layer_checks",
    "linear_classes",
    "maxpool_classes",
    "pool_checks",
]


# =========================================================================================================
# nn: pooling
# =========================================================================================================
def _maxpool_kwargs(case: sst.PoolCase) -> dict[str, Any]:
    return dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding)


def _maxpool_forward_run(ctx: Context, case: sst.PoolCase) -> Outcome:
    x, _ = case.arrays(ctx.dtype)
    kw = _maxpool_kwargs(case)
    expected = REF64.maxpool2d_forward(x, **kw)  # a selection: exact in x's dtype
    got = result(
        ctx.call("maxpool2d_forward", x, **kw), ctx.dtype, expected.shape, f"maxpool2d_forward({kw})"
    )
    return assert_exact(got, expected, what=f"maxpool2d_forward({kw}, seed={case.seed})")


def _maxpool_vjp_run(ctx: Context, case: sst.PoolCase) -> Outcome:
    x, dy = case.arrays(ctx.dtype)
    kw = _maxpool_kwargs(case)
    what = f"maxpool2d_vjp({kw}, seed={case.seed})"
    x64, dy64 = f64(x, dy)
    ref = REF64.maxpool2d_vjp(x64, dy64, **kw)
    mag = REF64.maxpool2d_vjp(x64, np.abs(dy64), **kw)
    k = math.ceil(case.kernel_size[0] / case.stride[0]) * math.ceil(case.kernel_size[1] / case.stride[1])
    got = result(ctx.call("maxpool2d_vjp", x, dy, **kw), ctx.dtype, x.shape, what)
    return assert_dot_bound(got, ref, mag, k, u=ctx.u, c=ctx.c_dot, what=what + " dx")


def _avgpool_forward_run(ctx: Context, case: sst.PoolCase) -> Outcome:
    x, _ = case.arrays(ctx.dtype, global_pool=True)
    what = f"global_avgpool_forward(x {x.shape}, seed={case.seed})"
    (x64,) = f64(x)
    ref, mag = REF64.global_avgpool_forward(x64), REF64.global_avgpool_forward(np.abs(x64))
    got = result(ctx.call("global_avgpool_forward", x), ctx.dtype, ref.shape, what)
    return assert_dot_bound(got, ref, mag, x.shape[2] * x.shape[3] + 1, u=ctx.u, c=ctx.c_dot, what=what)


def _avgpool_vjp_run(ctx: Context, case: sst.PoolCase) -> Outcome:
    x, dy = case.arrays(ctx.dtype, global_pool=True)
    what = f"global_avgpool_vjp(x {x.shape}, seed={case.seed})"
    ref = REF64.global_avgpool_vjp(*f64(x, dy))
    got = result(ctx.call("global_avgpool_vjp", x, dy), ctx.dtype, x.shape, what)
    # dy / (H W), or dy times a rounded 1 / (H W): at most two roundings
    return assert_dot_bound(got, ref, np.abs(ref), 2, u=ctx.u, c=ctx.c_dot, what=what + " dx")


# =========================================================================================================
# nn: conv2d and linear (dot-product bound)
# =========================================================================================================
def _conv_run(ctx: Context, case: sst.ConvCase, vjp: bool) -> Outcome:
    x, w, b, dy = case.arrays(ctx.dtype)
    kw = dict(stride=case.stride, padding=case.padding)
    what = f"conv2d_{'vjp' if vjp else 'forward'}(x {case.x_shape}, w {case.w_shape}, {kw}, seed={case.seed})"
    n, c = case.x_shape[:2]
    o, _, kh, kwid = case.w_shape
    ho, wo = case.out_hw
    x64, w64, b64, dy64 = f64(x, w, b, dy)
    ax, aw, ab, ady = abs64(x, w, b, dy)
    tally = Tally()
    if not vjp:
        ref, mag = REF64.conv2d_forward(x64, w64, b64, **kw), REF64.conv2d_forward(ax, aw, ab, **kw)
        got = result(ctx.call("conv2d_forward", x, w, b, **kw), ctx.dtype, ref.shape, what)
        tally.add(assert_dot_bound(got, ref, mag, c * kh * kwid + 1, u=ctx.u, c=ctx.c_dot, what=what + " y"))
        return tally.outcome()
    refs = REF64.conv2d_vjp(x64, w64, b64, dy64, **kw)
    mags = REF64.conv2d_vjp(ax, aw, ab, ady, **kw)
    got = ctx.call("conv2d_vjp", x, w, b, dy, **kw)
    check_tuple(got, 3, what)
    terms = {"dx": o * kh * kwid, "dw": n * ho * wo, "db": n * ho * wo}
    for name, g, r, m in zip(("dx", "dw", "db"), got, refs, mags, strict=True):
        if r is None:
            if g is not None:
                raise ContractFailure(f"{what}: db must be None without a bias, got {type(g).__name__}")
            continue
        g = result(g, ctx.dtype, r.shape, f"{what} {name}")
        tally.add(assert_dot_bound(g, r, m, terms[name], u=ctx.u, c=ctx.c_dot, what=f"{what} {name}"))
    return tally.outcome()


def _linear_run(ctx: Context, case: sst.LinearCase, vjp: bool) -> Outcome:
    x, w, b, dy = case.arrays(ctx.dtype)
    what = (
        f"linear_{'vjp' if vjp else 'forward'}(x {x.shape}, w {w.shape}, bias={case.bias}, seed={case.seed})"
    )
    x64, w64, b64, dy64 = f64(x, w, b, dy)
    ax, aw, ab, ady = abs64(x, w, b, dy)
    tally = Tally()
    if not vjp:
        ref, mag = REF64.linear_forward(x64, w64, b64), REF64.linear_forward(ax, aw, ab)
        got = result(ctx.call("linear_forward", x, w, b), ctx.dtype, ref.shape, what)
        tally.add(
            assert_dot_bound(got, ref, mag, case.in_features + 1, u=ctx.u, c=ctx.c_dot, what=what + " y")
        )
        return tally.outcome()
    refs, mags = REF64.linear_vjp(x64, w64, b64, dy64), REF64.linear_vjp(ax, aw, ab, ady)
    got = ctx.call("linear_vjp", x, w, b, dy)
    check_tuple(got, 3, what)
    terms = {"dx": case.out_features, "dw": case.n, "db": case.n}
    for name, g, r, m in zip(("dx", "dw", "db"), got, refs, mags, strict=True):
        if r is None:
            if g is not None:
                raise ContractFailure(f"{what}: db must be None without a bias, got {type(g).__name__}")
            continue
        g = result(g, ctx.dtype, r.shape, f"{what} {name}")
        tally.add(assert_dot_bound(g, r, m, terms[name], u=ctx.u, c=ctx.c_dot, what=f"{what} {name}"))
    return tally.outcome()


# =========================================================================================================
# nn: batch norm and cross-entropy (relative to saf_ref float32)
# =========================================================================================================
def bn_scales(x, weight, bias, rm, rv, dy, *, train: bool, momentum: float, eps: float) -> dict[str, float]:
    """The magnitude of batch norm's terms, per output tensor (float64): the floor of the relative tier.

    A float implementation of batch norm loses accuracy when the data sit far from zero compared with
    their spread (``a = mean|x| / s`` large, ``s = sqrt(var + eps)``): the mean is off by about
    ``u * mean|x|``, so ``x_hat`` by ``u * (a + |x_hat|)``. PyTorch's evaluation mode also computes
    ``x * (w / s) + (b - rm * w / s)``, whose error is relative to ``|w| (|x| + |rm|) / s``. These are the
    scales; saf_ref's two-pass float32 can be much luckier (its subtractions are often exact), so its own
    error alone would demand more than correct implementations achieve.
    """
    ch = (0, 2, 3)

    def per(v):
        return v[None, :, None, None]

    x, weight, bias, rm, rv, dy = (np.asarray(v, np.float64) for v in (x, weight, bias, rm, rv, dy))
    abs_w, abs_b = per(np.abs(weight)), per(np.abs(bias))
    if not train:
        s = np.sqrt(rv + eps)
        spread = (np.abs(x) + per(np.abs(rm))) / per(s)
        return {"y": float((abs_w * spread + abs_b).max()), "running_mean": float(np.abs(rm).max()),
                "running_var": float(np.abs(rv).max()), "dx": float((abs_w / per(s) * np.abs(dy)).max()),
                "dweight": float(np.sum(np.abs(dy) * spread, axis=ch).max()),
                "dbias": float(np.sum(np.abs(dy), axis=ch).max())}  # fmt: skip
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean, var = x.mean(axis=ch), x.var(axis=ch)
    s, mean_abs = np.sqrt(var + eps), np.abs(x).mean(axis=ch)
    x_hat = (x - per(mean)) / per(s)
    terms = per(mean_abs / s) + np.abs(x_hat)  # a + |x_hat|
    t = per(np.mean(np.abs(dy) * terms, axis=ch))
    return {
        "y": float((abs_w * terms + abs_b).max()),
        "running_mean": float(((1 - momentum) * np.abs(rm) + momentum * mean_abs).max()),
        # a two-pass or Welford variance is off by about u * mean|x| * s (the naive E[x^2] - E[x]^2 by
        # u * mean|x|^2, which this does not allow when the data are offset)
        "running_var": float(((1 - momentum) * rv + momentum * n / (n - 1) * (var + 2 * mean_abs * s)).max()),
        "dx": float((abs_w / per(s) * (np.abs(dy) + per(np.abs(dy).mean(axis=ch)) + 2 * terms * t)).max()),
        "dweight": float(np.sum(np.abs(dy) * (terms + np.abs(x_hat)), axis=ch).max()),
        "dbias": float(np.sum(np.abs(dy), axis=ch).max()),
    }


def _bn_run(ctx: Context, case: sst.BNCase, vjp: bool) -> Outcome:
    arrays = case.arrays(ctx.dtype)
    kw = dict(train=case.train, momentum=case.momentum, eps=case.eps)
    method = "batchnorm2d_vjp" if vjp else "batchnorm2d_forward"
    what = (
        f"{method}(x {case.x_shape}, train={case.train}, momentum={case.momentum!r}, eps={case.eps!r}, "
        f"offset={case.offset!r}, scale={case.scale!r}, seed={case.seed})"
    )
    a64, a32 = f64(*arrays), f32(*arrays)
    if not vjp:
        a64, a32, arrays = a64[:5], a32[:5], arrays[:5]
    refs = getattr(REF64, method)(*a64, **kw)
    ours = getattr(REF32, method)(*a32, **kw)
    got = ctx.call(method, *arrays, **kw)
    check_tuple(got, 3, what)
    names = ("dx", "dweight", "dbias") if vjp else ("y", "running_mean", "running_var")
    scales = bn_scales(*f64(*case.arrays(np.float64)), **kw)
    tally = Tally()
    for name, g, r, o in zip(names, got, refs, ours, strict=True):
        check_relative(ctx, tally, g, r, o, f"{what} {name}", scale=scales[name])
    return tally.outcome()


@dataclass(frozen=True)
class GNCase:
    """A group norm problem: shape ``(N, C, ...)``, groups, eps, data offset and scale, seed, layout."""

    x_shape: tuple[int, ...]
    num_groups: int
    eps: float
    offset: float
    scale: float
    seed: int
    layout: str = "contiguous"

    def arrays(self, dtype: Any):
        """``(x, weight, bias, dy)``, float32-representable (saf_ref float32 sees the same inputs)."""
        rng = np.random.default_rng(self.seed)
        c = self.x_shape[1]
        x = self.offset + self.scale * rng.standard_normal(self.x_shape)
        weight = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)
        bias = rng.standard_normal(c)
        dy = rng.standard_normal(self.x_shape)
        arrays = (a.astype(np.float32).astype(dtype) for a in (x, weight, bias, dy))
        return tuple(sst.strided(a) for a in arrays) if self.layout == "strided" else tuple(arrays)


def gn_scales(x, weight, bias, dy, *, num_groups: int, eps: float) -> dict[str, float]:
    """The magnitude of group norm's terms per output (float64): the floor of the relative tier.

    As for batch norm (:func:`bn_scales`, training mode) with each sample's group in place of the batch's
    channel: the mean of a group is off by about ``u * mean|x|``, so ``x_hat`` by ``u * (a + |x_hat|)``
    with ``a = mean|x| / s``; ``g = dy * weight`` varies within a group (per channel).
    """
    x, weight, bias, dy = (np.asarray(v, np.float64) for v in (x, weight, bias, dy))
    n, nd = x.shape[0], x.ndim
    per = (1, -1) + (1,) * (nd - 2)
    axes = (0, *range(2, nd))
    xg = x.reshape(n, num_groups, -1)
    mean, var = xg.mean(axis=2, keepdims=True), xg.var(axis=2, keepdims=True)
    s = np.sqrt(var + eps)
    x_hat = (xg - mean) / s
    terms = (np.abs(xg).mean(axis=2, keepdims=True) / s + np.abs(x_hat)).reshape(x.shape)  # a + |x_hat|
    g = np.abs(dy * weight.reshape(per)).reshape(n, num_groups, -1)
    t = (g * terms.reshape(g.shape)).mean(axis=2, keepdims=True)
    dx = (g + g.mean(axis=2, keepdims=True) + 2 * terms.reshape(g.shape) * t) / s
    return {
        "y": float((np.abs(weight).reshape(per) * terms + np.abs(bias).reshape(per)).max()),
        "dx": float(dx.max()),
        "dweight": float(np.sum(np.abs(dy) * (terms + np.abs(x_hat).reshape(x.shape)), axis=axes).max()),
        "dbias": float(np.sum(np.abs(dy), axis=axes).max()),
    }


def _gn_run(ctx: Context, case: GNCase, vjp: bool) -> Outcome:
    x, weight, bias, dy = case.arrays(ctx.dtype)
    kw = dict(num_groups=case.num_groups, eps=case.eps)
    method = "groupnorm_vjp" if vjp else "groupnorm_forward"
    what = (
        f"{method}(x {case.x_shape}, num_groups={case.num_groups}, eps={case.eps!r}, offset={case.offset!r}, "
        f"scale={case.scale!r}, seed={case.seed})"
    )
    a64, a32 = f64(x, weight, bias, dy), f32(x, weight, bias, dy)
    scales = gn_scales(*a64, **kw)
    tally = Tally()
    if not vjp:
        ref, ours = REF64.groupnorm_forward(*a64[:3], **kw), REF32.groupnorm_forward(*a32[:3], **kw)
        got = ctx.call(method, x, weight, bias, **kw)
        check_relative(ctx, tally, got, ref, ours, f"{what} y", scale=scales["y"])
        return tally.outcome()
    refs, ours = REF64.groupnorm_vjp(*a64, **kw), REF32.groupnorm_vjp(*a32, **kw)
    got = ctx.call(method, x, weight, bias, dy, **kw)
    check_tuple(got, 3, f"{what}: backend.groupnorm_vjp must return (dx, dweight, dbias)")
    for name, g, r, o in zip(("dx", "dweight", "dbias"), got, refs, ours, strict=True):
        check_relative(ctx, tally, g, r, o, f"{what} {name}", scale=scales[name])
    return tally.outcome()


#: (x shape, groups) of the generated group norm cases, all of them in the boundary table too (XLA compiles
#: one program per shape and group count): layer norm, instance norm, groups of 2 and 3 channels, ranks 2-4
GN_SHAPES = (
    ((2, 4, 3, 3), 1),
    ((2, 4, 3, 3), 4),
    ((2, 4, 3, 3), 2),
    ((2, 8, 2, 2), 4),
    ((2, 6, 3, 3), 3),
    ((1, 6, 2, 2), 2),
    ((4, 6), 3),
    ((3, 8, 2), 2),
)


@st.composite
def _gn_cases(draw) -> GNCase:
    """Group norm problems: the shapes and group counts of :data:`GN_SHAPES`, eps 1e-5 or 1e-3, data
    centred or offset by up to 100 standard deviations, at scale 0.1, 1 or 10, any seed."""
    shape, groups = draw(st.sampled_from(GN_SHAPES))
    scale = draw(st.sampled_from([1.0, 0.1, 10.0]))
    offset = draw(st.sampled_from([0.0, 1.0, 10.0, 100.0])) * scale
    return GNCase(shape, groups, draw(st.sampled_from([1e-5, 1e-3])), offset, scale, draw(sst.seeds()))


def gn_classes() -> list[Boundary]:
    """group norm: 1 group (layer norm), one channel per group (instance norm), groups of 1 and 2 values,
    the reference code's group counts, prime and 64 channels, ranks 2 to 5, data far from zero, eps 1e-3
    with tiny data, batch 1 and a strided layout."""
    G = GNCase
    rows = [
        ("1 group (layer norm over C, H, W)", G((2, 4, 3, 3), 1, 1e-5, 0.0, 1.0, 0)),
        ("a group per channel (instance norm)", G((2, 4, 3, 3), 4, 1e-5, 0.0, 1.0, 1)),
        ("groups of 2 channels (the reference code's choice for C = 8)",
         G((2, 8, 2, 2), 4, 1e-5, 0.0, 1.0, 2)),
        ("groups of one value (x_hat = 0)", G((2, 4, 1, 1), 4, 1e-5, 0.0, 1.0, 3)),
        ("groups of two values", G((2, 4, 2, 1), 4, 1e-5, 0.0, 1.0, 4)),
        ("data offset by 100 standard deviations", G((2, 6, 3, 3), 3, 1e-5, 100.0, 1.0, 5)),
        ("eps 1e-3 and tiny data (scale 0.01)", G((2, 4, 3, 3), 2, 1e-3, 0.0, 0.01, 6)),
        ("batch 1", G((1, 6, 2, 2), 2, 1e-5, 0.0, 1.0, 7)),
        ("17 channels (prime), 17 groups", G((2, 17, 2, 2), 17, 1e-5, 0.0, 1.0, 8)),
        ("64 channels in 32 groups", G((1, 64, 2, 2), 32, 1e-5, 0.0, 1.0, 9)),
        ("rank 2 (N, C)", G((4, 6), 3, 1e-5, 0.0, 1.0, 10)),
        ("rank 3 (N, C, L)", G((3, 8, 2), 2, 1e-5, 0.0, 1.0, 11)),
        ("rank 5 (N, C, D, H, W)", G((2, 4, 2, 2, 2), 2, 1e-5, 0.0, 1.0, 12)),
        ("non-contiguous arrays", G((2, 4, 3, 4), 2, 1e-5, 0.0, 1.0, 13, layout="strided")),
    ]
    return [Boundary(n, c) for n, c in rows]


def ce_scale(logits: np.ndarray) -> float:
    """``max_n (max_k |z_nk| + log K)``: the absolute error of a float log-softmax is about u times it."""
    return float(np.max(np.abs(logits), axis=1).max() + math.log(logits.shape[1]))


def _ce_run(ctx: Context, case: sst.CECase, vjp: bool) -> Outcome:
    logits, labels = case.arrays(ctx.dtype)
    what = (
        f"cross_entropy_{'vjp' if vjp else 'forward'}(logits {logits.shape}, scale={case.logit_scale}, "
        f"label_smoothing={case.label_smoothing!r}, seed={case.seed})"
    )
    (z64,), (z32,) = f64(logits), f32(logits)
    s = max(ce_scale(z64), 1.0)
    tally = Tally()
    ls = dict(label_smoothing=case.label_smoothing)
    if vjp:
        dloss = case.dloss
        ref, ours = (
            REF64.cross_entropy_vjp(z64, labels, dloss, **ls),
            REF32.cross_entropy_vjp(z32, labels, dloss, **ls),
        )
        got = ctx.call("cross_entropy_vjp", logits, labels, dloss, **ls)
        check_relative(
            ctx, tally, got, ref, ours, f"{what} dlogits (dloss={dloss!r})", scale=abs(dloss) * s / case.n
        )
    else:
        ref, ours = (
            REF64.cross_entropy_forward(z64, labels, **ls),
            REF32.cross_entropy_forward(z32, labels, **ls),
        )
        got = ctx.call("cross_entropy_forward", logits, labels, **ls)
        check_relative(ctx, tally, got, ref, ours, f"{what} loss", scale=s)
    return tally.outcome()


#: channel counts of the boundary tables: 1, primes, powers of two and one past them (kernels blocked by
#: 8, 16 or 32 channels have a remainder path), up to 64
CHANNELS = (1, 2, 3, 7, 13, 16, 17, 31, 32, 33, 64)


def maxpool_classes() -> list[Boundary]:
    """Max pooling: the ImageNet stem, identity, overlapping and gapped windows, leftover rows, asymmetric
    windows, all-negative inputs (the padding must not win), channel counts, a strided layout."""
    P = sst.PoolCase
    rows = [
        ("ImageNet stem window 3x3 / 2, padding 1", P((2, 2, 7, 7), (3, 3), (2, 2), (1, 1), 0)),
        ("kernel 1x1, stride 1 (identity)", P((1, 2, 4, 5), (1, 1), (1, 1), (0, 0), 1)),
        ("overlapping windows (3x3, stride 1, padding 1)", P((2, 3, 5, 5), (3, 3), (1, 1), (1, 1), 2)),
        ("gaps between windows (2x2, stride 3)", P((1, 2, 8, 8), (2, 2), (3, 3), (0, 0), 3)),
        ("leftover rows and columns (floor)", P((1, 2, 8, 7), (3, 3), (2, 2), (0, 0), 4)),
        ("asymmetric kernel, stride and padding", P((2, 2, 6, 7), (2, 3), (1, 2), (1, 0), 5)),
        ("all-negative input with padding (the padding must not win)",
         P((1, 3, 5, 5), (3, 3), (2, 2), (1, 1), 6, offset=-20.0)),
        ("17 channels (prime)", P((1, 17, 4, 4), (2, 2), (2, 2), (0, 0), 7)),
        ("64 channels", P((1, 64, 3, 3), (3, 3), (1, 1), (1, 1), 8)),
        ("non-contiguous input and gradient", P((2, 3, 6, 6), (3, 3), (2, 2), (1, 1), 9, layout="strided")),
    ]  # fmt: skip
    return [Boundary(n, c) for n, c in rows]


def avgpool_classes() -> list[Boundary]:
    """Global average pooling: 1x1 and odd spatial sizes, channel counts, large offsets, a strided layout."""
    P = sst.PoolCase
    rows = [
        ("1x1 spatial", P((2, 3, 1, 1), (1, 1), (1, 1), (0, 0), 0)),
        ("7x5 spatial", P((1, 2, 7, 5), (1, 1), (1, 1), (0, 0), 1)),
        (
            "data offset by 1e4 (cancellation-free sums)",
            P((2, 2, 4, 4), (1, 1), (1, 1), (0, 0), 2, offset=1e4),
        ),
    ]
    rows += [(f"{c} channels", P((2, c, 3, 3), (1, 1), (1, 1), (0, 0), 3 + c)) for c in (1, 17, 64)]
    rows.append(("non-contiguous input", P((2, 3, 4, 4), (1, 1), (1, 1), (0, 0), 9, layout="strided")))
    return [Boundary(n, c) for n, c in rows]


def conv_classes() -> list[Boundary]:
    """conv2d: the shapes of :data:`strategies.CONV_EDGES`, channel counts in and out across 1..64, a kernel
    wider than the input, no bias, batch 1, wide dynamic range, non-contiguous arrays."""
    C = sst.ConvCase
    names = [
        "3x3 stride 1 padding 1",
        "strided 3x3",
        "1x1 projection shortcut",
        "ImageNet stem 7x7 / 2",
        "leftover rows (floor)",
        "asymmetric stride and padding",
        "kernel as large as the input",
    ]
    rows = [
        (n, C(*edge, True, "normal", i))
        for i, (n, edge) in enumerate(zip(names, sst.CONV_EDGES, strict=True))
    ]
    for i, (c, o) in enumerate([(1, 1), (3, 64), (64, 3), (17, 31), (13, 33), (32, 16), (64, 64), (7, 2)]):
        rows.append(
            (
                f"{c} channels in, {o} out",
                C((1, c, 4, 4), (o, c, 3, 3), (1, 1), (1, 1), True, "normal", 10 + i),
            )
        )
    rows += [
        ("kernel wider than the input", C((2, 2, 2, 3), (3, 2, 5, 5), (1, 1), (2, 2), True, "normal", 20)),
        ("no bias, stride 3", C((2, 3, 9, 9), (4, 3, 3, 3), (3, 3), (0, 0), False, "normal", 21)),
        ("wide dynamic range (1e-3 to 1e3)", C((2, 4, 5, 5), (3, 4, 3, 3), (1, 1), (1, 1), True, "wide", 22)),
        ("non-contiguous x, w, b and dy",
         C((2, 3, 6, 6), (4, 3, 3, 3), (2, 1), (1, 0), True, "normal", 23, layout="strided")),
    ]  # fmt: skip
    return [Boundary(n, c) for n, c in rows]


def linear_classes() -> list[Boundary]:
    """linear: in and out features across 1..64 (primes, powers of two and one past them), no bias,
    batch 1, wide dynamic range, non-contiguous arrays."""
    L = sst.LinearCase
    rows = [(f"{k} in-features", L(4, k, 5, True, "normal", k)) for k in CHANNELS]
    rows += [(f"{k} out-features", L(3, 16, k, True, "normal", 100 + k)) for k in (1, 17, 64)]
    rows += [
        ("no bias, batch 1", L(1, 9, 4, False, "normal", 200)),
        ("wide dynamic range (1e-3 to 1e3)", L(5, 33, 7, True, "wide", 201)),
        ("non-contiguous x, w, b and dy", L(4, 12, 6, True, "normal", 202, layout="strided")),
    ]
    return [Boundary(n, c) for n, c in rows]


def bn_classes() -> list[Boundary]:
    """batch norm: training and evaluation, the minimum of 2 values per channel, channel counts, data far
    from zero (cancellation), momentum 0 and 1, eps 1e-3, a strided layout."""
    B = sst.BNCase
    rows = [
        ("training, 3 channels", B((4, 3, 3, 3), True, 0.1, 1e-5, 0.0, 1.0, 0)),
        ("evaluation, offset data", B((2, 2, 2, 2), False, 0.1, 1e-5, 1.0, 1.0, 1)),
        (
            "2 values per channel (the unbiased variance divides by 1)",
            B((2, 3, 1, 1), True, 0.1, 1e-5, 0.0, 1.0, 2),
        ),
        ("data offset by 100 standard deviations", B((3, 2, 3, 3), True, 0.1, 1e-5, 100.0, 1.0, 3)),
        ("momentum 0 (running statistics kept)", B((2, 2, 3, 3), True, 0.0, 1e-5, 0.0, 1.0, 4)),
        ("momentum 1 (running statistics replaced)", B((2, 2, 3, 3), True, 1.0, 1e-5, 0.0, 1.0, 5)),
        ("eps 1e-3 and tiny data (scale 0.01)", B((2, 2, 3, 3), True, 0.1, 1e-3, 0.0, 0.01, 6)),
        ("evaluation, 17 channels", B((2, 17, 2, 2), False, 0.1, 1e-5, 0.0, 10.0, 7)),
        ("non-contiguous arrays", B((2, 3, 3, 4), True, 0.1, 1e-5, 0.0, 1.0, 8, layout="strided")),
    ]
    rows += [(f"training, {c} channels", B((2, c, 2, 2), True, 0.1, 1e-5, 0.0, 1.0, 10 + c)) for c in (1, 64)]
    return [Boundary(n, c) for n, c in rows]


def ce_classes() -> list[Boundary]:
    """cross-entropy: logits near the float32 exp overflow edge (|z| about 100 > 88.7), of 1e2 and 1e4
    scale, 2 and 64 classes, one sample, label smoothing 0, 0.1 and 1, dloss 0 and negative, a strided
    layout."""
    E = sst.CECase
    rows = [("4 x 5 logits at scale 1", E(4, 5, 1.0, 0.0, 1.0, 0)),
            ("scale 10, label smoothing 0.1", E(3, 4, 10.0, 0.1, 1.0, 1)),
            ("logits near the float32 exp overflow edge (|z| about 100)", E(4, 6, 40.0, 0.0, 1.0, 2)),
            ("logits of 1e2", E(4, 5, 100.0, 0.0, 1.0, 3)),
            ("logits of 1e4", E(4, 5, 1e4, 0.1, 1.0, 4)),
            ("2 classes", E(5, 2, 3.0, 0.0, 1.0, 5)),
            ("64 classes", E(3, 64, 3.0, 0.0, 1.0, 6)),
            ("one sample", E(1, 7, 3.0, 0.0, 1.0, 7)),
            ("label smoothing 1", E(4, 5, 3.0, 1.0, 1.0, 8)),
            ("dloss 0", E(4, 5, 3.0, 0.1, 0.0, 9)),
            ("dloss -2.5", E(4, 5, 3.0, 0.0, -2.5, 10)),
            ("non-contiguous logits", E(4, 6, 3.0, 0.1, 1.0, 11, layout="strided"))]  # fmt: skip
    return [Boundary(n, c) for n, c in rows]


def pool_checks() -> list[Check]:
    """Max pooling (exact forward, dot-bound gradient) and global average pooling."""
    return [
        simple_check(
            "maxpool2d_forward",
            "exact",
            "maxpool2d_forward",
            lambda ctx: sst.maxpool_cases(),
            _maxpool_forward_run,
            lambda ctx: maxpool_classes(),
            "max pooling (a selection: exact)",
        ),
        simple_check(
            "maxpool2d_vjp",
            "dot",
            "maxpool2d_vjp",
            lambda ctx: sst.maxpool_cases(),
            _maxpool_vjp_run,
            lambda ctx: maxpool_classes(),
            "max pooling gradient (overlapping windows add)",
        ),
        simple_check(
            "global_avgpool_forward",
            "dot",
            "global_avgpool_forward",
            lambda ctx: sst.avgpool_cases(),
            _avgpool_forward_run,
            lambda ctx: avgpool_classes(),
            doc="spatial mean",
        ),
        simple_check(
            "global_avgpool_vjp",
            "dot",
            "global_avgpool_vjp",
            lambda ctx: sst.avgpool_cases(),
            _avgpool_vjp_run,
            lambda ctx: avgpool_classes(),
            doc="spatial mean gradient",
        ),
    ]


def layer_checks() -> list[Check]:
    """conv2d, linear, batch norm, group norm and cross-entropy: a forward and a VJP check each, from one
    table."""
    conv_edge, linear_edge, bn_edge, ce_edge = conv_classes(), linear_classes(), bn_classes(), ce_classes()
    pairs = [
        ("conv2d", "dot", sst.conv_cases, _conv_run, conv_edge, "conv2d output", "conv2d dx, dw, db"),
        ("linear", "dot", sst.linear_cases, _linear_run, linear_edge, "linear output", "linear dx, dw, db"),
        ("batchnorm2d", "relative", sst.bn_cases, _bn_run, bn_edge,
         "batch norm output and running statistics", "batch norm dx, dweight, dbias"),
        ("groupnorm", "relative", _gn_cases, _gn_run, gn_classes(),
         "group norm output (per-sample group statistics)", "group norm dx, dweight, dbias"),
        ("cross_entropy", "relative", sst.ce_cases, _ce_run, ce_edge,
         "mean softmax cross-entropy loss", "mean softmax cross-entropy gradient"),
    ]  # fmt: skip
    checks = []
    for op, contract, cases, run, edge, doc_forward, doc_vjp in pairs:
        for vjp, doc in ((False, doc_forward), (True, doc_vjp)):
            method = f"{op}_vjp" if vjp else f"{op}_forward"
            checks.append(
                simple_check(
                    method,
                    contract,
                    method,
                    lambda ctx, cases=cases: cases(),
                    lambda ctx, case, run=run, vjp=vjp: run(ctx, case, vjp),
                    lambda ctx, edge=edge: edge,
                    doc,
                )
            )
    return checks
