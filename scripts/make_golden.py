#!/usr/bin/env python
"""Write the golden vectors in ``saf_ref/data/files/golden/`` (or check the committed ones are current).

Golden vectors are saf_ref's answers to fixed questions, written to language-neutral files, so that a
backend written in C, CUDA, Rust or JAX can be checked against saf_ref without running Python. The file
formats are documented in ``saf_ref/data/files/golden/README.md``; ``index.json`` there (written by this
script) lists every file and, for the ``.npz`` files, every array with its dtype, shape and comparison rule.

Usage::

    python scripts/make_golden.py                 # (re)write saf_ref/data/files/golden/
    python scripts/make_golden.py --out DIR       # write to DIR instead
    python scripts/make_golden.py --check         # regenerate in memory, compare with the shipped files
    python scripts/make_golden.py --check --dir D # compare with D instead

``--check`` exits with status 1 and a per-file summary when anything differs. JSON and CSV files must be
byte-identical. ``.npz`` files are compared array by array with the rule recorded in ``index.json``:
``exact`` arrays bit for bit; arrays produced by BLAS or libm (convolutions, batch norm, softmax,
transcendentals) with a tolerance, because the last bits of those depend on the machine's BLAS build and
SIMD kernels (see :func:`compare_arrays`).

Everything is deterministic: every random draw comes from ``np.random.default_rng(seed)`` with a fixed
seed per section, and ``.npz`` files are written with fixed zip metadata (so their bytes do not depend on
the clock).
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import math
import sys
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from saf_ref.bits import FaultList, Quantizer, flip_by_uniform, get_format
from saf_ref.bits.ieee import IEEE_FORMATS
from saf_ref.nn.activations import relu_backward, relu_forward
from saf_ref.nn.batchnorm import batchnorm2d_backward, batchnorm2d_forward
from saf_ref.nn.conv import conv2d_backward, conv2d_forward
from saf_ref.nn.linear import linear_backward, linear_forward
from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward
from saf_ref.nn.pool import maxpool2d_backward, maxpool2d_forward
from saf_ref.nn.resnet import init_resnet, resnet_backward, resnet_forward
from saf_ref.protect.transforms import TRANSFORMS, Transform
from saf_ref.train.optim import SGD, sgd_init, sgd_step

REPO_ROOT = Path(__file__).resolve().parents[1]
# package data, so that the wheel ships the vectors (saf_ref.data.golden_dir())
GOLDEN_DIR = REPO_ROOT / "saf_ref" / "data" / "files" / "golden"
SCHEMA = "saf_ref.golden"
VERSION = 1
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip header can hold

#: Codec formats with an encode file; the 8-bit ones also get their full decode table in the JSON.
CODEC_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float32", "float64")
SOURCE_DTYPES = {"float32": (np.float32, np.uint32), "float64": (np.float64, np.uint64)}
N_RANDOM = 48  # random encode inputs per (format, input dtype)
FIXED_FORMAT = "q2.5"
FLIP_RATES = (0.0, 0.001, 0.01, 0.1, 0.5)

# Comparison rules of .npz arrays (see compare_arrays and the README).
EXACT, ULP, TOL64, TOL32 = "exact", "ulp", "tol64", "tol32"
TOL64_REL = 2.0**-30  # tol64: max|new - old| <= TOL64_REL * max|old|
TOL32_FACTOR = 4.0  # tol32: max|new - old| <= 4 * max|old32 - old64| + 2**-20 * max|old64|


# ==========================================================================================================
# Text helpers: hex codes, exact float text, deterministic JSON layout
# ==========================================================================================================
def hex_code(code: int, nbits: int) -> str:
    """``0x``-prefixed lower-case hex, zero-padded to the word width (``0x3c00``, ``0x7f``)."""
    return f"0x{int(code):0{(nbits + 3) // 4}x}"


def float_text(value: float) -> str:
    """Exact text of a float: ``float.hex()`` (``0x1.8p+1``, ``-0x0.0p+0``), or ``[-]inf`` / ``[-]nan``."""
    value = float(value)
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return value.hex()


def bits_text(x: np.ndarray) -> list[str]:
    """The bit patterns of a float32/float64 array (C order) as hex strings."""
    x = np.ascontiguousarray(x)
    nbits = x.dtype.itemsize * 8
    return [hex_code(w, nbits) for w in x.reshape(-1).view(f"<u{x.dtype.itemsize}").tolist()]


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def render_json(obj, indent: int = 0) -> str:
    """JSON text with a fixed layout: objects one key per line, lists of scalars on one line, lists of
    lists (table rows) one row per line. Floats print with ``repr`` (exact round trip); NaN is refused."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        flat = json.dumps(obj, allow_nan=False)
        if len(flat) <= 100:  # a short record ({"lsb": 10, "width": 5}) stays on one line
            return flat
        items = [f"{inner}{json.dumps(k)}: {render_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(_is_scalar(v) for v in obj):
            return json.dumps(list(obj), allow_nan=False)
        return "[\n" + ",\n".join(inner + render_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def json_bytes(obj) -> bytes:
    return (render_json(obj) + "\n").encode("utf-8")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (zip of ``.npy`` format 1.0 members, little-endian, C order, deflated) with fixed zip
    metadata (timestamp, permissions, creating system) and no pickled objects.

    The bytes are reproducible with a given zlib; another zlib build may deflate differently, which is
    why ``--check`` compares ``.npz`` files array by array rather than byte by byte.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, mode="w") as zf:
        for name, a in arrays.items():
            a = np.asarray(a, order="C")  # (np.ascontiguousarray would turn a 0-d loss into shape (1,))
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # "Unix", whatever the platform
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    return out.getvalue()


# ==========================================================================================================
# IEEE codecs
# ==========================================================================================================
def _code_values(fmt, codes: list[int]) -> list[float]:
    """Exact values (Python floats) of magnitude codes of ``fmt``."""
    return [float(v) for v in fmt.decode(np.array(codes, dtype=np.uint64).astype(fmt.container))]


def _max_code(fmt) -> int:
    return int(fmt.encode(np.float64(fmt.max_finite)))


def _anchor_codes(fmt) -> list[int]:
    """Magnitude codes whose value, and the midpoint to the next code, are boundary cases.

    8-bit formats: every finite code (so every rounding interval is tested). Wider formats: zero, the
    smallest subnormals, the subnormal/normal edge, 1.0 and its neighbours, the largest finite values.
    """
    top = _max_code(fmt)
    if fmt.nbits <= 8:
        return list(range(top + 1))
    m = fmt.mantissa_bits
    one = int(fmt.encode(np.float64(1.0)))
    picks = [0, 1, 2, 3, (1 << m) - 2, (1 << m) - 1, 1 << m, (1 << m) + 1, (2 << m) - 1, 2 << m]
    picks += [one - 1, one, one + 1, top - 2, top - 1, top]
    return sorted({c for c in picks if 0 <= c <= top})


def _boundary_values(fmt, src) -> list[tuple[float, str]]:
    """Candidate encode inputs of ``fmt`` (magnitudes, as Python floats) with a tag.

    Tags: ``exact`` (a value of the format), ``tie`` (midpoint of two neighbouring values: ties to even),
    ``tie+`` / ``tie-`` (the next input above / below a midpoint), ``overflow`` (around the overflow
    threshold ``max_finite + ulp/2``), ``underflow`` (around half the smallest subnormal), ``huge``,
    ``tiny``. Values not exactly representable in the input dtype are dropped later.
    """
    anchors = _anchor_codes(fmt)
    values = dict(zip(anchors, _code_values(fmt, anchors), strict=True))
    nxt = {c: v for c, v in zip(anchors, _code_values(fmt, [c + 1 for c in anchors]), strict=True)}
    top = _max_code(fmt)
    out: list[tuple[float, str]] = []
    for c in anchors:
        out.append((values[c], "exact"))
        if c < top:
            mid = (values[c] + nxt[c]) / 2  # exact in float64: both have at most 24 significant bits
            out += [(mid, "tie"), (_next(mid, src, +1), "tie+"), (_next(mid, src, -1), "tie-")]
    vmax, vprev = _code_values(fmt, [top, top - 1])
    ulp = vmax - vprev
    threshold = vmax + ulp / 2
    out += [
        (threshold, "overflow"),
        (_next(threshold, src, +1), "overflow"),
        (_next(threshold, src, -1), "overflow"),
    ]
    out += [(vmax + ulp, "overflow"), (2 * vmax, "overflow")]
    half_sub = fmt.min_subnormal / 2
    out += [
        (half_sub, "underflow"),
        (_next(half_sub, src, +1), "underflow"),
        (_next(half_sub, src, -1), "underflow"),
    ]
    out += [(fmt.min_subnormal / 4, "underflow")]
    info = np.finfo(src)
    out += [(float(info.max), "huge"), (float(info.smallest_subnormal), "tiny")]
    return out


def _next(v: float, src, direction: int) -> float:
    """The neighbour of ``v`` in the input dtype, toward +inf (``+1``) or toward 0 (``-1``)."""
    with np.errstate(over="ignore"):
        s = src(v)
    target = src(np.inf) if direction > 0 else src(0.0)
    return float(np.nextafter(s, target))


def _special_patterns(src, usrc) -> list[tuple[int, str]]:
    """Bit patterns of +-0, +-inf and NaNs (quiet, signalling, with payloads) of the input dtype."""
    nbits = np.dtype(usrc).itemsize * 8
    p = np.finfo(src).nmant
    sign = 1 << (nbits - 1)
    inf = int(np.array(np.inf, src).view(usrc))
    quiet = inf | (1 << (p - 1))
    return [
        (0, "zero"), (sign, "zero"), (inf, "inf"), (sign | inf, "inf"), (quiet, "nan"), (sign | quiet, "nan"),
        (inf | 1, "nan_signalling"), (sign | inf | 1, "nan_signalling"),
        (inf | ((1 << p) - 1), "nan_payload"), (sign | quiet | 0x5, "nan_payload"),
    ]  # fmt: skip


def _random_inputs(fmt, src, rng: np.random.Generator, n: int) -> list[float]:
    """Random inputs spread over the format's exponent range (a bit beyond on both sides), random sign
    and random input-precision significand."""
    p = np.finfo(src).nmant
    info = np.finfo(src)
    lo = max(fmt.emin - fmt.mantissa_bits - 3, info.minexp - p)  # not below the input's subnormals
    hi = min(fmt.emax + 2, info.maxexp - 1)  # not above the input's largest binade
    out = []
    for _ in range(n):
        e = int(rng.integers(lo, hi + 1))
        sig = int(rng.integers(1 << p, 1 << (p + 1)))  # p + 1 bits with the leading one
        sign = -1.0 if rng.integers(0, 2) else 1.0
        with np.errstate(over="ignore", under="ignore"):
            out.append(float(src(sign * math.ldexp(sig, e - p))))  # rounds into src's subnormals if needed
    return out


def _encode_rows(fmt, src_name: str, rng: np.random.Generator) -> list[list]:
    """Rows ``[x_bits, x, ieee, saturate, tag]`` for one (format, input dtype)."""
    src, usrc = SOURCE_DTYPES[src_name]
    nbits_src = np.dtype(usrc).itemsize * 8
    candidates: list[tuple[int, str]] = list(_special_patterns(src, usrc))
    if fmt.name != "float64" and not (fmt.name == "float32" and src_name == "float32"):
        for v, tag in _boundary_values(fmt, src):
            with np.errstate(over="ignore"):
                s = src(v)
            if not np.isfinite(s) or float(s) != v:
                continue  # not an input of this dtype
            for sign in (1.0, -1.0):
                candidates.append((int(np.array(sign * s, src).view(usrc)), tag))
    for v in _random_inputs(fmt, src, rng, N_RANDOM):
        candidates.append((int(np.array(v, src).view(usrc)), "random"))
    seen: set[int] = set()
    words = []
    tags = []
    for w, tag in candidates:
        if w not in seen:
            seen.add(w)
            words.append(w)
            tags.append(tag)
    x = np.array(words, dtype=usrc).view(src)
    ieee = fmt.encode(x, overflow="ieee").tolist()
    sat = fmt.encode(x, overflow="saturate").tolist()
    return [
        [hex_code(w, nbits_src), float_text(v), hex_code(a, fmt.nbits), hex_code(b, fmt.nbits), t]
        for w, v, a, b, t in zip(words, x.tolist(), ieee, sat, tags, strict=True)
    ]


def _format_header(fmt) -> dict:
    return {
        "nbits": fmt.nbits,
        "exponent_bits": fmt.exponent_bits,
        "mantissa_bits": fmt.mantissa_bits,
        "bias": fmt.bias,
        "has_infinity": fmt.has_infinity,
        "max_finite": float_text(fmt.max_finite),
        "min_normal": float_text(fmt.min_normal),
        "min_subnormal": float_text(fmt.min_subnormal),
        "fields": {k: {"lsb": f.lsb, "width": f.width} for k, f in fmt.fields.items()},
        "canonical_nan": hex_code(int(fmt.encode(np.float64(np.nan))), fmt.nbits),
    }


def codec_file(name: str, seed: int) -> bytes:
    """``codec_<format>.json``: encode cases per input dtype and, for 8-bit formats, the decode table."""
    fmt = IEEE_FORMATS[name]
    rng = np.random.default_rng(seed)
    doc = {"schema": f"{SCHEMA}.codec", "version": VERSION, "format": name, **_format_header(fmt)}
    doc["encode_columns"] = ["x_bits", "x", "ieee", "saturate", "tag"]
    doc["encode"] = {src_name: _encode_rows(fmt, src_name, rng) for src_name in SOURCE_DTYPES}
    if fmt.nbits <= 8:
        codes = np.arange(1 << fmt.nbits, dtype=fmt.container)
        values = fmt.decode(codes).astype(np.float32)  # decode_dtype is float32 already
        doc["decode_columns"] = ["code", "value_bits", "value", "class"]
        doc["decode"] = [
            [hex_code(c, fmt.nbits), b, float_text(v), str(k)]
            for c, b, v, k in zip(
                codes.tolist(), bits_text(values), values.tolist(), fmt.classify(codes).tolist(), strict=True
            )
        ]
    return json_bytes(doc)


_CLASS_CODES = {"zero": 0, "subnormal": 1, "normal": 2, "inf": 3, "nan": 4}


def decode16_arrays() -> tuple[dict[str, np.ndarray], dict]:
    """``codec_decode16.npz``: the decoded value (float32 bits) and class of every 16-bit code."""
    arrays, spec = {}, {}
    for name in ("float16", "bfloat16"):
        fmt = IEEE_FORMATS[name]
        codes = np.arange(1 << 16, dtype=np.uint16)
        values = fmt.decode(codes).astype(np.float32)  # float16 -> float32 widening is exact
        classes = np.vectorize(_CLASS_CODES.__getitem__, otypes=[np.uint8])(fmt.classify(codes))
        arrays[f"{name}.value_bits"] = values.view(np.uint32)
        arrays[f"{name}.class"] = classes
        spec[f"{name}.value_bits"] = {"rule": EXACT}
        spec[f"{name}.class"] = {"rule": EXACT}
    return arrays, spec


# ==========================================================================================================
# Fixed point q2.5
# ==========================================================================================================
FIXED_MODES = [(r, o) for o in ("saturate", "wrap") for r in ("nearest_even", "toward_zero", "floor")]


def _fixed_inputs() -> dict[str, list[float]]:
    """Inputs of the q2.5 encode cases: every multiple of 2**-6 in [-4.5, 4.5] (the values and the ties
    between them, each tie also nudged by one ulp), signed zeros, infinities and large values."""
    grid = [k / 64 for k in range(-288, 289)]
    ties = [(2 * k + 1) / 64 for k in (-129, -128, -65, -64, -33, -32, -1, 0, 1, 32, 63, 64, 126, 127, 128)]
    f32 = list(grid) + [-0.0, math.inf, -math.inf, 5.0, -5.0, 100.25, -100.25, 1e30, -1e30]
    for t in ties:
        f32 += [
            float(np.nextafter(np.float32(t), np.float32(np.inf))),
            float(np.nextafter(np.float32(t), np.float32(-np.inf))),
        ]
    f64 = [1e300, -1e300, 2.0**60 + 2.0**-5, -(2.0**60) - 3 * 2.0**-6, 4.0 - 2.0**-40, -4.0 - 2.0**-40]
    for t in ties[:6]:
        f64 += [math.nextafter(t, math.inf), math.nextafter(t, -math.inf)]
    return {"float32": f32, "float64": f64}


def fixed_file() -> bytes:
    """``fixed_q2.5.json``: every code decoded, and encode cases under each rounding and overflow mode."""
    fmt = get_format(FIXED_FORMAT)
    codes = np.arange(1 << fmt.nbits, dtype=fmt.container)
    values = fmt.decode(codes)
    doc = {
        "schema": f"{SCHEMA}.fixed", "version": VERSION, "format": fmt.name, "nbits": fmt.nbits,
        "int_bits": fmt.int_bits, "frac_bits": fmt.frac_bits,
        "fields": {k: {"lsb": f.lsb, "width": f.width} for k, f in fmt.fields.items()},
        "decode_columns": ["code", "int", "value_bits", "value"],
        "decode": [
            [hex_code(c, fmt.nbits), k, b, float_text(v)]
            for c, k, b, v in zip(codes.tolist(), fmt.to_int(codes).tolist(), bits_text(values),
                                  values.tolist(), strict=True)
        ],
        "encode_columns": ["x_bits", "x"] + [f"{r}/{o}" for r, o in FIXED_MODES],
        "encode": {},
    }  # fmt: skip
    for src_name, xs in _fixed_inputs().items():
        x = np.array(xs, dtype=SOURCE_DTYPES[src_name][0])
        cols = [_fixed_encode_or_none(fmt, x, r, o) for r, o in FIXED_MODES]
        doc["encode"][src_name] = [
            [b, float_text(v)] + [col[i] for col in cols]
            for i, (b, v) in enumerate(zip(bits_text(x), x.tolist(), strict=True))
        ]
    return json_bytes(doc)


def _fixed_encode_or_none(fmt, x: np.ndarray, rounding: str, overflow: str) -> list:
    """Codes (hex) per element, ``None`` where encode rejects the input (+-inf under wrap)."""
    out = []
    for v in x:
        try:
            out.append(hex_code(int(fmt.encode(v, rounding=rounding, overflow=overflow)), fmt.nbits))
        except ValueError:
            out.append(None)
    return out


# ==========================================================================================================
# Faults
# ==========================================================================================================
FLIP_CASES = (  # (name, format, number of words, protected bits or None)
    ("float32", "float32", 16, None),
    ("float16", "float16", 24, None),
    ("bfloat16", "bfloat16", 24, None),
    ("float8_e4m3fn", "float8_e4m3fn", 48, None),
    ("float8_e5m2", "float8_e5m2", 48, None),
    ("q2.5", "q2.5", 48, None),
    ("float16_protect_sign_exponent", "float16", 24, list(range(10, 16))),
)


def _planted_uniform(rng: np.random.Generator, n: int, nbits: int) -> np.ndarray:
    """Uniform float32 numbers in [0, 1), with the comparison's edge cases planted: for each rate ``p``,
    some entries equal ``float32(p)`` exactly (must NOT flip: the test is strict ``u < p``) and some equal
    the float32 just below it (must flip); plus a few exact zeros (flip for every ``p > 0``)."""
    u = rng.random((n, nbits), dtype=np.float32)
    flat = u.reshape(-1)
    slots = rng.permutation(flat.size)
    k = 0
    for p in FLIP_RATES:
        if p == 0.0:
            continue
        p32 = np.float32(p)
        for v in (p32, np.nextafter(p32, np.float32(0))):
            flat[slots[k]] = v
            k += 1
    flat[slots[k : k + 3]] = 0.0
    return u


def _flip_case(fmt_name: str, n: int, protected, rng: np.random.Generator) -> dict:
    """One case of ``faults_flip_by_uniform.json``: ``n`` words, their uniform array, codes per rate."""
    fmt = get_format(fmt_name)
    if fmt_name.startswith("q"):
        x = rng.uniform(-4.0, 4.0, n).astype(np.float32)  # q2.5 covers [-4, 4)
    else:
        x = (rng.standard_normal(n) * 2.0).astype(np.float32)
    codes = fmt.encode(x)
    u = _planted_uniform(rng, n, fmt.nbits)
    results = {}
    for p in FLIP_RATES:
        after = flip_by_uniform(codes, u, p, protected=protected)
        results[repr(p)] = {
            "p_float32_bits": bits_text(np.array([p], np.float32))[0],
            "after": [hex_code(c, fmt.nbits) for c in after.tolist()],
        }
    return {
        "format": fmt_name,
        "nbits": fmt.nbits,
        "protected": protected,
        "x_float32_bits": bits_text(x),
        "before": [hex_code(c, fmt.nbits) for c in codes.tolist()],
        "uniform_bits": [bits_text(row) for row in u],
        "results": results,
    }


def flip_file(seed: int) -> bytes:
    """``faults_flip_by_uniform.json``: codes before and after ``flip_by_uniform`` at several rates."""
    rng = np.random.default_rng(seed)
    doc = {
        "schema": f"{SCHEMA}.flip_by_uniform", "version": VERSION,
        "rule": "bit j of word k flips iff uniform[k][j] < float32(p) and j is not protected (bit 0 = LSB)",
        "rates": [repr(p) for p in FLIP_RATES],
        "cases": {name: _flip_case(f, n, prot, rng) for name, f, n, prot in FLIP_CASES},
    }  # fmt: skip
    return json_bytes(doc)


FAULTLIST_TENSORS = (  # (name, format, shape)
    ("conv1.weight", "float32", (4, 3, 2, 2)),
    ("fc.weight", "bfloat16", (3, 5)),
    ('odd,"name"', "float8_e4m3fn", (6,)),  # a name that CSV must quote
)


def faultlist_files(seed: int) -> dict[str, bytes]:
    """``faultlist.csv`` and ``faultlist.json`` (one FaultList in its two file forms) and
    ``faults_faultlist.json`` (the codes of each tensor before and after applying it)."""
    rng = np.random.default_rng(seed)
    tensors, records = {}, []
    for name, fmt_name, shape in FAULTLIST_TENSORS:
        fmt = get_format(fmt_name)
        x = rng.standard_normal(shape).astype(np.float32)
        tensors[name] = (fmt, fmt.encode(x), x)
        size = int(np.prod(shape))
        for _ in range(6):  # random flips and stuck-at faults
            kind = ("flip", "flip", "stuck0", "stuck1")[int(rng.integers(0, 4))]
            records.append(
                (name, int(rng.integers(0, size)), int(rng.integers(0, fmt.nbits)), kind, fmt_name)
            )
        # Edge cases: a flip twice (cancels), the sign bit, a stuck bit that is also flipped, bit 0.
        records += [
            (name, 1, 0, "flip", fmt_name), (name, 1, 0, "flip", fmt_name),
            (name, size - 1, fmt.nbits - 1, "flip", fmt_name),
            (name, 0, 2, "flip", fmt_name), (name, 0, 2, "stuck1", fmt_name),
            (name, 0, fmt.nbits - 2, "stuck0", fmt_name), (name, 0, 0, "flip", fmt_name),
        ]  # fmt: skip
    fl = FaultList(records)
    doc = {
        "schema": f"{SCHEMA}.faultlist_apply", "version": VERSION,
        "faultlist": ["faultlist.csv", "faultlist.json"],
        "rule": "per word: XOR every flip (two flips of a bit cancel), then clear stuck0 bits, "
                "then set stuck1 bits",
        "tensors": {
            name: {
                "format": fmt.name, "nbits": fmt.nbits, "shape": list(codes.shape),
                "x_float32_bits": bits_text(x),
                "before": [hex_code(c, fmt.nbits) for c in codes.reshape(-1).tolist()],
                "after": [hex_code(c, fmt.nbits) for c in fl.apply(codes, name, nbits=fmt.nbits).reshape(-1)],
            }
            for name, (fmt, codes, x) in tensors.items()
        },
    }  # fmt: skip
    return {
        "faultlist.csv": fl.to_csv().encode("utf-8"),
        "faultlist.json": fl.to_json().encode("utf-8"),
        "faults_faultlist.json": json_bytes(doc),
    }


# ==========================================================================================================
# Quantizers
# ==========================================================================================================
QUANT_RANGES = (  # (label, scheme, options)
    ("sym_fixed", "symmetric", {"max_abs": 1.0}),
    ("sym_adaptive", "symmetric", {}),
    ("sym_clipped", "symmetric", {"clip": 0.5}),
    ("asym", "asymmetric", {}),
    ("asym_clipped", "asymmetric", {"clip": 0.5}),
)


def _quant_configs() -> list[dict]:
    out = []
    for nbits in (8, 4):
        for label, scheme, opts in QUANT_RANGES:
            for code in ("offset_binary", "twos_complement"):
                for rounding in ("nearest_even", "toward_zero"):
                    cfg = {"nbits": nbits, "scheme": scheme, "code": code, "rounding": rounding}
                    out.append({**cfg, "clip": None, "max_abs": None, "margin": 0.0, **opts, "label": label})
    out.append({"nbits": 16, "scheme": "asymmetric", "code": "offset_binary", "rounding": "nearest_even",
                "clip": None, "max_abs": None, "margin": 0.0, "label": "asym"})  # fmt: skip
    out.append({"nbits": 8, "scheme": "symmetric", "code": "offset_binary", "rounding": "toward_zero",
                "clip": None, "max_abs": 1.0, "margin": 1e-3, "label": "sym_fixed_margin"})  # fmt: skip
    return out


def quantizer_file(seed: int) -> bytes:
    """``quantizer.json``: per configuration, inputs, codes, context and decoded values, and the decoded
    value of every code (for nbits <= 8; codes reachable only by bit flips included)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(56) * 0.1).astype(np.float32)
    x = np.concatenate([x, np.array([0.0, -0.0, 0.2, -0.2, 0.75, -1.0, 1.0, 1.25], np.float32)])
    cases = {}
    for cfg in _quant_configs():
        params = {k: v for k, v in cfg.items() if k != "label"}
        q = Quantizer(**params)
        codes, ctx = q.encode(x)
        decoded = q.decode(codes, ctx)
        name = q.name + ("_margin" if cfg["margin"] else "")
        case = {
            "params": params,
            "context": ctx.to_dict(),
            "context_float32_bits": {
                k: bits_text(np.array([v], np.float32))[0]
                for k, v in ctx.to_dict().items() if isinstance(v, float)
            },
            "rows": [
                [xb, hex_code(c, q.nbits), db]
                for xb, c, db in zip(bits_text(x), codes.tolist(), bits_text(decoded), strict=True)
            ],
        }  # fmt: skip
        if q.nbits <= 8:
            all_codes = np.arange(1 << q.nbits, dtype=q.container)
            case["decode_all_bits"] = bits_text(q.decode(all_codes, ctx))
        cases[name] = case
    doc = {
        "schema": f"{SCHEMA}.quantizer", "version": VERSION,
        "rows_columns": ["x_bits", "code", "decoded_bits"],
        "cases": cases,
    }  # fmt: skip
    return json_bytes(doc)


# ==========================================================================================================
# Network ops (npz): inputs float32-representable, float64 results are the truth for the same inputs
# ==========================================================================================================
class Arrays:
    """Collects the arrays of one ``.npz`` and their comparison rules (``spec``) for ``index.json``."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.spec: dict[str, dict] = {}

    def add(self, name: str, a, rule: str, **extra) -> None:
        a = np.asarray(a)
        self.arrays[name] = a
        self.spec[name] = {"rule": rule, **extra}

    def add_pair(self, prefix: str, name: str, got: dict[str, np.ndarray], rule: str, **extra) -> None:
        """Add ``prefix.float64.name`` and ``prefix.float32.name`` from ``got = {"float64": ..,
        "float32": ..}``; with ``rule="tol64"`` the float32 one gets ``tol32``, paired with the float64
        one."""
        for dt in ("float64", "float32"):
            r = rule if dt == "float64" or rule != TOL64 else TOL32
            kw = dict(extra)
            if r == TOL32:
                kw["pair"] = f"{prefix}.float64.{name}"
            self.add(f"{prefix}.{dt}.{name}", got[dt], r, **kw)


def _inputs(rng: np.random.Generator, shape, scale: float = 1.0) -> dict[str, np.ndarray]:
    """A float32 input and its exact float64 widening."""
    x32 = (rng.standard_normal(shape) * scale).astype(np.float32)
    return {"float32": x32, "float64": x32.astype(np.float64)}


def _both(fn: Callable, *args: dict[str, np.ndarray | None]) -> dict[str, object]:
    """Run ``fn`` on the float64 and on the float32 version of every input."""
    return {dt: fn(*(a[dt] for a in args)) for dt in ("float64", "float32")}


def _field(results: dict[str, object], name: str) -> dict[str, np.ndarray]:
    """``{dtype: getattr(result, name)}`` for a dict of per-dtype gradient tuples."""
    return {dt: getattr(r, name) for dt, r in results.items()}


NONE = {"float64": None, "float32": None}

CONV_CASES = (  # (name, N, C, H, W, O, kernel, stride, padding, bias)
    ("conv_3x3_s1_p1_bias", 2, 3, 7, 6, 4, (3, 3), (1, 1), (1, 1), True),
    ("conv_3x3_s2_p0", 2, 3, 8, 7, 4, (3, 3), (2, 2), (0, 0), False),  # floor drops a row and a column
    ("conv_1x1_s2", 2, 4, 6, 6, 5, (1, 1), (2, 2), (0, 0), False),
    ("conv_2x3_s21_p10_bias", 2, 2, 5, 7, 3, (2, 3), (2, 1), (1, 0), True),
)


def _conv_vjp(x, w, b, dy, *, stride, padding):
    """``(y, Conv2dGrads)`` of one convolution."""
    y, cache = conv2d_forward(x, w, b, stride=stride, padding=padding)
    return y, conv2d_backward(dy, cache)


def conv_cases(out: Arrays, cases: dict, rng: np.random.Generator) -> None:
    """conv2d forward and backward; each output carries its dot-product bound data (magnitude, K)."""
    for name, n, c, h, w, o, k, stride, pad, bias in CONV_CASES:
        ho = (h + 2 * pad[0] - k[0]) // stride[0] + 1
        wo = (w + 2 * pad[1] - k[1]) // stride[1] + 1
        x, wt = _inputs(rng, (n, c, h, w)), _inputs(rng, (o, c, *k), 0.3)
        b = _inputs(rng, (o,), 0.1) if bias else NONE
        dy = _inputs(rng, (n, o, ho, wo))
        vjp = partial(_conv_vjp, stride=stride, padding=pad)
        res = _both(vjp, x, wt, b, dy)
        grads = {dt: r[1] for dt, r in res.items()}
        # |x| . |w| for each output (DESIGN.md section 5): the same op in float64 on absolute values.
        absolute = [None if a["float64"] is None else np.abs(a["float64"]) for a in (x, wt, b, dy)]
        mag_y, mag = vjp(*absolute)
        # Terms summed into one output: y: C*kh*kw products (+ the bias); dw, db: N*Ho*Wo; dx: at most
        # O*kh*kw (fewer with stride > 1, so this K is an upper bound).
        k_y, k_w, k_x = c * k[0] * k[1] + int(bias), n * ho * wo, o * k[0] * k[1]
        for arr, val in (("x", x), ("w", wt), ("b", b), ("dy", dy)):
            if val is not NONE:
                out.add_pair(name, arr, val, EXACT)
        outputs = [("y", {dt: r[0] for dt, r in res.items()}, mag_y, k_y)]
        outputs += [("dx", _field(grads, "dx"), mag.dx, k_x), ("dw", _field(grads, "dw"), mag.dw, k_w)]
        if bias:
            outputs.append(("db", _field(grads, "db"), mag.db, k_w))
        for arr, val, magnitude, terms in outputs:
            bound = {"magnitude": f"{name}.magnitude.{arr}", "k": terms}
            out.add_pair(name, arr, val, TOL64, bound=bound)
            out.add(f"{name}.magnitude.{arr}", magnitude, TOL64)
        cases[name] = {
            "op": "conv2d", "stride": list(stride), "padding": list(pad), "bias": bias,
            "arrays_in": ["x", "w"] + (["b"] if bias else []) + ["dy"],
            "arrays_out": [arr for arr, *_ in outputs],
        }  # fmt: skip


def _batchnorm_vjp(x, weight, bias, running_mean, running_var, dy, *, train):
    """``(y, new_running_mean, new_running_var, BatchNorm2dGrads)`` of one batch norm."""
    y, new_mean, new_var, cache = batchnorm2d_forward(
        x, weight, bias, running_mean, running_var, train=train, momentum=0.1, eps=1e-5
    )
    return y, new_mean, new_var, batchnorm2d_backward(dy, cache)


def batchnorm_cases(out: Arrays, cases: dict, rng: np.random.Generator) -> None:
    """batchnorm2d in training mode (batch statistics, running-statistic update) and evaluation mode."""
    shape, c = (3, 4, 5, 4), 4
    for name, train in (("batchnorm_train", True), ("batchnorm_eval", False)):
        x = _inputs(rng, shape, 2.0)
        offsets = np.arange(c).reshape(1, c, 1, 1)  # per-channel means 0..3: a per-feature bug shows
        x = {dt: v + offsets.astype(v.dtype) for dt, v in x.items()}
        gamma, beta, rmean = _inputs(rng, (c,), 0.5), _inputs(rng, (c,), 0.5), _inputs(rng, (c,), 0.5)
        rvar = {dt: np.abs(v) + v.dtype.type(0.5) for dt, v in _inputs(rng, (c,)).items()}
        dy = _inputs(rng, shape)
        res = _both(partial(_batchnorm_vjp, train=train), x, gamma, beta, rmean, rvar, dy)
        inputs = (("x", x), ("weight", gamma), ("bias", beta), ("running_mean", rmean), ("running_var", rvar))
        for arr, val in (*inputs, ("dy", dy)):
            out.add_pair(name, arr, val, EXACT)
        for i, arr in enumerate(("y", "new_running_mean", "new_running_var")):
            out.add_pair(name, arr, {dt: r[i] for dt, r in res.items()}, TOL64)
        for arr in ("dx", "dweight", "dbias"):
            out.add_pair(name, arr, _field({dt: r[3] for dt, r in res.items()}, arr), TOL64)
        cases[name] = {
            "op": "batchnorm2d", "train": train, "momentum": 0.1, "eps": 1e-5,
            "arrays_in": ["x", "weight", "bias", "running_mean", "running_var", "dy"],
            "arrays_out": ["y", "new_running_mean", "new_running_var", "dx", "dweight", "dbias"],
        }  # fmt: skip


def _linear_vjp(x, w, b, dy):
    y, cache = linear_forward(x, w, b)
    return y, linear_backward(dy, cache)


def linear_cases(out: Arrays, cases: dict, rng: np.random.Generator) -> None:
    """linear forward and backward (N=3, 5 -> 4 features, with bias)."""
    name = "linear"
    x, w, b, dy = (
        _inputs(rng, (3, 5)),
        _inputs(rng, (4, 5), 0.4),
        _inputs(rng, (4,), 0.1),
        _inputs(rng, (3, 4)),
    )
    res = _both(_linear_vjp, x, w, b, dy)
    grads = {dt: r[1] for dt, r in res.items()}
    mag_y, mag = _linear_vjp(*(np.abs(a["float64"]) for a in (x, w, b, dy)))
    for arr, val in (("x", x), ("w", w), ("b", b), ("dy", dy)):
        out.add_pair(name, arr, val, EXACT)
    outputs = [("y", {dt: r[0] for dt, r in res.items()}, mag_y, 6)]  # 5 products + the bias
    outputs += [("dx", _field(grads, "dx"), mag.dx, 4), ("dw", _field(grads, "dw"), mag.dw, 3)]
    outputs += [("db", _field(grads, "db"), mag.db, 3)]
    for arr, val, magnitude, terms in outputs:
        out.add_pair(name, arr, val, TOL64, bound={"magnitude": f"{name}.magnitude.{arr}", "k": terms})
        out.add(f"{name}.magnitude.{arr}", magnitude, TOL64)
    cases[name] = {"op": "linear", "arrays_in": ["x", "w", "b", "dy"], "arrays_out": ["y", "dx", "dw", "db"]}


def _cross_entropy_vjp(logits, *, labels, smoothing):
    loss, cache = cross_entropy_forward(logits, labels, label_smoothing=smoothing)
    return np.asarray(loss), cross_entropy_backward(1.0, cache).dlogits


def cross_entropy_cases(out: Arrays, cases: dict, rng: np.random.Generator) -> None:
    """Mean softmax cross-entropy and its gradient (dloss = 1), without and with label smoothing."""
    for name, smoothing in (("cross_entropy", 0.0), ("cross_entropy_smoothed", 0.1)):
        logits = _inputs(rng, (4, 6), 3.0)
        labels = rng.integers(0, 6, 4).astype(np.int64)
        res = _both(partial(_cross_entropy_vjp, labels=labels, smoothing=smoothing), logits)
        out.add_pair(name, "logits", logits, EXACT)
        out.add(f"{name}.labels", labels, EXACT)
        out.add_pair(name, "loss", {dt: r[0] for dt, r in res.items()}, TOL64)
        out.add_pair(name, "dlogits", {dt: r[1] for dt, r in res.items()}, TOL64)
        cases[name] = {
            "op": "cross_entropy", "label_smoothing": smoothing, "reduction": "mean", "dloss": 1.0,
            "arrays_in": ["logits", "labels"], "arrays_out": ["loss", "dlogits"],
        }  # fmt: skip


def _relu_vjp(x, dy):
    y, cache = relu_forward(x)
    return y, relu_backward(dy, cache).dx


def _maxpool_vjp(x, dy, *, kernel_size, stride, padding):
    y, cache = maxpool2d_forward(x, kernel_size=kernel_size, stride=stride, padding=padding)
    return y, maxpool2d_backward(dy, cache).dx


MAXPOOL_CASES = (("maxpool_k3_s2_p1", 3, 2, 1), ("maxpool_k2_s2_p0", 2, 2, 0), ("maxpool_k3_s1_p1", 3, 1, 1))


def relu_pool_cases(out: Arrays, cases: dict, rng: np.random.Generator) -> None:
    """relu (signed zeros, NaN, infinities, subnormals included) and maxpool (windows with ties)."""
    name = "relu"
    x, dy = _inputs(rng, (3, 4, 5)), _inputs(rng, (3, 4, 5))
    special = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45], np.float32)
    for v in x.values():
        v.reshape(-1)[: special.size] = special  # our own fresh arrays: writing in place is fine
    res = _both(_relu_vjp, x, dy)
    for arr, val in (("x", x), ("dy", dy)):
        out.add_pair(name, arr, val, EXACT)
    out.add_pair(name, "y", {dt: r[0] for dt, r in res.items()}, EXACT)
    out.add_pair(name, "dx", {dt: r[1] for dt, r in res.items()}, EXACT)
    cases[name] = {"op": "relu", "arrays_in": ["x", "dy"], "arrays_out": ["y", "dx"]}

    for name, k, s, p in MAXPOOL_CASES:
        # Values on a grid of 0.5, so that windows hold ties (the first maximum in row-major order wins).
        x = {dt: np.round(v * 2) / 2 for dt, v in _inputs(rng, (2, 3, 7, 6)).items()}
        ho, wo = (7 + 2 * p - k) // s + 1, (6 + 2 * p - k) // s + 1
        dy = _inputs(rng, (2, 3, ho, wo))
        res = _both(partial(_maxpool_vjp, kernel_size=k, stride=s, padding=p), x, dy)
        for arr, val in (("x", x), ("dy", dy)):
            out.add_pair(name, arr, val, EXACT)
        out.add_pair(name, "y", {dt: r[0] for dt, r in res.items()}, EXACT)
        out.add_pair(name, "dx", {dt: r[1] for dt, r in res.items()}, EXACT)
        cases[name] = {
            "op": "maxpool2d", "kernel_size": k, "stride": s, "padding": p,
            "arrays_in": ["x", "dy"], "arrays_out": ["y", "dx"],
        }  # fmt: skip


