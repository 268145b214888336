"""The chip model (saf_ref.bits.chip) against independent references.

References: the sampling order of the ChipModel docstring re-implemented here with its own generator;
per-cell Python loops over the behaviour table of the module docstring; scipy.stats.norm for the analytic
curves; binomial intervals (scipy.stats.binom) for the Monte Carlo checks; profiles written here with
plain np.savez. Every statistical test has a fixed seed and a threshold a correct model fails with
probability about 1e-4.
"""

from __future__ import annotations

import itertools
import json
import zipfile

import numpy as np
import pytest
from scipy import stats

from saf_ref.bits import chip as chip_module
from saf_ref.bits.chip import BEHAVIOURS, Chip, ChipModel, load_profile

ALPHA = 1e-4
SMALL = (2, 8, 16)


def reference_sample(model: ChipModel, shape, seed):
    """The documented sampling order, written out: (failure voltage, kind, chip, row, col offsets)."""
    a, r, c = shape
    g = np.random.default_rng(seed)
    x = model.sigma_chip * g.standard_normal()
    row = model.sigma_row * g.standard_normal((a, r))
    col = model.sigma_col * g.standard_normal((a, c))
    e = g.standard_normal((a, r, c))
    w = g.random((a, r, c))
    v = model.mean + x + row[:, :, None] + col[:, None, :] + model.sigma_cell * e
    kind = np.where(w < model.p_stuck0, 0, np.where(w < model.p_stuck0 + model.p_stuck1, 1, 2))
    return v, kind, x, row, col


def naive_error_map(chip: Chip, voltage: float):
    """Per-cell loop over the behaviour table (module docstring)."""
    out = {k: np.zeros(chip.shape, dtype=bool) for k in BEHAVIOURS}
    for idx in itertools.product(*map(range, chip.shape)):
        f01 = voltage < chip.v01[idx]
        f10 = voltage < chip.v10[idx]
        if f01 and f10:
            out["flip"][idx] = True
        elif f01:
            out["stuck1"][idx] = True
        elif f10:
            out["stuck0"][idx] = True
    return out


# ---------------------------------------------------------------------------------------------------------
# Sampling, determinism, error maps
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [ChipModel(), ChipModel(p_stuck0=0.2, p_stuck1=0.3, p_flip=0.5)])
def test_sample_follows_the_documented_order(model):
    chip = model.sample(SMALL, seed=7)
    v, kind, *_ = reference_sample(model, SMALL, 7)
    np.testing.assert_array_equal(chip.v01, np.where((kind == 1) | (kind == 2), v, -np.inf))
    np.testing.assert_array_equal(chip.v10, np.where((kind == 0) | (kind == 2), v, -np.inf))
    np.testing.assert_array_equal(chip.failure_voltage, v)
    assert chip.source["seed"] == 7 and chip.source["shape"] == list(SMALL)


def test_same_seed_same_chip_different_seed_different_chip():
    m = ChipModel()
    a, b, c = m.sample(SMALL, seed=3), m.sample(SMALL, seed=3), m.sample(SMALL, seed=4)
    assert a == b and a.v01.tobytes() == b.v01.tobytes()
    assert a != c
    assert not np.array_equal(a.failure_voltage, c.failure_voltage)


def test_chip_arrays_are_read_only_copies():
    v = np.full(SMALL, 0.7)
    kind = np.zeros(SMALL, dtype=np.int8)
    chip = Chip.from_failure_voltages(v, kind, voltage_range=(0.5, 1.0))
    v[:] = 0.0
    assert np.all(chip.v10 == 0.7)
    with pytest.raises(ValueError):
        chip.v10[0, 0, 0] = 1.0


@pytest.mark.parametrize("model", [ChipModel(), ChipModel(p_stuck0=0.3, p_stuck1=0.3, p_flip=0.4)])
def test_error_map_matches_per_cell_loop(model):
    chip = model.sample((2, 4, 8), seed=11)
    for voltage in (0.5, 0.55, 0.6, 0.65, 0.8):
        em = chip.error_map(voltage)
        ref = naive_error_map(chip, voltage)
        for k in BEHAVIOURS:
            np.testing.assert_array_equal(getattr(em, k), ref[k], err_msg=f"{k} at {voltage}")


