"""The storage pipeline of DESIGN.md section 1: latents -> stored bits -> faults -> effective weights.

A *latent* tensor ``u`` is what the optimizer updates and what is written to (possibly faulty) memory.
The network computes with the *effective* weight ``w``::

    u ─ clip [-c, c] ─► × s ─► encode(format) ─► bits ─ faults ─► bits' ─ decode ─► û ─ ÷ s ─► f ─► w
    du ◄─────────── straight-through (identity) ◄─────────────────────────── f'(û / s) · dw ◄────── dw

- ``c`` is an optional clip (weight clipping, Stutz et al.), ``s`` an optional per-tensor scale constant
  (weight scaling: store ``s u``, compute with ``û / s``), ``format`` any IEEE format name, a fixed-point
  name ``qM.N`` or a :class:`~saf_ref.bits.quantize.Quantizer`, and ``f`` a weight transform
  (:mod:`saf_ref.protect.transforms`; identity for a plain network, tanh/arctan/... for SAF).
- A :class:`StorageSpec` says, per parameter, which clip, scale, format, transform and fault exposure
  apply: an ordered list of :class:`StorageRule` s matched by name pattern and role, first match wins.
- :func:`store` turns latents into a :class:`StoredModel` (codes + decoding contexts); :func:`inject`
  (one fault model of :mod:`saf_ref.bits.faultmodels`) and :func:`inject_nested` return *new* stored
  models with faults, as :class:`Injection` ``(stored, faults)``; :func:`load` decodes a stored model
  into effective parameters. :func:`effective_weights` / :func:`effective_weights_backward` are the
  differentiable composition used in training (RandBET, SAF).

This module gathers the pieces, which live in one module per idea:

- :mod:`saf_ref.protect.spec`: roles, :class:`StorageRule`, :class:`StorageSpec`, :func:`default_spec`;
- :mod:`saf_ref.protect.stored`: :class:`StoredTensor`, :class:`StoredModel`, :func:`store`, :func:`load`;
- :mod:`saf_ref.protect.inject`: :class:`Injection`, :func:`inject`, :func:`inject_nested`;
- :mod:`saf_ref.protect.effective`: :func:`effective_weights`, :func:`effective_weights_backward`.

Clean latents are never modified: every step allocates new arrays, and the codes held by a stored
model are read-only.

Conventions
-----------
- **Encoding policies** (the formats' documented defaults): IEEE formats round to nearest even with
  ``overflow="ieee"`` (too large -> inf, NaN for ``float8_e4m3fn``); fixed point ``qM.N`` rounds half to
  even and saturates; a ``Quantizer`` uses its own settings (float32 latents only).
- **dtype.** Latents are float32 or float64, one dtype per model. What :func:`load` returns has the
  latents' dtype whatever the storage format: float32 latents give float32 (a float16 or q2.5 value
  widens exactly; a float64 word read into float32 is rounded once), float64 latents stored in float64
  give float64. Clip and scale are computed in the latent dtype; the transform in float64, rounded once.
- **Gradients** (:func:`effective_weights_backward`): ``du = f'(û / s) · dw``. The middle is a
  straight-through estimator (Jacobian 1), so ``× s`` and ``÷ s`` cancel and the clip passes the gradient
  also outside ``[-c, c]`` (as the reference code of Stutz et al., which clips by projection after the
  optimizer step).

Example::

    spec = default_spec("float16", "tanh")                           # SAF: tanh of float16 latents
    w, cache = effective_weights(u, spec, faults=BitErrors(1e-3), rng=0)  # a fresh pattern (RandBET)
    du = effective_weights_backward(dw, cache)

There is no single PyTorch equivalent. The pieces are ``torch.clamp``, ``x.to(torch.float16).view(
torch.int16)`` (encode), an XOR with a random mask (faults), ``.view(torch.float16).float()`` (decode)
and ``torch.tanh`` (transform), with a straight-through estimator (``u + (w_hat - u).detach()``) around
the non-differentiable middle.
"""

from saf_ref.protect.effective import EffectiveWeightsCache, effective_weights, effective_weights_backward
from saf_ref.protect.inject import Injection, inject, inject_nested
from saf_ref.protect.spec import ROLES, StorageRule, StorageSpec, check_spec, default_spec, param_role
from saf_ref.protect.stored import NONFINITE_POLICIES, StoredModel, StoredTensor, check_params, load, store

__all__ = [
    "ROLES",
    "NONFINITE_POLICIES",
    "StorageRule",
    "StorageSpec",
    "check_params",
    "check_spec",
    "default_spec",
    "param_role",
    "StoredTensor",
    "StoredModel",
    "store",
    "Injection",
    "inject",
    "inject_nested",
    "load",
    "EffectiveWeightsCache",
    "effective_weights",
    "effective_weights_backward",
]
