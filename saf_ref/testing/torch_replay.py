"""Replay a saf_ref :class:`~saf_ref.bits.faultlist.FaultList` on a PyTorch ``state_dict``, in PyTorch.

saf_ref draws a fault pattern (a campaign trial, an attack, a chip's stuck bits) and records it as a
FaultList; :func:`replay_faults` applies that list to a PyTorch model's ``state_dict`` with PyTorch's own
tensor operations, following the storage spec the list was drawn under::

    u ─ clip ─► × s ─► encode ─► codes ─ flips, stuck bits ─► codes' ─ decode ─► û ─ ÷ s ─► f ─► w

so that a PyTorch fault injector can be checked against saf_ref trial by trial (the same effective
weights bit for bit, the same predictions). None of saf_ref's codecs or fault code runs here: the spec
only says *which* codec, clip, scale and transform apply to each tensor; the encoding, the bit flips and
the decoding are torch casts, ``Tensor.view`` bit reinterpretations and int64 tensor arithmetic, so the
replay is an independent implementation that can disagree with saf_ref.

    import torch
    from saf_ref.testing.torch_replay import replay_faults

    sd = replay_faults(model.state_dict(), spec, faults)   # a new state dict: faulty effective weights
    model.load_state_dict(sd)

Supported storage formats: the IEEE formats torch has a dtype for (float64, float32, float16, bfloat16,
float8_e4m3fn, float8_e5m2), fixed point ``qM.N``, the per-tensor :class:`~saf_ref.bits.Quantizer`
(float32 latents) and the OCP Microscaling block formats (:mod:`saf_ref.bits.mx`: mxfp8_e4m3, mxfp8_e5m2,
mxfp6_e2m3, mxfp6_e3m2, mxfp4, mxint8, any block size and axis). Codes are int64 tensors holding the
stored word (bit 0 = least significant); an MX tensor's codes are its stored bytes, one flat tensor of
scales then packed elements, and the faults index those bytes.

How each step is made bit-exact in torch (where a plain cast is not):

- float64 latents narrowed to a 16- or 8-bit format: torch rounds through float32 (a double rounding,
  ``bfloat16(1 + 2**-8 + 2**-30)`` gives 1.0); here the float64 value is first rounded to float32 *to
  odd* (truncate, then set the last bit if inexact), after which torch's float32 cast rounds once,
  correctly (round-to-odd with two spare bits is innocuous);
- float8_e4m3fn: torch saturates overflow to +-448; saf_ref's IEEE-style encoding gives NaN above 464
  and for +-inf, which is restored;
- NaN: every NaN is stored as the canonical quiet NaN of its sign and read back as the canonical NaN of
  the latent dtype (torch casts keep or drop payload bits);
- MX blocks (:meth:`TorchBackend.tensor_mx_encode`): the shared exponent from ``torch.frexp`` of the block's
  largest magnitude, the elements ``V / 2**shared`` (exact) rounded by a float8 cast (after clamping to
  the largest element and rounding to odd in float32), by ``torch.round`` (MXINT8) or to the nearest
  entry of the FP6/FP4 value table (no torch dtype); the bytes packed with int64 shifts; decoding by table
  lookup times ``2**(scale - 127)`` built from its bits, a NaN scale giving the positive quiet NaN;
- the transforms tanh, arctan and softsign are computed in float64 on ``|u| / a`` and rounded once, with
  the sign put back (saf_ref's convention); for float32 latents that is bit-exact unless torch's and
  NumPy's float64 kernels straddle a float32 rounding midpoint (about 2**-27 per element).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.fixed import FixedPointFormat
from saf_ref.bits.ieee import IEEEFormat
from saf_ref.bits.mx import MXFormat
from saf_ref.bits.quantize import Quantizer
from saf_ref.protect.spec import StorageRule, StorageSpec
from saf_ref.protect.stored import NONFINITE_POLICIES
from saf_ref.testing.torch_backend import TORCH_FORMATS, TorchBackend, import_torch, round_to_odd_float32

__all__ = ["decode_tensor", "encode_tensor", "flip_codes", "replay_faults"]

#: IEEE format -> (exponent bits, mantissa bits); the canonical quiet NaN and the sign bit follow from them
_FIELDS = {
    "float64": (11, 52),
    "float32": (8, 23),
    "float16": (5, 10),
    "bfloat16": (8, 7),
    "float8_e4m3fn": (4, 3),
    "float8_e5m2": (5, 2),
}
#: float8_e4m3fn: values above this magnitude (half an ulp above 448) overflow (to NaN: no infinity)
_E4M3_OVERFLOW = 464.0
#: batch-norm buffers of a torch state dict: not parameters, never stored nor faulty
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# ==================================================================================================
# IEEE formats: torch casts and bit views
# ==================================================================================================


def _nan_code(name: str) -> int:
    """The canonical quiet NaN: exponent all ones, mantissa MSB set (``S.1111.111`` for e4m3fn)."""
    e, m = _FIELDS[name]
    if name == "float8_e4m3fn":
        return (1 << (e + m)) - 1
    return (((1 << e) - 1) << m) | (1 << (m - 1))


def _sign_bits(u):
    """0/1 int64 tensor: the sign bit of every element (NaN and -0.0 included)."""
    return import_torch().signbit(u).to(import_torch().int64)


def _ieee_encode(u, name: str):
    torch = import_torch()
    tdtype, view, _ = TORCH_FORMATS[name]
    e, m = _FIELDS[name]
    nbits = 1 + e + m
    v = u
    if u.dtype == torch.float64 and nbits < 32:
        v = round_to_odd_float32(u)  # one correct rounding below instead of torch's two
    words = v.to(getattr(torch, tdtype)).view(getattr(torch, view)).to(torch.int64)
    words = words & ((1 << nbits) - 1) if nbits < 64 else words
    sign = _sign_bits(u) << (nbits - 1)
    if name == "float8_e4m3fn":  # torch saturates; IEEE-style overflow (and +-inf) is NaN
        over = u.abs() > _E4M3_OVERFLOW
        words = torch.where(over, sign | _nan_code(name), words)
    return torch.where(torch.isnan(u), sign | _nan_code(name), words)


def _ieee_decode(codes, name: str, dtype):
    torch = import_torch()
    tdtype, view, _ = TORCH_FORMATS[name]
    e, m = _FIELDS[name]
    nbits = 1 + e + m
    signed = codes
    if nbits in (16, 32):  # the two's complement value of the word, so that the narrowing cast keeps it
        signed = torch.where(codes >= (1 << (nbits - 1)), codes - (1 << nbits), codes)
    values = signed.to(getattr(torch, view)).view(getattr(torch, tdtype)).to(dtype)
    # NaN: the canonical quiet NaN of the latent dtype, with the stored word's sign
    out_bits = {torch.float32: (32, torch.int32, 0x7FC00000), torch.float64: (64, torch.int64, 0x7FF8 << 48)}
    width, int_view, quiet = out_bits[dtype]
    sign = (codes >> (nbits - 1)) & 1
    # the signed value of the NaN word: -2**(width-1) is the sign bit alone, in int32 or int64 alike
    nan_word = torch.full_like(codes, quiet) + sign * -(1 << (width - 1))
    nan = nan_word.to(int_view).view(dtype)
    return torch.where(torch.isnan(values), nan, values)


# ==================================================================================================
# Fixed point qM.N: float64 scaling by 2**N, round half to even, saturate; two's complement words
# ==================================================================================================


def _fixed_encode(u, fmt: FixedPointFormat, where: str, fn: str):
    torch = import_torch()
    if bool(torch.isnan(u).any()):
        raise ValueError(f"{fn}: {where} must not contain NaN to be stored as {fmt.name} "
                         f"(fixed point has no NaN code), got NaN")
    lo, hi = -(1 << (fmt.nbits - 1)), (1 << (fmt.nbits - 1)) - 1
    scaled = u.to(torch.float64) * 2.0**fmt.frac_bits  # exact (a power of two), inf past float64's range
    k = torch.clamp(torch.round(scaled), lo, hi)  # torch.round: half to even; +-inf saturate
    return k.to(torch.int64) & ((1 << fmt.nbits) - 1)


def _fixed_decode(codes, fmt: FixedPointFormat, dtype):
    torch = import_torch()
    k = torch.where(codes >= (1 << (fmt.nbits - 1)), codes - (1 << fmt.nbits), codes)
    # |k| <= 2**31: exact in float64; k * 2**-N exact; the cast to float32 latents rounds once (nbits > 25)
    exact = torch.float32 if fmt.nbits <= 25 else torch.float64
    return (k.to(exact) * 2.0**-fmt.frac_bits).to(dtype)


# ==================================================================================================
# MX block formats: rows of blocks, torch's block codec, bytes packed with int64 shifts
# ==================================================================================================


def _mx_rows(shape: tuple[int, ...], fmt: MXFormat) -> tuple[int, int]:
    """``(rows, row_length)``: blocks run along the flattened trailing axes (``axis=None``: the first axis
    is the rows; a 0-d or 1-d tensor is one row) or along ``fmt.axis``."""
    size = int(np.prod(shape, dtype=np.int64))
    if fmt.axis is None:
        return (1, size) if len(shape) <= 1 else (shape[0], size // shape[0] if shape[0] else 0)
    length = shape[fmt.axis]
    return (size // length if length else 0), length


def _mx_layout(shape: tuple[int, ...], fmt: MXFormat) -> tuple[int, int, int, int]:
    """``(rows, row_length, blocks per row, stored bytes)`` of a tensor of ``shape``."""
    rows, length = _mx_rows(shape, fmt)
    per_row = -(-length // fmt.block_size)
    blocks = rows * per_row
    return rows, length, per_row, blocks + blocks * fmt.block_size * fmt.element_bits // 8


def _mx_encode(u, fmt: MXFormat):
    torch = import_torch()
    shape = tuple(u.shape)
    rows, length, per_row, _ = _mx_layout(shape, fmt)
    moved = u if fmt.axis is None else u.movedim(fmt.axis, -1)
    padded = torch.zeros((rows, per_row * fmt.block_size), dtype=u.dtype, device=u.device)
    padded[:, :length] = moved.reshape(rows, length)  # the padding is +0, and stored
    backend = TorchBackend(device=str(u.device))
    scales, elements = backend.tensor_mx_encode(padded.reshape(rows, per_row, fmt.block_size), fmt.base)
    return torch.cat([scales.reshape(-1), _mx_pack(elements.reshape(-1), fmt.element_bits)]), {"shape": shape}


def _mx_pack(el, w: int):
    """Element codes -> bytes: 8 bits one per byte; 4 bits two per byte (the first in bits 0-3); 6 bits
    four per three bytes (element ``4t + i`` in bits ``6i .. 6i + 5`` of a little-endian 24-bit word)."""
    if w == 8:
        return el
    if w == 4:
        pairs = el.reshape(-1, 2)
        return pairs[:, 0] | (pairs[:, 1] << 4)
    q = el.reshape(-1, 4)
    word = q[:, 0] | (q[:, 1] << 6) | (q[:, 2] << 12) | (q[:, 3] << 18)
    return import_torch().stack([(word >> s) & 0xFF for s in (0, 8, 16)], dim=1).reshape(-1)


def _mx_unpack(body, w: int):
    """Bytes -> element codes (inverse of :func:`_mx_pack`)."""
    if w == 8:
        return body
    torch = import_torch()
    if w == 4:
        return torch.stack([body & 0xF, body >> 4], dim=1).reshape(-1)
    t = body.reshape(-1, 3)
    word = t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)
    return torch.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], dim=1).reshape(-1)


def _mx_decode(codes, fmt: MXFormat, context: Mapping[str, Any], dtype):
    shape = tuple(context["shape"])
    rows, length, per_row, _ = _mx_layout(shape, fmt)
    blocks = rows * per_row
    scales = codes[:blocks].reshape(rows, per_row)
    elements = _mx_unpack(codes[blocks:], fmt.element_bits).reshape(rows, per_row, fmt.block_size)
    backend = TorchBackend(device=str(codes.device))
    values = backend.tensor_mx_decode(scales, elements, fmt.base).reshape(rows, -1)[:, :length]
    if fmt.axis is None:
        return values.reshape(shape).to(dtype)
    moved = [*shape[: fmt.axis % len(shape)], *shape[fmt.axis % len(shape) + 1 :], shape[fmt.axis]]
    return values.reshape(moved).movedim(-1, fmt.axis).to(dtype)  # float64 -> float32: rounds once


def _stored_size(shape: tuple[int, ...], fmt: Any) -> int:
    """The number of stored words: the tensor's size, or its bytes for an MX format."""
    if isinstance(fmt, MXFormat):
        return _mx_layout(shape, fmt)[3]
    return int(np.prod(shape, dtype=np.int64))


