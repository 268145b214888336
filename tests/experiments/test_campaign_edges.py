"""Campaign edge cases found in review: repeated rates, and summaries of records in completion order."""

import itertools
import math

import pytest
from scipy import stats

from saf_ref.data import load_digits
from saf_ref.experiments.campaign import Journal, Subject, read_journal, run_campaign, run_trial, summarize
from saf_ref.nn.small import init_mlp
from saf_ref.protect import default_spec


@pytest.fixture(scope="module")
def subject():
    params, state = init_mlp(64, hidden=(8,), num_classes=10, rng=0)
    return Subject("baseline", "identity", "float32", "mlp", params, state, default_spec("float32"))


@pytest.fixture(scope="module")
def evalset():
    d = load_digits()
    return d.x_test[:97], d.y_test[:97]


@pytest.mark.parametrize("rates", [(1e-2, 1e-2), (0.0, 1e-3, 0.0)])
def test_repeated_rates_are_refused(subject, evalset, rates):
    """A repeated rate gave every trial two identical records, which summarize() counted as two trials
    (``trials`` doubled, the interval shrunk by sqrt(2) with no new information)."""
    x, y = evalset
    with pytest.raises(ValueError, match="run_campaign: rates must be distinct bit-error rates, got"):
        run_campaign([subject], x, y, rates, trials=2, seed=0, executor="serial", progress=False)
    with pytest.raises(ValueError, match="run_trial: rates must be distinct bit-error rates, got"):
        run_trial(subject, x, y, rates, campaign_seed=0, trial=0)


def _t_mean_interval(values):
    """Reference: the mean of the values in trial order (math.fsum: exactly rounded, order-free) and the
    Student-t interval, computed here from scipy's t quantile."""
    n = len(values)
    mean = math.fsum(values) / n
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    return mean, half


def test_summary_does_not_depend_on_record_order(subject, evalset, tmp_path):
    """A Journal holds the records in completion order (it depends on the executor and the number of
    workers); summarize() of any order of the same records must give the same bits as the campaign's own
    summary (it used to sum each cell in the order given: the last bits moved)."""
    x, y = evalset
    result = run_campaign([subject], x, y, (1e-3, 3e-2), trials=6, seed=0, executor="serial", progress=False)
    for row in result.summary:  # the campaign's own summary against an independent reference
        acc = [r["accuracy"] for r in result.trials if r["ber"] == row["ber"]]
        mean, half = _t_mean_interval(acc)
        assert row["trials"] == 6 and abs(row["accuracy_mean"] - mean) <= 1e-15
        assert abs(row["accuracy_ci_high"] - min(1.0, mean + half)) <= 1e-12
    # Every order in which six trials can complete (units of one subject: one per trial).
    orders = list(itertools.permutations(range(6)))
    for order in orders[:: max(1, len(orders) // 120)] + [(0, 1, 5, 2, 3, 4), (5, 4, 3, 2, 1, 0)]:
        journal = Journal(tmp_path / "trials.jsonl")
        for t in order:
            journal([r for r in result.trials if r["trial"] == t])
        rebuilt = summarize(read_journal(journal.path), {subject.key: result.clean[0]["clean_accuracy"]})
        assert rebuilt == result.summary, order


def test_an_empty_evaluation_set_is_refused(subject, evalset):
    """With no example every accuracy is 0/0: the campaign used to run every trial, return NaN means and
    fail only when writing its JSON (strict JSON has no NaN)."""
    x, y = evalset
    empty = r"x must hold at least one example, got shape \(0, 1, 8, 8\)"
    with pytest.raises(ValueError, match="run_campaign: " + empty):
        run_campaign([subject], x[:0], y[:0], (1e-3,), trials=1, seed=0, executor="serial", progress=False)
    with pytest.raises(ValueError, match="run_trial: " + empty):
        run_trial(subject, x[:0], y[:0], (1e-3,), campaign_seed=0, trial=0)


def test_rates_may_be_a_1d_array_with_the_same_results(subject, evalset):
    import numpy as np

    x, y = evalset
    rates = [1e-3, 1e-2]

    def run(r):
        return run_campaign([subject], x, y, r, trials=2, seed=0, executor="serial", progress=False)

    as_list, as_array = run(rates), run(np.array(rates))
    assert as_array.trials == as_list.trials and as_array.summary == as_list.summary
    with pytest.raises(ValueError, match=r"run_campaign: rates must be .* \(1-D\), got an array of shape"):
        run(np.array([rates]))


def test_weight_sdc_refuses_repeated_rates_like_run_campaign(subject, evalset):
    from saf_ref.experiments.sdc import run_weight_sdc

    x, y = evalset
    with pytest.raises(ValueError, match="run_weight_sdc: rates must be distinct bit-error rates, got"):
        run_weight_sdc([subject], x, y, (1e-2, 1e-2), trials=1, seed=0, executor="serial")


def test_inject_nested_takes_an_array_of_rates():
    import numpy as np

    from saf_ref.protect import inject_nested, store

    params, _ = init_mlp(64, hidden=(8,), num_classes=10, rng=0)
    stored = store(params, default_spec("float16"))
    rates = [1e-3, 1e-2]
    a, b = inject_nested(stored, rates, rng=4), inject_nested(stored, np.array(rates), rng=4)
    for x_, y_ in zip(a, b, strict=True):
        assert x_.faults.to_json() == y_.faults.to_json()


def test_sdc_runs_refuse_an_empty_evaluation_set_like_run_campaign(subject, evalset):
    """They failed with NumPy's bare 'need at least one array to concatenate' after building the units."""
    from saf_ref.experiments.sdc import run_activation_sdc, run_weight_sdc

    x, y = evalset
    empty = r"x must hold at least one example, got shape \(0, 1, 8, 8\)"
    with pytest.raises(ValueError, match="run_weight_sdc: " + empty):
        run_weight_sdc([subject], x[:0], y[:0], (1e-2,), trials=1, seed=0, executor="serial")
    with pytest.raises(ValueError, match="run_activation_sdc: " + empty):
        run_activation_sdc("mlp", subject.params, subject.state, x[:0], y[:0], rates=(1e-2,), trials=1,
                           seed=0, executor="serial")  # fmt: skip
