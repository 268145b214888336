"""Stored models: latents written to memory as codes, and read back as effective parameters.

:func:`store` clips, scales and encodes every parameter as its :class:`~saf_ref.protect.spec.StorageRule`
says, through the rule's codec (:class:`~saf_ref.bits.fields.Codec`); :func:`load` decodes, applies the
non-finite policy, unscales and transforms. A :class:`StoredModel` is immutable: faults
(:func:`saf_ref.protect.inject`) produce a new one.

Math
----
``store``: ``(codes, context) = encode(s * clip(u, -c, c))``, clip and product in u's dtype, then the
codec rounds once (IEEE: nearest even, ``overflow="ieee"``; ``qM.N``: half to even, saturate; a
quantizer: its own settings, float32 latents only).

``load``: ``û = decode(codes, context)`` (exact), cast to the latent dtype (exact, except float64 storage
of float32 latents, which rounds to nearest); ``û = 0`` where non-finite if ``nonfinite="zero"``;
``w = f(û / s)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.bits.mx import MXContext
from saf_ref.bits.quantize import QuantContext
from saf_ref.protect.spec import StorageRule, StorageSpec, check_spec

__all__ = [
    "NONFINITE_POLICIES",
    "StoredModel",
    "StoredTensor",
    "check_encodable",
    "check_params",
    "check_stored",
    "load",
    "read",
    "store",
    "write",
]

NONFINITE_POLICIES = ("propagate", "zero")


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
        The stored words, read-only. Bit 0 is the least significant bit of each word. An MX format
        (:mod:`saf_ref.bits.mx`) has a layout of its own: one flat uint8 array (scales, then packed
        elements), of shape ``code_shape``; its context holds the parameter's ``shape``.
    format : str
        Name of the storage format (``"float16"``, ``"q2.5"``, a quantizer's name).
    nbits : int
        Bits per stored word (the container may be wider, e.g. 7-bit ``q1.5`` in uint8).
    dtype : numpy.dtype
        dtype of the latent that was stored; :func:`load` returns this dtype.
    context : QuantContext, MXContext or None
        A quantizer's per-tensor range and step, or an MX tensor's shape (kept apart from the codes, never
        faulty); None for IEEE and fixed-point formats.
    exposed : bool
        Whether faults may hit this tensor.
    """

    codes: np.ndarray
    format: str
    nbits: int
    dtype: np.dtype
    context: QuantContext | MXContext | None
    exposed: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """The parameter's shape (that of ``codes``, except for MX formats: then the context's)."""
        if isinstance(self.context, MXContext):
            return tuple(self.context.shape)
        return self.codes.shape

    @property
    def code_shape(self) -> tuple[int, ...]:
        """The shape of ``codes``: the fault models' index space (``shape`` except for MX formats)."""
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
            validation.check_shape(codes, where, fn, old.code_shape)
            if old.nbits < 8 * codes.itemsize and codes.size and int(codes.max()) >> old.nbits:
                raise ValueError(
                    f"{fn}: {where} must fit in {old.nbits} bits, got a code {int(codes.max()):#x}"
                )
            tensors[name] = StoredTensor(_frozen_copy(codes), old.format, old.nbits, old.dtype,
                                         old.context, old.exposed)
        return StoredModel(tensors, self.spec)


def check_params(params: Any, name: str, fn: str) -> np.dtype | None:
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
    check_params(params, "params", fn)
    check_spec(spec, fn)
    rules = spec.resolve({k: v.shape for k, v in params.items()}, fn)
    check_encodable(params, rules, fn, "params")
    return write(params, spec, rules, fn, "params")


def check_encodable(
    params: Mapping[str, np.ndarray], rules: Mapping[str, StorageRule], fn: str, arg: str
) -> None:
    """Every latent's dtype must be one its rule's codec accepts (a quantizer takes float32 only)."""
    for name, u in params.items():
        fmt = rules[name].format
        if u.dtype not in fmt.input_dtypes:
            accepted = " or ".join(str(d) for d in fmt.input_dtypes)
            raise TypeError(
                f"{fn}: {arg}[{name!r}] must be {accepted} to be stored with {fmt.name!r}, got "
                f"{u.dtype} (cast explicitly)"
            )


def write(
    params: Mapping[str, np.ndarray], spec: StorageSpec, rules: Mapping[str, StorageRule], fn: str, arg: str
) -> StoredModel:
    """The core of :func:`store` (arguments validated by the caller; ``fn`` and ``arg`` name them in the
    one data-dependent error: a value the codec cannot encode, such as NaN in fixed point)."""
    tensors = {}
    for name, u in params.items():
        rule = rules[name]
        fmt = rule.format
        x = _prepare_latent(u, rule, name, fn)
        try:
            codes, context = fmt.encode_tensor(x)
        except ValueError as err:  # e.g. NaN in fixed point: say which tensor
            raise ValueError(f"{fn}: {arg}[{name!r}] cannot be stored as {fmt.name}: {err}") from None
        tensors[name] = StoredTensor(_frozen_copy(codes), fmt.name, fmt.nbits, u.dtype, context, rule.exposed)
    return StoredModel(tensors, spec)


def check_stored(stored: Any, fn: str) -> StoredModel:
    """``stored`` itself if it is a :class:`StoredModel`; else a templated ``TypeError`` naming ``fn``."""
    if not isinstance(stored, StoredModel):
        raise TypeError(
            f"{fn}: stored must be a StoredModel (from store()), got {validation.describe(stored)}"
        )
    return stored


# ==================================================================================================
# Reading back: decode, non-finite policy, unscale, transform
# ==================================================================================================


def _resolve_for_load(stored: StoredModel, spec: StorageSpec | None, fn: str) -> dict[str, StorageRule]:
    """Rules for each stored tensor; their formats must be the ones the codes were written in."""
    spec = stored.spec if spec is None else check_spec(spec, fn)
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
    values = rule.format.decode_tensor(t.codes, t.context)
    # Decoding is exact in the format's decode dtype; the cast to the latent dtype is exact too unless
    # a float64 format is read into float32 latents (round to nearest, overflow to inf: no warning).
    with np.errstate(over="ignore"):
        x = values.astype(t.dtype)
    if nonfinite == "zero":
        x = np.where(np.isfinite(x), x, t.dtype.type(0))
    if rule.scale is not None:
        # A scale below 1 can overflow a large (faulty) word to inf: the read's result, as the cast
        # above, with no warning (reading faulty memory is routine here).
        with np.errstate(over="ignore"):
            x = x / _rule_constant(rule.scale, t.dtype, "scale", name, fn)
    return x


def read(
    stored: StoredModel, rules: Mapping[str, StorageRule], nonfinite: str, fn: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(w, û / s)`` for every stored tensor: the unchecked core of :func:`load` and
    :func:`~saf_ref.protect.effective.effective_weights` (``rules``: one per stored tensor, in its format)."""
    u_hat = {name: _read_tensor(stored[name], rules[name], nonfinite, name, fn) for name in stored}
    eff = {name: rules[name].transform.forward(u_hat[name]) for name in stored}
    return eff, u_hat


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
    fn = "load"
    check_stored(stored, fn)
    validation.check_choice(nonfinite, "nonfinite", fn, NONFINITE_POLICIES)
    rules = _resolve_for_load(stored, spec, fn)
    eff, _ = read(stored, rules, nonfinite, fn)
    return eff
