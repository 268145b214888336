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
  and :func:`inject_nested` return *new* stored models with bit errors; :func:`load` decodes a stored
  model into effective parameters. :func:`effective_weights` / :func:`effective_weights_backward` are
  the differentiable composition used in training (RandBET, SAF).

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

    spec = default_spec("float16", "tanh")              # SAF: tanh of float16 latents
    w, cache = effective_weights(u, spec, p=1e-3, rng=0)  # a fresh bit-error pattern (RandBET)
    du = effective_weights_backward(dw, cache)

There is no single PyTorch equivalent. The pieces are ``torch.clamp``, ``x.to(torch.float16).view(
torch.int16)`` (encode), an XOR with a random mask (faults), ``.view(torch.float16).float()`` (decode)
and ``torch.tanh`` (transform), with a straight-through estimator (``u + (w_hat - u).detach()``) around
the non-differentiable middle.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faults import apply_flips, inject_bit_errors, sample_nested_flips
from saf_ref.bits.fixed import FixedPointFormat
from saf_ref.bits.formats import resolve_format
from saf_ref.bits.ieee import IEEEFormat
from saf_ref.bits.quantize import QuantContext, Quantizer
from saf_ref.protect.transforms import Transform, get_transform

__all__ = [
    "ROLES",
    "NONFINITE_POLICIES",
    "StorageRule",
    "StorageSpec",
    "default_spec",
    "param_role",
    "StoredTensor",
    "StoredModel",
    "store",
    "inject",
    "inject_nested",
    "load",
    "EffectiveWeightsCache",
    "effective_weights",
    "effective_weights_backward",
]

ROLES = ("weight", "bias", "bn", "other")
NONFINITE_POLICIES = ("propagate", "zero")

StorageFormat = IEEEFormat | FixedPointFormat | Quantizer


# ==================================================================================================
# Roles: which kind of parameter a name is (conv/linear weight, bias, batch-norm parameter)
# ==================================================================================================


def _module_and_leaf(name: str) -> tuple[str, str]:
    """``"layer1.0.bn1.weight"`` -> ``("layer1.0.bn1", "weight")``; ``"weight"`` -> ``("", "weight")``."""
    module, _, leaf = name.rpartition(".")
    return module, leaf


