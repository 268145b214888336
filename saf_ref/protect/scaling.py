"""Weight scaling: store ``s * W`` per tensor with ``s = t / max|W|``, divide by ``s`` on read.

Scaling moves each weight tensor into the part of the storage format where it is represented best, or
where bit errors hurt least:

- fixed point ``qM.N``: the target ``t`` is the largest value of the format, so the weights use the
  whole range (more of the ``N`` fraction bits carry information);
- IEEE formats: ``t = 2**emax``, the bottom of the largest finite binade (float32: ``2**127``, float16:
  ``2**15``). A word then holds at most ``~2 t``, so *any* corrupted word that is still finite reads back
  as ``|w'| <= max_finite / s ~= 2 max|W|``, and a word that becomes inf or NaN reads as 0 with
  ``load(..., nonfinite="zero")``: the format's own range saturates the weights, as tanh does in SAF.
  Used with ``nonfinite="propagate"`` this target does not help, and is worse than none at high rates
  (the top binades are where single flips give inf); see ``docs/weight_scaling.md`` for the analysis
  and the measurements.

The scale is a plain per-tensor constant kept next to the codes (like a quantizer's range, it is not
exposed to faults). In the storage pipeline it is the ``scale`` of a
:class:`~saf_ref.protect.storage.StorageRule`::

    u ─► × s ─► encode ─► bits ─ faults ─► decode ─► (inf/NaN -> 0) ─► ÷ s ─► f ─► w

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
from saf_ref.bits.ieee import IEEEFormat
from saf_ref.protect.spec import build_default_spec
from saf_ref.protect.storage import (
    ROLES,
    StorageRule,
    StorageSpec,
    check_params,
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
        - fixed point ``qM.N``: its largest value ``2**M - 2**-N`` (``q2.5``: 3.96875), so the scaled
          weights fill the range;
        - IEEE formats: ``2**emax``, the smallest value of the largest finite binade: float64 ``2**1023``,
          float32 and bfloat16 ``2**127``, float16 and float8_e5m2 ``2**15``, float8_e4m3fn ``2**8``;
        - quantizers: 1.0 (a quantizer adapts its range to the tensor, so scaling changes nothing but the
          decoding constants).

    Math
    ----
    IEEE, with ``s = t / max|W|`` and ``M = max|W|``: every stored magnitude is ``|s W| <= t`` (rounding
    aside), and every finite word, faulty or not, decodes to at most ``max_finite``. With inf and NaN
    read as 0 (``load(..., nonfinite="zero")``), every weight read back, whatever bits were flipped, obeys

        ``|w'| <= max_finite / s = G M``,  ``G = max_finite / 2**emax = 2 - 2**-m`` (float8_e4m3fn:
        1.75, as ``S.1111.111`` is NaN),

    a saturation by the format's range (SAF saturates with tanh). Exponent bit ``k`` of a weight ``d``
    binades below ``M`` (``|w| in [2**-d, 2**(1-d)) M``; biased field ``2**E - 2 - d``, the
    complement of ``d + 1``) shrinks it by ``2**(2**k)`` when bit ``k`` of ``d + 1`` is 0; gives
    inf/NaN (read as 0) when ``d + 1 == 2**k``; else grows it by ``2**(2**k) <= 2**d`` to
    ``|w'| < 2 M``. (float8_e4m3fn: field ``15 - d``, the complement of ``d``; read ``d`` for ``d + 1``,
    and only ``S.1111.111`` is NaN.)
    With inf and NaN kept (``nonfinite="propagate"``) this target does not help: the binades
    ``d = 0, 1, 3, 7, ...``, the largest weights, each have a bit whose flip gives inf. The old default
    ``t = 1`` put ``M`` at exactly 1.0, whose exponent-MSB flip gives inf, and changed nothing else.
    Derivations, the exhaustive checks and the measurements: ``docs/weight_scaling.md``.
    """
    fmt = resolve_format(format, fn="scale_target", name="format")
    if isinstance(fmt, FixedPointFormat):
        return fmt.max_value
    if isinstance(fmt, IEEEFormat):
        return math.ldexp(1.0, fmt.emax)
    return 1.0


