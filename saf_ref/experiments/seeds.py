"""``saf-ref seeds``: the SAF claim at its own operating point, on a ResNet, with paired fault patterns.

The saturated-weight-transform (SAF) paper claims that a network computing with ``w = f(u)`` (tanh,
arctan) runs *with minor accuracy loss* at the bit-error rate where the plain float32 network only
produces random guesses (ImageNet ResNet-18, 11.7 million weights, at 1e-5). Where a rate "breaks" a
network depends on how many words are stored, so this command measures the claim on a ResNet-20
(68 thousand weights at the default width 8, 272 thousand at width 16) instead of the demo's
12-thousand-weight CNN:

1. trains, from one initialization, a plain **baseline** and **SAF** models (tanh, arctan) on the
   shipped MNIST subset (4,000 train / 1,000 test images), with the demo's optimizer and schedule;
2. **converts** the trained baseline to SAF (``u = f^{-1}(w)``, :func:`saf_ref.protect.convert.
   convert_to_saf`) and fine-tunes it for a few epochs, timing both the from-scratch training and the
   fine-tuning (the paper's "adapt a pretrained network in a few epochs");
3. stores every model in float32 (and the SAF models in float16 and q2.5), with two **exposures**:
   ``weights`` (only conv/linear weights are in faulty memory: the paper's setting, whose fault model
   corrupts ``W_i`` and not ``b_i``) and ``all`` (every stored parameter, biases and batch-norm scales and
   shifts included, raw: the demo's setting);
4. evaluates every model on the **same fixed set of fault patterns** (``--patterns``, default 50, as
   in Stutz et al.'s reference code): pattern ``t`` is drawn from
   :func:`saf_ref.experiments.campaign.trial_rng` ``(seed, t)`` for every model, so two models with the
   same parameter shapes, format and exposure see exactly the same bit flips (the *paired design*), and
   a difference between them is measured pattern by pattern (:func:`paired_summary`);
5. prints the accuracy table and the **claim check** (:func:`claim_rows`): at each rate where the
   float32 baseline is within 10 points of chance, how far each SAF model is from its clean accuracy,
   with Student-t intervals over the patterns (:mod:`saf_ref.experiments.stats`), per exposure.

Outputs in ``--out``: ``results.json`` / ``results.csv`` (the campaign summary, one record per model and
rate, ``exposure`` added), ``paired.json`` / ``paired.csv`` (per model and rate: the drop from clean
accuracy, the difference to the baseline on the same patterns, the fraction of patterns that leave the
model at chance, each with its interval), ``claim.txt``, ``table.txt`` and ``run.json`` (configuration,
clean accuracies, per-pattern records, training and fine-tuning times). Every option is checked before
any data is loaded or any model is trained; ``--checkpoints`` keeps the trained models (shared with
``saf-ref demo`` when the training settings match).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.experiments import demo
from saf_ref.experiments.campaign import (
    CampaignResult,
    Journal,
    Subject,
    clean_predictions,
    rows_to_csv,
    run_campaign,
    write_outputs,
)
from saf_ref.experiments.stats import mean_interval, wilson_interval

__all__ = [
    "SeedsConfig",
    "EXPOSURES",
    "QUICK",
    "build_subjects",
    "claim_rows",
    "paired_summary",
    "run_seeds",
    "add_arguments",
    "config_from_args",
    "run_from_args",
]

#: ``weights``: only conv/linear weights are exposed to faults; ``all``: every stored parameter.
EXPOSURES = ("weights", "all")
#: Faulty accuracy within this many points of chance counts as "at chance" (the issue's criterion).
CHANCE_MARGIN = 0.10
#: SAF "with minor accuracy loss": at most this far below its clean accuracy.
MINOR_LOSS = 0.03
CONVERT_MODES = ("copy", "inverse")

# The DemoConfig fields shared with the demo (training, data, checkpoints, evaluation, sweep).
_DEMO_FIELDS = (*demo.TRAINING_FIELDS, "rates", "eval_limit", "workers", "checkpoints", "verbose")


@dataclass(frozen=True)
class SeedsConfig(demo.TrainingSettings):
    """Everything ``saf-ref seeds`` does (``saf-ref seeds --help`` maps options onto it).

    The training fields are :class:`~saf_ref.experiments.demo.TrainingSettings`' (same names, order and
    checks) with ResNet defaults: ResNet-20 at half width (8/16/32 channels, 68 thousand weights; width
    16 is the full ResNet-20 and takes about 2.5 times as long) on the shipped MNIST subset, 6 epochs,
    batch 64, evaluated on the first 200 test images (a forward pass of the 1,000 costs a second or more,
    and the sweep makes thousands).
    """

    dataset: str = "mnist5k"
    model: str = "resnet20"
    width: int = 8
    epochs: int = 6
    batch_size: int = 64
    saf_transforms: tuple[str, ...] = ("tanh", "arctan")
    formats: tuple[str, ...] = ("float32", "float16", "q2.5")  # of the SAF models; the baseline: float32
    exposures: tuple[str, ...] = EXPOSURES
    rates: tuple[float, ...] = (1e-5, 3e-5, 1e-4)
    patterns: int = 50
    eval_limit: int | None = 200
    finetune_epochs: int = 2  # 0: no conversion
    finetune_lr: float = 0.01
    convert_mode: str = "inverse"
    workers: int | None = None
    checkpoints: str | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        check_fields({f.name: getattr(self, f.name) for f in fields(self)}, "SeedsConfig")

    def demo_config(self) -> demo.DemoConfig:
        """The :class:`~saf_ref.experiments.demo.DemoConfig` that trains this run's float models (its
        checkpoints are the demo's when the training settings match)."""
        shared = {k: getattr(self, k) for k in _DEMO_FIELDS}
        return demo.DemoConfig(**shared, float_transforms=("identity", *self.saf_transforms),
                               float_formats=self.formats, scaled_formats=())  # fmt: skip


