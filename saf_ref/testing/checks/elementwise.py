"""Checks of the elementwise operations: the weight transforms and the SGD step (ulp tier) and ReLU (exact).

Each result element is compared with saf_ref's float64 result within a few ulps of its magnitude
(:func:`saf_ref.testing.contracts.assert_ulp`); ReLU is a selection, compared bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from saf_ref.protect.transforms import TRANSFORMS, Transform
from saf_ref.testing import strategies as sst
from saf_ref.testing.checks.core import (
    REF64,
    Boundary,
    Check,
    Context,
    Outcome,
    Tally,
    config_text,
    f64,
    result,
    simple_check,
)
from saf_ref.testing.contracts import ContractFailure, assert_exact, assert_ulp

__all__ = [
    "SGD_ULPS_PER_STEP",
    "TRANSFORM_ULPS",
    "relu_checks",
    "sgd_checks",
    "sgd_classes",
    "transform_checks",
    "transform_classes",
]

#: ulps allowed for the weight transforms (a few roundings: u / a, f, a * f; f itself within ~2 ulp)
TRANSFORM_ULPS = 4.0
#: ulps (of the magnitude) per SGD step: weight decay, momentum, Nesterov and the update, 2 roundings each
SGD_ULPS_PER_STEP = 8.0


# =========================================================================================================
# protect: transforms
# =========================================================================================================
def _transform_boundaries(dtype: np.dtype) -> list[float]:
    info = np.finfo(dtype)
    values = [
        0.0,
        1.0,
        0.5,
        2.0,
        10.0,
        20.0,
        1e10,
        float(info.max),
        float(info.tiny),
        float(info.smallest_subnormal),
        1e-30,
        math.inf,
        math.nan,
        3.0,
        0.1,
    ]
    return sst.representable(values, dtype)


@st.composite
def _transform_cases(draw, dtype: np.dtype, vjp: bool):
    scale = draw(st.one_of(st.just(1.0), st.sampled_from([0.5, 2.0]), st.floats(0.05, 20.0)))
    u = draw(sst.float_arrays(dtype, _transform_boundaries(dtype)))
    if not vjp:
        return scale, u, None
    general = st.floats(-1e3, 1e3, width=8 * dtype.itemsize)
    dw = draw(
        hnp.arrays(
            dtype,
            u.shape,
            elements=st.one_of(st.sampled_from([1.0, -1.0, 0.0, 0.5]), general),
            fill=st.nothing(),
        )
    )
    return scale, u, dw


def _transform_explain(
    name: str, u: np.ndarray, scale: float, got: np.ndarray, vjp: bool, dw: np.ndarray | None = None
):
    """The known divergences of a transform, each only where it applies.

    ``softsign-infinity``: softsign only (``inf / inf``, also where ``u / a`` overflows), forward and
    gradient. ``nan-latent-gradient``: the *gradient* at a NaN latent only; a forward pass that turns a
    NaN latent into a finite weight is a failure (a NaN must never become a valid-looking weight).
    ``flush-to-zero``: a forward flushed to +-0 where ``u`` or ``u / a`` is below the normal range.
    ``hardtanh-bound-gradient``: hardtanh's gradient 0 at ``|u| = fl(a) < a``.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        infinite = np.isinf(u) | np.isinf(u / u.dtype.type(scale))
    tiny = max(1.0, scale) * float(np.finfo(u.dtype).tiny)

    def explain(bad: np.ndarray) -> dict[str, np.ndarray]:
        g = np.asarray(got, dtype=np.float64)
        out = {}
        if name == "softsign":
            out["softsign-infinity"] = bad & infinite & np.isnan(g)
        if name == "hardtanh" and vjp:
            bound = float(u.dtype.type(scale))  # fl(a): a rounded to the latents' dtype
            out["hardtanh-bound-gradient"] = bad & (np.abs(u) == bound) & (bound != scale) & (g == 0)
        if vjp:
            out["nan-latent-gradient"] = bad & np.isnan(u) & ~np.isnan(g)
            if dw is not None:  # a subnormal upstream gradient read as 0 (denormals-are-zero)
                out["flush-to-zero"] = bad & (g == 0) & (np.abs(dw) < tiny)
        else:
            out["flush-to-zero"] = bad & (g == 0) & (np.abs(u) < tiny)
        return out

    return explain


