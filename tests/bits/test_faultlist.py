"""FaultList: records, apply semantics against a naive loop, exact CSV/JSON round trips, validation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import saf_ref.bits.faultlist as faultlist_module
from saf_ref.bits.faultlist import COLUMNS, KINDS, Fault, FaultList
from saf_ref.bits.faultmodels import BitErrors, Bursts, ExactCount
from saf_ref.bits.faults import (
    apply_flips,
    sample_nested_flips,
    sample_stuck_at_map,
)


def naive_apply(codes: np.ndarray, records, nbits: int) -> np.ndarray:
    """The documented semantics, one record at a time on Python ints: flips (XOR), then stuck-at."""
    words = codes.reshape(-1).tolist()
    for r in records:
        if r.kind == "flip":
            words[r.index] ^= 1 << r.bit
    for r in records:
        if r.kind == "stuck0":
            words[r.index] &= ~(1 << r.bit)
        elif r.kind == "stuck1":
            words[r.index] |= 1 << r.bit
    return np.array(words, dtype=codes.dtype).reshape(codes.shape)


INDEX_RANGE = r"expected an integer in \[0, 2\*\*63 - 1\]"
SAMPLE = [
    Fault("conv1.weight", 12, 30, "flip", "float32"),
    Fault("conv1.weight", 12, 3, "stuck0", "float32"),
    Fault("fc.bias", 0, 1, "stuck1", "q2.5"),
    Fault("conv1.weight", 2, 30, "flip", "float32"),
]


# ---------------------------------------------------------------------------------------------------------
# Records, equality, concatenation
# ---------------------------------------------------------------------------------------------------------
def test_records_round_trip_through_the_container():
    fl = FaultList(SAMPLE)
    assert len(fl) == 4 and list(fl) == SAMPLE
    assert fl[0] == SAMPLE[0] and fl[-1] == SAMPLE[-1]
    assert fl.tensors == ("conv1.weight", "fc.bias") and fl.formats == ("float32", "q2.5")
    assert fl.kind == [r.kind for r in SAMPLE] and fl.tensor == [r.tensor for r in SAMPLE]
    assert fl.index.tolist() == [12, 12, 0, 2] and fl.bit.tolist() == [30, 3, 1, 30]
    assert FaultList(tuple(r) for r in SAMPLE) == fl  # plain tuples are accepted
    assert "4 records" in repr(fl)


def test_columns_are_read_only():
    fl = FaultList(SAMPLE)
    with pytest.raises(ValueError, match="read-only"):
        fl.index[0] = 5
    with pytest.raises(ValueError, match="read-only"):
        fl.bit[0] = 5
    with pytest.raises(AttributeError):
        fl.extra = 1


def test_equality_is_by_records_in_order():
    a = FaultList(SAMPLE)
    assert a == FaultList(list(SAMPLE))
    assert a != FaultList(SAMPLE[::-1])
    assert a != FaultList([*SAMPLE[:3], SAMPLE[3]._replace(format="float16")])
    assert a != FaultList(SAMPLE[:3])
    assert a != SAMPLE  # not a FaultList
    assert FaultList() == FaultList([])
    with pytest.raises(TypeError):
        hash(a)


def test_concatenation():
    a, b = FaultList(SAMPLE[:2]), FaultList(SAMPLE[2:])
    assert a + b == FaultList(SAMPLE) == FaultList.concat([a, b])
    assert FaultList.concat([]) == FaultList()
    assert len(FaultList() + a) == 2
    with pytest.raises(TypeError, match=r"FaultList.concat: lists\[1\] must be a FaultList"):
        FaultList.concat([a, SAMPLE])


def test_from_arrays_matches_records():
    fl = FaultList.from_arrays(
        np.array([3, 1]),
        np.array([0, 7], dtype=np.uint8),
        kind=["stuck1", "flip"],
        tensor="w",
        format_name="q2.5",
    )
    assert list(fl) == [Fault("w", 3, 0, "stuck1", "q2.5"), Fault("w", 1, 7, "flip", "q2.5")]
    empty = FaultList.from_arrays([], [], format_name="float32")
    assert len(empty) == 0 and empty == FaultList()


def test_select():
    fl = FaultList(SAMPLE)
    assert list(fl.select("conv1.weight")) == [SAMPLE[0], SAMPLE[1], SAMPLE[3]]
    assert len(fl.select("nothing")) == 0


# ---------------------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------------------
@given(
    records=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 11), st.sampled_from(KINDS)),
        max_size=30,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_apply_matches_naive_loop(records, seed):
    # keep only conflict-free stuck-at records (a bit both stuck0 and stuck1 is an error, tested below)
    stuck: dict[tuple[int, int], str] = {}
    kept = []
    for index, bit, kind in records:
        if kind != "flip" and stuck.setdefault((index, bit), kind) != kind:
            continue
        kept.append(Fault("w", index, bit, kind, "raw12"))
    codes = np.random.default_rng(seed).integers(0, 2**12, size=(2, 3), dtype=np.uint16)
    fl = FaultList(kept)
    got = fl.apply(codes, nbits=12)
    assert got.dtype == codes.dtype and got.shape == codes.shape
    assert np.array_equal(got, naive_apply(codes, kept, 12))
    assert np.array_equal(fl.apply(codes, "w", nbits=12), got)


def test_apply_order_flips_then_stuck_and_duplicate_flips_cancel():
    codes = np.zeros(1, dtype=np.uint8)
    # stuck1 listed before the flip of the same bit: the bit still reads 1 (stuck-at is applied last)
    fl = FaultList([("", 0, 2, "stuck1", "raw8"), ("", 0, 2, "flip", "raw8"), ("", 0, 5, "flip", "raw8")])
    assert fl.apply(codes).tolist() == [0b0010_0100]
    twice = FaultList([("", 0, 5, "flip", "raw8")] * 2)
    assert twice.apply(codes).tolist() == [0]
    with pytest.raises(ValueError, match="cannot be both stuck0 and stuck1, got index 0, bit 4"):
        FaultList([("", 0, 4, "stuck0", "raw8"), ("", 0, 4, "stuck1", "raw8")]).apply(codes)


def test_apply_never_mutates_and_validates_targets():
    codes = np.arange(6, dtype=np.uint8).reshape(2, 3)
    codes.flags.writeable = False
    fl = FaultList([("w", 5, 7, "flip", "mine")])  # a format saf_ref does not know: only ranges checked
    out = fl.apply(codes)
    assert out.flags.writeable and codes.tolist() == [[0, 1, 2], [3, 4, 5]] and out[1, 2] == 5 ^ 128
    with pytest.raises(
        ValueError, match=r"FaultList.apply: every index of tensor 'w' must be < codes.size \(=4\)"
    ):
        fl.apply(codes[:, :2].copy(), "w")
    with pytest.raises(ValueError, match=r"every bit must be < nbits \(=6\), got bit 7"):
        fl.apply(codes, nbits=6)
    with pytest.raises(ValueError, match=r"nbits must be in \[1, 8\]"):
        fl.apply(codes, nbits=9)
    with pytest.raises(TypeError, match="FaultList.apply: codes must have dtype"):
        fl.apply(codes.astype(np.float32))
    with pytest.raises(
        ValueError, match="tensor must be given when the list holds faults of several tensors"
    ):
        FaultList(SAMPLE).apply(np.zeros(20, np.uint32))
    # a misspelled tensor name is an error, not a silent no-op
    with pytest.raises(
        ValueError, match=r"FaultList.apply: tensor must be one of the list's tensors \('w',\), got 'W'"
    ):
        fl.apply(codes, "W")
    with pytest.raises(TypeError, match="FaultList.apply: tensor must be a str or None, got int"):
        fl.apply(codes, 3)
    assert np.array_equal(FaultList().apply(codes, "any"), codes)  # the empty list applies nothing anywhere


@pytest.mark.parametrize(
    ("fmt", "dtype", "nbits", "error", "match"),
    [
        ("float16", np.uint32, None, TypeError,
         r"codes must have dtype uint16 for records of format 'float16' \(16 bits\), got uint32"),
        ("float32", np.uint16, None, TypeError,
         r"codes must have dtype uint32 for records of format 'float32' \(32 bits\), got uint16"),
        ("q2.5", np.uint16, None, TypeError,
         r"codes must have dtype uint8 for records of format 'q2.5' \(8 bits\), got uint16"),
        ("quant4_asym_offset_rounded", np.uint16, None, TypeError,
         "codes must have dtype uint8 for records of format 'quant4"),
        ("raw12", np.uint8, None, TypeError,
         r"codes must have at least 12 bits per word for records of format 'raw12', got uint8"),
        ("float16", np.uint16, 12, ValueError,
         r"nbits must equal the width of the records' format 'float16' \(=16\), got 12"),
        ("raw12", np.uint32, 16, ValueError,
         r"nbits must equal the width of the records' format 'raw12' \(=12\), got 16"),
    ],
)
def test_apply_refuses_records_of_another_format(fmt, dtype, nbits, error, match):
    fl = FaultList([("w", 0, 1, "flip", fmt)])
    with pytest.raises(error, match="FaultList.apply: " + match):
        fl.apply(np.zeros(3, dtype), "w", nbits=nbits)


@pytest.mark.parametrize(
    ("fmt", "dtype", "width"),
    [("float16", np.uint16, 16), ("bfloat16", np.uint16, 16), ("float8_e4m3fn", np.uint8, 8),
     ("q2.5", np.uint8, 8), ("q7.8", np.uint16, 16), ("quant4_sym_twos_trunc", np.uint8, 4),
     ("raw12", np.uint16, 12), ("raw12", np.uint64, 12), ("mine", np.uint32, 32)],
)
def test_apply_takes_nbits_from_the_records_format(fmt, dtype, width):
    # the top bit of the format's word applies; one above it is out of range (naive reference: XOR by hand)
    codes = np.zeros(2, dtype)
    got = FaultList([("w", 1, width - 1, "flip", fmt)]).apply(codes, "w")
    assert got.tolist() == [0, 1 << (width - 1)]
    if width < 8 * codes.itemsize:
        match = rf"every bit of tensor 'w' must be < nbits \(={width}\), got bit {width}"
        with pytest.raises(ValueError, match=match):
            FaultList([("w", 1, width, "flip", fmt)]).apply(codes, "w")


def test_apply_dict():
    arrays = {
        "conv1.weight": np.zeros(16, dtype=np.uint32),
        "fc.bias": np.zeros(2, dtype=np.uint8),
        "untouched": np.ones(3, dtype=np.uint16),
    }
    fl = FaultList(SAMPLE)
    out = fl.apply_dict(arrays, nbits={"fc.bias": 8})
    assert set(out) == set(arrays) and out is not arrays
    assert out["untouched"] is arrays["untouched"]
    for name in fl.tensors:
        ref = naive_apply(arrays[name], [r for r in SAMPLE if r.tensor == name], 32)
        assert np.array_equal(out[name], ref)
    assert not arrays["conv1.weight"].any() and not arrays["fc.bias"].any()
    with pytest.raises(
        ValueError, match=r"apply_dict: arrays must hold every tensor of the list, missing \['fc.bias'\]"
    ):
        fl.apply_dict({"conv1.weight": arrays["conv1.weight"]})
    with pytest.raises(TypeError, match="arrays must be a mapping"):
        fl.apply_dict([1, 2])
    with pytest.raises(ValueError, match=r"nbits must equal the width of the records' format 'q2.5' \(=8\)"):
        fl.apply_dict(arrays, nbits={"fc.bias": 1})


# ---------------------------------------------------------------------------------------------------------
# Files: exact round trips, the documented layout, validation on load
# ---------------------------------------------------------------------------------------------------------
record_strategy = st.builds(
    Fault,
    tensor=st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=12),  # commas, quotes, non-ASCII
    index=st.integers(0, 2**62),
    bit=st.integers(0, 63),
    kind=st.sampled_from(KINDS),
    format=st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=8),
)


@given(st.lists(record_strategy, max_size=12))
def test_csv_and_json_round_trip_exactly(records):
    fl = FaultList(records)
    assert FaultList.from_csv(fl.to_csv()) == fl
    assert FaultList.from_json(fl.to_json()) == fl
    assert list(FaultList.from_json(fl.to_json())) == records


def test_save_and_load_files(tmp_path):
    fl = FaultList(SAMPLE)
    for name in ("faults.csv", "faults.json", "FAULTS.JSON"):
        fl.save(tmp_path / name)
        assert FaultList.load(tmp_path / name) == fl
        assert FaultList.load(str(tmp_path / name)) == fl
    with pytest.raises(ValueError, match="FaultList.save: path must end in .csv or .json"):
        fl.save(tmp_path / "faults.txt")
    with pytest.raises(ValueError, match="FaultList.load: path must end in .csv or .json"):
        FaultList.load(tmp_path / "faults.txt")


def test_csv_layout_is_the_documented_one():
    text = FaultList(SAMPLE[:2] + [Fault('a,"b"', 1, 2, "flip", "float16")]).to_csv()
    assert text.splitlines() == [
        "tensor,index,bit,kind,format",
        "conv1.weight,12,30,flip,float32",
        "conv1.weight,12,3,stuck0,float32",
        '"a,""b""",1,2,flip,float16',
    ]


