"""Fault campaigns: determinism, executor independence, trial re-runs, metrics against direct computation."""

import concurrent.futures as cf
import csv
import json

import numpy as np
import pytest

from saf_ref.bits import Quantizer
from saf_ref.data import load_digits
from saf_ref.experiments.campaign import (
    SUMMARY_FIELDS,
    Journal,
    Subject,
    is_chance_level,
    predict,
    read_journal,
    run_campaign,
    run_trial,
    summarize,
    trial_rng,
)
from saf_ref.nn.small import init_mlp, mlp_forward
from saf_ref.protect import default_spec, inject_nested, load, store
from saf_ref.train.loop import train

RATES = (0.0, 1e-4, 1e-3, 1e-2)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def subjects(digits):
    params, state = init_mlp(64, hidden=(32,), num_classes=10, rng=0)
    params, state, _ = train(
        params, state, digits, model="mlp", epochs=2, batch_size=64, rng=1, augment=None, verbose=False
    )
    out = []
    for fmt in ("float32", "float16", "q2.5"):
        out.append(Subject("baseline", "identity", fmt, "mlp", params, state, default_spec(fmt)))
    out.append(Subject("saf", "tanh", "float32", "mlp", params, state, default_spec("float32", "tanh")))
    quant = Quantizer(8, scheme="asymmetric", code="offset_binary", rounding="nearest_even", margin=1e-3)
    out.append(Subject("robust_quant", "identity", "quant8", "mlp", params, state, default_spec(quant)))
    return out


def _campaign(subjects, digits, **kw):
    kw.setdefault("progress", False)
    return run_campaign(subjects, digits.x_test[:120], digits.y_test[:120], RATES, trials=3, seed=11, **kw)


def test_results_identical_for_any_executor(subjects, digits):
    serial = _campaign(subjects, digits, executor="serial")
    pool = _campaign(subjects, digits, executor="process", max_workers=2)
    with cf.ThreadPoolExecutor(max_workers=3) as threads:
        threaded = _campaign(subjects, digits, executor=threads)
    assert serial.trials == pool.trials == threaded.trials
    assert serial.summary == pool.summary == threaded.summary
    assert len(serial.trials) == len(subjects) * 3 * len(RATES)


def test_single_trial_rerun_alone_matches_campaign(subjects, digits):
    result = _campaign(subjects, digits, executor="serial")
    x, y = digits.x_test[:120], digits.y_test[:120]
    for subject in (subjects[1], subjects[4]):
        alone = run_trial(subject, x, y, RATES, campaign_seed=11, trial=2)
        inside = [r for r in result.trials if r["trial"] == 2 and r["subject"] == subject.key]
        assert alone == inside


def test_trial_metrics_match_direct_computation(subjects, digits):
    """Recompute one trial by hand: nested faults from the trial's generator, load, forward, compare."""
    subject = subjects[0]
    x, y = digits.x_test[:120], digits.y_test[:120]
    records = run_trial(subject, x, y, RATES, campaign_seed=5, trial=1)
    clean_params = load(store(subject.params, subject.spec))
    clean_pred = np.argmax(mlp_forward(clean_params, subject.state, x, train=False)[0], axis=1)
    faulty = inject_nested(store(subject.params, subject.spec), list(RATES), rng=trial_rng(5, 1))
    for rec, (stored, _) in zip(records, faulty, strict=True):
        with np.errstate(all="ignore"):
            logits = mlp_forward(load(stored), subject.state, x, train=False)[0]
        finite = np.all(np.isfinite(logits), axis=1)
        pred = np.where(finite, np.argmax(logits, axis=1), -1)
        assert rec["accuracy"] == pytest.approx(np.mean(pred == y), abs=0)
        assert rec["rerr"] == pytest.approx(np.mean((pred != y) | (clean_pred != y)), abs=0)
        assert rec["nonfinite"] == (not finite.all())
    assert records[0]["accuracy"] == pytest.approx(np.mean(clean_pred == y), abs=0)  # rate 0 = clean
    assert records[0]["rerr"] == pytest.approx(np.mean(clean_pred != y), abs=0)