def param_role(name: str, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The role of parameter ``name`` in a model whose parameter shapes are ``shapes``.

    Parameters
    ----------
    name : str
        A torchvision ``state_dict`` name, e.g. ``"layer1.0.conv1.weight"``.
    shapes : mapping str -> tuple of int
        Shapes of every parameter of the model (``name`` included); the role of a bias depends on the
        shape of its module's weight.

    Returns
    -------
    role : {"weight", "bias", "bn", "other"}
        - ``"weight"``: ``*.weight`` with ``ndim >= 2`` (convolution and linear weights);
        - ``"bn"``: ``*.weight`` with ``ndim == 1`` (a normalisation layer's gamma), and ``*.bias`` of a
          module whose ``weight`` is 1-D (its beta);
        - ``"bias"``: any other ``*.bias`` (convolution and linear biases);
        - ``"other"``: everything else.

    Notes
    -----
    Names alone cannot tell ``fc.bias`` from ``bn1.bias``; the rank of the sibling ``weight`` can: a
    module with a 1-D weight is a (batch) normalisation layer.
    """
    fn = "param_role"
    if not isinstance(name, str):
        raise TypeError(f"{fn}: name must be a str, got {validation.describe(name)}")
    if not isinstance(shapes, Mapping):
        raise TypeError(f"{fn}: shapes must be a dict of name -> shape, got {validation.describe(shapes)}")
    if name not in shapes:
        raise ValueError(f"{fn}: name must be a key of shapes, got {name!r}")
    module, leaf = _module_and_leaf(name)
    ndim = len(shapes[name])
    if leaf == "weight":
        return "weight" if ndim >= 2 else "bn"
    if leaf == "bias":
        sibling = f"{module}.weight" if module else "weight"
        return "bn" if sibling in shapes and len(shapes[sibling]) == 1 else "bias"
    return "other"


# ==================================================================================================
# Formats: one small adapter over the three codecs of saf_ref.bits
# ==================================================================================================


def _resolve_format(fmt: Any, fn: str, where: str) -> StorageFormat:
    """A format object from a name (IEEE name or alias, ``qM.N``) or a format / Quantizer instance.

    The lookup is :func:`saf_ref.bits.formats.resolve_format`; ``where`` names the rule in messages.
    """
    return resolve_format(fmt, fn=fn, name=f"{where} format")


def _encode(fmt: StorageFormat, x: np.ndarray) -> tuple[np.ndarray, QuantContext | None]:
    """Encode with the format's default policies: IEEE ``overflow="ieee"``; fixed point saturating,
    round half to even; a Quantizer's own settings. Returns the codes and the decoding context."""
    if isinstance(fmt, Quantizer):
        return fmt.encode(x)
    if isinstance(fmt, FixedPointFormat):
        return fmt.encode(x, rounding="nearest_even", overflow="saturate"), None
    return fmt.encode(x, overflow="ieee"), None


def _decode(fmt: StorageFormat, codes: np.ndarray, context: QuantContext | None) -> np.ndarray:
    if isinstance(fmt, Quantizer):
        return fmt.decode(codes, context)
    return fmt.decode(codes)


def _format_to_json(fmt: StorageFormat) -> Any:
    if isinstance(fmt, Quantizer):
        return {
            "quantizer": {
                "nbits": fmt.nbits,
                "scheme": fmt.scheme,
                "code": fmt.code,
                "rounding": fmt.rounding,
                "clip": fmt.clip,
                "max_abs": fmt.max_abs,
                "margin": fmt.margin,
            }
        }
    return fmt.name


def _format_from_json(data: Any, fn: str, where: str) -> StorageFormat:
    if isinstance(data, dict):
        if set(data) != {"quantizer"} or not isinstance(data["quantizer"], dict):
            raise ValueError(f"{fn}: {where} format must be a name or {{'quantizer': {{...}}}}, got {data!r}")
        kwargs = dict(data["quantizer"])
        known = ("nbits", "scheme", "code", "rounding", "clip", "max_abs", "margin")
        unknown = sorted(set(kwargs) - set(known))
        if unknown or "nbits" not in kwargs:
            raise ValueError(
                f"{fn}: {where} quantizer must have 'nbits' and keys among {known}, got keys {sorted(kwargs)}"
            )
        nbits = kwargs.pop("nbits")
        return Quantizer(nbits, **kwargs)
    return _resolve_format(data, fn, where)


# ==================================================================================================
# The storage spec
# ==================================================================================================


def _check_optional_positive(value: Any, name: str, fn: str) -> float | None:
    """None, or a finite positive real returned as float."""
    if value is None:
        return None
    v = validation.check_real(value, name, fn)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{fn}: {name} must be None or a finite positive number, got {value!r}")
    return v


@dataclass(frozen=True)
class StorageRule:
    """How the parameters matching ``pattern`` (and ``role``) are stored and read back.

    Parameters
    ----------
    pattern : str
        A shell-style glob matched against the whole parameter name with :func:`fnmatch.fnmatchcase`
        (``"*"``, ``"layer1.*"``, ``"fc.weight"``), or a regular expression when ``regex=True``
        (``re.fullmatch``).
    format : str, IEEEFormat, FixedPointFormat or Quantizer
        Storage format: an IEEE name or alias (``"float32"``, ``"fp16"``, ``"bfloat16"``,
        ``"float8_e4m3fn"``, ...), a fixed-point name ``"qM.N"``, or a per-tensor ``Quantizer``.
        Names are resolved to format objects at construction.
    transform : str or Transform
        Applied after decoding (``"identity"``, ``"tanh"``, ``"arctan"``, ``"softsign"``,
        ``"hardtanh"`` or a scaled ``Transform``).
    clip : float or None
        Clip latents to ``[-clip, clip]`` before encoding (weight clipping); None: no clip.
    scale : float or None
        Weight scaling constant ``s``: ``s * u`` is stored and ``û / s`` is read. None: no scaling
        (the same as 1, but documents intent).
    exposed : bool
        Whether the stored bits of these parameters are subject to faults.
    role : {"weight", "bias", "bn", "other"} or None
        If given, the rule only matches parameters of this role (see :func:`param_role`).
    regex : bool
        Interpret ``pattern`` as a regular expression.
    """

    pattern: str = "*"
    format: Any = "float32"
    transform: Any = "identity"
    clip: float | None = None
    scale: float | None = None
    exposed: bool = True
    role: str | None = None
    regex: bool = False

    def __post_init__(self) -> None:
        fn = "StorageRule"
        if not isinstance(self.pattern, str):
            raise TypeError(f"{fn}: pattern must be a str, got {validation.describe(self.pattern)}")
        if not isinstance(self.regex, bool):
            raise TypeError(f"{fn}: regex must be a bool, got {validation.describe(self.regex)}")
        if self.regex:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"{fn}: pattern must be a valid regular expression, got {self.pattern!r} "
                                 f"({err})") from None
        where = f"rule {self.pattern!r}"
        object.__setattr__(self, "format", _resolve_format(self.format, fn, where))
        if not isinstance(self.transform, (str, Transform)):
            raise TypeError(
                f"{fn}: transform must be a transform name or a Transform, "
                f"got {validation.describe(self.transform)}"
            )
        object.__setattr__(self, "transform", get_transform(self.transform))
        object.__setattr__(self, "clip", _check_optional_positive(self.clip, "clip", fn))
        object.__setattr__(self, "scale", _check_optional_positive(self.scale, "scale", fn))
        if not isinstance(self.exposed, bool):
            raise TypeError(f"{fn}: exposed must be a bool, got {validation.describe(self.exposed)}")
        if self.role is not None:
            validation.check_choice(self.role, "role", fn, ROLES)

    @property
    def format_name(self) -> str:
        """The storage format's name (``"float32"``, ``"q2.5"``, ``"quant8_asym_offset_rounded"``)."""
        return self.format.name

    def matches(self, name: str, role: str) -> bool:
        """Whether this rule applies to parameter ``name`` of role ``role``."""
        if self.role is not None and self.role != role:
            return False
        if self.regex:
            return re.fullmatch(self.pattern, name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return {
            "pattern": self.pattern,
            "regex": self.regex,
            "role": self.role,
            "format": _format_to_json(self.format),
            "transform": {"name": self.transform.name, "scale": self.transform.scale},
            "clip": self.clip,
            "scale": self.scale,
            "exposed": self.exposed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StorageRule:
        """The rule described by ``data`` (as written by :meth:`to_dict`; missing keys take defaults)."""
        fn = "StorageRule.from_dict"
        if not isinstance(data, Mapping):
            raise TypeError(f"{fn}: data must be a dict, got {validation.describe(data)}")
        known = ("pattern", "regex", "role", "format", "transform", "clip", "scale", "exposed")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{fn}: data keys must be among {known}, got unknown keys {unknown}")
        kwargs = dict(data)
        if "format" in kwargs:
            kwargs["format"] = _format_from_json(kwargs["format"], fn, f"rule {kwargs.get('pattern', '*')!r}")
        t = kwargs.get("transform")
        if isinstance(t, Mapping):
            if set(t) - {"name", "scale"} or "name" not in t:
                raise ValueError(
                    f"{fn}: transform must be a name or {{'name': ..., 'scale': ...}}, got {t!r}"
                )
            kwargs["transform"] = get_transform(t["name"], scale=t.get("scale", 1.0))
        return cls(**kwargs)


@dataclass(frozen=True)
class StorageSpec:
    """An ordered list of :class:`StorageRule` s; for each parameter the first matching rule applies.

    Parameters
    ----------
    rules : sequence of StorageRule
        Non-empty. Put specific rules (one tensor, one layer) before general ones (``"*"``).

    Notes
    -----
    Serialise with ``spec.to_dict()`` (JSON-ready) and restore with ``StorageSpec.from_dict(d)``.
    """

    rules: tuple[StorageRule, ...]

    def __post_init__(self) -> None:
        fn = "StorageSpec"
        rules = self.rules
        if isinstance(rules, StorageRule) or not isinstance(rules, (list, tuple)):
            raise TypeError(
                f"{fn}: rules must be a list or tuple of StorageRule, got {validation.describe(rules)}"
            )
        for i, rule in enumerate(rules):
            if not isinstance(rule, StorageRule):
                raise TypeError(f"{fn}: rules[{i}] must be a StorageRule, got {validation.describe(rule)}")
        if not rules:
            raise ValueError(f"{fn}: rules must contain at least one StorageRule, got an empty sequence")
        object.__setattr__(self, "rules", tuple(rules))

    def rule_for(
        self, name: str, shapes: Mapping[str, tuple[int, ...]], fn: str = "StorageSpec.rule_for"
    ) -> StorageRule:
        """The first rule matching parameter ``name`` (``shapes``: every parameter's shape, for roles).

        Raises
        ------
        ValueError
            No rule matches ``name``.
        """
        role = param_role(name, shapes)
        for rule in self.rules:
            if rule.matches(name, role):
                return rule
        patterns = ", ".join(f"{r.pattern!r}" + (f" (role {r.role})" if r.role else "") for r in self.rules)
        raise ValueError(
            f"{fn}: parameter {name!r} (role {role!r}) must match a rule of the spec, got no match among "
            f"[{patterns}]"
        )

    def resolve(
        self, shapes: Mapping[str, tuple[int, ...]], fn: str = "StorageSpec.resolve"
    ) -> dict[str, StorageRule]:
        """``{name: rule}`` for every parameter in ``shapes`` (same order)."""
        return {name: self.rule_for(name, shapes, fn) for name in shapes}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict ``{"rules": [...]}``."""
        return {"rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StorageSpec:
        """The spec described by ``data`` (as written by :meth:`to_dict`)."""
        fn = "StorageSpec.from_dict"
        if not isinstance(data, Mapping):
            raise TypeError(f"{fn}: data must be a dict, got {validation.describe(data)}")
        if set(data) != {"rules"} or not isinstance(data["rules"], (list, tuple)):
            raise ValueError(f"{fn}: data must be {{'rules': [...]}}, got keys {sorted(data)}")
        return cls(tuple(StorageRule.from_dict(r) for r in data["rules"]))


def default_spec(
    format: Any = "float32",
    transform: Any = "identity",
    *,
    expose_non_weights: bool = True,
    weight_clip: float | None = None,
) -> StorageSpec:
    """The default storage spec: everything stored in ``format``; conv/linear weights transformed.

    Parameters
    ----------
    format : str, IEEEFormat, FixedPointFormat or Quantizer
        Storage format of every parameter.
    transform : str or Transform
        Transform of convolution and linear weights (role ``"weight"``). Biases and batch-norm
        parameters stay raw (identity).
    expose_non_weights : bool
        Whether biases and batch-norm parameters are exposed to faults (conv/linear weights always are).
    weight_clip : float or None
        Optional clip of the conv/linear weight latents (weight clipping).

    Returns
    -------
    StorageSpec
        Two rules: ``("*", role="weight")`` with the transform, then ``"*"`` for the rest.
    """
    fn = "default_spec"
    if not isinstance(expose_non_weights, bool):
        raise TypeError(
            f"{fn}: expose_non_weights must be a bool, got {validation.describe(expose_non_weights)}"
        )
    return StorageSpec((
        StorageRule("*", format=format, transform=transform, clip=weight_clip, role="weight"),
        StorageRule("*", format=format, transform="identity", exposed=expose_non_weights),
    ))


# ==================================================================================================
# Stored models
# ==================================================================================================


def _frozen_copy(a: np.ndarray) -> np.ndarray:
    """A private read-only copy: nobody can change a stored model's codes behind its back."""
    out = np.array(a, copy=True, order="C")
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class StoredTensor:
    """One parameter as it sits in memory.

    Attributes
    ----------
    codes : ndarray of the format's container dtype (uint8/16/32/64), shape ``shape``
        The stored words, read-only. Bit 0 is the least significant bit of each word.
    format : str
        Name of the storage format (``"float16"``, ``"q2.5"``, a quantizer's name).
    nbits : int
        Bits per stored word (the container may be wider, e.g. 7-bit ``q1.5`` in uint8).
    dtype : numpy.dtype
        dtype of the latent that was stored; :func:`load` returns this dtype.
    context : QuantContext or None
        A quantizer's per-tensor range and step (kept apart from the codes, never faulty); None for IEEE
        and fixed-point formats.
    exposed : bool
        Whether faults may hit this tensor.
    """

    codes: np.ndarray
    format: str
    nbits: int
    dtype: np.dtype
    context: QuantContext | None
    exposed: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """The parameter's shape (that of ``codes``)."""
        return self.codes.shape

    @property
    def bits(self) -> int:
        """Stored bits: ``nbits * codes.size``."""
        return self.nbits * self.codes.size


@dataclass(frozen=True)
class StoredModel:
    """Every parameter of a model as stored in memory, plus the spec that stored it.

    Immutable: the tensor mapping is read-only and so are the code arrays. Faults produce a *new*
    stored model (:func:`inject`, :meth:`with_codes`).

    Attributes
    ----------
    tensors : mapping str -> StoredTensor
        In the order of the parameters given to :func:`store`.
    spec : StorageSpec
        The spec used by :func:`store`; the default spec of :func:`load`.
    """

    tensors: Mapping[str, StoredTensor]
    spec: StorageSpec

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))

    def __getitem__(self, name: str) -> StoredTensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def names(self) -> tuple[str, ...]:
        """Parameter names, in order."""
        return tuple(self.tensors)

    @property
    def codes(self) -> dict[str, np.ndarray]:
        """``{name: codes}`` (a new dict of the read-only code arrays)."""
        return {k: t.codes for k, t in self.tensors.items()}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}``."""
        return {k: t.shape for k, t in self.tensors.items()}

    @property
    def exposed_names(self) -> tuple[str, ...]:
        """Names of the tensors exposed to faults, in order."""
        return tuple(k for k, t in self.tensors.items() if t.exposed)

    @property
    def total_bits(self) -> int:
        """Bits of all stored words (``sum(nbits * size)``), exposed or not."""
        return sum(t.bits for t in self.tensors.values())

    @property
    def exposed_bits(self) -> int:
        """Bits of the stored words exposed to faults."""
        return sum(t.bits for t in self.tensors.values() if t.exposed)

    def with_codes(self, new_codes: Mapping[str, np.ndarray]) -> StoredModel:
        """A copy with the codes of some tensors replaced (the others shared, they are read-only).

        Parameters
        ----------
        new_codes : mapping str -> ndarray
            For each replaced tensor, an array of its container dtype and shape; bits above ``nbits``
            must be zero. The arrays are copied.
        """
        fn = "StoredModel.with_codes"
        if not isinstance(new_codes, Mapping):
            raise TypeError(f"{fn}: new_codes must be a dict of arrays, got {validation.describe(new_codes)}")
        tensors = dict(self.tensors)
        for name, codes in new_codes.items():
            if name not in tensors:
                raise ValueError(f"{fn}: new_codes key must be a stored tensor name, got {name!r}")
            old = tensors[name]
            where = f"new_codes[{name!r}]"
            validation.check_dtype(codes, where, fn, (old.codes.dtype,))
            validation.check_shape(codes, where, fn, old.shape)
            if old.nbits < 8 * codes.itemsize and codes.size and int(codes.max()) >> old.nbits:
                raise ValueError(
                    f"{fn}: {where} must fit in {old.nbits} bits, got a code {int(codes.max()):#x}"
                )
            tensors[name] = StoredTensor(_frozen_copy(codes), old.format, old.nbits, old.dtype,
                                         old.context, old.exposed)
        return StoredModel(tensors, self.spec)


def _check_params(params: Any, name: str, fn: str) -> np.dtype | None:
    """A dict of str -> float32/float64 ndarrays, one dtype for all; return that dtype (None if empty)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{fn}: {name} must be a dict of str -> ndarray, got {validation.describe(params)}")
    for k, v in params.items():
        if not isinstance(k, str):
            raise TypeError(f"{fn}: {name} keys must be str, got {validation.describe(k)}")
        validation.check_float(v, f"{name}[{k!r}]", fn)
    if not params:
        return None
    return validation.check_same_dtype(fn, **{f"{name}[{k!r}]": v for k, v in params.items()})


