"""Activation faults: transient bit errors in the activations of chosen layers, in a chosen storage format.

Weights sit in memory for the whole run; activations are written and read once per forward pass, so a
fault there is *transient*: a fresh pattern every pass. This is what PyTorchFI, TensorFI2 and GoldenEye
call neuron faults. An :class:`ActivationFaults` object is the hook a model's forward pass calls at its
tap points (:mod:`saf_ref.nn.taps`); at each selected tap it

1. stores the activations in the chosen format (``encode_tensor`` of any saf_ref codec: ``float32``,
   ``float16``, ``bfloat16``, ``float8_e4m3fn``, ``float8_e5m2``, fixed point ``qM.N``, ``"int8"`` or any
   per-tensor :class:`~saf_ref.bits.quantize.Quantizer`, or an OCP Microscaling format such as
   ``"mxfp4"``, :mod:`saf_ref.bits.mx`),
2. flips bits of the stored words: independent bit errors at rate ``p`` drawn fresh in every call
   (:class:`~saf_ref.bits.faultmodels.BitErrors`, the same sampler as for weights), or an explicit
   :class:`~saf_ref.bits.faultlist.FaultList` applied in every call,
3. reads them back (``decode_tensor``) and hands them to the next layer::

    from saf_ref.faults_act import ActivationFaults, activation_taps
    activation_taps("resnet20")              # ('relu', 'layer1.0.relu1', 'layer1.0.relu2', ...)
    faults = ActivationFaults("layer2.*", taps="resnet20", format="float16", p=1e-4, rng=0)
    logits, _, _ = resnet_forward(params, state, x, arch="resnet20", train=False, activation_faults=faults)
    faults.counts                            # {tap: TapCount(words, bits, flips)} over the calls so far

Conventions
-----------
- Layers are tap names or ``fnmatch`` globs (``"layer1.0.relu1"``, ``"layer2.*"``, ``"*"``); each must
  match at least one tap of the model (the error lists them).
- A quantizer's range (its context) is computed per example, so that a prediction does not depend on
  which other images share its batch; IEEE and fixed-point formats have no context.
- Activations that are already NaN or infinite when they reach a tap (an earlier fault) are passed on
  unchanged and are not exposed to faults (a quantizer cannot encode them; the output is flagged as a
  detected error downstream anyway).
- MX formats store a tensor as one byte array, block scales first, then the packed elements
  (:mod:`saf_ref.bits.mx`): every byte is exposed (``words`` counts bytes), a flip in a scale hits its 32
  values at once, and a non-finite activation makes its whole block NaN, as the specification says. With
  the default ``axis=None`` the blocks run along each example's activations flattened (C, H, W), so one
  example's blocks never mix with another's. Explicit fault lists need a format with one word per
  activation (not MX).
- Decoded values are rounded to the activations' dtype (exact for every IEEE and MX value that fits in
  it).
- An explicit fault list addresses *one example's* activations: record ``(tap, index, bit)`` flips bit
  ``bit`` of the flat C-order element ``index`` of ``h[n]`` for every example ``n`` of every pass (a
  PyTorchFI-style neuron fault), so it does not depend on the batch size. Its records must carry the
  format's name and kind ``"flip"``.
- Random draws come from the one generator given, call after call: the same seed, batches and order give
  the same faults. The pattern depends on the batch size (the draw covers the whole batch tensor).
- With rate 0 (or an empty list) the activations only pass through the format: bit-identical to no hook
  for ``float32`` activations in ``float32``, the format's rounding otherwise.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import BitErrors, Target
from saf_ref.bits.faults import bit_indices
from saf_ref.bits.fields import Codec
from saf_ref.bits.formats import resolve_format
from saf_ref.bits.mx import MXFormat
from saf_ref.bits.quantize import Quantizer

__all__ = [
    "ACTIVATION_FORMATS",
    "ActivationFaults",
    "TapCount",
    "activation_format",
    "activation_taps",
    "select_taps",
]

#: Format names shown by ``saf-ref`` and the tables (any codec works: ``qM.N``, a Quantizer, aliases).
ACTIVATION_FORMATS = (
    "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8",
    "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8",
)  # fmt: skip


def int8_quantizer() -> Quantizer:
    """``"int8"``: the per-tensor symmetric 8-bit quantizer, two's complement codes, round half to even."""
    return Quantizer(8, scheme="symmetric", code="twos_complement", rounding="nearest_even")


