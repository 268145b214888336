"""JAX (CPU, XLA) as a backend of the oracle kit, computed with JAX's own operations (none of saf_ref's code).

``astype`` conversions and ``lax.bitcast_convert_type`` for the number formats, integer ``jax.numpy``
arithmetic (a scatter-add of bit counts) for fault injection, ``lax.conv_general_dilated``,
``lax.reduce_window`` and ``jax.nn`` for the layers, ``jax.vjp`` / ``jax.value_and_grad`` for every
vector-Jacobian product, PyTorch's SGD recurrence written in ``jax.numpy``, and a functional ResNet
assembled from the torchvision parameter names. Comparing it with saf_ref is a comparison of two
independent implementations; ``saf-ref check jax`` runs it.

``jax`` is imported lazily (on construction), so ``import saf_ref.testing`` works without it
(``pip install 'saf_ref[jax]'``).

What differs from saf_ref on XLA's CPU backend, and how the suite sees it (README of the oracle kit):

- **x64 mode.** Without ``jax_enable_x64``, ``jnp.asarray`` silently turns float64 into float32 and uint64
  codes into uint32. Every method of this backend runs inside ``jax.enable_x64(True)``, so float64
  network ops, float64 inputs of ``encode`` and 64-bit codes keep their width; the global setting of
  the caller is left alone.
- **Flush to zero.** XLA's CPU runtime sets the FTZ and DAZ modes: arithmetic treats subnormal inputs as
  zero and flushes subnormal results (``x * 1`` of ``1e-40`` is 0), comparisons too. Conversions between
  formats are bit manipulations and keep subnormals, so the codecs are exact; the arithmetic checks
  (transforms, layers) see zeros where saf_ref keeps a subnormal.
- **Conversions.** float64 -> bfloat16 / float16 / float8 go through float32 (a double rounding, the
  ``narrowing-via-float32`` divergence, as in PyTorch); float8_e4m3fn overflow is NaN as in saf_ref
  (``--e4m3-overflow ieee``, unlike PyTorch's saturation); NaN payloads are not kept.
- **Fused operations.** XLA fuses elementwise chains and may contract ``a * b + c`` into an FMA (the SGD
  update, batch norm's affine step); every tolerance tier of the suite allows either.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from saf_ref.bits.faultlist import FaultList
from saf_ref.testing.protocol import DEFAULT_ROUNDOFF, ModelResult

__all__ = ["JaxBackend", "JAX_FORMATS"]

#: format name -> (jax.numpy dtype name, NumPy container of its codes)
JAX_FORMATS: dict[str, tuple[str, type]] = {
    "float64": ("float64", np.uint64),
    "float32": ("float32", np.uint32),
    "float16": ("float16", np.uint16),
    "bfloat16": ("bfloat16", np.uint16),
    "float8_e4m3fn": ("float8_e4m3fn", np.uint8),
    "float8_e5m2": ("float8_e5m2", np.uint8),
}
#: what decode returns, as saf_ref's ``decode_dtype``
_DECODE_DTYPE = {"float64": "float64", "float32": "float32", "float16": "float16"}
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.conv1\.weight$")
_ARCHS = ("resnet20", "resnet18_cifar", "resnet18")
#: MX format -> (element dtype of JAX / ml_dtypes, None for INT8; element bits; emax_elem of OCP MX v1.0)
_MX: dict[str, tuple[str | None, int, int]] = {
    "mxfp8_e4m3": ("float8_e4m3fn", 8, 8),
    "mxfp8_e5m2": ("float8_e5m2", 8, 15),
    "mxfp6_e2m3": ("float6_e2m3fn", 6, 2),
    "mxfp6_e3m2": ("float6_e3m2fn", 6, 4),
    "mxfp4": ("float4_e2m1fn", 4, 2),
    "mxint8": (None, 8, 0),
}
#: XLA compiles every program the suite runs once and runs it once: compile time is the cost (a ResNet-20
#: value-and-gradient compiles in 3.5 s at the default LLVM optimization level, 2.3 s at level 0, and runs
#: in 5 ms). Level 0 changes no operation's semantics; the suite checks the results either way.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _div(a, b):
    """float32 ``a / b`` correctly rounded: computed in float64 and rounded once (exact for a quotient of
    float32 values, as 53 >= 2 * 24 + 2). XLA rewrites a division by a broadcast scalar as a multiplication
    by its reciprocal, a double rounding that is 1 ulp off (``-0.05 / float32(1/30)`` gives -1.4999999
    instead of -1.5, and the quantizer then picks the wrong level)."""
    import jax.numpy as jnp

    return (a.astype(jnp.float64) / b.astype(jnp.float64)).astype(jnp.float32)


def _decline_subnormals(method: str, values: np.ndarray) -> None:
    """``NotImplementedError`` (the suite counts the case as unsupported) for subnormal float32 values.

    XLA's CPU runtime treats subnormal inputs as zero (denormals-are-zero) in every arithmetic operation
    and conversion, so a quantizer fed a subnormal value, range or step computes with 0 instead.
    """
    with np.errstate(invalid="ignore"):
        tiny = np.abs(values[np.isfinite(values)]).astype(np.float32)
    if np.any((tiny != 0) & (tiny < np.finfo(np.float32).tiny)):
        raise NotImplementedError(
            f"JaxBackend.{method}: subnormal values (XLA on the CPU treats them as zero: denormals-are-zero)"
        )


def _mul(a, b):
    """float32 ``a * b`` rounded on its own: the product is exact in float64 (24 + 24 bits) and rounded to
    float32 once, so that XLA cannot fuse it with a following addition into an FMA."""
    import jax.numpy as jnp

    return (a.astype(jnp.float64) * b.astype(jnp.float64)).astype(jnp.float32)


def _mul_add(a, b, c):
    """float32 ``a * b + c`` with two roundings, as written (no fused multiply-add).

    XLA's CPU compiler contracts a float32 multiply and add into an FMA, even across an optimization
    barrier, and shrinks a float64 product of float32 values back to a float32 multiply first. Here the
    product is formed in float64 (exact), rounded to float32 precision by ``reduce_precision`` (a bit
    operation the compiler cannot fuse), added in float64 (exact, or far below half a float32 ulp) and
    rounded to float32: the correctly rounded float32 sum of the rounded product and ``c``."""
    import jax
    import jax.numpy as jnp

    f64 = jnp.float64
    product = jax.lax.reduce_precision(a.astype(f64) * b.astype(f64), exponent_bits=8, mantissa_bits=23)
    return (product + c.astype(f64)).astype(jnp.float32)


def _bucket(n: int, least: int = 64) -> int:
    """The padded length of ``n`` elements: the next power of two, at least ``least``."""
    return max(least, 1 << max(0, int(n) - 1).bit_length())


def _pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` padded along axis 0 to ``size`` rows by repeating its last row (zeros if it has none)."""
    if a.shape[0] == size:
        return a
    if a.shape[0] == 0:
        return np.zeros((size,) + a.shape[1:], dtype=a.dtype)
    return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])