def _check_spec(spec: Any, fn: str) -> StorageSpec:
    if not isinstance(spec, StorageSpec):
        raise TypeError(
            f"{fn}: spec must be a StorageSpec (e.g. default_spec()), got {validation.describe(spec)}"
        )
    return spec


def _rule_constant(value: float, dtype: np.dtype, what: str, name: str, fn: str) -> np.floating:
    """A rule's clip or scale rounded to the latent dtype; it must stay finite and nonzero there.

    The rule checked ``value`` in float64, but float32 latents use ``float32(value)``: a scale of 1e40
    would become inf (every stored word inf or NaN) and 1e-50 would become 0 (division by zero on read).
    """
    with np.errstate(over="ignore", under="ignore"):
        c = dtype.type(value)
    if not (np.isfinite(c) and c > 0):
        raise ValueError(
            f"{fn}: the {what} of the rule for {name!r} must be finite and nonzero in {dtype}, the latent "
            f"dtype, got {value!r}, which rounds to {c!r}"
        )
    return c


def _prepare_latent(u: np.ndarray, rule: StorageRule, name: str, fn: str) -> np.ndarray:
    """``s * clip(u, -c, c)`` in u's dtype (a new array; u is not touched)."""
    x = u
    if rule.clip is not None:
        c = _rule_constant(rule.clip, u.dtype, "clip", name, fn)
        x = np.clip(x, -c, c)  # NaN stays NaN
    if rule.scale is not None:
        x = x * _rule_constant(rule.scale, u.dtype, "scale", name, fn)
    return x


