"""An independent NumPy backend of the oracle kit, written from the specification, not from saf_ref's code.

:class:`~saf_ref.testing.numpy_backend.NumpyBackend` calls saf_ref's own functions, so its exact checks
compare saf_ref with itself and cannot fail. This backend re-implements every method of the protocol
(:mod:`saf_ref.testing.protocol`) from the documented mathematics (DESIGN.md, the docstrings of the
protocol, and the formats' and quantizer's published definitions) in plain NumPy, importing nothing of
saf_ref's implementation: the codecs from the field layout of each format, fault injection with integer
masks, the quantizer from its formula, conv2d through sliding windows, batch norm and cross-entropy from
their textbook definitions, SGD from PyTorch's update rule, and a ResNet whose backward pass is written
by hand. It passes the whole suite with ``--strict --nan-payloads strict`` (no known divergence), so it
is the subject of the suite's measured mutation score (``scripts/mutate.py`` mutates this file) and the
base of the hand-written mutants that run without PyTorch (:mod:`saf_ref.testing.mutants`).

Everything is computed in the backend's dtype (float32 by default), except the weight transforms,
which the specification defines in float64 rounded once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from saf_ref.testing.protocol import DEFAULT_ROUNDOFF, ModelResult

__all__ = ["MX_SPEC", "ReferenceBackend", "SPEC_FORMATS"]

#: name -> (exponent bits, mantissa bits, has infinity, container, decoded dtype): the IEEE layouts
SPEC_FORMATS: dict[str, tuple[int, int, bool, type, type]] = {
    "float32": (8, 23, True, np.uint32, np.float32),
    "float16": (5, 10, True, np.uint16, np.float16),
    "bfloat16": (8, 7, True, np.uint16, np.float32),
    "float8_e4m3fn": (4, 3, False, np.uint8, np.float32),
    "float8_e5m2": (5, 2, True, np.uint8, np.float32),
}
#: MX format (OCP MX v1.0) -> (element exponent bits E, mantissa bits m, kind): "e4m3" (S.1111.111 is NaN,
#: no infinity), "ieee" (the top binade holds infinity and NaNs), "fn" (no special codes), "int8" (two's
#: complement k, value k / 64)
MX_SPEC: dict[str, tuple[int, int, str]] = {
    "mxfp8_e4m3": (4, 3, "e4m3"),
    "mxfp8_e5m2": (5, 2, "ieee"),
    "mxfp6_e2m3": (2, 3, "fn"),
    "mxfp6_e3m2": (3, 2, "fn"),
    "mxfp4": (2, 1, "fn"),
    "mxint8": (1, 6, "int8"),
}
#: canonical quiet NaN bits (sign clear) of the decoded dtypes
_QUIET_NAN = {np.dtype(np.float16): 0x7E00, np.dtype(np.float32): 0x7FC00000}
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.conv1\.weight$")


class _Layout:
    """The fields of an IEEE-style format: sign, ``E`` exponent bits (bias ``2**(E-1) - 1``), ``m`` bits."""

    def __init__(self, name: str) -> None:
        if name not in SPEC_FORMATS:
            raise NotImplementedError(f"ReferenceBackend: unknown format {name!r}")
        self.E, self.m, self.has_inf, self.container, self.out = SPEC_FORMATS[name]
        self.nbits = 1 + self.E + self.m
        self.bias = (1 << (self.E - 1)) - 1
        self.emin = 1 - self.bias
        self.exp_ones = (1 << self.E) - 1
        if self.has_inf:
            self.inf_code = self.exp_ones << self.m
            self.nan_code = self.inf_code | (1 << (self.m - 1))
            self.max_code = self.inf_code - 1
        else:  # float8_e4m3fn: S.1111.111 is the only NaN and there is no infinity
            self.nan_code = (1 << (self.nbits - 1)) - 1
            self.inf_code = self.nan_code
            self.max_code = self.nan_code - 1


class _MXElement:
    """An MX element format's fields: ``w`` bits, bias ``2**(E-1) - 1``, ``emax`` (the exponent of its
    largest normal binade) and the largest finite magnitude code."""

    def __init__(self, name: str) -> None:
        if name not in MX_SPEC:
            raise NotImplementedError(f"ReferenceBackend: unknown MX format {name!r}")
        self.E, self.m, self.kind = MX_SPEC[name]
        self.w = 1 + self.E + self.m
        self.bias = (1 << (self.E - 1)) - 1
        top = (1 << self.E) - 1  # the largest exponent field
        if self.kind == "int8":
            self.emax, self.max_code = 0, 127  # 127 / 64 < 2
        elif self.kind == "ieee":
            self.emax, self.max_code = top - 1 - self.bias, (top << self.m) - 1
        elif self.kind == "e4m3":
            self.emax, self.max_code = top - self.bias, (1 << (self.w - 1)) - 2
        else:
            self.emax, self.max_code = top - self.bias, (1 << (self.w - 1)) - 1


def _mx_blocks(a: np.ndarray) -> np.ndarray:
    """``a`` as rows of 32 (blocks along its last axis, whose length must be a multiple of 32)."""
    if a.ndim == 0 or a.shape[-1] % 32:
        raise ValueError(f"ReferenceBackend: the last axis must be a multiple of 32, got shape {a.shape}")
    return a.reshape(-1, 32)


class ReferenceBackend:
    """The backend protocol implemented from its specification in NumPy (see the module docstring).

    Parameters
    ----------
    dtype : {"float32", "float64"}
        dtype of the network ops.
    """

    def __init__(self, *, dtype: str = "float32", device: str = "cpu") -> None:
        if str(dtype) not in DEFAULT_ROUNDOFF:
            raise ValueError(
                f"ReferenceBackend: dtype must be one of {tuple(DEFAULT_ROUNDOFF)}, got {dtype!r}"
            )
        if device != "cpu":
            raise ValueError(f"ReferenceBackend: device must be 'cpu', got {device!r}")
        self.name = "reference (numpy, from the spec)"
        self.dtype = str(dtype)
        self.device = device

    def unit_roundoff(self, dtype: str) -> float:
        return DEFAULT_ROUNDOFF[dtype]

    # ============================================================================================ bits
    def encode(self, format_name: str, x: np.ndarray) -> np.ndarray:
        """Round to nearest even, once, from the exact float64 value of ``x``.

        With ``E = max(floor(log2 |x|), emin)`` the quantum is ``2**(E - m)``; ``q = rint(|x| / quantum)``
        and the magnitude code is ``(E + bias - 1) * 2**m + q`` (a subnormal has ``E = emin``, so its code
        is ``q``; a carry of ``q`` into ``2**(m+1)`` moves to the next binade by itself). Codes past the
        largest finite one overflow to infinity (NaN for float8_e4m3fn); NaN becomes the quiet NaN of its
        sign.
        """
        f = _Layout(format_name)
        with np.errstate(invalid="ignore"):  # a signalling NaN widens to a quiet one, with a warning
            v = np.asarray(x).astype(np.float64)
        negative = np.signbit(v)
        nan, inf = np.isnan(v), np.isinf(v)
        a = np.where(nan | inf, 0.0, np.abs(v))
        _, e = np.frexp(a)  # a = frac * 2**e with frac in [0.5, 1)
        binade = np.where(a == 0, f.emin, np.maximum(e - 1, f.emin))
        q = np.rint(np.ldexp(a, f.m - binade))
        mag = (binade + f.bias - 1).astype(np.float64) * 2.0**f.m + q
        mag = np.where(mag > f.max_code, f.inf_code, mag)
        mag = np.where(inf, f.inf_code, mag)
        mag = np.where(nan, f.nan_code, mag).astype(np.uint64)
        sign = negative.astype(np.uint64) << np.uint64(f.nbits - 1)
        return (mag | sign).astype(f.container)

    def decode(self, format_name: str, codes: np.ndarray) -> np.ndarray:
        """``(-1)**s * 2**(e - bias) * 1.f`` (normal), ``(-1)**s * 2**emin * 0.f`` (e = 0), specials."""
        f = _Layout(format_name)
        c = np.asarray(codes).astype(np.int64)
        sign = (c >> (f.nbits - 1)) & 1
        exp = (c >> f.m) & f.exp_ones
        man = c & ((1 << f.m) - 1)
        sig = np.where(exp == 0, man, man + (1 << f.m)).astype(np.float64)
        value = np.ldexp(sig, np.maximum(exp, 1) - f.bias - f.m)
        if f.has_inf:
            value = np.where(exp == f.exp_ones, np.where(man == 0, np.inf, np.nan), value)
        else:
            value = np.where((c & f.nan_code) == f.nan_code, np.nan, value)
        value = np.where(sign == 1, -value, value)
        out = value.astype(f.out)
        bits_dtype = np.dtype(f"u{out.dtype.itemsize}")
        nan_bits = (sign.astype(np.uint64) << np.uint64(8 * out.dtype.itemsize - 1)) | np.uint64(
            _QUIET_NAN[out.dtype]
        )
        bits = np.where(np.isnan(value), nan_bits.astype(bits_dtype), out.view(bits_dtype))
        return np.array(bits, order="C").view(f.out)

    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        """Flip bit ``j`` (LSB first) where ``uniform[..., j] < float32(p)`` and ``j`` is not protected."""
        nbits = uniform.shape[-1]
        flips = uniform < np.float32(p)
        weights = np.uint64(1) << np.arange(nbits, dtype=np.uint64)
        if protected is not None:
            flips = flips & ((weights & np.uint64(int(protected))) == 0)
        mask = np.bitwise_or.reduce(np.where(flips, weights, np.uint64(0)), axis=-1)
        return (np.asarray(codes).astype(np.uint64) ^ mask).astype(codes.dtype)

    def apply_faults(self, codes: np.ndarray, faults: Any, *, nbits: int) -> np.ndarray:
        """Records index the codes in C order; flips XOR (pairs cancel), then stuck-at-0, then stuck-at-1."""
        flat = np.array(codes, dtype=np.uint64).reshape(-1)
        records = list(zip(faults.index, faults.bit, faults.kind, strict=True))
        for want in ("flip", "stuck0", "stuck1"):
            for index, bit, kind in records:
                if kind != want:
                    continue
                one = np.uint64(1) << np.uint64(int(bit))
                if kind == "flip":
                    flat[int(index)] ^= one
                elif kind == "stuck0":
                    flat[int(index)] &= ~one
                else:
                    flat[int(index)] |= one
        return flat.astype(codes.dtype).reshape(np.shape(codes))

    # ---------------------------------------------------------------------------------- MX blocks
    def mx_encode(self, format_name: str, x: np.ndarray):
        """Per block of 32: ``shared = floor(log2 max|V|) - emax`` (clamped below at -127; -127 for zeros),
        scale code ``shared + 127``, NaN (0xFF, elements 0) for a non-finite block or ``shared > 127``;
        elements ``V / 2**shared`` rounded once (nearest even) to the element's grid, saturating."""
        f = _MXElement(format_name)
        with np.errstate(invalid="ignore"):  # a signalling NaN widens to a quiet one, with a warning
            v = _mx_blocks(np.asarray(x).astype(np.float64))
        finite = np.isfinite(v)
        v = np.where(finite, v, 0.0)
        amax = np.abs(v).max(axis=1)
        _, e = np.frexp(amax)  # amax = frac * 2**e, frac in [0.5, 1)
        shared = np.where(amax > 0, e - 1 - f.emax, -127)
        nan = ~finite.all(axis=1) | (shared > 127)
        shared = np.clip(shared, -127, 127)
        codes = self._mx_round(f, np.ldexp(v, -shared[:, None]))  # exact: a power of two
        codes = np.where(nan[:, None], 0, codes)
        scales = np.where(nan, 0xFF, shared + 127)
        shape = np.shape(x)
        return (scales.astype(np.uint8).reshape(shape[:-1] + (shape[-1] // 32,)),
                codes.astype(np.uint8).reshape(shape))

    @staticmethod
    def _mx_round(f: _MXElement, y: np.ndarray) -> np.ndarray:
        """Element codes of ``y``: the quantum of ``|y|``'s binade (subnormals: the smallest binade's),
        ``q = rint(|y| / quantum)``, the magnitude code ``(binade + bias - 1) * 2**m + q``, saturating at the
        largest finite code, and the sign bit (kept for a zero); INT8: ``rint(64 |y|)``, two's complement."""
        a = np.abs(y)
        if f.kind == "int8":
            k = np.minimum(np.rint(np.ldexp(a, 6)), f.max_code).astype(np.int64)
            return np.where(np.signbit(y), -k, k) & 0xFF
        _, e = np.frexp(a)
        emin = 1 - f.bias
        binade = np.where(a == 0, emin, np.maximum(e - 1, emin))
        q = np.rint(np.ldexp(a, f.m - binade))
        mag = np.minimum((binade + f.bias - 1) * 2.0**f.m + q, f.max_code).astype(np.int64)
        return mag | (np.signbit(y).astype(np.int64) << (f.w - 1))

    def mx_decode(self, format_name: str, scales: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """``2**(scale - 127) * P``: ``P = (-1)**s 2**(e - bias) 1.f`` (``e = 0``: ``2**(1 - bias) 0.f``), the
        specials of e4m3 / e5m2, ``k / 64`` for INT8; a NaN element is the quiet NaN of its sign, and a
        block with scale 0xFF the positive quiet NaN."""
        f = _MXElement(format_name)
        c = _mx_blocks(np.asarray(elements).astype(np.int64))
        sign = (c >> (f.w - 1)) & 1
        if f.kind == "int8":
            p = np.where(c >= 128, c - 256, c) / 64.0
        else:
            exp, man = (c >> f.m) & ((1 << f.E) - 1), c & ((1 << f.m) - 1)
            sig = np.where(exp == 0, man, man + (1 << f.m)).astype(np.float64)
            p = np.ldexp(sig, np.maximum(exp, 1) - f.bias - f.m)
            top = (1 << f.E) - 1
            if f.kind == "ieee":
                p = np.where(exp == top, np.where(man == 0, np.inf, np.nan), p)
            elif f.kind == "e4m3":
                p = np.where((exp == top) & (man == (1 << f.m) - 1), np.nan, p)
            p = np.where(sign == 1, -p, p)  # -NaN: the quiet NaN with the sign bit
        s = np.asarray(scales).astype(np.int64).reshape(len(c), 1)
        v = np.ldexp(p, np.minimum(s, 254) - 127)
        return np.where(s == 0xFF, np.nan, v).reshape(np.shape(elements))

    # ---------------------------------------------------------------------------------- quantizer
    def _quant_round(self, s: np.ndarray) -> np.ndarray:
        """Round to nearest, ties to even (a hook: the hand-written mutants override it)."""
        return np.rint(s)

    def _levels(
        self, t: np.ndarray, q: np.float32, step: np.float32, config: Mapping[str, Any]
    ) -> np.ndarray:
        """Codes of float32 ``t`` on the grid ``k * step`` within ``[-q, q]`` (offset binary or two's)."""
        nbits = config["nbits"]
        half = np.float32(2.0 ** (nbits - 1))
        s = np.zeros_like(t) if step == 0 else np.clip(t, -q, q) / step
        container = np.uint8 if nbits <= 8 else np.uint16
        nearest = config["rounding"] == "nearest_even"
        if config["code"] == "offset_binary":
            u = np.minimum(np.maximum(s + half, np.float32(0)), np.float32(2.0**nbits - 1))
            return (self._quant_round(u) if nearest else u).astype(container)  # the cast truncates
        v = self._quant_round(s) if nearest else np.trunc(s)
        v = np.minimum(np.maximum(v, -half), half - 1).astype(np.int64)
        return (v % (1 << nbits)).astype(container)

    def quantize(self, x: np.ndarray, config: Mapping[str, Any]):
        """Stutz et al.'s per-tensor quantizer: float32 arithmetic, scalars formed in float64 once rounded."""
        cfg = dict(config)
        nbits, margin = cfg["nbits"], cfg["margin"]
        levels = 2 ** (nbits - 1) - 1
        f32 = np.float32
        if cfg["scheme"] == "symmetric":
            if cfg["max_abs"] is not None:
                q64 = cfg["max_abs"]
                step = f32((cfg["max_abs"] + margin) / levels)
            else:
                q64 = float(np.abs(x).max()) + margin
                if cfg["clip"] is not None:
                    q64 = min(q64, cfg["clip"])
                step = f32(q64 / levels)
            q = f32(q64)
            codes = self._levels(x, q, step, cfg)
            context = dict(scheme="symmetric", code=cfg["code"], nbits=nbits, q=float(q), step=float(step),
                           min=None, max=None)  # fmt: skip
            return codes, context
        if cfg["clip"] is not None:
            c = f32(cfg["clip"])
            x = np.clip(x, -c, c)
        lo, hi = x.min(), x.max()
        width = f32(float(hi) - float(lo))
        t = np.zeros_like(x) if width == 0 else ((x - lo) / width) * f32(2) - f32(1)
        step = f32((1.0 + margin) / levels)
        codes = self._levels(t, f32(1), step, cfg)
        context = dict(scheme="asymmetric", code=cfg["code"], nbits=nbits, q=1.0, step=float(step),
                       min=float(lo), max=float(hi))  # fmt: skip
        return codes, context

    def dequantize(self, codes, context, config):
        """float32 ``clip(k * step, -q, q)``; asymmetric: ``(y + 1) / 2 * (max - min) + min`` in range."""
        nbits = context["nbits"]
        f32 = np.float32
        c = np.asarray(codes).astype(np.int64)
        if context["code"] == "offset_binary":
            k = np.minimum(c, 2**nbits - 1).astype(f32) - f32(2.0 ** (nbits - 1))
        else:
            k = np.where(c >= 2 ** (nbits - 1), c - 2**nbits, c).astype(f32)
        q = f32(context["q"])
        y = np.clip(k * f32(context["step"]), -q, q)
        if context["scheme"] == "symmetric":
            return y
        lo, hi = f32(context["min"]), f32(context["max"])
        width = f32(context["max"] - context["min"])
        y = (y + f32(1)) / f32(2) * width + lo
        return np.clip(y, lo, hi)

    # ========================================================================================= protect
    @staticmethod
    def _derivative(name: str, x: np.ndarray) -> np.ndarray:
        """``f'(x)`` in float64 for ``x = |u| / a >= 0`` (or NaN)."""
        if name == "identity":
            return np.where(np.isnan(x), np.nan, 1.0)
        if name == "hardtanh":
            return np.where(np.isnan(x), np.nan, np.where(x < 1, 1.0, 0.0))
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            if name == "tanh":
                return (1 / np.cosh(x)) ** 2
            if name == "arctan":
                r = 1 / x
                return np.where(x <= 1, 1 / (1 + x * x), r * r / (1 + r * r))
            if name == "softsign":
                return (1 / (1 + x)) ** 2
        raise NotImplementedError(f"ReferenceBackend: no transform {name!r}")

    def transform_forward(self, name, u, *, scale):
        """``a f(u / a)`` in float64, rounded once; odd by construction; ``f(+-inf)`` the limit."""
        u = np.asarray(u)
        if name == "identity":
            return u.copy()
        if name == "hardtanh":
            a = u.dtype.type(scale)
            return np.minimum(np.maximum(u, -a), a)
        v = u.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.abs(v) / scale
            if name == "tanh":
                y = np.tanh(x)
            elif name == "arctan":
                y = np.arctan(x)
            elif name == "softsign":
                y = np.where(np.isinf(x), 1.0, x / (1 + x))
            else:
                raise NotImplementedError(f"ReferenceBackend: no transform {name!r}")
        return np.copysign(scale * y, v).astype(u.dtype)

    def transform_vjp(self, name, u, dw, *, scale):
        """``f'(u / a) * dw`` in float64, rounded once."""
        u = np.asarray(u)
        with np.errstate(over="ignore"):
            x = np.abs(u.astype(np.float64)) / scale
        return (self._derivative(name, x) * np.asarray(dw).astype(np.float64)).astype(u.dtype)

    # ============================================================================================== nn
    @staticmethod
    def _windows(x: np.ndarray, kernel, stride, padding, fill: float) -> np.ndarray:
        """``(N, C, Ho, Wo, kh, kw)`` windows of ``x`` padded with ``fill`` (a view where possible)."""
        (ph, pw), (sh, sw) = padding, stride
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        return sliding_window_view(xp, tuple(kernel), axis=(2, 3))[:, :, ::sh, ::sw]

    def conv2d_forward(self, x, w, b, *, stride, padding):
        """Cross-correlation ``y[n,o] = sum_{c,i,j} x_pad[n, c, s h + i, s w + j] w[o, c, i, j] + b[o]``."""
        cols = self._windows(x, w.shape[2:], stride, padding, 0.0)
        y = np.einsum("nchwij,ocij->nohw", cols, w)
        if b is not None:
            y = y + b[None, :, None, None]
        return y.astype(x.dtype)

    def conv2d_vjp(self, x, w, b, dy, *, stride, padding):
        """``dw = sum dy * windows``, ``db = sum dy``, ``dx`` scattered back window offset by offset."""
        (sh, sw), (ph, pw) = stride, padding
        kh, kw = w.shape[2:]
        cols = self._windows(x, (kh, kw), stride, padding, 0.0)
        dw = np.einsum("nchwij,nohw->ocij", cols, dy).astype(x.dtype)
        db = None if b is None else dy.sum(axis=(0, 2, 3)).astype(x.dtype)
        n, c, h, wid = x.shape
        ho, wo = dy.shape[2:]
        dxp = np.zeros((n, c, h + 2 * ph, wid + 2 * pw), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw] += np.einsum(
                    "nohw,oc->nchw", dy, w[:, :, i, j]
                )
        return dxp[:, :, ph : ph + h, pw : pw + wid].copy(), dw, db

    def linear_forward(self, x, w, b):
        y = x @ w.T
        return y if b is None else y + b

    def linear_vjp(self, x, w, b, dy):
        return dy @ w, dy.T @ x, None if b is None else dy.sum(axis=0)

    @staticmethod
    def _per_channel(v: np.ndarray) -> np.ndarray:
        return v[None, :, None, None]

    def batchnorm2d_forward(self, x, weight, bias, running_mean, running_var, *, train, momentum, eps):
        """Training: batch mean and biased variance normalise, the running variance takes the unbiased one;
        evaluation: the running statistics normalise and are returned unchanged."""
        pc = self._per_channel
        if not train:
            y = (x - pc(running_mean)) / np.sqrt(pc(running_var) + eps) * pc(weight) + pc(bias)
            return y.astype(x.dtype), running_mean.copy(), running_var.copy()
        n = x.size // x.shape[1]
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - pc(mean)) ** 2).mean(axis=(0, 2, 3))
        y = (x - pc(mean)) / np.sqrt(pc(var) + eps) * pc(weight) + pc(bias)
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * var * (n / (n - 1))
        return y.astype(x.dtype), new_mean.astype(x.dtype), new_var.astype(x.dtype)

    def batchnorm2d_vjp(self, x, weight, bias, running_mean, running_var, dy, *, train, momentum, eps):
        """``dx = w / s (dy - mean(dy) - x_hat mean(dy x_hat))`` in training, ``w / s dy`` in evaluation."""
        pc, axes = self._per_channel, (0, 2, 3)
        if train:
            mean = x.mean(axis=axes)
            var = ((x - pc(mean)) ** 2).mean(axis=axes)
        else:
            mean, var = running_mean, running_var
        inv = 1 / np.sqrt(var + eps)
        x_hat = (x - pc(mean)) * pc(inv)
        dweight = (dy * x_hat).sum(axis=axes)
        dbias = dy.sum(axis=axes)
        if train:
            n = x.size // x.shape[1]
            dx = pc(weight * inv) * (dy - pc(dbias / n) - x_hat * pc(dweight / n))
        else:
            dx = dy * pc(weight * inv)
        return dx.astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype)

    @staticmethod
    def _group_stats(x: np.ndarray, num_groups: int, eps: float):
        """``(x_hat, inv_std, groups)`` per sample and group of consecutive channels (biased variance, two
        passes); ``groups`` is the shape ``(N, G, values per group)``."""
        groups = (x.shape[0], num_groups, x[0].size // num_groups)
        xg = x.reshape(groups)
        mean = xg.mean(axis=2, keepdims=True)
        var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
        inv = 1 / np.sqrt(var + eps)
        return ((xg - mean) * inv).reshape(x.shape), inv, groups

    def groupnorm_forward(self, x, weight, bias, *, num_groups, eps):
        """``weight[c] * (x - mean) / sqrt(var + eps) + bias[c]``, statistics over each sample's group."""
        x_hat, _, _ = self._group_stats(x, num_groups, eps)
        pc = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        return (x_hat * weight.reshape(pc) + bias.reshape(pc)).astype(x.dtype)

    def groupnorm_vjp(self, x, weight, bias, dy, *, num_groups, eps):
        """``dx = inv_std (g - mean(g) - x_hat mean(g x_hat))`` with ``g = dy weight[c]``, means over each
        sample's group; ``dweight = sum(dy x_hat)``, ``dbias = sum(dy)`` over samples and positions."""
        x_hat, inv, groups = self._group_stats(x, num_groups, eps)
        pc, axes = (1, x.shape[1]) + (1,) * (x.ndim - 2), (0, *range(2, x.ndim))
        g = (dy * weight.reshape(pc)).reshape(groups)
        xh = x_hat.reshape(groups)
        dx = inv * (g - g.mean(axis=2, keepdims=True) - xh * (g * xh).mean(axis=2, keepdims=True))
        dweight, dbias = (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)
        return dx.reshape(x.shape).astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype)

    def relu_forward(self, x):
        """``0 where x < 0 else x`` (keeps -0.0 and NaN)."""
        return np.where(x < 0, x.dtype.type(0), x)

    def relu_vjp(self, x, dy):
        """``dy where not (x <= 0) else 0`` (ReLU'(0) = 0; a NaN input passes its gradient)."""
        return np.where(x <= 0, dy.dtype.type(0), dy)

    def maxpool2d_forward(self, x, *, kernel_size, stride, padding):
        """Maximum over each window; the padding is -inf (never selected)."""
        return self._windows(x, kernel_size, stride, padding, -np.inf).max(axis=(4, 5))

    def maxpool2d_vjp(self, x, dy, *, kernel_size, stride, padding):
        """Each ``dy`` goes to the first maximum of its window (row-major); overlapping windows add."""
        kh, kw = kernel_size
        (sh, sw), (ph, pw) = stride, padding
        cols = self._windows(x, kernel_size, stride, padding, -np.inf)
        n, c, ho, wo = cols.shape[:4]
        arg = cols.reshape(n, c, ho, wo, kh * kw).argmax(axis=-1)
        rows = np.arange(ho)[:, None] * sh + arg // kw
        cols_ = np.arange(wo)[None, :] * sw + arg % kw
        dxp = np.zeros((n, c, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
        nn_, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
        np.add.at(dxp, (nn_[..., None, None], cc[..., None, None], rows, cols_), dy)
        return dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]].copy()

    def global_avgpool_forward(self, x):
        return x.mean(axis=(2, 3))

    def global_avgpool_vjp(self, x, dy):
        h, w = x.shape[2:]
        return np.broadcast_to((dy / (h * w))[:, :, None, None], x.shape).copy()

    @staticmethod
    def _log_softmax(z: np.ndarray) -> np.ndarray:
        shifted = z - z.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def cross_entropy_forward(self, logits, labels, *, label_smoothing):
        """``mean_n [-(1 - eps) log p[n, y_n] - eps / K sum_k log p[n, k]]`` with ``p = softmax``."""
        logp = self._log_softmax(logits)
        k = logits.shape[1]
        picked = np.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        per = -(1 - label_smoothing) * picked - label_smoothing / k * logp.sum(axis=1)
        return np.asarray(per.mean(), dtype=logits.dtype)

    def cross_entropy_vjp(self, logits, labels, dloss, *, label_smoothing):
        """``dloss * (softmax - target) / N`` with ``target = (1 - eps) onehot + eps / K``."""
        n, k = logits.shape
        target = np.full(logits.shape, label_smoothing / k, dtype=logits.dtype)
        target[np.arange(n), labels] += 1 - label_smoothing
        p = np.exp(self._log_softmax(logits))
        return ((p - target) * (dloss / n)).astype(logits.dtype)

    # =========================================================================================== train
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
        """``d = g + wd p``; ``buf = d`` on the first step, then ``mu buf + (1 - dampening) d``;
        ``d = d + mu buf`` (Nesterov) or ``buf``; ``p = p - lr d``."""
        out = {}
        for k, p in params.items():
            buf = None
            for g in grads:
                d = g[k] + weight_decay * p
                if momentum != 0:
                    buf = d if buf is None else momentum * buf + (1 - dampening) * d
                    d = d + momentum * buf if nesterov else buf
                p = p - lr * d
            out[k] = np.asarray(p, dtype=params[k].dtype)
        return out

    # =========================================================================================== model
    def model_forward_backward(self, arch, params, state, x, labels, *, train):
        """A torchvision-named ResNet, its mean cross-entropy and a hand-written backward pass."""
        if arch not in ("resnet20", "resnet18_cifar", "resnet18"):
            raise NotImplementedError(f"ReferenceBackend: unknown architecture {arch!r}")
        net = _Net(self, params, state, train)
        logits, backward = net.forward(x, imagenet=arch == "resnet18")
        loss = self.cross_entropy_forward(logits, labels, label_smoothing=0.0)
        backward(self.cross_entropy_vjp(logits, labels, 1.0, label_smoothing=0.0))
        return ModelResult(logits, loss, net.state, net.grads)


