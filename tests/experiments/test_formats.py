"""saf-ref format-faults on a tiny budget: files and fields, consistent outcome rates, worker-count
independence, tables, and every bad option refused before any work."""

from __future__ import annotations

import csv
import json

import pytest
from cli_helpers import refused_in_one_line

from saf_ref.cli import main
from saf_ref.experiments.formats import FormatsConfig, check_config, format_tables

TINY = [
    "--epochs",
    "1",
    "--width",
    "4",
    "--trials",
    "2",
    "--rates",
    "0",
    "1e-3",
    "3e-2",
    "--act-rates",
    "1e-2",
    "--weight-formats",
    "float16",
    "mxfp4",
    "int8",
    "--act-formats",
    "bfloat16",
    "int8",
    "--eval-limit",
    "40",
    "--bit-formats",
    "int8",
    "--quiet",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("formats")
    assert (
        main(
            [
                "format-faults",
                "--out",
                str(out / "run"),
                "--checkpoints",
                str(out / "ckpt"),
                "--workers",
                "1",
                *TINY,
            ]
        )
        == 0
    )
    return out


def _doc(path):
    return json.loads((path / "results.json").read_text())


def test_writes_every_file_with_consistent_rates(tiny_run):
    run = tiny_run / "run"
    doc = _doc(run)
    assert not doc["interrupted"]
    assert {(g["transform"], g["format"]) for g in doc["weights_golden"]} == {
        (t, f) for t in ("identity", "tanh") for f in ("float16", "mxfp4", "int8")
    }
    assert len(doc["weights"]) == 6 * 3
    assert {(r["layer"], r["format"]) for r in doc["activations"]} == {
        (layer, f) for layer in ("relu1", "relu2", "relu3") for f in ("bfloat16", "int8")
    }
    for row in doc["weights"] + doc["activations"]:
        total = row["masked_rate"] + row["sdc_rate"] + row["detected_rate"]
        assert total == pytest.approx(1.0, abs=1e-12)
        assert row["sdc_ci_low"] <= row["sdc_rate"] <= row["sdc_ci_high"]
        assert row["n"] == 2 * 40 and row["sdc_top5_rate"] is not None  # digits: 10 classes
    for row in doc["weights"]:
        if row["ber"] == 0:
            assert row["masked_rate"] == 1.0 and row["accuracy_mean"] == row["clean_accuracy"]
    per_bit = doc["activations_per_bit"]
    assert [(r["layer"], r["bit"]) for r in per_bit] == [(f"relu{i}", b) for i in (1, 2, 3) for b in range(8)]
    assert all(r["format"] == "int8" and r["ber"] == 1e-2 for r in per_bit)
    runinfo = json.loads((run / "run.json").read_text())
    for rec in runinfo["weight_trials"] + runinfo["activation_trials"]:
        assert rec["masked"] + rec["sdc"] + rec["detected"] == rec["n"] == 40
    with open(run / "weights.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 18
    with open(run / "activations.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6 + 24
    table = (run / "table.txt").read_text()
    assert table.rstrip("\n") == format_tables(doc)
    assert "mxfp4" in table and "relu3" in table


def test_plot_written_when_matplotlib_is_installed(tiny_run):
    pytest.importorskip("matplotlib")
    assert (tiny_run / "run" / "vulnerability.png").stat().st_size > 1000


def test_same_bytes_for_any_worker_count(tiny_run, tmp_path):
    out = tmp_path / "two"
    assert (
        main(
            [
                "format-faults",
                "--out",
                str(out),
                "--checkpoints",
                str(tiny_run / "ckpt"),
                "--workers",
                "2",
                *TINY,
            ]
        )
        == 0
    )
    assert (out / "results.json").read_bytes() == (tiny_run / "run" / "results.json").read_bytes()


BAD = [
    (["--weight-formats", "float12"], "weight format must be an IEEE format name"),
    (["--weight-formats", "float16", "float16"], "--weight-formats must be distinct"),
    (["--act-formats", "float64"], "format must hold float32 activations in at most 32 bits"),
    (["--act-formats", "e9m9"], "format must be an IEEE format name"),
    (["--rates", "-0.5"], "--rates must be bit-error rates in [0, 1], got -0.5"),
    (["--act-rates", "2"], "--act-rates must be bit-error rates in [0, 1], got 2.0"),
    (["--transforms", "cosine"], "transform"),
    (["--trials", "0"], "--trials must be in [1, inf], got 0"),
    (["--bit-formats", "float99"], "format must be an IEEE format name"),
    (["--eval-limit", "0"], "--eval-limit must be in [1, inf], got 0"),
    (["--workers", "0"], "--workers must be in [1, inf], got 0"),
    (["--model", "mlp"], "--model must be one of"),
    (["--data-path", "."], "--data-path must not be given for --dataset 'digits'"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_every_bad_option_is_refused_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    from saf_ref.experiments import demo

    def no_work(*a, **k):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(demo, "load_dataset", no_work)
    out = tmp_path / "out"
    err = refused_in_one_line("format-faults", args, out, capsys)
    assert message in err, err
    assert not out.exists()


def test_out_with_results_is_refused_unless_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "weights.csv").write_text("keep me")
    assert main(["format-faults", "--out", str(out), "--quick"]) == 2
    assert "--out must not hold results already" in capsys.readouterr().err
    assert (out / "weights.csv").read_text() == "keep me"


def test_config_checks_name_fields():
    with pytest.raises(ValueError, match="FormatsConfig: act_rates must be bit-error rates"):
        FormatsConfig(act_rates=(-1.0,))
    with pytest.raises(TypeError, match="FormatsConfig: weight_formats must hold weight format names"):
        FormatsConfig(weight_formats=(16,))
    with pytest.raises(ValueError, match="FormatsConfig: transforms must name at least one"):
        FormatsConfig(transforms=())
    values = {k: f.default for k, f in FormatsConfig.__dataclass_fields__.items()}
    check_config(values, "x")  # the defaults pass


def test_list_taps_prints_the_models_tap_names(capsys):
    from saf_ref.faults_act import activation_taps

    assert main(["format-faults", "--list-taps", "--model", "resnet20"]) == 0
    assert capsys.readouterr().out.split() == list(activation_taps("resnet20"))
    assert main(["format-faults", "--list-taps"]) == 0
    assert capsys.readouterr().out.split() == ["relu1", "relu2", "relu3"]
    assert main(["format-faults", "--list-taps", "--model", "vgg"]) == 2
    assert "--model must be one of" in capsys.readouterr().err