def activation_format(fmt: Any, fn: str = "activation_format") -> Codec:
    """The codec that stores activations: a format name (IEEE names and aliases, ``"qM.N"``, ``"int8"``) or
    a codec object (IEEEFormat, FixedPointFormat, Quantizer, or any object with the
    :class:`~saf_ref.bits.fields.Codec` interface).

    Raises
    ------
    TypeError
        ``fmt`` is neither a name nor a codec.
    ValueError
        An unknown name, or a format wider than 32 bits (``float64``): activations are float32 and a
        wider word read back after a fault would not fit into them.
    """
    if isinstance(fmt, str) and fmt.lower() == "int8":
        return int8_quantizer()
    if isinstance(fmt, str):
        codec = resolve_format(fmt, fn=fn, name="format")
    elif isinstance(fmt, Codec):
        codec = fmt
    else:
        raise TypeError(
            f"{fn}: format must be a format name (one of {ACTIVATION_FORMATS}, an alias or 'qM.N') or a "
            f"codec (IEEEFormat, FixedPointFormat, Quantizer), got {validation.describe(fmt)}"
        )
    if codec.nbits > 32:
        raise ValueError(
            f"{fn}: format must hold float32 activations in at most 32 bits (a wider word read back after a "
            f"fault does not fit into them), got {codec.name!r} with {codec.nbits} bits"
        )
    return codec


def activation_taps(model: str, params: dict[str, np.ndarray] | None = None) -> tuple[str, ...]:
    """The tap names of a model, in forward order (:mod:`saf_ref.nn.taps`).

    Parameters
    ----------
    model : str
        A model name of :func:`saf_ref.nn.registry.model_fns` (``"resnet20"``, ``"small_cnn@act_clip=6"``).
    params : dict, optional
        Needed for ``"mlp"`` only (its depth is read from the parameter names).
    """
    from saf_ref.nn.registry import parse_model_name
    from saf_ref.nn.resnet import ARCHS, resnet_tap_names
    from saf_ref.nn.small import mlp_tap_names, small_cnn_tap_names

    fn = "activation_taps"
    base = parse_model_name(model, fn).base
    if base in ARCHS:
        return resnet_tap_names(base)
    if base == "small_cnn":
        return small_cnn_tap_names()
    if not isinstance(params, dict):
        raise TypeError(
            f"{fn}: params must be the MLP's parameter dict (its depth decides the taps), "
            f"got {validation.describe(params)}"
        )
    return mlp_tap_names(params)


def select_taps(layers: Any, taps: Sequence[str], fn: str = "select_taps") -> tuple[str, ...]:
    """The taps (in forward order) matched by ``layers``: a tap name or glob, or a sequence of them.

    Every pattern must match at least one tap; the error names the available ones.
    """
    patterns = [layers] if isinstance(layers, str) else layers
    if isinstance(patterns, (bytes, dict)) or not isinstance(patterns, Sequence) or not patterns:
        raise TypeError(
            f"{fn}: layers must be a tap name or glob (e.g. 'layer2.*') or a non-empty sequence of them, "
            f"got {validation.describe(layers)}"
        )
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{fn}: layers must hold tap names (str), got {validation.describe(pattern)}")
        hits = fnmatch.filter(taps, pattern) if any(c in pattern for c in "*?[") else (
            [pattern] if pattern in taps else []
        )
        if not hits:
            raise ValueError(
                f"{fn}: layers must name taps of the model ({', '.join(taps)}; globs such as 'layer2.*' "
                f"work), got {pattern!r}"
            )
        chosen.update(hits)
    return tuple(t for t in taps if t in chosen)