def test_error_maps_are_monotone_and_disjoint():
    chip = ChipModel(p_stuck0=0.4, p_stuck1=0.4, p_flip=0.2).sample((2, 32, 64), seed=5)
    volts = np.linspace(0.5, 1.0, 41)
    maps = [chip.error_map(v) for v in volts]
    for hi_map, lo_map in itertools.pairwise(maps):  # volts increase: hi_map is at the lower voltage
        # cells failing at the higher voltage also fail at the lower one
        assert not np.any(lo_map.failing & ~hi_map.failing)
    for em in maps:
        assert not np.any(em.stuck0 & em.stuck1) and not np.any(em.flip & (em.stuck0 | em.stuck1))
    assert maps[0].failing.sum() > maps[-1].failing.sum()


def test_error_map_read_semantics():
    # one cell of each behaviour, written both ways
    v01 = np.array([[[0.9, -np.inf, 0.9, -np.inf]]])
    v10 = np.array([[[-np.inf, 0.9, 0.9, -np.inf]]])
    chip = Chip(v01, v10, voltage_range=(0.5, 1.0))
    em = chip.error_map(0.8)
    assert em.stuck1[0, 0, 0] and em.stuck0[0, 0, 1] and em.flip[0, 0, 2] and not em.failing[0, 0, 3]
    np.testing.assert_array_equal(em.read(np.zeros((1, 1, 4), np.uint8)), [[[1, 0, 1, 0]]])
    np.testing.assert_array_equal(em.read(np.ones((1, 1, 4), np.uint8)), [[[1, 0, 0, 1]]])
    assert not chip.error_map(0.95).failing.any()
    assert chip.flip_rates(0.8) == (0.5, 0.5)
    assert chip.bit_error_rate(0.8) == 0.5  # (2 + 2) / (2 * 4)


# ---------------------------------------------------------------------------------------------------------
# Bit-error rates: measured against analytic
# ---------------------------------------------------------------------------------------------------------
def test_analytic_curve_is_the_gaussian_formula():
    m = ChipModel(p_stuck0=0.3, p_stuck1=0.2, p_flip=0.5)
    s = np.sqrt(0.02**2 + 0.015**2 + 0.015**2 + 0.06**2)
    volts = np.array([0.6, 0.7, 0.8, 0.9])
    expected = stats.norm.cdf(0.6, loc=volts, scale=s) * (0.5 + 0.25)
    np.testing.assert_allclose(m.bit_error_rate(volts), expected, rtol=1e-12)
    assert m.bit_error_rate(0.8) == pytest.approx(float(expected[2]), rel=1e-12)
    degenerate = ChipModel(sigma_chip=0, sigma_row=0, sigma_col=0, sigma_cell=0)
    assert degenerate.failure_probability(0.59) == 1.0 and degenerate.failure_probability(0.61) == 0.0


@pytest.mark.parametrize("voltage", [0.72, 0.78, 0.85])
def test_measured_ber_in_binomial_interval_without_structure(voltage):
    # no chip/row/column parts: the cells fail independently, the count is binomial
    m = ChipModel(sigma_chip=0, sigma_row=0, sigma_col=0, sigma_cell=0.07, p_stuck0=0.5, p_stuck1=0.5)
    chip = m.sample((4, 128, 256), seed=21)
    n = chip.n_cells
    p_fail = stats.norm.cdf(0.6, loc=voltage, scale=0.07)
    lo, hi = stats.binom.interval(1 - ALPHA, n, p_fail)
    failing = int(chip.error_map(voltage).failing.sum())
    assert lo <= failing <= hi, (failing, lo, hi)
    # random data: a stuck cell is wrong half of the time, so BER = failing / 2n exactly on this chip
    assert chip.bit_error_rate(voltage) == failing / (2 * n)


