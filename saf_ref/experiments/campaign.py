"""Fault campaigns: sweep bit-error rates x storage formats x methods x trials.

A *subject* is one trained model together with how it is stored (a :class:`~saf_ref.protect.storage.
StorageSpec`: format, transform, clip, exposure). A campaign evaluates every subject at every bit-error
rate in every trial:

1. the clean stored model is read back (no faults) and evaluated once: the *clean* predictions;
2. trial ``t`` draws one nested fault pattern per subject with the generator
   ``default_rng(SeedSequence(campaign_seed, spawn_key=(t,)))``: the faults at rate ``p1 < p2`` are a
   subset of those at ``p2`` (one "chip" per trial, see :func:`saf_ref.protect.storage.inject_nested`);
3. each faulty model is loaded (decode, non-finite policy, transform) and evaluated.

Because a trial's randomness depends only on ``(campaign_seed, trial)``, any single trial can be re-run
alone (:func:`run_trial`) and gives the same numbers as inside the campaign, and the results do not depend
on the executor or on the number of workers.

Metrics per (subject, rate, trial): accuracy; robust error ``RErr`` (Stutz et al.: an example counts as
wrong if the clean *or* the perturbed model misclassifies it); whether any output logit is NaN/inf.
Per cell they are summarised over trials by :func:`summarize`: means with Student-t intervals, and the
fraction of trials with non-finite outputs with a Wilson interval.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.determinism import available_cpus, blas_threads_pinned, pin_blas_for_this_process
from saf_ref.experiments.stats import mean_interval, wilson_interval
from saf_ref.nn.registry import model_fns
from saf_ref.protect.storage import NONFINITE_POLICIES, StorageSpec, check_params, inject_nested, load, store

__all__ = [
    "Subject",
    "CampaignResult",
    "Journal",
    "read_journal",
    "trial_rng",
    "predict",
    "run_trial",
    "run_units",
    "run_campaign",
    "summarize",
    "SUMMARY_FIELDS",
    "write_atomic",
    "write_outputs",
]


@dataclass(frozen=True)
class Subject:
    """One model under test and the way its parameters are stored.

    Attributes
    ----------
    method : str
        Hardening method, e.g. ``"baseline"``, ``"saf"``, ``"robust_quant"``, ``"clipping"``, ``"randbet"``.
    transform : str
        Weight transform name (``"identity"`` for none), for the tables.
    format : str
        Storage format name, for the tables (the spec is what is used).
    model : str
        Model name understood by :func:`saf_ref.nn.registry.model_fns` (a string, so it pickles).
    params, state : dict[str, ndarray]
        Latents ``u`` and running statistics.
    spec : StorageSpec
        How ``params`` are stored and read back.
    nonfinite : {"propagate", "zero"}
        Non-finite policy when reading from memory.
    """

    method: str
    transform: str
    format: str
    model: str
    params: Mapping[str, np.ndarray]
    state: Mapping[str, np.ndarray]
    spec: StorageSpec
    nonfinite: str = "propagate"
    label: str = field(default="")

    def __post_init__(self) -> None:
        fn = "Subject"
        for name in ("method", "transform", "format", "model", "label"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{fn}: {name} must be a str, got {validation.describe(value)}")
        model_fns(self.model, fn)  # an unknown model name fails here, not in a worker process
        check_params(self.params, "params", fn)
        if not isinstance(self.state, Mapping):
            got = validation.describe(self.state)
            raise TypeError(f"{fn}: state must be a dict of str -> ndarray, got {got}")
        if not isinstance(self.spec, StorageSpec):
            raise TypeError(f"{fn}: spec must be a StorageSpec, got {validation.describe(self.spec)}")
        validation.check_choice(self.nonfinite, "nonfinite", fn, NONFINITE_POLICIES)

    @property
    def key(self) -> str:
        """A short unique label: ``label`` if set, else ``method/transform/format``."""
        return self.label or f"{self.method}/{self.transform}/{self.format}"


def trial_rng(campaign_seed: int, trial: int) -> np.random.Generator:
    """The generator of trial ``trial``: ``default_rng(SeedSequence(campaign_seed, spawn_key=(trial,)))``.

    It is the ``trial``-th child of ``SeedSequence(campaign_seed)`` (as ``SeedSequence.spawn`` would make
    it), so trials are statistically independent and each can be reproduced alone.
    """
    seed = validation.check_int(campaign_seed, "campaign_seed", "trial_rng", low=0)
    trial = validation.check_int(trial, "trial", "trial_rng", low=0)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(trial,)))


def predict(
    model: str,
    params: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    batch_size: int = 500,
) -> tuple[np.ndarray, bool]:
    """Eval-mode predictions of ``model`` on ``x``, and whether any logit was NaN or infinite.

    PyTorch equivalent: ``model.eval(); model(x).argmax(1)`` under ``torch.no_grad()``.

    Parameters
    ----------
    model : str
        A model name understood by :func:`saf_ref.nn.registry.model_fns`.
    params, state : dict[str, ndarray]
        Effective parameters (what the network computes with) and running statistics.
    x : ndarray, shape (N, ...)
        Images in the parameters' dtype.
    batch_size : int >= 1
        Images per forward pass (memory only; the result does not depend on it).

    Returns
    -------
    predictions : ndarray of int64, shape (N,)
    any_nonfinite : bool

    Notes
    -----
    A row whose logits are not all finite is predicted as class ``-1`` (always wrong): ``argmax`` of a
    row with NaN would otherwise return an arbitrary index.
    """
    fn = "predict"
    fns = model_fns(model, fn)
    validation.check_ndarray(x, "x", fn)
    if x.ndim == 0:
        raise ValueError(f"{fn}: x must have a leading sample axis, got shape {x.shape}")
    batch_size = validation.check_int(batch_size, "batch_size", fn, low=1)
    predictions = np.empty(x.shape[0], dtype=np.int64)
    any_nonfinite = False
    infer = fns.inference()  # no caches kept: the same logits, faster for a ResNet
    # Faulty weights overflow to inf/NaN on purpose; that is measured below, not warned about. BLAS on
    # one thread: the same bits whatever OPENBLAS_NUM_THREADS says (saf_ref.determinism).
    with np.errstate(all="ignore"), blas_threads_pinned():
        for start in range(0, x.shape[0], batch_size):
            logits, _, _ = infer(dict(params), dict(state), x[start : start + batch_size], train=False)
            finite_rows = np.all(np.isfinite(logits), axis=1)
            any_nonfinite = any_nonfinite or not bool(finite_rows.all())
            predictions[start : start + batch_size] = np.where(finite_rows, np.argmax(logits, axis=1), -1)
    return predictions, any_nonfinite


def clean_predictions(subject: Subject, x: np.ndarray) -> np.ndarray:
    """Predictions of the stored model read back without faults (quantization included)."""
    params = load(store(subject.params, subject.spec), subject.spec, nonfinite=subject.nonfinite)
    return predict(subject.model, params, subject.state, x)[0]


def run_trial(
    subject: Subject,
    x: np.ndarray,
    y: np.ndarray,
    rates: Sequence[float],
    *,
    campaign_seed: int,
    trial: int,
    clean: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Evaluate one subject in one trial at every rate; one record per rate.

    Parameters
    ----------
    subject : Subject
    x, y : ndarray
        Evaluation images ``(N, C, H, W)`` (the parameters' dtype) and int labels ``(N,)``.
    rates : sequence of float
        Bit-error rates; the fault patterns are nested across them.
    campaign_seed, trial : int
        The trial's generator is :func:`trial_rng` ``(campaign_seed, trial)``.
    clean : ndarray, optional
        The subject's clean predictions (computed if not given).

    Returns
    -------
    list of dict
        ``{"subject", "method", "transform", "format", "ber", "trial", "accuracy", "rerr", "nonfinite",
        "n"}`` per rate, in the order of ``rates``.

    Math
    ----
    With ``c_i`` the clean prediction and ``p_i`` the prediction of the faulty model for example ``i``
    (``-1`` where its logits are not finite), over the ``n`` examples::

        accuracy  = (1/n) sum_i [p_i == y_i]
        rerr      = (1/n) sum_i [p_i != y_i  or  c_i != y_i]      (Stutz et al.'s robust error)
        nonfinite = any logit of any example is NaN or inf

    so ``rerr >= 1 - accuracy`` and ``rerr >= clean error``. The faulty models of one trial come from
    one nested draw (:func:`saf_ref.protect.storage.inject_nested`), so ``rerr`` is non-decreasing in
    the rate within a trial.
    """
    fn = "run_trial"
    if not isinstance(subject, Subject):
        raise TypeError(f"{fn}: subject must be a Subject, got {validation.describe(subject)}")
    _check_xy(x, y, fn)
    rates = _check_rates(rates, fn)
    rng = trial_rng(campaign_seed, trial)  # validates both
    if clean is None:
        clean = clean_predictions(subject, x)
    validation.check_ndarray(clean, "clean", fn)
    validation.check_shape(clean, "clean", fn, y.shape)
    stored = store(subject.params, subject.spec)
    faulty_models = [inj.stored for inj in inject_nested(stored, list(rates), rng=rng)]
    clean_wrong = clean != y
    records = []
    for rate, faulty in zip(rates, faulty_models, strict=True):
        params = load(faulty, subject.spec, nonfinite=subject.nonfinite)
        pred, nonfinite = predict(subject.model, params, subject.state, x)
        wrong = pred != y
        records.append(
            {
                "subject": subject.key,
                "method": subject.method,
                "transform": subject.transform,
                "format": subject.format,
                "ber": float(rate),
                "trial": int(trial),
                "accuracy": float(np.mean(~wrong)),
                "rerr": float(np.mean(wrong | clean_wrong)),
                "nonfinite": bool(nonfinite),
                "n": int(y.shape[0]),
            }
        )
    return records