def _largest_scale(dtype: np.dtype, power_of_two: bool) -> float:
    """The largest finite value of the float dtype ``dtype`` (float32: ``3.4e38``), or its largest power
    of two (``2**127``) when the constant must be one."""
    if power_of_two:
        return math.ldexp(1.0, int(np.finfo(dtype).maxexp) - 1)
    return float(np.finfo(dtype).max)


def _check_target(target: Any, fn: str) -> float:
    t = validation.check_real(target, "target", fn)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"{fn}: target must be a finite positive number or 'auto', got {target!r}")
    return t


def _check_roles(roles: Any, fn: str) -> tuple[str, ...]:
    if isinstance(roles, str) or not isinstance(roles, (tuple, list)):
        raise TypeError(f"{fn}: roles must be a tuple of role names, got {validation.describe(roles)}")
    for i, r in enumerate(roles):
        validation.check_choice(r, f"roles[{i}]", fn, ROLES)
    return tuple(roles)


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
    check_params(params, "params", fn)
    t = _check_target(target, fn)
    if not isinstance(power_of_two, bool):
        raise TypeError(f"{fn}: power_of_two must be a bool, got {validation.describe(power_of_two)}")
    roles = _check_roles(roles, fn)
    shapes = {k: v.shape for k, v in params.items()}
    return {
        name: _scale_constant(w, name, t, power_of_two, None, fn)
        for name, w in params.items()
        if param_role(name, shapes) in roles
    }


def _scale_constant(
    w: np.ndarray, name: str, t: float, power_of_two: bool, cap: float | None, fn: str
) -> float:
    """``s = t / max|W|`` for one tensor (1 if it is all zeros), capped at ``cap`` unless None, then
    rounded down to a power of two if asked; ``fn`` names the caller in errors."""
    if not np.isfinite(w).all():
        raise ValueError(f"{fn}: params[{name!r}] must be finite to be scaled, got NaN or inf")
    m = float(np.max(np.abs(w))) if w.size else 0.0
    if m == 0.0:
        return 1.0  # nothing to scale: any constant is exact, 1 keeps it obvious
    s = t / m  # a Python float: overflow gives inf, not an exception
    if cap is not None:
        # Before the check: the auto target of float64 storage, 2**1023, over max|W| < 1/2 overflows
        # float64 itself, and the cap is what the caller asked for in that case. With power_of_two the
        # cap is a power of two, so capping before the rounding is the same as after it.
        s = min(s, cap)
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
    return s


