"""The golden vectors in ``saf_ref/data/files/golden/`` (package data): current, and right.

Two kinds of test:

1. **Current.** ``scripts/make_golden.py`` regenerates every file in a temporary directory; JSON and CSV
   files must be byte-identical to the committed ones, ``.npz`` arrays bit-identical where ``index.json``
   says ``exact`` and within the documented tolerance elsewhere (BLAS/libm-dependent float results).
2. **Right.** The files are read as a non-Python backend would read them, WITHOUT saf_ref: codecs are
   checked against NumPy casts, ml_dtypes and a nearest-value table search written here; fixed point
   against exact rationals; fault injection and fault lists against plain integer loops over the stated
   rules; quantizers against the published formulas re-implemented here; network ops, ResNet-20 and SGD
   against PyTorch; weight transforms against Python's ``math``. So the files are proven correct, not
   merely self-consistent.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import shutil
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "saf_ref" / "data" / "files" / "golden"  # package data, shipped in the wheel
SCRIPT = REPO / "scripts" / "make_golden.py"

try:  # the codec and fault checks need ml_dtypes (bfloat16, float8); the currency checks do not
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    ml_dtypes = None
needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")

# The encode cases include signalling NaNs: converting them between float dtypes raises the IEEE
# "invalid" flag, which NumPy reports as a RuntimeWarning. That is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

# Formats as a consumer knows them from their specifications (not from saf_ref).
ML_NAMES = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
ML_DTYPES = {"float16": np.dtype(np.float16)}
if ml_dtypes is not None:
    ML_DTYPES.update({name: np.dtype(getattr(ml_dtypes, name)) for name in ML_NAMES[1:]})
UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
LAYOUT = {  # name: (nbits, exponent bits, mantissa bits, has infinity)
    "float16": (16, 5, 10, True),
    "bfloat16": (16, 8, 7, True),
    "float8_e4m3fn": (8, 4, 3, False),
    "float8_e5m2": (8, 5, 2, True),
    "float32": (32, 8, 23, True),
    "float64": (64, 11, 52, True),
}
# The canonical quiet NaN (sign clear) of each format: exponent all ones, mantissa MSB set
# (float8_e4m3fn: S.1111.111, its only NaN).
CANONICAL_NAN = {
    "float16": 0x7E00,
    "bfloat16": 0x7FC0,
    "float8_e4m3fn": 0x7F,
    "float8_e5m2": 0x7E,
    "float32": 0x7FC00000,
    "float64": 0x7FF8000000000000,
}


# ==========================================================================================================
# Reading helpers
# ==========================================================================================================
@cache
def load_json(name: str):
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


@cache
def load_npz(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def ints(hex_list) -> list[int]:
    return [int(h, 16) for h in hex_list]


def floats(hex_list, dtype) -> np.ndarray:
    """Float array from bit-pattern hex strings."""
    dt = np.dtype(dtype)
    return np.array(ints(hex_list), dtype=UINT[dt.itemsize * 8]).view(dt)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(UINT[a.dtype.itemsize * 8])


SPECIAL_FLOATS = {"nan": math.nan, "-nan": math.copysign(math.nan, -1.0), "inf": math.inf, "-inf": -math.inf}


def parse_float_text(s: str) -> float:
    """The readable float columns: ``float.hex()`` text, or ``[-]inf`` / ``[-]nan``."""
    return SPECIAL_FLOATS[s] if s in SPECIAL_FLOATS else float.fromhex(s)


def assert_codes_equal(got, expected, what: str, inputs=None) -> None:
    """Reference codes ``got`` equal the file's codes ``expected``; else name the first bad row."""
    got, expected = list(got), list(expected)
    bad = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    if bad:
        i = bad[0]
        where = "" if inputs is None else f" (input {inputs[i]!r})"
        pytest.fail(
            f"{what}: {len(bad)} mismatches, first at row {i}{where}: file {expected[i]:#x}, "
            f"reference {got[i]:#x}"
        )


# ==========================================================================================================
# 1. The files are current
# ==========================================================================================================
@cache
def make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    assert make_golden().main(["--out", str(out)]) == 0
    return out


def test_files_are_current(regenerated):
    """Regenerate in a tmp dir: text files byte for byte, npz arrays by their recorded rule."""
    mg = make_golden()
    index = json.loads((regenerated / "index.json").read_text())
    committed = sorted(p.name for p in GOLDEN.iterdir() if p.name != "README.md")
    assert committed == sorted(p.name for p in regenerated.iterdir()), "stale or missing golden files"
    assert committed == index["files"]
    for name in committed:
        new, old = (regenerated / name).read_bytes(), (GOLDEN / name).read_bytes()
        if name.endswith(".npz"):
            assert mg.compare_file(name, new, old, index) == [], name
        else:
            assert new == old, f"{name} is not current: run python scripts/make_golden.py"


def test_exact_npz_arrays_are_bit_identical(regenerated):
    """Arrays marked exact in index.json (inputs, codes, relu, maxpool, SGD) are bit-identical."""
    index = load_json("index.json")
    for fname, entry in index["npz"].items():
        new = np.load(regenerated / fname, allow_pickle=False)
        old = load_npz(fname)
        for k, spec in entry["arrays"].items():
            if spec["rule"] == "exact":
                assert new[k].tobytes() == old[k].tobytes(), f"{fname}:{k}"