def test_json_layout_is_the_documented_one():
    doc = json.loads(FaultList(SAMPLE[:1]).to_json())
    assert doc == {
        "schema": "saf_ref.faultlist",
        "version": 1,
        "faults": [{"tensor": "conv1.weight", "index": 12, "bit": 30, "kind": "flip", "format": "float32"}],
    }


def test_the_module_docstring_examples_parse_to_the_same_list():
    doc = faultlist_module.__doc__
    csv_text = "\n".join(
        line.strip() for line in doc.split("RFC 4180")[1].split("::")[1].split("JSON:")[0].splitlines()
    )
    json_text = doc.split("JSON: one object, one record per line::")[1].split("Applying")[0]
    from_csv = FaultList.from_csv(csv_text.strip() + "\n")
    from_json = FaultList.from_json(json_text)
    assert from_csv == from_json and len(from_csv) == 2
    assert list(from_csv)[1] == Fault("conv1.weight", 12, 3, "stuck0", "float32")


def test_hand_written_csv_with_crlf_and_blank_lines():
    text = "tensor,index,bit,kind,format\r\nw,0,1,flip,q2.5\r\n\r\n,5,7,stuck1,raw8\r\n"
    assert list(FaultList.from_csv(text)) == [
        Fault("w", 0, 1, "flip", "q2.5"),
        Fault("", 5, 7, "stuck1", "raw8"),
    ]


