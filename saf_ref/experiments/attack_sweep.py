"""``saf-ref attack``: chosen bit flips against the demo's models, with random flips as the baseline.

What it does, with no arguments, no network and only the shipped data:

1. trains (or loads from ``--checkpoints``, the demo's checkpoint files) the demo's models with the
   demo's settings (:func:`saf_ref.experiments.demo.build_subjects`) and keeps the *subjects* asked for
   (:data:`SUBJECTS`): 8-bit robust quantization (plain, with weight clipping, clipping + RandBET, RandBET
   without clipping), clipping + AdvBET (trained here the same way, :func:`_advbet`), the SAF model
   ``w = tanh(u)`` and the plain baseline stored in float32 and in q2.5 with every parameter exposed, as
   the demo stores them, and in float32 with only the conv/linear weights exposed (for SAF also with
   inf/NaN words read as 0);
2. draws one *attack batch* from the **training** split (``--attack-batch`` images, seeded; the test
   split is never seen by the attacker) and attacks each subject once with the progressive bit search of
   :func:`saf_ref.attack.bit_flip_attack` with the largest budget;
3. for every budget ``k`` replays the first ``k`` flips of that attack (a FaultList) through the storage
   pipeline (``store -> inject -> load``) and evaluates the model on the test split;
4. as a baseline, ``--trials`` random patterns of exactly ``k`` flips drawn uniformly over all exposed
   bits of the model (model-wide, not per tensor: :func:`random_flips`), nested across budgets;
5. prints a table of the test error and writes ``results.json`` / ``results.csv`` (the demo's record
   fields with ``attack`` and ``budget`` in place of ``ber``), ``run.json`` (settings, the attack batch,
   every attack's FaultList and trajectory, per-trial records, timings), ``table.txt`` and, when
   matplotlib is installed, ``results.png``.

Why one attack serves every budget: the progressive bit search is greedy and deterministic; step ``j``
depends only on the flips committed before it. An attack with budget ``K`` therefore commits, in its
first ``k`` steps, exactly the flips an attack with budget ``k`` would (tested in
``tests/experiments/test_attack_sweep.py``). This holds for ``method="pbs"`` only (the ``"gradient"``
method optimizes a set of exactly ``k`` flips), which is why the sweep uses ``"pbs"``.

Conventions of ``saf-ref demo``: every option is checked before any model is trained (the budget
against the exposed bits and the attack batch against the training split after loading the data, which
costs nothing); ``--out`` must not hold results unless ``--force``; each completed subject's records are
journaled to ``trials.jsonl``; Ctrl-C keeps the finished subjects, writes them and exits 130; every file
is written atomically; ``results.json`` holds no timings, so it is the same bytes in every run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.attack import bit_flip_attack
from saf_ref.bits.faultlist import FaultList
from saf_ref.experiments import demo
from saf_ref.experiments.campaign import (
    SUMMARY_FIELDS,
    Journal,
    Subject,
    config_to_json,
    predict,
    write_atomic,
    write_outputs,
)
from saf_ref.experiments.stats import mean_interval, wilson_interval
from saf_ref.protect import inject, load, store

__all__ = [
    "ATTACK_FIELDS",
    "DEFAULT_BUDGETS",
    "SUBJECTS",
    "AttackSweepConfig",
    "AttackSweepResult",
    "add_arguments",
    "attack_batch_indices",
    "config_from_args",
    "evaluate_faults",
    "format_table",
    "prefix",
    "random_flips",
    "run_attack_sweep",
    "run_from_args",
    "summarize_attacks",
]

DEFAULT_BUDGETS = (0, 1, 2, 5, 10, 20, 50, 100, 320)

#: The subjects the sweep can attack: name -> (method, transform, format, exposed, nonfinite).
#: ``exposed="all"`` is the demo's spec (every parameter stored and exposed, batch norm and biases too);
#: ``"weights"`` exposes only the conv/linear weights (the rest still stored, not attacked), to see what the
#: transform alone does. ``nonfinite`` is the read policy: ``"zero"`` reads an inf/NaN word as 0 before the
#: transform (tanh(NaN) is NaN, so without it one flip to a NaN pattern breaks a SAF model).
SUBJECTS: dict[str, tuple[str, str, str, str, str]] = {
    "robust_quant": ("robust_quant", "identity", "quant8", "all", "propagate"),
    "clipping": ("clipping", "identity", "quant8", "all", "propagate"),
    "randbet": ("randbet", "identity", "quant8", "all", "propagate"),
    "randbet_noclip": ("randbet_noclip", "identity", "quant8", "all", "propagate"),
    "advbet": ("advbet", "identity", "quant8", "all", "propagate"),
    "saf_tanh_float32": ("saf", "tanh", "float32", "all", "propagate"),
    "saf_tanh_q2.5": ("saf", "tanh", "q2.5", "all", "propagate"),
    "baseline_float32": ("baseline", "identity", "float32", "all", "propagate"),
    "baseline_q2.5": ("baseline", "identity", "q2.5", "all", "propagate"),
    "saf_tanh_float32_weights": ("saf", "tanh", "float32", "weights", "propagate"),
    "saf_tanh_float32_weights_nan0": ("saf", "tanh", "float32", "weights", "zero"),
    "baseline_float32_weights": ("baseline", "identity", "float32", "weights", "propagate"),
}

#: The record fields of results.json / results.csv: the demo's, with ``attack`` and ``budget`` for ``ber``.
ATTACK_FIELDS = tuple(
    f for name in SUMMARY_FIELDS for f in (("attack", "budget") if name == "ber" else (name,))
)

# Spawn keys of the two seeded draws, so that the attack batch and the random patterns never share bits of
# randomness: SeedSequence(seed, spawn_key=(_BATCH_KEY,)), SeedSequence(seed, spawn_key=(_RANDOM_KEY, t)).
_BATCH_KEY, _RANDOM_KEY = 0, 1

# The DemoConfig fields the sweep shares with the demo (training, data, checkpoints, evaluation).
_DEMO_FIELDS = (*demo.TRAINING_FIELDS, "checkpoints", "eval_limit")


@dataclass(frozen=True)
class AttackSweepConfig(demo.TrainingSettings):
    """Everything ``saf-ref attack`` does is decided here (``saf-ref attack --help`` maps options onto it).

    The training fields and their defaults are the demo's (inherited from
    :class:`~saf_ref.experiments.demo.TrainingSettings`, first in the field order), so the models are the
    demo's and ``--checkpoints`` directories are shared with ``saf-ref demo``.
    """

    checkpoints: str | None = None
    eval_limit: int | None = None
    subjects: tuple[str, ...] = tuple(SUBJECTS)
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    trials: int = 10
    attack_batch: int = 128
    candidates: int = 8
    k_train: int = 20
    verbose: bool = True

    def __post_init__(self) -> None:
        check_fields({f.name: getattr(self, f.name) for f in fields(self)}, "AttackSweepConfig")

    def demo_config(self) -> demo.DemoConfig:
        """The :class:`DemoConfig` that trains this sweep's models (only the float models it needs)."""
        chosen = [SUBJECTS[s] for s in self.subjects]
        floats = [c for c in chosen if c[2] != "quant8"]  # the demo's quantized models are always trained
        transforms = tuple(t for t in ("identity", "tanh") if any(c[1] == t for c in floats))
        formats = tuple(f for f in ("float32", "q2.5") if any(c[2] == f for c in chosen))
        shared = {k: getattr(self, k) for k in _DEMO_FIELDS}
        # quant_setting "weights": the quantized models of the setting AdvBET is trained in (batch norm, only
        # conv/linear weights clipped), so that RandBET and AdvBET are compared like for like.
        return demo.DemoConfig(**shared, float_transforms=transforms, float_formats=formats or ("float32",),
                               scaled_formats=(), quant_setting="weights", verbose=self.verbose)