def transform_classes(dtype: np.dtype, vjp: bool) -> list[Boundary]:
    """The boundary table of a weight transform: latent classes (signed zeros, subnormals, NaN kinds,
    infinities, the exp overflow edges of float32 and float64, saturation), scales that make ``u / a``
    overflow or underflow, upstream gradients at their extremes, ranks 0 to 4 and non-contiguous layouts."""
    info = np.finfo(dtype)
    sub, tiny = float(info.smallest_subnormal), float(info.tiny)
    groups = {
        "signed zeros": [0.0],
        "subnormals (smallest, largest) and the smallest normal": [sub, tiny - sub, tiny],
        "ordinary values (0.1 to 20)": [0.1, 0.5, 1.0, 2.0, 3.0, 10.0, 20.0],
        "exp overflow edges (|u| near 88.7 and 709.8)": [88.0, 88.75, 89.0, 709.0, 710.0, 1e3],
        "saturation (1e10, 1e30, largest finite)": [1e10, 1e30, float(info.max)],
        "infinities": [math.inf],
    }
    rows = [(n, np.array(sst.representable(v, dtype), dtype=dtype)) for n, v in groups.items()]
    rows.append(("NaN kinds (quiet, signalling, payload high / low bits, both signs)", sst.nan_kinds(dtype)))
    every = np.array(_transform_boundaries(dtype), dtype=dtype)
    rows.append(("all boundary values at once", every))
    rows += sst.layout_variants(every)
    out = []
    for name, u in rows:
        dw = np.full(u.shape, 1.5, dtype=dtype) if vjp else None
        out.append(Boundary(f"u: {name}", (1.0, u, dw)))
    for scale in (0.5, 2.0, 1e-3, 1e3):
        dw = np.full(every.shape, -0.75, dtype=dtype) if vjp else None
        out.append(Boundary(f"scale a = {scale:g}, every boundary value", (scale, every, dw)))
    # A scale that is no number of the dtype (0.7 in float32): the nearest number, fl(a), may lie inside
    # the bound a, where hardtanh's gradient is dw; a kernel that compares with fl(a) finds it on the bound.
    near = dtype.type(0.7)
    edge = [near, np.nextafter(near, dtype.type(0)), np.nextafter(near, dtype.type(math.inf))]
    u = np.array(edge + [-v for v in edge], dtype)
    dw = np.full(u.shape, 1.5, dtype=dtype) if vjp else None
    out.append(Boundary("scale a = 0.7, u at and beside fl(a), both signs", (0.7, u, dw)))
    if vjp:
        dw = np.array(sst.representable([0.0, sub, 1e30, float(info.max)], dtype), dtype)
        out.append(Boundary("dw: signed zeros, subnormal, huge", (1.0, np.full(dw.shape, 0.5, dtype), dw)))
    return out


def _derivative_terms(name: str, u: np.ndarray, scale: float) -> np.ndarray:
    """Magnitude of the terms autograd adds to form ``f'(x)``, ``x = u / a`` (float64).

    PyTorch differentiates ``tanh`` as ``1 - tanh(x)**2`` and ``softsign = x / (1 + |x|)`` by the
    quotient rule, ``1 / (1 + |x|) - |x| / (1 + |x|)**2``: differences of terms that cancel where ``f'``
    is small. Their rounding errors are relative to the terms (as in the dot-product tier), so the ulps
    are counted on this magnitude: 2 for tanh, ``2 / (1 + |x|)`` for softsign, ``|f'|`` otherwise.
    """
    if name == "tanh":
        return np.full(u.shape, 2.0)
    if name == "softsign":
        with np.errstate(invalid="ignore", over="ignore"):  # |u| / a may overflow: the terms are 0
            return 2.0 / (1.0 + np.abs(u.astype(np.float64)) / scale)
    return np.zeros(u.shape)


def _make_transform(name: str, vjp: bool) -> Check:
    method = "transform_vjp" if vjp else "transform_forward"

    def run(ctx: Context, case) -> Outcome:
        scale, u, dw = case
        what = f"{method}[{name}](scale={scale!r})"
        t = Transform(name, scale)
        info = np.finfo(ctx.dtype)
        # Gradual underflow: an intermediate (u / a, a * dw) may be subnormal, with an absolute error of
        # half the subnormal spacing, which the scale a (or 1 / a) then carries into the result.
        atol = TRANSFORM_ULPS * float(info.smallest_subnormal) * max(scale, 1.0 / scale)
        if vjp:
            ref = t.vjp(*f64(u, dw))
            got = result(ctx.call(method, name, u, dw, scale=scale), ctx.dtype, u.shape, what)
            adw = np.abs(dw.astype(np.float64))
            magnitude = np.nan_to_num(_derivative_terms(name, u, scale)) * adw
            # the derivative factor may underflow: |ref| < tiny * |dw| is not distinguished from 0
            atol, inputs = atol + TRANSFORM_ULPS * float(info.tiny) * adw, {"u": u, "dw": dw}
        else:
            ref = t.forward(u.astype(np.float64))
            got = result(ctx.call(method, name, u, scale=scale), ctx.dtype, u.shape, what)
            magnitude, inputs = None, {"u": u}
        return assert_ulp(
            got,
            ref,
            n=TRANSFORM_ULPS,
            u=ctx.u,
            what=what,
            magnitude=magnitude,
            atol=atol,
            inputs=inputs,
            explain=_transform_explain(name, u, scale, got, vjp, dw),
        )

    def explicit(ctx: Context):
        return transform_classes(ctx.dtype, vjp)

    doc = "du = f'(u/a) dw" if vjp else "w = a f(u/a)"
    return Check(
        f"{method}[{name}]",
        "ulp",
        (method,),
        lambda ctx: _transform_cases(ctx.dtype, vjp),
        run,
        explicit=explicit,
        doc=f"{name} transform: {doc}, within {TRANSFORM_ULPS:g} ulp",
    )


