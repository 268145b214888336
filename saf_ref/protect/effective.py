"""The differentiable pipeline: latents -> stored bits -> (faults) -> effective weights, and its backward.

This is the only place where latents become the weights a network computes with (training with SAF,
RandBET or plain storage; evaluation of a faulty chip goes through :func:`~saf_ref.protect.stored.load`,
the same read path)::

    u ─ clip [-c, c] ─► × s ─► encode ─► bits ─ faults ─► bits' ─ decode ─► û ─ ÷ s ─► f ─► w
    du ◄─────────── straight-through (identity) ◄─────────────────── f'(û / s) · dw ◄────── dw

Math
----
Forward: ``w = f(decode(faults(encode(s * clip(u, -c, c)))) / s)``. Backward: ``du = f'(û / s) · dw``,
the middle being a straight-through estimator (Jacobian 1): ``× s`` and ``÷ s`` cancel and the clip
passes the gradient also outside ``[-c, c]`` (as the reference code of Stutz et al., which clips by
projection after the optimizer step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import FaultModel
from saf_ref.protect.inject import apply_model, check_fault_model, targets_from_rules
from saf_ref.protect.spec import StorageSpec, check_spec
from saf_ref.protect.stored import NONFINITE_POLICIES, StoredModel, check_encodable, check_params, read, write
from saf_ref.protect.transforms import Transform

__all__ = ["EffectiveWeightsCache", "effective_weights", "effective_weights_backward"]


class EffectiveWeightsCache(NamedTuple):
    """What :func:`effective_weights_backward` needs.

    Attributes
    ----------
    u_hat : dict str -> ndarray
        The transform inputs ``û / s`` (decoded, possibly faulty, non-finite policy applied).
    transforms : dict str -> Transform
        The transform of each parameter.
    stored : StoredModel
        The stored model the weights were read from (with the faults, if any).
    faults : FaultList or None
        The faults that were applied (None if none were requested).
    """

    u_hat: dict[str, np.ndarray]
    transforms: dict[str, Transform]
    stored: StoredModel
    faults: FaultList | None


def effective_weights(
    latents: Mapping[str, np.ndarray],
    spec: StorageSpec,
    *,
    faults: FaultModel | FaultList | None = None,
    rng: np.random.Generator | int | None = None,
    nonfinite: str = "propagate",
) -> tuple[dict[str, np.ndarray], EffectiveWeightsCache]:
    """The weights the network computes with: store, (optionally) inject faults, load.

    PyTorch equivalent: a straight-through estimator, ``w = f(u + (read(write(u)) - u).detach())``.

    Parameters
    ----------
    latents : dict str -> ndarray
        Latents ``u`` (float32 or float64, one dtype). Never modified.
    spec : StorageSpec
    faults : fault model, FaultList or None
        What memory does to the stored bits (see :func:`~saf_ref.protect.inject.inject`):
        ``BitErrors(p)`` for a fresh random pattern (RandBET), a FaultList to replay one, None for
        clean weights.
    rng : numpy.random.Generator, int seed or None
        Required by random fault models; None otherwise (also when ``faults`` is None).
    nonfinite : {"propagate", "zero"}
        See :func:`~saf_ref.protect.stored.load`.

    Returns
    -------
    params_eff : dict str -> ndarray
        Same keys, shapes and dtype as ``latents``.
    cache : EffectiveWeightsCache
        Its ``faults`` is the FaultList that was applied (None without faults).

    Math
    ----
    ``w = f(decode(faults(encode(s * clip(u, -c, c)))) / s)``; see :func:`effective_weights_backward`.
    """
    fn = "effective_weights"
    check_params(latents, "latents", fn)
    check_spec(spec, fn)
    validation.check_choice(nonfinite, "nonfinite", fn, NONFINITE_POLICIES)
    if faults is None and rng is not None:
        raise ValueError(f"{fn}: rng must be None when no faults are requested (faults=None), got {rng!r}")
    shapes = {k: v.shape for k, v in latents.items()}
    rules = spec.resolve(shapes, fn)
    check_encodable(latents, rules, fn, "latents")
    if faults is not None:  # checked against the tensors to be stored, before any encoding
        model, gen = check_fault_model(targets_from_rules(shapes, rules), faults, rng, fn)
    stored = write(latents, spec, rules, fn, "latents")
    fl = None
    if faults is not None:
        stored, fl = apply_model(stored, model, gen)
    eff, u_hat = read(stored, rules, nonfinite, fn)
    transforms = {name: rules[name].transform for name in u_hat}
    return eff, EffectiveWeightsCache(u_hat, transforms, stored, fl)


def effective_weights_backward(
    grads_eff: Mapping[str, np.ndarray], cache: EffectiveWeightsCache
) -> dict[str, np.ndarray]:
    """Gradients with respect to the latents, from gradients with respect to the effective weights.

    PyTorch equivalent: autograd through the straight-through estimator of :func:`effective_weights`.

    Parameters
    ----------
    grads_eff : dict str -> ndarray
        ``dL/dw`` for every parameter of the cache (same keys, shapes and dtypes as ``params_eff``).
    cache : EffectiveWeightsCache

    Returns
    -------
    grads_latent : dict str -> ndarray
        ``dL/du``, same keys (in the cache's order), shapes and dtype.

    Math
    ----
    ``du = f'(û / s) * dw``, with ``f'`` evaluated at the value actually read from memory (decoded,
    possibly faulty, after the non-finite policy): the transform's vector-Jacobian product.

    The middle ``clip -> × s -> encode -> faults -> decode -> ÷ s`` is treated as the identity
    (straight-through estimator): its Jacobian is taken to be 1. The scale therefore does not appear
    (``× s`` and ``÷ s`` cancel). The clip's gradient is passed through also outside ``[-c, c]``, as in
    the reference code of Stutz et al., where clipping is a projection after each optimizer step rather
    than part of the model.

    Notes
    -----
    - With ``nonfinite="propagate"`` a NaN read from memory gives NaN in ``du`` (``f'(NaN) = NaN``,
      identity included); an infinity gives 0 for saturating transforms (``f'(±inf) = 0``).
    """
    fn = "effective_weights_backward"
    if not isinstance(cache, EffectiveWeightsCache):
        raise TypeError(f"{fn}: cache must be an EffectiveWeightsCache, got {validation.describe(cache)}")
    if not isinstance(grads_eff, Mapping):
        raise TypeError(f"{fn}: grads_eff must be a dict of arrays, got {validation.describe(grads_eff)}")
    missing = [k for k in cache.u_hat if k not in grads_eff]
    extra = [k for k in grads_eff if k not in cache.u_hat]
    if missing or extra:
        raise ValueError(
            f"{fn}: grads_eff keys must equal the parameter names, got missing {missing} and extra {extra}"
        )
    for name, u_hat in cache.u_hat.items():  # every gradient checked before any product is formed
        where = f"grads_eff[{name!r}]"
        validation.check_float(grads_eff[name], where, fn)
        validation.check_dtype(grads_eff[name], where, fn, (u_hat.dtype,))
        validation.check_shape(grads_eff[name], where, fn, u_hat.shape)
    return {name: cache.transforms[name].vjp(u_hat, grads_eff[name]) for name, u_hat in cache.u_hat.items()}