QUICK = {"epochs": 6, "trials": 4, "budgets": (0, 1, 2, 5, 10, 20, 50)}

# ------------------------------------------------------------------------------------------ checks


def _check_budgets(budgets: Any, name: str, fn: str) -> None:
    demo.check_sequence(budgets, name, fn, items="flip counts", empty="list at least one flip count",
                        each=lambda b: validation.check_int(b, name, fn, low=0))  # fmt: skip


def _check_subjects(subjects: Any, name: str, fn: str) -> None:
    demo.check_sequence(subjects, name, fn, items="names", empty=f"name at least one of {tuple(SUBJECTS)}",
                        each=lambda s: validation.check_choice(s, name, fn, tuple(SUBJECTS)))  # fmt: skip


def _positive(value: Any, name: str, fn: str) -> None:
    validation.check_int(value, name, fn, low=1)


_OWN_CHECKS = {
    "subjects": _check_subjects,
    "budgets": _check_budgets,
    "trials": _positive,
    "attack_batch": _positive,
    "candidates": _positive,
    "k_train": _positive,
}


def check_fields(values: Mapping[str, Any], fn: str, name=str) -> None:
    """Check :class:`AttackSweepConfig` field values; errors call a field ``name(field)`` (a flag or a field).

    The demo's fields go through :func:`saf_ref.experiments.demo.check_fields` (the same rules and
    messages as ``saf-ref demo``), the sweep's own through the checks above.
    """
    demo_values = asdict(demo.DemoConfig()) | {k: values[k] for k in _DEMO_FIELDS}
    demo_values["verbose"] = values["verbose"]
    demo.check_fields(demo_values, fn, name)
    for key, check in _OWN_CHECKS.items():
        check(values[key], name(key), fn)