@pytest.mark.parametrize("voltage", [0.75, 0.8])
def test_measured_ber_in_interval_of_the_chips_own_curve(voltage):
    # with structure: given the chip's drawn offsets, cells fail independently with known probabilities
    m = ChipModel(p_stuck0=0.25, p_stuck1=0.25, p_flip=0.5)
    shape = (2, 128, 256)
    chip = m.sample(shape, seed=9)
    _, _, x, row, col = reference_sample(m, shape, 9)
    p = stats.norm.cdf(0.6 + x + row[:, :, None] + col[:, None, :], loc=voltage, scale=m.sigma_cell)
    count = int(chip.error_map(voltage).failing.sum())
    mean, sd = p.sum(), np.sqrt((p * (1 - p)).sum())  # Poisson-binomial, normal approximation
    assert abs(count - mean) <= 4.0 * sd, (count, mean, sd)
    # the model's offsets helper gives the same offsets
    off = m.draw_offsets(shape, np.random.default_rng(9))
    assert off.chip == x and np.array_equal(off.row, row) and np.array_equal(off.col, col)


def test_mean_ber_over_chips_matches_analytic_curve():
    m = ChipModel(p_stuck0=0.3, p_stuck1=0.3, p_flip=0.4)
    voltage = 0.75
    bers = np.array([m.sample((1, 16, 64), seed=s).bit_error_rate(voltage) for s in range(200)])
    se = bers.std(ddof=1) / np.sqrt(bers.size)
    assert abs(bers.mean() - m.bit_error_rate(voltage)) <= 4.0 * se, (bers.mean(), se)


# ---------------------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------------------
def test_save_load_round_trip_bit_exact(tmp_path):
    chip = ChipModel(p_flip=0.2, p_stuck0=0.4, p_stuck1=0.4).sample(SMALL, seed=1)
    path = chip.save(tmp_path / "chip.npz")
    back = Chip.load(path)
    assert back == chip
    assert back.v01.tobytes() == chip.v01.tobytes() and back.v10.tobytes() == chip.v10.tobytes()
    assert back.voltage_range == chip.voltage_range and back.source == chip.source
    for v in (0.55, 0.7):
        assert back.error_map(v).failing.tobytes() == chip.error_map(v).failing.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.npz"]  # no temporary left


def test_save_keeps_infinities(tmp_path):
    v01 = np.array([[[np.inf, -np.inf, 0.7]]])
    chip = Chip(v01, v01[:, :, ::-1].copy(), voltage_range=(0.6, 0.8))
    assert Chip.load(chip.save(tmp_path / "c.npz")) == chip


def test_failed_save_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    chip = ChipModel().sample(SMALL, seed=1)
    path = chip.save(tmp_path / "chip.npz")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(chip_module.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        ChipModel().sample(SMALL, seed=2).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.npz"]


def test_save_bad_paths(tmp_path):
    chip = ChipModel().sample(SMALL, seed=1)
    with pytest.raises(ValueError, match=r"^Chip.save: path must end in .npz, got"):
        chip.save(tmp_path / "chip.json")
    with pytest.raises(TypeError, match=r"^Chip.save: path must be a str or path-like, got int"):
        chip.save(3)
    with pytest.raises(FileNotFoundError):
        chip.save(tmp_path / "missing" / "chip.npz")
    assert list(tmp_path.iterdir()) == []


def _rewrite(src, dst, **changes):
    """Copy a chip file with members replaced (``None`` drops one); metadata given as a dict."""
    with np.load(src, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            members.pop(k)
        elif isinstance(v, dict):
            members[k] = np.frombuffer(json.dumps(v).encode(), dtype=np.uint8)
        else:
            members[k] = v
    np.savez(dst, **members)
    return dst


@pytest.fixture
def saved(tmp_path):
    chip = ChipModel().sample(SMALL, seed=1)
    path = chip.save(tmp_path / "chip.npz")
    with np.load(path) as z:
        meta = json.loads(z["metadata.json"].tobytes())
    return chip, path, meta


def test_load_truncated_and_corrupt_files(saved, tmp_path):
    _, path, _ = saved
    data = path.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 2])
    msg = r"^Chip.load: path '.*trunc.npz' must be a readable .npz archive, got"
    with pytest.raises(ValueError, match=msg):
        Chip.load(trunc)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"must be a readable .npz archive, got"):
        Chip.load(junk)
    # one byte of v01's data changed: the zip CRC (or our checksum) refuses it
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("v01.npy")
    flipped = bytearray(data)
    flipped[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"^Chip.load: path '.*bad.npz' must be"):
        Chip.load(bad)
    with pytest.raises(ValueError, match=r"^Chip.load: path '.*none.npz' must be an existing file, got none"):
        Chip.load(tmp_path / "none.npz")


