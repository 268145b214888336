"""saf-ref chips on a tiny budget: option checks before work, persistence, the lowest-voltage rule against
hand-computed examples, energy against the V^2 formula, end to end through saf_ref.cli.main."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from cli_helpers import refused_in_one_line

from saf_ref.cli import main
from saf_ref.experiments import chips

TINY = ["--epochs", "1", "--width", "4", "--chips", "2", "--placements", "2", "--voltages", "1.0", "0.8",
        "0.72", "--eval-limit", "60", "--quiet"]  # fmt: skip
SUBJECTS = {"robust_quant/quant8", "clipping/quant8", "randbet/quant8", "robust_quant/quant4",
            "clipping/quant4", "randbet/quant4", "saf/tanh/q2.5", "saf/tanh/float16"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("chips")
    assert main(["chips", "--out", str(out / "run"), "--checkpoints", str(out / "ckpt"), "--workers", "1",
                 *TINY]) == 0  # fmt: skip
    return out


def _load(path):
    return json.loads((path / "results.json").read_text())


# ------------------------------------------------------------------------------------- end to end


def test_writes_every_file_with_the_documented_fields(tiny_run):
    run = tiny_run / "run"
    doc = _load(run)
    assert not doc["interrupted"]
    assert {c["subject"] for c in doc["clean"]} == SUBJECTS
    assert {c["subject"]: c["bits"] for c in doc["clean"]}["saf/tanh/float16"] == 16
    assert {r["subject"] for r in doc["savings"]} == SUBJECTS
    for row in doc["savings"]:
        for tag in ("1pct", "2pct"):
            lo, mean, hi = (row[f"energy_saving_{tag}_pairs_{k}"] for k in ("ci_low", "mean", "ci_high"))
            assert lo <= mean <= hi
    records = json.loads((run / "run.json").read_text())["records"]
    assert len(records) == len(SUBJECTS) * 2 * 2 * 3  # subjects x chips x placements x voltages
    assert len(doc["sweep"]) == len(SUBJECTS) * 3
    clean = {c["subject"]: c["clean_accuracy"] for c in doc["clean"]}
    for r in doc["sweep"]:
        assert r["pairs"] == 4
        assert 0.0 <= r["accuracy_ci_low"] <= r["accuracy_mean"] <= r["accuracy_ci_high"] <= 1.0
        assert r["accuracy_min"] <= r["accuracy_mean"]
        assert r["rerr_mean"] >= 1.0 - r["accuracy_mean"] - 1e-12  # clean OR faulty wrong
        assert r["accuracy_loss"] == pytest.approx(clean[r["subject"]] - r["accuracy_mean"], abs=1e-15)
    for rec in records:
        if rec["bit_errors"] == 0:  # no faults: the read-back model is the clean one
            assert rec["accuracy"] == clean[rec["subject"]]
    with open(run / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(doc["sweep"])
    with open(run / "savings.csv", newline="") as fh:
        assert [r["subject"] for r in csv.DictReader(fh)] == [r["subject"] for r in doc["savings"]]
    assert not (run / "trials.jsonl").exists()  # the journal is dropped once the results are written
    assert "randbet" in (run / "table.txt").read_text()


def test_more_bit_errors_at_lower_voltage(tiny_run):
    """Error maps are monotone in the voltage: per (subject, chip, placement) the measured errors never
    fall as the voltage drops (ChipFaults with record='errors' counts changed bits; a stuck cell can hold
    its value, so this is >=, not a strict increase)."""
    records = json.loads((tiny_run / "run" / "run.json").read_text())["records"]
    curves = {}
    for r in records:
        curves.setdefault((r["subject"], r["chip"], r["placement"]), []).append(
            (r["voltage"], r["bit_errors"])
        )
    for curve in curves.values():
        errors = [e for _, e in sorted(curve, reverse=True)]
        assert errors == sorted(errors)
    assert sum(r["bit_errors"] for r in records if r["voltage"] == 0.72) > 0


def test_a_record_against_the_chips_error_map_bit_by_bit(tiny_run):
    """One record rebuilt without ChipFaults or inject: chip c and placement p of the documented
    derivation, the cells of every stored bit from the placement module's layout, what the chip returns
    from ErrorMap.read (the behaviour table), the count of changed bits and the accuracy of that model."""
    from saf_ref.bits.placement import layout
    from saf_ref.experiments.campaign import predict
    from saf_ref.experiments.demo import load_dataset, quantized_spec
    from saf_ref.protect import load, store
    from saf_ref.protect.inject import targets_of
    from saf_ref.train.checkpoint import load_checkpoint

    c, p, v = 1, 1, 0.72
    cfg = chips.ChipsConfig(
        epochs=1, width=4, chips=2, placements=2, voltages=(1.0, 0.8, 0.72), eval_limit=60
    )
    ckpt = load_checkpoint(tiny_run / "ckpt" / "clipping_4bit.npz")
    spec = quantized_spec(0.3, 4)
    stored = store(ckpt.params, spec)
    cells = layout(targets_of(stored), cfg.chip_shape, chips.placement_of(cfg, c, p))
    emap = chips.chip_of(cfg, c).error_map(v)
    written = np.zeros(cfg.chip_shape, np.uint8).reshape(-1)
    new_codes, changed = {}, 0
    for name in stored.exposed_names:
        t = stored[name]
        codes = t.codes.reshape(-1).astype(np.int64)
        bits = (codes[:, None] >> np.arange(t.nbits)) & 1  # (words, nbits), bit 0 first
        where = cells[name][:, None] + np.arange(t.nbits)
        written[:] = 0
        written[where] = bits
        read = emap.read(written.reshape(cfg.chip_shape)).reshape(-1)[where].astype(np.int64)
        changed += int(np.sum(read != bits))
        new_codes[name] = (read << np.arange(t.nbits)).sum(axis=1).astype(t.codes.dtype).reshape(t.shape)
    x, y = (a[:60] for a in load_dataset("digits")[2:4])
    pred, _ = predict("small_cnn", load(stored.with_codes(new_codes), spec), ckpt.state, x)
    records = json.loads((tiny_run / "run" / "run.json").read_text())["records"]
    key = ("clipping/quant4", c, p, v)
    (rec,) = [r for r in records if (r["subject"], r["chip"], r["placement"], r["voltage"]) == key]
    assert changed > 0 and rec["bit_errors"] == changed
    assert rec["accuracy"] == float(np.mean(pred == y))


def test_plots_written_when_matplotlib_is_installed(tiny_run):
    pytest.importorskip("matplotlib")
    for name in ("accuracy_voltage.png", "energy_saved.png"):
        assert (tiny_run / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_energy_saved_is_one_minus_v_squared(tiny_run):
    doc = _load(tiny_run / "run")
    for r in doc["sweep"]:
        assert r["energy_saving"] == pytest.approx(1.0 - r["voltage"] * r["voltage"], rel=1e-15, abs=1e-15)
    for row in doc["savings"]:
        for tag in ("1pct", "2pct"):
            v = row[f"voltage_{tag}"]
            expected = 0.0 if v is None else 1.0 - v * v
            assert row[f"energy_saving_{tag}"] == pytest.approx(expected, rel=1e-15, abs=1e-15)
    assert {row["energy_saving_1pct"] for row in doc["savings"]} <= {0.0, 1 - 0.8**2, 1 - 0.72**2}


def test_savings_follow_the_lowest_voltage_rule_on_the_sweep(tiny_run):
    """The savings table against the rule applied by hand to the written sweep rows."""
    doc = _load(tiny_run / "run")
    for row in doc["savings"]:
        curve = sorted(
            (r for r in doc["sweep"] if r["subject"] == row["subject"]), key=lambda r: -r["voltage"]
        )
        for budget, tag in ((0.01, "1pct"), (0.02, "2pct")):
            expected = None
            for r in curve:
                if row["clean_accuracy"] - r["accuracy_mean"] > budget + 1e-9:
                    break
                expected = r["voltage"]
            assert row[f"voltage_{tag}"] == expected


# ---------------------------------------------------------------------------------------- persistence


def test_same_seed_same_results_for_any_worker_count(tiny_run, tmp_path):
    again = tmp_path / "again"
    args = ["chips", "--out", str(again), "--checkpoints", str(tiny_run / "ckpt"), "--workers", "2", *TINY]
    assert main(args) == 0
    assert (again / "results.json").read_bytes() == (tiny_run / "run" / "results.json").read_bytes()
    first, second = (json.loads((d / "run.json").read_text()) for d in (tiny_run / "run", again))
    assert first["records"] == second["records"]
    # How each run was executed is kept in run.json (and only there).
    assert first["run"]["workers"] == 1 and second["run"]["workers"] == 2
    assert second["run"]["checkpoints"] == str(tiny_run / "ckpt")


def test_chips_and_placements_are_fixed_by_the_seed():
    cfg = chips.ChipsConfig(chip_shape=(1, 8, 16), verbose=False)
    assert chips.chip_of(cfg, 1) == chips.chip_of(cfg, 1)
    assert chips.chip_of(cfg, 0) != chips.chip_of(cfg, 1)
    other = chips.ChipsConfig(chip_shape=(1, 8, 16), seed=1, verbose=False)
    assert chips.chip_of(other, 0) != chips.chip_of(cfg, 0)
    assert chips.placement_of(cfg, 0, 1) == chips.placement_of(cfg, 0, 1)
    assert chips.placement_of(cfg, 0, 0) != chips.placement_of(cfg, 0, 1)
    # the documented derivation, written out
    seq = np.random.SeedSequence(0, spawn_key=(1,))
    from saf_ref.bits import ChipModel

    assert chips.chip_of(cfg, 1) == ChipModel().sample((1, 8, 16), seed=np.random.default_rng(seq))
    assert chips.placement_of(cfg, 1, 0).seed == int(
        np.random.SeedSequence(0, spawn_key=(1, 0)).generate_state(1)[0]
    )


# -------------------------------------------------------------------------------- lowest voltage rule


def test_lowest_voltage_hand_computed():
    volts = [0.7, 1.0, 0.6, 0.9, 0.8]  # any order
    acc = {1.0: 0.99, 0.9: 0.98, 0.8: 0.975, 0.7: 0.99, 0.6: 0.5}
    accs = [acc[v] for v in volts]
    # losses from clean 0.99: 1.0 -> 0, 0.9 -> 0.01 (exactly the budget: within), 0.8 -> 0.015, 0.7 -> 0
    # (a lucky chip: never reached for 1 %, since 0.8 already fails), 0.6 -> 0.49
    assert chips.lowest_voltage(volts, accs, 0.99, 0.01) == 0.9
    assert chips.lowest_voltage(volts, accs, 0.99, 0.02) == 0.7
    assert chips.lowest_voltage(volts, accs, 0.99, 0.5) == 0.6
    assert chips.lowest_voltage(volts, accs, 0.99, 0.0) == 1.0
    assert chips.lowest_voltage([1.0, 0.9], [0.95, 0.99], 0.99, 0.01) is None  # fails at the top already


def test_savings_rows_hand_computed():
    rows = [{"subject": "m", "method": "m", "transform": "identity", "format": "quant8", "bits": 8,
             "clean_accuracy": 0.9, "voltage": v, "accuracy_mean": a}
            for v, a in ((1.0, 0.9), (0.9, 0.895), (0.8, 0.885), (0.7, 0.2))]  # fmt: skip
    (row,) = chips.savings(rows)
    assert row["voltage_1pct"] == 0.9 and row["energy_saving_1pct"] == pytest.approx(0.19, abs=1e-15)
    assert row["voltage_2pct"] == 0.8 and row["energy_saving_2pct"] == pytest.approx(0.36, abs=1e-15)


def test_per_chip_savings_hand_computed():
    """Two (chip, placement) pairs with their own curves; the rule on each, then mean and t-interval."""
    from scipy import stats

    def rec(chip, v, acc):
        return {"subject": "m", "chip": chip, "placement": 0, "voltage": v, "accuracy": acc}

    records = [
        rec(0, 1.0, 0.9),
        rec(0, 0.9, 0.9),
        rec(0, 0.8, 0.7),  # pair 0: 1 % -> 0.9
        rec(1, 1.0, 0.9),
        rec(1, 0.9, 0.9),
        rec(1, 0.8, 0.895),
    ]  # pair 1: 1 % -> 0.8
    summary = [{"subject": "m", "method": "m", "transform": "identity", "format": "quant8", "bits": 8,
                "clean_accuracy": 0.9, "voltage": v, "accuracy_mean": a}
               for v, a in ((1.0, 0.9), (0.9, 0.9), (0.8, 0.7975))]  # fmt: skip
    (row,) = chips.savings(summary, (0.01,), records)
    assert row["voltage_1pct"] == 0.9  # the mean curve loses 10 points at 0.8
    per_pair = [1 - 0.9**2, 1 - 0.8**2]
    half = stats.t.ppf(0.975, 1) * np.std(per_pair, ddof=1) / np.sqrt(2)
    assert row["energy_saving_1pct_pairs_mean"] == pytest.approx(np.mean(per_pair), abs=1e-15)
    assert row["energy_saving_1pct_pairs_ci_low"] == pytest.approx(np.mean(per_pair) - half, rel=1e-12)
    assert row["energy_saving_1pct_pairs_ci_high"] == pytest.approx(np.mean(per_pair) + half, rel=1e-12)
    assert "per chip" in chips.format_table([row], (0.01,))


def test_lowest_voltage_bad_input():
    with pytest.raises(ValueError, match=r"^lowest_voltage: accuracies must have one value per voltage"):
        chips.lowest_voltage([1.0, 0.9], [0.9], 0.9, 0.01)
    with pytest.raises(
        ValueError, match=r"^lowest_voltage: max_loss must be a finite number >= 0, got -0.01"
    ):
        chips.lowest_voltage([1.0], [0.9], 0.9, -0.01)


def test_4bit_spec_stores_every_tensor_in_4_bits_and_clips_only_weights():
    from saf_ref.experiments.demo import quantized_spec
    from saf_ref.protect import load, store

    params = {"conv1.weight": np.float32([[[[0.9, -0.05, 0.1]]]]), "bn1.weight": np.float32([11.0, 1.0, 2.0])}
    stored = store(params, quantized_spec(0.3, 4))
    assert {stored[n].nbits for n in params} == {4}
    back = load(stored, quantized_spec(0.3, 4))
    assert np.max(np.abs(back["conv1.weight"])) <= 0.3 + 1e-6
    assert back["bn1.weight"][0] == pytest.approx(11.0, rel=0.02)  # batch norm not clipped
    assert len(np.unique(back["conv1.weight"])) <= 16


# ------------------------------------------------------------------------------------------ bad input

BAD = [
    (["--chips", "0"], "--chips must be in [1, inf], got 0"),
    (["--placements", "-1"], "--placements must be in [1, inf], got -1"),
    (["--voltages", "0.3"], "--voltages must be voltages inside the chip model's range [0.5, 1.5]"),
    (["--voltages", "0.9", "0.9"], "--voltages must be distinct, got [0.9, 0.9]"),
    (["--voltages", "nan"], "--voltages must be voltages inside"),
    (["--bits", "1"], "--bits must be in [2, 16], got 1"),
    (["--bits", "8", "8"], "--bits must be distinct, got [8, 8]"),
    (["--chip-shape", "1", "0", "4"], "--chip-shape[1] must be in [1, inf], got 0"),
    (["--eval-limit", "0"], "--eval-limit must be in [1, inf], got 0"),
    (["--epochs", "0"], "--epochs must be in [1, inf], got 0"),
    (["--workers", "0"], "--workers must be in [1, inf], got 0"),
    (["--width", "-2"], "--width must be in [1, inf], got -2"),
    (["--saf-formats", "float99"], "--saf-formats must be format names such as 'q2.5'"),
    (["--data-path", "."], "--data-path must not be given for --dataset 'digits'"),
    (["--model", "mlp"], "--model must be one of"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_every_bad_option_is_refused_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    from saf_ref.experiments import demo

    def no_work(*a, **k):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(demo, "load_dataset", no_work)
    out = tmp_path / "out"
    assert message in refused_in_one_line("chips", args, out, capsys)
    assert not out.exists()


def test_out_with_results_is_refused_unless_force(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "savings.csv").write_text("keep me")
    assert main(["chips", "--out", str(out), "--checkpoints", str(tiny_run / "ckpt"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--out must not hold results already (use --force to overwrite them" in err
    assert (out / "savings.csv").read_text() == "keep me"
    assert main(["chips", "--out", str(out), "--checkpoints", str(tiny_run / "ckpt"), "--force", "--workers",
                 "1", *TINY]) == 0  # fmt: skip
    assert (out / "savings.csv").read_text() != "keep me"


def test_a_chip_too_small_for_a_model_is_refused_before_training(tmp_path, capsys, monkeypatch):
    from saf_ref.experiments import demo

    def no_training(*a, **k):
        raise AssertionError("trained before the chip size was checked")

    monkeypatch.setattr(demo, "train_quantized", no_training)
    monkeypatch.setattr(demo, "train_float", no_training)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("earlier results")
    # small_cnn of width 4: 4*9 + 4*4*9 + 16*4*9 ... words; 8-bit words, 32 per 256-column row: > 8 rows
    assert main(["chips", "--out", str(out), "--force", "--chip-shape", "1", "8", "256", *TINY]) == 2
    err = capsys.readouterr().err
    assert "chip_shape (--chip-shape) must hold every stored model, got 1 x 8 x 256 cells" in err
    assert "the model must fit in the chip's 8 rows" in err
    assert (out / "results.json").read_text() == "earlier results"  # nothing deleted or written


def test_config_checks_name_fields():
    with pytest.raises(ValueError, match=r"^ChipsConfig: chips must be in \[1, inf\], got 0"):
        chips.ChipsConfig(chips=0)
    with pytest.raises(TypeError, match=r"^ChipsConfig: voltages must be a sequence of voltages, got str"):
        chips.ChipsConfig(voltages="0.9")
    with pytest.raises(ValueError, match=r"^ChipsConfig: saf_transform must be a saturating transform"):
        chips.ChipsConfig(saf_transform="identity")
    with pytest.raises(TypeError, match=r"^run_chips: cfg must be a ChipsConfig, got dict"):
        chips.run_chips({}, "x")


def test_ctrl_c_keeps_the_finished_units(tiny_run, tmp_path, monkeypatch, capsys):
    calls = []
    real = chips.run_unit

    def interrupted_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(chips, "run_unit", interrupted_after_two)
    out = tmp_path / "out"
    assert main(["chips", "--out", str(out), "--checkpoints", str(tiny_run / "ckpt"), "--workers", "1",
                 *TINY]) == 130  # fmt: skip
    assert "interrupted: 2 of 16 (model, chip) units completed" in capsys.readouterr().err
    doc = _load(out)
    assert doc["interrupted"] and len(json.loads((out / "run.json").read_text())["records"]) == 2 * 2 * 3