def weight_scaling_spec(
    params: Mapping[str, np.ndarray],
    target: float | str = "auto",
    format: Any = None,
    *,
    transform: Any = None,
    expose_non_weights: bool = True,
    base: StorageSpec | None = None,
    power_of_two: bool = False,
    roles: tuple[str, ...] = ("weight",),
) -> StorageSpec:
    """A storage spec that stores ``s W`` for every tensor ``W`` of the given roles, ``s = t / max|W|``.

    Parameters
    ----------
    params : dict str -> ndarray
        The weights to be stored (their maxima fix the constants). Not modified.
    target : float or "auto"
        ``t``; ``"auto"``: :func:`scale_target` of each tensor's format (fixed point: its largest value;
        IEEE: ``2**emax``; quantizer: 1), with ``s`` capped at the largest finite value of the latents'
        dtype (float32: ``3.4e38``; ``2**127`` with ``power_of_two``), because ``s`` is applied in that
        dtype.
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
    roles : tuple of str
        Roles (see :func:`~saf_ref.protect.storage.param_role`) of the tensors that get a constant;
        default: the conv/linear weights. ``("weight", "bias", "bn", "other")`` scales every tensor,
        which is what protects a model whose biases and batch-norm parameters are exposed too.

    Returns
    -------
    StorageSpec
        One rule per scaled tensor (exact name, with its ``scale``), then the rules of the base spec.

    Math
    ----
    Tensor ``W`` with ``M = max|W| > 0`` gets ``s = t / M`` (float64), and with ``target="auto"``
    ``s = min(min(t, 2**emax_latent) / M, max_latent)`` (``max_latent``: the latent dtype's largest finite
    value, ``2**emax_latent`` its largest power of two), so that ``s`` and every ``s W`` are finite in the
    latent dtype (float64 storage of float32 latents: the target is ``2**127``, not ``2**1023``). For an IEEE
    format read with ``load(..., nonfinite="zero")`` every weight read back, faulty or not, is bounded:
    ``|w'| <= max_finite / s``, that is ``(2 - 2**-m) M`` when the cap does not bind (see
    :func:`scale_target`), and ``max_finite / max_latent`` (about 1 for float32 and bfloat16 storage of
    float32 latents, whose cap binds when ``M < 1/2``) when it does.

    Notes
    -----
    With ``target="auto"`` and a ``base`` spec the target is taken from each tensor's own format.
    Clipping (if a rule has ``clip``) is applied to the unscaled latents, before scaling.
    The IEEE target only helps together with ``nonfinite="zero"`` on reading (measured in
    ``docs/weight_scaling.md``); with inf and NaN kept it makes single flips more often non-finite.
    """
    fn = "weight_scaling_spec"
    # Every argument is checked before the spec is built, in this function's name (not default_spec's or
    # StorageRule's: build_default_spec takes fn), and power_of_two also when no tensor gets a constant.
    dtype = check_params(params, "params", fn)
    if not isinstance(power_of_two, bool):
        raise TypeError(f"{fn}: power_of_two must be a bool, got {validation.describe(power_of_two)}")
    if base is None:
        base = build_default_spec(
            "float32" if format is None else format, "identity" if transform is None else transform,
            expose_non_weights, None, ("weight",), fn,
        )  # fmt: skip
    else:
        if not isinstance(base, StorageSpec):
            raise TypeError(f"{fn}: base must be a StorageSpec or None, got {validation.describe(base)}")
        if format is not None or transform is not None or expose_non_weights is not True:
            raise ValueError(
                f"{fn}: format, transform and expose_non_weights must be left at their defaults when base is "
                f"given (the base spec decides them), got format={format!r}, transform={transform!r}, "
                f"expose_non_weights={expose_non_weights!r}"
            )
    roles = _check_roles(roles, fn)
    fixed_target = None if isinstance(target, str) and target == "auto" else _check_target(target, fn)
    shapes = {k: v.shape for k, v in params.items()}
    rules = base.resolve(shapes, fn)
    scaled = []
    for name in params:
        rule = rules[name]
        if param_role(name, shapes) not in roles:
            continue
        t, cap = fixed_target, None  # an explicit target is never lowered or capped
        if fixed_target is None:
            # "auto": s W is computed in the latents' dtype, so it must fit there: a target above the
            # latents' largest power of two (float64 storage, 2**1023, of float32 latents) is lowered to
            # it (2**127), else the largest weights would be stored as inf. And s itself must fit:
            # 2**127 / max|W| overflows float32 when max|W| < 1/2 (2**1023 / max|W| float64): capped.
            t = min(scale_target(rule.format), _largest_scale(dtype, True))
            cap = _largest_scale(dtype, power_of_two)
        s = _scale_constant(params[name], name, t, power_of_two, cap, fn)
        # glob.escape makes the exact name a pattern matching only itself (it escapes * ? [).
        scaled.append(StorageRule(glob.escape(name), format=rule.format, transform=rule.transform,
                                  clip=rule.clip, scale=s, exposed=rule.exposed))
    return StorageSpec(tuple(scaled) + base.rules)