# --quick: the demo's small CNN on the shipped digits (12 thousand weights, so the rates are ten times
# higher), 6 epochs as `saf-ref demo --quick` (same training settings: its checkpoints are shared).
QUICK = {
    "dataset": "digits",
    "model": "small_cnn",
    "width": 8,
    "epochs": 6,
    "batch_size": 32,
    "patterns": 10,
    "rates": (3e-4, 1e-3, 3e-3),
    "eval_limit": None,
}

# ------------------------------------------------------------------------------------------ checks


def _check_names(choices: Sequence[str] | None, items: str):
    """A check for a non-empty sequence of distinct names, each one of ``choices`` (None: any name the
    format/transform lookup accepts, checked by ``lookup``)."""

    def check(values: Any, name: str, fn: str, lookup=None) -> None:
        def each(v: Any) -> None:
            if choices is not None:
                validation.check_choice(v, name, fn, tuple(choices))
            elif not isinstance(v, str):
                raise TypeError(f"{fn}: {name} must be a sequence of {items}, got {validation.describe(v)}")
            if lookup is not None:
                lookup(v)

        demo.check_sequence(
            values, name, fn, items=items, each=each, empty=f"name at least one of the {items}"
        )

    return check


def _check_saf_transforms(values: Any, name: str, fn: str) -> None:
    from saf_ref.protect import get_transform

    def lookup(v: str) -> None:
        if get_transform(v).name == "identity":  # raises its own templated error for an unknown name
            raise ValueError(f"{fn}: {name} must be saturating transforms (the baseline is always "
                             f"trained), got {v!r}")  # fmt: skip

    _check_names(None, "transform names")(values, name, fn, lookup)


def _check_formats(values: Any, name: str, fn: str) -> None:
    from saf_ref.bits import get_format

    _check_names(None, "format names")(values, name, fn, get_format)


def _check_finetune_lr(value: Any, name: str, fn: str) -> None:
    x = validation.check_real(value, name, fn)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{fn}: {name} must be a finite number > 0, got {value!r}")


_OWN_CHECKS = {
    "saf_transforms": _check_saf_transforms,
    "formats": _check_formats,
    "exposures": _check_names(EXPOSURES, "exposures"),
    "patterns": lambda v, name, fn: validation.check_int(v, name, fn, low=1),
    "finetune_epochs": lambda v, name, fn: validation.check_int(v, name, fn, low=0),
    "finetune_lr": _check_finetune_lr,
    "convert_mode": lambda v, name, fn: validation.check_choice(v, name, fn, CONVERT_MODES),
}