class _Net:
    """The ResNet of a state dict: each layer returns its output and a closure ``dy -> dx`` that also adds
    its parameter gradients to ``grads``."""

    def __init__(self, ops: ReferenceBackend, params, state, train: bool) -> None:
        self.ops, self.p, self.train = ops, dict(params), train
        self.state = {k: np.array(v) for k, v in state.items()}
        self.grads = {k: np.zeros_like(v) for k, v in self.p.items()}

    def conv_bn(self, h, conv: str, bn: str, stride: int, pad: int):
        ops, w = self.ops, self.p[conv + ".weight"]
        kw = dict(stride=(stride, stride), padding=(pad, pad))
        z = ops.conv2d_forward(h, w, None, **kw)
        bn_args = (self.p[bn + ".weight"], self.p[bn + ".bias"])
        stats = (self.state[bn + ".running_mean"], self.state[bn + ".running_var"])
        bn_kw = dict(train=self.train, momentum=0.1, eps=1e-5)
        y, m, v = ops.batchnorm2d_forward(z, *bn_args, *stats, **bn_kw)
        self.state[bn + ".running_mean"], self.state[bn + ".running_var"] = m, v

        def backward(dy):
            dz, dgamma, dbeta = ops.batchnorm2d_vjp(z, *bn_args, *stats, dy, **bn_kw)
            self.grads[bn + ".weight"] += dgamma
            self.grads[bn + ".bias"] += dbeta
            dh, dw, _ = ops.conv2d_vjp(h, w, None, dz, **kw)
            self.grads[conv + ".weight"] += dw
            return dh

        return y, backward

    def relu(self, h):
        y = self.ops.relu_forward(h)
        return y, lambda dy: self.ops.relu_vjp(h, dy)

    def block(self, h, prefix: str, stride: int):
        a, back_a = self.conv_bn(h, prefix + "conv1", prefix + "bn1", stride, 1)
        r, back_r = self.relu(a)
        b, back_b = self.conv_bn(r, prefix + "conv2", prefix + "bn2", 1, 1)
        if prefix + "downsample.0.weight" in self.p:
            s, back_s = self.conv_bn(h, prefix + "downsample.0", prefix + "downsample.1", stride, 0)
        else:
            s, back_s = h, lambda dy: dy
        out, back_out = self.relu(b + s)

        def backward(dy):
            d = back_out(dy)
            return back_s(d) + back_a(back_r(back_b(d)))

        return out, backward

    def forward(self, x, *, imagenet: bool):
        ops, backs = self.ops, []
        h, back = self.conv_bn(x, "conv1", "bn1", 2 if imagenet else 1, 3 if imagenet else 1)
        backs.append(back)
        h, back = self.relu(h)
        backs.append(back)
        if imagenet:
            pool_in = h
            h = ops.maxpool2d_forward(pool_in, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
            backs.append(lambda dy: ops.maxpool2d_vjp(pool_in, dy, kernel_size=(3, 3), stride=(2, 2),
                                                      padding=(1, 1)))  # fmt: skip
        blocks = sorted((int(m[1]), int(m[2])) for m in map(_BLOCK.match, self.p) if m)
        for stage, index in blocks:
            h, back = self.block(h, f"layer{stage}.{index}.", 2 if (index == 0 and stage > 1) else 1)
            backs.append(back)
        pooled_in = h
        pooled = ops.global_avgpool_forward(pooled_in)
        backs.append(lambda dy: ops.global_avgpool_vjp(pooled_in, dy))
        w, b = self.p["fc.weight"], self.p["fc.bias"]
        logits = ops.linear_forward(pooled, w, b)

        def backward(dlogits):
            dx, dw, db = ops.linear_vjp(pooled, w, b, dlogits)
            self.grads["fc.weight"] += dw
            self.grads["fc.bias"] += db
            for back in reversed(backs):
                dx = back(dx)
            return dx

        return logits, backward