def _init_worker() -> None:
    """Worker initializer: BLAS on one thread, and Ctrl-C left to the parent.

    BLAS: a pool of ``n`` workers already uses the ``n`` cores; each worker's BLAS spreading its
    products over ``n`` threads more would oversubscribe them ``n``-fold (OpenBLAS threads spin while
    they wait). See :func:`saf_ref.determinism.pin_blas_for_this_process`.

    SIGINT, which Ctrl-C sends to every process of the terminal's group, is ignored: the parent alone
    stops the campaign (cancels what has not started, keeps what finished); a worker interrupted while
    waiting for work would otherwise die with a traceback on the user's terminal.
    """
    pin_blas_for_this_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_units(
    fn: Callable[[Any], Any],
    units: Sequence[Any],
    collect: Callable[[Any], None],
    *,
    executor: cf.Executor | None | str = "process",
    max_workers: int | None = None,
) -> bool:
    """Run ``collect(fn(unit))`` for every unit, in this process or an executor; return whether Ctrl-C
    stopped it.

    ``executor``: ``"serial"`` or ``None`` runs the units here, in order; ``"process"`` makes a
    ``ProcessPoolExecutor`` for the duration of the call, with ``max_workers`` workers (default: the
    CPUs this process may use, :func:`saf_ref.determinism.available_cpus`, and never more than there
    are units) that pin BLAS to one thread and ignore SIGINT; any other ``concurrent.futures.Executor``
    is used as is and not shut down. ``collect`` runs in this process,
    in completion order. On ``KeyboardInterrupt`` the pending units are cancelled, the collected ones
    stay collected, and the result is ``True`` (an own pool is then shut down without waiting). ``fn`` must
    be a module-level function for a process pool (it pickles).
    """
    if executor in ("serial", None):
        try:
            for unit in units:
                collect(fn(unit))
        except KeyboardInterrupt:
            return True
        return False
    own_pool = executor == "process"
    if own_pool:
        workers = available_cpus() if max_workers is None else max_workers
        workers = max(1, min(workers, len(units)))  # (a process per unit at most: each costs an import)
        executor = cf.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)
    futures = [executor.submit(fn, unit) for unit in units]
    interrupted = False
    try:
        for future in cf.as_completed(futures):
            collect(future.result())
    except KeyboardInterrupt:
        interrupted = True
        for future in futures:
            future.cancel()
    finally:
        if own_pool:
            executor.shutdown(wait=not interrupted, cancel_futures=True)
    return interrupted