HEADER = ",".join(COLUMNS) + "\n"
BAD_CSV = [
    ("", "header tensor,index,bit,kind,format is missing"),
    ("tensor,index,bit,kind\nw,0,1,flip\n", "line 1: header must be tensor,index,bit,kind,format"),
    (HEADER + "w,0,1,flip\n", r"line 2: expected 5 fields"),
    (
        HEADER + "w,0,1,flip,f32\nw,0,x,flip,f32\n",
        "line 3, field 'bit': expected an integer in \\[0, 63\\], got 'x'",
    ),
    (HEADER + "w,0,64,flip,f32\n", "line 2, field 'bit': expected an integer in \\[0, 63\\], got 64"),
    (HEADER + "w,-1,0,flip,f32\n", rf"line 2, field 'index': {INDEX_RANGE}, got '-1'"),
    # an index past int64 is the same templated error, not Python's OverflowError
    (HEADER + f"w,{2**70},0,flip,f32\n", rf"line 2, field 'index': {INDEX_RANGE}, got {2**70}"),
    (HEADER + "w,1.5,0,flip,f32\n", "line 2, field 'index'"),
    (HEADER + "w, 1,0,flip,f32\n", "line 2, field 'index'"),
    (HEADER + "w,1,0,flop,f32\n", "line 2, field 'kind': expected one of"),
    (HEADER + "w,1,0,flip,\n", "line 2, field 'format': expected a non-empty string"),
    (HEADER + 'w,1,0,flip,"f32\n', "malformed CSV|expected 5 fields|field"),
]