def nn_ops_arrays(seed: int) -> tuple[dict[str, np.ndarray], dict, dict]:
    """``nn_ops.npz``: conv2d, batchnorm2d, linear, cross-entropy, relu and maxpool cases."""
    rng = np.random.default_rng(seed)
    out, cases = Arrays(), {}
    for build in (conv_cases, batchnorm_cases, linear_cases, cross_entropy_cases, relu_pool_cases):
        build(out, cases, rng)
    return out.arrays, out.spec, cases


# ==========================================================================================================
# ResNet-20
# ==========================================================================================================
RESNET = {"arch": "resnet20", "width": 4, "num_classes": 10, "in_channels": 3, "batch": 2, "hw": 16,
          "seed": 20, "labels": [3, 7]}  # fmt: skip


def resnet_arrays() -> tuple[dict[str, np.ndarray], dict, dict]:
    """``resnet20.npz``: a train-mode forward and backward of a width-4 ResNet-20 on two 16x16 images.

    The float32 parameters come from ``init_resnet(seed)``; the float64 ones are their exact widening
    (so the float64 results are the truth for the float32 inputs). The loss is the mean cross-entropy;
    the gradients are those of the loss. ``logits_eval`` is an eval-mode forward with the new state.
    """
    cfg = RESNET
    params32, state32 = init_resnet(
        cfg["arch"], num_classes=cfg["num_classes"], in_channels=cfg["in_channels"], width=cfg["width"],
        rng=cfg["seed"], dtype=np.float32,
    )  # fmt: skip
    rng = np.random.default_rng(cfg["seed"] + 1)
    x32 = rng.standard_normal((cfg["batch"], cfg["in_channels"], cfg["hw"], cfg["hw"])).astype(np.float32)
    labels = np.array(cfg["labels"], dtype=np.int64)
    out = Arrays()
    out.add("labels", labels, EXACT)
    results = {}
    for dt in ("float64", "float32"):
        params = {k: v.astype(dt) for k, v in params32.items()}
        state = {k: v.astype(dt) for k, v in state32.items()}
        x = x32.astype(dt)
        logits, new_state, cache = resnet_forward(params, state, x, arch=cfg["arch"], train=True)
        loss, ce_cache = cross_entropy_forward(logits, labels)
        dlogits = cross_entropy_backward(1.0, ce_cache).dlogits
        model_grads = resnet_backward(dlogits, cache)
        grads, dx = model_grads.params, model_grads.x
        logits_eval = resnet_forward(params, new_state, x, arch=cfg["arch"], train=False)[0]
        results[dt] = {
            "params": params, "state": state, "x": x, "logits": logits, "loss": np.asarray(loss),
            "dlogits": dlogits, "new_state": new_state, "grads": grads, "dx": dx, "logits_eval": logits_eval,
        }  # fmt: skip
    for dt in ("float64", "float32"):
        r = results[dt]
        out.add(f"{dt}.x", r["x"], EXACT)
        for k, v in r["params"].items():
            out.add(f"{dt}.params.{k}", v, EXACT)
        for k, v in r["state"].items():
            out.add(f"{dt}.state.{k}", v, EXACT)

    def add(name: str, pick: Callable[[dict], np.ndarray]) -> None:
        out.add(f"float64.{name}", pick(results["float64"]), TOL64)
        out.add(f"float32.{name}", pick(results["float32"]), TOL32, pair=f"float64.{name}")

    for key in ("logits", "loss", "dlogits", "dx", "logits_eval"):
        add(key, lambda r, key=key: r[key])
    for k in params32:
        add(f"grads.{k}", lambda r, k=k: r["grads"][k])
    for k in state32:
        add(f"new_state.{k}", lambda r, k=k: r["new_state"][k])
    meta = {**cfg, "train": True, "loss": "cross_entropy (mean)", "param_names": list(params32),
            "state_names": list(state32)}  # fmt: skip
    return out.arrays, out.spec, meta