# ==================================================================================================
# One tensor: encode, flip, decode
# ==================================================================================================


def encode_tensor(u, fmt: Any, *, where: str = "u"):
    """``(codes, context)`` of a float tensor in a storage format, computed with torch operations.

    Parameters
    ----------
    u : torch.Tensor, float32 or float64
        The (clipped and scaled) latent.
    fmt : IEEEFormat, FixedPointFormat, Quantizer or MXFormat
        A storage rule's format.
    where : str
        How the tensor is named in error messages.

    Returns
    -------
    codes : torch.Tensor of int64, shape of ``u`` (MX: ``(stored bytes,)``)
        The stored words (bit 0 = least significant).
    context : dict or None
        A quantizer's range and step (keys of :class:`~saf_ref.bits.quantize.QuantContext`), an MX
        tensor's ``{"shape": shape}``, else None.

    Math
    ----
    IEEE: round to nearest even, overflow to inf (NaN for float8_e4m3fn), NaN to the canonical quiet NaN
    of its sign. ``qM.N``: ``k = clip(rint(u * 2**N), -2**(nbits-1), 2**(nbits-1) - 1)``, the low
    ``nbits`` bits of ``k``. Quantizer: Stutz et al.'s published algorithm in float32 torch arithmetic.
    MX: per block ``shared = floor(log2 max|V|) - emax_elem`` (clamped below at -127; NaN scale for a
    non-finite block or ``shared > 127``), elements ``RNE_saturate(V / 2**shared)``, packed after the
    scales.
    """
    return _encode(u, fmt, where, "encode_tensor")


