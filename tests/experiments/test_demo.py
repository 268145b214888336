"""The demo end to end on a tiny budget: files, record fields, checkpoints, determinism."""

import csv
import json

import pytest

from saf_ref.cli import main

TINY = ["--epochs", "1", "--trials", "2", "--rates", "1e-3", "1e-2", "--eval-limit", "60", "--width", "4",
        "--workers", "2", "--quiet"]  # fmt: skip
METHODS = {"baseline", "saf", "robust_quant", "clipping", "randbet", "randbet_noclip"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--checkpoints", str(out / "ckpt"), *TINY]) == 0
    return out


def test_writes_results_with_the_documented_fields(demo_run, capsys):
    records = json.loads((demo_run / "results.json").read_text())
    assert isinstance(records, list)  # results.json is a list of records, as documented
    run = json.loads((demo_run / "run.json").read_text())
    assert {r["method"] for r in records} == METHODS
    assert {r["format"] for r in records} == {"float32", "float16", "q2.5", "quant8"}
    assert {r["transform"] for r in records} == {"identity", "tanh", "arctan"}
    assert {r["ber"] for r in records} == {1e-3, 1e-2}
    for r in records:
        for key in ("method", "transform", "format", "ber", "trials", "accuracy_mean", "accuracy_ci_low",
                    "accuracy_ci_high", "rerr_mean", "nonfinite_fraction", "clean_accuracy"):  # fmt: skip
            assert key in r
        assert r["trials"] == 2
        assert 0.0 <= r["accuracy_ci_low"] <= r["accuracy_mean"] <= r["accuracy_ci_high"] <= 1.0
        # RErr counts an example wrong if the clean OR the faulty model is wrong: never below the error.
        assert r["rerr_mean"] >= 1.0 - r["accuracy_mean"] - 1e-12
    assert len(run["clean"]) == 3 * 3 + 4
    with open(demo_run / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(records)
    table = (demo_run / "table.txt").read_text()
    assert all(m in table for m in METHODS)


def test_plot_written_when_matplotlib_is_installed(demo_run):
    pytest.importorskip("matplotlib")
    png = (demo_run / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_checkpoints_are_reused_and_results_identical(demo_run, tmp_path):
    assert sorted(p.name for p in (demo_run / "ckpt").iterdir()) == sorted(
        f"{m}.npz" for m in ("baseline_identity", "saf_tanh", "saf_arctan", "robust_quant", "clipping",
                             "randbet", "randbet_noclip")  # fmt: skip
    )
    again = tmp_path / "again"
    assert main(["demo", "--out", str(again), "--checkpoints", str(demo_run / "ckpt"), *TINY]) == 0
    assert (demo_run / "results.json").read_text() == (again / "results.json").read_text()
    first, second = (json.loads((d / "run.json").read_text()) for d in (demo_run, again))
    assert first["clean"] == second["clean"] and first["trials"] == second["trials"]


def test_checkpoints_trained_with_other_settings_are_not_reused(demo_run, tmp_path, capsys):
    longer = [a if a != "1" else "2" for a in TINY]  # --epochs 2: the saved models had 1 epoch
    assert longer != TINY
    assert main(["demo", "--out", str(tmp_path), "--checkpoints", str(demo_run / "ckpt"), *longer]) == 2
    err = capsys.readouterr().err
    assert "baseline_identity.npz must have been trained with this run's settings, got epochs=1 there" in err
    assert "epochs=1 there, 2 now" in err


def test_checkpoints_from_elsewhere_are_not_reused(tmp_path, capsys):
    import numpy as np

    from saf_ref.train.checkpoint import save_checkpoint

    (tmp_path / "ckpt").mkdir()
    save_checkpoint(tmp_path / "ckpt" / "baseline_identity.npz", params={"w": np.zeros(1)}, state={})
    assert main(["demo", "--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ckpt"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "must have been written by the demo for 'baseline_identity', got metadata {}" in err


def test_unknown_dataset_and_model_are_clear_errors():
    from saf_ref.experiments.demo import DemoConfig, build_subjects, load_dataset

    match = r"demo: dataset must be one of \('digits', 'mnist5k', 'cifar10'\), got 'svhn'"
    with pytest.raises(ValueError, match=match):
        load_dataset("svhn")
    data = load_dataset("digits")
    with pytest.raises(ValueError, match=r"demo: model must be 'small_cnn' or one of \('resnet20', .*'mlp'"):
        build_subjects(DemoConfig(model="mlp", verbose=False), data)  # a loop model, but no conv net


def test_cifar10_without_path_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--dataset", "cifar10", "--quiet"]) == 2
    assert "needs --data-path" in capsys.readouterr().err


def test_quantized_spec_clips_only_conv_and_linear_weights():
    import numpy as np

    from saf_ref.experiments.demo import quantized_spec
    from saf_ref.protect import load, store

    params = {
        "conv1.weight": np.float32([[[[0.9, -0.05]]]]),
        "bn1.weight": np.float32([11.0, 1.0]),
        "bn1.bias": np.float32([-2.0, 0.5]),
        "fc.weight": np.float32([[0.5, -0.02]]),
        "fc.bias": np.float32([3.0]),
    }
    back = load(store(params, quantized_spec(0.3)))
    assert np.abs(back["conv1.weight"]).max() <= np.float32(0.3)  # clipped to the clip range
    assert np.abs(back["fc.weight"]).max() <= np.float32(0.3)
    for name in ("bn1.weight", "bn1.bias", "fc.bias"):  # kept within the 8-bit step of their own range
        span = params[name].max() - params[name].min()
        assert np.abs(back[name] - params[name]).max() <= span / 254 * 1.01


def test_plot_rejects_an_unknown_metric(tmp_path):
    pytest.importorskip("matplotlib")
    from saf_ref.experiments.campaign import CampaignResult
    from saf_ref.experiments.plots import plot_campaign

    match = r"plot_campaign: metric must be one of \('accuracy', 'rerr'\), got 'err'"
    with pytest.raises(ValueError, match=match):
        plot_campaign(CampaignResult([], [], []), tmp_path / "x.png", metric="err")
    assert not (tmp_path / "x.png").exists()
