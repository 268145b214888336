"""Storage specs: which clip, scale, format, transform and fault exposure apply to each parameter.

A :class:`StorageSpec` is an ordered list of :class:`StorageRule` s; the first rule that matches a
parameter (by name pattern and, optionally, role) decides how it is stored and read back::

    u ─ clip [-c, c] ─► × s ─► encode(format) ─► bits ─ faults ─► bits' ─ decode ─► û ─ ÷ s ─► f ─► w

Math
----
For parameter ``name`` with role ``r = param_role(name, shapes)``, the rule is
``rule = first(R in spec.rules : R.matches(name, r))``; it gives ``c`` (clip, or none), ``s`` (scale, or
none: 1), the codec (:class:`~saf_ref.bits.fields.Codec`: IEEE, ``qM.N`` or a quantizer), the transform
``f`` and whether the stored bits are exposed to faults.

Roles, the one rule for which tensors are transformed (:func:`param_role`): a ``*.weight`` of rank >= 2 is
a conv/linear ``"weight"``; a rank-1 ``*.weight`` and the ``*.bias`` beside it are ``"bn"``; any other
``*.bias`` is ``"bias"``; everything else ``"other"``. :func:`default_spec` transforms role ``"weight"``
only, and clips the roles named in ``clip_roles`` (conv/linear weights by default; every role,
``clip_roles=ROLES``, as the reference code of Stutz et al. clips every trained tensor).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saf_ref import validation
from saf_ref.bits.formats import codec_from_json, resolve_format
from saf_ref.protect.transforms import TRANSFORMS, check_transform, get_transform

__all__ = [
    "ROLES",
    "StorageRule",
    "StorageSpec",
    "check_clip_roles",
    "check_spec",
    "default_spec",
    "param_role",
]

ROLES = ("weight", "bias", "bn", "other")


def check_clip_roles(clip_roles: Any, fn: str) -> tuple[str, ...]:
    """Validate the roles a clip applies to: a tuple or list of distinct names from :data:`ROLES`
    (TypeError for another type, ValueError for an unknown or repeated role); returned as a tuple in the
    order of :data:`ROLES`."""
    if isinstance(clip_roles, str) or not isinstance(clip_roles, (tuple, list)):
        raise TypeError(
            f"{fn}: clip_roles must be a tuple of roles from {ROLES}, got {validation.describe(clip_roles)}"
        )
    for role in clip_roles:
        validation.check_choice(role, "clip_roles[i]", fn, ROLES)
    if len(set(clip_roles)) != len(clip_roles):
        raise ValueError(f"{fn}: clip_roles must not repeat a role, got {tuple(clip_roles)!r}")
    return tuple(r for r in ROLES if r in clip_roles)


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
        object.__setattr__(self, "format", resolve_format(self.format, fn=fn, name=f"{where} format"))
        object.__setattr__(self, "transform", check_transform(self.transform, "transform", fn))
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
            "format": self.format.to_json(),
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
            where = f"rule {kwargs.get('pattern', '*')!r}"
            kwargs["format"] = codec_from_json(kwargs["format"], fn=fn, where=where)
        t = kwargs.get("transform")
        if isinstance(t, Mapping):
            if set(t) - {"name", "scale"} or "name" not in t:
                raise ValueError(
                    f"{fn}: transform must be a name or {{'name': ..., 'scale': ...}}, got {t!r}"
                )
            name = t["name"]
            if not isinstance(name, str):
                raise TypeError(f"{fn}: transform['name'] must be a str, got {validation.describe(name)}")
            validation.check_choice(name, "transform['name']", fn, TRANSFORMS)
            kwargs["transform"] = get_transform(name, scale=t.get("scale", 1.0))
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
    clip_roles: tuple[str, ...] = ("weight",),
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
        Optional clip ``c`` of the latents of the roles in ``clip_roles`` (weight clipping).
    clip_roles : tuple of {"weight", "bias", "bn", "other"}
        Which roles (:func:`param_role`) ``weight_clip`` applies to: conv/linear weights only (default),
        or every trained tensor, ``ROLES``, as the reference code of Stutz et al. (its projection and
        its quantizer's range cover biases and normalisation parameters too; with reparameterized
        normalisation, :mod:`saf_ref.nn.norms`, those sit near 0 and survive the clip).

    Returns
    -------
    StorageSpec
        ``("*", role="weight")`` with the transform, then one ``("*", role=r)`` rule with the clip for
        each other clipped role ``r``, then ``"*"`` for the rest: two rules with the default
        ``clip_roles`` (the spec saf_ref always had), and with ``weight_clip=None``.
    """
    return build_default_spec(format, transform, expose_non_weights, weight_clip, clip_roles, "default_spec")


def build_default_spec(
    format: Any,
    transform: Any,
    expose_non_weights: Any,
    weight_clip: Any,
    clip_roles: Any,
    fn: str,
) -> StorageSpec:
    """:func:`default_spec`, its arguments checked in the name of ``fn`` (the public function called)."""
    if not isinstance(expose_non_weights, bool):
        raise TypeError(
            f"{fn}: expose_non_weights must be a bool, got {validation.describe(expose_non_weights)}"
        )
    clip_roles = check_clip_roles(clip_roles, fn)
    # Checked here so that a bad argument is named as fn's (not as StorageRule's clip or format)
    format = resolve_format(format, fn=fn, name="format")
    transform = check_transform(transform, "transform", fn)
    weight_clip = _check_optional_positive(weight_clip, "weight_clip", fn)
    weight_rule_clip = weight_clip if "weight" in clip_roles else None
    rules = [StorageRule("*", format=format, transform=transform, clip=weight_rule_clip, role="weight")]
    if weight_clip is not None:
        rules += [
            StorageRule("*", format=format, clip=weight_clip, exposed=expose_non_weights, role=role)
            for role in clip_roles
            if role != "weight"
        ]
    rules.append(StorageRule("*", format=format, transform="identity", exposed=expose_non_weights))
    return StorageSpec(tuple(rules))


def check_spec(spec: Any, fn: str) -> StorageSpec:
    """``spec`` itself if it is a :class:`StorageSpec`; else a templated ``TypeError`` naming ``fn``."""
    if not isinstance(spec, StorageSpec):
        raise TypeError(
            f"{fn}: spec must be a StorageSpec (e.g. default_spec()), got {validation.describe(spec)}"
        )
    return spec