def _check_against_data(cfg: AttackSweepConfig, data, fn: str, name=str) -> None:
    """The checks that need the (cheaply loaded) data and the model's shapes, still before any training."""
    demo.check_eval_limit(cfg.eval_limit, data, cfg.dataset, fn, name("eval_limit"))
    n_train = data[0].shape[0]
    if cfg.attack_batch > n_train:
        raise ValueError(f"{fn}: {name('attack_batch')} must be at most {n_train}, the training images "
                         f"of {cfg.dataset!r}, got {cfg.attack_batch}")
    params, _ = demo.init_model(cfg.demo_config(), data[0].shape[1], data[4])  # shapes as trained
    shapes = {k: v.shape for k, v in params.items()}
    for s in cfg.subjects:
        exposed = _exposed_bits(_spec_of(s, cfg), shapes)
        if max(cfg.budgets) > exposed:
            raise ValueError(f"{fn}: {name('budgets')} must be at most {exposed}, the exposed bits of "
                             f"{s!r}, got {max(cfg.budgets)}")


def _spec_of(subject: str, cfg: AttackSweepConfig):
    """How ``subject`` is stored: the demo's spec (:func:`saf_ref.experiments.demo.build_subjects`)."""
    from saf_ref.protect import default_spec

    method, transform, fmt, exposed, _ = SUBJECTS[subject]
    if fmt == "quant8":
        return demo.quantized_spec(cfg.weight_clip if method in ("clipping", "randbet", "advbet") else None)
    return default_spec(fmt, transform, expose_non_weights=exposed == "all")


def _exposed_bits(spec, shapes: Mapping[str, tuple[int, ...]]) -> int:
    rules = spec.resolve(shapes, "saf-ref attack")
    return sum(int(np.prod(s, dtype=np.int64)) * rules[n].format.nbits for n, s in shapes.items()
               if rules[n].exposed)


# ------------------------------------------------------------------------------- faults and scoring


def prefix(faults: FaultList, k: int) -> FaultList:
    """The first ``k`` records of ``faults`` (the flips of a progressive attack with budget ``k``)."""
    return FaultList(list(faults)[:k])


