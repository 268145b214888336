"""``saf-ref seeds``: option checks, the paired design (the same fault patterns for every model), the paired
statistics against hand computations, the claim rule, and a tiny end-to-end run."""

import argparse
import json
import math

import numpy as np
import pytest
from cli_helpers import refused_in_one_line
from scipy import stats

import saf_ref.experiments.demo as demo
import saf_ref.experiments.seeds as seeds
from saf_ref.cli import main
from saf_ref.experiments.campaign import Subject, predict, run_campaign, trial_rng
from saf_ref.nn.small import init_small_cnn
from saf_ref.protect import default_spec, inject_nested, load, store
from saf_ref.train.checkpoint import load_checkpoint

TINY = ["--dataset", "digits", "--model", "small_cnn", "--width", "4", "--epochs", "1", "--patterns", "3",
        "--rates", "1e-3", "1e-2", "--eval-limit", "60", "--finetune-epochs", "1", "--workers", "2",
        "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    assert main(["seeds", "--out", str(out), "--checkpoints", str(out / "ckpt"), *TINY]) == 0
    return out


def _load(out, name):
    return json.loads((out / name).read_text())


# ------------------------------------------------------------------------------------- option checks


@pytest.fixture
def no_work(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("seeds started working before every option was checked")

    monkeypatch.setattr(demo, "load_dataset", forbidden)
    monkeypatch.setattr(seeds, "build_subjects", forbidden)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--patterns", "0"], "--patterns must be in [1, inf], got 0"),
        (["--quick", "--patterns", "-1"], "--patterns must be in [1, inf], got -1"),
        (["--exposures", "weights", "weights"], "--exposures must be distinct, got ['weights', 'weights']"),
        (["--exposures", "biases"], "--exposures must be one of ('weights', 'all'), got 'biases'"),
        (["--saf-transforms", "identity"], "--saf-transforms must be saturating transforms"),
        (["--saf-transforms", "tanh", "tanh"], "--saf-transforms must be distinct"),
        (["--saf-transforms", "sigmoidal"], "get_transform"),
        (["--formats", "float17"], "float17"),
        (["--formats", "q2.5", "q2.5"], "--formats must be distinct"),
        (["--finetune-epochs", "-1"], "--finetune-epochs must be in [0, inf], got -1"),
        (["--finetune-lr", "0"], "--finetune-lr must be a finite number > 0, got 0.0"),
        (["--finetune-lr", "nan"], "--finetune-lr must be a finite number > 0, got nan"),
        (["--convert-mode", "swap"], "--convert-mode must be one of ('copy', 'inverse'), got 'swap'"),
        (["--rates", "1e-3", "2"], "--rates must be bit-error rates in [0, 1], got 2.0"),
        (["--rates", "1e-3", "1e-3"], "--rates must be distinct"),
        (["--eval-limit", "0"], "--eval-limit must be in [1, inf], got 0"),
        (["--epochs", "0"], "--epochs must be in [1, inf], got 0"),
        (["--batch-size", "0"], "--batch-size must be in [1, inf], got 0"),
        (["--width", "0"], "--width must be in [1, inf], got 0"),
        (["--workers", "0"], "--workers must be in [1, inf], got 0"),
        (["--model", "mlp"], "--model must be one of"),
        (["--data-path", "x.tar.gz"], "--data-path must not be given for --dataset 'mnist5k'"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_errors_naming_the_option(no_work, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    err = refused_in_one_line("seeds", ["--quiet", *argv], out, capsys)
    assert message in err, err
    assert "SeedsConfig" not in err and "DemoConfig" not in err
    assert not out.exists()


def _args(argv):
    parser = argparse.ArgumentParser()
    seeds.add_arguments(parser)
    return parser.parse_args(argv)


def test_quick_sets_its_values_and_given_options_override_them():
    cfg = seeds.config_from_args(_args(["--quick"]))
    for key, value in seeds.QUICK.items():
        assert getattr(cfg, key) == value
    cfg = seeds.config_from_args(_args(["--quick", "--patterns", "7", "--rates", "1e-2"]))
    assert cfg.patterns == 7 and cfg.rates == (1e-2,) and cfg.width == seeds.QUICK["width"]
    full = seeds.config_from_args(_args([]))
    assert (full.model, full.dataset, full.width, full.patterns) == ("resnet20", "mnist5k", 8, 50)
    assert full.exposures == ("weights", "all") and full.formats == ("float32", "float16", "q2.5")


def test_config_checks_name_fields():
    with pytest.raises(ValueError, match=r"SeedsConfig: patterns must be in \[1, inf\], got 0"):
        seeds.SeedsConfig(patterns=0)
    with pytest.raises(TypeError, match="SeedsConfig: exposures must be a sequence of exposures"):
        seeds.SeedsConfig(exposures="all")
    with pytest.raises(ValueError, match="SeedsConfig: exposures must name at least one"):
        seeds.SeedsConfig(exposures=())


def test_existing_results_are_refused_without_force(seeds_run, capsys):
    before = (seeds_run / "paired.json").read_bytes()
    assert main(["seeds", "--out", str(seeds_run), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--force" in err
    assert (seeds_run / "paired.json").read_bytes() == before


# ---------------------------------------------------------------------------------- paired design


def _two_models():
    a, state = init_small_cnn(in_channels=1, num_classes=10, width=4, rng=1)
    b, _ = init_small_cnn(in_channels=1, num_classes=10, width=4, rng=2)
    return a, b, state


def test_pattern_t_flips_the_same_bits_in_every_model_of_the_same_layout():
    """The fault pattern of index t is a function of (seed, t) and the stored layout only: two models
    with different values (a plain and a tanh one), the same shapes, format and exposure, get the same
    flips, tensor by tensor, at every rate; another index gives another pattern."""
    a, b, _ = _two_models()
    rates = [1e-3, 1e-2]
    for exposure in ("weights", "all"):
        spec_a = seeds._spec("float32", "identity", exposure)
        spec_b = seeds._spec("float32", "tanh", exposure)
        for t in range(3):
            fa = inject_nested(store(a, spec_a), rates, rng=trial_rng(5, t))
            fb = inject_nested(store(b, spec_b), rates, rng=trial_rng(5, t))
            for ia, ib in zip(fa, fb, strict=True):
                got_a = sorted((f.tensor, f.index, f.bit) for f in ia.faults)
                got_b = sorted((f.tensor, f.index, f.bit) for f in ib.faults)
                assert got_a == got_b and len(got_a) > 0
        other = inject_nested(store(a, spec_a), rates, rng=trial_rng(5, 1))[1].faults
        first = inject_nested(store(a, spec_a), rates, rng=trial_rng(5, 0))[1].faults
        assert sorted((f.tensor, f.index, f.bit) for f in other) != sorted(
            (f.tensor, f.index, f.bit) for f in first
        )


def test_every_model_sees_the_same_patterns_whatever_its_place_in_the_campaign():
    """Two copies of one model under different labels, first and last in a campaign with another model
    between them, have the same accuracy pattern by pattern (so differences between models are paired)."""
    a, b, state = _two_models()
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 40)
    spec = default_spec("float32")
    subjects = [Subject("m", "identity", "float32", "small_cnn", a, state, spec, label="first"),
                Subject("m", "identity", "float32", "small_cnn", b, state, spec, label="between"),
                Subject("m", "identity", "float32", "small_cnn", a, state, spec, label="last")]  # fmt: skip
    result = run_campaign(subjects, x, y, [3e-3, 3e-2], trials=4, seed=3, executor="serial", progress=False)
    acc = {(r["subject"], r["trial"], r["ber"]): r["accuracy"] for r in result.trials}
    assert {k[1:]: v for k, v in acc.items() if k[0] == "first"} == {
        k[1:]: v for k, v in acc.items() if k[0] == "last"
    }
    assert len({v for k, v in acc.items() if k[0] == "first"}) > 1  # the patterns differ from each other


def test_recorded_accuracies_replay_from_the_pattern_seeds(seeds_run):
    """Every pattern is the draw of trial_rng(seed, t): re-drawing it for the saved baseline and tanh
    checkpoints and predicting gives the recorded accuracy (both exposures, float32)."""
    run = _load(seeds_run, "run.json")
    cfg = run["config"]["seeds"]
    x, y = demo.load_dataset("digits")[2:4]
    x, y = x[: cfg["eval_limit"]], y[: cfg["eval_limit"]]
    recorded = {(r["subject"], r["trial"], r["ber"]): r["accuracy"] for r in run["trials"]}
    checked = 0
    models = (("baseline_identity", "baseline", "identity"), ("saf_tanh", "saf", "tanh"))
    for name, method, transform in models:
        ckpt = load_checkpoint(seeds_run / "ckpt" / f"{name}.npz")
        for exposure in ("weights", "all"):
            spec = default_spec("float32", transform, expose_non_weights=exposure == "all")
            for t in range(cfg["patterns"]):
                faulty = inject_nested(store(ckpt.params, spec), cfg["rates"], rng=trial_rng(cfg["seed"], t))
                for rate, inj in zip(cfg["rates"], faulty, strict=True):
                    pred, _ = predict("small_cnn", load(inj.stored, spec), ckpt.state, x)
                    key = (f"{method}/{transform}/float32/{exposure}", t, rate)
                    assert recorded[key] == float(np.mean(pred == y))
                    checked += 1
    assert checked == 2 * 2 * cfg["patterns"] * len(cfg["rates"])


# ------------------------------------------------------------------------------- paired statistics


def _t_interval(values):
    """Student-t interval by hand (scipy's t quantile), the reference for mean_interval."""
    v = np.asarray(values, dtype=np.float64)
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return v.mean(), v.mean() - half, v.mean() + half


def _wilson(k, n):
    z = stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _records(subject, method, transform, accs, ber=1e-3):
    return [{"subject": subject, "method": method, "transform": transform, "format": "float32", "ber": ber,
             "trial": t, "accuracy": a} for t, a in enumerate(accs)]  # fmt: skip


def test_paired_summary_against_hand_computations():
    base = [0.12, 0.10, 0.55, 0.09, 0.11]
    tanh = [0.97, 0.98, 0.99, 0.60, 0.96]
    trials = (_records("baseline/identity/float32/all", "baseline", "identity", base)
              + _records("saf/tanh/float32/all", "saf", "tanh", tanh))  # fmt: skip
    clean = {"baseline/identity/float32/all": 0.99, "saf/tanh/float32/all": 0.98}
    rows = {r["subject"]: r for r in seeds.paired_summary(trials, clean, num_classes=10)}
    t = rows["saf/tanh/float32/all"]
    assert t["exposure"] == "all" and t["patterns"] == 5
    assert t["accuracy_mean"] == pytest.approx(np.mean(tanh), abs=1e-15)
    for key, values in (("drop", [0.98 - a for a in tanh]), ("vs_baseline", np.subtract(tanh, base))):
        mean, lo, hi = _t_interval(values)
        assert t[f"{key}_mean"] == pytest.approx(mean, abs=1e-12)
        assert t[f"{key}_ci_low"] == pytest.approx(lo, abs=1e-12)
        assert t[f"{key}_ci_high"] == pytest.approx(hi, abs=1e-12)
    assert t["at_chance_fraction"] == 0.0
    b = rows["baseline/identity/float32/all"]
    assert b["vs_baseline_mean"] is None
    assert b["at_chance_fraction"] == 4 / 5  # 0.12, 0.10, 0.09, 0.11 are within 10 points of 10%
    lo, hi = _wilson(4, 5)
    assert (b["at_chance_ci_low"], b["at_chance_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_paired_differences_use_only_the_patterns_both_models_completed():
    trials = (_records("baseline/identity/float32/weights", "baseline", "identity", [0.1, 0.2, 0.3])
              + _records("saf/tanh/float32/weights", "saf", "tanh", [0.9, 0.8]))  # fmt: skip
    clean = {"baseline/identity/float32/weights": 0.99, "saf/tanh/float32/weights": 0.99}
    row = [r for r in seeds.paired_summary(trials, clean, 10) if r["method"] == "saf"][0]
    assert row["vs_baseline_mean"] == pytest.approx(np.mean([0.9 - 0.1, 0.8 - 0.2]), abs=1e-15)


def _paired_row(subject, exposure, ber, accuracy, drop=0.0, drop_high=0.0, clean=0.99):
    method = subject.split("/")[0]
    return {"subject": subject, "method": method, "format": "float32", "exposure": exposure, "ber": ber,
            "accuracy_mean": accuracy, "clean_accuracy": clean, "drop_mean": drop,
            "drop_ci_high": drop_high, "at_chance_fraction": 0.0}  # fmt: skip


def test_claim_rows_only_at_rates_where_the_baseline_is_at_chance():
    paired = [
        _paired_row("baseline/identity/float32/weights", "weights", 1e-5, 0.21),  # 11 points above chance
        _paired_row("baseline/identity/float32/weights", "weights", 3e-5, 0.20),  # exactly 10 points
        _paired_row("saf/tanh/float32/weights", "weights", 1e-5, 0.98, drop=0.01, drop_high=0.02),
        _paired_row("saf/tanh/float32/weights", "weights", 3e-5, 0.96, drop=0.03, drop_high=0.05),
        _paired_row("saf/arctan/float32/weights", "weights", 3e-5, 0.95, drop=0.031, drop_high=0.04),
        _paired_row("saf/tanh/float32/all", "all", 3e-5, 0.5, drop=0.49, drop_high=0.6),  # no baseline row
        _paired_row("saf/tanh/q2.5/weights", "weights", 3e-5, 0.2, clean=0.2),  # clean at chance: no claim
    ]
    rows = seeds.claim_rows(paired, num_classes=10)
    assert [(r["subject"], r["ber"], r["holds"], r["holds_ci"], r["trained"]) for r in rows] == [
        ("saf/tanh/float32/weights", 3e-5, True, False, True),
        ("saf/arctan/float32/weights", 3e-5, False, False, True),
        ("saf/tanh/q2.5/weights", 3e-5, False, False, False),
    ]


# --------------------------------------------------------------------------------------- end to end


def test_files_record_fields_and_the_claim_text(seeds_run):
    records = _load(seeds_run, "results.json")
    assert {r["exposure"] for r in records} == {"weights", "all"}
    subjects = {r["subject"] for r in records}
    formats = ("float32", "float16", "q2.5")
    models = (("baseline", "identity", ("float32",)), ("saf", "tanh", formats), ("saf", "arctan", formats),
              ("converted", "tanh", ("float32",)))  # fmt: skip
    expected = {f"{m}/{t}/{f}/{e}" for e in ("weights", "all") for m, t, fs in models for f in fs}
    assert subjects == expected
    assert all(r["trials"] == 3 for r in records)
    paired = _load(seeds_run, "paired.json")
    assert {(r["subject"], r["ber"]) for r in paired} == {(r["subject"], r["ber"]) for r in records}
    for r in paired:
        assert set(seeds.PAIRED_FIELDS) <= set(r)
        assert r["drop_ci_low"] <= r["drop_mean"] <= r["drop_ci_high"]
        assert (r["vs_baseline_mean"] is None) == (r["method"] == "baseline")
    run = _load(seeds_run, "run.json")
    assert run["config"]["seeds"]["patterns"] == 3
    assert sorted({r["trial"] for r in run["trials"]}) == [0, 1, 2]
    convert = run["config"]["training"]["convert"]
    assert convert["transform"] == "tanh" and convert["mode"] == "inverse" and convert["epochs"] == 1
    assert 0.0 <= convert["clean_before_finetune"] <= 1.0 and 0.0 <= convert["clean_after_finetune"] <= 1.0
    assert set(run["config"]["training"]["seconds"]) == {"baseline_identity", "saf_tanh", "saf_arctan",
                                                         convert["checkpoint"]}  # fmt: skip
    claim = (seeds_run / "claim.txt").read_text()
    assert "exposure 'weights'" in claim and "exposure 'all'" in claim
    assert (seeds_run / "table.txt").read_text().count("\n") == 2 + len(expected)
    assert not (seeds_run / "trials.jsonl").exists()


def test_checkpoints_are_reused_and_results_identical(seeds_run, tmp_path):
    again = tmp_path / "again"
    assert main(["seeds", "--out", str(again), "--checkpoints", str(seeds_run / "ckpt"), *TINY]) == 0
    for name in ("results.json", "paired.json", "claim.txt"):
        assert (seeds_run / name).read_text() == (again / name).read_text()
    seconds = _load(again, "run.json")["config"]["training"]["seconds"]
    assert all(v is None for v in seconds.values())  # every model loaded, none trained


def test_exposed_words_counts_by_hand():
    """The small CNN's conv/linear weights are its 2-D and 4-D arrays; the rest (biases, batch norm) are
    1-D. float32: 32 bits a word; q2.5: 8."""
    a, _, state = _two_models()
    weights = sum(v.size for v in a.values() if v.ndim in (2, 4))
    other = sum(v.size for v in a.values() if v.ndim == 1)
    for fmt, nbits in (("float32", 32), ("q2.5", 8)):
        for exposure, expected_other in (("weights", 0), ("all", other)):
            s = Subject("m", "tanh", fmt, "small_cnn", a, state, seeds._spec(fmt, "tanh", exposure))
            assert seeds.exposed_words(s) == {"weights": weights, "other": expected_other,
                                              "bits": (weights + expected_other) * nbits}  # fmt: skip


def test_claim_text_states_the_exposed_words(seeds_run):
    run = _load(seeds_run, "run.json")
    exposed = run["config"]["training"]["exposed"]
    claim = (seeds_run / "claim.txt").read_text()
    for exposure in ("weights", "all"):
        words = exposed[f"baseline/identity/float32/{exposure}"]
        assert f"{words['weights']:,} conv/linear weights + {words['other']:,} biases" in claim
    assert exposed["baseline/identity/float32/weights"]["other"] == 0
