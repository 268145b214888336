"""Turn a pretrained (plain) model into latents for a saturated weight transform (SAF).

A plain network computes with its weights ``w``; an SAF network computes with ``f(u)``. Two ways to
start an SAF network from a pretrained one, both followed by a few epochs of fine-tuning:

- ``mode="copy"``: ``u = w``. Then ``f(u) != w`` (tanh shrinks large weights), so the converted network
  starts out somewhat off and fine-tuning adapts it.
- ``mode="inverse"``: ``u = f^{-1}(w)``, so that ``f(u)`` reproduces ``w`` and the converted network
  computes what the pretrained one did, up to rounding and to weights that ``f`` cannot reach
  (``|w| >= sup |f|``), which are clipped.

Only convolution and linear weights (role ``"weight"``, see
:func:`~saf_ref.protect.storage.param_role`) are converted: biases and batch-norm parameters stay raw,
as in :func:`~saf_ref.protect.storage.default_spec`. No PyTorch equivalent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.protect.storage import check_params, param_role
from saf_ref.protect.transforms import Transform, check_transform

__all__ = ["CONVERT_MODES", "convert_to_saf"]

CONVERT_MODES = ("copy", "inverse")


def _clip_interval(transform: Transform, clip_eps: float, dtype: np.dtype) -> tuple[Any, Any]:
    """``(-b, b)`` with ``b`` the largest value of ``dtype`` not above ``(1 - clip_eps) * bound``.

    Rounding down (not to nearest) keeps the documented cap: float32(0.999) is 1.3e-8 *above* 0.999.
    """
    exact = (1.0 - clip_eps) * transform.bound
    b = dtype.type(exact)
    if float(b) > exact:
        b = np.nextafter(b, dtype.type(0))
    return -b, b


def convert_to_saf(
    params: Mapping[str, np.ndarray],
    transform: str | Transform,
    *,
    mode: str = "copy",
    clip_eps: float | None = None,
) -> dict[str, np.ndarray]:
    """Latents ``u`` for an SAF network from pretrained parameters ``w``.

    Parameters
    ----------
    params : dict str -> ndarray
        Pretrained parameters (float32 or float64, one dtype), torchvision names. Not modified.
    transform : str or Transform
        The SAF transform ``f`` (``"tanh"``, ``"arctan"``, ``"softsign"``, ``"hardtanh"``, a scaled
        ``Transform``; ``"identity"`` makes both modes a copy).
    mode : {"copy", "inverse"}
        ``"copy"``: ``u = w``. ``"inverse"``: ``u = f^{-1}(w)`` for conv/linear weights.
    clip_eps : float in [0, 1), optional
        ``"inverse"`` only: clip ``|w|`` to ``(1 - clip_eps) * bound`` before inverting, which caps
        ``|u|`` at ``f^{-1}((1 - clip_eps) * bound)`` (tanh, ``clip_eps = 1e-3``: ``|u| <= 3.8``; the clip
        value is rounded *down* to the dtype, the inverse to nearest).
        None: only the inverse's own clipping (just below the bound; float32 tanh: ``|u| <= 8.7``,
        see :meth:`~saf_ref.protect.transforms.Transform.inverse`).

    Returns
    -------
    latents : dict str -> ndarray
        Same keys (order), shapes and dtype; every array is new (copies where unchanged).

    Math
    ----
    ``u = f^{-1}(clip(w, -(1 - eps) B, (1 - eps) B))`` with ``B = sup |f|`` (``a``, or ``a pi / 2`` for
    arctan); for ``|w| < (1 - eps) B``, ``f(u) = w`` up to rounding (the transforms' documented
    round-trip bound ``|f(f^{-1}(w)) - w| <= 2 eps_dtype |w|``).

    Notes
    -----
    Weights with ``|w| >= B`` cannot be produced by ``f`` at all: they come back as ``+-f(u_max)``, just
    below the bound. hardtanh has no inverse: ``"inverse"`` clips ``w`` to ``[-a, a]`` and keeps it
    (``hardtanh`` is the identity there).
    """
    fn = "convert_to_saf"
    check_params(params, "params", fn)
    f = check_transform(transform, "transform", fn)
    validation.check_choice(mode, "mode", fn, CONVERT_MODES)
    if clip_eps is not None:
        if mode != "inverse":
            raise ValueError(
                f"{fn}: clip_eps must be None with mode='copy' (nothing is inverted), got {clip_eps!r}"
            )
        eps = validation.check_real(clip_eps, "clip_eps", fn)
        if not (0.0 <= eps < 1.0):
            raise ValueError(f"{fn}: clip_eps must be in [0, 1), got {clip_eps!r}")
    shapes = {k: v.shape for k, v in params.items()}
    out = {}
    for name, w in params.items():
        if mode == "copy" or param_role(name, shapes) != "weight":
            out[name] = w.copy()
            continue
        if clip_eps is not None and math.isfinite(f.bound):
            w = np.clip(w, *_clip_interval(f, eps, w.dtype))  # a new array; NaN stays NaN
        out[name] = f.inverse(w)
    return out