def store(params: Mapping[str, np.ndarray], spec: StorageSpec) -> StoredModel:
    """Write latents to memory: clip, scale and encode every parameter as ``spec`` says.

    PyTorch equivalent (one float16 tensor, no clip/scale): ``u.to(torch.float16).view(torch.int16)``.

    Parameters
    ----------
    params : dict str -> ndarray
        Latents ``u``, float32 or float64 (one dtype for all), any shapes. Never modified.
    spec : StorageSpec
        Every parameter must match one of its rules.

    Returns
    -------
    StoredModel

    Math
    ----
    ``codes = encode(s * clip(u, -c, c))``; the clip and the product are computed in u's dtype (``c``
    and ``s`` rounded to it), then the format rounds once more:

    - IEEE formats: round to nearest, ties to even; ``overflow="ieee"`` (too large -> inf, or NaN for
      ``float8_e4m3fn``); NaN stays NaN.
    - fixed point ``qM.N``: round half to even, saturate to the range; NaN is an error (no NaN code).
    - Quantizer: its own settings (float32 latents only; its context is stored next to the codes).

    Notes
    -----
    ``StoredTensor.context`` (a quantizer's range and step) is never exposed to faults; in hardware it
    would sit in a few protected registers.
    """
    fn = "store"
    _check_params(params, "params", fn)
    _check_spec(spec, fn)
    shapes = {k: v.shape for k, v in params.items()}
    rules = spec.resolve(shapes, fn)
    tensors = {}
    for name, u in params.items():
        rule = rules[name]
        fmt = rule.format
        if isinstance(fmt, Quantizer) and u.dtype != np.float32:
            raise TypeError(
                f"{fn}: params[{name!r}] must be float32 to be stored with the quantizer {fmt.name!r}, got "
                f"{u.dtype} (cast explicitly)"
            )
        x = _prepare_latent(u, rule, name, fn)
        try:
            codes, context = _encode(fmt, x)
        except ValueError as err:  # e.g. NaN in fixed point: say which tensor
            raise ValueError(f"{fn}: params[{name!r}] cannot be stored as {fmt.name}: {err}") from None
        tensors[name] = StoredTensor(_frozen_copy(codes), fmt.name, fmt.nbits, u.dtype, context, rule.exposed)
    return StoredModel(tensors, spec)