# =========================================================================================================
# nn: ReLU (exact)
# =========================================================================================================
def _relu_boundaries(dtype: np.dtype) -> list[float]:
    info = np.finfo(dtype)
    return sst.representable(
        [
            0.0,
            float(info.smallest_subnormal),
            float(info.tiny),
            1.0,
            2.5,
            math.inf,
            math.nan,
            float(info.max),
        ],
        dtype,
    )


@st.composite
def _relu_cases(draw, dtype: np.dtype):
    x = draw(sst.float_arrays(dtype, _relu_boundaries(dtype)))
    general = st.floats(-1e3, 1e3, width=8 * dtype.itemsize)
    dy = draw(
        hnp.arrays(
            dtype, x.shape, elements=st.one_of(st.sampled_from([1.0, -1.0, -0.0]), general), fill=st.nothing()
        )
    )
    return x, dy


def _relu_explicit(ctx: Context) -> list[Boundary]:
    """ReLU's boundary table: signed zeros, subnormals, NaN kinds, infinities, all at once, and layouts;
    the upstream gradient is nonzero everywhere."""
    info = np.finfo(ctx.dtype)
    sub, tiny = float(info.smallest_subnormal), float(info.tiny)
    groups = {
        "signed zeros": [0.0],
        "subnormals": [sub, tiny - sub],
        "infinities and the largest finite": [math.inf, float(info.max)],
    }
    rows = [(n, np.array(sst.representable(v, ctx.dtype), dtype=ctx.dtype)) for n, v in groups.items()]
    rows.append(
        ("NaN kinds (quiet, signalling, payload high / low bits, both signs)", sst.nan_kinds(ctx.dtype))
    )
    every = np.array(_relu_boundaries(ctx.dtype), dtype=ctx.dtype)
    rows.append(("all boundary values at once", every))
    rows += sst.layout_variants(every)
    out = []
    for name, x in rows:
        signs = np.where(np.arange(x.size) % 2, -1.0, 1.0)
        dy = (np.arange(1, x.size + 1) * signs).astype(ctx.dtype).reshape(x.shape)  # nonzero everywhere
        out.append(Boundary(f"x: {name}", (x, dy)))
    return out


def _relu_forward_run(ctx: Context, case) -> Outcome:
    x, _ = case
    expected = REF64.relu_forward(x)  # exact in any dtype: saf_ref keeps x's dtype
    got = result(ctx.call("relu_forward", x), ctx.dtype, x.shape, "relu_forward")

    def explain(bad):
        g = np.asarray(got)
        return {
            "relu-negative-zero": bad & (x == 0) & np.signbit(x) & (g == 0) & ~np.signbit(g),
            "flush-to-zero": bad & (g == 0) & (np.abs(x) < np.finfo(x.dtype).tiny),  # a subnormal x as 0
        }

    return assert_exact(
        got,
        expected,
        what="relu_forward",
        inputs={"x": x},
        explain=explain,
        nan_payloads=ctx.options.nan_payloads,
    )


def _relu_vjp_run(ctx: Context, case) -> Outcome:
    x, dy = case
    expected = REF64.relu_vjp(x, dy)
    got = result(ctx.call("relu_vjp", x, dy), ctx.dtype, x.shape, "relu_vjp")

    def explain(bad):  # a positive subnormal x read as 0 (denormals-are-zero): x > 0 is false
        g = np.asarray(got)
        return {
            "flush-to-zero": bad & (g == 0) & (x > 0) & (x < np.finfo(x.dtype).tiny),
            "relu-nan-gradient": bad & np.isnan(x) & (g == 0),
        }

    return assert_exact(
        got,
        expected,
        what="relu_vjp",
        inputs={"x": x, "dy": dy},
        explain=explain,
        nan_payloads=ctx.options.nan_payloads,
    )


