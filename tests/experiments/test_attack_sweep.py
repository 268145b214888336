"""``saf-ref attack`` on a tiny budget: option checks before work, the prefix property of the progressive
attack, replay of the recorded numbers through the public pipeline, the random baseline's exact flip
count, determinism, files and fields."""

import csv
import json

import numpy as np
import pytest

from saf_ref import data
from saf_ref.attack import bit_flip_attack
from saf_ref.bits import FaultList
from saf_ref.cli import main
from saf_ref.experiments import attack_sweep, demo
from saf_ref.experiments.attack_sweep import ATTACK_FIELDS, prefix, random_flips
from saf_ref.nn.registry import model_fns
from saf_ref.nn.small import init_small_cnn
from saf_ref.protect import default_spec, effective_weights, inject, param_role, store
from saf_ref.train.checkpoint import load_checkpoint

TINY = ["--epochs", "1", "--width", "4", "--budgets", "4", "0", "1", "--trials", "3", "--attack-batch", "16",
        "--eval-limit", "60", "--k-train", "2", "--quiet",
        "--subjects", "robust_quant", "saf_tanh_q2.5", "advbet", "saf_tanh_float32_weights",
        "saf_tanh_float32_weights_nan0"]  # fmt: skip
SUBJECT_KEYS = ("robust_quant/identity/quant8", "saf/tanh/q2.5", "advbet/identity/quant8",
                "saf/tanh/float32/weights", "saf/tanh/float32/weights/nan0")  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("attack")
    assert main(["attack", "--out", str(out), "--checkpoints", str(out / "ckpt"), *TINY]) == 0
    return out


def _load(out, name):
    return json.loads((out / name).read_text())