def test_rerr_is_monotone_in_rate_because_patterns_are_nested(subjects, digits):
    result = _campaign(subjects[:1], digits, executor="serial")
    for trial in range(3):
        rerr = [r["rerr"] for r in result.trials if r["trial"] == trial]
        assert rerr == sorted(rerr)  # nested faults: an example wrong at p1 stays counted at p2 >= p1


def test_summarize_against_hand_computation():
    trials = [
        {
            "subject": "a",
            "method": "m",
            "transform": "t",
            "format": "f",
            "ber": 0.1,
            "trial": t,
            "accuracy": acc,
            "rerr": rerr,
            "nonfinite": nf,
            "n": 10,
        }
        for t, (acc, rerr, nf) in enumerate([(0.5, 0.6, False), (0.7, 0.7, True), (0.6, 0.8, False)])
    ]
    (row,) = summarize(trials, {"a": 0.9})
    assert row["trials"] == 3 and row["clean_accuracy"] == 0.9
    assert row["accuracy_mean"] == pytest.approx(0.6)
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t_{0.975, 2} * sample std / sqrt(n)
    assert row["accuracy_ci_low"] == pytest.approx(0.6 - half)
    assert row["accuracy_ci_high"] == pytest.approx(min(1.0, 0.6 + half))
    assert row["rerr_mean"] == pytest.approx(0.7)
    assert row["nonfinite_fraction"] == pytest.approx(1 / 3)
    assert 0 < row["nonfinite_ci_low"] < 1 / 3 < row["nonfinite_ci_high"] < 1


def test_summarize_validation():
    with pytest.raises(TypeError, match="summarize: trials must be a sequence of records .*, got NoneType"):
        summarize(None)
    with pytest.raises(
        ValueError,
        match=r"summarize: trials\[0\] must be a record with the keys .*, got "
        r"\['ber', 'subject'\]",
    ):
        summarize([{"subject": "a", "ber": 0.1}])
    with pytest.raises(ValueError, match=r"summarize: trials\[0\] must be a record .*, got str"):
        summarize(["abc"])
    rec = {"subject": "a", "method": "m", "transform": "t", "format": "f", "ber": 0.1, "accuracy": 0.5,
           "rerr": 0.6, "nonfinite": False}  # fmt: skip
    with pytest.raises(TypeError, match="summarize: clean must be a dict of subject -> accuracy or None"):
        summarize([rec], [0.9])
    assert summarize([]) == []


def test_outputs_csv_and_json(subjects, digits, tmp_path):
    result = _campaign(subjects[:2], digits, executor="serial")
    result.to_csv(tmp_path / "r.csv")
    result.to_json(tmp_path / "r.json")
    result.to_run_json(tmp_path / "run.json")
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SUMMARY_FIELDS and len(rows) == 2 * len(RATES)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert isinstance(doc, list) and doc == json.loads(json.dumps(result.summary))
    for key in (
        "method",
        "transform",
        "format",
        "ber",
        "trials",
        "accuracy_mean",
        "accuracy_ci_low",
        "accuracy_ci_high",
        "rerr_mean",
        "nonfinite_fraction",
        "clean_accuracy",
    ):
        assert key in doc[0]
    run = json.loads((tmp_path / "run.json").read_text())
    assert [c["subject"] for c in run["clean"]] == [s.key for s in subjects[:2]]
    assert run["trials"] == json.loads(json.dumps(result.trials)) and run["interrupted"] is False