# ==========================================================================================================
# Weight transforms and SGD (elementwise: the ulp tier)
# ==========================================================================================================
TRANSFORM_SCALES = (1.0, 0.5)


def transforms_arrays(seed: int) -> tuple[dict[str, np.ndarray], dict, dict]:
    """``transforms.npz``: forward, derivative and inverse of every transform at two scales."""
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1.0, -1.0, 0.5, 1e4, -1e4, 30.0],
                       np.float32)  # fmt: skip
    u32 = np.concatenate([special, (rng.standard_normal(51) * 2).astype(np.float32)])
    w32 = np.concatenate([special, rng.uniform(-1.2, 1.2, 51).astype(np.float32)])
    out, cases = Arrays(), {}
    for name in TRANSFORMS:
        for scale in TRANSFORM_SCALES:
            t = Transform(name, scale)
            prefix = f"{name}.scale{scale:g}"
            # identity and hardtanh are exact (copies and clips); the others round a float64 result once
            # (float32) or carry the few-ulp error of NumPy's float64 kernels (float64).
            rule = {"float64": EXACT, "float32": EXACT} if name in ("identity", "hardtanh") else None
            for dt in ("float64", "float32"):
                u, w = u32.astype(dt), w32.astype(dt)
                r = (rule or {"float64": ULP, "float32": ULP})[dt]
                extra = {} if r == EXACT else {"ulps": 4 if dt == "float64" else 1}
                out.add(f"{prefix}.{dt}.u", u, EXACT)
                out.add(f"{prefix}.{dt}.w_in", w, EXACT)
                out.add(f"{prefix}.{dt}.forward", t.forward(u), r, **extra)
                out.add(f"{prefix}.{dt}.grad", t.grad(u), r if name != "hardtanh" else EXACT, **extra)
                out.add(f"{prefix}.{dt}.inverse", t.inverse(w), r, **extra)
            cases[prefix] = {"transform": name, "scale": scale}
    return out.arrays, out.spec, cases