def random_flips(stored, k: int, rng: np.random.Generator) -> FaultList:
    """``k`` distinct bit flips drawn uniformly over all exposed bits of ``stored`` (model-wide).

    Unlike :class:`saf_ref.bits.faultmodels.ExactCount` (``k`` flips in *each* tensor), the ``k`` flips
    are spread over the whole model, each ``k``-subset of the exposed bits equally likely, as an attacker
    without knowledge would flip them. The records come in draw order, so ``prefix(faults, j)`` is itself
    a uniform ``j``-subset and the patterns of smaller budgets are nested in those of larger ones.

    Math
    ----
    The exposed bits are numbered ``0 .. B-1``, tensor after tensor in stored order, word after word
    (C order), bit 0 (LSB) first: position ``p`` of tensor ``t`` is word ``p // nbits_t``, bit
    ``p % nbits_t``. ``k`` positions are drawn without replacement by ``rng.choice(B, k, replace=False)``.
    """
    names = stored.exposed_names
    sizes = np.array([stored[n].bits for n in names], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    positions = rng.choice(int(starts[-1]), size=k, replace=False)
    which = np.searchsorted(starts, positions, side="right") - 1
    records = []
    for p, t in zip(positions.tolist(), which.tolist(), strict=True):
        tensor = stored[names[t]]
        local = p - int(starts[t])
        records.append((names[t], local // tensor.nbits, local % tensor.nbits, "flip", tensor.format))
    return FaultList(records)


def evaluate_faults(subject: Subject, stored, faults: FaultList, x: np.ndarray, y: np.ndarray,
                    clean: np.ndarray) -> dict[str, Any]:
    """Replay ``faults`` on ``stored`` through the storage pipeline and score the model on ``(x, y)``.

    Returns ``accuracy``, ``rerr`` (wrong under faults or when clean, Stutz et al.), ``nonfinite`` (any
    logit NaN/inf) and ``n``, as :func:`saf_ref.experiments.campaign.run_trial` does.
    """
    params = load(inject(stored, faults).stored, subject.spec, nonfinite=subject.nonfinite)
    pred, nonfinite = predict(subject.model, params, subject.state, x)
    wrong = pred != y
    return {"accuracy": float(np.mean(~wrong)), "rerr": float(np.mean(wrong | (clean != y))),
            "nonfinite": bool(nonfinite), "n": int(y.shape[0])}


def attack_batch_indices(n_train: int, size: int, seed: int) -> np.ndarray:
    """The training images the attacker sees: ``size`` distinct indices, sorted, drawn with
    ``default_rng(SeedSequence(seed, spawn_key=(0,)))``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_BATCH_KEY,)))
    return np.sort(rng.choice(n_train, size=size, replace=False))


def _sweep_subject(subject: Subject, x_attack, y_attack, x_eval, y_eval, cfg: AttackSweepConfig):
    """Attack one subject once and score every budget; random patterns likewise. Returns
    ``(trial records, attack record, clean accuracy)``."""
    budgets = sorted(cfg.budgets)
    stored = store(subject.params, subject.spec)
    clean = predict(subject.model, load(stored, subject.spec, nonfinite=subject.nonfinite), subject.state,
                    x_eval)[0]
    head = {"subject": subject.key, "method": subject.method, "transform": subject.transform,
            "format": subject.format}
    start = time.perf_counter()
    result = bit_flip_attack(subject.model, subject.params, subject.state, subject.spec, x_attack, y_attack,
                             k=budgets[-1], method="pbs", candidates=cfg.candidates,
                             nonfinite=subject.nonfinite)
    seconds = time.perf_counter() - start
    records = []
    for b in budgets:
        scores = evaluate_faults(subject, stored, prefix(result.faults, b), x_eval, y_eval, clean)
        # the accuracy on the attack batch (the loss, NaN once the network breaks, is in run.json's steps)
        records.append({**head, "attack": "pbs", "budget": b, "trial": 0, **scores,
                        "attack_accuracy": result.steps[b].accuracy})
    for t in range(cfg.trials):
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_RANDOM_KEY, t)))
        flips = random_flips(stored, budgets[-1], rng)
        for b in budgets:
            scores = evaluate_faults(subject, stored, prefix(flips, b), x_eval, y_eval, clean)
            records.append({**head, "attack": "random", "budget": b, "trial": t, **scores})
    attack = {"subject": subject.key, "seconds": seconds, "settings": result.settings,
              "steps": [s._asdict() for s in result.steps],
              "faults": json.loads(result.faults.to_json())["faults"]}
    return records, attack, float(np.mean(clean == y_eval))


def summarize_attacks(trials: Sequence[Mapping[str, Any]], clean: Mapping[str, float],
                      confidence: float = 0.95) -> list[dict[str, Any]]:
    """One record per (subject, attack, budget) with the fields :data:`ATTACK_FIELDS`.

    Math
    ----
    As :func:`saf_ref.experiments.campaign.summarize`: means over trials with Student-t intervals (a
    single attack, ``trials = 1``, has a zero-width interval), ``error_mean = 1 - accuracy_mean``, the
    fraction of trials with non-finite logits with a Wilson interval.
    """
    cells: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for rec in trials:
        cells.setdefault((rec["subject"], rec["attack"], rec["budget"]), []).append(rec)
    rows = []
    for (subject, attack, budget), recs in cells.items():  # insertion order: subject, attack, budget
        acc, acc_lo, acc_hi = mean_interval([r["accuracy"] for r in recs], confidence=confidence)
        rerr, rerr_lo, rerr_hi = mean_interval([r["rerr"] for r in recs], confidence=confidence)
        k = sum(bool(r["nonfinite"]) for r in recs)
        nf_lo, nf_hi = wilson_interval(k, len(recs), confidence=confidence)
        first = recs[0]
        rows.append({
            "subject": subject, "method": first["method"], "transform": first["transform"],
            "format": first["format"], "attack": attack, "budget": budget, "trials": len(recs),
            "clean_accuracy": clean.get(subject), "accuracy_mean": acc, "accuracy_ci_low": max(0.0, acc_lo),
            "accuracy_ci_high": min(1.0, acc_hi), "error_mean": 1.0 - acc, "rerr_mean": rerr,
            "rerr_ci_low": max(0.0, rerr_lo), "rerr_ci_high": min(1.0, rerr_hi),
            "nonfinite_fraction": k / len(recs), "nonfinite_ci_low": nf_lo, "nonfinite_ci_high": nf_hi,
        })  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------- result


@dataclass
class AttackSweepResult:
    """Summary rows (:data:`ATTACK_FIELDS`), per-trial records, clean accuracies, the attacks (FaultList
    records and trajectories on the attack batch), the configuration, and whether Ctrl-C cut the run."""

    summary: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    clean: list[dict[str, Any]]
    attacks: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False

    def to_json(self, path) -> None:
        write_atomic(path, json.dumps(self.summary, indent=1, allow_nan=False) + "\n")

    def to_run_json(self, path) -> None:
        doc = {"config": self.config, "clean": self.clean, "interrupted": self.interrupted,
               "attacks": self.attacks, "trials": self.trials}
        # NaN losses of a broken network are kept (JSON extension NaN/Infinity, as FaultList.to_json).
        write_atomic(path, json.dumps(doc, indent=1) + "\n")

    def to_csv(self, path) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=ATTACK_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: row[k] for k in ATTACK_FIELDS} for row in self.summary)
        write_atomic(path, buf.getvalue())


def format_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """A text table of the test error (%): one row per (subject, attack), one column per budget."""
    budgets = sorted({r["budget"] for r in summary})
    rows = list(dict.fromkeys((r["subject"], r["attack"]) for r in summary))
    cells = {(r["subject"], r["attack"], r["budget"]): r["error_mean"] for r in summary}
    head = f"{'model':<36}{'flips':<8}" + "".join(f"{b:>7}" for b in budgets)
    lines = ["test error (%) against the number of flipped bits", head, "-" * len(head)]
    for subject, attack in rows:
        lines.append(f"{subject:<36}{attack:<8}" + "".join(
            f"{100 * cells[(subject, attack, b)]:>7.1f}" if (subject, attack, b) in cells else f"{'':>7}"
            for b in budgets))
    return "\n".join(lines)


def _log(cfg: AttackSweepConfig, message: str) -> None:
    if cfg.verbose:
        print(message, file=sys.stderr, flush=True)


def _subjects(cfg: AttackSweepConfig, data) -> list[Subject]:
    """The subjects the sweep attacks, in its order: the demo's (trained or loaded from checkpoints, with
    the weights-only variants' spec swapped in) and AdvBET (:func:`_advbet`)."""
    dcfg = cfg.demo_config()
    needs_demo = any(SUBJECTS[name][0] != "advbet" for name in cfg.subjects)
    built = demo.build_subjects(dcfg, data) if needs_demo else []
    trained = {(s.method, s.transform, s.format): s for s in built}
    subjects = []
    for name in cfg.subjects:
        method, transform, fmt, exposed, nonfinite = SUBJECTS[name]
        if method == "advbet":
            params, state = _advbet(cfg, dcfg, data)
            spec = _spec_of(name, cfg)
            subjects.append(Subject("advbet", "identity", "quant8", cfg.model, params, state, spec))
            continue
        s = trained[(method, transform, fmt)]
        if exposed == "weights":  # the demo's trained model, stored with only its weights exposed
            suffix = "/weights" + ("/nan0" if nonfinite == "zero" else "")
            s = replace(s, spec=_spec_of(name, cfg), nonfinite=nonfinite, label=f"{s.key}{suffix}")
        subjects.append(s)
    return subjects


def _advbet(cfg: AttackSweepConfig, dcfg: demo.DemoConfig, data):
    """AdvBET (:mod:`saf_ref.attack.advbet`) as the demo trains RandBET: the clipped 8-bit quantizer, the
    demo's optimizer, schedule and seed, with the bits of every step chosen by a ``k_train``-flip attack
    (the ``"gradient"`` method, one round) instead of drawn at random. Checkpoint ``advbet_k<k_train>``."""
    from saf_ref.attack import AdvBETConfig
    from saf_ref.train.loop import train
    from saf_ref.train.optim import SGD
    from saf_ref.train.randbet import RandBETConfig
    from saf_ref.train.schedules import Cosine

    init = demo.init_model(dcfg, data[0].shape[1], data[4])

    def trainer():
        randbet = RandBETConfig(p_train=0.0, weight_clip=cfg.weight_clip,
                                adversarial=AdvBETConfig(k_train=cfg.k_train))
        params, state, _ = train(*init, data[:4], model=cfg.model, spec=demo.quantized_spec(cfg.weight_clip),
                                 epochs=cfg.epochs, batch_size=cfg.batch_size,
                                 optimizer=SGD(cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
                                 schedule=Cosine(cfg.lr, cfg.epochs), randbet=randbet, augment=None,
                                 rng=cfg.seed + 1, verbose=False)  # fmt: skip
        return params, state

    return demo.train_or_load(dcfg, f"advbet_k{cfg.k_train}", trainer)


def run_attack_sweep(cfg: AttackSweepConfig, out: str | os.PathLike, *, force: bool = False,
                     fn: str = "run_attack_sweep", name=str) -> AttackSweepResult:
    """Train or load the models, attack each, replay every budget, add the random baseline, and write
    ``results.json``, ``results.csv``, ``run.json``, ``table.txt`` (and ``results.png``) to ``out``.

    ``out`` is checked (:func:`saf_ref.experiments.demo.check_out`) and so are the budget and the attack
    batch against the data and the model, all before any training. Each finished subject's records are
    journaled to ``out/trials.jsonl``; on Ctrl-C during the attacks the finished subjects are written as
    usual and the result has ``interrupted=True``.
    """
    if not isinstance(cfg, AttackSweepConfig):
        raise TypeError(f"{fn}: cfg must be an AttackSweepConfig, got {validation.describe(cfg)}")
    out = demo.check_out(out, force, fn, name("out"), name("force"))
    start = time.perf_counter()
    data = demo.load_dataset(cfg.dataset, cfg.data_path)
    _check_against_data(cfg, data, fn, name)
    demo.prepare_out(out)
    _log(cfg, f"attack: {cfg.dataset}, model {cfg.model}, {cfg.epochs} epochs per method")
    subjects = demo.train_subjects(lambda: _subjects(cfg, data), cfg.checkpoints)
    idx = attack_batch_indices(data[0].shape[0], cfg.attack_batch, cfg.seed)
    x_attack, y_attack = data[0][idx], data[1][idx]
    x_eval, y_eval = demo.eval_split(data, cfg.eval_limit)
    _log(cfg, f"attack: {len(subjects)} models, budgets up to {max(cfg.budgets)} flips on {len(idx)} "
              f"training images, {cfg.trials} random trials, scored on {y_eval.shape[0]} test images")
    journal = Journal(out / "trials.jsonl")
    trials, attacks, clean, interrupted = [], [], {}, False
    try:
        for s in subjects:
            records, attack, clean[s.key] = _sweep_subject(s, x_attack, y_attack, x_eval, y_eval, cfg)
            journal(records)
            trials += records
            attacks.append(attack)
            _log(cfg, f"  [{s.key}] attacked in {attack['seconds']:.1f}s")
    except KeyboardInterrupt:
        interrupted = True
        _log(cfg, f"\n  interrupted: keeping {len(attacks)} of {len(subjects)} attacked models")
    clean_rows = [{"subject": s.key, "method": s.method, "transform": s.transform, "format": s.format,
                   "clean_accuracy": clean[s.key]} for s in subjects if s.key in clean]
    demo_cfg = config_to_json(cfg.demo_config())
    config = {"attack": config_to_json(cfg), "demo": demo_cfg,
              "attack_batch": idx.tolist(), "n_eval": int(y_eval.shape[0]), "num_classes": data[4],
              "seconds": time.perf_counter() - start}
    summary = summarize_attacks(trials, clean)
    result = AttackSweepResult(summary, trials, clean_rows, attacks, config, interrupted)
    table = format_table(result.summary)
    files = {"results.json": result.to_json, "run.json": result.to_run_json, "results.csv": result.to_csv,
             "table.txt": table + "\n"}  # fmt: skip
    plotted = write_outputs(out, files, journal, interrupted=result.interrupted, kept="completed records",
                            plot=lambda: _try_plot(result, out / "results.png", cfg))  # fmt: skip
    print(table)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.csv'}"
          + (f", {out / 'results.png'}" if plotted else " (install matplotlib for results.png)")
          + f" in {time.perf_counter() - start:.0f}s")
    return result


def _try_plot(result: AttackSweepResult, path: Path, cfg: AttackSweepConfig) -> bool:
    """Test error against flips (symmetric-log axis, so budget 0 shows), one panel per model: the attack
    as a solid line, random flips dashed with their interval over trials."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is an optional extra
        return False
    subjects = list(dict.fromkeys(r["subject"] for r in result.summary))
    cols = min(4, len(subjects))
    rows = math.ceil(len(subjects) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax, subject in zip(axes.flat, subjects, strict=False):
        for attack, style, color in (("pbs", "-", "tab:red"), ("random", "--", "tab:gray")):
            pts = [r for r in result.summary if r["subject"] == subject and r["attack"] == attack]
            b = [r["budget"] for r in pts]
            ax.plot(b, [100 * r["error_mean"] for r in pts], style, color=color, marker="o", ms=3,
                    label="chosen flips (pbs)" if attack == "pbs" else "random flips")
            ax.fill_between(b, [100 * (1 - r["accuracy_ci_high"]) for r in pts],
                            [100 * (1 - r["accuracy_ci_low"]) for r in pts], color=color, alpha=0.2)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_title(subject, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(subjects):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("flipped bits")
    for ax in axes[:, 0]:
        ax.set_ylabel("test error (%)")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{cfg.model} on {cfg.dataset}: chosen against random bit flips", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- CLI


def flag(field_name: str) -> str:
    """The ``saf-ref attack`` option of a config field: ``"attack_batch"`` -> ``"--attack-batch"``."""
    return "--" + field_name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``saf-ref attack`` (used by :mod:`saf_ref.cli`)."""
    parser.add_argument("--out", default="attack_results", help="output directory; must not hold results "
                        "(default: attack_results)")
    parser.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer epochs, trials and budgets ({QUICK['epochs']} epochs, {QUICK['trials']} "
                        f"trials, budgets up to {max(QUICK['budgets'])})")
    demo.add_model_arguments(parser)
    parser.add_argument("--epochs", type=int, help="training epochs per model, >= 1 (default: 12)")
    parser.add_argument("--seed", type=int, help="seed of training, the attack batch and the random flips")
    parser.add_argument("--checkpoints", help="directory to save trained models to and load them from "
                        "(shared with saf-ref demo)")
    parser.add_argument("--subjects", nargs="+", metavar="NAME",
                        help=f"models to attack, among {', '.join(SUBJECTS)} (default: all)")
    parser.add_argument("--budgets", type=int, nargs="+", metavar="K",
                        help=f"distinct flip counts >= 0 (default: {' '.join(map(str, DEFAULT_BUDGETS))})")
    parser.add_argument("--trials", type=int, help="random-flip patterns per budget, >= 1 (default: 10)")
    parser.add_argument("--attack-batch", type=int, metavar="N",
                        help="training images the attacker sees, >= 1 (default: 128)")
    parser.add_argument("--candidates", type=int, help="flips evaluated exactly per attack step (default: 8)")
    parser.add_argument("--k-train", type=int, metavar="K",
                        help="AdvBET: flips of the attack on every training step, >= 1 (default: 20)")
    parser.add_argument("--eval-limit", type=int, metavar="N",
                        help="score on the first N >= 1 test images only")
    parser.add_argument("--quiet", action="store_true", help="no progress output (the table still prints)")


def config_from_args(args: argparse.Namespace) -> AttackSweepConfig:
    """An :class:`AttackSweepConfig` from the parsed options; each is checked here and named as typed."""
    base = AttackSweepConfig(verbose=False)
    base = replace(base, **QUICK) if args.quick else base
    names = ("dataset", "data_path", "model", "width", "epochs", "seed", "checkpoints", "subjects", "budgets",
             "trials", "attack_batch", "candidates", "k_train", "eval_limit")  # fmt: skip
    values = asdict(base) | {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    values["budgets"], values["subjects"] = tuple(values["budgets"]), tuple(values["subjects"])
    values["verbose"] = not args.quiet
    check_fields(values, "saf-ref attack", flag)
    return AttackSweepConfig(**values)


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``saf-ref attack``; return the exit status (0 done, 130 interrupted; errors are raised)."""
    cfg = config_from_args(args)
    result = run_attack_sweep(cfg, args.out, force=args.force, fn="saf-ref attack", name=flag)
    if result.interrupted:
        print(f"saf-ref attack: interrupted: {len(result.attacks)} of {len(cfg.subjects)} models attacked; "
              f"partial results in {os.path.join(args.out, 'results.json')} and run.json", file=sys.stderr)
        return 130
    return 0