def check_fields(values: Mapping[str, Any], fn: str, name=str) -> None:
    """Check :class:`SeedsConfig` field values; errors call a field ``name(field)`` (a flag or a field).

    The fields shared with the demo go through :func:`saf_ref.experiments.demo.check_fields` (the same
    rules and messages as ``saf-ref demo``), this command's own through the checks above.
    """
    demo_values = asdict(demo.DemoConfig()) | {k: values[k] for k in _DEMO_FIELDS}
    demo.check_fields(demo_values, fn, name)
    for key, check in _OWN_CHECKS.items():
        check(values[key], name(key), fn)


# ------------------------------------------------------------------------------------------ models


def _log(cfg: SeedsConfig, message: str) -> None:
    if cfg.verbose:
        print(message, file=sys.stderr, flush=True)


def _spec(fmt: str, transform: str, exposure: str):
    from saf_ref.protect import default_spec

    return default_spec(fmt, transform, expose_non_weights=exposure == "all")


def _timed(timings: dict[str, float | None], name: str, cfg: demo.DemoConfig, trainer):
    """:func:`~saf_ref.experiments.demo.train_or_load`, recording the training time (None if loaded)."""
    path = None if cfg.checkpoints is None else Path(cfg.checkpoints) / f"{name}.npz"
    loaded = path is not None and path.exists()
    start = time.perf_counter()
    params, state = demo.train_or_load(cfg, name, trainer)
    timings[name] = None if loaded else time.perf_counter() - start
    return params, state