# ==================================================================================================
# Faults
# ==================================================================================================


def _diff_faults(name: str, fmt: str, old: np.ndarray, new: np.ndarray, nbits: int) -> FaultList:
    """The bits where ``new`` differs from ``old``, as flip records of tensor ``name``."""
    diff = (old ^ new).reshape(-1)
    rows = np.nonzero(diff)[0]
    # One column per bit position: bit b of word i differs iff (diff[i] >> b) & 1.
    bits = np.arange(nbits, dtype=diff.dtype)
    hit = ((diff[rows, None] >> bits[None, :]) & diff.dtype.type(1)).astype(bool)
    idx, bit = np.nonzero(hit)
    return FaultList.from_arrays(rows[idx], bit, kind="flip", tensor=name, format_name=fmt)


def _check_stored(stored: Any, fn: str) -> StoredModel:
    if not isinstance(stored, StoredModel):
        raise TypeError(f"{fn}: stored must be a StoredModel (from store())"
            f", got {validation.describe(stored)}")
    return stored


def _check_faultlist_targets(stored: StoredModel, faults: FaultList, fn: str) -> None:
    """Every record must name an exposed tensor of ``stored``, with that tensor's format."""
    for name in faults.tensors:
        if name not in stored.tensors:
            raise ValueError(f"{fn}: faults must name stored tensors, got a record for {name!r}")
        if not stored[name].exposed:
            raise ValueError(
                f"{fn}: faults must only hit exposed tensors, got a record for the unexposed tensor {name!r}"
            )
        sub = faults.select(name)
        for fmt in sub.formats:
            if fmt != stored[name].format:
                raise ValueError(
                    f"{fn}: faults for {name!r} must carry its format {stored[name].format!r}, got {fmt!r}"
                )