def _run_unit(args: tuple) -> tuple[int, int, list[dict[str, Any]]]:
    """Process-pool entry point: one (subject, trial) unit. Module level, so that it pickles."""
    index, subject, x, y, rates, seed, trial, clean = args
    return index, trial, run_trial(subject, x, y, rates, campaign_seed=seed, trial=trial, clean=clean)


@dataclass
class CampaignResult:
    """Per-trial records, per-cell summary, clean accuracies, and whether the run was interrupted."""

    trials: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    clean: list[dict[str, Any]]
    interrupted: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``summary`` as a JSON list of records, one per subject x rate (fields ``SUMMARY_FIELDS``,
        ``clean_accuracy`` included in each record)."""
        _write_json(path, self.summary)

    def to_run_json(self, path: str | os.PathLike) -> None:
        """Write everything else a run needs to be understood and re-checked: ``{"config", "clean",
        "interrupted", "trials"}``, with ``trials`` the per-trial records :func:`summarize` reads."""
        _write_json(
            path,
            {
                "config": self.config,
                "clean": self.clean,
                "interrupted": self.interrupted,
                "trials": self.trials,
            },
        )

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write ``summary`` as a tidy CSV table, one row per subject x rate, columns ``SUMMARY_FIELDS``."""
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.summary:
            writer.writerow({k: row.get(k) for k in SUMMARY_FIELDS})
        write_atomic(path, buf.getvalue())