def _finetune(cfg: SeedsConfig, data, params, state, transform: str):
    """``cfg.finetune_epochs`` epochs of SGD (the demo's momentum and weight decay, cosine from
    ``cfg.finetune_lr``) on a network computing with ``w = transform(u)``."""
    from saf_ref.train.loop import train
    from saf_ref.train.optim import SGD
    from saf_ref.train.schedules import Cosine

    optimizer = SGD(cfg.finetune_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params, state, _ = train(params, state, data, model=cfg.model, epochs=cfg.finetune_epochs,
                             batch_size=cfg.batch_size, optimizer=optimizer,
                             schedule=Cosine(cfg.finetune_lr, cfg.finetune_epochs), transform=transform,
                             augment=None, rng=cfg.seed + 2, verbose=False)  # fmt: skip
    return params, state


def build_subjects(cfg: SeedsConfig, data) -> tuple[list[Subject], dict[str, Any]]:
    """Train (or load) the models and describe how each is stored; also the training facts.

    Returns the subjects (baseline in float32, each SAF model in every format, the converted model in
    float32; each once per exposure, labelled ``method/transform/format/exposure``) and a dict with the
    training seconds per model (None when loaded from a checkpoint) and the converted model's clean
    accuracy before and after fine-tuning.
    """
    from saf_ref.protect.convert import convert_to_saf

    dcfg = cfg.demo_config()
    x_train, _, x_test, y_test, num_classes = data
    init = demo.init_model(dcfg, x_train.shape[1], num_classes)
    timings: dict[str, float | None] = {}
    models = []  # (method, transform, formats, params, state)
    for transform in ("identity", *cfg.saf_transforms):
        method = "baseline" if transform == "identity" else "saf"
        params, state = _timed(timings, f"{method}_{transform}", dcfg,
                               lambda t=transform: demo.train_float(dcfg, data[:4], init, t))  # fmt: skip
        models.append(
            (method, transform, ("float32",) if method == "baseline" else cfg.formats, params, state)
        )
    facts: dict[str, Any] = {"seconds": timings}
    if cfg.finetune_epochs > 0:
        target = cfg.saf_transforms[0]
        base_params, base_state = models[0][3], models[0][4]
        latents = convert_to_saf(base_params, target, mode=cfg.convert_mode)
        name = f"convert_{target}_{cfg.convert_mode}_ft{cfg.finetune_epochs}_lr{cfg.finetune_lr:g}"
        params, state = _timed(timings, name, dcfg,
                               lambda: _finetune(cfg, data[:4], latents, base_state, target))  # fmt: skip
        x_eval, y_eval = demo.eval_split(data, cfg.eval_limit)

        def clean(p, s, t):
            subject = Subject("converted", t, "float32", cfg.model, p, s, _spec("float32", t, "weights"))
            return float(np.mean(clean_predictions(subject, x_eval) == y_eval))

        facts["convert"] = {"transform": target, "mode": cfg.convert_mode, "epochs": cfg.finetune_epochs,
                            "lr": cfg.finetune_lr, "checkpoint": name,
                            "clean_before_finetune": clean(latents, base_state, target),
                            "clean_after_finetune": clean(params, state, target)}  # fmt: skip
        models.append(("converted", target, ("float32",), params, state))
    subjects = [
        Subject(method, transform, fmt, cfg.model, params, state, _spec(fmt, transform, exposure),
                label=f"{method}/{transform}/{fmt}/{exposure}")
        for exposure in cfg.exposures
        for method, transform, formats, params, state in models
        for fmt in formats
    ]  # fmt: skip
    return subjects, facts


def exposed_words(subject: Subject) -> dict[str, int]:
    """The stored words of ``subject`` exposed to faults: conv/linear ``weights``, ``other`` (biases and
    normalization parameters), and ``bits`` (all exposed bits; the mean number of flips of a pattern at
    rate ``p`` is ``p * bits``)."""
    from saf_ref.protect import param_role

    shapes = {k: v.shape for k, v in subject.params.items()}
    rules = subject.spec.resolve(shapes, "exposed_words")
    counts = {"weights": 0, "other": 0, "bits": 0}
    for name, shape in shapes.items():
        if rules[name].exposed:
            words = int(np.prod(shape, dtype=np.int64))
            counts["weights" if param_role(name, shapes) == "weight" else "other"] += words
            counts["bits"] += words * rules[name].format.nbits
    return counts


def exposure_of(subject_key: str) -> str:
    """The exposure of a subject labelled by :func:`build_subjects` (its last ``/`` field)."""
    return subject_key.rsplit("/", 1)[1]


# ---------------------------------------------------------------------------------------- analysis


def paired_summary(
    trials: Sequence[Mapping[str, Any]],
    clean: Mapping[str, float],
    num_classes: int,
    *,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Per (subject, rate), statistics over the shared fault patterns, pattern by pattern.

    Parameters
    ----------
    trials : sequence of dict
        Per-pattern records of :func:`saf_ref.experiments.campaign.run_trial` (``trial`` = pattern index),
        subjects labelled ``method/transform/format/exposure``.
    clean : dict str -> float
        Clean accuracy per subject.
    num_classes : int
        For the chance level ``1 / num_classes``.
    confidence : float in (0, 1)

    Returns
    -------
    list of dict
        ``subject, method, transform, format, exposure, ber, patterns, clean_accuracy``; ``drop_mean``
        (clean minus faulty accuracy) and its interval; ``vs_baseline_mean`` (faulty accuracy minus the
        float32 baseline's, same exposure, same patterns) and its interval, None for the baseline and
        where there is no such baseline; ``at_chance_fraction`` (patterns that leave the model within
        :data:`CHANCE_MARGIN` of chance) with a Wilson interval.

    Math
    ----
    With ``a_t`` the accuracy under pattern ``t`` (``t = 0..T-1``), ``c`` the clean accuracy and ``b_t``
    the baseline's under the same pattern: ``drop = mean_t (c - a_t)`` and ``vs_baseline = mean_t
    (a_t - b_t)``, each with the Student-t interval of :func:`~saf_ref.experiments.stats.mean_interval`
    over its ``T`` paired values. Pairing removes the pattern-to-pattern variance the two models share
    (both hit hard by the same flips), so the interval of a difference is narrower than the two
    unpaired intervals suggest. Patterns missing for either model (an interrupted run) are left out.
    """
    chance = 1.0 / num_classes
    acc: dict[tuple[str, float], dict[int, float]] = {}
    meta: dict[str, Mapping[str, Any]] = {}
    for rec in trials:
        acc.setdefault((rec["subject"], rec["ber"]), {})[rec["trial"]] = rec["accuracy"]
        meta.setdefault(rec["subject"], rec)
    rows = []
    order = list(meta)
    for (subject, ber), by_pattern in sorted(acc.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        rec, exposure = meta[subject], exposure_of(subject)
        values = [by_pattern[t] for t in sorted(by_pattern)]
        drop, drop_lo, drop_hi = mean_interval([clean[subject] - a for a in values], confidence=confidence)
        k = sum(a <= chance + CHANCE_MARGIN for a in values)
        lo, hi = wilson_interval(k, len(values), confidence=confidence)
        row = {"subject": subject, "method": rec["method"], "transform": rec["transform"],
               "format": rec["format"], "exposure": exposure, "ber": ber, "patterns": len(values),
               "clean_accuracy": clean[subject], "accuracy_mean": float(np.mean(values)),
               "drop_mean": drop, "drop_ci_low": drop_lo, "drop_ci_high": drop_hi,
               "vs_baseline_mean": None, "vs_baseline_ci_low": None, "vs_baseline_ci_high": None,
               "at_chance_fraction": k / len(values),
               "at_chance_ci_low": lo, "at_chance_ci_high": hi}  # fmt: skip
        base = acc.get((f"baseline/identity/float32/{exposure}", ber))
        if rec["method"] != "baseline" and base is not None:
            shared = sorted(set(by_pattern) & set(base))
            if shared:
                d, d_lo, d_hi = mean_interval(
                    [by_pattern[t] - base[t] for t in shared], confidence=confidence
                )
                row.update(vs_baseline_mean=d, vs_baseline_ci_low=d_lo, vs_baseline_ci_high=d_hi)
        rows.append(row)
    return rows


def claim_rows(paired: Sequence[Mapping[str, Any]], num_classes: int) -> list[dict[str, Any]]:
    """The claim check, one row per (exposure, rate, SAF or converted subject), at the rates where the
    float32 baseline (same exposure) is at chance.

    A rate qualifies when the baseline's mean faulty accuracy is at most ``1 / num_classes +``
    :data:`CHANCE_MARGIN`; there a subject *holds* the claim when its mean drop from clean accuracy is at
    most :data:`MINOR_LOSS` (``holds_ci``: also the upper end of the drop's interval), and its clean
    accuracy is above that chance margin itself (``trained``: a model that guesses loses nothing).
    """
    chance = 1.0 / num_classes
    base = {
        (r["exposure"], r["ber"]): r for r in paired if r["method"] == "baseline" and r["format"] == "float32"
    }
    rows = []
    for r in paired:
        b = base.get((r["exposure"], r["ber"]))
        if r["method"] == "baseline" or b is None or b["accuracy_mean"] > chance + CHANCE_MARGIN:
            continue
        trained = r["clean_accuracy"] > chance + CHANCE_MARGIN
        rows.append({"exposure": r["exposure"], "ber": r["ber"], "baseline_accuracy": b["accuracy_mean"],
                     "subject": r["subject"], "clean_accuracy": r["clean_accuracy"],
                     "accuracy_mean": r["accuracy_mean"], "drop_mean": r["drop_mean"],
                     "drop_ci_high": r["drop_ci_high"], "at_chance_fraction": r["at_chance_fraction"],
                     "trained": trained, "holds": trained and r["drop_mean"] <= MINOR_LOSS,
                     "holds_ci": trained and r["drop_ci_high"] <= MINOR_LOSS})  # fmt: skip
    return rows


def format_table(result: CampaignResult) -> str:
    """Mean accuracy (%) per subject (rows, with the exposure) and rate (columns), clean first."""
    rates = sorted({row["ber"] for row in result.summary})
    cells = {(row["subject"], row["ber"]): row["accuracy_mean"] for row in result.summary}
    head = (f"{'method':<11}{'transform':<10}{'format':<9}{'exposure':<9}{'clean':>7}"
            + "".join(f"{r:>8.0e}" for r in rates))  # fmt: skip
    lines = [head, "-" * len(head)]
    for c in result.clean:
        s = c["subject"]
        row = f"{c['method']:<11}{c['transform']:<10}{c['format']:<9}{exposure_of(s):<9}"
        row += f"{100 * c['clean_accuracy']:>7.1f}"
        row += "".join(f"{100 * cells[(s, r)]:>8.1f}" if (s, r) in cells else f"{'':>8}" for r in rates)
        lines.append(row)
    return "\n".join(lines)


def format_claim(
    claims: Sequence[Mapping[str, Any]],
    paired: Sequence[Mapping[str, Any]],
    num_classes: int,
    exposed: Mapping[str, Mapping[str, int]] | None = None,
) -> str:
    """The claim check as text: per exposure, the exposed words of the float32 baseline (``exposed``, by
    subject, from :func:`exposed_words`), the rates where it is at chance and, there, each model's drop
    from its clean accuracy (points, with the upper end of its interval)."""
    chance = 100.0 / num_classes
    lines = [
        f"SAF claim: at a rate where the float32 baseline is within {100 * CHANCE_MARGIN:.0f} points of "
        f"chance ({chance:.0f}%), the SAF model is within {100 * MINOR_LOSS:.0f} points of its clean "
        "accuracy. drop = clean - faulty accuracy (points), mean over the patterns [upper end of its 95% "
        f"interval]; at chance: the patterns that leave the model within {100 * CHANCE_MARGIN:.0f} points of "
        "chance."
    ]
    for exposure in dict.fromkeys(r["exposure"] for r in paired):
        base = [r for r in paired if r["exposure"] == exposure and r["method"] == "baseline"]
        lines.append(
            f"\nexposure {exposure!r}: float32 baseline accuracy "
            + ", ".join(f"{r['ber']:.0e}: {100 * r['accuracy_mean']:.1f}%" for r in base)
        )
        words = (exposed or {}).get(f"baseline/identity/float32/{exposure}")
        if words is not None:
            flips = ", ".join(f"{r['ber']:.0e}: {r['ber'] * words['bits']:.3g}" for r in base)
            lines.append(f"  exposed float32 words: {words['weights']:,} conv/linear weights + "
                         f"{words['other']:,} biases and norm parameters; mean flips per pattern "
                         f"{flips}")  # fmt: skip
        rows = [c for c in claims if c["exposure"] == exposure]
        if not rows:
            lines.append("  no rate swept puts the baseline at chance")
            continue
        lines.append(f"  {'rate':<7}{'model':<33}{'clean':>6}{'faulty':>7}{'drop':>6} {'[high]':<8}"
                     f"{'at chance':>9}  claim")  # fmt: skip
        for c in rows:
            verdict = "holds" if c["holds"] else "FAILS" if c["trained"] else "n/a (clean at chance)"
            lines.append(f"  {c['ber']:<7.0e}{c['subject']:<33}{100 * c['clean_accuracy']:>6.1f}"
                         f"{100 * c['accuracy_mean']:>7.1f}{100 * c['drop_mean']:>6.1f} "
                         f"[{100 * c['drop_ci_high']:>5.1f}]{100 * c['at_chance_fraction']:>8.0f}%  "
                         f"{verdict}")  # fmt: skip
    return "\n".join(lines)


PAIRED_FIELDS = ("subject", "method", "transform", "format", "exposure", "ber", "patterns", "clean_accuracy",
                 "accuracy_mean", "drop_mean", "drop_ci_low", "drop_ci_high", "vs_baseline_mean",
                 "vs_baseline_ci_low", "vs_baseline_ci_high", "at_chance_fraction", "at_chance_ci_low",
                 "at_chance_ci_high")  # fmt: skip


def _json(doc: Any) -> str:
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------- run

OUTPUTS = ("results.json", "results.csv", "paired.json", "paired.csv", "claim.txt", "table.txt", "run.json",
           "trials.jsonl")  # fmt: skip


def run_seeds(
    cfg: SeedsConfig, out: str | os.PathLike, *, force: bool = False, fn: str = "run_seeds", name=str
) -> CampaignResult:
    """Train (or load), convert and fine-tune, sweep on shared patterns, and write the outputs to ``out``
    (see the module docstring). ``out`` is checked before anything runs; completed (model, pattern) units
    are journaled to ``out/trials.jsonl``; on Ctrl-C during the sweep the completed patterns are written
    and the result has ``interrupted=True``."""
    if not isinstance(cfg, SeedsConfig):
        raise TypeError(f"{fn}: cfg must be a SeedsConfig, got {validation.describe(cfg)}")
    out = demo.check_out(out, force, fn, name("out"), name("force"), outputs=OUTPUTS)
    start = time.perf_counter()
    data = demo.load_dataset(cfg.dataset, cfg.data_path)
    demo.check_eval_limit(cfg.eval_limit, data, cfg.dataset, fn, name("eval_limit"))
    demo.prepare_out(out, OUTPUTS)
    _log(cfg, f"seeds: {cfg.dataset} ({data[0].shape[0]} train / {data[2].shape[0]} test images), "
              f"{cfg.model} width {cfg.width}, {cfg.epochs} epochs per model")  # fmt: skip
    subjects, facts = demo.train_subjects(lambda: build_subjects(cfg, data), cfg.checkpoints)
    facts["exposed"] = {s.key: exposed_words(s) for s in subjects if s.method == "baseline"}
    x_eval, y_eval = demo.eval_split(data, cfg.eval_limit)
    _log(cfg, f"seeds: {len(subjects)} models x {len(cfg.rates)} rates x {cfg.patterns} shared fault "
              f"patterns on {y_eval.shape[0]} test images")  # fmt: skip
    journal = Journal(out / "trials.jsonl")
    try:
        result = run_campaign(subjects, x_eval, y_eval, cfg.rates, trials=cfg.patterns, seed=cfg.seed,
                              max_workers=cfg.workers, progress=cfg.verbose, on_result=journal)  # fmt: skip
    except KeyboardInterrupt:
        journal.path.unlink()
        raise KeyboardInterrupt("before the first pattern completed; nothing was written") from None
    num_classes = data[4]
    for row in (*result.summary, *result.clean, *result.trials):
        row["exposure"] = exposure_of(row["subject"])
    clean = {c["subject"]: c["clean_accuracy"] for c in result.clean}
    paired = paired_summary(result.trials, clean, num_classes) if result.trials else []
    claims = claim_rows(paired, num_classes)
    result.config.update(
        {
            "seeds": json.loads(json.dumps(asdict(cfg), default=str)),
            "num_classes": num_classes,
            "training": facts,
            "claim": claims,
            "seconds": time.perf_counter() - start,
        }
    )
    table, claim = format_table(result), format_claim(claims, paired, num_classes, facts["exposed"])
    summary_csv = rows_to_csv(result.summary, (*_SUMMARY, "exposure"))
    files = {"results.json": result.to_json, "results.csv": summary_csv,
             "paired.json": _json(paired), "paired.csv": rows_to_csv(paired, PAIRED_FIELDS),
             "claim.txt": claim + "\n", "table.txt": table + "\n",
             "run.json": result.to_run_json}  # fmt: skip
    write_outputs(out, files, journal, interrupted=result.interrupted, kept="completed patterns")
    print(table + "\n\n" + claim)
    if "convert" in facts:
        print("\n" + format_conversion(facts))
    print(
        f"\nwrote {out / 'results.json'}, {out / 'paired.json'}, {out / 'claim.txt'} "
        f"in {time.perf_counter() - start:.0f}s"
    )
    return result


def format_conversion(facts: Mapping[str, Any]) -> str:
    """One paragraph: the converted model's clean accuracy before and after fine-tuning, and the cost."""
    c, seconds = facts["convert"], facts["seconds"]
    scratch = seconds.get(f"saf_{c['transform']}")
    cost = seconds.get(c["checkpoint"])

    def t(s):
        return "loaded from a checkpoint" if s is None else f"{s:.0f} s"

    return (
        f"conversion: baseline -> {c['transform']} ({c['mode']}), clean accuracy "
        f"{100 * c['clean_before_finetune']:.1f}% before and {100 * c['clean_after_finetune']:.1f}% after "
        f"{c['epochs']} fine-tuning epoch(s) at lr {c['lr']:g} ({t(cost)}; training {c['transform']} "
        f"from scratch: {t(scratch)})"
    )


_SUMMARY = ("subject", "method", "transform", "format", "ber", "trials", "clean_accuracy", "accuracy_mean",
            "accuracy_ci_low", "accuracy_ci_high", "rerr_mean", "rerr_ci_low", "rerr_ci_high",
            "nonfinite_fraction")  # fmt: skip

# ---------------------------------------------------------------------------------------------- CLI


def flag(field_name: str) -> str:
    """The ``saf-ref seeds`` option of a config field: ``"finetune_epochs"`` -> ``"--finetune-epochs"``."""
    return "--" + field_name.replace("_", "-")


_DEFAULT = SeedsConfig(verbose=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``saf-ref seeds`` (used by :mod:`saf_ref.cli`); none has a parser default, so an
    option not given keeps the configuration's (or ``--quick``'s) value."""
    d = _DEFAULT
    parser.add_argument(
        "--out",
        default="seeds_results",
        help="output directory; must not hold results (default: seeds_results)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a one-minute version: the demo's small CNN on the shipped digits, {QUICK['epochs']} epochs, "
        f"{QUICK['patterns']} patterns, rates {' '.join(map(str, QUICK['rates']))}",
    )
    demo.add_model_arguments(parser)
    defaults = {"dataset": f"default: {d.dataset}",
                "model": "small_cnn, resnet20 (default), resnet18_cifar, resnet18",
                "width": f"channels of the first stage (default: {d.width})"}  # fmt: skip
    for action in parser._actions:  # the shared options, with this command's defaults in their help
        action.help = defaults.get(action.dest, action.help)
    parser.add_argument("--epochs", type=int, help=f"training epochs per model, >= 1 (default: {d.epochs})")
    parser.add_argument("--batch-size", type=int, help=f"training batch size (default: {d.batch_size})")
    parser.add_argument(
        "--saf-transforms",
        nargs="+",
        metavar="NAME",
        help=f"saturating transforms to train (default: {' '.join(d.saf_transforms)})",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        metavar="NAME",
        help=f"storage formats of the SAF models (default: {' '.join(d.formats)})",
    )
    parser.add_argument(
        "--exposures",
        nargs="+",
        metavar="NAME",
        help="weights (conv/linear weights only) and/or all (every parameter) (default: both)",
    )
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        metavar="P",
        help=f"distinct bit-error rates in [0, 1] (default: {' '.join(map(str, d.rates))})",
    )
    parser.add_argument(
        "--patterns",
        type=int,
        metavar="N",
        help=f"fault patterns shared by every model, >= 1 (default: {d.patterns})",
    )
    parser.add_argument(
        "--eval-limit",
        type=int,
        metavar="N",
        help=f"evaluate on the first N >= 1 test images (default: {d.eval_limit}; at most the test split's "
        "size, which is all of it)",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        metavar="E",
        help=f"epochs of fine-tuning the converted baseline, 0: no conversion (default: {d.finetune_epochs})",
    )
    parser.add_argument(
        "--finetune-lr", type=float, help=f"fine-tuning learning rate (default: {d.finetune_lr})"
    )
    parser.add_argument(
        "--convert-mode", help=f"copy (u = w) or inverse (u = f^-1(w)) (default: {d.convert_mode})"
    )
    parser.add_argument("--seed", type=int, help="seed of training and of the fault patterns (default: 0)")
    parser.add_argument("--workers", type=int, help="worker processes for the sweep (default: all cores)")
    parser.add_argument("--checkpoints", help="directory to save trained models to and load them from")
    parser.add_argument("--quiet", action="store_true", help="no progress output (the tables still print)")


_OPTIONS = ("dataset", "data_path", "model", "width", "epochs", "batch_size", "saf_transforms", "formats",
            "exposures", "rates", "patterns", "eval_limit", "finetune_epochs", "finetune_lr", "convert_mode",
            "seed", "workers", "checkpoints")  # fmt: skip
_SEQUENCES = ("saf_transforms", "formats", "exposures", "rates")


def config_from_args(args: argparse.Namespace) -> SeedsConfig:
    """A :class:`SeedsConfig` from the parsed options; each is checked here, before any work, and a bad one
    is named as typed (``--patterns``)."""
    base = replace(_DEFAULT, **QUICK) if args.quick else _DEFAULT
    values = asdict(base) | {k: getattr(args, k) for k in _OPTIONS if getattr(args, k, None) is not None}
    for key in _SEQUENCES:
        values[key] = tuple(values[key])
    values["verbose"] = not args.quiet
    check_fields(values, "saf-ref seeds", flag)
    return SeedsConfig(**values)


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``saf-ref seeds``; return the exit status (0 done, 130 interrupted; errors are raised)."""
    cfg = config_from_args(args)
    result = run_seeds(cfg, args.out, force=args.force, fn="saf-ref seeds", name=flag)
    if result.interrupted:
        done = len({(r["subject"], r["trial"]) for r in result.trials})
        print(
            f"saf-ref seeds: interrupted: {done} of {len(result.clean) * cfg.patterns} (model, pattern) "
            f"units completed; partial results in {os.path.join(args.out, 'results.json')}",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="saf-ref seeds", description=__doc__.split("\n\n")[0])
    add_arguments(_parser)
    sys.exit(run_from_args(_parser.parse_args()))