def inject(
    stored: StoredModel,
    *,
    p: float | None = None,
    rng: np.random.Generator | int | None = None,
    faults: FaultList | None = None,
    fault_fn: Callable[..., np.ndarray] | None = None,
    return_faults: bool = False,
) -> StoredModel | tuple[StoredModel, FaultList]:
    """Corrupt the exposed tensors of a stored model; return a new stored model.

    There is no PyTorch equivalent (with PyTorch one XORs a random mask into ``w.view(torch.int32)``).

    Give exactly one of:

    - ``p`` (with ``rng``): independent bit flips, each stored bit of each exposed tensor flipped with
      probability ``p`` (:func:`saf_ref.bits.faults.inject_bit_errors`);
    - ``faults``: a :class:`~saf_ref.bits.faultlist.FaultList` to apply (replay a recorded pattern);
    - ``fault_fn`` (with ``rng``): any fault model, called once per exposed tensor, in order, as
      ``fault_fn(codes, rng=rng, nbits=nbits, name=name, format_name=format)`` and returning new codes
      of the same dtype and shape (it must not modify ``codes``, which is read-only anyway).

    Parameters
    ----------
    stored : StoredModel
        Not modified (its codes are read-only).
    p : float in [0, 1], optional
    rng : numpy.random.Generator or int seed
        Required with ``p`` and ``fault_fn``; must be None with ``faults``.
    faults : FaultList, optional
        Records may only name exposed tensors of ``stored``, with their format.
    fault_fn : callable, optional
    return_faults : bool
        Also return the FaultList that turns ``stored`` into the result.

    Returns
    -------
    StoredModel, or (StoredModel, FaultList) with ``return_faults=True``.

    Math
    ----
    With ``p``: each of the ``nbits * size`` stored bits of every exposed tensor flips independently with
    probability ``p``, so a tensor's flip count is ``Binomial(nbits * size, p)``; unexposed tensors and
    the quantizer contexts are never touched. With ``faults``: ``codes' = ((codes XOR F) AND NOT S0) OR
    S1`` per tensor (:meth:`~saf_ref.bits.faultlist.FaultList.apply`).

    Notes
    -----
    - Exposed tensors are visited in the stored order, so the same ``rng`` seed gives the same bits.
    - The returned FaultList replays the result exactly: ``inject(stored, faults=fl)`` gives the same
      codes. For ``p`` it holds the sampled flips; for ``fault_fn`` the bits that changed, as flips
      (a stuck-at fault that did not change its bit leaves no record); for ``faults`` the list itself.
    """
    fn = "inject"
    _check_stored(stored, fn)
    given = [k for k, v in (("p", p), ("faults", faults), ("fault_fn", fault_fn)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"{fn}: exactly one of p, faults, fault_fn must be given, got {given or 'none'}")
    if not isinstance(return_faults, bool):
        raise TypeError(f"{fn}: return_faults must be a bool, got {validation.describe(return_faults)}")
    if faults is not None:
        if not isinstance(faults, FaultList):
            raise TypeError(f"{fn}: faults must be a FaultList, got {validation.describe(faults)}")
        if rng is not None:
            raise ValueError(f"{fn}: rng must be None when faults is given (nothing is drawn), got {rng!r}")
        _check_faultlist_targets(stored, faults, fn)
        nbits = {k: stored[k].nbits for k in faults.tensors}
        new = faults.apply_dict({k: stored[k].codes for k in faults.tensors}, nbits=nbits)
        out = stored.with_codes(new)
        return (out, faults) if return_faults else out
    gen = validation.check_rng(rng, fn)
    if p is not None:
        p = validation.check_probability(p, "p", fn)
    elif not callable(fault_fn):
        raise TypeError(f"{fn}: fault_fn must be callable, got {validation.describe(fault_fn)}")
    new_codes, lists = {}, []
    for name in stored.exposed_names:
        t = stored[name]
        if p is not None:
            codes, fl = inject_bit_errors(
                t.codes, p, rng=gen, nbits=t.nbits, return_faults=True, format_name=t.format, tensor=name
            )
        else:
            codes = fault_fn(t.codes, rng=gen, nbits=t.nbits, name=name, format_name=t.format)
            validation.check_dtype(codes, f"fault_fn result for {name!r}", fn, (t.codes.dtype,))
            validation.check_shape(codes, f"fault_fn result for {name!r}", fn, t.shape)
            fl = _diff_faults(name, t.format, t.codes, codes, t.nbits)
        new_codes[name] = codes
        lists.append(fl)
    out = stored.with_codes(new_codes)
    return (out, FaultList.concat(lists)) if return_faults else out


def inject_nested(
    stored: StoredModel,
    rates: Sequence[float],
    *,
    rng: np.random.Generator | int,
    return_faults: bool = False,
) -> list[StoredModel] | tuple[list[StoredModel], list[FaultList]]:
    """Random bit errors at several rates, nested: the flips at ``p1 < p2`` are among those at ``p2``.

    No PyTorch equivalent. This is how a bit-error-rate sweep draws one "chip" per trial: the faulty
    models at increasing rates share their faults, so accuracy against rate is a curve of one memory.

    Parameters
    ----------
    stored : StoredModel
        Not modified.
    rates : sequence of float in [0, 1]
        Bit-error rates, in any order.
    rng : numpy.random.Generator or int seed
    return_faults : bool
        Also return one FaultList per rate (replayable with :func:`inject`).

    Returns
    -------
    list of StoredModel, one per rate in the order of ``rates``
        (and the list of FaultLists with ``return_faults=True``).

    Math
    ----
    Per exposed tensor (in stored order), :func:`saf_ref.bits.faults.sample_nested_flips`: candidate
    flips of a Bernoulli(``max(rates)``) process over all its bits and one uniform ``v`` per candidate;
    at rate ``p`` the flips are the candidates with ``v < p / max(rates)``. Each bit flips at rate ``p``
    with probability ``p``, independently, and the patterns nest.
    """
    fn = "inject_nested"
    _check_stored(stored, fn)
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence):
        raise TypeError(f"{fn}: rates must be a sequence of probabilities, got {validation.describe(rates)}")
    rates = [validation.check_probability(r, f"rates[{i}]", fn) for i, r in enumerate(rates)]
    gen = validation.check_rng(rng, fn)
    if not isinstance(return_faults, bool):
        raise TypeError(f"{fn}: return_faults must be a bool, got {validation.describe(return_faults)}")
    per_rate_codes: list[dict[str, np.ndarray]] = [{} for _ in rates]
    per_rate_faults: list[list[FaultList]] = [[] for _ in rates]
    for name in stored.exposed_names:
        t = stored[name]
        nested = sample_nested_flips(t.shape, t.nbits, rates, rng=gen)
        for i, flips in enumerate(nested):
            per_rate_codes[i][name] = apply_flips(t.codes, flips, nbits=t.nbits)
            per_rate_faults[i].append(
                FaultList.from_arrays(flips.index, flips.bit, kind="flip", tensor=name, format_name=t.format)
            )
    models = [stored.with_codes(c) for c in per_rate_codes]
    if not return_faults:
        return models
    return models, [FaultList.concat(fls) for fls in per_rate_faults]