def _write_json(path: str | os.PathLike, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=1, allow_nan=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"CampaignResult.to_json: cannot serialise {type(obj).__name__}")


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or the
    new one, never a half-written one (a failed or interrupted write leaves ``path`` as it was)."""
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C: no half-written temporary file is left behind
        Path(tmp).unlink(missing_ok=True)
        raise


class Journal:
    """An append-only log of trial records, one JSON object per line (JSON Lines), for ``on_result``.

    ``run_campaign(..., on_result=Journal(path))`` writes each (subject, trial) unit's records the moment
    it completes, flushed and synced, so that a crash, a failed final write or Ctrl-C loses no finished
    trial. Creating a journal truncates ``path``. :func:`read_journal` reads it back.
    """

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Journal: path must be a str or path-like, got {validation.describe(path)}")
        self.path = Path(path)
        self.path.write_text("", encoding="utf-8")

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> None:
        # One write of whole lines per unit: a crash mid-write can tear at most the last line.
        text = "".join(json.dumps(rec, allow_nan=False, default=_json_default) + "\n" for rec in records)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def read_journal(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a :class:`Journal` file, in the order written; a torn last line is skipped.

    Pass them to :func:`summarize` to rebuild the summary of an interrupted or failed run.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_journal: path must be a str or path-like, got {validation.describe(path)}")
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    # Every complete line ends with a newline, so the last piece is "" unless a write was torn.
    return [json.loads(line) for line in lines[:-1] if line]


def rows_to_csv(rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> str:
    """CSV text of ``rows`` (dicts): a header line, then one line per row.

    The columns are ``fieldnames``, taking only those keys of each row (a missing key is an empty cell);
    by default they are the first row's keys, and a row with any other key is an error (no rows then
    give empty text, not even a header).
    """
    if fieldnames is None:
        if not rows:
            return ""
        fieldnames = list(rows[0])
    else:
        rows = [{k: row.get(k) for k in fieldnames} for row in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def config_to_json(cfg: Any) -> dict[str, Any]:
    """A configuration dataclass as plain JSON data (tuples become lists, other values their ``str``)."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def write_outputs(
    out: Path,
    files: Mapping[str, str | Callable[[Path], None]],
    journal: Journal,
    *,
    plot: Callable[[], bool] | None = None,
    interrupted: bool = False,
    kept: str = "completed trials",
) -> bool:
    """Write a run's result files, then drop its journal; return whether a plot was made.

    ``files`` maps a file name in ``out`` to its text (written with :func:`write_atomic`) or to a
    function that writes that path itself (atomically, like :meth:`CampaignResult.to_json`); they are
    written in order. ``plot()`` runs last, unless ``interrupted``: a plot of a cut run would miss the
    units not reached. If a write fails (``OSError``) or is interrupted (``KeyboardInterrupt``), the
    journal stays and the error says where: ``the <kept> are kept in <journal>``. Once every file is
    written the journal is removed (``run.json`` holds the same records, in a deterministic order).
    """
    try:
        for name, content in files.items():
            if isinstance(content, str):
                write_atomic(out / name, content)
            else:
                content(out / name)
        plotted = not interrupted and plot is not None and plot()
    except OSError as err:
        raise OSError(f"{err}; the {kept} are kept in {journal.path}") from err
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"while writing results; the {kept} are kept in {journal.path}") from None
    journal.path.unlink()
    return plotted