SGD_CASES = (
    ("sgd_plain", {"lr": 0.1}),
    ("sgd_momentum_wd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}),
    ("sgd_nesterov_dampening0", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("sgd_dampening", {"lr": 0.1, "momentum": 0.5, "dampening": 0.25}),
)


def sgd_arrays(seed: int) -> tuple[dict[str, np.ndarray], dict, dict]:
    """``sgd.npz``: two SGD steps (the second uses the momentum buffer) for every configuration."""
    rng = np.random.default_rng(seed)
    out, cases = Arrays(), {}
    p32 = rng.standard_normal((3, 4)).astype(np.float32)
    g32 = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2)]
    for name, kw in SGD_CASES:
        cfg = SGD(**kw)
        for dt in ("float64", "float32"):
            params = {"p": p32.astype(dt)}
            state = sgd_init(params)
            out.add(f"{name}.{dt}.p0", params["p"], EXACT)
            for step, g in enumerate(g32, start=1):
                grads = {"p": g.astype(dt)}
                params, state = sgd_step(params, grads, state, cfg)
                out.add(f"{name}.{dt}.g{step}", grads["p"], EXACT)
                out.add(f"{name}.{dt}.p{step}", params["p"], EXACT)
                if "momentum_buffer/p" in state:
                    out.add(f"{name}.{dt}.buf{step}", state["momentum_buffer/p"], EXACT)
        cases[name] = {"lr": cfg.lr, "momentum": cfg.momentum, "dampening": cfg.dampening,
                       "nesterov": cfg.nesterov, "weight_decay": cfg.weight_decay, "steps": 2}  # fmt: skip
    return out.arrays, out.spec, cases


