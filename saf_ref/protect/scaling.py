"""Weight scaling: store ``s * W`` per layer with ``s = t / max|W|``, divide by ``s`` on read.

Scaling moves each weight tensor into the part of the storage format where it is represented best, or
where bit errors hurt least: for fixed point ``qM.N`` the target ``t`` is the largest value of the format,
so the weights use the whole range (more of the ``N`` fraction bits carry information); for floating
point formats the default target is 1.

The scale is a plain per-tensor constant kept next to the codes (like a quantizer's range, it is not
exposed to faults). In the storage pipeline it is the ``scale`` of a
:class:`~saf_ref.protect.storage.StorageRule`::

    u ─► × s ─► encode ─► bits ─ faults ─► decode ─► ÷ s ─► f ─► w

No PyTorch equivalent (the closest is the per-tensor ``scale`` of ``torch.quantize_per_tensor``).
"""

from __future__ import annotations

import glob
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.bits.fixed import FixedPointFormat
from saf_ref.bits.formats import resolve_format
from saf_ref.protect.storage import (
    StorageRule,
    StorageSpec,
    _check_params,
    default_spec,
    param_role,
)

__all__ = ["scale_target", "scale_constants", "weight_scaling_spec"]


def scale_target(format: Any) -> float:
    """The default target ``t`` of :func:`scale_constants` for a storage format ("auto").

    Parameters
    ----------
    format : str, IEEEFormat, FixedPointFormat or Quantizer

    Returns
    -------
    t : float
        Fixed point ``qM.N``: its largest value ``2**M - 2**-N`` (``q2.5``: 3.96875), so the scaled
        weights fill the range. IEEE formats and quantizers: 1.0 (a quantizer adapts its range to the
        tensor, so scaling changes nothing but the decoding constants).
    """
    fmt = resolve_format(format, fn="scale_target", name="format")
    if isinstance(fmt, FixedPointFormat):
        return fmt.max_value
    return 1.0


def _check_target(target: Any, fn: str) -> float:
    t = validation.check_real(target, "target", fn)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"{fn}: target must be a finite positive number or 'auto', got {target!r}")
    return t


def scale_constants(
    params: Mapping[str, np.ndarray],
    target: float,
    *,
    roles: tuple[str, ...] = ("weight",),
    power_of_two: bool = False,
) -> dict[str, float]:
    """Per-tensor scale constants ``s = t / max|W|`` for the tensors of the given roles.

    Parameters
    ----------
    params : dict str -> ndarray
        Weights (float32 or float64). Not modified.
    target : float
        ``t > 0``: after scaling, ``max|s W| == t`` (up to rounding; ``<= t`` with ``power_of_two``).
    roles : tuple of str
        Roles (see :func:`~saf_ref.protect.storage.param_role`) that get a constant; default: the
        convolution and linear weights.
    power_of_two : bool
        Round ``s`` down to a power of two, ``2**floor(log2(t / max|W|))``. Then multiplying and dividing
        by ``s`` are exact in binary floating point (barring overflow and underflow), so scaling adds no
        rounding error of its own.

    Returns
    -------
    dict str -> float
        ``{name: s}`` in the order of ``params``. A tensor that is all zeros (or empty) gets ``s = 1``.

    Math
    ----
    ``s = t / max_i |W_i|`` computed in float64 from the exact ``max|W|``.
    """
    fn = "scale_constants"
    _check_params(params, "params", fn)
    t = _check_target(target, fn)
    if not isinstance(power_of_two, bool):
        raise TypeError(f"{fn}: power_of_two must be a bool, got {validation.describe(power_of_two)}")
    if isinstance(roles, str) or not isinstance(roles, (tuple, list)):
        raise TypeError(f"{fn}: roles must be a tuple of role names, got {validation.describe(roles)}")
    for i, r in enumerate(roles):
        validation.check_choice(r, f"roles[{i}]", fn, ("weight", "bias", "bn", "other"))
    shapes = {k: v.shape for k, v in params.items()}
    out = {}
    for name, w in params.items():
        if param_role(name, shapes) not in roles:
            continue
        if not np.isfinite(w).all():
            raise ValueError(f"{fn}: params[{name!r}] must be finite to be scaled, got NaN or inf")
        m = float(np.max(np.abs(w))) if w.size else 0.0
        if m == 0.0:
            out[name] = 1.0  # nothing to scale: any constant is exact, 1 keeps it obvious
            continue
        s = t / m
        # Checked before the power-of-two rounding, which would turn inf and 0 into 0.5 (frexp gives
        # them the exponent 0).
        if not (math.isfinite(s) and s > 0.0):
            raise ValueError(
                f"{fn}: the scale for {name!r}, target / max|W| = {t!r} / {m!r}, must be finite and "
                f"positive, got {s!r}"
            )
        if power_of_two:
            # frexp: s = f * 2**e with f in [0.5, 1), so 2**(e - 1) <= s < 2**e.
            s = math.ldexp(1.0, math.frexp(s)[1] - 1)
        out[name] = s
    return out