def test_interrupt_keeps_completed_trials(subjects, digits):
    seen = []

    def stop_after_two(records):
        seen.append(records)
        if len(seen) == 2:
            raise KeyboardInterrupt

    result = _campaign(subjects[:2], digits, executor="serial", on_result=stop_after_two)
    assert result.interrupted
    assert len(result.trials) == 2 * len(RATES)
    full = _campaign(subjects[:2], digits, executor="serial")
    assert result.trials == [r for r in full.trials if r["trial"] == 0]


def test_interrupt_with_an_executor_cancels_pending_units(subjects, digits):
    """The executor branch: Ctrl-C while collecting cancels what has not started and keeps what finished."""
    seen = []

    def stop_after_two(records):
        seen.append(records)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with cf.ThreadPoolExecutor(max_workers=1) as one_thread:  # completes units in submission order
        result = _campaign(subjects[:2], digits, executor=one_thread, on_result=stop_after_two)
    assert result.interrupted
    full = _campaign(subjects[:2], digits, executor="serial")
    assert result.trials == [r for r in full.trials if r["trial"] == 0]
    assert len(result.summary) == 2 * len(RATES) and all(row["trials"] == 1 for row in result.summary)


def test_journal_holds_every_unit_as_it_completes(subjects, digits, tmp_path):
    path = tmp_path / "trials.jsonl"
    lines_seen = []
    journal = Journal(path)

    def journal_and_count(records):
        journal(records)
        lines_seen.append(len(path.read_text().splitlines()))  # on disk the moment the unit completes

    result = _campaign(subjects[:2], digits, executor="serial", on_result=journal_and_count)
    assert lines_seen == [len(RATES) * k for k in range(1, 2 * 3 + 1)]
    assert read_journal(path) == json.loads(json.dumps(result.trials))  # serial: the same order
    assert Journal(path) and path.read_text() == ""  # a new journal starts empty


def test_read_journal_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "trials.jsonl"
    records = [{"subject": "a", "ber": 0.1, "accuracy": 0.5}, {"subject": "b", "ber": 0.1, "accuracy": 1.0}]
    Journal(path)(records)
    with open(path, "a") as fh:
        fh.write('{"subject": "c", "be')  # a crash in the middle of the next write
    assert read_journal(path) == records


def test_journal_validation(tmp_path):
    with pytest.raises(TypeError, match="Journal: path must be a str or path-like, got int 3"):
        Journal(3)
    with pytest.raises(TypeError, match="read_journal: path must be a str or path-like, got NoneType"):
        read_journal(None)


def test_bad_executor_is_refused_before_any_evaluation(subjects, digits, monkeypatch):
    import saf_ref.experiments.campaign as campaign

    def forbidden(*args, **kwargs):
        raise AssertionError("evaluated before checking the executor")

    monkeypatch.setattr(campaign, "clean_predictions", forbidden)
    with pytest.raises(TypeError, match="run_campaign: executor must be 'process', 'serial', None or a"):
        _campaign(subjects[:1], digits, executor=object())


def test_trial_rng_is_seed_sequence_child():
    a = trial_rng(3, 4).integers(0, 2**32, size=4)
    b = np.random.default_rng(np.random.SeedSequence(3).spawn(5)[4]).integers(0, 2**32, size=4)
    assert np.array_equal(a, b)