@pytest.mark.parametrize(("text", "match"), BAD_CSV)
def test_corrupt_csv_raises_naming_line_and_field(text, match):
    with pytest.raises(ValueError, match="FaultList.from_csv: " if match.startswith("header") else match):
        FaultList.from_csv(text)
    with pytest.raises(ValueError, match=match):
        FaultList.from_csv(text)


def _json(faults, **top):
    return json.dumps({"schema": "saf_ref.faultlist", "version": 1, "faults": faults, **top})


GOOD = {"tensor": "w", "index": 1, "bit": 2, "kind": "flip", "format": "f32"}
BAD_JSON = [
    ("{", "invalid JSON at line 1"),
    ("[]", "the top level must be an object"),
    (json.dumps({"schema": "other", "version": 1, "faults": []}), "schema/version must be"),
    (_json([], version=2), "schema/version must be"),
    (_json({}), "field 'faults' must be a list"),
    (_json([GOOD, 3]), r"faults\[1\]: must be an object with keys"),
    (_json([{k: v for k, v in GOOD.items() if k != "bit"}]), r"faults\[0\]: must be an object with keys"),
    (_json([{**GOOD, "extra": 1}]), r"faults\[0\]: must be an object with keys"),
    (_json([{**GOOD, "bit": 2.0}]), r"faults\[0\], field 'bit': expected an integer"),
    (_json([{**GOOD, "bit": True}]), r"faults\[0\], field 'bit': expected an integer"),
    (_json([{**GOOD, "bit": 64}]), r"faults\[0\], field 'bit'"),
    (_json([GOOD, {**GOOD, "index": -3}]), rf"faults\[1\], field 'index': {INDEX_RANGE}, got -3"),
    (_json([{**GOOD, "index": 2**63}]), rf"faults\[0\], field 'index': {INDEX_RANGE}, got {2**63}"),
    (_json([{**GOOD, "index": "3"}]), r"faults\[0\], field 'index'"),
    (_json([{**GOOD, "tensor": None}]), r"faults\[0\], field 'tensor': expected a string"),
    (_json([{**GOOD, "kind": "stuck"}]), r"faults\[0\], field 'kind'"),
    (_json([{**GOOD, "format": ""}]), r"faults\[0\], field 'format'"),
]