def weight_scaling_spec(
    params: Mapping[str, np.ndarray],
    target: float | str = "auto",
    format: Any = None,
    *,
    transform: Any = None,
    expose_non_weights: bool = True,
    base: StorageSpec | None = None,
    power_of_two: bool = False,
) -> StorageSpec:
    """A storage spec that stores ``s W`` for every conv/linear weight ``W``, with ``s = t / max|W|``.

    Parameters
    ----------
    params : dict str -> ndarray
        The weights to be stored (their maxima fix the constants). Not modified.
    target : float or "auto"
        ``t``; ``"auto"``: :func:`scale_target` of the format (fixed point: its largest value; else 1).
    format : str, IEEEFormat, FixedPointFormat or Quantizer, optional
        Storage format of every parameter (default ``"float32"``). Not allowed with ``base``.
    transform : str or Transform, optional
        Transform of the conv/linear weights (default identity). Not allowed with ``base``.
    expose_non_weights : bool
        As in :func:`~saf_ref.protect.storage.default_spec`. Not allowed to differ from True with ``base``.
    base : StorageSpec, optional
        Start from this spec instead of ``default_spec(format, transform, ...)``: each scaled tensor
        keeps the format, transform, clip and exposure of its rule in ``base``.
    power_of_two : bool
        Round each constant down to a power of two (see :func:`scale_constants`).

    Returns
    -------
    StorageSpec
        One rule per scaled tensor (exact name, with its ``scale``), then the rules of the base spec.

    Notes
    -----
    With ``target="auto"`` and a ``base`` spec the target is taken from each tensor's own format.
    Clipping (if a rule has ``clip``) is applied to the unscaled latents, before scaling.
    """
    fn = "weight_scaling_spec"
    if base is None:
        base = default_spec(
            "float32" if format is None else format,
            "identity" if transform is None else transform,
            expose_non_weights=expose_non_weights,
        )
    else:
        if not isinstance(base, StorageSpec):
            raise TypeError(f"{fn}: base must be a StorageSpec or None, got {validation.describe(base)}")
        if format is not None or transform is not None or expose_non_weights is not True:
            raise ValueError(
                f"{fn}: format, transform and expose_non_weights must be left at their defaults when base is "
                f"given (the base spec decides them), got format={format!r}, transform={transform!r}, "
                f"expose_non_weights={expose_non_weights!r}"
            )
    _check_params(params, "params", fn)
    fixed_target = None if isinstance(target, str) and target == "auto" else _check_target(target, fn)
    shapes = {k: v.shape for k, v in params.items()}
    rules = base.resolve(shapes, fn)
    scaled = []
    for name in params:
        rule = rules[name]
        if param_role(name, shapes) != "weight":
            continue
        t = scale_target(rule.format) if fixed_target is None else fixed_target
        # The role was decided on the whole model (a bias's role depends on its module's weight), so the
        # one-tensor call accepts every role.
        consts = scale_constants({name: params[name]}, t, roles=("weight", "bias", "bn", "other"),
                                 power_of_two=power_of_two)
        # glob.escape makes the exact name a pattern matching only itself (it escapes * ? [).
        scaled.append(StorageRule(glob.escape(name), format=rule.format, transform=rule.transform,
                                  clip=rule.clip, scale=consts[name], exposed=rule.exposed))
    return StorageSpec(tuple(scaled) + base.rules)
