"""``saf-ref format-faults``: one model stored in many number formats, weight and activation faults, SDC.

What it does, with no arguments, no network and only the shipped data (about two minutes on two cores;
``--quick`` well under one):

1. trains (or loads from ``--checkpoints``, shared with ``saf-ref demo``) the demo's plain baseline
   (``w = u``) and its SAF model (``w = tanh(u)``);
2. stores each in every weight format: float16, bfloat16, FP8 (``float8_e4m3fn``), the OCP Microscaling
   formats MXFP8 (``mxfp8_e4m3``), MXFP6 (``mxfp6_e2m3``) and MXFP4 (``mxfp4``), and INT8 (the per-tensor
   symmetric 8-bit quantizer); the latents ``u`` are what is stored, the transform is applied after
   reading, as in the demo;
3. flips random bits of the stored weights at the same bit-error rates in every format (nested patterns,
   one per trial) and classifies every test example against the golden run (the stored model read back
   without faults): masked, SDC (top-1 changed), detected (NaN/inf outputs)
   (:func:`saf_ref.experiments.sdc.run_weight_sdc`);
4. flips random bits of the baseline's *activations*, each layer alone, stored in each activation format,
   and reports the SDC rate per layer (:func:`saf_ref.experiments.sdc.run_activation_sdc`), then per bit
   position (only that bit may flip) in the ``--bit-formats`` at the largest activation rate;
5. prints two tables and writes ``results.json`` (both summaries and the golden accuracies), ``run.json``
   (configuration and per-trial records), ``weights.csv``, ``activations.csv``, ``table.txt`` and
   ``vulnerability.png`` (matplotlib) to ``--out``.

Every option is checked before any data is loaded or any model trained. ``results.json`` holds no
timings: the same configuration gives the same bytes, whatever the number of workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from saf_ref import validation
from saf_ref.experiments.demo import TRAINING_FIELDS, TrainingSettings

__all__ = [
    "ACT_FORMATS",
    "FormatsConfig",
    "OUTPUTS",
    "QUICK",
    "WEIGHT_FORMATS",
    "add_arguments",
    "build_subjects",
    "check_config",
    "config_from_args",
    "format_tables",
    "run_formats",
    "run_from_args",
    "weight_format",
]

WEIGHT_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "mxfp8_e4m3", "mxfp6_e2m3", "mxfp4", "int8")
ACT_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "mxfp8_e4m3", "mxfp4", "int8")
QUICK = {
    "epochs": 4,
    "trials": 2,
    "rates": (1e-4, 1e-3, 1e-2),
    "act_rates": (1e-3,),
    "eval_limit": 120,
    "bit_formats": ("int8",),
}
OUTPUTS = ("results.json", "run.json", "weights.csv", "activations.csv", "table.txt", "vulnerability.png")
_DEMO_FIELDS = (*TRAINING_FIELDS, "eval_limit", "workers", "checkpoints", "verbose")


@dataclass(frozen=True)
class FormatsConfig(TrainingSettings):
    """Everything ``saf-ref format-faults`` does (``--help`` maps options onto it).

    The training fields are the demo's (:class:`~saf_ref.experiments.demo.TrainingSettings`), so the
    models and checkpoints are the demo's baseline and SAF tanh models.
    """

    transforms: tuple[str, ...] = ("identity", "tanh")
    weight_formats: tuple[str, ...] = WEIGHT_FORMATS
    act_formats: tuple[str, ...] = ACT_FORMATS
    rates: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    act_rates: tuple[float, ...] = (1e-4, 1e-3)
    bit_formats: tuple[str, ...] = ("float16",)
    trials: int = 5
    eval_limit: int | None = None
    workers: int | None = None
    checkpoints: str | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        check_config({f.name: getattr(self, f.name) for f in fields(self)}, "FormatsConfig")


# ------------------------------------------------------------------------------------------ checks
def weight_format(name: str, fn: str = "weight_format") -> Any:
    """The codec of a weight-format name: ``"int8"`` is the per-tensor symmetric 8-bit quantizer, any
    other name is looked up like every format (IEEE names and aliases, ``qM.N``, MX names)."""
    from saf_ref.faults_act import int8_quantizer

    if isinstance(name, str) and name.lower() == "int8":
        return int8_quantizer()
    from saf_ref.bits import resolve_format

    return resolve_format(name, fn=fn, name="weight format")


def _names(lookup: Callable[[Any, str], Any], items: str) -> Callable[[Any, str, str], None]:
    from saf_ref.experiments.demo import check_sequence

    def check(values: Any, name: str, fn: str) -> None:
        def each(v: Any) -> None:
            if not isinstance(v, str):
                raise TypeError(f"{fn}: {name} must hold {items} (str), got {validation.describe(v)}")
            lookup(v, fn)

        check_sequence(values, name, fn, items=items, each=each, empty="name at least one")

    return check


def _check_transforms(values: Any, name: str, fn: str) -> None:
    from saf_ref.protect import get_transform

    _names(lambda v, _fn: get_transform(v), "transform names")(values, name, fn)


def _check_rates(values: Any, name: str, fn: str) -> None:
    from saf_ref.experiments.demo import check_sequence

    def each(rate: Any) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"{fn}: {name} must be bit-error rates in [0, 1], got {rate!r}")

    check_sequence(
        values, name, fn, items="bit-error rates", each=each, empty="list at least one bit-error rate"
    )


def _act_format(v: str, fn: str) -> Any:
    from saf_ref.faults_act import activation_format

    return activation_format(v, fn)


def _bit_formats(values: Any, name: str, fn: str) -> None:
    """Like the activation formats, but may be empty (no per-bit campaign)."""
    if isinstance(values, (tuple, list)) and not values:
        return
    _names(_act_format, "activation format names")(values, name, fn)


_CHECKS: dict[str, Callable[[Any, str, str], None]] = {
    "transforms": _check_transforms,
    "weight_formats": _names(weight_format, "weight format names"),
    "act_formats": _names(_act_format, "activation format names"),
    "bit_formats": _bit_formats,
    "rates": _check_rates,
    "act_rates": _check_rates,
    "trials": lambda v, name, fn: validation.check_int(v, name, fn, low=1),
}


def check_config(values: Mapping[str, Any], fn: str, name: Callable[[str], str] = str) -> None:
    """Check every :class:`FormatsConfig` field in ``values`` (all of them); errors call a field
    ``name(field)``. The demo's fields are checked by :func:`saf_ref.experiments.demo.check_fields`."""
    from saf_ref.experiments.demo import check_fields

    check_fields({k: values[k] for k in _DEMO_FIELDS}, fn, name)
    for key, check in _CHECKS.items():
        check(values[key], name(key), fn)