SUMMARY_FIELDS = (
    "subject",
    "method",
    "transform",
    "format",
    "ber",
    "trials",
    "clean_accuracy",
    "accuracy_mean",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "error_mean",
    "rerr_mean",
    "rerr_ci_low",
    "rerr_ci_high",
    "nonfinite_fraction",
    "nonfinite_ci_low",
    "nonfinite_ci_high",
)


def summarize(
    trials: Sequence[Mapping[str, Any]], clean: Mapping[str, float] | None = None, *, confidence: float = 0.95
) -> list[dict[str, Any]]:
    """Summarise per-trial records into one record per (subject, rate).

    Parameters
    ----------
    trials : sequence of dict
        Records of :func:`run_trial`.
    clean : dict str -> float, optional
        Subject key -> clean accuracy, copied into each row (None: ``clean_accuracy`` is None).
    confidence : float in (0, 1)
        Level of every interval.

    Returns
    -------
    list of dict
        One row per (subject, rate), with the keys of :data:`SUMMARY_FIELDS`; subjects in first-seen
        order, rates ascending. Within a cell the records are taken in ``trial`` order, so the rows do
        not depend on the order of ``trials`` (e.g. a :class:`Journal`'s completion order).

    Math
    ----
    Over the ``T`` trials of a cell: ``accuracy_mean`` and ``rerr_mean`` are the sample means with
    Student-t intervals ``mean +- t_{(1+confidence)/2, T-1} s / sqrt(T)``
    (:func:`~saf_ref.experiments.stats.mean_interval`, clipped to [0, 1]); ``error_mean = 1 -
    accuracy_mean``; ``nonfinite_fraction = k / T`` for the ``k`` trials with non-finite outputs, with a
    Wilson interval (:func:`~saf_ref.experiments.stats.wilson_interval`).
    """
    fn = "summarize"
    if isinstance(trials, (str, bytes)) or not isinstance(trials, Sequence):
        got = validation.describe(trials)
        raise TypeError(f"{fn}: trials must be a sequence of records (dicts), got {got}")
    needed = ("subject", "method", "transform", "format", "ber", "accuracy", "rerr", "nonfinite")
    for i, rec in enumerate(trials):
        if not isinstance(rec, Mapping) or any(k not in rec for k in needed):
            got = sorted(rec) if isinstance(rec, Mapping) else validation.describe(rec)
            raise ValueError(f"{fn}: trials[{i}] must be a record with the keys {needed}, got {got}")
    if clean is not None and not isinstance(clean, Mapping):
        got = validation.describe(clean)
        raise TypeError(f"{fn}: clean must be a dict of subject -> accuracy or None, got {got}")
    cells: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for rec in trials:
        cells.setdefault((rec["subject"], rec["ber"]), []).append(rec)
    # Each cell's records in trial order (a stable sort; records without a trial come first, in the order
    # given), so that the float sums do not depend on the order the records come in: a Journal holds them
    # in completion order, which depends on the executor and the number of workers.
    cells = {key: sorted(recs, key=_trial_of) for key, recs in cells.items()}
    order = list(dict.fromkeys(rec["subject"] for rec in trials))
    rows = []
    for (subject, ber), recs in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        acc, acc_lo, acc_hi = mean_interval([r["accuracy"] for r in recs], confidence=confidence)
        rerr, rerr_lo, rerr_hi = mean_interval([r["rerr"] for r in recs], confidence=confidence)
        k = sum(bool(r["nonfinite"]) for r in recs)
        nf_lo, nf_hi = wilson_interval(k, len(recs), confidence=confidence)
        first = recs[0]
        rows.append(
            {
                "subject": subject,
                "method": first["method"],
                "transform": first["transform"],
                "format": first["format"],
                "ber": ber,
                "trials": len(recs),
                "clean_accuracy": None if clean is None else clean.get(subject),
                "accuracy_mean": acc,
                "accuracy_ci_low": max(0.0, acc_lo),
                "accuracy_ci_high": min(1.0, acc_hi),
                "error_mean": 1.0 - acc,
                "rerr_mean": rerr,
                "rerr_ci_low": max(0.0, rerr_lo),
                "rerr_ci_high": min(1.0, rerr_hi),
                "nonfinite_fraction": k / len(recs),
                "nonfinite_ci_low": nf_lo,
                "nonfinite_ci_high": nf_hi,
            }
        )
    return rows


