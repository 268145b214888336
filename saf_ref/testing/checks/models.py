"""Checks of whole models: forward, mean cross-entropy and backward of a ResNet, relative to saf_ref float32.

A model computes with the weights it is given. With a weight transform ``f`` (SAF), the check builds the
chain of DESIGN.md section 1 from each side's own operations:

- the backend: ``w = backend.transform_forward(f, u)`` for every conv/linear weight (the tensors of role
  ``"weight"``, :func:`saf_ref.protect.param_role`), then ``backend.model_forward_backward`` on ``w``,
  then ``du = backend.transform_vjp(f, u, dw)``;
- saf_ref: ``w = effective_weights(u, default_spec(<dtype>, f))``, the model, then
  ``effective_weights_backward`` (the one place where latents become weights, :mod:`saf_ref.protect`).

The latent gradients, logits, loss and running statistics are compared under the relative tier. The
float32 error ``E32`` is sampled on several equivalent computations: the batch in other orders and, for
a float64 backend, networks whose hidden channels are permuted (see the contracts module docstring).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from saf_ref.protect import default_spec, effective_weights, effective_weights_backward, param_role
from saf_ref.testing import strategies as sst
from saf_ref.testing.checks.core import (
    REF32,
    REF64,
    Boundary,
    Check,
    Context,
    Outcome,
    Tally,
    Unsupported,
    check_relative,
    f32,
    f64,
    result,
)
from saf_ref.testing.checks.layers import ce_scale
from saf_ref.testing.contracts import U32, ContractFailure
from saf_ref.testing.numpy_backend import NumpyBackend
from saf_ref.testing.protocol import ModelResult

__all__ = [
    "ARCHS",
    "MODEL_CLASSES",
    "model_classes",
    "block_channel_permutations",
    "model_checks",
    "permute_block_channels",
    "transformed_names",
]

ARCHS = ("resnet20", "resnet18_cifar", "resnet18")

_INNER_CONV1 = re.compile(r"(layer\d+\.\d+\.)conv1\.weight")


# ---------------------------------------------------------------------------------------------------------
# Equivalent computations: other batch orders, permuted hidden channels
# ---------------------------------------------------------------------------------------------------------
def _batch_orders(n: int, seed: int) -> list[np.ndarray]:
    """Batch orders for the float32 spread: as given, reversed, and one random permutation."""
    orders = [np.arange(n), np.arange(n)[::-1], np.random.default_rng(seed).permutation(n)]
    return [o for i, o in enumerate(orders) if not any(np.array_equal(o, p) for p in orders[:i])]


def block_channel_permutations(params: Mapping[str, np.ndarray], seed: int) -> list[dict[str, np.ndarray]]:
    """Two permutations of the hidden channels of every residual block (``conv1`` out, ``bn1``, ``conv2``
    in): all channels reversed, and a random permutation drawn from ``seed``.

    Permuting a block's hidden channels gives an equivalent network (the same function of the input and
    the same gradients, permuted) whose float32 sums over those channels, and so every later rounding,
    happen in another order: another sample of the float32 error, where batch orders alone cannot
    change the sums over a tiny tensor's few elements.
    """
    rng = np.random.default_rng(seed)
    blocks = [(m[1], params[k].shape[0]) for k in params if (m := _INNER_CONV1.fullmatch(k))]
    return [{b: np.arange(c)[::-1] for b, c in blocks}, {b: rng.permutation(c) for b, c in blocks}]


def permute_block_channels(
    tensors: Mapping[str, np.ndarray], perms: Mapping[str, np.ndarray], *, inverse: bool = False
) -> dict[str, np.ndarray]:
    """Parameters, state or gradients of the network with the hidden channels of each block permuted.

    ``perms`` maps a block prefix (``"layer1.0."``) to a permutation ``q``: ``conv1.weight`` rows and the
    ``bn1`` tensors become ``t[q]`` and ``conv2.weight`` columns ``t[:, q]``; ``inverse=True`` maps the
    permuted network's gradients (or state) back with ``argsort(q)``.
    """
    out = dict(tensors)
    for prefix, q in perms.items():
        q = np.argsort(q) if inverse else q
        for k in tensors:
            rest = k[len(prefix) :] if k.startswith(prefix) else None
            if rest == "conv1.weight" or (rest is not None and rest.startswith("bn1.")):
                out[k] = tensors[k][q]
            elif rest == "conv2.weight":
                out[k] = tensors[k][:, q]
    return out


# ---------------------------------------------------------------------------------------------------------
# The chain latents -> weights -> model -> latent gradients
# ---------------------------------------------------------------------------------------------------------
def transformed_names(params: Mapping[str, np.ndarray]) -> list[str]:
    """The parameters a weight transform applies to: role ``"weight"`` (conv and linear weights)."""
    shapes = {k: v.shape for k, v in params.items()}
    return [k for k in params if param_role(k, shapes) == "weight"]


def _saf_ref_model(ref: NumpyBackend, case: sst.ModelCase, latents, state, x, labels) -> ModelResult:
    """saf_ref in ``ref``'s dtype: latents -> effective weights -> model -> gradients of the latents."""
    if case.transform is None:
        return ref.model_forward_backward(case.arch, latents, state, x, labels, train=case.train)
    weights, cache = effective_weights(latents, default_spec(ref.dtype, case.transform))
    out = ref.model_forward_backward(case.arch, weights, state, x, labels, train=case.train)
    return out._replace(grads=effective_weights_backward(out.grads, cache))