# ==========================================================================================================
# OCP Microscaling: element formats, the E8M0 scale, MX blocks
# ==========================================================================================================
MX_ELEMENT_NAMES = ("float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn")


def _mx_element_inputs(fmt, dtype) -> list[tuple[float, str]]:
    """Every value of ``fmt`` (both signs), every midpoint (a tie) and its two neighbours in ``dtype``,
    values past the largest, infinities and tiny values: (input, tag)."""
    values = fmt.decode(np.arange(1 << (fmt.nbits - 1), dtype=fmt.container)).astype(np.float64)
    mids = (values[:-1] + values[1:]) / 2
    out = [(v, "exact") for v in values.tolist()]
    for m in mids.tolist():
        md = dtype(m)
        out += [(float(md), "tie"), (float(np.nextafter(md, dtype(np.inf))), "above_tie"),
                (float(np.nextafter(md, dtype(0))), "below_tie")]
    top = float(values[-1])
    out += [(top * 1.25, "overflow"), (top * 1e3, "overflow"), (math.inf, "inf"), (1e-30, "tiny")]
    return out + [(-x, tag) for x, tag in out]


def _mx_element_doc(fmt) -> dict:
    codes = np.arange(1 << fmt.nbits, dtype=fmt.container)
    values = fmt.decode(codes).astype(np.float32)
    doc = {
        "nbits": fmt.nbits, "exponent_bits": fmt.exponent_bits, "mantissa_bits": fmt.mantissa_bits,
        "bias": fmt.bias, "has_infinity": False, "has_nan": False,
        "max_finite": float_text(fmt.max_finite), "min_normal": float_text(fmt.min_normal),
        "min_subnormal": float_text(fmt.min_subnormal),
        "fields": {k: {"lsb": f.lsb, "width": f.width} for k, f in fmt.fields.items()},
        "decode_columns": ["code", "value_bits", "value", "class"],
        "decode": [[hex_code(c, fmt.nbits), b, float_text(v), str(k)] for c, b, v, k in zip(
            codes.tolist(), bits_text(values), values.tolist(), fmt.classify(codes).tolist(), strict=True)],
        "encode_columns": ["x_bits", "x", "code", "tag"],
        "encode": {},
    }  # fmt: skip
    for src_name, (dtype, _) in SOURCE_DTYPES.items():
        xs = _mx_element_inputs(fmt, dtype)
        x = np.array([v for v, _ in xs], dtype=dtype)
        codes_x = fmt.encode(x)
        doc["encode"][src_name] = [[b, float_text(v), hex_code(c, fmt.nbits), t] for b, v, c, t in zip(
            bits_text(x), x.tolist(), codes_x.tolist(), [t for _, t in xs], strict=True)]  # fmt: skip
    return doc


def _e8m0_doc() -> dict:
    e8 = get_format("float8_e8m0fnu")
    codes = np.arange(256, dtype=np.uint8)
    values = e8.decode(codes)
    k = np.arange(-127, 128, dtype=np.float64)
    p = np.exp2(k)
    x = np.concatenate([p, 1.5 * p, np.nextafter(1.5 * p, 0), 1.9 * p,
                        [2.0**-128, 2.0**-300, 2.0**127 * 1.49, 2.0**127 * 1.5, 2.0**128, 1e300,
                         0.0, -0.0, -1.0, math.inf, -math.inf, math.nan]])  # fmt: skip
    return {
        "nbits": 8, "bias": 127, "fields": {"exponent": {"lsb": 0, "width": 8}},
        "decode_columns": ["code", "value_bits", "value", "class"],
        "decode": [[hex_code(c, 8), b, float_text(v), str(cl)] for c, b, v, cl in zip(
            codes.tolist(), bits_text(values), values.tolist(), e8.classify(codes).tolist(), strict=True)],
        "encode_columns": ["x_bits", "x", "ieee", "saturate"],
        "encode": {"float64": [[b, float_text(v), hex_code(a, 8), hex_code(s, 8)] for b, v, a, s in zip(
            bits_text(x), x.tolist(), e8.encode(x).tolist(), e8.encode(x, overflow="saturate").tolist(),
            strict=True)]},
    }  # fmt: skip


def mx_elements_file() -> bytes:
    """``mx_elements.json``: the MX element formats (every code decoded, encode cases) and E8M0."""
    doc = {"schema": f"{SCHEMA}.mx_elements", "version": VERSION,
           "nan_input": "error (these formats have no NaN code; saf_ref raises ValueError)",
           "formats": {name: _mx_element_doc(get_format(name)) for name in MX_ELEMENT_NAMES},
           "float8_e8m0fnu": _e8m0_doc()}  # fmt: skip
    return json_bytes(doc)