# ==================================================================================================
# Reading back: decode, non-finite policy, unscale, transform
# ==================================================================================================


def _resolve_for_load(stored: StoredModel, spec: StorageSpec | None, fn: str) -> dict[str, StorageRule]:
    """Rules for each stored tensor; their formats must be the ones the codes were written in."""
    spec = stored.spec if spec is None else _check_spec(spec, fn)
    rules = spec.resolve(stored.shapes, fn)
    for name, rule in rules.items():
        if rule.format_name != stored[name].format:
            raise ValueError(
                f"{fn}: spec format for {name!r} (={rule.format_name!r}) must equal the stored format "
                f"(={stored[name].format!r}); decode with the spec that stored the model"
            )
    return rules


def _read_tensor(t: StoredTensor, rule: StorageRule, nonfinite: str, name: str, fn: str) -> np.ndarray:
    """``û / s`` for one stored tensor, in the latent dtype (the input of the transform)."""
    values = _decode(rule.format, t.codes, t.context)
    # Decoding is exact in the format's decode dtype; the cast to the latent dtype is exact too unless
    # a float64 format is read into float32 latents (round to nearest, overflow to inf: no warning).
    with np.errstate(over="ignore"):
        x = values.astype(t.dtype)
    if nonfinite == "zero":
        x = np.where(np.isfinite(x), x, t.dtype.type(0))
    if rule.scale is not None:
        x = x / _rule_constant(rule.scale, t.dtype, "scale", name, fn)
    return x