# ------------------------------------------------------------------------------------- option checks


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--budgets", "-1"], "--budgets"),
        (["--budgets", "1", "1"], "--budgets"),
        (["--budgets", "10000000"], "--budgets"),  # more than the exposed bits: checked before training
        (["--trials", "0"], "--trials"),
        (["--attack-batch", "0"], "--attack-batch"),
        (["--attack-batch", "100000"], "--attack-batch"),  # more than the training images
        (["--candidates", "0"], "--candidates"),
        (["--subjects", "advbet_unknown"], "--subjects"),
        (["--subjects", "randbet", "randbet"], "--subjects"),
        (["--eval-limit", "0"], "--eval-limit"),
        (["--epochs", "0"], "--epochs"),
        (["--width", "-2"], "--width"),
        (["--data-path", "somewhere"], "--data-path"),  # digits ships with saf_ref
    ],
)
def test_bad_options_are_one_line_errors_before_any_training(argv, named, tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained before the options were checked")

    monkeypatch.setattr(demo, "build_subjects", no_training)
    out = tmp_path / "out"
    assert main(["attack", "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("saf-ref attack: error: ") and named in err
    assert not out.exists()  # nothing written either


def test_existing_results_are_refused_without_force(sweep, capsys):
    before = (sweep / "results.json").read_bytes()
    assert main(["attack", "--out", str(sweep), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--force" in err
    assert (sweep / "results.json").read_bytes() == before


def test_config_checks_name_fields():
    with pytest.raises(ValueError, match="AttackSweepConfig: budgets must be distinct"):
        attack_sweep.AttackSweepConfig(budgets=(2, 2))
    with pytest.raises(TypeError, match="AttackSweepConfig: budgets must be a sequence"):
        attack_sweep.AttackSweepConfig(budgets=5)


# --------------------------------------------------------------------------------- prefix property


@pytest.mark.parametrize("spec", [demo.quantized_spec(None), default_spec("float32", "tanh")],
                         ids=["quant8", "tanh-float32"])  # fmt: skip
def test_a_prefix_of_the_longest_attack_is_the_attack_with_the_smaller_budget(spec):
    """The sweep attacks once with the largest budget and reads the smaller budgets as prefixes; that is
    the same as attacking afresh with each smaller budget (the search is greedy and deterministic)."""
    d = data.load_digits()
    params, state = init_small_cnn(in_channels=1, num_classes=10, width=4, rng=3)
    x, y = d.x_train[:24], d.y_train[:24]
    long = bit_flip_attack("small_cnn", params, state, spec, x, y, k=6, candidates=4)
    for k in (0, 1, 3):
        short = bit_flip_attack("small_cnn", params, state, spec, x, y, k=k, candidates=4)
        assert prefix(long.faults, k) == short.faults
        # compared as JSON text, where NaN (a broken network's loss) equals NaN
        assert json.dumps([s._asdict() for s in long.steps[: k + 1]]) == json.dumps(
            [s._asdict() for s in short.steps])


# ---------------------------------------------------------------------------------- random baseline


def _tiny_stored(expose_non_weights=True):
    rng = np.random.default_rng(0)
    params = {"fc1.weight": rng.standard_normal((3, 4)).astype(np.float32),
              "fc1.bias": rng.standard_normal(3).astype(np.float32),
              "fc2.weight": rng.standard_normal((2, 3)).astype(np.float32)}  # fmt: skip
    return store(params, default_spec("float16", expose_non_weights=expose_non_weights))


def _flipped_bits(clean, faulty):
    """Hamming distance between two stored models, counted bit by bit with Python ints."""
    return sum(bin(int(a) ^ int(b)).count("1") for n in clean.names
               for a, b in zip(clean[n].codes.ravel(), faulty[n].codes.ravel(), strict=True))  # fmt: skip


@pytest.mark.parametrize("k", [0, 1, 7, 40])
def test_random_flips_flip_exactly_k_distinct_exposed_bits(k):
    stored = _tiny_stored()
    faults = random_flips(stored, k, np.random.default_rng(5))
    assert len(faults) == k
    assert len({(f.tensor, f.index, f.bit) for f in faults}) == k
    assert all(f.kind == "flip" and f.format == "float16" and f.bit < 16 for f in faults)
    assert _flipped_bits(stored, inject(stored, faults).stored) == k


def test_random_flips_cover_every_exposed_bit_once_when_k_is_all_of_them():
    """k = every exposed bit: each exposed word has all 16 bits flipped, the unexposed bias none."""
    stored = _tiny_stored(expose_non_weights=False)
    total = stored.exposed_bits
    assert total == (12 + 6) * 16
    faulty = inject(stored, random_flips(stored, total, np.random.default_rng(1))).stored
    for name in ("fc1.weight", "fc2.weight"):
        assert np.all(faulty[name].codes ^ stored[name].codes == 0xFFFF)
    assert np.array_equal(faulty["fc1.bias"].codes, stored["fc1.bias"].codes)


def test_random_flips_are_seeded():
    stored = _tiny_stored()
    a = random_flips(stored, 30, np.random.default_rng(9))
    assert random_flips(stored, 30, np.random.default_rng(9)) == a
    assert random_flips(stored, 30, np.random.default_rng(10)) != a


def test_a_prefix_of_a_random_pattern_is_a_uniform_draw():
    """The sweep reads budget j as the first j flips of one k-flip draw; that is a uniform j-subset only if
    the draw comes in random order (a sorted draw would favour the first tensor and low bits). Chi-square
    of the first flip's tensor (expected in proportion to its bits) and bit over 3000 draws."""
    from scipy import stats

    stored = _tiny_stored()
    firsts = [random_flips(stored, 5, np.random.default_rng(s))[0] for s in range(3000)]
    words = {"fc1.weight": 12, "fc1.bias": 3, "fc2.weight": 6}
    counts = [sum(f.tensor == n for f in firsts) for n in words]
    assert stats.chisquare(counts, [3000 * w / 21 for w in words.values()]).pvalue > 1e-6
    assert stats.chisquare(np.bincount([f.bit for f in firsts], minlength=16)).pvalue > 1e-6


# ------------------------------------------------------------------------------------- end to end


def test_files_and_record_fields(sweep):
    records = _load(sweep, "results.json")
    run = _load(sweep, "run.json")
    assert {tuple(r) for r in records} == {ATTACK_FIELDS}
    assert {(r["subject"], r["attack"], r["budget"], r["trials"]) for r in records} == {
        (s, a, b, 1 if a == "pbs" else 3)
        for s in SUBJECT_KEYS
        for a in ("pbs", "random")
        for b in (0, 1, 4)
    }
    for r in records:
        if r["budget"] == 0:  # no flip: the clean stored model
            assert r["accuracy_mean"] == r["clean_accuracy"] == r["accuracy_ci_low"]
        assert r["rerr_mean"] >= r["error_mean"] - 1e-12
    with open(sweep / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == ATTACK_FIELDS and len(rows) == len(records)
    assert len(run["config"]["attack_batch"]) == 16 and run["interrupted"] is False
    assert [len(a["faults"]) for a in run["attacks"]] == [4] * len(SUBJECT_KEYS)
    # weights only: every flip in a conv/linear weight (the batch-norm and bias words are not attacked)
    weights_only = run["attacks"][SUBJECT_KEYS.index("saf/tanh/float32/weights")]
    shapes = {k: v.shape for k, v in init_small_cnn(in_channels=1, num_classes=10, width=4, rng=0)[0].items()}
    assert {param_role(f["tensor"], shapes) for f in weights_only["faults"]} == {"weight"}
    assert not (sweep / "trials.jsonl").exists()
    assert "robust_quant/identity/quant8" in (sweep / "table.txt").read_text()


def test_plot_written_when_matplotlib_is_installed(sweep):
    pytest.importorskip("matplotlib")
    assert (sweep / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


WEIGHTS_ONLY = default_spec("float32", "tanh", expose_non_weights=False)


@pytest.mark.parametrize("subject, ckpt, spec, nonfinite", [
    ("robust_quant/identity/quant8", "robust_quant", demo.quantized_spec(None), "propagate"),
    ("saf/tanh/q2.5", "saf_tanh", default_spec("q2.5", "tanh"), "propagate"),
    ("advbet/identity/quant8", "advbet_k2", demo.quantized_spec(0.3), "propagate"),
    ("saf/tanh/float32/weights", "saf_tanh", WEIGHTS_ONLY, "propagate"),
    ("saf/tanh/float32/weights/nan0", "saf_tanh", WEIGHTS_ONLY, "zero"),
])  # fmt: skip
def test_replaying_the_recorded_flips_gives_the_recorded_accuracies(sweep, subject, ckpt, spec, nonfinite):
    """From the files alone: the checkpoint, the attack's FaultList in run.json, the attack batch; the
    flips replayed through effective_weights give the test accuracy of results.json and the attack-batch
    accuracy of the attack's trajectory, at every budget."""
    ck = load_checkpoint(sweep / "ckpt" / f"{ckpt}.npz")
    run = _load(sweep, "run.json")
    attack = next(a for a in run["attacks"] if a["subject"] == subject)
    faults = FaultList([tuple(r[c] for c in ("tensor", "index", "bit", "kind", "format"))
                        for r in attack["faults"]])  # fmt: skip
    d = data.load_digits()
    idx = np.array(run["config"]["attack_batch"])
    assert idx.min() >= 0 and idx.max() < d.x_train.shape[0]  # the attacker saw training images only
    recorded = {r["budget"]: r["accuracy_mean"] for r in _load(sweep, "results.json")
                if r["subject"] == subject and r["attack"] == "pbs"}  # fmt: skip
    fwd = model_fns("small_cnn")
    for k, acc in recorded.items():
        w, _ = effective_weights(ck.params, spec, faults=FaultList(list(faults)[:k]), nonfinite=nonfinite)
        if nonfinite == "zero":  # tanh of a finite or zeroed word: every weight in [-1, 1], whatever flips
            shapes = {n: v.shape for n, v in w.items()}
            assert all(np.all(np.abs(w[n]) <= 1) for n in w if param_role(n, shapes) == "weight")
        with np.errstate(all="ignore"):
            z_test, _, _ = fwd.forward(w, ck.state, d.x_test[:60], train=False)
            z_att, _, _ = fwd.forward(w, ck.state, d.x_train[idx], train=False)
        # the sweep counts a row with a NaN/inf logit as wrong; the attack's trajectory takes argmax
        pred = np.where(np.isfinite(z_test).all(axis=1), np.argmax(z_test, axis=1), -1)
        assert np.mean(pred == d.y_test[:60]) == acc
        assert np.mean(np.argmax(z_att, axis=1) == d.y_train[idx]) == attack["steps"][k]["accuracy"]


def test_same_seed_same_bytes(sweep, tmp_path):
    again = tmp_path / "again"
    assert main(["attack", "--out", str(again), "--checkpoints", str(sweep / "ckpt"), *TINY]) == 0
    assert (again / "results.json").read_bytes() == (sweep / "results.json").read_bytes()
    def untimed(out):
        return [{k: v for k, v in a.items() if k != "seconds"} for a in _load(out, "run.json")["attacks"]]

    assert untimed(again) == untimed(sweep)


def test_ctrl_c_keeps_the_attacked_models_and_exits_130(sweep, tmp_path, monkeypatch, capsys):
    real, calls = attack_sweep._sweep_subject, []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(attack_sweep, "_sweep_subject", interrupted_on_the_second)
    out = tmp_path / "cut"
    assert main(["attack", "--out", str(out), "--checkpoints", str(sweep / "ckpt"), *TINY]) == 130
    assert "interrupted: 1 of 5 models attacked" in capsys.readouterr().err
    kept = _load(out, "results.json")
    assert {r["subject"] for r in kept} == {SUBJECT_KEYS[0]}
    assert kept == [r for r in _load(sweep, "results.json") if r["subject"] == SUBJECT_KEYS[0]]
    assert _load(out, "run.json")["interrupted"] is True