def test_is_chance_level():
    assert is_chance_level(0.1, 10, 1000)
    assert not is_chance_level(0.5, 10, 1000)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"rates": ()}, ValueError, "rates must be a non-empty sequence"),
        ({"rates": (0.1, 1.5)}, ValueError, r"rates\[1\] must be a probability"),
        ({"trials": 0}, ValueError, "trials must be in"),
        ({"seed": -1}, ValueError, "seed must be in"),
        ({"executor": "gpu"}, TypeError, "executor must be"),
        ({"subjects": []}, ValueError, "subjects must be a non-empty sequence"),
        ({"subjects": ["x"]}, TypeError, r"subjects\[0\] must be a Subject"),
        ({"rates": 0.1}, TypeError, "run_campaign: rates must be a non-empty sequence of .*, got float"),
        ({"x": [[0.0]] * 10}, TypeError, "run_campaign: x must be a numpy.ndarray, got list"),
        ({"y": list(range(10))}, TypeError, "run_campaign: y must be a numpy.ndarray, got list"),
        ({"y": np.zeros(10)}, TypeError, "run_campaign: y must have an integer dtype .*, got float64"),
        ({"y": np.zeros((10, 1), int)}, ValueError, r"run_campaign: y must be 1-dimensional \(N,\)"),
        ({"y": np.zeros(9, int)}, ValueError, r"y.shape\[0\] \(=9\) must equal x.shape\[0\] \(=10\)"),
        ({"max_workers": 0}, ValueError, r"run_campaign: max_workers must be in \[1, inf\], got 0"),
        ({"progress": 1}, TypeError, "run_campaign: progress must be a bool, got int 1"),
        ({"confidence": 1.0}, ValueError, r"run_campaign: confidence must be in \(0, 1\), got 1.0"),
        ({"confidence": "0.9"}, TypeError, "run_campaign: confidence must be a real number"),
        ({"on_result": "print"}, TypeError, "run_campaign: on_result must be callable or None, got str"),
    ],
)
def test_bad_input(subjects, digits, kwargs, exc, match):
    args = {"subjects": subjects[:1], "rates": RATES, "trials": 1, "seed": 0, "executor": "serial",
            "x": digits.x_test[:10], "y": digits.y_test[:10], "progress": False}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        run_campaign(args.pop("subjects"), args.pop("x"), args.pop("y"), args.pop("rates"), **args)


def test_subject_validation(subjects):
    good = subjects[0]
    base = dict(method=good.method, transform=good.transform, format=good.format, model=good.model,
                params=good.params, state=good.state, spec=good.spec)  # fmt: skip
    for change, exc, match in (
        ({"method": None}, TypeError, "Subject: method must be a str, got NoneType"),
        ({"label": 3}, TypeError, "Subject: label must be a str, got int 3"),
        ({"model": "resnet99"}, ValueError, "Subject: .*resnet99"),  # fails here, not in a worker
        ({"params": [1.0]}, TypeError, "Subject: params must be a dict"),
        ({"params": {"fc.weight": np.zeros((2, 2), int)}}, TypeError, r"Subject: params\['fc.weight'\] must"),
        ({"state": None}, TypeError, "Subject: state must be a dict of str -> ndarray, got NoneType"),
        ({"spec": "float32"}, TypeError, "Subject: spec must be a StorageSpec, got str"),
        ({"nonfinite": "nan"}, ValueError, "Subject: nonfinite must be one of"),
    ):
        with pytest.raises(exc, match=match):
            Subject(**{**base, **change})


def test_run_trial_and_predict_validation(subjects, digits):
    x, y = digits.x_test[:10], digits.y_test[:10]
    with pytest.raises(TypeError, match="run_trial: subject must be a Subject, got dict"):
        run_trial({}, x, y, RATES, campaign_seed=0, trial=0)
    with pytest.raises(ValueError, match=r"run_trial: y.shape\[0\] \(=9\) must equal x.shape\[0\] \(=10\)"):
        run_trial(subjects[0], x, y[:9], RATES, campaign_seed=0, trial=0)
    with pytest.raises(ValueError, match=r"run_trial: rates\[0\] must be a probability"):
        run_trial(subjects[0], x, y, [2.0], campaign_seed=0, trial=0)
    with pytest.raises(ValueError, match=r"trial_rng: campaign_seed must be in \[0, inf\], got -1"):
        run_trial(subjects[0], x, y, RATES, campaign_seed=-1, trial=0)
    with pytest.raises(ValueError, match=r"trial_rng: trial must be in \[0, inf\], got -3"):
        run_trial(subjects[0], x, y, RATES, campaign_seed=0, trial=-3)
    with pytest.raises(ValueError, match=r"run_trial: clean must have shape \(10,\), got \(9,\)"):
        run_trial(subjects[0], x, y, RATES, campaign_seed=0, trial=0, clean=np.zeros(9, int))
    with pytest.raises(TypeError, match="predict: x must be a numpy.ndarray, got list"):
        predict("mlp", subjects[0].params, subjects[0].state, [[0.0]])
    with pytest.raises(ValueError, match=r"predict: batch_size must be in \[1, inf\], got 0"):
        predict("mlp", subjects[0].params, subjects[0].state, x, batch_size=0)
    with pytest.raises(TypeError, match="trial_rng: trial must be an integer, got float"):
        trial_rng(0, 1.0)