def flag(field_name: str) -> str:
    """The option of a field: ``"act_rates"`` -> ``"--act-rates"``."""
    return "--" + field_name.replace("_", "-")


# ------------------------------------------------------------------------------------------ the run
def _demo_config(cfg: FormatsConfig):
    from saf_ref.experiments.demo import DemoConfig

    return DemoConfig(
        **{k: getattr(cfg, k) for k in TRAINING_FIELDS}, checkpoints=cfg.checkpoints, verbose=cfg.verbose
    )


def build_subjects(cfg: FormatsConfig, data) -> tuple[list, dict[str, tuple]]:
    """Train (or load) the models; return the campaign Subjects (every transform in every weight format)
    and the trained ``(params, state)`` by transform."""
    from saf_ref.experiments.campaign import Subject
    from saf_ref.experiments.demo import init_model, train_float, train_or_load
    from saf_ref.protect import default_spec

    dcfg = _demo_config(cfg)
    init = init_model(dcfg, data[0].shape[1], data[4])
    models, subjects = {}, []
    for t in cfg.transforms:
        method = "baseline" if t == "identity" else "saf"
        models[t] = train_or_load(dcfg, f"{method}_{t}", lambda t=t: train_float(dcfg, data[:4], init, t))
        for fmt in cfg.weight_formats:
            spec = default_spec(weight_format(fmt), t)
            subjects.append(Subject(method, t, fmt, cfg.model, *models[t], spec))
    return subjects, models


def _log(cfg: FormatsConfig, message: str) -> None:
    if cfg.verbose:
        print(message, file=sys.stderr, flush=True)