def _import_jax():
    try:
        import jax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("JaxBackend needs JAX: pip install 'saf_ref[jax]' (or jax itself)") from err
    return jax


def _x64(method):
    """Run a method inside ``jax.enable_x64(True)``: float64 and uint64 arrays keep their width."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.jax.enable_x64(True):
            return method(self, *args, **kwargs)

    return wrapper


class JaxBackend:
    """JAX behind the backend protocol (:class:`saf_ref.testing.protocol.Backend`).

    Parameters
    ----------
    device : str
        ``"cpu"`` (default) or a JAX platform name (``"gpu"``, ``"tpu"``): the first device of it.
    dtype : {"float32", "float64"}
        dtype of the network ops.
    """

    def __init__(self, *, device: str = "cpu", dtype: str = "float32") -> None:
        fn = "JaxBackend"
        jax = _import_jax()
        if str(dtype) not in DEFAULT_ROUNDOFF:
            raise ValueError(f"{fn}: dtype must be one of {tuple(DEFAULT_ROUNDOFF)}, got {dtype!r}")
        try:
            self._device = jax.devices(str(device))[0]
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"{fn}: device must be a JAX platform this machine has, got {device!r} ({err})"
            ) from None
        self.jax = jax
        self.jnp = jax.numpy
        self.lax = jax.lax
        self.device = str(device)
        self.dtype = str(dtype)
        self.name = f"jax {jax.__version__}"
        self._compiled: dict = {}

    def unit_roundoff(self, dtype: str) -> float:
        """``2**-24`` / ``2**-53``: XLA's CPU matrix products and convolutions run in the dtype itself."""
        return DEFAULT_ROUNDOFF[dtype]

    # ------------------------------------------------------------------------------------- basics
    def _a(self, a):
        """A JAX array on the device holding ``a`` (JAX arrays are immutable: the caller's is safe)."""
        return self.jax.device_put(np.asarray(a), self._device)

    @staticmethod
    def _np(a) -> np.ndarray:
        """A writable NumPy copy of a JAX array."""
        return np.array(a, copy=True)

    def _jit(self, key: tuple, build, *, fast_compile: bool = True):
        """``jax.jit(build())``, made once per key (the method and its static settings).

        XLA compiles a program per shape; the elementwise methods pad their flattened inputs to a few
        bucket sizes (:func:`_bucket`) and the layers pad batch and channel axes, so that a suite run
        compiles a few hundred small programs rather than one per primitive and example.
        """
        fn = self._compiled.get(key)
        if fn is None:
            options = _COMPILER_OPTIONS if fast_compile else None
            fn = self._compiled[key] = self.jax.jit(build(), compiler_options=options)
        return fn

    def _elementwise(self, key: tuple, build, *arrays, scalars=(), jit: bool = True):
        """Apply a jitted elementwise function to same-shaped arrays, flattened and padded to a bucket.

        ``arrays`` share their leading shape (the last axis of a trailing-axis array such as ``uniform``
        is kept); the results are sliced back. Padding repeats the last element (minimum and maximum
        unchanged), so reductions inside stay exact.
        """
        shape = np.asarray(arrays[0]).shape
        n = int(np.prod(shape, dtype=np.int64))
        size = _bucket(n)
        padded = []
        for a in arrays:
            a = np.asarray(a)
            flat = a.reshape((n,) + a.shape[len(shape) :])
            padded.append(self._a(_pad_rows(flat, size)))
        fn = self._jit(key, build) if jit else build()  # eager: each primitive compiled (and cached) alone
        out = fn(*padded, *scalars)
        if isinstance(out, tuple):
            return tuple(self._np(o)[:n].reshape(shape + o.shape[1:]) for o in out)
        return self._np(out)[:n].reshape(shape + out.shape[1:])

    def _vjp(self, f, primals: Sequence, dy):
        """The gradients of ``f`` at ``primals`` (None kept) for the upstream gradient ``dy``."""
        keep = [i for i, p in enumerate(primals) if p is not None]

        def g(*live):
            args = list(primals)
            for i, v in zip(keep, live, strict=True):
                args[i] = v
            return f(*args)

        _, pullback = self.jax.vjp(g, *[primals[i] for i in keep])
        grads = pullback(dy)
        out = [None] * len(primals)
        for i, gr in zip(keep, grads, strict=True):
            out[i] = gr
        return tuple(out)

    # ---------------------------------------------------------------------------------------- bits
    def _format(self, format_name: str):
        if format_name not in JAX_FORMATS:
            raise NotImplementedError(f"JaxBackend: no jax dtype for format {format_name!r}")
        name, container = JAX_FORMATS[format_name]
        return getattr(self.jnp, name), container

    @_x64
    def encode(self, format_name: str, x: np.ndarray) -> np.ndarray:
        """``lax.bitcast_convert_type(x.astype(dtype), uint)``: XLA's conversion (float64 via float32)."""
        dtype, container = self._format(format_name)

        def build():
            return lambda v: self.lax.bitcast_convert_type(v.astype(dtype), container)

        return self._elementwise(("encode", format_name), build, x)

    @_x64
    def decode(self, format_name: str, codes: np.ndarray) -> np.ndarray:
        """``bitcast_convert_type(codes, dtype).astype(float32)`` (float16 and float64 keep their dtype)."""
        dtype, _ = self._format(format_name)
        out = getattr(self.jnp, _DECODE_DTYPE.get(format_name, "float32"))

        def build():
            return lambda c: self.lax.bitcast_convert_type(c, dtype).astype(out)

        return self._elementwise(("decode", format_name), build, codes)

    def _weights(self, nbits: int):
        """uint64 ``2**j`` for ``j < nbits`` (bit 0 = least significant)."""
        jnp = self.jnp
        return jnp.left_shift(jnp.uint64(1), jnp.arange(nbits, dtype=jnp.uint64))

    @_x64
    def flip_by_uniform(self, codes, uniform, p, *, protected=None):
        """``flips = uniform < float32(p)``, bit ``j`` LSB first, the masks XORed into uint64 words."""
        jnp = self.jnp
        codes = np.asarray(codes)

        def build():
            def f(words, u, p32, keep_mask):
                weights = self._weights(u.shape[-1])
                # u, p >= 0: float order is the order of the bit patterns. A float comparison would read a
                # subnormal p as 0 (XLA's denormals-are-zero mode) and flip nothing.
                bits = self.lax.bitcast_convert_type
                below = bits(u, jnp.int32) < bits(p32, jnp.int32)
                flips = below & ((weights & keep_mask) == 0)  # protected bits never flip
                masks = jnp.sum(jnp.where(flips, weights, jnp.uint64(0)), axis=-1, dtype=jnp.uint64)  # an OR
                return (words.astype(jnp.uint64) ^ masks).astype(words.dtype)

            return f

        scalars = (jnp.asarray(np.float32(p)), jnp.uint64(0 if protected is None else int(protected)))
        return self._elementwise(("flip",), build, codes, uniform, scalars=scalars)

    @_x64
    def apply_faults(self, codes: np.ndarray, faults: FaultList, *, nbits: int) -> np.ndarray:
        """Flips XORed in (bits flipped an even number of times cancel), then stuck-at-0 and stuck-at-1.

        Math
        ----
        ``n_k[w, b]`` = how many records of kind ``k`` name word ``w`` and bit ``b`` (a scatter-add);
        ``F = sum_b 2**b [n_flip odd]``, ``S0``, ``S1`` likewise with ``n > 0``;
        ``codes' = ((codes XOR F) AND NOT S0) OR S1``.
        """
        jnp = self.jnp
        codes = np.asarray(codes)
        size = codes.size
        words = _pad_rows(codes.reshape(-1), _bucket(size + 1))  # the last word is padding: a sink
        records = _bucket(len(faults))
        index = np.full(records, words.shape[0] - 1, dtype=np.int64)
        bit = np.zeros(records, dtype=np.int64)
        kind = np.zeros(records, dtype=np.int64)
        index[: len(faults)] = faults.index
        bit[: len(faults)] = faults.bit
        kind[: len(faults)] = [("flip", "stuck0", "stuck1").index(k) for k in faults.kind]

        def build():
            def f(w, idx, b, k):
                weights = self._weights(64)
                masks = []
                for code in range(3):
                    counts = (
                        jnp.zeros((w.shape[0], 64), jnp.int32).at[idx, b].add((k == code).astype(jnp.int32))
                    )
                    hit = counts % 2 == 1 if code == 0 else counts > 0
                    masks.append(jnp.sum(jnp.where(hit, weights, jnp.uint64(0)), axis=-1, dtype=jnp.uint64))
                flat = ((w.astype(jnp.uint64) ^ masks[0]) & ~masks[1]) | masks[2]
                return flat.astype(w.dtype)

            return f

        out = self._jit(("faults",), build)(self._a(words), self._a(index), self._a(bit), self._a(kind))
        return self._np(out)[:size].reshape(codes.shape)

    # ---------------------------------------------------------------------------------- quantizer
    def _levels(self, t, q, step, nbits: int, code: str, nearest: bool, zero_step: bool):
        """Codes of float32 ``t`` on the grid ``k * step`` clipped to ``[-q, q]`` (the published code)."""
        jnp = self.jnp
        f32 = jnp.float32
        s = jnp.zeros_like(t) if zero_step else _div(jnp.clip(t, -q, q), step)
        if code == "offset_binary":
            u = jnp.clip(s + f32(2.0 ** (nbits - 1)), f32(0.0), f32(2.0**nbits - 1))
            return (jnp.round(u) if nearest else u).astype(jnp.int64)  # astype truncates toward zero
        v = jnp.round(s) if nearest else jnp.trunc(s)
        v = jnp.clip(v, f32(-(2.0 ** (nbits - 1))), f32(2.0 ** (nbits - 1) - 1)).astype(jnp.int64)
        return v & ((1 << nbits) - 1)  # the low nbits bits: two's complement

    @_x64
    def quantize(self, x: np.ndarray, config: Mapping[str, Any]):
        """Stutz et al.'s per-tensor quantizer in float32 ``jax.numpy``; scalars formed in float64."""
        jnp = self.jnp
        cfg = dict(config)
        nbits, margin, code = cfg["nbits"], cfg.get("margin", 0.0), cfg.get("code", "offset_binary")
        nearest = cfg.get("rounding", "nearest_even") == "nearest_even"
        levels = (1 << (nbits - 1)) - 1
        f32 = np.float32
        clip = cfg.get("clip")
        symmetric = cfg.get("scheme", "asymmetric") == "symmetric"

        _decline_subnormals("quantize", np.asarray(x))
        ab, lo, hi = self._quant_stats(x, clip, symmetric)
        if symmetric:
            if cfg.get("max_abs") is not None:
                q64 = cfg["max_abs"]
                step = float(f32((cfg["max_abs"] + margin) / levels))
            else:
                q64 = ab + margin
                if clip is not None:
                    q64 = min(q64, clip)
                step = float(f32(q64 / levels))
            q = float(f32(q64))
            context = dict(scheme="symmetric", code=code, nbits=nbits, q=q, step=step, min=None, max=None)
            width = 0.0
        else:
            width = float(f32(hi - lo))
            q, step = 1.0, float(f32((1.0 + margin) / levels))
            context = dict(scheme="asymmetric", code=code, nbits=nbits, q=q, step=step, min=lo, max=hi)

        _decline_subnormals("quantize", np.array([q, step, lo, hi, width], dtype=np.float32))

        def build():
            def f(v, c, lo_, width_, q_, step_):
                if not symmetric:
                    if clip is not None:
                        v = jnp.clip(v, -c, c)
                    v = (
                        jnp.zeros_like(v)
                        if width == 0
                        else _div(v - lo_, width_) * jnp.float32(2) - jnp.float32(1)
                    )
                return self._levels(v, q_, step_, nbits, code, nearest, step == 0)

            return f

        key = ("quantize", symmetric, clip is not None, width == 0, step == 0, nbits, code, nearest)
        scalars = tuple(jnp.asarray(f32(v)) for v in (clip or 0.0, lo, width, q, step))
        codes = self._elementwise(key, build, x, scalars=scalars)
        return codes.astype(np.uint8 if nbits <= 8 else np.uint16), context

    def _quant_stats(self, x, clip, symmetric: bool) -> tuple[float, float, float]:
        """``max |x|``, ``min x``, ``max x`` (asymmetric with a clip: of the clipped tensor), in jax."""
        jnp = self.jnp

        def build():
            def f(v, c):
                if clip is not None and not symmetric:
                    v = jnp.clip(v, -c, c)
                return jnp.max(jnp.abs(v)), jnp.min(v), jnp.max(v)

            return f

        n = max(1, int(np.asarray(x).size))
        padded = self._a(_pad_rows(np.asarray(x).reshape(-1), _bucket(n)))
        # the default optimization level: at level 0 the minimum of -0.0 and +0.0 comes out as -0.0 where
        # NumPy (saf_ref) gives +0.0, and the quantizer's context stores it (IEEE 754 allows either)
        fn = self._jit(("qstats", clip is not None and not symmetric), build, fast_compile=False)
        return tuple(float(v) for v in fn(padded, jnp.asarray(np.float32(clip or 0.0))))

    @_x64
    def dequantize(self, codes, context, config):
        """float32 ``clip(k * step, -q, q)`` for the stored level ``k`` (asymmetric: mapped to [min, max])."""
        jnp = self.jnp
        nbits, code, scheme = context["nbits"], context["code"], context["scheme"]

        def build():
            def f(c, q, step, lo, hi, width):
                words = c.astype(jnp.int64)
                if code == "offset_binary":
                    k = jnp.minimum(words, (1 << nbits) - 1).astype(jnp.float32) - jnp.float32(
                        2.0 ** (nbits - 1)
                    )
                else:
                    k = jnp.where(words >= (1 << (nbits - 1)), words - (1 << nbits), words).astype(
                        jnp.float32
                    )
                y = jnp.clip(_mul(k, step), -q, q)
                if scheme == "asymmetric":
                    y = (y + jnp.float32(1)) / jnp.float32(2)
                    # XLA's CPU code contracts y * width + lo into a fused multiply-add (one rounding; an
                    # optimization barrier does not stop it); the published algorithm rounds the product
                    y = jnp.clip(_mul_add(y, width, lo), lo, hi)
                return y

            return f

        asym = scheme == "asymmetric"
        lo, hi = (context["min"], context["max"]) if asym else (0.0, 0.0)
        _decline_subnormals("dequantize", np.array([context["q"], context["step"], lo, hi], dtype=np.float32))
        width = float(np.float32(hi - lo))
        scalars = tuple(jnp.asarray(np.float32(v)) for v in (context["q"], context["step"], lo, hi, width))
        return self._elementwise(("dequantize", nbits, code, scheme), build, codes, scalars=scalars)

    # ---------------------------------------------------------------------------------- MX blocks
    def _mx_tables(self, format_name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """``(values, grid, finite)``: the float64 value of every element code (256 entries, by code), decoded
        by JAX's element dtype (ml_dtypes; ``k / 64`` for INT8), and the non-negative finite values in code
        order (ascending), padded with +inf to 128 entries, of which ``finite`` are real."""
        if format_name not in _MX:
            raise NotImplementedError(f"JaxBackend: no MX format {format_name!r}")
        name, w, _ = _MX[format_name]
        values = np.zeros(256)
        if name is None:
            k = np.arange(256)
            values = np.where(k >= 128, k - 256, k) / 64.0
        else:
            import ml_dtypes  # JAX's own number types

            codes = np.arange(1 << w, dtype=np.uint8)
            values[: 1 << w] = codes.view(getattr(ml_dtypes, name)).astype(np.float64)
        half = values[: 128 if name is None else 1 << (w - 1)]
        count = int(np.isfinite(half).sum())  # the finite codes come first (then inf and NaN, if any)
        grid = np.full(128, np.inf)
        grid[:count] = half[:count]
        return values, grid, count

    @staticmethod
    def _mx_check(method: str, shape: tuple[int, ...]) -> int:
        if len(shape) == 0 or shape[-1] % 32:
            raise ValueError(
                f"JaxBackend.{method}: the last axis must be a multiple of 32, got shape {shape}"
            )
        return int(np.prod(shape, dtype=np.int64)) // 32

    def _pow2(self, e):
        """float64 ``2**e`` (int64 ``e`` in [-1022, 1023]) from its bits: exact, whatever XLA's exp2 does."""
        jnp = self.jnp
        return self.lax.bitcast_convert_type((e + 1023).astype(jnp.int64) << 52, jnp.float64)

    @_x64
    def mx_encode(self, format_name: str, x: np.ndarray):
        """Blocks of 32 along the last axis: ``jnp.frexp`` of the largest magnitude gives the shared exponent;
        ``V / 2**shared`` (a multiplication by a power of two built from its bits: exact) is rounded to the
        nearest entry of the element grid (ties to the even code, saturating), found by counting the grid
        entries below ``|y|`` and comparing with the midpoint of the two neighbours. No conversion rounds
        once from float64 (XLA narrows through float32), hence the grid. Subnormal inputs are declined
        (denormals-are-zero)."""
        jnp = self.jnp
        x = np.asarray(x)
        blocks = self._mx_check("mx_encode", x.shape)
        _, grid, finite = self._mx_tables(format_name)
        _, w, emax = _MX[format_name]
        with np.errstate(invalid="ignore"):
            a = np.abs(x[np.isfinite(x)])
        if np.any((a != 0) & (a < np.finfo(x.dtype).tiny)):
            raise NotImplementedError("JaxBackend.mx_encode: subnormal inputs (XLA on the CPU treats them as "
                                      "zero: denormals-are-zero)")

        def build():
            def f(v, table, n, bits, is_int, e_max):
                v = v.astype(jnp.float64)
                ok = jnp.isfinite(v)
                v = jnp.where(ok, v, 0.0)
                amax = jnp.max(jnp.abs(v), axis=1)
                _, e = jnp.frexp(amax)  # amax = f * 2**e, f in [0.5, 1)
                shared = jnp.where(amax > 0, e.astype(jnp.int64) - 1 - e_max, -127)
                nan = ~jnp.all(ok, axis=1) | (shared > 127)
                shared = jnp.clip(shared, -127, 127)
                y = v * self._pow2(-shared)[:, None]
                mag_y = jnp.abs(y)
                hi = jnp.minimum(jnp.sum(table < mag_y[..., None], axis=-1), n - 1)  # entries below |y|
                lo = jnp.maximum(hi - 1, 0)
                mid = (table[lo] + table[hi]) / 2
                up = (mag_y > mid) | ((mag_y == mid) & (hi % 2 == 0)) | (mag_y >= table[hi])
                mag = jnp.where(up, hi, lo).astype(jnp.int64)
                neg = jnp.signbit(y).astype(jnp.int64)
                twos = jnp.where(neg == 1, (256 - mag) & 0xFF, mag)  # INT8: two's complement of -k
                code = jnp.where(is_int, twos, mag | (neg << (bits - 1)))
                code = jnp.where(nan[:, None], 0, code)
                return jnp.where(nan, 255, shared + 127).astype(jnp.uint8), code.astype(jnp.uint8)

            return f

        size = _bucket(blocks, 32)  # few shapes: XLA compiles once per bucket
        rows = self._a(_pad_rows(x.reshape(blocks, 32), size))
        scalars = [self._a(np.int64(v)) for v in (finite, w, _MX[format_name][0] is None, emax)]
        scales, codes = self._jit(("mx_encode",), build)(rows, self._a(grid), *scalars)
        return (self._np(scales)[:blocks].reshape(x.shape[:-1] + (-1,)),
                self._np(codes)[:blocks].reshape(x.shape))

    @_x64
    def mx_decode(self, format_name: str, scales: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """``values[code] * 2**(scale - 127)`` (the table of JAX's element dtype; exact in float64); NaN
        elements the quiet NaN of their sign, every value of a block with scale 0xFF the positive one."""
        jnp, lax = self.jnp, self.lax
        elements = np.asarray(elements)
        blocks = self._mx_check("mx_decode", elements.shape)
        values, _, _ = self._mx_tables(format_name)
        w = _MX[format_name][1]

        def build():
            def f(s, c, table, bits):
                s, c = s.astype(jnp.int64), c.astype(jnp.int64)
                p = table[c]
                v = p * self._pow2(jnp.minimum(s, 254) - 127)[:, None]
                sign = jnp.where(s[:, None] == 255, 0, (c >> (bits - 1)) & 1).astype(jnp.uint64)
                nan = lax.bitcast_convert_type((sign << 63) | jnp.uint64(0x7FF8 << 48), jnp.float64)
                return jnp.where(jnp.isnan(p) | (s[:, None] == 255), nan, v)

            return f

        size = _bucket(blocks, 32)  # few shapes: XLA compiles once per bucket
        s = self._a(_pad_rows(np.asarray(scales).reshape(blocks), size))
        c = self._a(_pad_rows(elements.reshape(blocks, 32), size))
        out = self._jit(("mx_decode",), build)(s, c, self._a(values), self._a(np.int64(w)))
        return self._np(out)[:blocks].reshape(elements.shape)

    # ------------------------------------------------------------------------------------- protect
    def _softsign(self, x):
        """``jax.nn.soft_sign`` (``x / (1 + |x|)``) with its derivative ``r * r``, ``r = 1 / (1 + |x|)``.

        JAX's own derivative of ``x / (1 + |x|)`` is ``dw / (1 + |x|) - (dw * (1 + |x|)**-2) * x``; its
        second product underflows to 0 for ``|x|`` above about ``1e16`` and leaves the first term
        uncancelled (``transform_vjp[softsign]`` fails it by a factor of 1e6), so the derivative is given
        as saf_ref's, squared after the division."""
        jax = self.jax

        @jax.custom_jvp
        def softsign(v):
            return jax.nn.soft_sign(v)

        @softsign.defjvp
        def _(primals, tangents):
            (v,), (dv,) = primals, tangents
            r = 1 / (1 + self.jnp.abs(v))
            return softsign(v), r * r * dv

        return softsign(x)

    def _j_transform(self, name: str, u, a, unit: bool):
        """``a f(u / a)`` with jax's elementwise functions (autodiff supplies the derivative)."""
        jnp, lax = self.jnp, self.lax
        if name == "identity":
            return u
        if name == "hardtanh":
            return lax.clamp(-a, u, a)  # derivative 1 strictly inside, 0 at and beyond the bounds
        f = {"tanh": jnp.tanh, "arctan": jnp.arctan, "softsign": self._softsign}.get(name)
        if f is None:
            raise NotImplementedError(f"JaxBackend: no transform {name!r}")
        return f(u) if unit else a * f(u / a)

    @_x64
    def transform_forward(self, name, u, *, scale):
        unit = scale == 1.0

        def build():
            return lambda t, a: self._j_transform(name, t, a, unit)

        a = self.jnp.asarray(scale, dtype=np.asarray(u).dtype)
        # eager, not jitted: fused into one kernel, XLA evaluates a * softsign(u / a) at u / a = inf as 0
        return self._elementwise(("tf", name, unit), build, u, scalars=(a,), jit=False)

    @_x64
    def transform_vjp(self, name, u, dw, *, scale):
        unit = scale == 1.0

        def build():
            return lambda t, d, a: self._vjp(lambda v: self._j_transform(name, v, a, unit), [t], d)[0]

        a = self.jnp.asarray(scale, dtype=np.asarray(u).dtype)
        return self._elementwise(("tv", name, unit), build, u, dw, scalars=(a,), jit=False)

    # ------------------------------------------------------------------------------------------ nn
    def _j_conv2d(self, x, w, b, stride, padding):
        lax = self.lax
        y = lax.conv_general_dilated(
            x,
            w,
            tuple(stride),
            [(p, p) for p in padding],
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            precision=lax.Precision.HIGHEST,
        )
        return y if b is None else y + b[None, :, None, None]

    def _j_linear(self, x, w, b):
        y = self.jnp.matmul(x, w.T, precision=self.lax.Precision.HIGHEST)
        return y if b is None else y + b

    def _j_batch_norm(self, x, weight, bias, running_mean, running_var, train, momentum, eps):
        """PyTorch's batch norm: ``(y, new_running_mean, new_running_var)``; biased variance normalises,
        the unbiased one enters the running variance."""
        jnp = self.jnp
        if train:
            n = x.shape[0] * x.shape[2] * x.shape[3]
            mean = jnp.mean(x, axis=(0, 2, 3))
            var = jnp.mean(jnp.square(x - mean[None, :, None, None]), axis=(0, 2, 3))
            new_mean = (1 - momentum) * running_mean + momentum * mean
            new_var = (1 - momentum) * running_var + momentum * var * (n / (n - 1))
        else:
            mean, var, new_mean, new_var = running_mean, running_var, running_mean, running_var
        inv = 1 / jnp.sqrt(var + eps)
        y = (x - mean[None, :, None, None]) * (inv * weight)[None, :, None, None] + bias[None, :, None, None]
        return y, new_mean, new_var

    def _j_group_norm(self, x, weight, bias, num_groups, eps):
        """``torch.nn.functional.group_norm``: each sample's groups of consecutive channels normalised with
        their mean and biased variance (two passes), then the per-channel affine map."""
        jnp = self.jnp
        xg = x.reshape(x.shape[0], num_groups, -1)
        mean = jnp.mean(xg, axis=2, keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=2, keepdims=True)
        x_hat = ((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
        pc = (1, -1) + (1,) * (x.ndim - 2)
        return x_hat * weight.reshape(pc) + bias.reshape(pc)

    def _j_relu(self, x):
        return self.jax.nn.relu(x)

    def _j_max_pool2d(self, x, kernel_size, stride, padding):
        lax = self.lax
        pads = ((0, 0), (0, 0)) + tuple((p, p) for p in padding)
        # a concrete -inf (not a traced array), so that JAX recognises the max monoid and can differentiate it
        init = np.array(-np.inf, dtype=x.dtype)
        return lax.reduce_window(x, init, lax.max, (1, 1, *kernel_size), (1, 1, *stride), pads)

    def _j_global_avgpool(self, x):
        return self.jnp.mean(x, axis=(2, 3))

    def _j_cross_entropy(self, logits, labels, label_smoothing):
        """Mean of ``(1 - eps) * (-log p[label]) + eps * mean_c(-log p[c])`` (PyTorch's label smoothing)."""
        jnp = self.jnp
        logp = self.jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        eps = label_smoothing
        nll = (1 - eps) * nll + eps * -jnp.mean(logp, axis=-1)
        return jnp.mean(nll)

    def _layer(self, key: tuple, build, *arrays):
        """A jitted layer function on device arrays (None passed through), NumPy results."""
        out = self._jit(key, build)(*[None if a is None else self._a(a) for a in arrays])
        return (
            tuple(None if o is None else self._np(o) for o in out)
            if isinstance(out, tuple)
            else self._np(out)
        )

    @_x64
    def conv2d_forward(self, x, w, b, *, stride, padding):
        key = ("conv", tuple(stride), tuple(padding), b is None)
        return self._layer(
            key, lambda: lambda x_, w_, b_: self._j_conv2d(x_, w_, b_, stride, padding), x, w, b
        )

    @_x64
    def conv2d_vjp(self, x, w, b, dy, *, stride, padding):
        def build():
            return lambda x_, w_, b_, d: self._vjp(
                lambda *a: self._j_conv2d(*a, stride, padding), [x_, w_, b_], d
            )

        key = ("conv_vjp", tuple(stride), tuple(padding), b is None)
        return self._layer(key, build, x, w, b, dy)

    @_x64
    def linear_forward(self, x, w, b):
        return self._layer(("linear", b is None), lambda: self._j_linear, x, w, b)

    @_x64
    def linear_vjp(self, x, w, b, dy):
        def build():
            return lambda x_, w_, b_, d: self._vjp(self._j_linear, [x_, w_, b_], d)

        return self._layer(("linear_vjp", b is None), build, x, w, b, dy)

    def _bn_scalars(self, x, momentum, eps):
        dtype = np.asarray(x).dtype
        return np.asarray(momentum, dtype=dtype), np.asarray(eps, dtype=dtype)

    @_x64
    def batchnorm2d_forward(self, x, weight, bias, running_mean, running_var, *, train, momentum, eps):
        def build():
            return lambda *a: self._j_batch_norm(*a[:5], train, *a[5:])

        return self._layer(
            ("bn", train),
            build,
            x,
            weight,
            bias,
            running_mean,
            running_var,
            *self._bn_scalars(x, momentum, eps),
        )

    @_x64
    def batchnorm2d_vjp(self, x, weight, bias, running_mean, running_var, dy, *, train, momentum, eps):
        def build():
            def f(x_, w_, b_, rm, rv, d, m, e):
                return self._vjp(lambda *a: self._j_batch_norm(*a, rm, rv, train, m, e)[0], [x_, w_, b_], d)

            return f

        return self._layer(
            ("bn_vjp", train),
            build,
            x,
            weight,
            bias,
            running_mean,
            running_var,
            dy,
            *self._bn_scalars(x, momentum, eps),
        )

    @_x64
    def groupnorm_forward(self, x, weight, bias, *, num_groups, eps):
        def build():
            return lambda x_, w_, b_, e: self._j_group_norm(x_, w_, b_, num_groups, e)

        eps = np.asarray(eps, dtype=np.asarray(x).dtype)
        return self._layer(("gn", num_groups), build, x, weight, bias, eps)

    @_x64
    def groupnorm_vjp(self, x, weight, bias, dy, *, num_groups, eps):
        def build():
            def f(x_, w_, b_, d, e):
                return self._vjp(lambda *a: self._j_group_norm(*a, num_groups, e), [x_, w_, b_], d)

            return f

        eps = np.asarray(eps, dtype=np.asarray(x).dtype)
        return self._layer(("gn_vjp", num_groups), build, x, weight, bias, dy, eps)

    @_x64
    def relu_forward(self, x):
        return self._elementwise(("relu",), lambda: self._j_relu, x)

    @_x64
    def relu_vjp(self, x, dy):
        return self._elementwise(
            ("relu_vjp",), lambda: lambda t, d: self._vjp(self._j_relu, [t], d)[0], x, dy
        )

    @_x64
    def maxpool2d_forward(self, x, *, kernel_size, stride, padding):
        key = ("maxpool", tuple(kernel_size), tuple(stride), tuple(padding))
        return self._layer(key, lambda: lambda t: self._j_max_pool2d(t, kernel_size, stride, padding), x)

    @_x64
    def maxpool2d_vjp(self, x, dy, *, kernel_size, stride, padding):
        def build():
            return lambda t, d: self._vjp(
                lambda v: self._j_max_pool2d(v, kernel_size, stride, padding), [t], d
            )[0]

        return self._layer(("maxpool_vjp", tuple(kernel_size), tuple(stride), tuple(padding)), build, x, dy)

    @_x64
    def global_avgpool_forward(self, x):
        return self._layer(("gap",), lambda: self._j_global_avgpool, x)

    @_x64
    def global_avgpool_vjp(self, x, dy):
        return self._layer(
            ("gap_vjp",), lambda: lambda t, d: self._vjp(self._j_global_avgpool, [t], d)[0], x, dy
        )

    @_x64
    def cross_entropy_forward(self, logits, labels, *, label_smoothing):
        eps = np.asarray(label_smoothing, dtype=np.asarray(logits).dtype)
        return self._layer(("ce",), lambda: self._j_cross_entropy, logits, labels, eps)

    @_x64
    def cross_entropy_vjp(self, logits, labels, dloss, *, label_smoothing):
        dtype = np.asarray(logits).dtype
        eps, dl = np.asarray(label_smoothing, dtype=dtype), np.asarray(dloss, dtype=dtype)

        def build():
            return lambda z, y, e, d: self._vjp(lambda v: self._j_cross_entropy(v, y, e), [z], d)[0]

        return self._layer(("ce_vjp",), build, logits, labels, eps, dl)

    # --------------------------------------------------------------------------------------- train
    @_x64
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
        """``torch.optim.SGD``'s recurrence from a fresh state, ``len(grads)`` steps, in ``jax.numpy``.

        Math
        ----
        ``g = g + wd p``; ``buf = g`` (first step) else ``mu buf + (1 - dampening) g``; ``g = g + mu buf``
        (Nesterov) or ``buf``; ``p = p - lr g``.
        """
        steps = len(grads)

        def build():
            def f(p, *args):
                gs, (lr_, mu, damp, wd) = args[:steps], args[steps:]
                buf = None
                for g in gs:
                    if weight_decay:
                        g = g + wd * p
                    if momentum:
                        buf = g if buf is None else mu * buf + damp * g
                        g = g + mu * buf if nesterov else buf
                    p = p - lr_ * g
                return p

            return f

        key = ("sgd", steps, bool(weight_decay), bool(momentum), bool(nesterov))
        out = {}
        for name, value in params.items():
            dtype = np.asarray(value).dtype
            scalars = tuple(
                self.jnp.asarray(v, dtype=dtype) for v in (lr, momentum, 1 - dampening, weight_decay)
            )
            out[name] = self._elementwise(key, build, value, *[g[name] for g in grads], scalars=scalars)
        return out

    # --------------------------------------------------------------------------------------- model
    def _j_resnet(self, arch: str, weights: dict, stats: dict, x, train: bool):
        """A torchvision-style ResNet from its parameter names; returns ``(logits, new_stats)``."""
        imagenet = arch == "resnet18"
        new_stats: dict = {}

        def conv_bn(h, conv: str, bn: str, stride: int, padding: int):
            h = self._j_conv2d(h, weights[conv + ".weight"], None, (stride, stride), (padding, padding))
            y, rm, rv = self._j_batch_norm(
                h,
                weights[bn + ".weight"],
                weights[bn + ".bias"],
                stats[bn + ".running_mean"],
                stats[bn + ".running_var"],
                train,
                0.1,
                1e-5,
            )
            new_stats[bn + ".running_mean"], new_stats[bn + ".running_var"] = rm, rv
            return y

        h = self._j_relu(conv_bn(x, "conv1", "bn1", 2 if imagenet else 1, 3 if imagenet else 1))
        if imagenet:
            h = self._j_max_pool2d(h, (3, 3), (2, 2), (1, 1))
        blocks = sorted((int(m[1]), int(m[2])) for m in map(_BLOCK.match, weights) if m)
        for stage, block in blocks:
            p = f"layer{stage}.{block}."
            stride = 2 if (block == 0 and stage > 1) else 1
            out = self._j_relu(conv_bn(h, p + "conv1", p + "bn1", stride, 1))
            out = conv_bn(out, p + "conv2", p + "bn2", 1, 1)
            if p + "downsample.0.weight" in weights:
                h = conv_bn(h, p + "downsample.0", p + "downsample.1", stride, 0)
            h = self._j_relu(out + h)
        logits = self._j_linear(self._j_global_avgpool(h), weights["fc.weight"], weights["fc.bias"])
        return logits, new_stats

    @_x64
    def model_forward_backward(self, arch, params, state, x, labels, *, train):
        """Forward, mean cross-entropy and ``jax.value_and_grad`` of the model given by its state dict."""
        if arch not in _ARCHS:
            raise NotImplementedError(f"JaxBackend: unknown architecture {arch!r}")

        def build():
            def f(weights, stats, xt, y):
                def loss_fn(w):
                    logits, new_stats = self._j_resnet(arch, w, stats, xt, train)
                    return self._j_cross_entropy(logits, y, 0.0), (logits, new_stats)

                return self.jax.value_and_grad(loss_fn, has_aux=True)(weights)

            return f

        weights = {k: self._a(v) for k, v in params.items()}
        stats = {k: self._a(v) for k, v in state.items()}
        fn = self._jit(("model", arch, bool(train)), build)
        (loss, (logits, new_stats)), grads = fn(weights, stats, self._a(x), self._a(labels))
        merged = {k: new_stats.get(k, v) for k, v in stats.items()}
        return ModelResult(
            self._np(logits),
            self._np(loss),
            {k: self._np(v) for k, v in merged.items()},
            {k: self._np(grads[k]) for k in params},
        )