def test_check_mode_detects_changes(tmp_path, capsys):
    mg = make_golden()
    work = tmp_path / "golden"
    shutil.copytree(GOLDEN, work)
    assert mg.main(["--check", "--dir", str(work)]) == 0
    # A changed expected code in a JSON file.
    path = work / "codec_float16.json"
    text = path.read_text()
    path.write_text(text.replace('"0x3c00", "0x3c00", "exact"', '"0x3c01", "0x3c00", "exact"', 1))
    # An exact npz array changed in one element; a tolerance array changed within its tolerance.
    arrays = load_npz("nn_ops.npz")
    changed = dict(arrays)
    changed["relu.float32.y"] = arrays["relu.float32.y"].copy()
    changed["relu.float32.y"][0, 0, 0] = 7.0
    y64 = arrays["conv_3x3_s1_p1_bias.float64.y"]
    changed["conv_3x3_s1_p1_bias.float64.y"] = y64 * (1 + 2.0**-45)
    (work / "nn_ops.npz").write_bytes(mg.npz_bytes(changed))
    (work / "stale.json").write_text("{}")
    capsys.readouterr()
    assert mg.main(["--check", "--dir", str(work)]) == 1
    out = capsys.readouterr().out
    assert "codec_float16.json: bytes differ" in out and '"0x3c01"' in out
    assert "relu.float32.y: not bit-identical" in out
    assert "conv_3x3_s1_p1_bias.float64.y" not in out  # within tol64
    assert "stale.json" in out


def test_compare_rules():
    mg = make_golden()
    a = np.array([1.0, -0.0, np.nan], np.float32)
    spec_ulp = {"rule": "ulp", "ulps": 1}
    assert mg.compare_arrays("a", a, a.copy(), spec_ulp, {}) is None
    b = a.copy()
    b[0] = np.nextafter(b[0], np.float32(2))
    assert mg.compare_arrays("a", b, a, spec_ulp, {}) is None
    b[0] = np.nextafter(b[0], np.float32(2))
    assert "2 ulps" in mg.compare_arrays("a", b, a, spec_ulp, {})
    c = a.copy()
    c[1] = 0.0
    assert "signs differ" in mg.compare_arrays("a", c, a, spec_ulp, {})
    old64 = np.array([1.0, 2.0])
    old32 = np.array([1.0 + 2**-20, 2.0], np.float32)
    spec32 = {"rule": "tol32", "pair": "p"}
    ok = np.array([1.0 + 2**-20 + 3 * 2**-23, 2.0], np.float32)
    assert mg.compare_arrays("a", ok, old32, spec32, {"p": old64}) is None
    far = np.array([1.0 + 2**-16, 2.0], np.float32)
    assert "tol32" in mg.compare_arrays("a", far, old32, spec32, {"p": old64})


def test_npz_files_match_the_index():
    """Every npz array is listed in index.json with its dtype and shape; little-endian; no object arrays."""
    index = load_json("index.json")
    for fname, entry in index["npz"].items():
        arrays = load_npz(fname)
        assert list(arrays) == list(entry["arrays"]), fname
        for k, a in arrays.items():
            spec = entry["arrays"][k]
            assert a.dtype.str == spec["dtype"] and list(a.shape) == spec["shape"], f"{fname}:{k}"
            assert a.dtype.byteorder in "<|=" and a.dtype.kind in "fiub", f"{fname}:{k}"
            assert spec["rule"] in index["rules"]
            if spec["rule"] == "tol32":
                assert spec["pair"] in arrays


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 2_500_000, f"the golden vectors hold {total} bytes"


# ==========================================================================================================
# 2. IEEE codecs, against NumPy, ml_dtypes and a nearest-value search
# ==========================================================================================================
def nearest_code(x: np.ndarray, name: str, overflow: str) -> list[int]:
    """Round-to-nearest-even encode of float64 values into a small format, by searching the sorted table of
    its finite non-negative values (decoded by ml_dtypes): no cast of the input, hence no double rounding.

    Ties are decided by comparing with the exact midpoint (exact in float64: the values have <= 24
    significant bits); above the largest value the next, virtual value is ``max + ulp``.
    """
    nbits, _, _, has_inf = LAYOUT[name]
    dt = ML_DTYPES[name]
    mags = np.arange(1 << (nbits - 1), dtype=UINT[nbits])
    values = mags.view(dt).astype(np.float64)
    finite = np.isfinite(values)
    values, mags = values[finite], mags[finite].astype(np.int64)
    assert (np.diff(values) > 0).all() and (np.diff(mags) == 1).all()
    top = int(mags[-1])
    ulp_top = values[-1] - values[-2]
    big = (
        top
        if overflow == "saturate"
        else (int(np.array(np.inf, dt).view(UINT[nbits])) if has_inf else top + 1)
    )
    out = []
    for v in x.astype(np.float64):
        sign = int(np.signbit(v)) << (nbits - 1)
        a = abs(float(v))
        if math.isnan(a):
            out.append(sign | CANONICAL_NAN[name])
            continue
        i = min(int(np.searchsorted(values, a, side="right")) - 1, len(values) - 1)
        lo = values[i]
        hi = values[i + 1] if i + 1 < len(values) else values[-1] + ulp_top
        mid = (lo + hi) / 2
        code = i if a < mid else i + 1 if a > mid else (i if i % 2 == 0 else i + 1)
        if a == math.inf or code > top:
            code = big
        out.append(sign | code)
    return out