def _mx_block_inputs(fmt, rng: np.random.Generator) -> list[tuple[str, np.ndarray, str]]:
    """(tag, input, format name) cases of one MX format: random rows with a padded last block, ties,
    a zero block, NaN and inf blocks, saturation, the smallest and largest scales, blocks along an axis."""
    elem = fmt.element
    grid = elem.decode(rng.integers(0, 1 << elem.nbits, 32).astype(elem.container)).astype(np.float64)
    grid = np.where(np.isfinite(grid), grid, 0.0)
    emax = fmt.emax_elem
    nan_block = np.ones(64, np.float32)
    nan_block[37] = np.nan
    inf_block = np.ones(64, np.float32)
    inf_block[3] = -np.inf
    return [
        ("random_padded", (rng.standard_normal((2, 40)) * 0.1).astype(np.float32), fmt.name),
        ("ties", (grid * 2.0**-3 * (1 + 2.0 ** -rng.integers(1, 5, 32))).astype(np.float32), fmt.name),
        ("zeros", np.array([0.0] * 16 + [-0.0] * 16, np.float32), fmt.name),
        ("nan", nan_block, fmt.name),
        ("inf", inf_block, fmt.name),
        ("wide_range", (rng.standard_normal(32) * np.exp2(rng.integers(-40, 10, 32))).astype(np.float32),
         fmt.name),
        ("float32_subnormal", (rng.standard_normal(32) * 2.0**-140).astype(np.float32), fmt.name),
        ("saturate", np.array([2.0 ** (emax + 1) * 0.999, -(2.0 ** (emax + 1)) * 0.99, 1.0], np.float32),
         fmt.name),
        ("largest_scale", np.array([2.0 ** (127 + emax), 1.0], np.float64), fmt.name),
        ("scale_overflow", np.array([2.0 ** (128 + emax), 1.0], np.float64), fmt.name),
        ("smallest_scale", np.array([2.0**-140, -(2.0**-127), 2.0**-126], np.float64), fmt.name),
        ("axis1", (rng.standard_normal((2, 36, 3)) * 4).astype(np.float32), f"{fmt.name}_axis1"),
    ]  # fmt: skip


def mx_blocks_file(seed: int) -> bytes:
    """``mx_blocks.json``: MX encode cases (input bits -> scales, element codes, stored bytes) and decode
    cases (random stored bytes -> values) for the six MX formats."""
    from saf_ref.bits.mx import MX_FORMATS, MXContext, get_mx_format

    rng = np.random.default_rng(seed)
    doc = {"schema": f"{SCHEMA}.mx_blocks", "version": VERSION, "block_size": 32, "formats": {}}
    for name, fmt in MX_FORMATS.items():
        entry = {"element": fmt.element.name, "element_bits": fmt.element_bits, "emax_elem": fmt.emax_elem,
                 "element_max": float_text(fmt.element_max), "encode": [], "decode": []}  # fmt: skip
        for tag, x, fname in _mx_block_inputs(fmt, rng):
            f = get_mx_format(fname)
            scales, elements = f.quantize(x)
            codes, _ = f.encode_tensor(x)
            entry["encode"].append({
                "tag": tag, "format": fname, "axis": f.axis, "shape": list(x.shape), "x_dtype": str(x.dtype),
                "x_bits": bits_text(x),
                "scales": [hex_code(c, 8) for c in scales.reshape(-1).tolist()],
                "elements": [hex_code(c, fmt.element_bits) for c in elements.reshape(-1).tolist()],
                "codes": [hex_code(c, 8) for c in codes.tolist()],
            })  # fmt: skip
        shape = (2, 40)
        codes = rng.integers(0, 256, fmt.layout(shape).n_bytes).astype(np.uint8)
        codes[:3] = [0x00, 0xFE, 0xFF]  # smallest, largest and NaN scales
        values = fmt.decode_tensor(codes, MXContext(shape))
        entry["decode"].append({"shape": list(shape), "codes": [hex_code(c, 8) for c in codes.tolist()],
                                "value_bits": bits_text(values)})  # fmt: skip
        doc["formats"][name] = entry
    return json_bytes(doc)


# ==========================================================================================================
# Chips: persistent low-voltage SRAM faults (saf_ref.bits.chip) and where stored words sit (placement)
# ==========================================================================================================
CHIP_MODEL = {"p_stuck0": 0.4, "p_stuck1": 0.4, "p_flip": 0.2}  # the other parameters: ChipModel's defaults
CHIP_SHAPE = (2, 5, 36)  # 36 columns: 2 float16 words or 4 bytes per row, 4 columns unused
CHIP_SEED = 11
CHIP_VOLTAGES = (0.62, 0.7, 0.75)  # bit-error rates about 24%, 4%, 1% on this chip
CHIP_TENSORS = (  # (name, format, shape, exposed): the stored model the chip holds
    ("a.weight", "float16", (2, 3), True),
    ("a.bias", "q2.5", (3,), True),
    ("b.weight", "float8_e4m3fn", (2, 2), True),
    ("b.bias", "float32", (2,), False),  # protected memory: takes no rows, never touched
)
CHIP_PLACEMENTS = {
    "stored_order": {},
    "offset2_rows": {"offset": 2, "permute_rows": True, "seed": 3},
    "offset5_all": {"offset": 5, "permute_tensors": True, "permute_rows": True, "seed": 4},  # fills the chip
}
CHIP_FAULT_CASES = (  # (placement, voltage: a number or "equal", record)
    ("stored_order", 0.62, "all"),
    ("stored_order", 0.62, "errors"),
    ("offset2_rows", 0.7, "all"),
    ("offset5_all", "equal", "all"),
    ("offset5_all", "equal", "errors"),
)


def _cell_rows(a: np.ndarray) -> list[list[str]]:
    """A chip-shaped float64 array as rows of float64 bit patterns, one row of cells per (array, row)."""
    return [bits_text(row) for row in a.reshape(-1, a.shape[-1])]