def test_load_inconsistent_metadata(saved, tmp_path):
    chip, path, meta = saved
    changed = np.ascontiguousarray(chip.v01) - 1e-3
    cases = {
        "checksum": ({"v01": changed}, "hold v01 matching its checksum"),
        "shape": ({"metadata.json": dict(meta, shape=[2, 8, 8])},
                  "hold v01 as float64 of the metadata's shape"),
        "negative shape": ({"metadata.json": dict(meta, shape=[2, -8, 16])},
                           "have metadata with shape \\(3 integers >= 1\\)"),
        "schema": ({"metadata.json": dict(meta, schema="other")},
                   "have metadata schema 'saf_ref.chip', got 'other'"),
        "version": ({"metadata.json": dict(meta, version=2)}, "have metadata version 1, got 2"),
        "range": ({"metadata.json": dict(meta, voltage_range=[1.0, 0.5])},
                  "describe a valid chip, got: Chip: voltage_range"),
        "missing member": ({"v10": None}, "hold exactly the members"),
        "extra member": ({"extra": np.zeros(1)}, "hold exactly the members"),
        "not json": ({"metadata.json": np.frombuffer(b"{nope", np.uint8)}, "hold UTF-8 JSON metadata"),
        "dtype": ({"v01": chip.v01.astype(np.float32)}, "hold v01 as float64"),
    }
    for name, (change, msg) in cases.items():
        dst = _rewrite(path, tmp_path / f"{name.replace(' ', '_')}.npz", **change)
        with pytest.raises(ValueError, match=r"^Chip.load: path .* must " + msg):
            Chip.load(dst)


def test_object_arrays_are_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, v01=np.array([{"a": 1}], dtype=object), v10=np.zeros(1), **{"metadata.json": np.zeros(1)})
    with pytest.raises(ValueError, match="must be a readable .npz archive"):
        Chip.load(p)


# ---------------------------------------------------------------------------------------------------------
# Measured profiles
# ---------------------------------------------------------------------------------------------------------
def test_per_cell_profile_loads_and_reproduces_its_rates(tmp_path):
    g = np.random.default_rng(0)
    fv = g.uniform(0.6, 0.9, size=(2, 16, 32))
    fv[0, 0, :5] = -np.inf  # never fails
    kind = g.integers(0, 3, size=fv.shape).astype(np.int8)
    p = tmp_path / "cells.npz"
    np.savez(p, failure_voltage=fv, kind=kind, voltage_range=np.array([0.6, 0.9]))
    chip = load_profile(p)
    assert chip.voltage_range == (0.6, 0.9)
    for v in (0.6, 0.7, 0.85, 0.9):
        fails = v < fv
        p01 = np.mean(fails & (kind >= 1))
        p10 = np.mean(fails & (kind != 1))
        assert chip.flip_rates(v) == (p01, p10)
        np.testing.assert_array_equal(chip.error_map(v).flip, fails & (kind == 2))


def test_probability_profile_of_zeros_and_ones_is_reproduced_exactly(tmp_path):
    g = np.random.default_rng(1)
    volts = np.array([0.7, 0.75, 0.8, 0.9])
    shape = (2, 8, 16)
    # a persistent chip: a threshold per cell and direction, failing below it
    t01, t10 = g.uniform(0.65, 0.95, shape), g.uniform(0.65, 0.95, shape)
    p01 = (volts[:, None, None, None] < t01).astype(np.float64)
    p10 = (volts[:, None, None, None] < t10).astype(np.float64)
    path = tmp_path / "probs.npz"
    np.savez(path, voltages=volts, p01=p01, p10=p10)
    chip = load_profile(path)  # no seed needed for 0/1
    assert chip.voltage_range == (0.7, 0.9)
    for k, v in enumerate(volts):
        assert chip.flip_rates(v) == (p01[k].mean(), p10[k].mean())
        em = chip.error_map(v)
        np.testing.assert_array_equal(em.stuck1 | em.flip, p01[k] == 1)
        np.testing.assert_array_equal(em.stuck0 | em.flip, p10[k] == 1)
    # between two measured voltages: the lower one's map (pessimistic)
    np.testing.assert_array_equal(chip.error_map(0.85).failing, chip.error_map(0.8).failing)
    np.testing.assert_array_equal(chip.error_map(0.72).failing, chip.error_map(0.7).failing)
    with pytest.raises(ValueError, match=r"^Chip.error_map: voltage must be inside the chip's voltage range "
                                         r"\[0.7, 0.9\], got 0.65"):
        chip.error_map(0.65)
    with pytest.raises(ValueError, match="voltage range"):
        chip.bit_error_rate(0.95)


