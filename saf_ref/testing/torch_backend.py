"""PyTorch as a backend of the oracle kit, computed with PyTorch's own operations (none of saf_ref's code).

Casts and bit views for the number formats (``x.to(torch.bfloat16).view(torch.int16)``), MX blocks from
``torch.frexp``, float8 casts and value tables (``tensor_mx_encode`` / ``tensor_mx_decode``, which
:mod:`saf_ref.testing.torch_replay` uses too), integer tensor arithmetic for fault injection,
``torch.nn.functional`` for the layers, autograd for every vector-Jacobian product, ``torch.optim.SGD``
for the optimizer step, and a functional ResNet assembled from the torchvision parameter names.
Comparing it with saf_ref is therefore a comparison of two independent implementations.

``torch`` is imported lazily (on construction), so ``import saf_ref.testing`` works without it.

Device and dtype are parameters: ``TorchBackend(device="cuda", dtype="float32")`` runs the suite on a
GPU. On CUDA, float32 convolutions and matrix products may use TF32 tensor cores (cuDNN allows it by
default): pass ``tf32=False`` to forbid it, or ``tf32=True`` to allow it, in which case the backend
declares the unit roundoff ``2**-11`` for float32; ``tf32=None`` (default) keeps PyTorch's global
settings and declares ``2**-11`` whenever they allow TF32 on a CUDA device. ``deterministic=True`` asks
cuDNN for deterministic algorithms.

Structure (for subclasses such as the deliberately broken variants in :mod:`saf_ref.testing.mutants`):
the public methods convert NumPy arrays to tensors and call small tensor-level hooks (``_t_conv2d``,
``_t_batch_norm``, ``_t_relu``, ``_t_cross_entropy``, ``_t_transform``, ...) that the whole-model pass
uses too, so overriding a hook changes the op and every model built from it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from saf_ref.bits.faultlist import FaultList
from saf_ref.testing.protocol import DEFAULT_ROUNDOFF, ModelResult

__all__ = ["MX_ELEMENTS", "TorchBackend", "TORCH_FORMATS", "round_to_odd_float32"]

#: format name -> (torch dtype name, torch integer dtype name for the bit view, NumPy container)
TORCH_FORMATS: dict[str, tuple[str, str, type]] = {
    "float64": ("float64", "int64", np.uint64),
    "float32": ("float32", "int32", np.uint32),
    "float16": ("float16", "int16", np.uint16),
    "bfloat16": ("bfloat16", "int16", np.uint16),
    "float8_e4m3fn": ("float8_e4m3fn", "uint8", np.uint8),
    "float8_e5m2": ("float8_e5m2", "uint8", np.uint8),
}
#: what decode returns, as saf_ref's ``decode_dtype``
_DECODE_DTYPE = {"float64": "float64", "float32": "float32", "float16": "float16"}
_TF32_ROUNDOFF = 2.0**-11
#: MX format -> (element format, element bits, exponent bits, mantissa bits, emax_elem): the OCP MX v1.0
#: table (emax_elem is the exponent of the element's largest normal binade; MXINT8: k / 64, emax 0)
MX_ELEMENTS: dict[str, tuple[str, int, int, int, int]] = {
    "mxfp8_e4m3": ("float8_e4m3fn", 8, 4, 3, 8),
    "mxfp8_e5m2": ("float8_e5m2", 8, 5, 2, 15),
    "mxfp6_e2m3": ("float6_e2m3fn", 6, 2, 3, 2),
    "mxfp6_e3m2": ("float6_e3m2fn", 6, 3, 2, 4),
    "mxfp4": ("float4_e2m1fn", 4, 2, 1, 2),
    "mxint8": ("int8", 8, 0, 6, 0),
}
MX_BLOCK = 32
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.conv1\.weight$")


def import_torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TorchBackend needs PyTorch: pip install 'saf_ref[torch]' (or torch itself)"
        ) from err
    return torch


def round_to_odd_float32(u64):
    """float64 tensor -> float32 rounded to odd: truncated toward zero, last bit set when inexact.

    A later round-to-nearest to a format with at least 2 fewer significand bits then gives the correctly
    rounded result of the float64 value (no double-rounding error), including at the overflow threshold.
    torch narrows float64 to float16, bfloat16 and float8 through float32 (two roundings).
    """
    torch = import_torch()
    f = u64.to(torch.float32)  # round to nearest even (overflow: inf)
    too_big = f.to(torch.float64).abs() > u64.abs()
    f = torch.where(too_big, torch.nextafter(f, torch.zeros_like(f)), f)  # now truncated toward zero
    inexact = f.to(torch.float64) != u64
    bits = f.view(torch.int32)
    return torch.where(inexact & ~torch.isnan(u64), bits | 1, bits).view(torch.float32)


class TorchBackend:
    """PyTorch behind the backend protocol (:class:`saf_ref.testing.protocol.Backend`).

    Parameters
    ----------
    device : str
        A torch device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    dtype : {"float32", "float64"}
        dtype of the network ops.
    tf32 : bool or None
        Allow TF32 in CUDA matrix products and convolutions (see the module docstring).
    deterministic : bool
        Set ``torch.backends.cudnn.deterministic`` (and disable cuDNN benchmarking) during each call.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        tf32: bool | None = None,
        deterministic: bool = False,
    ) -> None:
        fn = "TorchBackend"
        torch = import_torch()
        if str(dtype) not in DEFAULT_ROUNDOFF:
            raise ValueError(f"{fn}: dtype must be one of {tuple(DEFAULT_ROUNDOFF)}, got {dtype!r}")
        if tf32 is not None and not isinstance(tf32, bool):
            raise TypeError(f"{fn}: tf32 must be None or a bool, got {type(tf32).__name__}")
        self.torch = torch
        self.F = torch.nn.functional
        self._device = torch.device(device)
        self.device = str(self._device)
        self.dtype = str(dtype)
        self._tdtype = getattr(torch, self.dtype)
        self.tf32 = tf32
        self.deterministic = bool(deterministic)
        self.name = f"torch {torch.__version__}"

    # ------------------------------------------------------------------------------------- basics
    def _uses_tf32(self) -> bool:
        if self._device.type != "cuda":
            return False
        if self.tf32 is not None:
            return self.tf32
        b = self.torch.backends
        return bool(b.cudnn.allow_tf32 or b.cuda.matmul.allow_tf32)

    def unit_roundoff(self, dtype: str) -> float:
        """``2**-24`` / ``2**-53``; ``2**-11`` for float32 where TF32 is in use."""
        if dtype == "float32" and self._uses_tf32():
            return _TF32_ROUNDOFF
        return DEFAULT_ROUNDOFF[dtype]

    @contextlib.contextmanager
    def _flags(self):
        """Apply the TF32 and determinism settings for the duration of one call, then restore them."""
        b = self.torch.backends
        saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark)
        try:
            if self.tf32 is not None:
                b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = self.tf32
            if self.deterministic:
                b.cudnn.deterministic, b.cudnn.benchmark = True, False
            yield
        finally:
            b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark = saved

    def _t(self, a: np.ndarray, grad: bool = False):
        """A tensor on the device holding a *copy* of ``a`` (so nothing can write into the caller's array)."""
        t = self.torch.tensor(np.asarray(a), device=self._device)
        return t.requires_grad_(True) if grad else t

    @staticmethod
    def _np(t) -> np.ndarray:
        """A NumPy copy of a tensor (detached, on the CPU)."""
        return t.detach().cpu().numpy().copy()

    def _leaves(self, *arrays):
        """Leaf tensors that record gradients (None kept)."""
        return [None if a is None else self._t(a, grad=True) for a in arrays]

    def _grads(self, out, dy: np.ndarray, *leaves):
        """Backpropagate ``dy`` through ``out``; the gradients of ``leaves`` as NumPy arrays (None kept)."""
        out.backward(self._t(dy))
        return tuple(None if t is None else self._np(t.grad) for t in leaves)

    # ---------------------------------------------------------------------------------------- bits
    def _format(self, format_name: str):
        if format_name not in TORCH_FORMATS:
            raise NotImplementedError(f"TorchBackend: no torch dtype for format {format_name!r}")
        name, view, container = TORCH_FORMATS[format_name]
        if not hasattr(self.torch, name):  # float8 appeared in torch 2.1
            raise NotImplementedError(f"TorchBackend: this torch has no {name}")
        return getattr(self.torch, name), getattr(self.torch, view), container

    def encode(self, format_name: str, x: np.ndarray) -> np.ndarray:
        """``x.to(dtype).view(int)``: PyTorch's own rounding (float64 inputs go through float32)."""
        tdtype, view, container = self._format(format_name)
        with self._flags():
            codes = self._t(x).to(tdtype).view(view)
        return self._np(codes).view(container)

    def decode(self, format_name: str, codes: np.ndarray) -> np.ndarray:
        """``codes.view(dtype).to(float32)`` (float16 stays float16, float64 stays float64)."""
        tdtype, view, _ = self._format(format_name)
        signed = np.asarray(codes).view(np.dtype(str(view).replace("torch.", "")))
        out = getattr(self.torch, _DECODE_DTYPE.get(format_name, "float32"))
        with self._flags():
            values = self._t(signed).view(tdtype).to(out)
        return self._np(values)

    def _int64(self, codes: np.ndarray):
        """Codes as an int64 tensor (uint64 words are reinterpreted, their bits kept)."""
        c = np.asarray(codes)
        return self._t(c.view(np.int64) if c.dtype == np.uint64 else c.astype(np.int64))

    @staticmethod
    def _back(t, like: np.ndarray) -> np.ndarray:
        """An int64 tensor back to the container dtype of ``like`` (bits kept)."""
        a = t.cpu().numpy()
        return a.view(np.uint64).copy() if like.dtype == np.uint64 else a.astype(like.dtype)

    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        """``flips = uniform < float32(p)``, bit ``j`` LSB first, XOR the masks into the codes."""
        torch = self.torch
        nbits = uniform.shape[-1]
        words = self._int64(codes)
        flips = self._t(uniform) < torch.tensor(p, dtype=torch.float32, device=self._device)
        weights = torch.ones(nbits, dtype=torch.int64, device=self._device) << torch.arange(
            nbits, device=self._device
        )
        if protected is not None:
            flips &= (weights & int(protected)) == 0  # protected bits never flip
        masks = (flips.to(torch.int64) * weights).sum(-1)  # distinct powers of two: the sum is an OR
        return self._back(words ^ masks, np.asarray(codes))

    def _bit_masks(self, index: np.ndarray, bit: np.ndarray, size: int, *, parity: bool):
        """int64 mask per word with the listed bits set (``parity``: bits listed an odd number of times)."""
        torch = self.torch
        key = self._t(index.astype(np.int64)) * 64 + self._t(bit.astype(np.int64))
        uniq, counts = torch.unique(key, return_counts=True)
        if parity:
            uniq = uniq[counts % 2 == 1]
        masks = torch.zeros(size, dtype=torch.int64, device=self._device)
        one = torch.ones_like(uniq)
        return masks.index_add_(0, uniq // 64, one << (uniq % 64))  # distinct bits: the sum is an OR

    def apply_faults(self, codes: np.ndarray, faults: FaultList, *, nbits: int) -> np.ndarray:
        """Flips XORed in (pairs cancel), then stuck-at-0 bits cleared and stuck-at-1 bits set."""
        codes = np.asarray(codes)
        flat = self._int64(codes.reshape(-1))
        kind = np.array(faults.kind, dtype=object)
        index, bit = np.asarray(faults.index), np.asarray(faults.bit)
        for k in ("flip", "stuck0", "stuck1"):
            sel = kind == k
            if not sel.any():
                continue
            mask = self._bit_masks(index[sel], bit[sel], flat.numel(), parity=(k == "flip"))
            flat = flat ^ mask if k == "flip" else (flat & ~mask if k == "stuck0" else flat | mask)
        return self._back(flat, codes).reshape(codes.shape)

    # ---------------------------------------------------------------------------------- quantizer
    def _f32(self, value: float):
        """A 0-d float32 tensor: the value rounded to float32 once (the reference's scalars)."""
        return self.torch.tensor(value, dtype=self.torch.float32, device=self._device)

    def _t_quant_round(self, s):
        """Round to nearest, ties to even (``torch.round``)."""
        return self.torch.round(s)

    def _levels(self, t, q: float, step: float, config: Mapping[str, Any]):
        """Codes of float32 ``t`` on the grid ``k * step`` clipped to ``[-q, q]`` (the published code)."""
        torch = self.torch
        nbits = config["nbits"]
        q_t, step_t = self._f32(q), self._f32(step)
        s = torch.zeros_like(t) if step == 0 else torch.clamp(t, -q_t, q_t) / step_t
        if config.get("code", "offset_binary") == "offset_binary":
            u = torch.clamp(s + self._f32(2.0 ** (nbits - 1)), self._f32(0.0), self._f32(2.0**nbits - 1))
            if config.get("rounding", "nearest_even") == "nearest_even":
                u = self._t_quant_round(u)
            return u.to(torch.int64)  # truncation toward zero
        v = (
            self._t_quant_round(s)
            if config.get("rounding", "nearest_even") == "nearest_even"
            else torch.trunc(s)
        )
        v = torch.clamp(v, -(2.0 ** (nbits - 1)), 2.0 ** (nbits - 1) - 1).to(torch.int64)
        return v & ((1 << nbits) - 1)  # the low nbits bits: two's complement

    def tensor_quantize(self, xt, config: Mapping[str, Any]):
        """Codes (an int64 tensor) and context of float32 tensor ``xt``: the published quantizer in torch
        (tensors in and out; :mod:`saf_ref.testing.torch_replay` uses it)."""
        torch = self.torch
        cfg = dict(config)
        nbits, margin = cfg["nbits"], cfg.get("margin", 0.0)
        levels = (1 << (nbits - 1)) - 1
        f32 = np.float32
        if cfg.get("scheme", "asymmetric") == "symmetric":
            if cfg.get("max_abs") is not None:
                q64 = cfg["max_abs"]
                step = float(f32((cfg["max_abs"] + margin) / levels))
            else:
                q64 = float(xt.abs().max()) + margin
                if cfg.get("clip") is not None:
                    q64 = min(q64, cfg["clip"])
                step = float(f32(q64 / levels))
            q = float(f32(q64))
            codes = self._levels(xt, q, step, cfg)
            context = dict(
                scheme="symmetric", code=cfg["code"], nbits=nbits, q=q, step=step, min=None, max=None
            )
        else:
            if cfg.get("clip") is not None:
                c = self._f32(cfg["clip"])
                xt = torch.clamp(xt, -c, c)
            lo, hi = xt.min(), xt.max()
            width = float(f32(float(hi) - float(lo)))
            if width == 0:
                t = torch.zeros_like(xt)
            else:
                t = (xt - lo) / self._f32(width) * self._f32(2.0) - self._f32(1.0)
            step = float(f32((1.0 + margin) / levels))
            codes = self._levels(t, 1.0, step, cfg)
            context = dict(
                scheme="asymmetric",
                code=cfg["code"],
                nbits=nbits,
                q=1.0,
                step=step,
                min=float(lo),
                max=float(hi),
            )
        return codes, context

    def quantize(self, x: np.ndarray, config: Mapping[str, Any]):
        """Stutz et al.'s per-tensor quantizer in float32 torch arithmetic; scalars formed in float64."""
        codes, context = self.tensor_quantize(self._t(x), config)
        container = np.uint8 if config["nbits"] <= 8 else np.uint16
        return codes.cpu().numpy().astype(container), context

    def _t_dequantize(self, words, context: Mapping[str, Any]):
        """float32 ``clip(k * step, -q, q)`` for the levels ``k`` stored in the int64 tensor ``words``."""
        torch = self.torch
        nbits = context["nbits"]
        if context["code"] == "offset_binary":
            k = torch.clamp(words, max=(1 << nbits) - 1).to(torch.float32) - self._f32(2.0 ** (nbits - 1))
        else:
            k = torch.where(words >= (1 << (nbits - 1)), words - (1 << nbits), words).to(torch.float32)
        q = self._f32(context["q"])
        y = torch.clamp(k * self._f32(context["step"]), -q, q)
        if context["scheme"] == "asymmetric":
            lo, hi = self._f32(context["min"]), self._f32(context["max"])
            width = self._f32(float(np.float32(context["max"] - context["min"])))
            y = (y + self._f32(1.0)) / self._f32(2.0)
            y = torch.clamp(y * width + lo, lo, hi)
        return y

    def dequantize(self, codes, context, config):
        """float32 ``clip(k * step, -q, q)`` for the stored level ``k`` (asymmetric: mapped to [min, max])."""
        return self._np(self._t_dequantize(self._int64(codes), context))

    # ---------------------------------------------------------------------------------- MX blocks
    def _mx(self, format_name: str) -> tuple[str, int, int, int, int]:
        if format_name not in MX_ELEMENTS:
            raise NotImplementedError(f"TorchBackend: no MX format {format_name!r}")
        element = MX_ELEMENTS[format_name][0]
        if element.startswith("float8") and not hasattr(self.torch, element):
            raise NotImplementedError(f"TorchBackend: this torch has no {element}")
        return MX_ELEMENTS[format_name]

    def _t_pow2(self, e):
        """float64 ``2**e`` for an int64 tensor ``e`` in [-1022, 1023], built from its bits (exact)."""
        return ((e + 1023) << 52).view(self.torch.float64)

    def _t_mx_values(self, format_name: str):
        """float64 value of every element code (index = code): torch's own float8 decoding for MXFP8, the
        sign-exponent-mantissa formula for FP6/FP4 (no torch dtype), ``k / 64`` (two's complement) for
        INT8."""
        torch = self.torch
        element, w, E, M, _ = self._mx(format_name)
        codes = torch.arange(1 << w, dtype=torch.int64, device=self._device)
        if format_name == "mxint8":
            return torch.where(codes >= 128, codes - 256, codes).to(torch.float64) / 64
        if w == 8:
            return codes.to(torch.uint8).view(getattr(torch, element)).to(torch.float64)
        bias = (1 << (E - 1)) - 1
        e, m = (codes >> M) & ((1 << E) - 1), codes & ((1 << M) - 1)
        # e = 0: 0.m * 2**(1 - bias); else 1.m * 2**(e - bias): an integer significand times a power of two
        sig = torch.where(e == 0, m, m + (1 << M)).to(torch.float64)
        mag = sig * self._t_pow2(torch.clamp(e, min=1) - bias - M)
        return torch.where((codes >> (w - 1)) == 1, -mag, mag)

    def _t_mx_round(self, y, format_name: str):
        """Element codes (int64) of float64 ``y``: round to nearest, ties to even, saturating at the largest
        element; the sign of a zero kept (INT8 has no -0).

        MXFP8: a torch cast after clamping (``round(clamp(y)) = saturate(round(y))``, the largest value being
        representable) and rounding to odd in float32 (torch casts float64 through float32). FP6/FP4: the
        nearest entry of the table of non-negative values, ties to the even code, found by comparing with
        the midpoint of its neighbours (exact in float64). INT8: ``torch.round(64 y)`` (half to even).
        """
        torch = self.torch
        element, w, _, _, _ = self._mx(format_name)
        if format_name == "mxint8":
            return torch.clamp(torch.round(y * 64), -127, 127).to(torch.int64) & 0xFF
        if w == 8:
            dtype = getattr(torch, element)
            big = float(torch.finfo(dtype).max)
            narrow = round_to_odd_float32(torch.clamp(y, -big, big))
            return narrow.to(dtype).view(torch.uint8).to(torch.int64)
        table = self._t_mx_values(format_name)[: 1 << (w - 1)]  # codes 0 .. 2**(w-1) - 1: ascending values
        n, a = table.numel(), y.abs()
        hi = torch.clamp(torch.searchsorted(table, a), max=n - 1)  # first entry >= a (the largest if none)
        lo = torch.clamp(hi - 1, min=0)
        mid = (table[lo] + table[hi]) / 2
        up = (a > mid) | ((a == mid) & (hi % 2 == 0))
        mag = torch.where(up | (a >= table[hi]), hi, lo)
        return mag | (torch.signbit(y).to(torch.int64) << (w - 1))

    def tensor_mx_encode(self, blocks, format_name: str):
        """``(scales, elements)`` (int64) of float blocks ``(..., 32)`` (the MX conversion, OCP MX v1.0 6.3).

        ``shared = floor(log2 max|V|) - emax_elem`` from ``torch.frexp`` (exact), -127 for a block of zeros
        and clamped below at -127; a block with a NaN or an infinity, or ``shared > 127``, has scale 0xFF
        (NaN) and elements 0; else the elements are ``V / 2**shared`` (exact: a power of two) rounded.
        """
        torch = self.torch
        emax = self._mx(format_name)[4]
        v = blocks.to(torch.float64)  # exact
        finite = torch.isfinite(v)
        v = torch.where(finite, v, torch.zeros_like(v))
        amax = v.abs().amax(dim=-1)
        _, e = torch.frexp(amax)  # amax = f * 2**e, f in [0.5, 1): floor(log2 amax) = e - 1
        shared = torch.where(amax > 0, e.to(torch.int64) - 1 - emax, -127)
        nan = ~finite.all(dim=-1) | (shared > 127)
        shared = torch.clamp(shared, -127, 127)
        elements = self._t_mx_round(v * self._t_pow2(-shared)[..., None], format_name)
        scales = torch.where(nan, 0xFF, shared + 127)
        return scales, torch.where(nan[..., None], 0, elements)

    def tensor_mx_decode(self, scales, elements, format_name: str):
        """float64 ``2**(scale - 127) * element`` (exact); NaN blocks (scale 0xFF) and NaN elements are the
        canonical quiet NaN, positive for a NaN scale, with the element's sign for a NaN element."""
        torch = self.torch
        w = self._mx(format_name)[1]
        p = self._t_mx_values(format_name)[elements]
        v = p * self._t_pow2(torch.clamp(scales, max=254) - 127)[..., None]
        nan_scale = (scales == 0xFF)[..., None]
        sign = torch.where(nan_scale, 0, (elements >> (w - 1)) & 1) << 63
        nan = (sign | (0x7FF8 << 48)).view(torch.float64)
        return torch.where(torch.isnan(v) | nan_scale, nan, v)

    def _mx_blocks(self, format_name: str, shape: tuple[int, ...], what: str) -> None:
        if len(shape) == 0 or shape[-1] % MX_BLOCK:
            raise ValueError(f"TorchBackend.{what}: the last axis must be a multiple of {MX_BLOCK} (blocks), "
                             f"got shape {shape}")

    def mx_encode(self, format_name: str, x: np.ndarray):
        """``(scales, elements)`` as uint8: blocks of 32 along the last axis of float32/float64 ``x``."""
        x = np.asarray(x)
        self._mx(format_name)
        self._mx_blocks(format_name, x.shape, "mx_encode")
        blocks = self._t(x).reshape(*x.shape[:-1], -1, MX_BLOCK)
        scales, elements = self.tensor_mx_encode(blocks, format_name)
        return (self._np(scales).astype(np.uint8).reshape(*x.shape[:-1], -1),
                self._np(elements).astype(np.uint8).reshape(x.shape))

    def mx_decode(self, format_name: str, scales: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """float64 values of blocks of 32 element codes (last axis) under their E8M0 scales."""
        elements = np.asarray(elements)
        self._mx(format_name)
        self._mx_blocks(format_name, elements.shape, "mx_decode")
        el = self._int64(elements).reshape(*elements.shape[:-1], -1, MX_BLOCK)
        values = self.tensor_mx_decode(self._int64(scales), el, format_name)
        return self._np(values).reshape(elements.shape)

    # ------------------------------------------------------------------------------------- protect
    def _t_transform(self, name: str, u, scale: float):
        """``a f(u / a)`` with torch's elementwise functions (autograd supplies the derivative)."""
        torch, F = self.torch, self.F
        if name == "identity":
            return u.clone()
        if name == "hardtanh":
            return F.hardtanh(u, -scale, scale)
        f = {"tanh": torch.tanh, "arctan": torch.atan, "softsign": F.softsign}.get(name)
        if f is None:
            raise NotImplementedError(f"TorchBackend: no transform {name!r}")
        return f(u) if scale == 1.0 else scale * f(u / scale)

    def transform_forward(self, name, u, *, scale):
        with self._flags():
            return self._np(self._t_transform(name, self._t(u), scale))

    def transform_vjp(self, name, u, dw, *, scale):
        with self._flags():
            (tu,) = self._leaves(u)
            return self._grads(self._t_transform(name, tu, scale), dw, tu)[0]

    # ------------------------------------------------------------------------------------------ nn
    def _t_conv2d(self, x, w, b, stride, padding):
        return self.F.conv2d(x, w, b, stride=tuple(stride), padding=tuple(padding))

    def _t_linear(self, x, w, b):
        return self.F.linear(x, w, b)

    def _t_batch_norm(self, x, weight, bias, running_mean, running_var, train, momentum, eps):
        """``F.batch_norm``; updates ``running_mean`` / ``running_var`` (our own copies) in place."""
        return self.F.batch_norm(x, running_mean, running_var, weight, bias, train, momentum, eps)

    def _t_group_norm(self, x, weight, bias, num_groups, eps):
        return self.F.group_norm(x, num_groups, weight, bias, eps)

    def _t_relu(self, x):
        return self.torch.relu(x)

    def _t_max_pool2d(self, x, kernel_size, stride, padding):
        return self.F.max_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding))

    def _t_global_avgpool(self, x):
        return self.F.adaptive_avg_pool2d(x, 1).flatten(1)

    def _t_cross_entropy(self, logits, labels, label_smoothing):
        return self.F.cross_entropy(logits, labels, label_smoothing=label_smoothing)

    def conv2d_forward(self, x, w, b, *, stride, padding):
        with self._flags():
            return self._np(
                self._t_conv2d(self._t(x), self._t(w), None if b is None else self._t(b), stride, padding)
            )

    def conv2d_vjp(self, x, w, b, dy, *, stride, padding):
        with self._flags():
            tx, tw, tb = self._leaves(x, w, b)
            return self._grads(self._t_conv2d(tx, tw, tb, stride, padding), dy, tx, tw, tb)

    def linear_forward(self, x, w, b):
        with self._flags():
            return self._np(self._t_linear(self._t(x), self._t(w), None if b is None else self._t(b)))

    def linear_vjp(self, x, w, b, dy):
        with self._flags():
            tx, tw, tb = self._leaves(x, w, b)
            return self._grads(self._t_linear(tx, tw, tb), dy, tx, tw, tb)

    def batchnorm2d_forward(self, x, weight, bias, running_mean, running_var, *, train, momentum, eps):
        with self._flags():
            rm, rv = self._t(running_mean), self._t(running_var)
            y = self._t_batch_norm(self._t(x), self._t(weight), self._t(bias), rm, rv, train, momentum, eps)
            return self._np(y), self._np(rm), self._np(rv)

    def batchnorm2d_vjp(self, x, weight, bias, running_mean, running_var, dy, *, train, momentum, eps):
        with self._flags():
            tx, tw, tb = self._leaves(x, weight, bias)
            rm, rv = self._t(running_mean), self._t(running_var)
            y = self._t_batch_norm(tx, tw, tb, rm, rv, train, momentum, eps)
            return self._grads(y, dy, tx, tw, tb)

    def groupnorm_forward(self, x, weight, bias, *, num_groups, eps):
        with self._flags():
            return self._np(self._t_group_norm(self._t(x), self._t(weight), self._t(bias), num_groups, eps))

    def groupnorm_vjp(self, x, weight, bias, dy, *, num_groups, eps):
        with self._flags():
            tx, tw, tb = self._leaves(x, weight, bias)
            return self._grads(self._t_group_norm(tx, tw, tb, num_groups, eps), dy, tx, tw, tb)

    def relu_forward(self, x):
        with self._flags():
            return self._np(self._t_relu(self._t(x)))

    def relu_vjp(self, x, dy):
        with self._flags():
            (tx,) = self._leaves(x)
            return self._grads(self._t_relu(tx), dy, tx)[0]

    def maxpool2d_forward(self, x, *, kernel_size, stride, padding):
        with self._flags():
            return self._np(self._t_max_pool2d(self._t(x), kernel_size, stride, padding))

    def maxpool2d_vjp(self, x, dy, *, kernel_size, stride, padding):
        with self._flags():
            (tx,) = self._leaves(x)
            return self._grads(self._t_max_pool2d(tx, kernel_size, stride, padding), dy, tx)[0]

    def global_avgpool_forward(self, x):
        with self._flags():
            return self._np(self._t_global_avgpool(self._t(x)))

    def global_avgpool_vjp(self, x, dy):
        with self._flags():
            (tx,) = self._leaves(x)
            return self._grads(self._t_global_avgpool(tx), dy, tx)[0]

    def cross_entropy_forward(self, logits, labels, *, label_smoothing):
        with self._flags():
            return self._np(self._t_cross_entropy(self._t(logits), self._t(labels), label_smoothing))

    def cross_entropy_vjp(self, logits, labels, dloss, *, label_smoothing):
        with self._flags():
            (tz,) = self._leaves(logits)
            loss = self._t_cross_entropy(tz, self._t(labels), label_smoothing)
            return self._grads(loss, np.asarray(dloss, dtype=logits.dtype), tz)[0]

    # --------------------------------------------------------------------------------------- train
    def sgd(
        self,
        params: Mapping[str, np.ndarray],
        grads: Sequence[Mapping[str, np.ndarray]],
        *,
        lr: float,
        momentum: float,
        dampening: float,
        weight_decay: float,
        nesterov: bool,
    ) -> dict[str, np.ndarray]:
        """``torch.optim.SGD`` from a fresh state, ``len(grads)`` steps."""
        with self._flags():
            tensors = {k: self._t(v, grad=True) for k, v in params.items()}
            opt = self.torch.optim.SGD(
                list(tensors.values()),
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
            )
            for g in grads:
                for k, t in tensors.items():
                    t.grad = self._t(g[k])
                opt.step()
            return {k: self._np(t) for k, t in tensors.items()}

    # --------------------------------------------------------------------------------------- model
    def _t_resnet(self, arch: str, weights: dict, stats: dict, x, train: bool):
        """A torchvision-style ResNet from its parameter names, with the tensor hooks of this class."""
        imagenet = arch == "resnet18"

        def conv_bn(h, conv: str, bn: str, stride: int, padding: int):
            h = self._t_conv2d(h, weights[conv + ".weight"], None, (stride, stride), (padding, padding))
            return self._t_batch_norm(
                h,
                weights[bn + ".weight"],
                weights[bn + ".bias"],
                stats[bn + ".running_mean"],
                stats[bn + ".running_var"],
                train,
                0.1,
                1e-5,
            )

        h = self._t_relu(conv_bn(x, "conv1", "bn1", 2 if imagenet else 1, 3 if imagenet else 1))
        if imagenet:
            h = self._t_max_pool2d(h, (3, 3), (2, 2), (1, 1))
        blocks = sorted((int(m[1]), int(m[2])) for m in map(_BLOCK.match, weights) if m)
        for stage, block in blocks:
            p = f"layer{stage}.{block}."
            stride = 2 if (block == 0 and stage > 1) else 1
            out = self._t_relu(conv_bn(h, p + "conv1", p + "bn1", stride, 1))
            out = conv_bn(out, p + "conv2", p + "bn2", 1, 1)
            if p + "downsample.0.weight" in weights:
                h = conv_bn(h, p + "downsample.0", p + "downsample.1", stride, 0)
            h = self._t_relu(out + h)
        return self._t_linear(self._t_global_avgpool(h), weights["fc.weight"], weights["fc.bias"])

    def model_forward_backward(self, arch, params, state, x, labels, *, train):
        """Forward, mean cross-entropy and autograd backward of the model given by its state dict."""
        if arch not in ("resnet20", "resnet18_cifar", "resnet18"):
            raise NotImplementedError(f"TorchBackend: unknown architecture {arch!r}")
        with self._flags():
            weights = {k: self._t(v, grad=True) for k, v in params.items()}
            stats = {k: self._t(v) for k, v in state.items()}
            logits = self._t_resnet(arch, weights, stats, self._t(x), train)
            loss = self._t_cross_entropy(logits, self._t(labels), 0.0)
            loss.backward()
            grads = {k: self._np(t.grad) for k, t in weights.items()}
            return ModelResult(
                self._np(logits), self._np(loss), {k: self._np(v) for k, v in stats.items()}, grads
            )