def _backend_model(ctx: Context, case: sst.ModelCase, latents, state, x, labels, what: str) -> ModelResult:
    """The backend's own chain: its transform op on each weight, its model, its transform VJP."""
    names = transformed_names(latents) if case.transform is not None else []
    if names and not all(hasattr(ctx.backend, m) for m in ("transform_forward", "transform_vjp")):
        raise Unsupported("model with a weight transform: the backend has no transform_forward/transform_vjp")
    weights = dict(latents)
    for k in names:
        got = ctx.call("transform_forward", case.transform, latents[k], scale=1.0)
        weights[k] = result(got, ctx.dtype, latents[k].shape, f"{what} transform_forward(params[{k!r}])")
    got = ctx.call("model_forward_backward", case.arch, weights, state, x, labels, train=case.train)
    if not (isinstance(got, tuple) and len(got) == 4):
        raise ContractFailure(f"{what}: expected a ModelResult (logits, loss, new_state, grads)")
    got = ModelResult(*got)
    for group, keys in (("new_state", state), ("grads", latents)):
        d = getattr(got, group)
        if not isinstance(d, Mapping) or set(d) != set(keys):
            missing = sorted(set(keys) - set(d)) if isinstance(d, Mapping) else "all"
            raise ContractFailure(f"{what}: {group} must have the keys of the state dict; missing {missing}")
    grads = dict(got.grads)
    for k in names:
        dw = result(grads[k], ctx.dtype, latents[k].shape, f"{what} grads[{k!r}] (of the weights)")
        du = ctx.call("transform_vjp", case.transform, latents[k], dw, scale=1.0)
        grads[k] = result(du, ctx.dtype, latents[k].shape, f"{what} transform_vjp(params[{k!r}])")
    return got._replace(grads=grads)


def _float32_samples(ctx: Context, case: sst.ModelCase, params, state, x, labels) -> list[ModelResult]:
    """saf_ref float32 on equivalent computations, outputs mapped back to the original order.

    The batch in several orders: the sums of batch norm and of the weight gradients are then taken in
    other orders, sampling the spread of float32 rounding in this (possibly ill-conditioned) network.
    For a float64 backend also the networks with permuted hidden channels (the contracts module
    docstring says why only there).
    """
    p32, s32 = ({k: v.astype(np.float32) for k, v in d.items()} for d in (params, state))
    (x32,) = f32(x)
    samples = []
    for order in _batch_orders(x.shape[0], case.seed):
        r = _saf_ref_model(REF32, case, p32, s32, x32[order], labels[order])
        samples.append(r._replace(logits=r.logits[np.argsort(order)]))
    if ctx.u < U32:
        for perms in block_channel_permutations(params, case.seed):
            pp, sp = permute_block_channels(p32, perms), permute_block_channels(s32, perms)
            r = _saf_ref_model(REF32, case, pp, sp, x32, labels)
            back = {
                g: permute_block_channels(getattr(r, g), perms, inverse=True) for g in ("new_state", "grads")
            }
            samples.append(r._replace(**back))
    return samples