def reference_encode(x: np.ndarray, name: str, overflow: str) -> list[int]:
    """The expected code of each input, computed without saf_ref."""
    nbits = LAYOUT[name][0]
    if name in ML_DTYPES:
        return nearest_code(x, name, overflow)
    # float32 and float64 targets: NumPy's cast (one IEEE rounding) or exact widening; NaN canonical.
    dt = np.dtype(name)
    with np.errstate(over="ignore"):
        if overflow == "saturate":
            top = np.finfo(dt).max
            x = np.clip(x, -top, top)  # NaN stays NaN
        codes = bits(x.astype(dt)).astype(object)
    nan = np.isnan(x)
    codes[nan] = [(int(s) << (nbits - 1)) | CANONICAL_NAN[name] for s in np.signbit(x[nan])]
    return [int(c) for c in codes]


@needs_ml_dtypes
@pytest.mark.parametrize("name", list(LAYOUT))
def test_codec_header_matches_the_format(name):
    doc = load_json(f"codec_{name}.json")
    nbits, e, m, has_inf = LAYOUT[name]
    assert (doc["nbits"], doc["exponent_bits"], doc["mantissa_bits"], doc["has_infinity"]) == (
        nbits,
        e,
        m,
        has_inf,
    )
    assert doc["bias"] == (1 << (e - 1)) - 1
    assert doc["fields"] == {
        "sign": {"lsb": nbits - 1, "width": 1},
        "exponent": {"lsb": m, "width": e},
        "mantissa": {"lsb": 0, "width": m},
    }
    assert int(doc["canonical_nan"], 16) == CANONICAL_NAN[name]
    info = ml_dtypes.finfo(ML_DTYPES[name]) if name in ML_DTYPES else np.finfo(np.dtype(name))
    assert parse_float_text(doc["max_finite"]) == float(info.max)
    assert parse_float_text(doc["min_normal"]) == float(info.smallest_normal)
    assert parse_float_text(doc["min_subnormal"]) == float(info.smallest_subnormal)


@needs_ml_dtypes
@pytest.mark.parametrize("name", list(LAYOUT))
@pytest.mark.parametrize("src", ["float32", "float64"])
def test_codec_encode_cases(name, src):
    doc = load_json(f"codec_{name}.json")
    rows = doc["encode"][src]
    assert doc["encode_columns"] == ["x_bits", "x", "ieee", "saturate", "tag"]
    x = floats([r[0] for r in rows], src)
    # The readable column is the same number as the bit pattern.
    for v, r in zip(x.tolist(), rows, strict=True):
        t = parse_float_text(r[1])
        assert (math.isnan(t) and math.isnan(v) and math.copysign(1, t) == math.copysign(1, v)) or (
            t == v and math.copysign(1, t) == math.copysign(1, v)
        ), r
    for col, overflow in ((2, "ieee"), (3, "saturate")):
        expected = ints(r[col] for r in rows)
        assert_codes_equal(reference_encode(x, name, overflow), expected, f"{name} {src} {overflow}", x)
    # Coverage: the boundary classes are present.
    tags = {r[4] for r in rows}
    assert {"zero", "inf", "nan", "random"} <= tags
    if name not in ("float64",) and not (name == "float32" and src == "float32"):
        assert {"exact", "tie", "tie+", "tie-", "overflow", "underflow"} <= tags


@needs_ml_dtypes
@pytest.mark.parametrize("name", ML_NAMES)
def test_nearest_code_reference_agrees_with_casts(name):
    """The table-search reference above agrees with ml_dtypes / NumPy on float32 inputs (where their
    casts round once), NaN aside: the reference itself is checked."""
    x = floats([r[0] for r in load_json(f"codec_{name}.json")["encode"]["float32"]], np.float32)
    x = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        cast = bits(x.astype(ML_DTYPES[name])).tolist()
    assert_codes_equal(nearest_code(x, name, "ieee"), cast, name, x)


@needs_ml_dtypes
def test_float64_inputs_are_rounded_once():
    """Rounding float64 -> bfloat16 through float32 (as PyTorch and ml_dtypes < 0.7 do) differs from the
    golden codes, which round once, on the double-rounding traps (computed explicitly here, so the
    installed ml_dtypes' own float64 cast does not matter)."""
    rows = load_json("codec_bfloat16.json")["encode"]["float64"]
    x = floats([r[0] for r in rows], np.float64)
    expected = np.array(ints(r[2] for r in rows))
    with np.errstate(over="ignore"):
        double = bits(x.astype(np.float32).astype(ml_dtypes.bfloat16)).astype(np.int64)
    differ = (expected != double) & ~np.isnan(x)
    assert differ.any(), "the float64 cases should include double-rounding traps"
    assert {rows[i][4] for i in np.flatnonzero(differ)} <= {"tie+", "tie-", "overflow", "underflow"}