def test_fractional_probability_profile_reproduces_rates_within_interval(tmp_path):
    volts = np.array([0.7, 0.8, 0.9])
    shape = (4, 64, 64)
    n = int(np.prod(shape))
    rates01, rates10 = [0.05, 0.01, 0.001], [0.02, 0.004, 0.0]
    p01 = np.stack([np.full(shape, r) for r in rates01])
    p10 = np.stack([np.full(shape, r) for r in rates10])
    path = tmp_path / "probs.npz"
    np.savez(path, voltages=volts, p01=p01, p10=p10)
    with pytest.raises(ValueError, match=r"^load_profile: seed must be an integer >= 0 .*, got None"):
        load_profile(path)
    chip = load_profile(path, seed=3)
    assert chip == load_profile(path, seed=3)  # deterministic for a seed
    for k, v in enumerate(volts):
        got01, got10 = chip.flip_rates(v)
        for got, rate in ((got01, rates01[k]), (got10, rates10[k])):
            lo, hi = stats.binom.interval(1 - ALPHA, n, rate)
            assert lo <= round(got * n) <= hi, (v, got, rate)
    # the persistent failing cells are nested across voltages
    for lo_v, hi_v in itertools.pairwise(volts):
        assert not np.any(chip.error_map(hi_v).failing & ~chip.error_map(lo_v).failing)


def test_non_monotone_rates_use_the_running_maximum_from_above(tmp_path):
    volts = np.array([0.7, 0.8])
    p01 = np.stack([np.zeros((1, 1, 4)), np.array([[[1.0, 0.0, 1.0, 0.0]]])])  # fails at 0.8 only
    path = tmp_path / "p.npz"
    np.savez(path, voltages=volts, p01=p01, p10=np.zeros_like(p01))
    chip = load_profile(path)
    np.testing.assert_array_equal(chip.error_map(0.7).stuck1, [[[True, False, True, False]]])


def test_bad_profiles(tmp_path):
    shape = (1, 2, 4)
    ok = {"voltages": np.array([0.7, 0.8]), "p01": np.zeros((2, *shape)), "p10": np.zeros((2, *shape))}
    increasing = "hold voltages finite, >= 0 and strictly increasing"
    cells = "hold a valid per-cell profile, got: "

    def cell_profile(fv=None, kind=None, vr=(0.5, 1.0)):
        fv = np.zeros(shape) if fv is None else fv
        kind = np.zeros(shape, np.int8) if kind is None else kind
        return {"failure_voltage": fv, "kind": kind, "voltage_range": np.array(vr)}

    cases = {
        "count": (dict(ok, p01=np.zeros((3, *shape))), "hold p01 with one map per voltage \\(2\\), got 3"),
        "order": (dict(ok, voltages=np.array([0.8, 0.7])), increasing),
        "nan volts": (dict(ok, voltages=np.array([0.7, np.nan])), increasing),
        "range": (dict(ok, p10=np.full((2, *shape), 1.5)), "hold p10 as probabilities in \\[0, 1\\]"),
        "nan": (dict(ok, p10=np.full((2, *shape), np.nan)), "hold p10 as probabilities in \\[0, 1\\]"),
        "ints": (dict(ok, p10=np.zeros((2, *shape), dtype=np.int64)), "hold p10 as floats"),
        "shape": (dict(ok, p01=np.zeros((2, 8)), p10=np.zeros((2, 8))),
                  "hold p01 of shape \\(K, arrays, rows"),
        "mismatch": (dict(ok, p10=np.zeros((2, 1, 2, 5))), "hold p01 and p10 of one shape"),
        "one voltage": (dict(ok, voltages=np.array([0.7]), p01=np.zeros((1, *shape)),
                             p10=np.zeros((1, *shape))), "hold voltages as a 1-d array of at least 2"),
        "members": ({"voltages": ok["voltages"]}, "hold the members"),
        "cells nan": (cell_profile(fv=np.full(shape, np.nan)), cells + ".*must not contain NaN"),
        "cells kind": (cell_profile(kind=np.full(shape, 3)), cells + ".*kind must hold 0"),
        "cells range": (cell_profile(vr=(1.0, 0.5)), cells + ".*0 <= lo < hi"),
        "cells range shape": (cell_profile(vr=(0.5,)), "hold voltage_range as 2 numbers"),
    }
    for name, (members, msg) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(p, **members)
        with pytest.raises(ValueError, match=r"^load_profile: path .* must " + msg):
            load_profile(p)
    good = tmp_path / "good.npz"
    np.savez(good, **ok)
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:-40])
    with pytest.raises(ValueError, match=r"^load_profile: path .* must be a readable .npz archive"):
        load_profile(tmp_path / "cut.npz")
    with pytest.raises(ValueError, match=r"^load_profile: seed must be in \[0, inf\], got -1"):
        load_profile(good, seed=-1)
    with pytest.raises(TypeError, match=r"^load_profile: path must be a str or path-like"):
        load_profile(None)