# =========================================================================================================
# train: SGD (ulp of the magnitude)
# =========================================================================================================
def _sgd_magnitude(params, grads, case: sst.SGDCase) -> dict[str, np.ndarray]:
    """Elementwise magnitude of the SGD iterate: the recurrence run on absolute values, in float64.

    Each step's roundings are relative to its terms, which this bounds; the error of ``steps`` steps is
    then at most about ``(roundings per step) * steps * u`` times it.
    """
    out = {}
    for k, p in params.items():
        mag, buf = np.abs(p.astype(np.float64)), None
        for g in grads:
            d = np.abs(g[k].astype(np.float64)) + case.weight_decay * mag
            if case.momentum:
                buf = d if buf is None else case.momentum * buf + abs(1 - case.dampening) * d
                d = d + case.momentum * buf if case.nesterov else buf
            mag = mag + case.lr * d
        out[k] = mag
    return out


def _sgd_run(ctx: Context, case: sst.SGDCase) -> Outcome:
    params, grads = case.arrays(ctx.dtype)
    cfg = case.config()
    what = f"sgd({case.steps} steps, {config_text(cfg)}, seed={case.seed})"
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    g64 = [{k: v.astype(np.float64) for k, v in g.items()} for g in grads]
    ref = REF64.sgd(p64, g64, **cfg)
    mags = _sgd_magnitude(params, grads, case)
    got = ctx.call("sgd", params, grads, **cfg)
    if not isinstance(got, Mapping) or set(got) != set(params):
        raise ContractFailure(
            f"{what}: expected a dict with the keys {sorted(params)}, got {type(got).__name__}"
        )
    tally = Tally()
    for k in params:
        g = result(got[k], ctx.dtype, params[k].shape, f"{what} params[{k!r}]")
        tally.add(
            assert_ulp(
                g,
                ref[k],
                n=SGD_ULPS_PER_STEP * case.steps,
                u=ctx.u,
                magnitude=mags[k],
                what=f"{what} params[{k!r}]",
            )
        )
    return tally.outcome()


def transform_checks() -> list[Check]:
    """``transform_forward[f]`` for every transform, then ``transform_vjp[f]``."""
    return [_make_transform(name, vjp) for vjp in (False, True) for name in TRANSFORMS]


def relu_checks() -> list[Check]:
    """``relu_forward`` and ``relu_vjp``, bit for bit."""
    return [
        simple_check(
            "relu_forward",
            "exact",
            "relu_forward",
            lambda ctx: _relu_cases(ctx.dtype),
            _relu_forward_run,
            _relu_explicit,
            "relu, bit for bit (relu(-0.0) = -0.0, NaN passes)",
        ),
        simple_check(
            "relu_vjp",
            "exact",
            "relu_vjp",
            lambda ctx: _relu_cases(ctx.dtype),
            _relu_vjp_run,
            _relu_explicit,
            "relu gradient, bit for bit (ReLU'(0) = 0)",
        ),
    ]


def sgd_classes() -> list[Boundary]:
    """SGD's boundary table: each option alone and together, the first step (no dampening), parameters
    of rank 0 to 4, extreme learning rates."""
    rows = [
        ("momentum and weight decay", sst.SGDCase(((3, 2), (4,)), 3, 0.1, 0.9, 0.0, 5e-4, False, 0)),
        ("Nesterov", sst.SGDCase(((5,),), 2, 0.05, 0.9, 0.0, 0.0, True, 1)),
        ("plain SGD (momentum 0)", sst.SGDCase(((4,),), 2, 0.1, 0.0, 0.0, 0.0, False, 2)),
        ("momentum 0, dampening 0.5 (ignored)", sst.SGDCase(((4,),), 3, 0.1, 0.0, 0.5, 0.0, False, 9)),
        ("one step with momentum and dampening (the first step is not dampened)",
         sst.SGDCase(((6,),), 1, 0.1, 0.9, 0.5, 0.0, False, 3)),
        ("dampening over 4 steps", sst.SGDCase(((3,),), 4, 0.1, 0.5, 0.5, 0.01, False, 4)),
        ("Nesterov with weight decay", sst.SGDCase(((2, 2),), 3, 0.01, 0.99, 0.0, 0.1, True, 5)),
        ("parameters of rank 0 and 4", sst.SGDCase(((), (2, 3, 2, 2)), 2, 0.1, 0.9, 0.0, 5e-4, False, 6)),
        ("learning rate 1 and weight decay 0.1", sst.SGDCase(((4,),), 2, 1.0, 0.9, 0.1, 0.1, False, 7)),
        ("tiny learning rate 1e-4", sst.SGDCase(((4,),), 3, 1e-4, 0.9, 0.0, 0.0, True, 8)),
    ]  # fmt: skip
    return [Boundary(n, c) for n, c in rows]


def sgd_checks() -> list[Check]:
    """``sgd``: several steps of torch.optim.SGD semantics."""
    return [
        simple_check(
            "sgd",
            "ulp",
            "sgd",
            lambda ctx: sst.sgd_cases(),
            _sgd_run,
            lambda ctx: sgd_classes(),
            "torch.optim.SGD steps (momentum, dampening, Nesterov, weight decay)",
        )
    ]