def _chip_metadata(chip) -> dict:
    """The metadata ``Chip.save`` writes (checksums of v01 and v10 included), read back from the file."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = chip.save(Path(tmp) / "chip.npz")
        with np.load(path, allow_pickle=False) as z:
            return json.loads(z["metadata.json"].tobytes().decode("utf-8"))


def _error_maps(chip, voltages) -> list[dict]:
    """Per voltage: the failing cells by behaviour (flat cell indices) and the measured rates."""
    out = []
    for v in voltages:
        m = chip.error_map(v)
        p01, p10 = chip.flip_rates(v)
        out.append({
            "voltage": v, "voltage_bits": bits_text(np.array([v]))[0],
            "stuck0": np.flatnonzero(m.stuck0).tolist(), "stuck1": np.flatnonzero(m.stuck1).tolist(),
            "flip": np.flatnonzero(m.flip).tolist(),
            "p01": p01, "p10": p10, "bit_error_rate": chip.bit_error_rate(v),
        })  # fmt: skip
    return out


def _chip_doc(chip, voltages, **head) -> dict:
    return {**head, "shape": list(chip.shape), "voltage_range": list(chip.voltage_range),
            "v01_bits": _cell_rows(chip.v01), "v10_bits": _cell_rows(chip.v10),
            "file_metadata": _chip_metadata(chip), "maps": _error_maps(chip, voltages)}  # fmt: skip


def _profile_chip(members: dict[str, np.ndarray], seed: int | None):
    """``load_profile`` of a profile written with ``members`` (to a temporary ``profile.npz``)."""
    import tempfile

    from saf_ref.bits import load_profile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.npz"
        np.savez(path, **members)
        return load_profile(path, seed=seed)


def _cell_profile_doc() -> dict:
    """A measured per-cell profile with planted boundaries: failure voltages equal to, just above and
    just below an asked voltage, at both ends of the range, never (-inf) and always (+inf)."""
    v = 0.7
    near = [v, np.nextafter(v, 2.0), np.nextafter(v, 0.0)]
    fv = np.array([*near, 0.5, 1.0, -np.inf, np.inf, 0.55, *near, 0.62, 0.8, 0.95, -np.inf, np.inf])
    fv = fv.reshape(1, 2, 8)
    kind = (np.arange(16) % 3).astype(np.int8).reshape(1, 2, 8)
    vrange = np.array([0.5, 1.0])
    chip = _profile_chip({"failure_voltage": fv, "kind": kind, "voltage_range": vrange}, None)
    return _chip_doc(chip, (0.5, v, 1.0), origin="load_profile (per-cell failure voltages)",
                     profile={"failure_voltage_bits": _cell_rows(fv), "kind": kind.reshape(-1).tolist(),
                              "voltage_range": vrange.tolist()})  # fmt: skip


def _probability_profile_doc(rng: np.random.Generator) -> dict:
    """A measured per-bit flip-probability profile (fractional rates, one rising with the voltage)."""
    volts = np.array([0.6, 0.7, 0.8])
    levels = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    p01 = np.sort(levels[rng.integers(0, 5, (3, 1, 2, 4))], axis=0)[::-1].copy()  # falls as V rises
    p10 = np.sort(levels[rng.integers(0, 5, (3, 1, 2, 4))], axis=0)[::-1].copy()
    p01[:, 0, 0, 0] = [0.25, 0.75, 0.0]  # measured noise: rises from 0.6 to 0.7 (the running max keeps 0.75)
    p10[:, 0, 1, 3] = [0.0, 0.0, 1.0]  # fails only at the highest voltage: fails everywhere below it too
    seed = 5
    chip = _profile_chip({"voltages": volts, "p01": p01, "p10": p10}, seed)
    return _chip_doc(chip, tuple(volts.tolist()), origin="load_profile (per-bit flip probabilities)",
                     profile={"voltages": volts.tolist(), "seed": seed,
                              "p01": [p.reshape(-1).tolist() for p in p01],
                              "p10": [p.reshape(-1).tolist() for p in p10]})  # fmt: skip


def _equal_voltage(chip) -> float:
    """A voltage equal to some cell's failure voltage (that cell must not fail there: ``V < v`` is
    strict): the failure voltage inside the range closest to 0.68."""
    fv = chip.failure_voltage.reshape(-1)
    fv = fv[(fv > chip.voltage_range[0]) & (fv < chip.voltage_range[1])]
    return float(fv[np.argmin(np.abs(fv - 0.68))])


def chip_file(seed: int) -> bytes:
    """``chip_maps.json``: chips (a sampled one, two measured profiles) with their failure voltages,
    error maps and file checksums, and the faults one chip gives a small stored model under three
    placements (addresses, codes before and after, the FaultList)."""
    from saf_ref.bits import ChipFaults, ChipModel, Placement, layout
    from saf_ref.protect import StorageRule, StorageSpec, inject, store
    from saf_ref.protect.inject import targets_of

    rng = np.random.default_rng(seed)
    model = ChipModel(**CHIP_MODEL)
    chip = model.sample(CHIP_SHAPE, seed=CHIP_SEED)
    v_eq = _equal_voltage(chip)
    voltages = {v: v for v in CHIP_VOLTAGES} | {"equal": v_eq}
    params = {name: rng.standard_normal(shape) * 0.5 for name, _, shape, _ in CHIP_TENSORS}
    spec = StorageSpec(tuple(StorageRule(name, format=f, exposed=e) for name, f, _, e in CHIP_TENSORS))
    stored = store(params, spec)
    targets = targets_of(stored)
    cases = []
    for pname, vkey, record in CHIP_FAULT_CASES:
        placement = Placement(**CHIP_PLACEMENTS[pname])
        faults = ChipFaults(chip, voltages[vkey], placement, record=record)
        result = inject(stored, faults)
        cases.append({
            "placement": pname, "voltage": voltages[vkey], "record": record,
            "addresses": {n: a.tolist() for n, a in layout(targets, chip.shape, placement).items()},
            "after": {n: [hex_code(c, t.nbits) for c in result.stored[n].codes.reshape(-1).tolist()]
                      for n, t in targets.items()},
            "faults_columns": ["tensor", "index", "bit", "kind"],
            "faults": [[f.tensor, f.index, f.bit, f.kind] for f in result.faults],
        })  # fmt: skip
    doc = {
        "schema": f"{SCHEMA}.chip_maps", "version": VERSION,
        "cell_index": "flat C-order index (a * rows + r) * columns + c of cell (a, r, c)",
        "behaviour": "at voltage V: f01 = V < v01, f10 = V < v10; flip = f01 and f10, stuck1 = f01 and not "
                     "f10, stuck0 = f10 and not f01",
        "chips": {
            "sampled": _chip_doc(chip, (*CHIP_VOLTAGES, v_eq), origin="ChipModel.sample",
                                 model=model.to_json(), seed=CHIP_SEED),
            "cell_profile": _cell_profile_doc(),
            "probability_profile": _probability_profile_doc(rng),
        },
        "stored": {
            "chip": "sampled",
            "tensors": {n: {"format": t.format, "nbits": t.nbits, "shape": list(t.shape),
                            "exposed": t.exposed,
                            "before": [hex_code(c, t.nbits) for c in stored[n].codes.reshape(-1).tolist()]}
                        for n, t in targets.items()},
            "placements": {name: Placement(**kw).to_json() for name, kw in CHIP_PLACEMENTS.items()},
            "cases": cases,
        },
    }  # fmt: skip
    return json_bytes(doc)


# ==========================================================================================================
# Adversarial bit flips (saf_ref.attack) on a tiny MLP whose clean logits are exact
# ==========================================================================================================
ATTACK_MLP = {"in_features": 4, "hidden": 5, "classes": 3, "batch": 12}
ATTACK_CASES = (  # (case, storage format of every parameter, bit_flip_attack keyword arguments)
    ("pbs_q2.5", "q2.5", {"method": "pbs", "k": 3, "candidates": 4}),
    ("pbs_q2.5_one_per_word", "q2.5",
     {"method": "pbs", "k": 3, "candidates": 3, "one_per_word": True, "per_tensor": 1,
      "bits": [0, 1, 2, 3, 4, 5, 6]}),
    ("gradient_q2.5", "q2.5", {"method": "gradient", "k": 4, "iterations": 5}),
    ("pbs_float16_targeted", "float16",
     {"method": "pbs", "k": 2, "candidates": 3, "target": 2, "source": 0, "per_tensor": {"fc2.weight": 1}}),
)  # fmt: skip
ATTACK_MARGIN = 1e-9  # distinct values a decision compares differ by more than this (relative)


def _attack_problem(seed: int):
    """Float64 latents on the q2.5 grid (multiples of 1/32 in [-3.5, 3.5]: exact in q2.5 and float16) and
    inputs that are multiples of 1/16, so the clean logits are exact in float64 in any summation order."""
    from saf_ref.nn.registry import model_fns
    from saf_ref.nn.small import init_mlp

    m = ATTACK_MLP
    params, state = init_mlp(m["in_features"], hidden=(m["hidden"],), num_classes=m["classes"], rng=seed,
                             dtype=np.float64)  # fmt: skip
    params = {k: np.clip(np.round(3 * v * 32) / 32, -3.5, 3.5) for k, v in params.items()}
    rng = np.random.default_rng(seed + 100)
    x = np.clip(np.round(rng.standard_normal((m["batch"], m["in_features"])) * 16) / 16, -3, 3)
    z, _, _ = model_fns("mlp").forward(params, state, x, train=False)
    y = np.argmax(z, axis=1)
    y[:3] = rng.integers(0, m["classes"], 3)  # a few wrong labels: the clean loss is not tiny
    return params, state, x, y


def _check_margin(values, what: str) -> None:
    """The generator refuses a vector whose decisions hinge on near-ties (they could go the other way with
    another libm or BLAS): equal values are fine (ties are broken by position), distinct finite ones must
    differ by more than ``ATTACK_MARGIN`` relative."""
    v = np.sort(np.asarray([a for a in values if np.isfinite(a)], dtype=np.float64))
    gaps = np.diff(v)
    scale = max(1.0, float(np.max(np.abs(v), initial=0.0)))
    bad = (gaps > 0) & (gaps <= ATTACK_MARGIN * scale)
    if bad.any():
        raise RuntimeError(f"make_golden: {what}: near-tie {v[:-1][bad][0]!r}; choose another seed")


def _pbs_rankings(result, latents, state, spec, x, y) -> list[list[tuple]]:
    """Per step of a progressive bit search: the ranked candidates it evaluated, ``(tensor, index, bit,
    estimate, objective)``. Replays the search's steps with its own pieces, committing the flips the
    search chose, and checks that each chosen flip is the best evaluated one."""
    from saf_ref.attack.candidates import FlipTable
    from saf_ref.attack.checks import check_bits, check_model_inputs, check_per_tensor
    from saf_ref.attack.problem import AttackProblem
    from saf_ref.attack.search import with_flip
    from saf_ref.protect.stored import read, write

    fn = "make_golden"
    fns, _, _, rules, exposed = check_model_inputs("mlp", latents, state, spec, x, y, fn)
    s = result.settings
    stored = write(latents, spec, rules, fn, "latents")
    allowed = check_bits(s["bits"], rules, exposed, fn)
    budgets = check_per_tensor(s["per_tensor"], exposed, fn)
    table = FlipTable(stored, spec, rules, allowed, budgets, s["nonfinite"], s["one_per_word"])
    keep = np.ones(y.size, bool) if s["source"] is None else y == s["source"]
    problem = AttackProblem(fns, state, x[keep], y[keep], s["target"])
    weights, _ = read(stored, rules, s["nonfinite"], fn)
    out = []
    for step in result.steps[1:]:
        est = table.estimates(problem.gradient(weights), weights, problem.sign)
        ranked = table.top(est, s["candidates"] + 1)
        _check_margin([c.estimate for c in ranked], f"estimates at step {step.flips}")
        rows = []
        for c in ranked[: s["candidates"]]:
            name = table.entries[c.tensor].name
            ev = problem.evaluate(with_flip(weights, name, c.index, table.flipped_value(c)))
            rows.append((name, c.index, c.bit, c.estimate, ev.objective))
        _check_margin([r[4] for r in rows], f"objectives at step {step.flips}")
        best = max(range(len(rows)), key=lambda i: (rows[i][4], -i))
        chosen = next(c for c in ranked if (table.entries[c.tensor].name, c.index, c.bit) ==
                      (step.tensor, step.index, step.bit))  # fmt: skip
        assert rows[best][:3] == (step.tensor, step.index, step.bit), (rows, step)
        weights = with_flip(weights, step.tensor, chosen.index, table.flipped_value(chosen))
        table.commit(chosen)
        out.append(rows)
    return out


def attack_files(seed: int) -> tuple[bytes, tuple[dict[str, np.ndarray], dict, dict]]:
    """``attack_mlp.json`` (the problem, and per attack the clean codes, the flips, the attacked codes, the
    ranked candidates of every progressive-search step, accuracies) and the arrays of ``attack_mlp.npz``
    (the float results: objectives, losses, first-order estimates, the clean gradient), whose last bits
    depend on libm and BLAS."""
    from saf_ref.attack import bit_flip_attack
    from saf_ref.attack.problem import AttackProblem
    from saf_ref.nn.registry import model_fns
    from saf_ref.protect import default_spec, load, store

    latents, state, x, y = _attack_problem(seed)
    out, npz_cases, cases = Arrays(), {}, {}
    for name, fmt, kw in ATTACK_CASES:
        spec = default_spec(fmt)
        stored = store(latents, spec)
        tensors = {n: stored[n] for n in stored}
        result = bit_flip_attack("mlp", latents, state, spec, x, y, **kw)
        s = result.settings
        after = {n: np.array(t.codes, copy=True).reshape(-1) for n, t in tensors.items()}
        flips = []
        for f in result.faults:
            before = int(after[f.tensor][f.index])
            after[f.tensor][f.index] ^= 1 << f.bit
            flips.append([f.tensor, f.index, f.bit, hex_code(before, stored[f.tensor].nbits),
                          hex_code(int(after[f.tensor][f.index]), stored[f.tensor].nbits)])  # fmt: skip
        nbits = {n: t.nbits for n, t in tensors.items()}
        w_final = load(stored.with_codes({n: a.reshape(stored[n].codes.shape) for n, a in after.items()}))
        for row in flips:
            row.append(bits_text(w_final[row[0]].reshape(-1)[row[1] : row[1] + 1])[0])
        case = {
            "format": fmt, "transform": "identity", "settings": s,
            "codes": {n: [hex_code(c, t.nbits) for c in t.codes.reshape(-1).tolist()]
                      for n, t in tensors.items()},
            "flips_columns": ["tensor", "index", "bit", "before", "after", "value_bits"],
            "flips": flips,
            "codes_after": {n: [hex_code(c, nbits[n]) for c in a.tolist()] for n, a in after.items()},
            "accuracy": [st.accuracy for st in result.steps],
            "target_rate": [st.target_rate for st in result.steps] if s["target"] is not None else None,
        }  # fmt: skip
        keep = np.ones(y.size, bool) if s["source"] is None else y == s["source"]
        problem = AttackProblem(model_fns("mlp"), state, x[keep], y[keep], s["target"])
        grads = problem.gradient(load(stored))
        for p, g in grads.items():
            out.add(f"{name}.grad0.{p}", g, TOL64)
        out.add(f"{name}.loss", [st.loss for st in result.steps], TOL64)
        out.add(f"{name}.objective", [st.objective for st in result.steps], TOL64)
        out.add(f"{name}.estimate", [st.estimate for st in result.steps[1:]], TOL64)
        if s["method"] == "pbs":
            ranked = _pbs_rankings(result, latents, state, spec, x, y)
            case["ranked_columns"] = ["tensor", "index", "bit"]
            case["ranked"] = [[list(r[:3]) for r in rows] for rows in ranked]
            out.add(f"{name}.ranked_estimate", [[r[3] for r in rows] for rows in ranked], TOL64)
            out.add(f"{name}.ranked_objective", [[r[4] for r in rows] for rows in ranked], TOL64)
        else:
            case["rounds_columns"] = ["round", "swaps"]
            case["rounds"] = [[r.round, r.swaps] for r in result.rounds]
            out.add(f"{name}.round_objective", [r.objective for r in result.rounds], TOL64)
        cases[name] = case
        npz_cases[name] = {"format": fmt, **s}
    doc = {
        "schema": f"{SCHEMA}.attack", "version": VERSION,
        "model": {"name": "mlp", **ATTACK_MLP,
                  "forward": "logits = relu(x @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias"},
        "objective": "untargeted: mean cross-entropy of the logits against y; targeted at t: minus the mean "
                     "cross-entropy against t, on the examples labelled source (all if source is null); "
                     "a NaN objective is +inf (untargeted) or -inf (targeted)",
        "arrays": "attack_mlp.npz",
        "x_shape": list(x.shape), "x_bits": bits_text(x), "y": y.tolist(),
        "latents": {n: {"shape": list(u.shape), "bits": bits_text(u)} for n, u in latents.items()},
        "cases": cases,
    }  # fmt: skip
    return json_bytes(doc), (out.arrays, out.spec, npz_cases)


# ==========================================================================================================
# All files
# ==========================================================================================================
SEEDS = {"codec": 1, "flip": 2, "faultlist": 3, "quantizer": 4, "nn_ops": 5, "transforms": 6, "sgd": 7,
         "mx": 8, "chip": 9, "attack": 23}


def build_all() -> dict[str, bytes]:
    """Every golden file, name -> bytes (deterministic), ``index.json`` included."""
    files: dict[str, bytes] = {}
    for i, name in enumerate(CODEC_FORMATS):
        files[f"codec_{name}.json"] = codec_file(name, SEEDS["codec"] * 100 + i)
    files[f"fixed_{FIXED_FORMAT}.json"] = fixed_file()
    files["faults_flip_by_uniform.json"] = flip_file(SEEDS["flip"])
    files.update(faultlist_files(SEEDS["faultlist"]))
    files["quantizer.json"] = quantizer_file(SEEDS["quantizer"])
    files["mx_elements.json"] = mx_elements_file()
    files["mx_blocks.json"] = mx_blocks_file(SEEDS["mx"])
    files["chip_maps.json"] = chip_file(SEEDS["chip"])
    files["attack_mlp.json"], attack_arrays = attack_files(SEEDS["attack"])
    npz_specs, npz_cases = {}, {}
    builders = {
        "codec_decode16.npz": lambda: (*decode16_arrays(), {}),
        "nn_ops.npz": lambda: nn_ops_arrays(SEEDS["nn_ops"]),
        "resnet20.npz": resnet_arrays,
        "transforms.npz": lambda: transforms_arrays(SEEDS["transforms"]),
        "sgd.npz": lambda: sgd_arrays(SEEDS["sgd"]),
        "attack_mlp.npz": lambda: attack_arrays,
    }
    for fname, build in builders.items():
        arrays, spec, cases = build()
        files[fname] = npz_bytes(arrays)
        npz_specs[fname] = {
            k: {"dtype": arrays[k].dtype.str, "shape": list(arrays[k].shape), **spec[k]} for k in arrays
        }
        npz_cases[fname] = cases
    index = {
        "schema": f"{SCHEMA}.index", "version": VERSION,
        "generator": "scripts/make_golden.py",
        "files": sorted([*files, "index.json"]),
        "rules": {
            EXACT: "bit for bit (NaN bit patterns included)",
            ULP: "at most 'ulps' units in the last place apart; NaN where NaN",
            TOL64: f"max|new - old| <= 2**-30 * max|old| (per array; {TOL64_REL!r})",
            TOL32: f"max|new - old| <= {TOL32_FACTOR!r} * max|old - pair| + 2**-20 * max|pair| (per array; "
                   "'pair' is the float64 array of the same quantity)",
        },
        "npz": {f: {"cases": npz_cases[f], "arrays": npz_specs[f]} for f in builders},
    }  # fmt: skip
    files["index.json"] = json_bytes(index)
    return dict(sorted(files.items()))


# ==========================================================================================================
# Comparison
# ==========================================================================================================
def _ordered(a: np.ndarray) -> np.ndarray:
    """Float bits as integers ordered like the floats (``-0`` and ``+0`` both 0): their difference counts
    the representable numbers between two floats, i.e. the distance in ulps."""
    bits = a.view(f"<i{a.itemsize}").astype(np.int64)
    magnitude = bits & np.int64((1 << (8 * a.itemsize - 1)) - 1)  # clear the sign bit
    return np.where(bits < 0, -magnitude, magnitude)


def compare_arrays(name: str, new: np.ndarray, old: np.ndarray, spec: dict, old_all) -> str | None:
    """``None`` if ``new`` matches ``old`` under ``spec["rule"]``, else a one-line description."""
    if new.dtype != old.dtype or new.shape != old.shape:
        return f"{name}: dtype/shape {new.dtype}{new.shape} != committed {old.dtype}{old.shape}"
    rule = spec["rule"]
    if rule == EXACT or new.dtype.kind not in "f":
        diff = np.flatnonzero(new.reshape(-1).view(np.uint8) != old.reshape(-1).view(np.uint8))
        if diff.size:
            i = diff[0] // new.itemsize
            got, want = new.reshape(-1)[i], old.reshape(-1)[i]
            return f"{name}: not bit-identical, first at flat index {i}: {got!r} != committed {want!r}"
        return None
    nan_new, nan_old = np.isnan(new), np.isnan(old)
    if (nan_new != nan_old).any():
        return f"{name}: NaN positions differ"
    a, b = new[~nan_new].astype(np.float64), old[~nan_old].astype(np.float64)
    if rule == ULP:
        if (np.signbit(new[~nan_new]) != np.signbit(old[~nan_old])).any():
            return f"{name}: signs differ (signed zeros count)"
        dist = np.abs(_ordered(new[~nan_new]) - _ordered(old[~nan_old]))
        worst = int(dist.max()) if dist.size else 0
        return None if worst <= spec["ulps"] else f"{name}: {worst} ulps apart (allowed {spec['ulps']})"
    if not (np.isfinite(a) == np.isfinite(b)).all() or (a[~np.isfinite(a)] != b[~np.isfinite(b)]).any():
        return f"{name}: infinities differ"
    fin = np.isfinite(b)
    err = float(np.max(np.abs(a[fin] - b[fin]), initial=0.0))
    if rule == TOL64:
        bound = TOL64_REL * float(np.max(np.abs(b[fin]), initial=0.0))
    else:
        pair = old_all[spec["pair"]].astype(np.float64).reshape(-1)
        ref_err = float(np.max(np.abs(old.astype(np.float64).reshape(-1) - pair), initial=0.0))
        bound = TOL32_FACTOR * ref_err + 2.0**-20 * float(np.max(np.abs(pair), initial=0.0))
    return None if err <= bound else f"{name}: max|new - committed| = {err:.3g} > {bound:.3g} ({rule})"


def _load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def compare_file(fname: str, new: bytes, old: bytes, index: dict) -> list[str]:
    """Differences between a regenerated file and the committed one (empty list: current)."""
    if not fname.endswith(".npz"):
        if new == old:
            return []
        a, b = old.decode("utf-8", "replace").splitlines(), new.decode("utf-8", "replace").splitlines()
        diff = list(difflib.unified_diff(a, b, "committed", "regenerated", n=0, lineterm=""))
        shown = [line[:160] for line in diff[:12]]
        more = f" ... ({len(diff) - 12} more diff lines)" if len(diff) > 12 else ""
        return [f"{fname}: bytes differ:\n    " + "\n    ".join(shown) + more]
    if new == old:
        return []
    specs = index["npz"][fname]["arrays"]
    a_new, a_old = _load_npz(new), _load_npz(old)
    if set(a_new) != set(a_old):
        return [f"{fname}: arrays differ: only new {sorted(set(a_new) - set(a_old))[:5]}, "
                f"only committed {sorted(set(a_old) - set(a_new))[:5]}"]  # fmt: skip
    problems = []
    for k in a_new:
        msg = compare_arrays(k, a_new[k], a_old[k], specs[k], a_old)
        if msg:
            problems.append(f"{fname}: {msg}")
    return problems


def check(directory: Path, files: dict[str, bytes] | None = None) -> list[str]:
    """Regenerate (unless ``files`` is given) and compare with ``directory``; return the problems."""
    files = build_all() if files is None else files
    problems = []
    index = json.loads(files["index.json"])
    present = {p.name for p in directory.iterdir() if p.name != "README.md"} if directory.is_dir() else set()
    for extra in sorted(present - set(files)):
        problems.append(f"{extra}: in {directory} but not generated (stale file?)")
    for fname, data in files.items():
        path = directory / fname
        if not path.exists():
            problems.append(f"{fname}: missing from {directory}")
            continue
        problems += compare_file(fname, data, path.read_bytes(), index)
    return problems


def write(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        (directory / fname).write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="write here instead of saf_ref/data/files/golden/"
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files, write nothing"
    )
    parser.add_argument("--dir", type=Path, default=GOLDEN_DIR, help="directory compared by --check")
    args = parser.parse_args(argv)
    files = build_all()
    if args.check:
        problems = check(args.dir, files)
        for p in problems:
            print(p)
        n_bytes = sum(len(v) for v in files.values())
        if problems:
            print(f"golden vectors NOT current: {len(problems)} problem(s) in {args.dir}; "
                  "run `python scripts/make_golden.py` and review the diff", file=sys.stderr)  # fmt: skip
            return 1
        print(f"golden vectors current: {len(files)} files, {n_bytes} bytes in {args.dir}")
        return 0
    out = args.out or GOLDEN_DIR
    write(out, files)
    print(f"wrote {len(files)} files ({sum(len(v) for v in files.values())} bytes) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