def run_formats(cfg: FormatsConfig, out: str | os.PathLike, *, force: bool = False) -> dict[str, Any]:
    """Train, run both campaigns, print the tables and write the files of the module docstring to ``out``.

    Returns the ``results.json`` document plus ``"interrupted"``. ``out`` must not hold results unless
    ``force`` (checked before anything runs).
    """
    from saf_ref.experiments.campaign import config_to_json
    from saf_ref.experiments.demo import (
        check_eval_limit,
        check_out,
        eval_split,
        load_dataset,
        prepare_out,
        train_subjects,
    )
    from saf_ref.experiments.sdc import run_weight_sdc

    if not isinstance(cfg, FormatsConfig):
        raise TypeError(f"run_formats: cfg must be a FormatsConfig, got {validation.describe(cfg)}")
    out = check_out(out, force, "run_formats", outputs=OUTPUTS)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, cfg.data_path)
    check_eval_limit(cfg.eval_limit, data, cfg.dataset, "run_formats")
    prepare_out(out, OUTPUTS)  # after every check: a refused run keeps an earlier run's outputs
    subjects, models = train_subjects(lambda: build_subjects(cfg, data), cfg.checkpoints)
    x, y = eval_split(data, cfg.eval_limit)
    workers = {"executor": "serial" if cfg.workers == 1 else "process", "max_workers": cfg.workers}
    _log(
        cfg, f"format-faults: weights, {len(subjects)} models x {len(cfg.rates)} rates x {cfg.trials} trials"
    )
    weights = run_weight_sdc(subjects, x, y, cfg.rates, trials=cfg.trials, seed=cfg.seed, **workers)
    interrupted = weights.interrupted
    activations = per_bit = None
    if not interrupted:
        activations, per_bit = _activation_campaigns(cfg, models, x, y, workers)
        interrupted = activations.interrupted or (per_bit is not None and per_bit.interrupted)
    doc = {
        "weights": weights.summary,
        "weights_golden": weights.golden,
        "activations": [] if activations is None else activations.summary,
        "activations_per_bit": [] if per_bit is None else per_bit.summary,
        "activations_golden": [] if activations is None else activations.golden,
        "activation_model": cfg.transforms[0],
        "interrupted": interrupted,
    }
    run = {
        "config": config_to_json(cfg),
        "seconds": time.perf_counter() - start,
        "num_classes": data[4],
        "weight_trials": weights.records,
        "activation_trials": [
            rec for res in (activations, per_bit) if res is not None for rec in res.records
        ],
    }
    table = format_tables(doc)
    _write(out, doc, run, table)
    plotted = False if interrupted or activations is None else _try_plot(activations.summary, out)
    print(table)
    print(
        f"\nwrote {out / 'results.json'}, weights.csv, activations.csv"
        + (", vulnerability.png" if plotted else " (install matplotlib for vulnerability.png)")
        + f" in {time.perf_counter() - start:.0f}s"
    )
    return doc


def _activation_campaigns(cfg: FormatsConfig, models, x, y, workers):
    """Activation faults in the first transform's model (computing with its float32 effective weights):
    every layer alone in every activation format, then per bit position in the ``bit_formats`` at the
    largest activation rate (None when there are none or the first was interrupted)."""
    from saf_ref.experiments.sdc import run_activation_sdc
    from saf_ref.protect import default_spec, effective_weights

    t = cfg.transforms[0]
    params, state = models[t]
    w = params if t == "identity" else effective_weights(params, default_spec("float32", t))[0]
    common = {"layers": "*", "trials": cfg.trials, "seed": cfg.seed, **workers}
    _log(
        cfg,
        f"format-faults: activations of the {t} model, {len(cfg.act_formats)} formats x "
        f"{len(cfg.act_rates)} rates x {cfg.trials} trials per layer",
    )
    per_layer = run_activation_sdc(
        cfg.model, w, state, x, y, formats=cfg.act_formats, rates=cfg.act_rates, **common
    )
    if per_layer.interrupted or not cfg.bit_formats:
        return per_layer, None
    _log(cfg, f"format-faults: activations per bit position in {', '.join(cfg.bit_formats)}")
    per_bit = run_activation_sdc(
        cfg.model,
        w,
        state,
        x,
        y,
        formats=cfg.bit_formats,
        rates=(max(cfg.act_rates),),
        per_bit=True,
        **common,
    )
    return per_layer, per_bit