def _encode(u, fmt: Any, where: str, fn: str):
    """:func:`encode_tensor`, its errors naming the public function ``fn`` that was called."""
    torch = import_torch()
    if isinstance(fmt, IEEEFormat):
        if fmt.name not in TORCH_FORMATS:
            raise ValueError(f"{fn}: {where} format must have a torch dtype, got {fmt.name!r}")
        return _ieee_encode(u, fmt.name), None
    if isinstance(fmt, FixedPointFormat):
        return _fixed_encode(u, fmt, where, fn), None
    if isinstance(fmt, Quantizer):
        if u.dtype != torch.float32:
            raise TypeError(f"{fn}: {where} must be float32 to be stored with {fmt.name!r}, "
                            f"got {u.dtype}")
        backend = TorchBackend(device=str(u.device))
        return backend.tensor_quantize(u, fmt.to_json()["quantizer"])
    if isinstance(fmt, MXFormat):
        return _mx_encode(u, fmt)
    raise TypeError(f"{fn}: {where} format must be an IEEE, fixed-point, quantizer or MX format, "
                    f"got {validation.describe(fmt)}")


def decode_tensor(codes, fmt: Any, context: Mapping[str, Any] | None, dtype):
    """The values of int64 ``codes`` in storage format ``fmt``, as a tensor of the latent ``dtype``.

    Math
    ----
    IEEE: the word reinterpreted as the format's torch dtype (``Tensor.view``), cast to ``dtype`` (exact
    for a wider dtype), every NaN made the canonical quiet NaN of its sign. ``qM.N``: ``k * 2**-N`` for
    the two's complement integer ``k``. Quantizer: ``clip(k * step, -q, q)``, asymmetric mapped back to
    ``[min, max]``, in float32. MX: ``2**(scale - 127) * element`` in float64 (exact), NaN for a block
    whose scale is 0xFF, cast to ``dtype``.
    """
    if isinstance(fmt, IEEEFormat):
        return _ieee_decode(codes, fmt.name, dtype)
    if isinstance(fmt, FixedPointFormat):
        return _fixed_decode(codes, fmt, dtype)
    if isinstance(fmt, MXFormat):
        if not (isinstance(context, Mapping) and isinstance(context.get("shape"), tuple)):
            raise TypeError(f"decode_tensor: context must be the {{'shape': ...}} dict encode_tensor returns "
                            f"for {fmt.name}, got {validation.describe(context)}")
        return _mx_decode(codes, fmt, context, dtype)
    return TorchBackend(device=str(codes.device))._t_dequantize(codes, context).to(dtype)