def decode_reference(codes: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    """Decoded float32 bits (NaN: canonical quiet NaN of the code's sign) and classes, via ml_dtypes."""
    nbits, e, m, has_inf = LAYOUT[name]
    values = codes.astype(UINT[nbits]).view(ML_DTYPES[name]).astype(np.float32)
    out = bits(values).copy()
    nan = np.isnan(values)
    out[nan] = np.where(np.signbit(values[nan]), np.uint32(0xFFC00000), np.uint32(0x7FC00000))
    exp = (codes.astype(np.int64) >> m) & ((1 << e) - 1)
    classes = np.where(
        nan,
        "nan",
        np.where(
            np.isinf(values), "inf", np.where(values == 0, "zero", np.where(exp == 0, "subnormal", "normal"))
        ),
    )
    return out, classes.tolist()


@needs_ml_dtypes
@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2"])
def test_codec_decode_table_8bit(name):
    rows = load_json(f"codec_{name}.json")["decode"]
    codes = np.array(ints(r[0] for r in rows))
    assert codes.tolist() == list(range(256))
    value_bits, classes = decode_reference(codes, name)
    assert_codes_equal(value_bits.tolist(), ints(r[1] for r in rows), f"{name} decode")
    assert classes == [r[3] for r in rows]
    for r in rows:
        v, t = float(floats([r[1]], np.float32)[0]), parse_float_text(r[2])
        assert (math.isnan(v) and math.isnan(t)) or (v == t and math.copysign(1, v) == math.copysign(1, t))


@needs_ml_dtypes
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_codec_decode_table_16bit(name):
    arrays = load_npz("codec_decode16.npz")
    value_bits, classes = decode_reference(np.arange(1 << 16), name)
    np.testing.assert_array_equal(arrays[f"{name}.value_bits"], value_bits)
    order = ["zero", "subnormal", "normal", "inf", "nan"]
    np.testing.assert_array_equal(arrays[f"{name}.class"], [order.index(c) for c in classes])


# ==========================================================================================================
# 3. Fixed point q2.5, against exact rationals
# ==========================================================================================================
def fixed_reference(x: float, rounding: str, overflow: str) -> int | None:
    """q2.5 code of ``x`` from the definition: k = R(x * 32) exactly, then saturate or wrap to 8 bits."""
    if math.isinf(x):
        return None if overflow == "wrap" else (0x7F if x > 0 else 0x80)
    s = Fraction(x) * 32
    k = {"nearest_even": round, "toward_zero": math.trunc, "floor": math.floor}[rounding](s)
    if overflow == "saturate":
        k = min(max(k, -128), 127)
    return k & 0xFF  # two's complement, modulo 2**8 (wrap)


def test_fixed_decode_table():
    doc = load_json("fixed_q2.5.json")
    assert (doc["nbits"], doc["int_bits"], doc["frac_bits"]) == (8, 2, 5)
    rows = doc["decode"]
    assert ints(r[0] for r in rows) == list(range(256))
    k = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.int64)
    assert [r[1] for r in rows] == k.tolist()
    assert ints(r[2] for r in rows) == bits((k / 32).astype(np.float32)).tolist()
    assert [parse_float_text(r[3]) for r in rows] == (k / 32).tolist()


@pytest.mark.parametrize("src", ["float32", "float64"])
def test_fixed_encode_cases(src):
    doc = load_json("fixed_q2.5.json")
    modes = [c.split("/") for c in doc["encode_columns"][2:]]
    assert len(modes) == 6
    rows = doc["encode"][src]
    x = floats([r[0] for r in rows], src).tolist()
    for col, (rounding, overflow) in enumerate(modes, start=2):
        got = [fixed_reference(v, rounding, overflow) for v in x]
        expected = [None if r[col] is None else int(r[col], 16) for r in rows]
        bad = [i for i in range(len(x)) if got[i] != expected[i]]
        assert not bad, f"{rounding}/{overflow}: x={x[bad[0]]!r} file {expected[bad[0]]} vs {got[bad[0]]}"
    if src == "float32":  # every half-step between two codes is an input (ties for nearest_even)
        ties = [
            v
            for v in x
            if math.isfinite(v) and (Fraction(v) * 64).denominator == 1 and (Fraction(v) * 64) % 2
        ]
        assert len(ties) > 100


# ==========================================================================================================
# 4. Faults, against integer loops over the stated rules
# ==========================================================================================================
def encode_independent(x32: np.ndarray, fmt: str) -> list[int]:
    """Codes of float32 values in a format, via NumPy/ml_dtypes casts or exact rationals (q2.5)."""
    if fmt == "q2.5":
        return [fixed_reference(float(v), "nearest_even", "saturate") for v in x32]
    if fmt == "float32":
        return bits(x32).tolist()
    return bits(x32.astype(ML_DTYPES[fmt])).tolist()


@needs_ml_dtypes
def test_flip_by_uniform_cases():
    doc = load_json("faults_flip_by_uniform.json")
    planted = 0
    for name, case in doc["cases"].items():
        nbits, protected = case["nbits"], set(case["protected"] or [])
        x = floats(case["x_float32_bits"], np.float32)
        before = ints(case["before"])
        assert before == encode_independent(x, case["format"]), name
        u = np.array([floats(row, np.float32) for row in case["uniform_bits"]])
        assert u.shape == (len(before), nbits) and (u >= 0).all() and (u < 1).all()
        previous = [0] * len(before)
        for p_text, res in case["results"].items():
            p32 = np.float32(float(p_text))
            assert int(res["p_float32_bits"], 16) == int(bits(np.array([p32]))[0])
            masks = [
                sum(1 << j for j in range(nbits) if u[k, j] < p32 and j not in protected)
                for k in range(len(before))
            ]
            assert ints(res["after"]) == [b ^ mk for b, mk in zip(before, masks, strict=True)], (
                f"{name} p={p_text}"
            )
            assert all(prev & ~mk == 0 for prev, mk in zip(previous, masks, strict=True)), "not nested"
            previous = masks
            planted += int((u == p32).sum()) if p32 > 0 else 0
    assert planted > 0  # entries equal to float32(p) exist and must not flip (strict <)