@pytest.mark.parametrize(("text", "match"), BAD_JSON)
def test_corrupt_json_raises_naming_record_and_field(text, match):
    with pytest.raises(ValueError, match=match):
        FaultList.from_json(text)


BAD_CONSTRUCTION = [
    (lambda: FaultList([("w", 0, 1, "flip")]), ValueError, r"FaultList: records\[0\]: must be a 5-tuple"),
    (lambda: FaultList([("w", -1, 1, "flip", "f")]), ValueError, r"records\[0\], field 'index'"),
    (lambda: FaultList([("w", 0, 64, "flip", "f")]), ValueError, r"records\[0\], field 'bit'"),
    (lambda: FaultList([("w", 0, 1.0, "flip", "f")]), ValueError, r"records\[0\], field 'bit'"),
    (lambda: FaultList([(1, 0, 1, "flip", "f")]), ValueError, r"records\[0\], field 'tensor'"),
    (lambda: FaultList([("w", 0, 1, "flip", "")]), ValueError, r"records\[0\], field 'format'"),
    (
        lambda: FaultList([("a\nb", 0, 1, "flip", "f")]),
        ValueError,
        "field 'tensor': expected no control characters",
    ),
    (
        lambda: FaultList([("w", 0, 1, "flip", "f\r")]),
        ValueError,
        "field 'format': expected no control characters",
    ),
    (lambda: FaultList.from_arrays([[1]], [1], format_name="f"), ValueError, "index must be 1-dimensional"),
    (lambda: FaultList.from_arrays([1.0], [1], format_name="f"), TypeError, "index must hold integers"),
    (
        lambda: FaultList.from_arrays([1], [1, 2], format_name="f"),
        ValueError,
        r"bit.shape\[0\] \(=2\) must equal",
    ),
    (lambda: FaultList.from_arrays([-1], [1], format_name="f"), ValueError, "index must be >= 0"),
    (lambda: FaultList.from_arrays([1], [64], format_name="f"), ValueError, r"bit must be in \[0, 63\]"),
    (
        lambda: FaultList.from_arrays([1], [1], format_name=""),
        TypeError,
        "format_name must be a non-empty str",
    ),
    (
        lambda: FaultList.from_arrays([1], [1], tensor=None, format_name="f"),
        TypeError,
        "tensor must be a str",
    ),
    (
        lambda: FaultList.from_arrays([1], [1], tensor="a\tb", format_name="f"),
        ValueError,
        "no control characters",
    ),
    (
        lambda: FaultList.from_arrays([1], [1], kind="flop", format_name="f"),
        ValueError,
        "kind must be one of",
    ),
    (lambda: FaultList.from_arrays([1], [1], kind=["flip"] * 2, format_name="f"), ValueError, r"len\(kind\)"),
    (
        lambda: FaultList.from_arrays([1, 2], [1, 1], kind=["flip", "stuck2"], format_name="f"),
        ValueError,
        r"FaultList.from_arrays: kind must be one of \('flip', 'stuck0', 'stuck1'\), got 'stuck2'",
    ),
    (lambda: FaultList(SAMPLE)[4], ValueError, r"i must be in \[-4, 3\]"),
    (lambda: FaultList(SAMPLE).select(3), TypeError, "FaultList.select: tensor must be a str"),
    (lambda: FaultList.from_csv(b"x"), TypeError, "FaultList.from_csv: text must be a str"),
    (lambda: FaultList.from_json(None), TypeError, "FaultList.from_json: text must be a str"),
    (lambda: FaultList(SAMPLE).save(None), TypeError, "FaultList.save: path must be a str or path-like"),
    (lambda: FaultList.load(3), TypeError, "FaultList.load: path must be a str or path-like, got int 3"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_CONSTRUCTION, ids=[m for _, _, m in BAD_CONSTRUCTION])
def test_bad_construction_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------
# Replay: a pattern drawn here, saved and loaded, reproduces the injection bit for bit
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_sample_save_load_apply_replays_the_injection(tmp_path, suffix):
    rng = np.random.default_rng(7)
    weights = rng.integers(0, 2**32, size=(16, 8), dtype=np.uint32)
    bias = rng.integers(0, 2**8, size=(16,), dtype=np.uint8)
    w_out, w_faults = BitErrors(0.01).apply(
        weights, rng=1, tensor="fc.weight", format_name="float32"
    )
    b_out, b_faults = ExactCount(9).apply(bias, rng=2, tensor="fc.bias", format_name="q2.5")
    burst_out, burst_faults = Bursts(0.2, 5).apply(
        weights, rng=3, tensor="x", format_name="float32"
    )
    chip = sample_stuck_at_map(bias.shape, 8, 0.2, rng=4, p_stuck1=0.5)
    nested = sample_nested_flips(weights.shape, 32, [0.02], rng=5)[0]

    lists = {
        "w": w_faults,
        "b": b_faults,
        "burst": burst_faults,
        "chip": chip.to_faultlist(tensor="fc.bias", format_name="q2.5"),
        "nested": FaultList.from_arrays(nested.index, nested.bit, tensor="fc.weight", format_name="float32"),
    }
    loaded = {}
    for name, fl in lists.items():
        path = tmp_path / f"{name}{suffix}"
        fl.save(path)
        loaded[name] = FaultList.load(path)
        assert loaded[name] == fl
    assert np.array_equal(loaded["w"].apply(weights), w_out)
    assert np.array_equal(loaded["b"].apply(bias), b_out)
    assert np.array_equal(loaded["burst"].apply(weights), burst_out)
    assert np.array_equal(loaded["chip"].apply(bias), chip.apply(bias))
    assert np.array_equal(loaded["nested"].apply(weights), apply_flips(weights, nested))
    # one file for a whole model
    both = w_faults + b_faults
    both.save(tmp_path / f"model{suffix}")
    out = FaultList.load(tmp_path / f"model{suffix}").apply_dict({"fc.weight": weights, "fc.bias": bias})
    assert np.array_equal(out["fc.weight"], w_out) and np.array_equal(out["fc.bias"], b_out)


def test_large_list_round_trip_is_exact():
    rng = np.random.default_rng(8)
    codes = rng.integers(0, 2**16, size=20_000, dtype=np.uint16)
    out, fl = BitErrors(0.05).apply(codes, rng=9, format_name="float16", tensor="t")
    assert len(fl) > 10_000
    again = FaultList.from_csv(fl.to_csv())
    assert again == fl and np.array_equal(again.apply(codes), out)
    assert re.match(r"tensor,index,bit,kind,format\nt,\d+,\d+,flip,float16\n", fl.to_csv())