def test_progress_display_on_a_log_stream(subjects, digits, capsys):
    _campaign(subjects[:1], digits, executor="serial", progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # 3 trials of one subject: stderr is not a terminal here, so one line per tenth of the work.
    assert len(lines) == 3
    assert lines[-1].startswith("  trials 3/3") and "elapsed" in lines[-1] and "trial 2" in lines[-1]


def test_duplicate_subject_keys_rejected(subjects, digits):
    with pytest.raises(ValueError, match="subject keys must be unique"):
        run_campaign(
            [subjects[0], subjects[0]],
            digits.x_test[:10],
            digits.y_test[:10],
            RATES,
            trials=1,
            seed=0,
            executor="serial",
            progress=False,
        )


_CTRL_C_SCRIPT = """
import json, sys
from saf_ref.data import load_digits
from saf_ref.experiments.campaign import Subject, run_campaign
from saf_ref.nn.small import init_mlp
from saf_ref.protect import default_spec

d = load_digits()
params, state = init_mlp(64, hidden=(16,), num_classes=10, rng=0)
subject = Subject("baseline", "identity", "float32", "mlp", params, state, default_spec("float32"))
# One write per line: print() writes "unit" and "\\n" apart, and a Ctrl-C between the two left the summary
# below on the same line as a "unit" (the test then failed to parse it, now and then under load).
on_result = lambda records: (sys.stdout.write("unit\\n"), sys.stdout.flush())
r = run_campaign([subject], d.x_test, d.y_test, (1e-3,), trials=100000, seed=0, max_workers=2,
                 progress=False, on_result=on_result)
print(json.dumps({"interrupted": r.interrupted, "records": len(r.trials)}), flush=True)
"""


def test_real_ctrl_c_stops_a_process_pool_campaign_without_worker_tracebacks(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: workers, too."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "campaign.py"
    script.write_text(_CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, as under `&`
    )
    try:
        for _ in range(5):  # the pool is up and units are completing
            assert proc.stdout.readline() == "unit\n"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    summary = json.loads(out.splitlines()[-1])
    assert summary["interrupted"] is True and 5 <= summary["records"] < 100000


def test_write_atomic_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    from saf_ref.experiments.campaign import write_atomic

    path = tmp_path / "results.json"
    write_atomic(path, "old")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


def test_rows_to_csv_reads_back_with_the_csv_module():
    import csv
    import io

    from saf_ref.experiments.campaign import rows_to_csv

    rows = [{"a": 1, "b": "x,y"}, {"a": 2.5, "b": None}]
    read_back = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert read_back == [{"a": "1", "b": "x,y"}, {"a": "2.5", "b": ""}]
    assert rows_to_csv([]) == ""  # no rows and no columns: no header either
    # named columns: only those keys, a missing one empty, a header even without rows
    chosen = rows_to_csv([{"a": 1, "b": 2, "c": 3}], ("c", "a", "d"))
    assert chosen == "c,a,d\n3,1,\n"
    assert rows_to_csv([], ("a",)) == "a\n"
    with pytest.raises(ValueError):  # by default every row has only the first row's keys
        rows_to_csv([{"a": 1}, {"a": 2, "z": 3}])