def _trial_of(rec: Mapping[str, Any]) -> int:
    """The sort key of :func:`summarize`'s cells: the record's trial (-1 when it has none)."""
    trial = rec.get("trial")
    return int(trial) if isinstance(trial, (int, np.integer)) and not isinstance(trial, bool) else -1


def _check_rates(rates: Any, fn: str) -> tuple[float, ...]:
    # Distinct: a repeated rate gives a trial two identical records, which summarize() would count as
    # two trials.
    return validation.check_rate_sequence(rates, fn, distinct=True)


def _check_xy(x: Any, y: Any, fn: str) -> None:
    """Images with a leading sample axis (at least one image) and one integer label per image."""
    validation.check_ndarray(x, "x", fn)
    validation.check_ndarray(y, "y", fn)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{fn}: y must have an integer dtype (class labels), got {y.dtype}")
    validation.check_ndim(y, "y", fn, 1, "(N,)")
    if x.ndim == 0:
        raise ValueError(f"{fn}: x must have a leading sample axis, got shape {x.shape}")
    validation.check_equal(fn, "y.shape[0]", y.shape[0], "x.shape[0]", x.shape[0], "one label per image")
    if x.shape[0] == 0:  # every accuracy would be 0/0 = NaN, which the JSON outputs cannot hold
        raise ValueError(f"{fn}: x must hold at least one example, got shape {x.shape}")


def _check_subjects(subjects: Any, fn: str) -> list[Subject]:
    if not isinstance(subjects, Sequence) or len(subjects) == 0:
        raise ValueError(f"{fn}: subjects must be a non-empty sequence of Subject, got {subjects!r}")
    for i, s in enumerate(subjects):
        if not isinstance(s, Subject):
            raise TypeError(f"{fn}: subjects[{i}] must be a Subject, got {type(s).__name__}")
    keys = [s.key for s in subjects]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(
            f"{fn}: subject keys must be unique (set Subject.label), got duplicates {duplicates}"
        )
    return list(subjects)


