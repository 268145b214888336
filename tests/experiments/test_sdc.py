"""Golden-run classification and the SDC campaigns: against a naive loop, run_campaign, any executor."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest

from saf_ref.data import load_digits
from saf_ref.experiments.campaign import Subject, run_campaign
from saf_ref.experiments.sdc import (
    ActivationCell,
    activation_trial,
    classify,
    golden_top1,
    outcome_counts,
    run_activation_sdc,
    run_weight_sdc,
)
from saf_ref.faults_act import activation_taps
from saf_ref.nn.small import init_mlp, init_small_cnn
from saf_ref.protect import default_spec
from saf_ref.train.loop import train


def _naive(golden, logits):
    """Loop version of the definitions in the module docstring."""
    out = []
    for g, z in zip(golden, logits, strict=True):
        if not all(np.isfinite(v) for v in z):
            out.append(("detected", False))
            continue
        best = max(range(len(z)), key=lambda c: (z[c], -c))  # largest logit, lowest index on ties
        top5 = sorted(range(len(z)), key=lambda c: (-z[c], c))[:5]
        out.append(("masked" if best == g else "sdc", g not in top5))
    return out


@pytest.mark.parametrize("classes", [3, 10, 12])
def test_classify_matches_a_naive_loop(classes):
    rng = np.random.default_rng(classes)
    logits = rng.integers(-3, 4, size=(400, classes)).astype(np.float32)  # many ties
    logits[rng.random(400) < 0.1, rng.integers(0, classes)] = np.nan
    logits[rng.random(400) < 0.05, 0] = -np.inf
    golden = rng.integers(-1, classes, size=400)
    o = classify(golden, logits)
    ref = _naive(golden, logits)
    for name in ("masked", "sdc", "detected"):
        assert o.__getattribute__(name).tolist() == [r[0] == name for r in ref]
    if classes >= 10:
        assert o.sdc_top5.tolist() == [r[0] != "detected" and r[1] for r in ref]
        assert not np.any(o.sdc_top5 & ~o.sdc)
    else:
        assert o.sdc_top5 is None
    c = outcome_counts(golden, logits)
    assert c["masked"] + c["sdc"] + c["detected"] == c["n"] == 400
    assert golden_top1(logits).tolist() == [
        -1 if r[0] == "detected" else int(np.argmax(z)) for r, z in zip(ref, logits, strict=True)
    ]


def test_classify_errors():
    with pytest.raises(TypeError, match="golden must hold integer classes"):
        classify(np.zeros(2), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="golden"):
        classify(np.zeros(3, np.int64), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="logits"):
        classify(np.zeros(2, np.int64), np.zeros(2, np.float32))


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def mlp(digits):
    params, state = init_mlp(64, hidden=(32,), num_classes=10, rng=0)
    params, state, _ = train(params, state, digits, model="mlp", epochs=2, batch_size=64, rng=1, augment=None,
                             verbose=False)  # fmt: skip
    return params, state


def test_weight_sdc_has_run_campaigns_accuracies_and_consistent_counts(mlp, digits):
    params, state = mlp
    subjects = [
        Subject("baseline", "identity", f, "mlp", params, state, default_spec(f)) for f in ("float32", "q2.5")
    ]
    x, y, rates = digits.x_test[:100], digits.y_test[:100], (0.0, 1e-3, 1e-2)
    ours = run_weight_sdc(subjects, x, y, rates, trials=3, seed=4, executor="serial")
    theirs = run_campaign(subjects, x, y, rates, trials=3, seed=4, executor="serial", progress=False)
    key = lambda r: (r["subject"], r["ber"], r["trial"])  # noqa: E731
    ref = {key(r): r for r in theirs.trials}
    assert len(ours.records) == len(ref)
    for r in ours.records:
        for field in ("accuracy", "rerr", "nonfinite"):
            assert r[field] == ref[key(r)][field]
        assert r["masked"] + r["sdc"] + r["detected"] == r["n"] == 100
        if r["ber"] == 0.0:
            assert r["masked"] == 100
    row = next(r for r in ours.summary if r["ber"] == 1e-2 and r["format"] == "float32")
    assert row["sdc_ci_low"] <= row["sdc_rate"] <= row["sdc_ci_high"] and row["n"] == 300
    assert [g["clean_accuracy"] for g in ours.golden] == [c["clean_accuracy"] for c in theirs.clean]


def _act(digits, executor, **kw):
    params, state = init_small_cnn(width=4, rng=3)
    kw.setdefault("max_workers", None)
    return run_activation_sdc("small_cnn", params, state, digits.x_test[:60], digits.y_test[:60],
                              layers=["relu1", "relu3"], formats=("float16", "int8"), rates=(0.0, 1e-3, 3e-2),
                              trials=2, seed=9, executor=executor, batch_size=25, **kw)  # fmt: skip


def test_activation_sdc_identical_for_any_executor_and_worker_count(digits):
    serial = _act(digits, "serial")
    pool = _act(digits, "process", max_workers=2)
    with cf.ThreadPoolExecutor(max_workers=3) as threads:
        threaded = _act(digits, threads)
    assert serial.records == pool.records == threaded.records
    assert serial.summary == pool.summary == threaded.summary
    assert len(serial.records) == 2 * 2 * 3 * 2
    for r in serial.records:
        assert r["masked"] + r["sdc"] + r["detected"] == r["n"] == 60
        if r["ber"] == 0.0:
            assert (r["masked"], r["flips"]) == (60, 0)
    assert any(r["sdc"] > 0 for r in serial.records)
    # one unit re-run alone gives its record
    params, state = init_small_cnn(width=4, rng=3)
    index = 4  # cells: format, layer, rate -> float16 / relu3 / 1e-3
    cell = ActivationCell("relu3", "float16", 1e-3, None)
    golden = golden_top1(_golden_logits(params, state, digits, cell))
    alone = activation_trial("small_cnn", params, state, digits.x_test[:60], digits.y_test[:60], cell,
                             taps=activation_taps("small_cnn"), campaign_seed=9, cell_index=index, trial=1,
                             golden=golden, batch_size=25)  # fmt: skip
    assert alone == next(r for r in serial.records if (r["layer"], r["format"], r["ber"], r["trial"]) ==
                         ("relu3", "float16", 1e-3, 1))  # fmt: skip


def _golden_logits(params, state, digits, cell):
    from saf_ref.experiments.sdc import predict_logits
    from saf_ref.faults_act import ActivationFaults

    clean = ActivationFaults(cell.layer, taps="small_cnn", format=cell.format, p=0.0, rng=0)
    return predict_logits("small_cnn", params, state, digits.x_test[:60], activation_faults=clean)


def test_activation_sdc_per_bit_cells(digits):
    params, state = init_small_cnn(width=4, rng=3)
    x, y = digits.x_test[:30], digits.y_test[:30]
    res = run_activation_sdc("small_cnn", params, state, x, y, layers="relu2", formats=("int8",),
                             rates=(0.05,), per_bit=True, trials=1, seed=0, executor="serial")  # fmt: skip
    assert [r["bit"] for r in res.summary] == list(range(8))
    # the sign bit of a ReLU output's two's complement code makes it negative: the most damaging bit
    # is at the top, a flip of bit 0 (one quantization step) almost never changes a prediction
    assert res.summary[0]["sdc_rate"] <= res.summary[6]["sdc_rate"]


def test_activation_sdc_errors(digits):
    params, state = init_small_cnn(width=4, rng=3)
    x, y = digits.x_test[:10], digits.y_test[:10]
    run = lambda **kw: run_activation_sdc("small_cnn", params, state, x, y, **{"rates": (0.1,), "trials": 1,  # noqa: E731
                                                                             "seed": 0, **kw})  # fmt: skip
    with pytest.raises(ValueError, match=r"taps of the model \(relu1, relu2, relu3.*got 'layer1.0.relu1'"):
        run(layers="layer1.0.relu1")
    with pytest.raises(ValueError, match="format must be an IEEE format name"):
        run(formats=("float17",))
    with pytest.raises(TypeError, match="formats must hold format names"):
        run(formats=(3,))
    with pytest.raises(ValueError, match="rates\\[0\\] must be"):
        run(rates=(-0.1,))
    with pytest.raises(ValueError, match="rates must be a non-empty sequence"):
        run(rates=())
    with pytest.raises(TypeError, match="rates must be a non-empty sequence"):
        run(rates=0.1)
    with pytest.raises(ValueError, match="y must hold one integer label per image"):
        run_activation_sdc("small_cnn", params, state, x, y[:5], rates=(0.1,), trials=1, seed=0)
    with pytest.raises(TypeError, match="per_bit"):
        run(per_bit=1)
    with pytest.raises(TypeError, match="executor must be"):
        run(executor="threads")
    with pytest.raises(ValueError, match="trials"):
        run(trials=0)
    with pytest.raises(ValueError, match="model must be one of"):
        run_activation_sdc("vgg", params, state, x, y, rates=(0.1,), trials=1, seed=0)


def test_layer_vulnerability_plot_draws_the_summary_rates(digits, tmp_path):
    pytest.importorskip("matplotlib")
    from saf_ref.experiments.plots import plot_layer_vulnerability

    res = _act(digits, "serial")
    layers, formats, drawn = plot_layer_vulnerability(res.summary, tmp_path / "v.png")
    assert (tmp_path / "v.png").stat().st_size > 1000
    assert layers == ["relu1", "relu3"] and formats == ["float16", "int8"]
    for r in res.summary:
        if r["ber"] == 3e-2:
            assert drawn[formats.index(r["format"]), layers.index(r["layer"])] == r["sdc_rate"]
    _, _, at_zero = plot_layer_vulnerability(res.summary, tmp_path / "z.png", ber=0.0, outcome="masked")
    assert np.all(at_zero == 1.0)
    with pytest.raises(ValueError, match="outcome must be one of"):
        plot_layer_vulnerability(res.summary, tmp_path / "x.png", outcome="sdc5")
    with pytest.raises(ValueError, match="ber must be one of the summary's rates"):
        plot_layer_vulnerability(res.summary, tmp_path / "x.png", ber=0.5)
    with pytest.raises(ValueError, match="summary must hold activation-campaign rows"):
        plot_layer_vulnerability([], tmp_path / "x.png")


def test_weight_sdc_errors(mlp, digits):
    params, state = mlp
    x, y = digits.x_test[:10], digits.y_test[:10]
    good = Subject("baseline", "identity", "float32", "mlp", params, state, default_spec("float32"))
    with pytest.raises(ValueError, match="subjects must be a non-empty sequence of Subject"):
        run_weight_sdc([], x, y, (0.1,), trials=1, seed=0)
    with pytest.raises(TypeError, match="subjects\\[1\\] must be a Subject"):
        run_weight_sdc([good, "mlp"], x, y, (0.1,), trials=1, seed=0)
    with pytest.raises(ValueError, match="rates\\[0\\] must be"):
        run_weight_sdc([good], x, y, (1.5,), trials=1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        run_weight_sdc([good], x, y, (0.1,), trials=1, seed=-1)
