"""Placement of stored words in a chip and ChipFaults, against per-word / per-bit Python loops.

References: the layout of the placement module docstring written as a loop over words with its own
generator; the chip's behaviour table applied bit by bit; replays through FaultList.apply
(saf_ref.protect.inject with a FaultList).
"""

from __future__ import annotations

import numpy as np
import pytest

from saf_ref.bits.chip import Chip, ChipModel
from saf_ref.bits.faultlist import FaultList
from saf_ref.bits.faultmodels import Target
from saf_ref.bits.placement import ChipFaults, Placement, layout
from saf_ref.protect import StorageRule, StorageSpec, default_spec, inject, store
from saf_ref.protect.inject import targets_of


def make_stored(fmt="q2.5", expose_bias=True, seed=0):
    g = np.random.default_rng(seed)
    params = {
        "conv.weight": g.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": g.standard_normal(4).astype(np.float32),
        "fc.weight": g.standard_normal((10, 17)).astype(np.float32),
        "fc.bias": g.standard_normal(10).astype(np.float32),
    }
    return store(params, default_spec(fmt, expose_non_weights=expose_bias))


def naive_layout(targets, shape, placement):
    """Module docstring, word by word: {name: [address of bit 0 of word k, ...]}."""
    a, r, c = shape
    exposed = [t for t in targets.values() if t.exposed]
    g = np.random.default_rng(placement.seed) if placement.seed is not None else None
    order = list(range(len(exposed)))
    if placement.permute_tensors:
        order = list(g.permutation(len(exposed)))
    phys = list(g.permutation(a * r)) if placement.permute_rows else list(range(a * r))
    out, row = {}, placement.offset
    for i in order:
        t = exposed[i]
        per_row = c // t.nbits
        addrs = []
        for k in range(t.size):
            addrs.append(int(phys[row + k // per_row]) * c + (k % per_row) * t.nbits)
        out[t.name] = addrs
        row += -(-t.size // per_row)
    return out


def naive_chip_read(codes, addrs, nbits, chip, voltage):
    """What the chip returns for each word, bit by bit, and the (index, bit, kind) of each failing cell."""
    flat = codes.reshape(-1)
    out = np.empty_like(flat)
    v01, v10 = chip.v01.reshape(-1), chip.v10.reshape(-1)
    records = []
    for k in range(flat.size):
        word = int(flat[k])
        for b in range(nbits):
            x = addrs[k] + b
            f01, f10 = voltage < v01[x], voltage < v10[x]
            bit = (word >> b) & 1
            if f01 and f10:
                records.append((k, b, "flip"))
                word ^= 1 << b
            elif f01:
                records.append((k, b, "stuck1", bit))
                word |= 1 << b
            elif f10:
                records.append((k, b, "stuck0", bit))
                word &= ~(1 << b)
        out[k] = word
    return out.reshape(codes.shape), records


# ---------------------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------------------
PLACEMENTS = [
    Placement(),
    Placement(offset=5),
    Placement(permute_rows=True, seed=3),
    Placement(permute_tensors=True, seed=4),
    Placement(offset=2, permute_tensors=True, permute_rows=True, seed=5),
]


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("fmt", ["q2.5", "float16", "q1.4"])
def test_layout_matches_word_loop(placement, fmt):
    targets = targets_of(make_stored(fmt, expose_bias=False))
    shape = (4, 40, 40)  # 40 columns: words do not divide a row evenly for 6- and 16-bit words
    got = layout(targets, shape, placement)
    ref = naive_layout(targets, shape, placement)
    assert list(got) == ["conv.weight", "fc.weight"]  # exposed tensors only, stored order
    for name in got:
        np.testing.assert_array_equal(got[name], ref[name])
    # every bit of every word has its own cell
    cells = np.concatenate([(a[:, None] + np.arange(targets[n].nbits)).reshape(-1) for n, a in got.items()])
    assert np.unique(cells).size == cells.size and cells.max() < np.prod(shape)


def test_layout_packs_words_along_rows_in_order():
    targets = {
        "a": Target("a", (5,), np.dtype(np.uint8), 8, "raw8"),
        "b": Target("b", (3,), np.dtype(np.uint8), 8, "raw8"),
    }
    got = layout(targets, (1, 5, 16), Placement())  # 2 words per row
    np.testing.assert_array_equal(got["a"], [0, 8, 16, 24, 32])  # rows 0, 1, 2 (half used)
    np.testing.assert_array_equal(got["b"], [48, 56, 64])  # b starts on a fresh row (3)
    got = layout(targets, (1, 6, 16), Placement(offset=1))
    np.testing.assert_array_equal(got["a"], [16, 24, 32, 40, 48])


def test_model_larger_than_chip_is_an_error():
    targets = targets_of(make_stored("float16"))  # 108 + 4 + 170 + 10 words of 16 bits
    # 2 words per 32-column row: 54 + 2 + 85 + 5 = 146 rows
    layout(targets, (1, 146, 32), Placement())
    msg = r"^layout: the model must fit in the chip's 145 rows \(1 arrays x 145 rows of 32 columns\), "
    msg += "got 146 rows"
    with pytest.raises(ValueError, match=msg + " of words from offset 0"):
        layout(targets, (1, 145, 32), Placement())
    with pytest.raises(ValueError, match=r"got 146 rows of words from offset 1 \(= 147 rows\)"):
        layout(targets, (1, 146, 32), Placement(offset=1))
    with pytest.raises(ValueError, match=r"^layout: the chip's columns \(=8\) must hold at least one 16-bit"):
        layout(targets, (1, 1000, 8), Placement())
    chip = ChipModel().sample((1, 145, 32), seed=0)
    stored = make_stored("float16")
    with pytest.raises(ValueError, match=r"^inject: the model must fit in the chip's 145 rows"):
        inject(stored, ChipFaults(chip, 0.8))


# ---------------------------------------------------------------------------------------------------------
# ChipFaults
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("placement", PLACEMENTS[:3] + PLACEMENTS[4:])
@pytest.mark.parametrize("fmt", ["q2.5", "float16"])
def test_chip_faults_match_bit_loop_and_replay(placement, fmt):
    stored = make_stored(fmt)
    chip = ChipModel(p_stuck0=0.4, p_stuck1=0.4, p_flip=0.2).sample((2, 64, 48), seed=8)
    voltage = 0.7  # about 8 % of cells fail: every kind occurs
    result = inject(stored, ChipFaults(chip, voltage, placement))
    ref_addr = naive_layout(targets_of(stored), chip.shape, placement)
    kinds = set()
    for name in stored.names:
        t = stored[name]
        expected, recs = naive_chip_read(t.codes, ref_addr[name], t.nbits, chip, voltage)
        np.testing.assert_array_equal(result.stored[name].codes, expected, err_msg=name)
        sub = result.faults.select(name)
        assert [(int(i), int(b), k) for i, b, k in zip(sub.index, sub.bit, sub.kind, strict=True)] == [
            r[:3] for r in recs
        ]
        assert set(sub.formats) <= {t.format}
        kinds |= {r[2] for r in recs}
    assert kinds == {"flip", "stuck0", "stuck1"}
    replay = inject(stored, result.faults)
    for name in stored.names:
        np.testing.assert_array_equal(replay.stored[name].codes, result.stored[name].codes)


def test_persistence_and_placement_dependence():
    stored = make_stored("q2.5")
    chip = ChipModel().sample((2, 32, 48), seed=8)
    a = inject(stored, ChipFaults(chip, 0.72, Placement(permute_rows=True, seed=1)))
    b = inject(stored, ChipFaults(chip, 0.72, Placement(permute_rows=True, seed=1)))
    c = inject(stored, ChipFaults(chip, 0.72, Placement(permute_rows=True, seed=2)))
    assert a.faults == b.faults and len(a.faults) > 0
    for name in stored.names:
        assert a.stored[name].codes.tobytes() == b.stored[name].codes.tobytes()
    assert a.faults != c.faults
    other_chip = ChipModel().sample((2, 32, 48), seed=9)
    other = inject(stored, ChipFaults(other_chip, 0.72, Placement(permute_rows=True, seed=1)))
    assert other.faults != a.faults


def test_faults_grow_as_voltage_drops():
    stored = make_stored("q2.5")
    chip = ChipModel(p_stuck0=0.3, p_stuck1=0.3, p_flip=0.4).sample((2, 32, 48), seed=8)
    previous = set()
    for v in (0.9, 0.8, 0.75, 0.7, 0.65):
        fl = inject(stored, ChipFaults(chip, v)).faults
        cells = {(t, int(i), int(b)) for t, i, b in zip(fl.tensor, fl.index, fl.bit, strict=True)}
        assert previous <= cells
        previous = cells
    assert len(previous) > 0


def test_stuck_at_semantics():
    # one 8-bit word at cells 0..7: bit 0 stuck1, bit 1 stuck1, bit 2 stuck0, bit 3 stuck0, bit 4 flips
    v01 = np.full((1, 1, 8), -np.inf)
    v10 = np.full((1, 1, 8), -np.inf)
    v01[0, 0, [0, 1, 4]] = 0.9
    v10[0, 0, [2, 3, 4]] = 0.9
    chip = Chip(v01, v10, voltage_range=(0.5, 1.0))
    codes = np.array([0b0000_1001], dtype=np.uint8)  # bit 0 holds 1 (stuck1: no error), bit 3 holds 1
    out, fl = ChipFaults(chip, 0.8).apply(codes, tensor="w", format_name="raw8")
    # bit 0: 1 stays 1; bit 1: 0 -> 1; bit 2: 0 stays 0; bit 3: 1 -> 0; bit 4: 0 -> 1
    assert int(out[0]) == 0b0001_0011
    assert list(zip(fl.bit.tolist(), fl.kind, strict=True)) == [
        (0, "stuck1"), (1, "stuck1"), (2, "stuck0"), (3, "stuck0"), (4, "flip")
    ]
    assert int(np.unpackbits(codes ^ out).sum()) == 3  # only three bits are errors
    out_e, fl_e = ChipFaults(chip, 0.8, record="errors").apply(codes, tensor="w", format_name="raw8")
    assert int(out_e[0]) == int(out[0])
    assert list(zip(fl_e.bit.tolist(), fl_e.kind, strict=True)) == [(1, "stuck1"), (3, "stuck0"), (4, "flip")]
    # both lists replay to the same word on these codes
    for f in (fl, fl_e):
        assert int(f.apply(codes, "w")[0]) == int(out[0])
    # above every failure voltage nothing happens
    out_hi, fl_hi = ChipFaults(chip, 0.95).apply(codes, tensor="w", format_name="raw8")
    assert int(out_hi[0]) == int(codes[0]) and len(fl_hi) == 0


def test_bits_above_nbits_untouched_and_unexposed_tensors_untouched():
    stored = make_stored("q1.4", expose_bias=False)  # 6-bit words in uint8
    chip = ChipModel(mean=0.95).sample((1, 80, 24), seed=0)  # most cells fail at 0.6
    result = inject(stored, ChipFaults(chip, 0.6))
    for name in stored.names:
        codes = result.stored[name].codes
        assert int(codes.max()) < 64
        if not stored[name].exposed:
            assert codes.tobytes() == stored[name].codes.tobytes()
            assert name not in result.faults.tensors
    assert len(result.faults) > 0


def test_uint64_words():
    codes = np.array([2**64 - 1, 0, 2**63], dtype=np.uint64)
    chip = ChipModel(mean=0.8, p_stuck0=0.3, p_stuck1=0.3, p_flip=0.4).sample((1, 3, 64), seed=2)
    out, fl = ChipFaults(chip, 0.8).apply(codes, tensor="x", format_name="float64")
    addrs = [0, 64, 128]
    expected, _ = naive_chip_read(codes, addrs, 64, chip, 0.8)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(fl.apply(codes, "x"), out)


# ---------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        ({"offset": -1}, ValueError, r"offset must be in \[0, inf\], got -1"),
        ({"offset": 1.5}, TypeError, r"offset must be an integer, got float"),
        ({"permute_rows": 1, "seed": 0}, TypeError, r"permute_rows must be a bool, got int"),
        ({"permute_tensors": True}, ValueError, r"seed must be an integer >= 0 when a permutation"),
        ({"seed": 3}, ValueError, r"seed must be None without permute_tensors or permute_rows"),
        ({"permute_rows": True, "seed": -2}, ValueError, r"seed must be in \[0, inf\], got -2"),
    ],
)
def test_placement_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=r"^Placement: " + msg):
        Placement(**kwargs)


def test_chip_faults_bad_arguments():
    chip = ChipModel().sample((1, 4, 16), seed=0)
    with pytest.raises(TypeError, match=r"^ChipFaults: chip must be a Chip, got"):
        ChipFaults("chip", 0.8)
    with pytest.raises(ValueError, match=r"^ChipFaults: voltage must be inside the chip's voltage range "
                                         r"\[0.5, 1.5\], got 0.2"):
        ChipFaults(chip, 0.2)
    with pytest.raises(TypeError, match=r"^ChipFaults: voltage must be a real number"):
        ChipFaults(chip, "0.8")
    with pytest.raises(TypeError, match=r"^ChipFaults: placement must be a Placement or None, got dict"):
        ChipFaults(chip, 0.8, {"offset": 1})
    with pytest.raises(ValueError, match=r"^ChipFaults: record must be one of \('all', 'errors'\), got 'so"):
        ChipFaults(chip, 0.8, record="some")
    with pytest.raises(ValueError, match=r"^inject: rng must be None for ChipFaults"):
        inject(make_stored(), ChipFaults(chip, 0.8), rng=0)
    with pytest.raises(TypeError, match=r"^layout: placement must be a Placement, got NoneType"):
        layout({}, (1, 1, 1), None)
    with pytest.raises(ValueError, match=r"^layout: chip_shape\[1\] must be in \[1, inf\], got -4"):
        layout({}, (1, -4, 1), Placement())
    with pytest.raises(TypeError, match=r"^layout: targets must be a dict of name -> Target, got list"):
        layout([], (1, 1, 1), Placement())
    model = ChipFaults(chip, 0.8)
    t = Target("w", (2,), np.dtype(np.uint8), 8, "raw8")
    with pytest.raises(RuntimeError, match=r"^ChipFaults.corrupt: no layout for tensor 'w'"):
        model.corrupt(np.zeros(2, np.uint8), None, t)


def test_mixed_format_spec_places_each_width():
    g = np.random.default_rng(1)
    params = {"a.weight": g.standard_normal((3, 5)).astype(np.float32),
              "b.weight": g.standard_normal((7,)).astype(np.float32)}
    spec = StorageSpec((StorageRule("a.*", format="float16"), StorageRule("*", format="q2.5")))
    stored = store(params, spec)
    chip = ChipModel(p_flip=1.0, p_stuck0=0.0, p_stuck1=0.0).sample((1, 12, 32), seed=3)
    result = inject(stored, ChipFaults(chip, 0.7))
    addr = naive_layout(targets_of(stored), chip.shape, Placement())
    for name in stored.names:
        t = stored[name]
        expected, _ = naive_chip_read(t.codes, addr[name], t.nbits, chip, 0.7)
        np.testing.assert_array_equal(result.stored[name].codes, expected)
    assert isinstance(result.faults, FaultList) and set(result.faults.kind) == {"flip"}


def test_chunked_reads_give_the_same_result(monkeypatch):
    from saf_ref.bits import placement as placement_module

    stored = make_stored("q2.5")
    chip = ChipModel(p_stuck0=0.3, p_stuck1=0.3, p_flip=0.4).sample((2, 64, 48), seed=8)
    whole = inject(stored, ChipFaults(chip, 0.7, record="errors"))
    monkeypatch.setattr(placement_module, "_CHUNK_BITS", 24)  # 3 words of 8 bits per chunk
    chunked = inject(stored, ChipFaults(chip, 0.7, record="errors"))
    assert chunked.faults == whole.faults and len(whole.faults) > 0
    for name in stored.names:
        assert chunked.stored[name].codes.tobytes() == whole.stored[name].codes.tobytes()