class _Progress:
    """A one-line progress display on stderr: units done, elapsed time, estimated time left."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled, self.done = total, enabled, 0
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done)
        line = f"  trials {self.done}/{self.total}  {elapsed:6.1f}s elapsed, ~{left:5.1f}s left  ({what})"
        if getattr(self.stream, "isatty", lambda: False)():  # a terminal: redraw one line in place
            end = "\n" if self.done == self.total else ""
            print("\r" + line.ljust(78), end=end, file=self.stream, flush=True)
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:  # a log: ~10 lines
            print(line, file=self.stream, flush=True)


def run_campaign(
    subjects: Sequence[Subject],
    x: np.ndarray,
    y: np.ndarray,
    rates: Sequence[float],
    *,
    trials: int,
    seed: int,
    executor: cf.Executor | None | str = "process",
    max_workers: int | None = None,
    progress: bool = True,
    confidence: float = 0.95,
    on_result: Callable[[list[dict[str, Any]]], None] | None = None,
) -> CampaignResult:
    """Evaluate every subject at every rate in ``trials`` trials; see the module docstring.

    Parameters
    ----------
    subjects : sequence of Subject
    x, y : ndarray
        Evaluation set.
    rates : sequence of float in [0, 1]
    trials : int >= 1
    seed : int >= 0
        Campaign seed; trial ``t`` uses :func:`trial_rng` ``(seed, t)``.
    executor : concurrent.futures.Executor, "process", "serial" or None
        Where the (subject, trial) units run. ``"process"`` (default) makes a
        ``ProcessPoolExecutor(max_workers)`` for the duration of the call; ``"serial"``/``None`` runs in
        this process; any ``Executor`` you pass (a dask.distributed ``Client.get_executor()``, a Ray
        executor, a thread pool) is used as is and not shut down. Results are identical for any executor
        and worker count.
    max_workers : int >= 1, optional
        Worker processes of the ``"process"`` pool (default: the CPUs this process may use, at most one
        per unit); each runs BLAS on one thread, so that the workers do not oversubscribe the cores.
    progress : bool
        Show a one-line progress display on stderr.
    confidence : float in (0, 1)
        Level of the intervals of the summary (see :func:`summarize`).
    on_result : callable, optional
        Called with each unit's records as it completes (e.g. to save partial results).

    Returns
    -------
    CampaignResult
        On Ctrl-C (KeyboardInterrupt) the pending units are cancelled and the completed trials are
        returned with ``interrupted=True``.
    """
    fn = "run_campaign"
    subjects = _check_subjects(subjects, fn)
    rates = _check_rates(rates, fn)
    trials = validation.check_int(trials, "trials", fn, low=1)
    seed = validation.check_int(seed, "seed", fn, low=0)
    _check_xy(x, y, fn)
    if max_workers is not None:
        max_workers = validation.check_int(max_workers, "max_workers", fn, low=1)
    if not isinstance(progress, bool):
        raise TypeError(f"{fn}: progress must be a bool, got {validation.describe(progress)}")
    # Checked now, not by summarize() after every trial has run.
    confidence = validation.check_real(confidence, "confidence", fn)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"{fn}: confidence must be in (0, 1), got {confidence!r}")
    if on_result is not None and not callable(on_result):
        raise TypeError(f"{fn}: on_result must be callable or None, got {validation.describe(on_result)}")
    if executor not in ("process", "serial", None) and not isinstance(executor, cf.Executor):
        raise TypeError(
            f"{fn}: executor must be 'process', 'serial', None or a concurrent.futures.Executor, "
            f"got {validation.describe(executor)}"
        )

    clean = [clean_predictions(s, x) for s in subjects]
    clean_acc = {s.key: float(np.mean(c == y)) for s, c in zip(subjects, clean, strict=True)}
    units = [(i, s, x, y, rates, seed, t, clean[i]) for t in range(trials) for i, s in enumerate(subjects)]
    progress_bar = _Progress(len(units), progress)
    results: dict[tuple[int, int], list[dict[str, Any]]] = {}

    def collect(unit_result: tuple[int, int, list[dict[str, Any]]]) -> None:
        index, trial, records = unit_result
        results[(index, trial)] = records
        if on_result is not None:
            on_result(records)
        progress_bar.step(f"{subjects[index].key}, trial {trial}")

    interrupted = run_units(_run_unit, units, collect, executor=executor, max_workers=max_workers)
    if interrupted and progress:
        print(f"\n  interrupted: keeping {len(results)} of {len(units)} completed trials", file=sys.stderr)

    # Deterministic order whatever the completion order: by trial, then subject.
    trial_records = [rec for key in sorted(results, key=lambda k: (k[1], k[0])) for rec in results[key]]
    config = {
        "rates": list(rates),
        "trials": trials,
        "seed": seed,
        "n_eval": int(y.shape[0]),
        "confidence": confidence,
        "subjects": [s.key for s in subjects],
    }
    clean_rows = [
        {
            "subject": s.key,
            "method": s.method,
            "transform": s.transform,
            "format": s.format,
            "clean_accuracy": clean_acc[s.key],
        }
        for s in subjects
    ]
    summary = summarize(trial_records, clean_acc, confidence=confidence) if trial_records else []
    return CampaignResult(trial_records, summary, clean_rows, interrupted, config)


def is_chance_level(accuracy: float, num_classes: int, n: int, *, z: float = 3.0) -> bool:
    """Whether ``accuracy`` on ``n`` examples is within ``z`` binomial standard errors of chance level.

    Math
    ----
    With ``p = 1 / num_classes``: ``|accuracy - p| <= z * sqrt(p (1 - p) / n)``.
    """
    p = 1.0 / num_classes
    return abs(accuracy - p) <= z * math.sqrt(p * (1 - p) / n)