# ---------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, exc, msg",
    [
        ((2, -1, 8), ValueError, r"shape\[1\] must be in \[1, inf\], got -1"),
        ((0, 4, 8), ValueError, r"shape\[0\] must be in \[1, inf\], got 0"),
        ((2, 4), TypeError, r"shape must be a tuple \(arrays, rows, columns\), got"),
        ((2, 4, 8.0), TypeError, r"shape\[2\] must be an integer, got float"),
        ((2**20, 2**10, 2**10), ValueError, r"shape must have at most 2\*\*34 cells, got"),
    ],
)
def test_sample_bad_shape(shape, exc, msg):
    with pytest.raises(exc, match=r"^ChipModel.sample: " + msg):
        ChipModel().sample(shape, seed=0)


def test_sample_bad_seed():
    with pytest.raises(ValueError, match=r"^ChipModel.sample: seed must be a numpy.random.Generator"):
        ChipModel().sample(SMALL, seed=-1)
    with pytest.raises(TypeError, match=r"^ChipModel.sample: seed must be a numpy.random.Generator"):
        ChipModel().sample(SMALL, seed=1.0)


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        ({"sigma_row": -0.1}, ValueError, r"sigma_row must be a finite number >= 0, got -0.1"),
        ({"sigma_cell": float("nan")}, ValueError, r"sigma_cell must be a finite number >= 0, got nan"),
        ({"mean": "0.6"}, TypeError, r"mean must be a real number, got str"),
        ({"mean": float("inf")}, ValueError, r"mean must be finite, got inf"),
        ({"p_flip": 0.5}, ValueError, r"p_stuck0 \+ p_stuck1 \+ p_flip must equal 1, got 1.5"),
        ({"p_stuck0": 1.5, "p_stuck1": -0.5}, ValueError, r"p_stuck0 must be a probability in \[0, 1\]"),
        ({"voltage_range": (1.0, 0.5)}, ValueError, r"voltage_range must be finite with 0 <= lo < hi"),
        ({"voltage_range": 1.0}, TypeError, r"voltage_range must be a pair \(lo, hi\), got float"),
    ],
)
def test_model_bad_parameters(kwargs, exc, msg):
    with pytest.raises(exc, match=r"^ChipModel: " + msg):
        ChipModel(**kwargs)


def test_model_voltage_outside_range():
    m = ChipModel()
    with pytest.raises(ValueError, match=r"^ChipModel.failure_probability: voltage must be inside the "
                                         r"model's voltage range \[0.5, 1.5\], got 0.1"):
        m.bit_error_rate([0.7, 0.1])
    with pytest.raises(ValueError, match=r"voltage range .*got nan"):
        m.failure_probability(float("nan"))
    with pytest.raises(TypeError, match=r"^ChipModel.failure_probability: voltage must be a real number"):
        m.failure_probability("0.7")


