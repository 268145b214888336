"""Golden-run classification: masked, silent data corruption (SDC) or detected, per example and trial.

Fault-injection tools (PyTorchFI, TensorFI2, GoldenEye, MRFI) compare every faulty run with the clean
("golden") run of the same inputs, example by example. With ``g_i`` the golden top-1 class of example
``i`` and ``z_i`` the faulty run's logits:

- **detected**: some logit of ``z_i`` is NaN or infinite (a check on the outputs would catch it);
- **SDC**: ``z_i`` is finite and its top-1 class differs from ``g_i`` (the prediction changed silently);
- **masked**: ``z_i`` is finite and its top-1 class is ``g_i`` (the fault had no visible effect);
- **SDC-top5** (only with at least 10 classes): ``z_i`` is finite and ``g_i`` is not among its 5 largest
  logits, a subset of SDC.

so ``masked + sdc + detected = n`` for every trial. Ties go to the lower class index (``np.argmax``, and
a stable sort for the top 5). A golden row that is itself not finite has top-1 ``-1``: any finite faulty
output then counts as SDC.

Two campaigns report it, both deterministic for a seed and identical for any executor and worker count:

- :func:`run_weight_sdc`: the stored-weight campaign of :mod:`saf_ref.experiments.campaign` (the same
  trial generators and nested fault patterns, hence the same accuracies as
  :func:`~saf_ref.experiments.campaign.run_trial`), with the golden comparison added; the golden run is
  the stored model read back without faults.
- :func:`run_activation_sdc`: activation faults (:class:`saf_ref.faults_act.ActivationFaults`), one cell
  per (format, layer, rate[, bit position]); the golden run of a cell is the same model with the same
  layer stored in the same format at rate 0, so that the format's rounding alone is never counted as a
  corruption. The unit (cell, trial) draws from ``default_rng(SeedSequence(seed, spawn_key=(trial,
  cell)))``.

Summaries (:func:`summarize_outcomes`) give each rate with an interval
(:func:`~saf_ref.experiments.stats.pooled_rate_interval`): weight faults share one faulty model among
the examples of a trial (clustered: a t-interval over trials); activation faults are drawn independently
for every example's activations (Wilson on the pooled counts).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.determinism import blas_threads_pinned
from saf_ref.experiments.campaign import Subject, run_units, trial_rng
from saf_ref.experiments.stats import mean_interval, pooled_rate_interval
from saf_ref.faults_act import ActivationFaults, activation_format, activation_taps, select_taps
from saf_ref.nn.registry import model_fns
from saf_ref.protect.storage import inject_nested, load, store

__all__ = [
    "OUTCOMES",
    "OUTCOME_FIELDS",
    "TOP5_MIN_CLASSES",
    "ActivationCell",
    "Outcomes",
    "SDCResult",
    "activation_cells",
    "classify",
    "golden_top1",
    "outcome_counts",
    "predict_logits",
    "run_activation_sdc",
    "run_weight_sdc",
    "summarize_outcomes",
]

OUTCOMES = ("masked", "sdc", "detected")
#: SDC-top5 is reported for models with at least this many classes (None below).
TOP5_MIN_CLASSES = 10
#: The per-trial count fields of every record (``sdc_top5`` may be None).
OUTCOME_FIELDS = ("n", "masked", "sdc", "sdc_top5", "detected")


class Outcomes(NamedTuple):
    """Per-example outcome masks, shape (N,) each; ``sdc_top5`` is None below :data:`TOP5_MIN_CLASSES`."""

    masked: np.ndarray
    sdc: np.ndarray
    sdc_top5: np.ndarray | None
    detected: np.ndarray


def _check_logits(logits: Any, name: str, fn: str) -> np.ndarray:
    validation.check_ndarray(logits, name, fn)
    validation.check_float(logits, name, fn)
    validation.check_ndim(logits, name, fn, 2, "(N, num_classes)")
    return logits


def golden_top1(logits: np.ndarray) -> np.ndarray:
    """The golden top-1 class of each row of ``logits`` (N, C): ``argmax``, or -1 for a non-finite row."""
    fn = "golden_top1"
    _check_logits(logits, "logits", fn)
    finite = np.all(np.isfinite(logits), axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(finite, np.argmax(logits, axis=1), -1).astype(np.int64)


def classify(golden: np.ndarray, logits: np.ndarray) -> Outcomes:
    """Classify each example of a faulty run against the golden run (see the module docstring).

    Parameters
    ----------
    golden : ndarray of int, shape (N,)
        Golden top-1 classes (:func:`golden_top1`; -1 where the golden output was not finite).
    logits : ndarray, shape (N, C)
        The faulty run's logits.

    Returns
    -------
    Outcomes
        Boolean masks; ``masked | sdc | detected`` is all True and the three are disjoint.

    Math
    ----
    ``detected_i = not all(isfinite(z_i))``; ``sdc_i = not detected_i and argmax(z_i) != g_i``;
    ``masked_i = not detected_i and argmax(z_i) == g_i``; with ``C >= 10``,
    ``sdc_top5_i = not detected_i and g_i not in top5(z_i)``.
    """
    fn = "classify"
    _check_logits(logits, "logits", fn)
    validation.check_ndarray(golden, "golden", fn)
    if golden.dtype.kind not in "iu":
        raise TypeError(f"{fn}: golden must hold integer classes (golden_top1), got dtype {golden.dtype}")
    validation.check_shape(golden, "golden", fn, (logits.shape[0],))
    detected = ~np.all(np.isfinite(logits), axis=1)
    safe = np.where(detected[:, None], 0, logits)  # rows with NaN are detected; keep argsort away from NaN
    changed = np.argmax(safe, axis=1) != golden
    sdc = ~detected & changed
    top5 = None
    if logits.shape[1] >= TOP5_MIN_CLASSES:
        order = np.argsort(-safe, axis=1, kind="stable")[:, :5]
        top5 = ~detected & ~np.any(order == golden[:, None], axis=1)
    return Outcomes(~detected & ~changed, sdc, top5, detected)


def outcome_counts(golden: np.ndarray, logits: np.ndarray) -> dict[str, int | None]:
    """The counts of :func:`classify`: ``{"n", "masked", "sdc", "sdc_top5", "detected"}``."""
    o = classify(golden, logits)
    return {
        "n": int(golden.shape[0]),
        "masked": int(o.masked.sum()),
        "sdc": int(o.sdc.sum()),
        "sdc_top5": None if o.sdc_top5 is None else int(o.sdc_top5.sum()),
        "detected": int(o.detected.sum()),
    }


def predict_logits(
    model: str,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    batch_size: int = 500,
    activation_faults: Any = None,
) -> np.ndarray:
    """Eval-mode logits of ``model`` on ``x`` (batches of ``batch_size``; BLAS pinned to one thread, as
    :func:`saf_ref.experiments.campaign.predict`), optionally with a tap hook ``activation_faults``."""
    fn = "predict_logits"
    fns = model_fns(model, fn)
    validation.check_ndarray(x, "x", fn)
    batch_size = validation.check_int(batch_size, "batch_size", fn, low=1)
    out = []
    with np.errstate(all="ignore"), blas_threads_pinned():
        for start in range(0, x.shape[0], batch_size):
            logits, _, _ = fns.forward(
                dict(params),
                dict(state),
                x[start : start + batch_size],
                train=False,
                activation_faults=activation_faults,
            )
            out.append(logits)
    return np.concatenate(out)


def _record_metrics(golden: np.ndarray, clean_wrong: np.ndarray, y: np.ndarray, logits: np.ndarray):
    pred = golden_top1(logits)
    wrong = pred != y
    return {
        "accuracy": float(np.mean(~wrong)),
        "rerr": float(np.mean(wrong | clean_wrong)),
        "nonfinite": bool(np.any(pred < 0)),
        **outcome_counts(golden, logits),
    }


# ------------------------------------------------------------------------------------------ weights
def weight_trial(
    subject: Subject,
    x: np.ndarray,
    y: np.ndarray,
    rates: Sequence[float],
    *,
    campaign_seed: int,
    trial: int,
    golden: np.ndarray,
) -> list[dict[str, Any]]:
    """One subject in one trial at every rate, as :func:`saf_ref.experiments.campaign.run_trial` (the same
    generator, nested faults, accuracy and robust error) plus the golden comparison counts."""
    rng = trial_rng(campaign_seed, trial)
    stored = store(subject.params, subject.spec)
    clean_wrong = golden != y
    records = []
    for rate, inj in zip(rates, inject_nested(stored, list(rates), rng=rng), strict=True):
        params = load(inj.stored, subject.spec, nonfinite=subject.nonfinite)
        logits = predict_logits(subject.model, params, subject.state, x)
        records.append(
            {
                "subject": subject.key,
                "method": subject.method,
                "transform": subject.transform,
                "format": subject.format,
                "site": "weights",
                "ber": float(rate),
                "trial": int(trial),
                **_record_metrics(golden, clean_wrong, y, logits),
            }
        )
    return records


def _weight_unit(args: tuple) -> tuple[int, int, list[dict[str, Any]]]:
    index, subject, x, y, rates, seed, trial, golden = args
    return index, trial, weight_trial(subject, x, y, rates, campaign_seed=seed, trial=trial, golden=golden)


class SDCResult(NamedTuple):
    """Per-trial records, per-cell summary, the golden accuracies, and whether Ctrl-C cut the run."""

    records: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    golden: list[dict[str, Any]]
    interrupted: bool


def _check_common(x, y, rates, trials, seed, executor, max_workers, fn):
    validation.check_ndarray(x, "x", fn)
    validation.check_ndarray(y, "y", fn)
    if y.dtype.kind not in "iu" or y.ndim != 1 or x.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{fn}: y must hold one integer label per image of x, got y {y.dtype} {y.shape}, x {x.shape}"
        )
    if x.shape[0] == 0:  # as run_campaign's: no rate of an empty set (it failed in NumPy's concatenate)
        raise ValueError(f"{fn}: x must hold at least one example, got shape {x.shape}")
    rates = validation.check_rate_sequence(rates, fn, distinct=True)  # as run_campaign's
    trials = validation.check_int(trials, "trials", fn, low=1)
    seed = validation.check_int(seed, "seed", fn, low=0)
    if max_workers is not None:
        validation.check_int(max_workers, "max_workers", fn, low=1)
    if executor not in ("process", "serial", None) and not isinstance(executor, cf.Executor):
        raise TypeError(
            f"{fn}: executor must be 'process', 'serial', None or a concurrent.futures.Executor, "
            f"got {validation.describe(executor)}"
        )
    return rates, trials, seed


def _run(unit_fn, units, executor, max_workers) -> tuple[list[dict[str, Any]], bool]:
    """Run the units; records in a deterministic order (by cell, then trial) whatever the completion order."""
    results: dict[tuple[int, int], list[dict[str, Any]]] = {}

    def collect(res):
        results[(res[0], res[1])] = res[2]

    interrupted = run_units(unit_fn, units, collect, executor=executor, max_workers=max_workers)
    return [rec for key in sorted(results) for rec in results[key]], interrupted


def run_weight_sdc(
    subjects: Sequence[Subject],
    x: np.ndarray,
    y: np.ndarray,
    rates: Sequence[float],
    *,
    trials: int,
    seed: int,
    executor: cf.Executor | None | str = "process",
    max_workers: int | None = None,
    confidence: float = 0.95,
) -> SDCResult:
    """Random bit errors in the stored weights of every subject, classified against the golden run.

    Parameters are those of :func:`saf_ref.experiments.campaign.run_campaign`. Returns an
    :class:`SDCResult` whose records carry ``accuracy``, ``rerr``, ``nonfinite`` (equal to
    ``run_campaign``'s for the same seed) and the counts ``n, masked, sdc, sdc_top5, detected``; the
    summary has one row per (subject, rate).
    """
    fn = "run_weight_sdc"
    if isinstance(subjects, (str, bytes)) or not isinstance(subjects, Sequence) or not subjects:
        raise ValueError(f"{fn}: subjects must be a non-empty sequence of Subject, got {subjects!r}")
    for i, s in enumerate(subjects):
        if not isinstance(s, Subject):
            raise TypeError(f"{fn}: subjects[{i}] must be a Subject, got {validation.describe(s)}")
    rates, trials, seed = _check_common(x, y, rates, trials, seed, executor, max_workers, fn)
    golden = []
    for s in subjects:
        params = load(store(s.params, s.spec), s.spec, nonfinite=s.nonfinite)
        golden.append(golden_top1(predict_logits(s.model, params, s.state, x)))
    units = [(i, s, x, y, rates, seed, t, golden[i]) for i, s in enumerate(subjects) for t in range(trials)]
    records, interrupted = _run(_weight_unit, units, executor, max_workers)
    golden_rows = [
        {
            "subject": s.key,
            "method": s.method,
            "transform": s.transform,
            "format": s.format,
            "clean_accuracy": float(np.mean(g == y)),
        }
        for s, g in zip(subjects, golden, strict=True)
    ]
    keys = ("subject", "method", "transform", "format", "site", "ber")
    clean = {r["subject"]: r["clean_accuracy"] for r in golden_rows}
    summary = summarize_outcomes(
        records, keys, clustered=True, clean=lambda r: clean[r["subject"]], confidence=confidence
    )
    return SDCResult(records, summary, golden_rows, interrupted)


# ------------------------------------------------------------------------------------------ activations
class ActivationCell(NamedTuple):
    """One cell of an activation campaign: which tap, stored how, at which rate, which bits (None: all)."""

    layer: str
    format: str
    ber: float
    bit: int | None


def activation_cells(
    taps: Sequence[str], formats: Sequence[str], rates: Sequence[float], *, per_bit: bool = False
) -> list[ActivationCell]:
    """The cells of an activation campaign, by format, then tap (forward order), rate, bit position.

    ``per_bit=True`` makes one cell per bit position of the format (only that bit may flip, at rate
    ``ber``), the per-bit vulnerability; otherwise every bit may flip (``bit=None``).
    """
    cells = []
    for fmt in formats:
        nbits = activation_format(fmt, "activation_cells").nbits
        for tap in taps:
            for rate in rates:
                for bit in range(nbits) if per_bit else (None,):
                    cells.append(ActivationCell(tap, fmt, float(rate), bit))
    return cells


def activation_trial(
    model: str,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    cell: ActivationCell,
    *,
    taps: Sequence[str],
    campaign_seed: int,
    cell_index: int,
    trial: int,
    golden: np.ndarray,
    batch_size: int = 500,
) -> dict[str, Any]:
    """One (cell, trial) unit: the model with activation faults at ``cell``, classified against ``golden``.

    The generator is ``default_rng(SeedSequence(campaign_seed, spawn_key=(trial, cell_index)))``: a unit
    can be re-run alone and gives the same record.
    """
    rng = np.random.default_rng(np.random.SeedSequence(campaign_seed, spawn_key=(trial, cell_index)))
    bit_mask = None if cell.bit is None else [cell.bit]
    faults = ActivationFaults(
        cell.layer, taps=taps, format=cell.format, p=cell.ber, bit_mask=bit_mask, rng=rng
    )
    logits = predict_logits(model, params, state, x, batch_size=batch_size, activation_faults=faults)
    count = faults.counts[cell.layer]
    return {
        "model": model,
        "layer": cell.layer,
        "format": cell.format,
        "site": "activations",
        "ber": cell.ber,
        "bit": cell.bit,
        "trial": int(trial),
        **_record_metrics(golden, golden != y, y, logits),
        "flips": count.flips,
        "exposed_bits": count.bits,
    }


def _activation_unit(args: tuple) -> tuple[int, int, list[dict[str, Any]]]:
    (index, trial), (model, params, state, x, y, cell, taps, seed, golden, batch_size) = args
    rec = activation_trial(
        model,
        params,
        state,
        x,
        y,
        cell,
        taps=taps,
        campaign_seed=seed,
        cell_index=index,
        trial=trial,
        golden=golden,
        batch_size=batch_size,
    )
    return index, trial, [rec]


def run_activation_sdc(
    model: str,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    layers: Any = "*",
    formats: Sequence[Any] = ("float32",),
    rates: Sequence[float],
    per_bit: bool = False,
    trials: int,
    seed: int,
    executor: cf.Executor | None | str = "process",
    max_workers: int | None = None,
    batch_size: int = 500,
    confidence: float = 0.95,
) -> SDCResult:
    """Activation faults in each selected layer alone, per format and rate (and bit position), classified
    against the golden run; see the module docstring.

    Parameters
    ----------
    model : str
        A model name (:func:`saf_ref.nn.registry.model_fns`).
    params, state : dict
        The weights the model computes with (effective weights) and its running statistics.
    x, y : ndarray
        Evaluation images and integer labels.
    layers : str or sequence of str
        Tap names or globs (:func:`saf_ref.faults_act.select_taps`); each selected tap is one cell.
    formats : sequence of format names
        Activation formats (:func:`saf_ref.faults_act.activation_format`).
    rates : sequence of float in [0, 1]
    per_bit : bool
        One cell per bit position (only that bit flips) instead of all bits.
    trials, seed, executor, max_workers, confidence
        As in :func:`saf_ref.experiments.campaign.run_campaign`; results do not depend on the executor or
        the number of workers.
    batch_size : int
        Images per forward pass (the random pattern depends on it; the golden run does not).

    Returns
    -------
    SDCResult
        Records per (cell, trial); summary per cell (:func:`summarize_outcomes`, Wilson intervals on the
        pooled counts); golden rows per (format, layer) with the golden accuracy.
    """
    fn = "run_activation_sdc"
    model_fns(model, fn)
    taps = activation_taps(model, dict(params))
    selected = select_taps(layers, taps, fn)
    if isinstance(formats, (str, bytes)) or not isinstance(formats, Sequence) or not formats:
        raise TypeError(f"{fn}: formats must be a non-empty sequence of format names, got {formats!r}")
    for f in formats:
        if not isinstance(f, str):
            raise TypeError(f"{fn}: formats must hold format names (str), got {validation.describe(f)}")
        activation_format(f, fn)
    names = list(formats)
    rates, trials, seed = _check_common(x, y, rates, trials, seed, executor, max_workers, fn)
    batch_size = validation.check_int(batch_size, "batch_size", fn, low=1)
    validation.check_bool(per_bit, "per_bit", fn)
    golden: dict[tuple[str, str], np.ndarray] = {}
    golden_rows = []
    for fmt in names:
        for tap in selected:
            clean = ActivationFaults(tap, taps=taps, format=fmt, p=0.0, rng=0)
            g = golden_top1(
                predict_logits(model, params, state, x, batch_size=batch_size, activation_faults=clean)
            )
            golden[(fmt, tap)] = g
            golden_rows.append(
                {"model": model, "layer": tap, "format": fmt, "clean_accuracy": float(np.mean(g == y))}
            )
    cells = activation_cells(selected, names, rates, per_bit=per_bit)
    units = [
        (
            (i, t),
            (model, dict(params), dict(state), x, y, c, taps, seed, golden[(c.format, c.layer)], batch_size),
        )
        for i, c in enumerate(cells)
        for t in range(trials)
    ]
    records, interrupted = _run(_activation_unit, units, executor, max_workers)
    clean = {(r["format"], r["layer"]): r["clean_accuracy"] for r in golden_rows}
    keys = ("model", "layer", "format", "site", "ber", "bit")
    summary = summarize_outcomes(
        records,
        keys,
        clustered=False,
        clean=lambda r: clean[(r["format"], r["layer"])],
        confidence=confidence,
    )
    return SDCResult(records, summary, golden_rows, interrupted)


# ------------------------------------------------------------------------------------------ summary
def summarize_outcomes(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    clustered: bool,
    clean: Any = None,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One row per cell (the distinct values of ``keys``, in first-seen order): accuracy and robust error
    (means over trials, t-intervals), and the rates of masked, SDC, SDC-top5 and detected outcomes with
    intervals (:func:`~saf_ref.experiments.stats.pooled_rate_interval`, ``clustered`` as there).

    ``clean(record) -> float`` gives the golden accuracy of a cell (optional). Each row holds ``keys``,
    ``trials``, ``n`` (examples over all trials), ``clean_accuracy``, ``accuracy_mean``,
    ``accuracy_ci_low/high``, ``rerr_mean``, ``rerr_ci_low/high`` and, for each outcome ``o`` in masked,
    sdc, sdc_top5, detected: ``o_rate``, ``o_ci_low``, ``o_ci_high`` (None for sdc_top5 with fewer than
    10 classes), and ``flips_mean`` where records carry ``flips``.
    """
    cells: dict[tuple, list[Mapping[str, Any]]] = {}
    for rec in records:
        cells.setdefault(tuple(rec[k] for k in keys), []).append(rec)
    rows = []
    for key, recs in cells.items():
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        acc = mean_interval([r["accuracy"] for r in recs], confidence=confidence)
        rerr = mean_interval([r["rerr"] for r in recs], confidence=confidence)
        ns = [r["n"] for r in recs]
        row.update(
            {
                "trials": len(recs),
                "n": sum(ns),
                "clean_accuracy": None if clean is None else clean(recs[0]),
                "accuracy_mean": acc[0],
                "accuracy_ci_low": max(0.0, acc[1]),
                "accuracy_ci_high": min(1.0, acc[2]),
                "rerr_mean": rerr[0],
                "rerr_ci_low": max(0.0, rerr[1]),
                "rerr_ci_high": min(1.0, rerr[2]),
            }
        )
        for outcome in ("masked", "sdc", "sdc_top5", "detected"):
            if recs[0][outcome] is None:
                row.update({f"{outcome}_rate": None, f"{outcome}_ci_low": None, f"{outcome}_ci_high": None})
                continue
            rate, low, high = pooled_rate_interval(
                [r[outcome] for r in recs], ns, clustered=clustered, confidence=confidence
            )
            row.update(
                {f"{outcome}_rate": rate, f"{outcome}_ci_low": float(low), f"{outcome}_ci_high": float(high)}
            )
        if "flips" in recs[0]:
            row["flips_mean"] = float(np.mean([r["flips"] for r in recs]))
        rows.append(row)
    return rows