def _model_run(ctx: Context, case: sst.ModelCase) -> Outcome:
    params, state, x, labels = case.arrays(ctx.dtype)
    what = (
        f"model[{case.arch}](width={case.width}, classes={case.num_classes}, x {x.shape}, "
        f"train={case.train}, transform={case.transform}, seed={case.seed})"
    )
    p64, s64 = ({k: v.astype(np.float64) for k, v in d.items()} for d in (params, state))
    ref = _saf_ref_model(REF64, case, p64, s64, *f64(x), labels)
    ours = _float32_samples(ctx, case, params, state, x, labels)
    got = _backend_model(ctx, case, params, state, x, labels, what)
    tally = Tally()
    check_relative(ctx, tally, got.logits, ref.logits, [o.logits for o in ours], f"{what} logits")
    loss_scale = max(ce_scale(np.asarray(ref.logits, dtype=np.float64)), 1.0)  # as for cross_entropy
    loss = np.asarray(got.loss)
    check_relative(ctx, tally, loss, ref.loss, [o.loss for o in ours], f"{what} loss", scale=loss_scale)
    for group in ("new_state", "grads"):
        g_dict, r_dict = getattr(got, group), getattr(ref, group)
        for k in r_dict:
            samples = [getattr(o, group)[k] for o in ours]
            check_relative(ctx, tally, g_dict[k], r_dict[k], samples, f"{what} {group}[{k!r}]")
    return tally.outcome()


#: The enumerated model widths of the boundary tables (with the mode, transform, classes and batch)
MODEL_CLASSES = (
    (2, 3, 2, True, None),
    (2, 2, 4, False, "tanh"),
    (3, 10, 2, False, "tanh"),
    (4, 5, 4, True, "tanh"),
    (8, 10, 2, False, None),
)


def model_classes(arch: str) -> list[Boundary]:
    """Whole-model boundary table: every enumerated width (2, 3, 4, 8), training and evaluation, raw
    weights and tanh latents, 2 to 10 classes, 2 and 4 images, the smallest and largest image size.

    Width 1 is left out: with one channel per batch norm, saf_ref-float32's own error on a one-element
    gradient is often lucky (much below float32's rounding of the terms), and the relative tier, which
    scales with it, then fails correct float32 implementations (the contracts module docstring)."""
    lo, hi = sst.MODEL_IMAGES[arch]
    rows = []
    for i, (width, classes, batch, train, transform) in enumerate(MODEL_CLASSES):
        image = lo if i % 2 == 0 else hi
        name = (f"width {width}, {'training' if train else 'evaluation'}, {transform or 'raw'} weights, "
                f"{classes} classes, {batch} images of {image}x{image}")  # fmt: skip
        rows.append(Boundary(name, sst.ModelCase(arch, width, classes, batch, image, train, transform, i)))
    return rows


def _make_model(arch: str) -> Check:
    def explicit(ctx: Context) -> list[Any]:
        return model_classes(arch)

    return Check(
        f"model[{arch}]",
        "relative",
        ("model_forward_backward",),
        lambda ctx: sst.model_cases(arch),
        _model_run,
        explicit=explicit,
        cost=10,
        doc=f"{arch} forward, mean cross-entropy and backward from a torchvision state dict (raw or tanh)",
    )


def model_checks() -> list[Check]:
    """``model[arch]`` for every architecture."""
    return [_make_model(arch) for arch in ARCHS]
