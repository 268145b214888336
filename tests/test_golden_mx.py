"""The MX golden vectors (``mx_elements.json``, ``mx_blocks.json``) are right: checked as a consumer would.

The files are read as plain JSON and checked against references that share no code with saf_ref.bits:
ml_dtypes' casts and views for the element and scale formats, and the exact-fraction loop implementation
of the OCP MX specification in :mod:`saf_ref.testing.mx_reference`; the stored byte layout is rebuilt
here bit by bit from the rule the README states. (That the files are current is checked with the other
golden files in ``test_golden_vectors.py``.)
"""

from __future__ import annotations

import json
import math
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from saf_ref.testing import mx_reference as ref

ml_dtypes = pytest.importorskip("ml_dtypes")

GOLDEN = Path(__file__).resolve().parents[1] / "saf_ref" / "data" / "files" / "golden"


def load(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())


def h(s: str) -> int:
    return int(s, 16)


def f32(bits: str) -> float:
    return struct.unpack("<f", struct.pack("<I", h(bits)))[0]


def f64(bits: str) -> float:
    return struct.unpack("<d", struct.pack("<Q", h(bits)))[0]


def same(a: float, b: float) -> bool:
    """Equal, the sign of zero included; NaN equals NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@pytest.mark.parametrize("name", ["float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"])
def test_element_decode_tables_match_ml_dtypes_and_the_loop(name):
    doc = load("mx_elements.json")["formats"][name]
    rows = doc["decode"]
    assert len(rows) == 1 << doc["nbits"]
    codes = np.array([h(r[0]) for r in rows], np.uint8)
    expected = codes.view(np.dtype(getattr(ml_dtypes, name))).astype(np.float32)
    for r, e, c in zip(rows, expected.tolist(), codes.tolist(), strict=True):
        assert same(f32(r[1]), e), r
        v, negative = ref.element_value(name, c)
        assert float(v) == f32(r[1]) and negative == (math.copysign(1.0, f32(r[1])) < 0)
    assert doc["max_finite"] == float(ml_dtypes.finfo(getattr(ml_dtypes, name)).max).hex()


@pytest.mark.parametrize("name", ["float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"])
@pytest.mark.parametrize("src", ["float32", "float64"])
def test_element_encode_cases_match_the_loop_and_ml_dtypes(name, src):
    rows = load("mx_elements.json")["formats"][name]["encode"][src]
    assert {r[3] for r in rows} >= {"exact", "tie", "above_tie", "below_tie", "overflow", "inf"}
    to_float = f32 if src == "float32" else f64
    xs = [to_float(r[0]) for r in rows]
    for r, x in zip(rows, xs, strict=True):
        y = math.copysign(1e300, x) if math.isinf(x) else x  # inf saturates like any huge value
        assert h(r[2]) == ref.round_element(name, Fraction(y), math.copysign(1.0, x) < 0), r
    if src == "float32":
        cast = np.array(xs, np.float32).astype(getattr(ml_dtypes, name)).view(np.uint8)
        assert cast.tolist() == [h(r[2]) for r in rows]


def test_e8m0_tables_match_ml_dtypes():
    doc = load("mx_elements.json")["float8_e8m0fnu"]
    t = np.dtype(ml_dtypes.float8_e8m0fnu)
    for r in doc["decode"]:
        expected = float(np.array([h(r[0])], np.uint8).view(t).astype(np.float32)[0])
        assert same(f32(r[1]), expected), r
        assert (r[3] == "nan") == (h(r[0]) == 0xFF)
    for r in doc["encode"]["float64"]:
        x = f64(r[0])
        with np.errstate(over="ignore"):
            expected = int(np.array([x]).astype(t).view(np.uint8)[0])
        assert h(r[2]) == expected, r
        # saturate differs from ieee only where the nearest power of two is above 2**127 (or +inf)
        assert h(r[3]) == (0xFE if (h(r[2]) == 0xFF and x > 0) else h(r[2])), r


def pack(scales: list[int], elements: list[int], w: int) -> list[int]:
    """The stored bytes by the README's rule: the scales, then element j's bit c at stream bit j*w + c,
    stream bit p being bit p % 8 of byte p // 8."""
    stream = [0] * (len(elements) * w // 8)
    for j, e in enumerate(elements):
        for c in range(w):
            if (e >> c) & 1:
                p = j * w + c
                stream[p // 8] |= 1 << (p % 8)
    return scales + stream


def rows_of(x: np.ndarray, axis) -> np.ndarray:
    """The tensor as rows along which the blocks run (README: first axis rows, or blocks along ``axis``)."""
    if axis is None:
        return x.reshape(1, -1) if x.ndim <= 1 else x.reshape(x.shape[0], -1)
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


@pytest.mark.parametrize("name", list(ref.MX_ELEMENT))
def test_mx_encode_cases_match_the_loop_and_the_layout(name):
    entry = load("mx_blocks.json")["formats"][name]
    w = entry["element_bits"]
    assert {c["tag"] for c in entry["encode"]} >= {"zeros", "nan", "inf", "largest_scale", "smallest_scale"}
    for case in entry["encode"]:
        conv = f32 if case["x_dtype"] == "float32" else f64
        x = np.array([conv(b) for b in case["x_bits"]], np.float64).reshape(case["shape"])
        rows = rows_of(x, case["axis"])
        scales, elements = [], []
        for row in rows:
            n_blocks = -(-len(row) // 32)
            padded = list(row) + [0.0] * (32 * n_blocks - len(row))
            for b in range(n_blocks):
                s, codes = ref.encode_block(name, padded[32 * b : 32 * b + 32])
                scales.append(s)
                elements += codes
        assert [h(c) for c in case["scales"]] == scales, case["tag"]
        assert [h(c) for c in case["elements"]] == elements, case["tag"]
        assert [h(c) for c in case["codes"]] == pack(scales, elements, w), case["tag"]
    by_tag = {c["tag"]: c for c in entry["encode"]}
    assert h(by_tag["largest_scale"]["scales"][0]) == 0xFE
    assert h(by_tag["scale_overflow"]["scales"][0]) == 0xFF
    assert h(by_tag["zeros"]["scales"][0]) == 0x00 and h(by_tag["nan"]["scales"][1]) == 0xFF


@pytest.mark.parametrize("name", list(ref.MX_ELEMENT))
def test_mx_decode_cases_match_the_loop(name):
    entry = load("mx_blocks.json")["formats"][name]
    w = entry["element_bits"]
    for case in entry["decode"]:
        codes = [h(c) for c in case["codes"]]
        rows, length = case["shape"][0], int(np.prod(case["shape"][1:]))
        n_blocks = rows * -(-length // 32)
        scales, body = codes[:n_blocks], codes[n_blocks:]
        stream = [(body[p // 8] >> (p % 8)) & 1 for p in range(8 * len(body))]
        elements = [sum(stream[j * w + c] << c for c in range(w)) for j in range(len(stream) // w)]
        values = []
        for b in range(n_blocks):
            values += ref.decode_block(name, scales[b], elements[32 * b : 32 * b + 32])
        per_row = len(values) // rows
        expected = [v for r in range(rows) for v in values[r * per_row : r * per_row + length]]
        got = [f64(v) for v in case["value_bits"]]
        assert len(got) == len(expected)
        assert all(same(a, b) for a, b in zip(got, expected, strict=True))
