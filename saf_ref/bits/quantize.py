"""Per-tensor fixed-point quantizers in the style of Stutz et al. (bit-error robustness).

A :class:`Quantizer` maps a float32 tensor to ``nbits``-bit integer codes plus a small
:class:`QuantContext` (range, step, min, max) that is stored apart from the codes and is not exposed to
bit errors by default. It reproduces the published reference code (PyTorch, float32) bit for bit; the
test ``tests/bits/test_golden_quantizer.py`` checks this against vectors produced by that code.

With ``m = nbits`` and ``L = 2**(m-1) - 1`` levels on each side of zero:

- symmetric, fixed range: ``q = max_abs``, ``delta = (max_abs + margin) / L``;
- symmetric, adaptive: ``q = max|x| + margin`` (or ``min(max|x| + margin, clip)``), ``delta = q / L``;
- asymmetric: ``t = 2 (x - min) / (max - min) - 1`` is quantized with ``q = 1``,
  ``delta = (1 + margin) / L``.

The published code uses ``margin = 1e-3``; here the default is ``0.0`` and the margin is explicit.

PyTorch's nearest built-in is ``torch.quantize_per_tensor`` (an affine ``round(x / scale) + zero_point``);
it differs in how the range and scale are chosen and in clamping, so it is not bit-compatible with this.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.bits.fields import BitField, smallest_container

SCHEMES = ("symmetric", "asymmetric")
CODES = ("twos_complement", "offset_binary")
QUANT_ROUNDINGS = ("nearest_even", "toward_zero")

_F32 = np.float32
_UNSIGNED = tuple(np.dtype(d) for d in (np.uint8, np.uint16, np.uint32, np.uint64))
_CONTEXT_KEYS = ("scheme", "code", "nbits", "q", "step", "min", "max")
#: The settings of a Quantizer, in the order of its JSON form.
QUANTIZER_KEYS = ("nbits", "scheme", "code", "rounding", "clip", "max_abs", "margin")


def _to_f32(value: float) -> np.float32:
    """Round a float64 scalar to float32 once (past float32's range: inf, which callers reject)."""
    with np.errstate(over="ignore"):
        return _F32(value)


def _is_float32_value(value: float) -> bool:
    """True when the Python float ``value`` is exactly a finite float32 value."""
    return math.isfinite(value) and float(_to_f32(value)) == value


@dataclass(frozen=True)
class QuantContext:
    """What :meth:`Quantizer.decode` needs besides the codes: the range and the step of one tensor.

    All float fields hold float32 values exactly (as Python floats, so that JSON round trips exactly);
    they are the float32 scalars the arithmetic used, each formed in float64 and rounded once.

    Attributes
    ----------
    scheme : {"symmetric", "asymmetric"}
    code : {"twos_complement", "offset_binary"}
    nbits : int
        Bits per code, 2..16.
    q : float
        The bound of the symmetric stage: values are clipped to ``[-q, q]`` (1.0 for ``"asymmetric"``,
        whose symmetric stage quantizes ``t`` in ``[-1, 1]``).
    step : float
        ``delta``, the spacing of the symmetric stage's levels.
    min, max : float or None
        ``"asymmetric"`` only: the minimum and maximum of the (clipped) tensor; ``None`` otherwise.
    """

    scheme: str
    code: str
    nbits: int
    q: float
    step: float
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        fn = "QuantContext"
        validation.check_choice(self.scheme, "scheme", fn, SCHEMES)
        validation.check_choice(self.code, "code", fn, CODES)
        object.__setattr__(self, "nbits", validation.check_int(self.nbits, "nbits", fn, low=2, high=16))
        for name in ("q", "step"):
            value = validation.check_real(getattr(self, name), name, fn)
            if not (_is_float32_value(value) and value >= 0.0):
                raise ValueError(f"{fn}: {name} must be a finite non-negative float32 value, got {value!r}")
            object.__setattr__(self, name, value)
        if self.scheme == "symmetric":
            if self.min is not None or self.max is not None:
                raise ValueError(
                    f"{fn}: min and max must be None for scheme 'symmetric', got {self.min!r}, {self.max!r}"
                )
            return
        for name in ("min", "max"):
            value = validation.check_real(getattr(self, name), name, fn)
            if not _is_float32_value(value):
                raise ValueError(f"{fn}: {name} must be a finite float32 value, got {value!r}")
            object.__setattr__(self, name, value)
        if self.min > self.max:
            raise ValueError(f"{fn}: min (={self.min!r}) must be <= max (={self.max!r})")
        if not np.isfinite(_to_f32(self.max - self.min)):
            raise ValueError(f"{fn}: max - min (={self.max - self.min!r}) must fit in float32")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (floats print exactly with ``repr``, so a JSON round trip is exact)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantContext:
        """The inverse of :meth:`to_dict`; every key of :meth:`to_dict` is required, no others allowed."""
        fn = "QuantContext.from_dict"
        if not isinstance(data, dict):
            raise TypeError(f"{fn}: data must be a dict, got {validation.describe(data)}")
        if set(data) != set(_CONTEXT_KEYS):
            raise ValueError(f"{fn}: data must have exactly the keys {_CONTEXT_KEYS}, got {tuple(data)}")
        return cls(**data)


class Quantizer:
    """Per-tensor fixed-point quantizer of Stutz et al.: ``encode(x) -> (codes, context)``.

    No PyTorch built-in matches it bit for bit (``torch.quantize_per_tensor`` is the nearest relative).

    Parameters
    ----------
    nbits : int
        Bits per code, ``m``, 2..16. Codes live in the smallest unsigned container (uint8 or uint16).
    scheme : {"asymmetric", "symmetric"}
        ``"symmetric"``: levels ``k * delta`` for ``k`` in ``[-L, L]``, ``L = 2**(m-1) - 1``, over a range
        ``[-q, q]`` that is fixed (``max_abs``) or adaptive (``max|x| + margin``, optionally capped by
        ``clip``). ``"asymmetric"``: ``x`` (clipped to ``[-clip, clip]`` if ``clip`` is given) is mapped
        affinely from ``[min, max]`` onto ``[-1, 1]`` and quantized symmetrically with ``max_abs = 1``.
    code : {"offset_binary", "twos_complement"}
        How the level ``k`` is stored: unsigned ``k + 2**(m-1)``, or the ``m``-bit two's complement bit
        pattern of ``k`` (upper container bits zero).
    rounding : {"nearest_even", "toward_zero"}
        Round half to even, or truncate. Truncation applies to the *stored* integer, so with
        ``"offset_binary"`` (non-negative codes) it rounds the level ``x / delta`` down (toward -inf),
        and with ``"twos_complement"`` toward zero, exactly as the reference code does.
    clip : float or None
        Symmetric adaptive: cap ``q`` at ``clip``. Asymmetric: clip ``x`` to ``[-clip, clip]`` first.
        Positive. Not allowed together with ``max_abs``.
    max_abs : float or None
        Symmetric only: a fixed range ``q = max_abs`` (positive), independent of ``x``.
    margin : float
        Non-negative slack added to the range (the reference code's ``epsilon = 1e-3``).

    Math
    ----
    Everything is float32 arithmetic; the scalars ``q``, ``delta`` and ``max - min`` are formed in float64
    and rounded to float32 once. Division is by ``delta`` (never multiplication by ``1 / delta``).

    - offset binary: ``u = min(clip(x, -q, q) / delta + 2**(m-1), 2**m - 1)``, ``u = rint(u)`` if rounding
      to nearest, then truncate ``u`` to an unsigned integer. Decode:
      ``clip((clip(u, 0, 2**m - 1) - 2**(m-1)) * delta, -q, q)``.
    - two's complement: ``v = clip(x, -q, q) / delta``, rounded (rint) or truncated toward zero; decode
      ``clip(v * delta, -q, q)``.
    - asymmetric: ``t = (x - min) / (max - min)``, ``t = 2 t - 1``, quantized as above with ``q = 1``,
      ``delta = (1 + margin) / L``. Decode ``y``, then ``y = (y + 1) / 2``, ``y = y (max - min) + min``,
      clipped to ``[min, max]``.

    Notes
    -----
    - Input must be float32 (``TypeError`` otherwise, float64 included: the quantizer *is* float32
      arithmetic; cast explicitly with ``x.astype(np.float32)``), finite (``ValueError`` naming ``x``),
      and non-empty unless the range is fixed (``max_abs``).
    - Degenerate ranges, where the reference code divides by zero: if ``max == min`` (a constant tensor)
      every value encodes as level 0 (``t = 0``) and decodes to ``min``; if ``delta`` is 0 (an all-zero
      tensor with ``margin = 0``, or ``|x|`` so small that ``q / L`` underflows float32) every value
      encodes as level 0 and decodes to 0.
    - ``|clip(x, -q, q) / delta|`` is at most ``L`` up to a few float32 roundings, so the levels fit in
      ``m`` bits. The encoder nevertheless saturates the stored integer to the ``m``-bit range
      (``[0, 2**m - 1]`` for offset binary, ``[-2**(m-1), 2**(m-1) - 1]`` for two's complement); this
      never binds unless ``delta`` is a subnormal float32 (``max|x| < ~1e-36``), where float32 division is
      imprecise and ``x / delta`` may exceed ``L + 1``. With ``"offset_binary"`` and
      ``"toward_zero"``, ``x = -q`` can land just below ``u = 1`` and truncate to code 0 (level
      ``-2**(m-1)``), which decodes to ``-q`` after the clip; the reference code does the same.
    - Two's complement decode rejects codes with bits set above ``m`` (``ValueError``); offset binary
      decode clamps ``u`` to ``2**m - 1`` as the formula says. The level ``-2**(m-1)`` (reachable by bit
      flips) decodes to ``-q`` after the clip.
    - ``max - min`` is formed in float64 and rounded to float32 once, as the reference does; for two
      float32 operands this equals the float32 subtraction (float64 has more than ``2 * 24 + 2`` bits, so
      the double rounding is innocuous), and likewise ``2 t - 1`` equals ``(t - 1/2) * 2``.
    """

    def __init__(
        self,
        nbits: int,
        *,
        scheme: str = "asymmetric",
        code: str = "offset_binary",
        rounding: str = "nearest_even",
        clip: float | None = None,
        max_abs: float | None = None,
        margin: float = 0.0,
    ) -> None:
        fn = "Quantizer"
        self.nbits = validation.check_int(nbits, "nbits", fn, low=2, high=16)
        self.scheme = validation.check_choice(scheme, "scheme", fn, SCHEMES)
        self.code = validation.check_choice(code, "code", fn, CODES)
        self.rounding = validation.check_choice(rounding, "rounding", fn, QUANT_ROUNDINGS)
        self.clip = None if clip is None else _check_positive_float32(clip, "clip", fn)
        self.max_abs = None if max_abs is None else _check_positive_float32(max_abs, "max_abs", fn)
        self.margin = validation.check_real(margin, "margin", fn)
        if not (math.isfinite(self.margin) and self.margin >= 0.0):
            raise ValueError(f"{fn}: margin must be a finite number >= 0, got {margin!r}")
        if self.max_abs is not None and scheme == "asymmetric":
            raise ValueError(
                f"{fn}: max_abs must be None for scheme 'asymmetric' (its range is min..max of x), "
                f"got {max_abs!r}"
            )
        if self.max_abs is not None and self.clip is not None:
            raise ValueError(
                f"{fn}: clip must be None when max_abs is given (the fixed range already clips), got {clip!r}"
            )
        self.container = smallest_container(self.nbits)
        self.levels = (1 << (self.nbits - 1)) - 1  # L, levels on each side of zero
        if self.max_abs is not None or self.scheme == "asymmetric":
            # The fixed-range step, (max_abs + margin) / L, must be a positive finite float32.
            bound = 1.0 if self.max_abs is None else self.max_abs
            self._fixed_step(bound, fn)

    # ----------------------------------------------------------------------------------------------------
    # Description
    # ----------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """A readable identifier: ``"quant8_asym_offset_rounded"``, ``"quant8_sym_twos_trunc_maxabs1"``."""
        scheme = "sym" if self.scheme == "symmetric" else "asym"
        code = "offset" if self.code == "offset_binary" else "twos"
        rounding = "rounded" if self.rounding == "nearest_even" else "trunc"
        out = f"quant{self.nbits}_{scheme}_{code}_{rounding}"
        if self.max_abs is not None:
            out += f"_maxabs{self.max_abs:g}"
        if self.clip is not None:
            out += f"_clip{self.clip:g}"
        return out

    @property
    def fields(self) -> dict[str, BitField]:
        """Named bit ranges (bit 0 = LSB): the top bit (``sign`` for two's complement, ``msb`` for offset
        binary, where it is set for levels >= 0) and the ``low`` ``nbits - 1`` bits."""
        top = "sign" if self.code == "twos_complement" else "msb"
        return {top: BitField(top, self.nbits - 1, 1), "low": BitField("low", 0, self.nbits - 1)}

    def _settings(self) -> tuple:
        return (self.nbits, self.scheme, self.code, self.rounding, self.clip, self.max_abs, self.margin)

    def __eq__(self, other: object) -> bool:
        """Quantizers compare by their settings, like the IEEE and fixed-point formats (so a storage spec
        read back from JSON equals the one written)."""
        if not isinstance(other, Quantizer):
            return NotImplemented
        return self._settings() == other._settings()

    def __hash__(self) -> int:
        return hash(self._settings())

    def __repr__(self) -> str:
        return (
            f"Quantizer({self.nbits}, scheme={self.scheme!r}, code={self.code!r}, "
            f"rounding={self.rounding!r}, clip={self.clip!r}, max_abs={self.max_abs!r}, "
            f"margin={self.margin!r})"
        )

    # ----------------------------------------------------------------------------------------------------
    # Encode / decode
    # ----------------------------------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, QuantContext]:
        """Quantize ``x`` to codes and the context needed to decode them.

        Parameters
        ----------
        x : ndarray of float32, any shape
            Finite values; not modified.

        Returns
        -------
        codes : ndarray of ``container`` dtype, shape of ``x``
        context : QuantContext
        """
        fn = f"{self.name}.encode"
        if isinstance(x, np.floating):
            x = np.asarray(x)  # a NumPy scalar becomes a 0-d array of its dtype
        validation.check_dtype(x, "x", fn, (np.float32,))
        if not np.isfinite(x).all():
            raise ValueError(f"{fn}: x must be finite, got NaN or inf")
        if x.size == 0 and self.max_abs is None:
            raise ValueError(f"{fn}: x must be non-empty for an adaptive range, got shape {x.shape}")
        if self.scheme == "symmetric":
            codes, context = self._encode_symmetric_scheme(x, fn)
        else:
            codes, context = self._encode_asymmetric_scheme(x, fn)
        return np.asarray(codes), context  # 0-d results stay arrays (NumPy returns scalars for them)

    def decode(self, codes: np.ndarray, context: QuantContext) -> np.ndarray:
        """The float32 values of ``codes`` under ``context`` (from :meth:`encode`).

        Parameters
        ----------
        codes : ndarray of an unsigned dtype at least as wide as ``container``, any shape
            Two's complement codes must be below ``2**nbits`` (``ValueError``); offset binary codes above
            ``2**nbits - 1`` are clamped to it, as the formula says (the reference code's shield against
            flips of container bits above ``nbits``).
        context : QuantContext
            Must match this quantizer's ``scheme``, ``code`` and ``nbits``.

        Returns
        -------
        ndarray of float32, shape of ``codes``
        """
        fn = f"{self.name}.decode"
        validation.check_ndarray(codes, "codes", fn)
        wide_enough = [d for d in _UNSIGNED if d.itemsize >= self.container.itemsize]
        validation.check_dtype(codes, "codes", fn, wide_enough)
        if self.code == "twos_complement" and codes.size and int(codes.max()) >> self.nbits:
            raise ValueError(
                f"{fn}: codes must fit in {self.nbits} bits (at most {(1 << self.nbits) - 1:#x}), "
                f"got a code {int(codes.max()):#x}"
            )
        if not isinstance(context, QuantContext):
            raise TypeError(f"{fn}: context must be a QuantContext, got {validation.describe(context)}")
        for attr in ("scheme", "code", "nbits"):
            validation.check_equal(
                fn, f"context.{attr}", getattr(context, attr), f"quantizer.{attr}", getattr(self, attr)
            )
        y = self._decode_levels(codes, _F32(context.q), _F32(context.step))
        if self.scheme == "symmetric":
            return np.asarray(y)
        lo, hi = _F32(context.min), _F32(context.max)
        width = _to_f32(context.max - context.min)  # formed in float64 (exact inputs), rounded once
        y = (y + _F32(1.0)) / _F32(2.0)
        y = y * width + lo  # two float32 roundings (no fused multiply-add), as in the reference
        return np.asarray(np.clip(y, lo, hi))

    # ----------------------------------------------------------------------------------------------------
    # The codec protocol (saf_ref.bits.fields.Codec) and the JSON form
    # ----------------------------------------------------------------------------------------------------
    @property
    def input_dtypes(self) -> tuple[np.dtype, ...]:
        """The dtypes :meth:`encode_tensor` accepts: float32 only (the quantizer *is* float32 arithmetic)."""
        return (np.dtype(np.float32),)

    def encode_tensor(self, x: np.ndarray) -> tuple[np.ndarray, QuantContext]:
        """The codec protocol: :meth:`encode` (codes and the per-tensor context)."""
        return self.encode(x)

    def decode_tensor(self, codes: np.ndarray, context: QuantContext) -> np.ndarray:
        """The codec protocol: :meth:`decode`."""
        return self.decode(codes, context)

    def to_json(self) -> dict[str, Any]:
        """The JSON form: ``{"quantizer": {nbits, scheme, code, rounding, clip, max_abs, margin}}``."""
        return {"quantizer": {key: getattr(self, key) for key in QUANTIZER_KEYS}}

    @classmethod
    def from_json(cls, data: Any, *, fn: str = "Quantizer.from_json", where: str = "") -> Quantizer:
        """The quantizer of :meth:`to_json`'s output.

        ``fn`` names the caller in messages and ``where`` the owner of the format (``"rule 'fc.*'"``).

        Raises
        ------
        ValueError
            ``data`` is not ``{"quantizer": {...}}``, or its settings miss ``nbits`` or hold unknown keys.
        """
        label = f"{where} " if where else ""
        settings = data.get("quantizer") if isinstance(data, dict) else None
        if not isinstance(data, dict) or set(data) != {"quantizer"} or not isinstance(settings, dict):
            raise ValueError(f"{fn}: {label}format must be a name or {{'quantizer': {{...}}}}, got {data!r}")
        kwargs = dict(data["quantizer"])
        unknown = sorted(set(kwargs) - set(QUANTIZER_KEYS))
        if unknown or "nbits" not in kwargs:
            raise ValueError(
                f"{fn}: {label}quantizer must have 'nbits' and keys among {QUANTIZER_KEYS}, "
                f"got keys {sorted(kwargs)}"
            )
        nbits = kwargs.pop("nbits")
        return cls(nbits, **kwargs)

    # ----------------------------------------------------------------------------------------------------
    # The two schemes
    # ----------------------------------------------------------------------------------------------------
    def _fixed_step(self, bound: float, fn: str) -> np.float32:
        """``(bound + margin) / L`` in float64, rounded to float32 once; must be positive and finite."""
        step = _to_f32((bound + self.margin) / self.levels)
        if not (np.isfinite(step) and step > 0):
            raise ValueError(
                f"{fn}: (range + margin) / L must be a positive finite float32, got {float(step)!r} "
                f"(range {bound!r}, margin {self.margin!r}, L {self.levels})"
            )
        return step

    def _encode_symmetric_scheme(self, x: np.ndarray, fn: str) -> tuple[np.ndarray, QuantContext]:
        if self.max_abs is not None:
            q64 = self.max_abs
            step = self._fixed_step(self.max_abs, fn)
        else:
            # max|x| is a float32 value, exact in float64; the margin is added in float64.
            q64 = float(np.max(np.abs(x))) + self.margin
            if self.clip is not None:
                q64 = min(q64, self.clip)
            step = _to_f32(q64 / self.levels)
        q = _to_f32(q64)
        if not np.isfinite(q):
            raise ValueError(f"{fn}: max|x| + margin (={q64!r}) must fit in float32")
        codes = self._encode_levels(x, q, step)
        return codes, QuantContext("symmetric", self.code, self.nbits, float(q), float(step))

    def _encode_asymmetric_scheme(self, x: np.ndarray, fn: str) -> tuple[np.ndarray, QuantContext]:
        if self.clip is not None:
            x = np.clip(x, -_F32(self.clip), _F32(self.clip))
        lo, hi = x.min(), x.max()
        width = _to_f32(float(hi) - float(lo))  # the divisor: formed in float64, rounded to float32 once
        if not np.isfinite(width):
            raise ValueError(f"{fn}: max(x) - min(x) (={float(hi) - float(lo)!r}) must fit in float32")
        if width == 0:
            t = np.zeros_like(x)  # a constant tensor: level 0, which decodes to min (see Notes)
        else:
            t = (x - lo) / width  # (x - lo) rounds in float32, then the true division
            t = t * _F32(2.0) - _F32(1.0)
        step = self._fixed_step(1.0, fn)
        codes = self._encode_levels(t, _F32(1.0), step)
        context = QuantContext("asymmetric", self.code, self.nbits, 1.0, float(step), float(lo), float(hi))
        return codes, context

    # ----------------------------------------------------------------------------------------------------
    # The symmetric stage: levels k * delta, k in [-L, L]
    # ----------------------------------------------------------------------------------------------------
    def _encode_levels(self, t: np.ndarray, q: np.float32, step: np.float32) -> np.ndarray:
        """Codes of the float32 values ``t`` on the grid ``k * step`` clipped to ``[-q, q]``."""
        if step == 0:
            # Degenerate range (see Notes): x / 0 would be NaN or inf; every value is level 0.
            s = np.zeros_like(t)
        else:
            s = np.clip(t, -q, q) / step  # true float32 division by the step
        if self.code == "offset_binary":
            half, top = _F32(1 << (self.nbits - 1)), _F32((1 << self.nbits) - 1)
            # The formula's min(., 2**m - 1), plus a clamp at 0 (as in the reference's clipped classes)
            # that binds only for a subnormal step (see Notes): a negative float -> uint cast is undefined.
            u = np.clip(s + half, _F32(0.0), top)
            if self.rounding == "nearest_even":
                u = np.rint(u)
            return u.astype(self.container)  # float -> unsigned truncates toward zero
        v = np.rint(s) if self.rounding == "nearest_even" else np.trunc(s)
        # Saturate to the m-bit range; binds only for a subnormal step (see Notes), where it prevents a
        # level of 2**(m-1) from wrapping to -2**(m-1).
        v = np.clip(v, -(1 << (self.nbits - 1)), (1 << (self.nbits - 1)) - 1)
        # The low nbits bits of the int64 level are its two's complement pattern.
        return (v.astype(np.int64) & ((1 << self.nbits) - 1)).astype(self.container)

    def _decode_levels(self, codes: np.ndarray, q: np.float32, step: np.float32) -> np.ndarray:
        """float32 ``clip(k * step, -q, q)`` for the level ``k`` stored in each code."""
        if self.code == "offset_binary":
            half = _F32(1 << (self.nbits - 1))
            # Clamp in the integers first (codes may be uint64), then the float32 cast is exact (< 2**16).
            k = np.minimum(codes, codes.dtype.type((1 << self.nbits) - 1)).astype(np.float32) - half
        else:
            word = codes.astype(np.int64)  # < 2**nbits, checked in decode
            signed = np.where(word >= (1 << (self.nbits - 1)), word - (1 << self.nbits), word)
            k = signed.astype(np.float32)
        return np.clip(k * step, -q, q)


def _check_positive_float32(value: Any, name: str, fn: str) -> float:
    """A real scalar that is positive and finite, also after rounding to float32."""
    value = validation.check_real(value, name, fn)
    as_f32 = _to_f32(value)  # a value past float32's range becomes inf, rejected below
    if not (math.isfinite(value) and np.isfinite(as_f32) and as_f32 > 0):
        raise ValueError(f"{fn}: {name} must be a positive number that is finite in float32, got {value!r}")
    return value