def _write(out: Path, doc: dict, run: dict, table: str) -> None:
    from saf_ref.experiments.campaign import rows_to_csv, write_atomic

    def dump(obj: Any) -> str:
        return json.dumps(obj, indent=1, allow_nan=False) + "\n"

    write_atomic(out / "results.json", dump(doc))
    write_atomic(out / "run.json", dump(run))
    write_atomic(out / "weights.csv", rows_to_csv(doc["weights"]))
    write_atomic(out / "activations.csv", rows_to_csv(doc["activations"] + doc["activations_per_bit"]))
    write_atomic(out / "table.txt", table + "\n")


def _try_plot(summary: list[dict[str, Any]], out: Path) -> bool:
    try:
        from saf_ref.experiments.plots import plot_layer_vulnerability
    except ImportError:  # matplotlib is an optional extra
        return False
    plot_layer_vulnerability(summary, out / "vulnerability.png")
    return True


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _weight_cell(c: Mapping[str, Any] | None) -> str:
    if c is None:
        return ""
    return f"{_pct(c['accuracy_mean'])}/{_pct(c['sdc_rate'])}/{_pct(c['detected_rate'])}"


def format_tables(doc: Mapping[str, Any]) -> str:
    """Two text tables: weight faults (accuracy / SDC / detected, in % of the test examples, per
    transform, format and rate) and activation faults (SDC % per layer, format and rate)."""
    lines = ["weight faults: accuracy / SDC / detected (% of examples) at each bit-error rate"]
    rates = sorted({r["ber"] for r in doc["weights"]})
    cells = {(r["subject"], r["ber"]): r for r in doc["weights"]}
    head = f"{'transform':<10}{'format':<15}{'clean':>6}" + "".join(f"{r:>17.0e}" for r in rates)
    lines += [head, "-" * len(head)]
    for g in doc["weights_golden"]:
        row = f"{g['transform']:<10}{g['format']:<15}{_pct(g['clean_accuracy']):>6}"
        row += "".join(f"{_weight_cell(cells.get((g['subject'], r))):>17}" for r in rates)
        lines.append(row)
    if not doc["activations"]:
        return "\n".join(lines)
    model = doc["activation_model"]
    formats = list(dict.fromkeys(r["format"] for r in doc["activations"]))
    layers = list(dict.fromkeys(r["layer"] for r in doc["activations"]))
    cells = {(r["format"], r["layer"], r["ber"]): r for r in doc["activations"]}
    for rate in sorted({r["ber"] for r in doc["activations"]}):
        lines += [
            "",
            f"activation faults ({model} model, each layer alone) at p = {rate:.0e}: SDC % of examples",
        ]
        head = f"{'layer':<16}" + "".join(f"{fmt:>15}" for fmt in formats)
        lines += [head, "-" * len(head)]
        for name in layers:
            row = f"{name:<16}"
            for fmt in formats:
                c = cells.get((fmt, name, rate))
                row += f"{'' if c is None else _pct(c['sdc_rate']):>15}"
            lines.append(row)
    return "\n".join(lines + _per_bit_table(doc))


def _per_bit_table(doc: Mapping[str, Any]) -> list[str]:
    """SDC % per bit position (rows, most significant first) and layer (columns), per format."""
    rows = doc.get("activations_per_bit") or []
    lines: list[str] = []
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    for fmt in dict.fromkeys(r["format"] for r in rows):
        mine = {(r["layer"], r["bit"]): r for r in rows if r["format"] == fmt}
        rate = next(iter(mine.values()))["ber"]
        lines += ["", f"activation faults in {fmt}, only bit b flips (rate {rate:.0e}): SDC % per layer"]
        head = f"{'bit':<6}" + "".join(f"{name:>16}" for name in layers)
        lines += [head, "-" * len(head)]
        for bit in sorted({b for _, b in mine}, reverse=True):
            cells = "".join(
                f"{_pct(mine[(name, bit)]['sdc_rate']) if (name, bit) in mine else '':>16}" for name in layers
            )
            lines.append(f"{bit:<6}" + cells)
    return lines