def _read(stored: StoredModel, spec: StorageSpec | None, nonfinite: str, fn: str):
    _check_stored(stored, fn)
    validation.check_choice(nonfinite, "nonfinite", fn, NONFINITE_POLICIES)
    rules = _resolve_for_load(stored, spec, fn)
    u_hat = {name: _read_tensor(stored[name], rules[name], nonfinite, name, fn) for name in stored}
    eff = {name: rules[name].transform.forward(u_hat[name]) for name in stored}
    return eff, u_hat, rules


def load(
    stored: StoredModel, spec: StorageSpec | None = None, *, nonfinite: str = "propagate"
) -> dict[str, np.ndarray]:
    """Read a stored model back: effective parameters ``w = f(decode(codes) / s)``.

    PyTorch equivalent (one float16 tensor, tanh): ``torch.tanh(codes.view(torch.float16).float())``.

    Parameters
    ----------
    stored : StoredModel
        From :func:`store`, possibly with faults (:func:`inject`).
    spec : StorageSpec, optional
        Default: ``stored.spec``. Its format for each tensor must be the stored one; its transform and
        scale are used.
    nonfinite : {"propagate", "zero"}
        What a NaN or infinity read from memory becomes: kept (default), or replaced by 0 before
        unscaling and the transform (a cheap hardware check on the decoded word).

    Returns
    -------
    params : dict str -> ndarray
        In the stored order; each in the dtype of the latent that was stored (float32 for float32
        latents, whatever the format; float64 latents give float64). New arrays.

    Math
    ----
    ``û = decode(codes)`` (exact), cast to the latent dtype (exact, except float64 storage of float32
    latents, which rounds to nearest); ``û = 0`` where non-finite if ``nonfinite="zero"``;
    ``w = f(û / s)`` with ``s`` the rule's scale (none: ``s = 1``) and ``f`` its transform.
    """
    eff, _, _ = _read(stored, spec, nonfinite, "load")
    return eff


# ==================================================================================================
# The differentiable pipeline (training through faulty memory)
# ==================================================================================================


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
        The faults injected (None if none were requested).
    """

    u_hat: dict[str, np.ndarray]
    transforms: dict[str, Transform]
    stored: StoredModel
    faults: FaultList | None


def effective_weights(
    latents: Mapping[str, np.ndarray],
    spec: StorageSpec,
    *,
    p: float | None = None,
    rng: np.random.Generator | int | None = None,
    faults: FaultList | None = None,
    fault_fn: Callable[..., np.ndarray] | None = None,
    nonfinite: str = "propagate",
) -> tuple[dict[str, np.ndarray], EffectiveWeightsCache]:
    """The weights the network computes with: store, (optionally) inject faults, load.

    PyTorch equivalent: a straight-through estimator, ``w = f(u + (read(write(u)) - u).detach())``.

    Parameters
    ----------
    latents : dict str -> ndarray
        Latents ``u`` (float32 or float64, one dtype). Never modified.
    spec : StorageSpec
    p, rng, faults, fault_fn
        At most one of ``p`` / ``faults`` / ``fault_fn`` (see :func:`inject`); none: no faults (then
        ``rng`` must be None too).
    nonfinite : {"propagate", "zero"}
        See :func:`load`.

    Returns
    -------
    params_eff : dict str -> ndarray
        Same keys, shapes and dtype as ``latents``.
    cache : EffectiveWeightsCache

    Math
    ----
    ``w = f(decode(faults(encode(s * clip(u, -c, c)))) / s)``; see :func:`effective_weights_backward`.
    """
    fn = "effective_weights"
    stored = store(latents, spec)
    fl = None
    if p is not None or faults is not None or fault_fn is not None:
        stored, fl = inject(stored, p=p, rng=rng, faults=faults, fault_fn=fault_fn, return_faults=True)
    elif rng is not None:
        raise ValueError(
            f"{fn}: rng must be None when no faults are requested (p, faults, fault_fn), got {rng!r}"
        )
    eff, u_hat, rules = _read(stored, spec, nonfinite, fn)
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
    out = {}
    for name, u_hat in cache.u_hat.items():
        dw = grads_eff[name]
        where = f"grads_eff[{name!r}]"
        validation.check_float(dw, where, fn)
        validation.check_dtype(dw, where, fn, (u_hat.dtype,))
        validation.check_shape(dw, where, fn, u_hat.shape)
        out[name] = cache.transforms[name].vjp(u_hat, dw)
    return out