def flip_codes(codes, index: np.ndarray, bit: np.ndarray, kind: Iterable[str], *, where: str = "codes"):
    """Apply fault records to int64 ``codes`` (any shape, flat C-order indices): a new tensor.

    Math
    ----
    ``codes' = ((codes XOR F) AND NOT S0) OR S1`` on the flat words, with ``F`` the bits flipped an odd
    number of times (two flips of one bit cancel), ``S0`` / ``S1`` the stuck-at-0 / stuck-at-1 bits. A
    bit both stuck at 0 and at 1 is a ``ValueError``.
    """
    return _flip(codes, index, bit, kind, where, "flip_codes")


def _flip(codes, index: np.ndarray, bit: np.ndarray, kind: Iterable[str], where: str, fn: str):
    """:func:`flip_codes`, its errors naming the public function ``fn`` that was called."""
    torch = import_torch()
    flat = codes.reshape(-1).clone()
    kinds = np.asarray(list(kind), dtype=object)
    index = np.asarray(index, dtype=np.int64)
    bit = np.asarray(bit, dtype=np.int64)
    masks = {}
    for k in ("flip", "stuck0", "stuck1"):
        sel = kinds == k
        key = torch.as_tensor(index[sel] * 64 + bit[sel], device=codes.device)
        uniq, counts = torch.unique(key, return_counts=True)
        if k == "flip":
            uniq = uniq[counts % 2 == 1]  # a bit flipped twice is back where it was
        one = torch.ones_like(uniq)
        # distinct (word, bit) pairs: adding the powers of two of one word is an OR; bit 63 wraps to
        # int64's sign bit, which is the stored word's bit 63
        masks[k] = torch.zeros_like(flat).index_add_(0, uniq // 64, one << (uniq % 64))
    both = masks["stuck0"] & masks["stuck1"]
    if bool(both.any()):
        word = int(torch.nonzero(both)[0, 0])
        raise ValueError(f"{fn}: a bit of {where} must not be both stuck0 and stuck1, got word "
                         f"{word} bits {int(both[word]):#x}")
    flat = ((flat ^ masks["flip"]) & ~masks["stuck0"]) | masks["stuck1"]
    return flat.reshape(codes.shape)


# ==================================================================================================
# The read path after decoding: non-finite policy, unscale, transform
# ==================================================================================================


def _rule_constant(value: float, dtype, what: str, name: str):
    """A rule's clip or scale as a Python float of the latent dtype (it must stay finite and nonzero)."""
    c = float(np.dtype(str(dtype).replace("torch.", "")).type(value))
    if not (np.isfinite(c) and c > 0):
        raise ValueError(f"replay_faults: the {what} of the rule for {name!r} must be finite and nonzero in "
                         f"{dtype}, got {value!r}")
    return c


def _transform(x, rule: StorageRule):
    """``a f(x / a)``: hardtanh exactly in the latent dtype; tanh, arctan, softsign in float64, rounded once,
    on ``|x|`` with the sign put back (saf_ref's convention, so ``f(-x) == -f(x)`` bit for bit)."""
    torch = import_torch()
    name, a = rule.transform.name, rule.transform.scale
    if name == "identity":
        return x.clone()
    if name == "hardtanh":
        # a NaN passes unchanged (torch.minimum of a float64 NaN sets every payload bit)
        clipped = torch.copysign(torch.minimum(x.abs(), torch.tensor(a, dtype=x.dtype)), x)
        return torch.where(torch.isnan(x), x, clipped)
    ax = x.to(torch.float64).abs() / a
    if name == "tanh":
        y = torch.tanh(ax)
    elif name == "arctan":
        y = torch.atan(ax)
    elif name == "softsign":
        y = torch.where(torch.isinf(ax), torch.ones_like(ax), ax / (1.0 + ax))
    else:
        raise ValueError(f"replay_faults: transform must be one of identity, tanh, arctan, softsign, "
                         f"hardtanh, got {name!r}")
    return torch.copysign(a * y, x.to(torch.float64)).to(x.dtype)


# ==================================================================================================
# The public entry point
# ==================================================================================================


def _parameter_names(state_dict: Mapping[str, Any], params: Iterable[str] | None, fn: str) -> list[str]:
    torch = import_torch()
    if params is None:
        return [
            k for k, v in state_dict.items()
            if torch.is_floating_point(v) and k.rpartition(".")[2] not in _BUFFERS
        ]
    names = list(params)
    for name in names:
        if name not in state_dict:
            raise ValueError(f"{fn}: params must name keys of state_dict, got {name!r}")
    return names


def _check_faults(
    faults: Any, shapes: Mapping[str, tuple], rules: Mapping[str, StorageRule], fn: str
) -> None:
    """Every record names an exposed parameter, carries its format, and stays inside its words."""
    if not isinstance(faults, FaultList):
        raise TypeError(f"{fn}: faults must be a FaultList or None, got {validation.describe(faults)}")
    for name in faults.tensors:
        if name not in rules:
            raise ValueError(f"{fn}: faults must name parameters of state_dict, got tensor {name!r}")
        if not rules[name].exposed:
            raise ValueError(f"{fn}: faults must name exposed tensors, got {name!r} (its rule: not exposed)")
        sub = faults.select(name)
        fmt = rules[name].format
        for f in sub.formats:
            if f != fmt.name:
                raise ValueError(f"{fn}: faults on {name!r} must carry its storage format {fmt.name!r}, "
                                 f"got {f!r}")
        size = _stored_size(shapes[name], fmt)
        if int(sub.index.max()) >= size:
            what = "its stored bytes" if isinstance(fmt, MXFormat) else "its size"
            raise ValueError(f"{fn}: faults on {name!r} must have index < {size} ({what}), "
                             f"got {int(sub.index.max())}")
        if int(sub.bit.max()) >= fmt.nbits:
            raise ValueError(f"{fn}: faults on {name!r} must have bit < {fmt.nbits} ({fmt.name}), "
                             f"got {int(sub.bit.max())}")


def replay_faults(
    state_dict: Mapping[str, Any],
    spec: StorageSpec,
    faults: FaultList | None = None,
    *,
    params: Iterable[str] | None = None,
    nonfinite: str = "propagate",
) -> dict[str, Any]:
    """The effective weights of a PyTorch ``state_dict`` stored as ``spec`` says, with ``faults`` applied.

    The PyTorch twin of :func:`saf_ref.protect.effective_weights` ``(latents, spec, faults=faults)``,
    computed with torch operations only (casts, bit views, int64 arithmetic; see the module docstring).

    Parameters
    ----------
    state_dict : mapping str -> torch.Tensor
        A model's ``state_dict()`` (or ``dict(model.named_parameters())``); parameters are float32 or
        float64 latents. Not modified.
    spec : StorageSpec
        How each parameter is stored (clip, scale, format, exposure) and read back (transform); the spec
        the faults were drawn under.
    faults : FaultList or None
        Records ``(tensor, index, bit, kind, format)``: each names an exposed parameter, carries its
        storage format, flat C-order ``index`` and ``bit`` (0 = LSB) inside the stored word. None: the
        clean stored model (quantization and transforms only).
    params : iterable of str, optional
        The keys that are parameters. Default: every floating-point tensor except the batch-norm buffers
        (``running_mean``, ``running_var``); other keys are copied unchanged.
    nonfinite : {"propagate", "zero"}
        What a NaN or infinity read from memory becomes (see :func:`saf_ref.protect.load`).

    Returns
    -------
    dict str -> torch.Tensor
        Every key of ``state_dict`` in its order: the parameters replaced by their effective weights
        (same dtype, shape and device), the other entries cloned. Load it with
        ``model.load_state_dict(...)``.

    Math
    ----
    Per parameter ``u`` with rule (clip ``c``, scale ``s``, format, transform ``f``):
    ``codes = encode(s * clip(u, -c, c))``, ``codes' = ((codes XOR F) AND NOT S0) OR S1`` (the records
    of this tensor, flips XORed first, two flips of one bit cancel), ``û = decode(codes')`` (0 where
    non-finite if ``nonfinite="zero"``), ``w = f(û / s)``.
    """
    fn = "replay_faults"
    torch = import_torch()
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{fn}: state_dict must be a mapping of str -> torch.Tensor, "
                        f"got {validation.describe(state_dict)}")
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{fn}: state_dict[{k!r}] must be a torch.Tensor, got {validation.describe(v)}")
    if not isinstance(spec, StorageSpec):
        raise TypeError(
            f"{fn}: spec must be a StorageSpec (e.g. default_spec()), got {validation.describe(spec)}"
        )
    validation.check_choice(nonfinite, "nonfinite", fn, NONFINITE_POLICIES)
    names = _parameter_names(state_dict, params, fn)
    for name in names:
        if state_dict[name].dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{fn}: state_dict[{name!r}] must be float32 or float64 (a latent), "
                            f"got {state_dict[name].dtype}")
    shapes = {name: tuple(state_dict[name].shape) for name in names}
    rules = spec.resolve(shapes, fn)
    if faults is not None:
        _check_faults(faults, shapes, rules, fn)
    out = {}
    for key, value in state_dict.items():
        if key not in rules:
            out[key] = value.detach().clone()
            continue
        out[key] = _replay_one(value.detach(), key, rules[key], faults, nonfinite)
    return out


def _replay_one(u, name: str, rule: StorageRule, faults: FaultList | None, nonfinite: str):
    """Store, corrupt and read back one parameter (see :func:`replay_faults`)."""
    torch = import_torch()
    x = u
    if rule.clip is not None:
        c = _rule_constant(rule.clip, u.dtype, "clip", name)
        x = torch.clamp(x, -c, c)
    if rule.scale is not None:
        x = x * _rule_constant(rule.scale, u.dtype, "scale", name)
    codes, context = _encode(x, rule.format, f"state_dict[{name!r}]", "replay_faults")
    if faults is not None and name in faults.tensors:
        sub = faults.select(name)
        codes = _flip(codes, sub.index, sub.bit, sub.kind, f"state_dict[{name!r}]", "replay_faults")
    values = decode_tensor(codes, rule.format, context, u.dtype)
    if nonfinite == "zero":
        values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    if rule.scale is not None:
        values = values / _rule_constant(rule.scale, u.dtype, "scale", name)
    return _transform(values, rule)