# ------------------------------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``saf-ref format-faults`` (used by :mod:`saf_ref.cli`)."""
    from saf_ref.experiments.demo import add_model_arguments

    parser.add_argument("--out", default="format_faults", help="output directory (default: format_faults)")
    parser.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short version (4 epochs, 2 trials, 3 weight rates, 1 activation rate, 120 images)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--epochs", type=int, help="training epochs per model, >= 1 (default: 12; --quick: 4)"
    )
    parser.add_argument(
        "--transforms",
        nargs="+",
        metavar="T",
        help="weight transforms, the first also for activation faults (default: identity tanh)",
    )
    parser.add_argument(
        "--weight-formats",
        nargs="+",
        metavar="FMT",
        help=f"weight storage formats (default: {' '.join(WEIGHT_FORMATS)})",
    )
    parser.add_argument(
        "--act-formats",
        nargs="+",
        metavar="FMT",
        help=f"activation formats (default: {' '.join(ACT_FORMATS)})",
    )
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        metavar="P",
        help="distinct bit-error rates of the weights (default: 1e-5 1e-4 1e-3 1e-2)",
    )
    parser.add_argument(
        "--act-rates",
        type=float,
        nargs="+",
        metavar="P",
        help="distinct bit-error rates of the activations (default: 1e-4 1e-3)",
    )
    parser.add_argument(
        "--bit-formats",
        nargs="*",
        metavar="FMT",
        help="activation formats of the per-bit-position campaign at the largest --act-rates "
        "(default: float16; --quick: int8; none: skip it)",
    )
    parser.add_argument("--trials", type=int, help="trials per cell, >= 1 (default: 5; --quick: 2)")
    parser.add_argument(
        "--eval-limit", type=int, metavar="N", help="evaluate on the first N >= 1 test images"
    )
    parser.add_argument("--seed", type=int, help="seed of training and of the campaigns (default: 0)")
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: all cores; 1: in this process)"
    )
    parser.add_argument(
        "--checkpoints",
        help="directory to save trained models to and load them from (shared with saf-ref demo)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output (the tables still print)")
    parser.add_argument(
        "--list-taps",
        action="store_true",
        help="print the activation tap names (layers) of --model, one per line, and exit",
    )


def config_from_args(args: argparse.Namespace) -> FormatsConfig:
    """A :class:`FormatsConfig` from parsed options; every option checked here, named as typed."""
    values = {k: f.default for k, f in FormatsConfig.__dataclass_fields__.items()}
    if args.quick:
        values.update(QUICK)
    names = (
        "dataset",
        "data_path",
        "model",
        "width",
        "epochs",
        "transforms",
        "weight_formats",
        "act_formats",
        "rates",
        "act_rates",
        "bit_formats",
        "trials",
        "eval_limit",
        "seed",
        "workers",
        "checkpoints",
    )
    values.update({k: getattr(args, k) for k in names if getattr(args, k, None) is not None})
    for k in ("transforms", "weight_formats", "act_formats", "rates", "act_rates", "bit_formats"):
        values[k] = tuple(values[k])
    values["verbose"] = not args.quiet
    check_config(values, "saf-ref format-faults", flag)
    return FormatsConfig(**values)


def run_from_args(args: argparse.Namespace) -> int:
    """``saf-ref format-faults``: check every option and ``--out``, run; exit status (130: interrupted)."""
    from saf_ref.experiments.demo import check_out

    cfg = config_from_args(args)
    if args.list_taps:
        from saf_ref.faults_act import activation_taps

        print("\n".join(activation_taps(cfg.model)))
        return 0
    check_out(args.out, args.force, "saf-ref format-faults", "--out", "--force", outputs=OUTPUTS)
    doc = run_formats(cfg, args.out, force=args.force)
    if doc["interrupted"]:
        print(
            "saf-ref format-faults: interrupted; partial results in "
            f"{os.path.join(args.out, 'results.json')}",
            file=sys.stderr,
        )
        return 130
    return 0
