"""The demo end to end on a tiny budget: files, record fields, checkpoints, determinism."""

import csv
import json

import pytest

from saf_ref.cli import main

TINY = ["--epochs", "1", "--trials", "2", "--rates", "1e-3", "1e-2", "--eval-limit", "60", "--width", "4",
        "--workers", "2", "--quiet"]  # fmt: skip
METHODS = {"baseline", "saf", "robust_quant", "clipping", "randbet", "randbet_noclip", "weight_scaling"}


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
    assert len(run["clean"]) == 3 * 3 + 2 + 4  # float models x formats, weight scaling, quantized
    with open(demo_run / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(records)
    table = (demo_run / "table.txt").read_text()
    assert all(m in table for m in METHODS)


def test_weight_scaling_rows_store_the_baseline_exactly(demo_run):
    """The weight-scaling subjects are the baseline's weights times a power of two per tensor: without
    faults they read back exactly, so their clean accuracy is the baseline's in the same format."""
    records = json.loads((demo_run / "results.json").read_text())
    clean = {(r["method"], r["format"]): r["clean_accuracy"] for r in records}
    for fmt in ("float32", "float16"):
        assert clean[("weight_scaling", fmt)] == clean[("baseline", fmt)]


def test_plot_written_when_matplotlib_is_installed(demo_run):
    pytest.importorskip("matplotlib")
    png = (demo_run / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_checkpoints_are_reused_and_results_identical(demo_run, tmp_path):
    assert sorted(p.name for p in (demo_run / "ckpt").iterdir()) == sorted(
        f"{m}.npz"
        for m in (
            "baseline_identity",
            "saf_tanh",
            "saf_arctan",
            "robust_quant_reference",
            "clipping_reference",
            "randbet_reference",
            "randbet_noclip_reference",
        )  # fmt: skip
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
    from saf_ref.experiments.demo import DemoConfig, load_dataset

    match = r"demo: dataset must be one of \('digits', 'mnist5k', 'cifar10'\), got 'svhn'"
    with pytest.raises(ValueError, match=match):
        load_dataset("svhn")
    match = r"DemoConfig: model must be one of \('small_cnn', 'resnet20', .*\), optionally .*, got 'mlp'"
    with pytest.raises(ValueError, match=match):
        DemoConfig(model="mlp")  # a loop model, but no conv net: refused before any data is loaded


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


def test_quantized_spec_every_tensor_clips_and_quantizes_every_tensor():
    """The reference setting: every tensor clipped to [-c, c] and stored by the clipped 8-bit quantizer,
    compared with np.clip and the quantizer's own encode/decode by hand."""
    import numpy as np

    from saf_ref.experiments.demo import quantized_spec, quantizer
    from saf_ref.protect import load, store

    params = {"conv1.weight": np.float32([[[[0.9, -0.05]]]]), "bn1.weight": np.float32([0.4, -0.01]),
              "bn1.bias": np.float32([-2.0, 0.1]), "fc.weight": np.float32([[0.5, -0.02]]),
              "fc.bias": np.float32([3.0])}  # fmt: skip
    back = load(store(params, quantized_spec(0.3, every_tensor=True)))
    q = quantizer(8, None)
    for name, u in params.items():
        clipped = np.clip(u, np.float32(-0.3), np.float32(0.3))
        assert back[name].tobytes() == q.decode(*q.encode(clipped)).tobytes(), name
        assert np.abs(back[name]).max() <= np.float32(0.3)
    unclipped = load(store(params, quantized_spec(None, every_tensor=True)))
    assert unclipped["fc.bias"][0] == pytest.approx(3.0, rel=1e-2)  # no clip: only quantized


def test_reference_setting_trains_group_norm_reparam_models_with_every_tensor_in_the_box(demo_run):
    """The demo's default quantized models (quant_setting "reference"): group norm with the scale 1 +
    weight (no running statistics), every latent within the clip for the clipped methods, and the run
    records the setting; the earlier setting stays available."""
    import numpy as np

    from saf_ref.experiments.demo import DemoConfig, quant_model
    from saf_ref.train.checkpoint import load_checkpoint

    assert quant_model(DemoConfig()) == "small_cnn@norm=group,reparam=1"
    assert quant_model(DemoConfig(quant_setting="weights")) == "small_cnn"
    expected = "resnet20@act_clip=6.0,norm=group,reparam=1"
    assert quant_model(DemoConfig(model="resnet20@act_clip=6")) == expected
    for method in ("clipping", "randbet"):
        ckpt = load_checkpoint(demo_run / "ckpt" / f"{method}_reference.npz")
        assert ckpt.state == {} or all("running" not in k for k in ckpt.state)
        for name, u in ckpt.params.items():
            assert np.abs(u).max() <= np.float32(0.3), (method, name)
    ckpt = load_checkpoint(demo_run / "ckpt" / "robust_quant_reference.npz")
    assert any(np.abs(u).max() > 0.3 for u in ckpt.params.values())  # not clipped
    run = json.loads((demo_run / "run.json").read_text())
    assert run["config"]["demo"]["quant_setting"] == "reference"


def test_randbet_follows_the_curriculum_threshold():
    """The demo's RandBET trains with Stutz et al.'s per-batch curriculum at ``cfg.curriculum_loss``: with a
    threshold no loss reaches, errors stay off all run and the RandBET model is the clipping model bit for
    bit; with a threshold the losses are below (errors start off, then switch on) and without a
    curriculum (``None``: errors on every step) it is not, and the two differ from each other."""
    from dataclasses import replace

    import numpy as np

    from saf_ref.experiments import demo
    from saf_ref.nn.registry import init_model

    cfg = replace(demo.DemoConfig(), epochs=1, width=4, verbose=False)
    assert cfg.curriculum_loss == demo.DEMO_CURRICULUM_LOSS == 0.3
    data = demo.load_dataset(cfg.dataset, None)[:4]
    model = demo.quant_model(cfg)
    init = init_model(model, in_channels=data[0].shape[1], num_classes=10, width=4, rng=0)

    def trained(tau, p_train):
        params, _ = demo.train_quantized(replace(cfg, curriculum_loss=tau), data, init, clip=0.3,
                                         p_train=p_train, model=model, every_tensor=True)  # fmt: skip
        return params

    def same(a, b):
        return all(np.array_equal(a[k], b[k]) for k in a)

    clipping, never_on = trained(None, 0.0), trained(1e-9, 0.02)
    reached, always_on = trained(3.0, 0.02), trained(None, 0.02)
    assert same(never_on, clipping)
    assert not same(reached, clipping) and not same(always_on, clipping) and not same(reached, always_on)


def test_plot_rejects_an_unknown_metric(tmp_path):
    pytest.importorskip("matplotlib")
    from saf_ref.experiments.campaign import CampaignResult
    from saf_ref.experiments.plots import plot_campaign

    match = r"plot_campaign: metric must be one of \('accuracy', 'rerr'\), got 'err'"
    with pytest.raises(ValueError, match=match):
        plot_campaign(CampaignResult([], [], []), tmp_path / "x.png", metric="err")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------- options checked before any work


@pytest.fixture
def no_work(monkeypatch):
    """Make any loading or training fail the test: the checks must come first."""
    import saf_ref.experiments.demo as demo

    def forbidden(*args, **kwargs):
        raise AssertionError("the demo started working before every option was checked")

    monkeypatch.setattr(demo, "load_dataset", forbidden)
    monkeypatch.setattr(demo, "build_subjects", forbidden)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "0"], "--epochs must be in [1, inf], got 0"),
        (["--trials", "0"], "--trials must be in [1, inf], got 0"),
        (["--trials", "-2"], "--trials must be in [1, inf], got -2"),
        (["--workers", "0"], "--workers must be in [1, inf], got 0"),
        (["--eval-limit", "0"], "--eval-limit must be in [1, inf], got 0"),
        (["--eval-limit", "-5"], "--eval-limit must be in [1, inf], got -5"),
        (["--width", "0"], "--width must be in [1, inf], got 0"),
        (["--seed", "-1"], "--seed must be in [0, inf], got -1"),
        (["--rates", "1e-3", "2"], "--rates must be bit-error rates in [0, 1], got 2.0"),
        (["--rates", "nan"], "--rates must be bit-error rates in [0, 1], got nan"),
        (["--rates", "1e-3", "1e-3"], "--rates must be distinct, got [0.001, 0.001]"),
        (["--model", "mlp"], "--model must be one of ('small_cnn', 'resnet20', 'resnet18_cifar', 'resnet18')"
                             ", optionally followed by '@act_clip=<c>' with c > 0, got 'mlp'"),
        (["--model", "small_cnn@act_clip=-1"], "--model must be one of"),
        (["--data-path", "x.tar.gz"], "--data-path must not be given for --dataset 'digits'"),
        (["--dataset", "mnist5k", "--data-path", "."],
         "--data-path must not be given for --dataset 'mnist5k'"),
        (["--dataset", "cifar10"], "--data-path must be given for --dataset 'cifar10'"),
        (["--dataset", "cifar10", "--data-path", "no/such.tar.gz"],
         "--data-path must be an existing file or folder, got 'no/such.tar.gz'"),
        (["--quick", "--epochs", "0"], "--epochs must be in [1, inf], got 0"),
        (["--quant-setting", "all"], "--quant-setting must be one of ('reference', 'weights'), got 'all'"),
        (["--curriculum-loss", "0"], "--curriculum-loss must be a finite number > 0 or none, got 0.0"),
        (["--curriculum-loss", "inf"], "--curriculum-loss must be a finite number > 0 or none, got inf"),
        (["--curriculum-loss", "off"], "--curriculum-loss must be a real number, got str 'off'"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_errors_naming_the_option(no_work, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"saf-ref demo: error: {message}")
    assert len(err.splitlines()) == 1
    assert "DemoConfig" not in err and "Cosine" not in err and "t_max" not in err
    assert not out.exists()  # nothing was created either


def test_unusable_out_and_checkpoints_are_refused_before_work(no_work, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["--out", str(a_file)], f"--out must be a directory, got the file '{a_file}'"),
        (["--out", str(a_file / "sub")], f"--out must be a writable directory, got '{a_file / 'sub'}'"),
        (["--checkpoints", str(a_file)], f"--checkpoints must be a directory, got the file '{a_file}'"),
    ]
    for argv, message in cases:
        argv = argv if "--out" in argv else ["--out", str(tmp_path / "out"), *argv]
        assert main(["demo", "--quiet", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"saf-ref demo: error: {message}") and len(err.splitlines()) == 1


def test_existing_results_are_refused_without_force(no_work, tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "saf-ref demo: error: --out must not hold results already (use --force to overwrite them, or "
        f"another directory), got '{tmp_path}' with run.json\n"
    )
    assert (tmp_path / "run.json").read_text() == "{}"


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--epochs", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err == "saf-ref demo: error: argument --epochs: invalid int value: 'x' (see 'saf-ref demo --help')\n"
    )


def test_api_config_names_its_fields():
    from saf_ref.experiments.demo import DemoConfig

    with pytest.raises(ValueError, match=r"^DemoConfig: eval_limit must be in \[1, inf\], got 0$"):
        DemoConfig(eval_limit=0)
    with pytest.raises(TypeError, match=r"^DemoConfig: trials must be an integer, got float 2.0$"):
        DemoConfig(trials=2.0)
    with pytest.raises(ValueError, match=r"^DemoConfig: lr must be a finite number > 0, got 0.0$"):
        DemoConfig(lr=0.0)
    with pytest.raises(ValueError, match=r"^DemoConfig: momentum must be in \[0, 1\), got 1.0$"):
        DemoConfig(momentum=1.0)
    with pytest.raises(ValueError, match=r"^DemoConfig: data_path must not be given for dataset 'digits'"):
        DemoConfig(data_path="x")
    with pytest.raises(ValueError, match=r"get_format: "):
        DemoConfig(float_formats=("float7",))
    match = r"^DemoConfig: curriculum_loss must be a finite number > 0 or none, got -1.0$"
    with pytest.raises(ValueError, match=match):
        DemoConfig(curriculum_loss=-1.0)
    assert DemoConfig(curriculum_loss=None).curriculum_loss is None


# ------------------------------------------------------------- data errors, failures and interruptions


def test_refused_cifar_pickle_is_a_one_line_error(tmp_path, capsys):
    import os
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(os.getcwd))  # a reference to a global: refused
    status = main(["demo", "--out", str(tmp_path / "out"), "--dataset", "cifar10", "--data-path", str(folder),
                   "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("saf-ref demo: error: cifar-10-batches-py/data_batch_1: refusing to load global")


def test_cifar_folder_without_batches_is_a_one_line_error(tmp_path, capsys):
    out = str(tmp_path / "out")
    status = main(["demo", "--out", out, "--dataset", "cifar10", "--data-path", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert (
        status == 2 and len(err.splitlines()) == 1 and err.startswith("saf-ref demo: error: load_cifar10: ")
    )


def _rerun(demo_run, out, *extra):
    """The tiny demo again, with the fixture's trained models (no training)."""
    return main(["demo", "--out", str(out), "--checkpoints", str(demo_run / "ckpt"), *TINY, *extra])


def test_force_overwrites_and_clears_an_earlier_run(demo_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("old")
    (out / "trials.jsonl").write_text("old")
    (out / "notes.txt").write_text("mine")
    assert _rerun(demo_run, out, "--force") == 0
    assert (out / "results.json").read_bytes() == (demo_run / "results.json").read_bytes()
    assert not (out / "trials.jsonl").exists()  # the journal of this run is removed once results are written
    assert (out / "notes.txt").read_text() == "mine"  # only the demo's own files are replaced


def test_results_json_holds_no_timings(demo_run):
    from saf_ref.experiments.campaign import SUMMARY_FIELDS

    records = json.loads((demo_run / "results.json").read_text())
    assert all(tuple(r) == SUMMARY_FIELDS for r in records)  # no seconds, dates or hosts
    assert isinstance(json.loads((demo_run / "run.json").read_text())["config"]["seconds"], float)


def test_failed_final_write_keeps_every_completed_trial(demo_run, tmp_path, capsys, monkeypatch):
    from saf_ref.experiments.campaign import CampaignResult, read_journal, summarize

    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CampaignResult, "to_csv", disk_full)
    out = tmp_path / "out"
    assert _rerun(demo_run, out) == 2
    err = capsys.readouterr().err
    assert err == (
        f"saf-ref demo: error: [Errno 28] No space left on device; the completed trials are kept in "
        f"{out / 'trials.jsonl'}\n"
    )
    records = json.loads((out / "results.json").read_text())  # written before the failing file
    assert records == json.loads((demo_run / "results.json").read_text())
    journal = read_journal(out / "trials.jsonl")
    trials = json.loads((demo_run / "run.json").read_text())["trials"]
    assert sorted(journal, key=lambda r: (r["trial"], r["subject"], r["ber"])) == sorted(
        trials, key=lambda r: (r["trial"], r["subject"], r["ber"])
    )
    clean = {
        c["subject"]: c["clean_accuracy"] for c in json.loads((demo_run / "run.json").read_text())["clean"]
    }
    assert summarize(trials, clean) == records  # the journal alone rebuilds results.json


def test_ctrl_c_during_the_sweep_exits_130_and_keeps_partial_results(demo_run, tmp_path, capsys, monkeypatch):
    from saf_ref.experiments.campaign import Journal

    calls = []
    original = Journal.__call__

    def interrupt_on_third(self, records):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        original(self, records)

    monkeypatch.setattr(Journal, "__call__", interrupt_on_third)
    out = tmp_path / "out"
    assert _rerun(demo_run, out, "--workers", "1") == 130
    err = capsys.readouterr().err
    units = 15 * 2  # 15 subjects (see above), 2 trials
    assert err.splitlines()[-1] == (
        f"saf-ref demo: interrupted: 3 of {units} (model, trial) units completed; "
        f"partial results in {out}/results.json and run.json"
    )
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] is True and len(run["trials"]) == 3 * 2  # three units of two rates
    assert sum(r["trials"] for r in json.loads((out / "results.json").read_text())) == 3 * 2


def test_ctrl_c_during_training_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    import saf_ref.experiments.demo as demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "build_subjects", interrupted)
    assert main(["demo", "--out", str(tmp_path / "out"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err == "saf-ref demo: interrupted: during training; nothing was written\n"


def test_ctrl_c_before_the_first_trial_exits_130_and_leaves_no_journal(
    demo_run, tmp_path, capsys, monkeypatch
):
    import saf_ref.experiments.campaign as campaign

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(campaign, "clean_predictions", interrupted)  # the evaluation before any trial
    out = tmp_path / "out"
    assert _rerun(demo_run, out) == 130
    err = capsys.readouterr().err
    assert err == "saf-ref demo: interrupted: before the first trial completed; nothing was written\n"
    assert list(out.iterdir()) == []


def test_real_ctrl_c_in_the_sweep_exits_130_with_one_line_and_results(demo_run, tmp_path):
    """Ctrl-C as a terminal sends it (SIGINT to the whole process group, pool workers included)."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    argv = ["demo", "--out", str(out), "--checkpoints", str(demo_run / "ckpt"), *TINY, "--trials", "300"]
    argv.remove("--quiet")  # the progress lines say when the sweep has started
    proc = subprocess.Popen(
        [sys.executable, "-m", "saf_ref", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        while not proc.stderr.readline().startswith("  trials "):  # progress: units are completing
            assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("saf-ref demo: interrupted: ")
    assert last.endswith(f"of {15 * 300} (model, trial) units completed; partial results in "
                         f"{out / 'results.json'} and run.json")  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] is True and run["trials"]
    assert json.loads((out / "results.json").read_text())
    assert not (out / "trials.jsonl").exists()


@pytest.mark.parametrize("typed,want", [("none", None), ("0.5", 0.5), ("1e-2", 0.01)])
def test_curriculum_loss_option_reaches_the_config(typed, want):
    """``--curriculum-loss none`` is no curriculum (None), a number is the threshold; omitted: the default."""
    from saf_ref.cli import build_parser
    from saf_ref.experiments.demo import config_from_args

    args = build_parser().parse_args(["demo", "--curriculum-loss", typed])
    assert config_from_args(args).curriculum_loss == want
    assert config_from_args(build_parser().parse_args(["demo"])).curriculum_loss == 0.3  # README's tau