def test_chip_constructor_checks():
    z = np.zeros(SMALL)
    with pytest.raises(ValueError, match=r"^Chip: v01 must be 3-dimensional"):
        Chip(np.zeros((2, 3)), np.zeros((2, 3)), voltage_range=(0, 1))
    with pytest.raises(ValueError, match=r"^Chip: v10 must have shape \(2, 8, 16\), got \(2, 8, 8\)"):
        Chip(z, np.zeros((2, 8, 8)), voltage_range=(0, 1))
    with pytest.raises(TypeError, match=r"^Chip: v01 must have a floating dtype, got int64"):
        Chip(z.astype(np.int64), z, voltage_range=(0, 1))
    with pytest.raises(ValueError, match=r"^Chip: v10 must not contain NaN, got 1 NaN values"):
        Chip(z, np.where(np.arange(z.size).reshape(SMALL) == 3, np.nan, 0.0), voltage_range=(0, 1))
    with pytest.raises(ValueError, match=r"^Chip: source must be strict JSON"):
        Chip(z, z, voltage_range=(0, 1), source={"x": float("nan")})
    with pytest.raises(TypeError, match=r"^Chip.from_failure_voltages: kind must hold integers"):
        Chip.from_failure_voltages(z, z, voltage_range=(0, 1))
    with pytest.raises(ValueError, match=r"^Chip.from_failure_voltages: kind must hold 0 .* got values in "
                                         r"\[-1, 0\]"):
        Chip.from_failure_voltages(z, np.where(np.arange(z.size).reshape(SMALL) == 5, -1, 0),
                                   voltage_range=(0, 1))
    chip = Chip(z, z, voltage_range=(0, 1))
    with pytest.raises(TypeError, match=r"^Chip.flip_rates: voltage must be a real number, got NoneType"):
        chip.flip_rates(None)
    with pytest.raises(ValueError, match=r"^ErrorMap.read: written must have shape \(2, 8, 16\), got \(3,\)"):
        chip.error_map(0.5).read(np.zeros(3, np.uint8))


def test_analytic_flip_rates_and_inverse():
    m = ChipModel(p_stuck0=0.5, p_stuck1=0.25, p_flip=0.25)
    s = m.sigma
    p = stats.norm.sf((0.8 - 0.6) / s)
    p01, p10 = m.flip_rates(0.8)
    assert p01 == pytest.approx(0.5 * p, rel=1e-12) and p10 == pytest.approx(0.75 * p, rel=1e-12)
    assert m.bit_error_rate(0.8) == pytest.approx((p01 + p10) / 2, rel=1e-12)
    for ber in (1e-6, 1e-3, 0.1):
        v = m.voltage_for_bit_error_rate(ber)
        # inverse checked with scipy's normal quantile, independently of the library's ndtri call
        assert v == pytest.approx(0.6 + s * stats.norm.isf(ber / 0.625), rel=1e-12)
        assert m.bit_error_rate(v) == pytest.approx(ber, rel=1e-9)
    fn = "ChipModel.voltage_for_bit_error_rate"
    with pytest.raises(ValueError, match=rf"^{fn}: ber must be in \(0, 0.625\) \(the model's largest rate\)"):
        m.voltage_for_bit_error_rate(0.7)
    with pytest.raises(ValueError, match=r"ber must be in \(0, 0.5\) .*got 0"):
        ChipModel().voltage_for_bit_error_rate(0)
    with pytest.raises(TypeError, match=r"^ChipModel.voltage_for_bit_error_rate: ber must be a real number"):
        m.voltage_for_bit_error_rate("1e-3")
    step = ChipModel(sigma_chip=0, sigma_row=0, sigma_col=0, sigma_cell=0)
    with pytest.raises(ValueError, match=r"sigmas must not all be 0"):
        step.voltage_for_bit_error_rate(1e-3)


def test_chip_measured_flip_rates_near_model_over_chips():
    m = ChipModel(p_stuck0=0.1, p_stuck1=0.6, p_flip=0.3)
    rates = np.array([m.sample((1, 16, 64), seed=s).flip_rates(0.75) for s in range(200)])
    se = rates.std(axis=0, ddof=1) / np.sqrt(len(rates))
    expected = np.array(m.flip_rates(0.75))
    assert np.all(np.abs(rates.mean(axis=0) - expected) <= 4.0 * se), (rates.mean(axis=0), expected, se)