@needs_ml_dtypes
def test_faultlist_files_and_application():
    text_csv = (GOLDEN / "faultlist.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text_csv, newline="")))
    assert rows[0] == ["tensor", "index", "bit", "kind", "format"]
    from_csv = [(t, int(i), int(b), k, f) for t, i, b, k, f in rows[1:]]
    doc = json.loads((GOLDEN / "faultlist.json").read_text(encoding="utf-8"))
    assert (doc["schema"], doc["version"]) == ("saf_ref.faultlist", 1)
    from_json = [(r["tensor"], r["index"], r["bit"], r["kind"], r["format"]) for r in doc["faults"]]
    assert from_csv == from_json
    assert {'odd,"name"', "conv1.weight", "fc.weight"} == {r[0] for r in from_csv}
    assert {"flip", "stuck0", "stuck1"} == {r[3] for r in from_csv}
    applied = load_json("faults_faultlist.json")["tensors"]
    for name, t in applied.items():
        x = floats(t["x_float32_bits"], np.float32)
        before = ints(t["before"])
        assert before == encode_independent(x, t["format"]), name
        assert len(before) == math.prod(t["shape"])
        words = list(before)
        records = [r for r in from_csv if r[0] == name]
        assert all(r[4] == t["format"] and 0 <= r[2] < t["nbits"] for r in records)
        for _, i, b, kind, _ in records:  # flips first, XOR
            if kind == "flip":
                words[i] ^= 1 << b
        for _, i, b, kind, _ in records:  # then stuck-at
            if kind == "stuck0":
                words[i] &= ~(1 << b)
            elif kind == "stuck1":
                words[i] |= 1 << b
        assert words == ints(t["after"]), name


# ==========================================================================================================
# 5. Quantizers, against the published formulas (float32 arithmetic)
# ==========================================================================================================
F32 = np.float32


def quantizer_reference(x: np.ndarray, p: dict):
    """Stutz et al.'s per-tensor quantizer, from its formulas: ``(codes, context, decode(codes))``."""
    m, margin = p["nbits"], p["margin"]
    levels = (1 << (m - 1)) - 1
    lo = hi = width = None
    if p["scheme"] == "symmetric":
        if p["max_abs"] is not None:
            q64, step = p["max_abs"], F32((p["max_abs"] + margin) / levels)
        else:
            q64 = float(np.abs(x).max()) + margin
            if p["clip"] is not None:
                q64 = min(q64, p["clip"])
            step = F32(q64 / levels)
        q, t = F32(q64), x
    else:
        xc = x if p["clip"] is None else np.clip(x, -F32(p["clip"]), F32(p["clip"]))
        lo, hi = xc.min(), xc.max()
        width = F32(float(hi) - float(lo))
        t = (xc - lo) / width * F32(2) - F32(1)
        q, step = F32(1), F32((1 + margin) / levels)
    s = np.clip(t, -q, q) / step
    if p["code"] == "offset_binary":
        u = np.clip(s + F32(1 << (m - 1)), F32(0), F32((1 << m) - 1))
        codes = (np.rint(u) if p["rounding"] == "nearest_even" else u).astype(np.int64)  # truncates
    else:
        v = np.rint(s) if p["rounding"] == "nearest_even" else np.trunc(s)
        codes = v.astype(np.int64) & ((1 << m) - 1)

    def decode(c: np.ndarray) -> np.ndarray:
        if p["code"] == "offset_binary":
            k = np.minimum(c, (1 << m) - 1).astype(F32) - F32(1 << (m - 1))
        else:
            k = np.where(c >= 1 << (m - 1), c - (1 << m), c).astype(F32)
        y = np.clip(k * step, -q, q)
        if p["scheme"] == "asymmetric":
            y = np.clip((y + F32(1)) / F32(2) * width + lo, lo, hi)
        return y

    context = {"q": q, "step": step, "min": lo, "max": hi}
    return codes, context, decode


def test_quantizer_cases():
    doc = load_json("quantizer.json")
    assert doc["rows_columns"] == ["x_bits", "code", "decoded_bits"]
    assert len(doc["cases"]) >= 40
    for name, case in doc["cases"].items():
        p = case["params"]
        x = floats([r[0] for r in case["rows"]], np.float32)
        codes, context, decode = quantizer_reference(x, p)
        assert ints(r[1] for r in case["rows"]) == codes.tolist(), name
        assert ints(r[2] for r in case["rows"]) == bits(decode(codes)).tolist(), name
        ctx = case["context"]
        assert (ctx["scheme"], ctx["code"], ctx["nbits"]) == (p["scheme"], p["code"], p["nbits"])
        for key, value in context.items():
            if value is None:
                assert ctx[key] is None
            else:
                assert (
                    ctx[key] == float(value)
                    and case["context_float32_bits"][key] == f"0x{int(bits(np.array([value]))[0]):08x}"
                )
        if "decode_all_bits" in case:
            all_codes = np.arange(1 << p["nbits"])
            assert ints(case["decode_all_bits"]) == bits(decode(all_codes)).tolist(), name


# ==========================================================================================================
# 6. Network ops, ResNet-20 and SGD, against PyTorch
# ==========================================================================================================
def gamma(k: int, u: float) -> float:
    return k * u / (1 - k * u)


def rel_err(a, b) -> float:
    """max |a - b| / max |b| over a tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def assert_float32_tier(golden32, golden64, torch32, torch64, what: str) -> None:
    """DESIGN.md section 5, "relative to our own float32", both ways: the file's float32 result is as close
    to the float64 truth as PyTorch's float32 result is, and PyTorch's float32 result meets the contract
    the README states for consumers (``max|got32 - golden64| <= 8 max|golden32 - golden64| + 2**-21
    max|golden64|``). The file's float64 result agrees with PyTorch's float64 result to 1e-12."""
    truth = np.asarray(torch64, np.float64)
    scale = np.abs(truth).max()
    own = np.abs(np.asarray(torch32, np.float64) - truth).max()
    err = np.abs(np.asarray(golden32, np.float64) - truth).max()
    assert err <= 8 * own + 2.0**-21 * scale, f"{what}: float32 error {err:.3g} vs torch float32 {own:.3g}"
    assert rel_err(golden64, truth) < 1e-12, what
    g64 = np.asarray(golden64, np.float64)
    contract = 8 * np.abs(np.asarray(golden32, np.float64) - g64).max() + 2.0**-21 * np.abs(g64).max()
    assert np.abs(np.asarray(torch32, np.float64) - g64).max() <= contract, f"{what}: contract unmet by torch"


def npz_case(arrays: dict, case: str, dt: str) -> dict[str, np.ndarray]:
    prefix = f"{case}.{dt}."
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _grads(torch, out, inputs: list, dy):
    return torch.autograd.grad(out, inputs, grad_outputs=dy)


@pytest.mark.torch
def test_conv_and_linear_cases(torch):
    F = torch.nn.functional
    arrays, index = load_npz("nn_ops.npz"), load_json("index.json")["npz"]["nn_ops.npz"]
    for case, cfg in index["cases"].items():
        if cfg["op"] not in ("conv2d", "linear"):
            continue
        for dt in ("float64", "float32"):
            a = {k: torch.from_numpy(v.copy()) for k, v in npz_case(arrays, case, dt).items()}
            x, w = a["x"].requires_grad_(), a["w"].requires_grad_()
            b = a["b"].requires_grad_() if "b" in a else None
            wide = [t.detach().double().requires_grad_() for t in (x, w)] + (
                [b.detach().double().requires_grad_()] if b is not None else []
            )

            def op(x_, w_, b_=None, cfg=cfg):
                if cfg["op"] == "linear":
                    return F.linear(x_, w_, b_)
                return F.conv2d(x_, w_, b_, stride=tuple(cfg["stride"]), padding=tuple(cfg["padding"]))

            y64 = op(*wide)
            g64 = _grads(torch, y64, wide, a["dy"].double())
            truth = {
                "y": y64.detach(),
                "dx": g64[0],
                "dw": g64[1],
                **({"db": g64[2]} if b is not None else {}),
            }
            for out in cfg["arrays_out"]:
                key = f"{case}.{dt}.{out}"
                bound = index["arrays"][key]["bound"]
                mag, k = arrays[bound["magnitude"]], bound["k"]
                t64 = truth[out].numpy()
                # The stored magnitude is |x|.|w| for this output (checked with torch on |inputs|).
                err = np.abs(arrays[key].astype(np.float64) - t64)
                u = 2.0**-24 if dt == "float32" else 2.0**-53
                # Both the file and torch carry a float64 error below gamma_K(2**-53) * magnitude.
                limit = (gamma(k, u) + 2 * gamma(k, 2.0**-53)) * mag
                worst = float((err - limit).max())
                assert worst <= 0, f"{key}: exceeds the dot-product bound by {worst:.3g}"
            if dt == "float64":
                absolute = [t.detach().abs().requires_grad_() for t in wide]
                ym = op(*absolute)
                gm = _grads(torch, ym, absolute, a["dy"].abs())
                mags = {
                    "y": ym.detach(),
                    "dx": gm[0],
                    "dw": gm[1],
                    **({"db": gm[2]} if b is not None else {}),
                }
                for out, m in mags.items():
                    assert rel_err(arrays[f"{case}.magnitude.{out}"], m.numpy()) < 1e-13, (
                        f"{case} magnitude {out}"
                    )


@pytest.mark.torch
def test_batchnorm_cross_entropy_relu_maxpool_cases(torch):
    F = torch.nn.functional
    arrays, index = load_npz("nn_ops.npz"), load_json("index.json")["npz"]["nn_ops.npz"]
    for case, cfg in index["cases"].items():
        results = {}
        for dt in ("float64", "float32"):
            a = {k: torch.from_numpy(v.copy()) for k, v in npz_case(arrays, case, dt).items()}
            if cfg["op"] == "batchnorm2d":
                x, w, b = (a[k].requires_grad_() for k in ("x", "weight", "bias"))
                rm, rv = a["running_mean"].clone(), a["running_var"].clone()
                y = F.batch_norm(
                    x, rm, rv, w, b, training=cfg["train"], momentum=cfg["momentum"], eps=cfg["eps"]
                )
                dx, dw, db = _grads(torch, y, [x, w, b], a["dy"])
                results[dt] = {
                    "y": y,
                    "new_running_mean": rm,
                    "new_running_var": rv,
                    "dx": dx,
                    "dweight": dw,
                    "dbias": db,
                }
            elif cfg["op"] == "cross_entropy":
                z = a["logits"].requires_grad_()
                labels = torch.from_numpy(arrays[f"{case}.labels"])
                loss = F.cross_entropy(z, labels, label_smoothing=cfg["label_smoothing"])
                results[dt] = {"loss": loss, "dlogits": torch.autograd.grad(loss, z)[0]}
            elif cfg["op"] in ("relu", "maxpool2d"):
                x = a["x"].requires_grad_()
                if cfg["op"] == "relu":
                    y = torch.relu(x)
                else:
                    y = F.max_pool2d(x, cfg["kernel_size"], cfg["stride"], cfg["padding"])
                results[dt] = {"y": y, "dx": _grads(torch, y, [x], a["dy"])[0]}
            else:
                continue
        if not results:
            continue
        for out in cfg["arrays_out"]:
            got = {dt: results[dt][out].detach().numpy() for dt in results}
            golden = {dt: arrays[f"{case}.{dt}.{out}"] for dt in results}
            if cfg["op"] in ("relu", "maxpool2d"):  # exact, signed zeros included; NaN anywhere NaN
                for dt in results:
                    g, t = golden[dt], got[dt]
                    nan = np.isnan(t)
                    assert (np.isnan(g) == nan).all() and (bits(g)[~nan] == bits(t)[~nan]).all(), (
                        f"{case}.{dt}.{out}"
                    )
            else:
                assert_float32_tier(
                    golden["float32"], golden["float64"], got["float32"], got["float64"], f"{case}.{out}"
                )


def torch_resnet(torch, params: dict, state: dict, x, train: bool):
    """ResNet-20 from the state-dict names with torch.nn.functional (running stats updated in place)."""
    F = torch.nn.functional

    def bn(h, name):
        stats = state[f"{name}.running_mean"], state[f"{name}.running_var"]
        affine = params[f"{name}.weight"], params[f"{name}.bias"]
        return F.batch_norm(h, *stats, *affine, training=train, momentum=0.1, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, params["conv1.weight"], padding=1), "bn1"))
    blocks = sorted(
        {tuple(map(int, k.split(".")[0][5:] + k.split(".")[1])) for k in params if k.startswith("layer")}
    )
    for stage, block in blocks:
        pre = f"layer{stage}.{block}."
        stride = 2 if block == 0 and stage > 1 else 1
        out = F.relu(bn(F.conv2d(h, params[pre + "conv1.weight"], stride=stride, padding=1), pre + "bn1"))
        out = bn(F.conv2d(out, params[pre + "conv2.weight"], padding=1), pre + "bn2")
        if pre + "downsample.0.weight" in params:
            h = bn(F.conv2d(h, params[pre + "downsample.0.weight"], stride=stride), pre + "downsample.1")
        h = F.relu(out + h)
    return F.linear(h.mean(dim=(2, 3)), params["fc.weight"], params["fc.bias"])


@pytest.mark.torch
def test_resnet20_case(torch):
    arrays, meta = load_npz("resnet20.npz"), load_json("index.json")["npz"]["resnet20.npz"]["cases"]
    labels = torch.from_numpy(arrays["labels"])
    assert arrays["labels"].tolist() == meta["labels"]
    results = {}
    for dt in ("float64", "float32"):
        params = {
            k: torch.from_numpy(arrays[f"{dt}.params.{k}"].copy()).requires_grad_()
            for k in meta["param_names"]
        }
        state = {k: torch.from_numpy(arrays[f"{dt}.state.{k}"].copy()) for k in meta["state_names"]}
        x = torch.from_numpy(arrays[f"{dt}.x"].copy()).requires_grad_()
        assert tuple(x.shape) == (meta["batch"], meta["in_channels"], meta["hw"], meta["hw"])
        logits = torch_resnet(torch, params, state, x, train=True)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, [*params.values(), x, logits])
        with torch.no_grad():
            logits_eval = torch_resnet(torch, params, state, x, train=False)
        r = {
            "logits": logits,
            "loss": loss,
            "dx": grads[-2],
            "dlogits": grads[-1],
            "logits_eval": logits_eval,
        }
        r.update({f"grads.{k}": g for k, g in zip(params, grads, strict=False)})
        r.update({f"new_state.{k}": v for k, v in state.items()})
        results[dt] = {k: v.detach().numpy() for k, v in r.items()}
    # float32 params are exactly the float64 ones rounded (they are the float64 ones widened).
    for k in meta["param_names"]:
        np.testing.assert_array_equal(
            arrays[f"float32.params.{k}"].astype(np.float64), arrays[f"float64.params.{k}"]
        )
    for key in results["float64"]:
        assert_float32_tier(arrays[f"float32.{key}"], arrays[f"float64.{key}"], results["float32"][key],
                            results["float64"][key], f"resnet20 {key}")  # fmt: skip


@pytest.mark.torch
def test_sgd_cases(torch):
    arrays, cases = load_npz("sgd.npz"), load_json("index.json")["npz"]["sgd.npz"]["cases"]
    for name, cfg in cases.items():
        for dt in ("float64", "float32"):
            p = torch.from_numpy(arrays[f"{name}.{dt}.p0"].copy()).requires_grad_()
            kw = {k: cfg[k] for k in ("lr", "momentum", "dampening", "nesterov", "weight_decay")}
            opt = torch.optim.SGD([p], **kw)
            u = 2.0**-24 if dt == "float32" else 2.0**-53
            for step in range(1, cfg["steps"] + 1):
                g = arrays[f"{name}.{dt}.g{step}"]
                p.grad = torch.from_numpy(g.copy())
                opt.step()
                golden = arrays[f"{name}.{dt}.p{step}"]
                # torch fuses a + alpha*b (one rounding); the file rounds twice: a few units of u apart.
                scale = np.abs(golden) + cfg["lr"] * (np.abs(g) * 4 + np.abs(golden))
                assert (np.abs(golden - p.detach().numpy()) <= 8 * u * scale).all(), (
                    f"{name} {dt} step {step}"
                )


# ==========================================================================================================
# 7. Weight transforms, against Python's math (float64, one rounding to float32)
# ==========================================================================================================
def _sech2(v: float) -> float:
    """``1 - tanh(v)**2`` without the cancellation: ``4 e^(-2|v|) / (1 + e^(-2|v|))**2``."""
    e = math.exp(-2 * abs(v))
    return 4 * e / (1 + e) ** 2


def transform_math(name: str, a: float):
    """``(f, f')`` of the scaled transform ``a f(u / a)`` on Python floats."""
    fns = {
        "identity": (lambda v: v, lambda v: 1.0),
        "tanh": (math.tanh, _sech2),
        "arctan": (math.atan, lambda v: 1.0 / (1.0 + v * v)),
        "softsign": (
            lambda v: math.copysign(1.0, v) if math.isinf(v) else v / (1 + abs(v)),
            lambda v: 1.0 / (1 + abs(v)) ** 2,
        ),
        "hardtanh": (lambda v: max(-1.0, min(1.0, v)), lambda v: 1.0 if abs(v) < 1 else 0.0),
    }
    f, df = fns[name]
    return (lambda u: u if math.isnan(u) else a * f(u / a)), (lambda u: u if math.isnan(u) else df(u / a))


def ulps_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between two same-dtype arrays (no NaN): the float bits read as
    sign-magnitude integers, turned into ordinary integers that are ordered like the floats."""
    magnitude_mask = (1 << (8 * a.itemsize - 1)) - 1

    def ordered(v: np.ndarray) -> np.ndarray:
        signed = v.view(f"<i{v.itemsize}").astype(np.int64)  # negative iff the sign bit is set
        magnitude = signed & magnitude_mask
        return np.where(signed < 0, -magnitude, magnitude)

    return np.abs(ordered(a) - ordered(b))


def test_transform_cases():
    arrays, cases = load_npz("transforms.npz"), load_json("index.json")["npz"]["transforms.npz"]["cases"]
    for prefix, cfg in cases.items():
        f, df = transform_math(cfg["transform"], cfg["scale"])
        for dt, allowed in (("float64", 4), ("float32", 1)):
            u = arrays[f"{prefix}.{dt}.u"]
            for key, fn in (("forward", f), ("grad", df)):
                ref = np.array([fn(float(v)) for v in u], dtype=np.float64).astype(dt)
                got = arrays[f"{prefix}.{dt}.{key}"]
                nan = np.isnan(ref)
                assert (np.isnan(got) == nan).all(), f"{prefix}.{dt}.{key}"
                assert (np.signbit(got[~nan]) == np.signbit(ref[~nan])).all(), f"{prefix}.{dt}.{key} sign"
                worst = int(ulps_apart(got[~nan], ref[~nan]).max())
                assert worst <= allowed, f"{prefix}.{dt}.{key}: {worst} ulps from math"
            # inverse: forward(inverse(w)) == w up to 2 eps |w| where |w| / a < sup f (documented contract).
            w, inv = arrays[f"{prefix}.{dt}.w_in"], arrays[f"{prefix}.{dt}.inverse"]
            sup = {"identity": math.inf, "tanh": 1.0, "softsign": 1.0, "arctan": math.pi / 2, "hardtanh": 1.0}
            inside = np.abs(w.astype(np.float64)) / cfg["scale"] < sup[cfg["transform"]] * (1 - 1e-6)
            eps = float(np.finfo(dt).eps)
            for wi, ui in zip(w[inside], inv[inside], strict=True):
                back = f(float(ui))
                assert abs(back - float(wi)) <= 2 * eps * abs(float(wi)) + 1e-300, (
                    f"{prefix}.{dt} inverse({wi})"
                )


@pytest.mark.torch
def test_transform_contract_holds_for_torch(torch):
    """The README's ulp contract for transforms is met by PyTorch's own float32/float64 kernels (forward
    within 2 ulps; derivatives within 2 ulps or 2 eps absolute, since autograd forms 1 - tanh(u)**2 by
    cancellation), apart from the documented divergences at +-inf and NaN inputs."""
    F = torch.nn.functional
    ops = {"identity": lambda v: v, "tanh": torch.tanh, "arctan": torch.atan, "softsign": F.softsign,
           "hardtanh": F.hardtanh}  # fmt: skip
    arrays, cases = load_npz("transforms.npz"), load_json("index.json")["npz"]["transforms.npz"]["cases"]
    for prefix, cfg in cases.items():
        a = cfg["scale"]
        for dt in ("float64", "float32"):
            u = torch.from_numpy(arrays[f"{prefix}.{dt}.u"].copy()).requires_grad_()
            w = a * ops[cfg["transform"]](u / a)
            got = {"forward": w.detach().numpy(), "grad": torch.autograd.grad(w.sum(), u)[0].numpy()}
            regular = np.isfinite(u.detach().numpy())  # divergences at +-inf and NaN are documented
            eps = float(np.finfo(dt).eps)
            for key, floor in (("forward", 0.0), ("grad", 2 * eps)):
                golden, mine = arrays[f"{prefix}.{dt}.{key}"][regular], got[key][regular]
                close = (ulps_apart(golden, mine) <= 2) | (np.abs(golden - mine) <= floor)
                assert close.all(), f"{prefix}.{dt}.{key}: {golden[~close][:3]} vs torch {mine[~close][:3]}"