class TapCount(NamedTuple):
    """What one tap has seen over the calls so far: stored words, candidate bits, flipped bits."""

    words: int
    bits: int
    flips: int


def _check_taps(taps: Any, fn: str) -> tuple[str, ...]:
    if isinstance(taps, str):
        return activation_taps(taps)
    if isinstance(taps, (bytes, dict)) or not isinstance(taps, Sequence) or not taps:
        raise TypeError(
            f"{fn}: taps must be a model name or the model's tap names (activation_taps(model, params)), "
            f"got {validation.describe(taps)}"
        )
    for t in taps:
        if not isinstance(t, str):
            raise TypeError(f"{fn}: taps must hold tap names (str), got {validation.describe(t)}")
    return tuple(taps)


class ActivationFaults:
    """A tap hook that stores the activations of chosen layers in a format and flips bits of the words.

    Parameters
    ----------
    layers : str or sequence of str
        Tap names or globs (``"layer1.0.relu1"``, ``"layer2.*"``, ``"*"``); see :func:`select_taps`.
    taps : str or sequence of str
        The model's taps: a model name (``"resnet20"``, ``"small_cnn"``) or the tap names themselves
        (``activation_taps("mlp", params)`` for an MLP).
    format : str or codec
        How activations are stored (:func:`activation_format`); default ``"float32"``.
    p : float in [0, 1], optional
        Bit-error rate: every candidate bit of every stored word flips independently with probability
        ``p``, drawn afresh in every call. Exactly one of ``p`` and ``faults`` is given.
    faults : FaultList, optional
        Explicit flips, applied in every call to every example (see the module docstring): records name
        selected taps, carry the format's name and kind ``"flip"``.
    bit_mask : optional
        With ``p``: only these bits may flip (an int mask, bit indices, a format field); default all.
    rng : numpy.random.Generator or int seed
        Required with ``p``; must be None with ``faults``.

    Attributes
    ----------
    codec : Codec
    selected : tuple of str
        The taps that are stored and exposed, in forward order.
    counts : dict[str, TapCount]
        Per selected tap, accumulated over calls: stored words, candidate bits, flipped bits.

    Math
    ----
    At a selected tap with activations ``h`` (``W`` finite words, ``m`` candidate bits each), a call
    returns ``decode(encode(h) XOR F)`` where ``F`` has each of the ``W m`` candidate bits set
    independently with probability ``p``: the number of flips is ``Binomial(W m, p)``.
    """

    def __init__(
        self,
        layers: Any,
        *,
        taps: Any,
        format: Any = "float32",
        p: float | None = None,
        faults: FaultList | None = None,
        bit_mask: Any = None,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        fn = "ActivationFaults"
        self.taps = _check_taps(taps, fn)
        self.selected = select_taps(layers, self.taps, fn)
        self.codec = activation_format(format, fn)
        self._blocked = isinstance(self.codec, MXFormat)
        if (p is None) == (faults is None):
            raise ValueError(
                f"{fn}: exactly one of p (a bit-error rate) and faults (a FaultList) must be given, "
                f"got {'both' if p is not None else 'neither'}"
            )
        self.p = None if p is None else validation.check_probability(p, "p", fn)
        self.bit_mask = bit_mask
        if self.p is not None:
            self._bits = bit_indices(bit_mask, self.codec.nbits, fn)
            # the model gets the indices, not the caller's mask (the same sorted indices it would derive;
            # a generator is used up by now, and BitErrors keeps its own copy: own_bit_mask)
            self._model = BitErrors(self.p, bit_mask=None if bit_mask is None else self._bits)
            self.rng = validation.check_rng(rng, fn)
            self.faults = None
            self._masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        else:
            if bit_mask is not None or rng is not None:
                raise ValueError(f"{fn}: bit_mask and rng must be None with an explicit fault list, "
                                 f"got bit_mask={bit_mask!r}, rng={validation.describe(rng)}")  # fmt: skip
            if self._blocked:
                raise ValueError(
                    f"{fn}: faults (an explicit list) need a format with one word per activation, got the "
                    f"block format {self.codec.name!r} (use a rate, p)"
                )
            self.faults = self._check_faults(faults, fn)
            self.rng = None
            self._bits = np.arange(self.codec.nbits, dtype=np.int64)
            self._masks = self._fault_masks(self.faults)
        self.counts: dict[str, TapCount] = {t: TapCount(0, 0, 0) for t in self.selected}

    def _check_faults(self, faults: Any, fn: str) -> FaultList:
        if not isinstance(faults, FaultList):
            raise TypeError(f"{fn}: faults must be a FaultList, got {validation.describe(faults)}")
        for name in faults.tensors:
            if name not in self.selected:
                raise ValueError(
                    f"{fn}: faults must name selected taps ({', '.join(self.selected)}), got {name!r}"
                )
        for fmt in faults.formats:
            if fmt != self.codec.name:
                raise ValueError(f"{fn}: faults must carry the format {self.codec.name!r}, got {fmt!r}")
        kinds = set(faults.kind)
        if kinds - {"flip"}:
            raise ValueError(f"{fn}: faults must be transient flips (kind 'flip'), got {sorted(kinds)}")
        if len(faults) and int(faults.bit.max()) >= self.codec.nbits:
            raise ValueError(
                f"{fn}: faults must have bit < {self.codec.nbits} (the bits of {self.codec.name!r}), "
                f"got {int(faults.bit.max())}"
            )
        return faults

    def _fault_masks(self, faults: FaultList) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per tap: the distinct element indices hit and the XOR mask of each (one word per index)."""
        masks = {}
        container = self.codec.container
        for name in faults.tensors:
            sub = faults.select(name)
            index, inverse = np.unique(sub.index, return_inverse=True)
            xor = np.zeros(index.size, dtype=container)
            np.bitwise_xor.at(xor, inverse, np.left_shift(container.type(1), sub.bit.astype(container)))
            masks[name] = (index, xor)
        return masks

    def __repr__(self) -> str:
        what = f"p={self.p!r}" if self.p is not None else f"faults=<{len(self.faults)} records>"
        return f"ActivationFaults({list(self.selected)!r}, format={self.codec.name!r}, {what})"

    def fresh(self, rng: np.random.Generator | int | None = None) -> ActivationFaults:
        """A copy with zero counts and, with a rate, the generator ``rng`` (a campaign unit's own)."""
        new = object.__new__(ActivationFaults)
        new.__dict__.update(self.__dict__)
        new.rng = validation.check_rng(rng, "ActivationFaults.fresh") if self.p is not None else None
        new.counts = {t: TapCount(0, 0, 0) for t in self.selected}
        return new

    # ------------------------------------------------------------------------------------------ the hook
    def __call__(self, name: str, h: np.ndarray) -> np.ndarray:
        """The tap hook: ``h`` itself at a tap not selected; stored, faulted and read back at one that is."""
        fn = "ActivationFaults"
        if name not in self.counts:
            if name not in self.taps:
                raise ValueError(
                    f"{fn}: the taps the model calls must be among the taps given ({', '.join(self.taps)}; "
                    f"pass this model's as taps=), got {name!r}"
                )
            return h
        if h.dtype.itemsize * 8 < self.codec.nbits:
            raise ValueError(
                f"{fn}: format must fit the {h.dtype} activations at tap {name!r} (at most "
                f"{h.dtype.itemsize * 8} bits), got {self.codec.name!r} with {self.codec.nbits} bits"
            )
        if h.dtype not in self.codec.input_dtypes:
            raise TypeError(
                f"{fn}: activations at tap {name!r} must have a dtype format {self.codec.name!r} accepts "
                f"({', '.join(map(str, self.codec.input_dtypes))}), got {h.dtype}"
            )
        if self._blocked:
            return self._call_blocked(name, h)
        finite = np.isfinite(h)
        codes, contexts = self._encode(h, finite)
        codes, flips = self._corrupt(name, codes, finite)
        self._count(name, int(np.count_nonzero(finite)), flips)
        return self._decode(h, finite, codes, contexts)

    def _count(self, name: str, words: int, flips: int) -> None:
        old = self.counts[name]
        self.counts[name] = TapCount(old.words + words, old.bits + words * self._bits.size, old.flips + flips)

    def _call_blocked(self, name: str, h: np.ndarray) -> np.ndarray:
        """A block format: the whole stored byte array (scales and elements) is exposed."""
        codes, context = self.codec.encode_tensor(h)
        target = Target(name, codes.shape, codes.dtype, self.codec.nbits, self.codec.name)
        codes, record = self._model.corrupt(codes, self.rng, target)
        self._count(name, int(codes.size), len(record))
        values = np.asarray(self.codec.decode_tensor(codes, context))
        with np.errstate(over="ignore"):  # a flipped scale may read back beyond float32: inf, on purpose
            return values.astype(h.dtype)

    def _encode(self, h: np.ndarray, finite: np.ndarray) -> tuple[np.ndarray, list | None]:
        """Codes of ``h``'s shape (0 where ``h`` is not finite); one context per example for a quantizer
        (None for an example with no finite activation: it has no range and stores nothing)."""
        all_finite = bool(finite.all())
        if not isinstance(self.codec, Quantizer):
            codes, _ = self.codec.encode_tensor(h if all_finite else np.where(finite, h, h.dtype.type(0)))
            self._check_elementwise(codes, h)
            return codes, None
        codes = np.zeros(h.shape, dtype=self.codec.container)
        contexts = []
        for n in range(h.shape[0]):  # per example: its range must not depend on the rest of the batch
            if not finite[n].any():  # nothing finite to store (an earlier fault): it passes through
                contexts.append(None)
                continue
            row_codes, ctx = self.codec.encode_tensor(h[n][finite[n]])
            codes[n][finite[n]] = row_codes
            contexts.append(ctx)
        return codes, contexts

    def _check_elementwise(self, codes: Any, h: np.ndarray) -> None:
        if not isinstance(codes, np.ndarray) or codes.shape != h.shape:
            raise ValueError(
                f"ActivationFaults: format {self.codec.name!r} must store one word per activation "
                f"(codes of shape {h.shape}), got {validation.describe(codes)}"
            )

    def _corrupt(self, name: str, codes: np.ndarray, finite: np.ndarray) -> tuple[np.ndarray, int]:
        """The faulty codes and the number of bits flipped in finite words."""
        if self.p is not None:
            target = Target(name, codes.shape, codes.dtype, self.codec.nbits, self.codec.name)
            out, record = self._model.corrupt(codes, self.rng, target)
            return out, int(np.count_nonzero(finite.reshape(-1)[record.index]))
        if name not in self._masks:
            return codes, 0
        index, xor = self._masks[name]
        per_example = codes.reshape(codes.shape[0], -1)
        if index.size and int(index[-1]) >= per_example.shape[1]:
            raise ValueError(
                f"ActivationFaults: faults for tap {name!r} must have index < {per_example.shape[1]} (the "
                f"activations of one example, shape {codes.shape[1:]}), got {int(index[-1])}"
            )
        out = per_example.copy()
        out[:, index] ^= xor
        hit = finite.reshape(codes.shape[0], -1)[:, index]
        flips = int((hit * np.array([bin(int(m)).count("1") for m in xor], dtype=np.int64)).sum())
        return out.reshape(codes.shape), flips

    def _decode(
        self, h: np.ndarray, finite: np.ndarray, codes: np.ndarray, contexts: list | None
    ) -> np.ndarray:
        if contexts is None:
            values = np.asarray(self.codec.decode_tensor(codes, None)).astype(h.dtype)
            return values if bool(finite.all()) else np.where(finite, values, h)
        out = h.copy()
        for n, ctx in enumerate(contexts):
            if ctx is not None:  # None: an example without a finite activation, left as it came
                out[n][finite[n]] = self.codec.decode_tensor(codes[n][finite[n]], ctx).astype(h.dtype)
        return out
