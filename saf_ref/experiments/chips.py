"""``saf-ref chips``: models trained against random bit errors, evaluated on persistent low-voltage chips.

The demo (:mod:`saf_ref.experiments.demo`) injects independent random bit errors, drawn afresh in every
trial. Low-voltage SRAM fails differently: at a supply voltage ``V`` the same weak cells fail every time,
a failing cell usually reads a fixed value, the number of failing cells rises steeply as ``V`` drops, and
chips differ (:mod:`saf_ref.bits.chip`). This experiment asks the question of Stutz et al. (MLSys 2021):
how far can the voltage go down, and how much energy does that save, before a model loses accuracy?

What it does, with no arguments, no network and only the shipped data:

1. trains (or loads from ``--checkpoints``, shared with ``saf-ref demo``) the demo's models: for each
   quantization width in ``--bits`` (default 8 and 4) plain **robust quantization**, **clipping** and
   **RandBET** (clipping plus random bit-error training at the demo's rate ``p_train = 0.02``, with its
   per-batch curriculum ``curriculum_loss = 0.3``), all trained with *independent random* flips or
   none; and one **SAF** model (``w = tanh(u)``) stored in q2.5 (8 bits) and float16. The 8-bit models
   are exactly the demo's (same names, same checkpoints);
   the 4-bit models are trained the same way with a 4-bit quantizer (:func:`demo.quantized_spec`
   ``(clip, 4)``) and checkpointed as ``<method>_4bit.npz``;
2. samples ``--chips`` chips from :class:`~saf_ref.bits.chip.ChipModel` (its default parameters) and,
   on each, ``--placements`` random placements of the stored words (:class:`~saf_ref.bits.placement.
   Placement` with permuted rows); every model meets the same chips and placements;
3. at every voltage of ``--voltages``, reads each stored model through the chip's *persistent* faults
   (:class:`~saf_ref.bits.placement.ChipFaults` with :func:`saf_ref.protect.inject`) and evaluates it on
   the test images: accuracy, robust error, non-finite outputs and the measured bit-error rate;
4. summarises over the (chip, placement) pairs, finds the lowest voltage at which each model loses at
   most 1 % and 2 % accuracy, and the energy saved there (:func:`saf_ref.bits.energy.energy_saving`);
5. prints a table and writes ``results.json``, ``results.csv``, ``savings.csv``, ``table.txt``,
   ``run.json`` and, when matplotlib is installed, ``accuracy_voltage.png`` and ``energy_saved.png``.

Every option is checked before any data is loaded or any model trained; ``--out`` must not hold results
already (``--force`` overwrites them); completed units are journaled to ``trials.jsonl`` while the sweep
runs, results are written atomically, and Ctrl-C keeps what finished (exit status 130).

Math
----
Chip ``c`` (``0 <= c < chips``) is ``ChipModel().sample(chip_shape, seed=default_rng(SeedSequence(seed,
spawn_key=(c,))))``; its placement ``p`` is ``Placement(permute_rows=True, seed=s_cp)`` with ``s_cp`` the
first 32-bit word of ``SeedSequence(seed, spawn_key=(c, p)).generate_state(1)``. So the faults depend on
``(seed, c, p, V)`` only: the same options give the same results (``results.json`` byte for byte),
whatever the worker count.

With ``a_k(V)`` the accuracy of a model on pair ``k`` of the ``K = chips x placements`` pairs at voltage
``V`` and ``a_clean`` its accuracy read back without faults (quantization included)::

    accuracy(V) = (1/K) sum_k a_k(V)          (Student-t interval over the K pairs)
    loss(V)     = a_clean - accuracy(V)       (absolute: 0.01 = one point of accuracy)
    V_max_loss  = the lowest voltage V_j of the grid such that loss(V_i) <= max_loss for every grid
                  voltage V_i >= V_j   (walking down from the highest voltage; None if it fails already)
    saved       = energy_saving(V_max_loss) = 1 - V_max_loss^2   (voltages relative to nominal = 1)

Walking down and stopping at the first voltage over budget means a lucky low voltage below a failing one
is never chosen (accuracy is not exactly monotone in ``V``: a stuck cell can happen to hold its value).
A loss within ``1e-9`` of the budget counts as within it (accuracies are ratios of counts, and ``0.99 -
0.98`` is ``0.010000000000000009`` in floating point).

Notes
-----
The chip model's defaults are assumptions, not fits to a chip (see :class:`~saf_ref.bits.chip.ChipModel`);
the energy model is the first-order dynamic ``V^2`` (see :mod:`saf_ref.bits.energy`). The interval treats
the ``K`` pairs as independent samples; placements on one chip share that chip's offsets, so it is a
little narrower than an interval over chips alone would be.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from saf_ref import validation
from saf_ref.determinism import available_cpus
from saf_ref.experiments.demo import TRAINING_FIELDS, TrainingSettings, check_sequence

__all__ = [
    "ChipsConfig",
    "ChipsResult",
    "DEFAULT_VOLTAGES",
    "LOSS_BUDGETS",
    "OUTPUTS",
    "QUICK",
    "add_arguments",
    "build_subjects",
    "config_from_args",
    "chip_of",
    "format_table",
    "lowest_voltage",
    "placement_of",
    "run_chips",
    "run_from_args",
    "savings",
    "summarize_sweep",
]

#: Nominal supply (1.0) and 0.01 steps from 0.95 down to 0.66 (BER about 1e-9 to 3e-2 on average chips).
DEFAULT_VOLTAGES = (1.0, *(round(0.95 - 0.01 * i, 2) for i in range(30)))
#: The accuracy losses (absolute) at which the lowest voltage and the energy saved are reported.
LOSS_BUDGETS = (0.01, 0.02)
QUICK = {
    "epochs": 6,
    "chips": 3,
    "placements": 1,
    "voltages": (1.0, 0.9, 0.85, 0.8, 0.78, 0.76, 0.74, 0.72, 0.7),
}
OUTPUTS = ("results.json", "run.json", "results.csv", "savings.csv", "table.txt", "accuracy_voltage.png",
           "energy_saved.png", "trials.jsonl")  # fmt: skip
QUANTIZED_METHODS = ("robust_quant", "clipping", "randbet")
# The demo's fields that decide the models (its TRAINING_FIELDS) and its run options this experiment shares.
_DEMO_FIELDS = (*TRAINING_FIELDS, "eval_limit", "workers", "checkpoints", "verbose")


@dataclass(frozen=True)
class ChipsConfig(TrainingSettings):
    """Everything ``saf-ref chips`` does is decided here (``saf-ref chips --help`` maps options onto it).

    The training fields are inherited from :class:`~saf_ref.experiments.demo.TrainingSettings` (first in
    the field order): they mean the same and have the same defaults as the demo's, so checkpoints are
    shared with ``saf-ref demo``.
    """

    bits: tuple[int, ...] = (8, 4)
    saf_transform: str = "tanh"
    saf_formats: tuple[str, ...] = ("q2.5", "float16")
    chips: int = 10
    placements: int = 2
    chip_shape: tuple[int, int, int] = (4, 256, 256)
    voltages: tuple[float, ...] = DEFAULT_VOLTAGES
    eval_limit: int | None = None
    workers: int | None = None
    checkpoints: str | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        check_config({f.name: getattr(self, f.name) for f in fields(self)}, "ChipsConfig")


# ------------------------------------------------------------------------------------------ checks


def _check_bits(bits: Any, name: str, fn: str) -> None:
    check_sequence(bits, name, fn, items="integers", empty="list at least one width",
                   each=lambda b: validation.check_int(b, name, fn, low=2, high=16))  # fmt: skip


def _check_voltages(volts: Any, name: str, fn: str) -> None:
    from saf_ref.bits import ChipModel

    lo, hi = ChipModel().voltage_range

    def check_voltage(v: Any) -> None:
        x = validation.check_real(v, name, fn)
        if not lo <= x <= hi:  # NaN fails too
            raise ValueError(
                f"{fn}: {name} must be voltages inside the chip model's range [{lo}, {hi}] (relative to "
                f"nominal), got {v!r}"
            )

    check_sequence(volts, name, fn, items="voltages", each=check_voltage, empty="list at least one voltage")


def _check_formats(formats: Any, name: str, fn: str) -> None:
    from saf_ref.bits import get_format

    def check_format(f: Any) -> None:
        try:
            get_format(f)
        except (TypeError, ValueError):
            raise ValueError(
                f"{fn}: {name} must be format names such as 'q2.5', 'float16' or 'float32', got {f!r}"
            ) from None

    # no saf_formats at all is allowed: a run without the SAF model
    check_sequence(formats, name, fn, items="format names", each=check_format, empty=None)


def _check_transform(value: Any, name: str, fn: str) -> None:
    from saf_ref.protect import get_transform

    if not isinstance(value, str):
        raise TypeError(f"{fn}: {name} must be a transform name, got {validation.describe(value)}")
    get_transform(value)
    if value == "identity":
        raise ValueError(f"{fn}: {name} must be a saturating transform such as 'tanh', got 'identity'")


def _check_shape(value: Any, name: str, fn: str) -> None:
    from saf_ref.bits.chip import check_chip_shape

    check_chip_shape(value, fn, name)


_CHECKS: dict[str, Callable[[Any, str, str], None]] = {
    "bits": _check_bits,
    "saf_transform": _check_transform,
    "saf_formats": _check_formats,
    "chips": lambda v, name, fn: validation.check_int(v, name, fn, low=1),
    "placements": lambda v, name, fn: validation.check_int(v, name, fn, low=1),
    "chip_shape": _check_shape,
    "voltages": _check_voltages,
}


def check_config(values: Mapping[str, Any], fn: str, name: Callable[[str], str] = str) -> None:
    """Check every :class:`ChipsConfig` field in ``values`` (all of them); errors call a field ``name(f)``.

    The fields shared with the demo are checked by :func:`saf_ref.experiments.demo.check_fields`.
    """
    from saf_ref.experiments.demo import check_fields

    check_fields({k: values[k] for k in _DEMO_FIELDS}, fn, name)
    for key, check in _CHECKS.items():
        check(values[key], name(key), fn)


def flag(field_name: str) -> str:
    """The ``saf-ref chips`` option of a field: ``"chip_shape"`` -> ``"--chip-shape"``."""
    return "--" + field_name.replace("_", "-")


# ------------------------------------------------------------------------------------- chips, models


def chip_of(cfg: ChipsConfig, c: int):
    """Chip ``c`` of the experiment (see the module Math)."""
    from saf_ref.bits import ChipModel

    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(c,)))
    return ChipModel().sample(cfg.chip_shape, seed=rng)


def placement_of(cfg: ChipsConfig, c: int, p: int):
    """Placement ``p`` on chip ``c`` (see the module Math): rows permuted, seeded by ``(seed, c, p)``."""
    from saf_ref.bits import Placement

    seed = int(np.random.SeedSequence(cfg.seed, spawn_key=(c, p)).generate_state(1)[0])
    return Placement(permute_rows=True, seed=seed)


def demo_config(cfg: ChipsConfig):
    """The :class:`~saf_ref.experiments.demo.DemoConfig` whose models (and checkpoints) this run uses."""
    from saf_ref.experiments.demo import DemoConfig

    shared = {k: getattr(cfg, k) for k in TRAINING_FIELDS}
    return DemoConfig(**shared, checkpoints=cfg.checkpoints, verbose=cfg.verbose)


def build_subjects(cfg: ChipsConfig, data) -> list:
    """Train (or load) the models and describe how each is stored: a list of campaign Subjects.

    Labels: ``<method>/quant<bits>`` for the quantized models, ``saf/<transform>/<format>`` for SAF.
    """
    from saf_ref.experiments.campaign import Subject
    from saf_ref.experiments.demo import (
        init_model,
        quantized_spec,
        train_float,
        train_or_load,
        train_quantized,
    )
    from saf_ref.protect import default_spec

    dcfg = demo_config(cfg)
    x_train, _, _, _, num_classes = data
    init = init_model(dcfg, x_train.shape[1], num_classes)
    subjects = []
    for nbits in cfg.bits:
        for method in QUANTIZED_METHODS:
            clip = None if method == "robust_quant" else cfg.weight_clip
            p_train = cfg.p_train if method == "randbet" else 0.0
            name = method if nbits == 8 else f"{method}_{nbits}bit"  # 8 bits: the demo's checkpoint

            def trainer(c=clip, p=p_train, n=nbits):
                return train_quantized(dcfg, data[:4], init, clip=c, p_train=p, nbits=n)

            params, state = train_or_load(dcfg, name, trainer)
            fmt = f"quant{nbits}"
            subjects.append(Subject(method, "identity", fmt, cfg.model, params, state,
                                    quantized_spec(clip, nbits), label=f"{method}/{fmt}"))  # fmt: skip
    if cfg.saf_formats:
        t = cfg.saf_transform
        params, state = train_or_load(dcfg, f"saf_{t}", lambda: train_float(dcfg, data[:4], init, t))
        for fmt in cfg.saf_formats:
            subjects.append(Subject("saf", t, fmt, cfg.model, params, state, default_spec(fmt, t)))
    return subjects


def specs(cfg: ChipsConfig) -> dict[str, Any]:
    """How each subject is stored, by subject key (the specs of :func:`build_subjects`, no training)."""
    from saf_ref.experiments.demo import quantized_spec
    from saf_ref.protect import default_spec

    out: dict[str, Any] = {}
    for nbits in cfg.bits:
        for method in QUANTIZED_METHODS:
            out[f"{method}/quant{nbits}"] = quantized_spec(
                None if method == "robust_quant" else cfg.weight_clip, nbits
            )
    for fmt in cfg.saf_formats:
        out[f"saf/{cfg.saf_transform}/{fmt}"] = default_spec(fmt, cfg.saf_transform)
    return out


def check_fits(cfg: ChipsConfig, data, fn: str) -> None:
    """Raise ``ValueError`` unless every stored model fits in a chip of ``cfg.chip_shape`` (checked on the
    untrained model, whose tensors have the trained one's shapes, before any training)."""
    from saf_ref.bits import Placement
    from saf_ref.bits.placement import layout
    from saf_ref.experiments.demo import init_model
    from saf_ref.protect import store
    from saf_ref.protect.inject import targets_of

    params, _ = init_model(demo_config(cfg), data[0].shape[1], data[4])
    for key, spec in specs(cfg).items():
        try:
            layout(targets_of(store(params, spec)), cfg.chip_shape, Placement())
        except ValueError as err:
            shape = " x ".join(map(str, cfg.chip_shape))
            raise ValueError(
                f"{fn}: chip_shape (--chip-shape) must hold every stored model, got {shape} cells, too few "
                f"for {key} ({str(err).removeprefix('layout: ')})"
            ) from None


# ----------------------------------------------------------------------------------------- the sweep


def _nbits(subject) -> int:
    from saf_ref.bits import get_format

    return int(subject.format[5:]) if subject.format.startswith("quant") else get_format(subject.format).nbits


def run_unit(
    cfg: ChipsConfig, subject, x: np.ndarray, y: np.ndarray, clean: np.ndarray, c: int
) -> list[dict[str, Any]]:
    """Evaluate one subject on chip ``c`` under each of its placements at every voltage; one record each.

    Records: ``subject, method, transform, format, bits, chip, placement, voltage, accuracy, rerr,
    nonfinite, bit_errors, bits_exposed, n`` (``bit_errors``: stored bits the chip changes, so the
    measured bit-error rate is ``bit_errors / bits_exposed``; ``rerr`` as in
    :func:`saf_ref.experiments.campaign.run_trial`).
    """
    from saf_ref.bits import ChipFaults
    from saf_ref.experiments.campaign import predict
    from saf_ref.protect import inject, load, store

    chip = chip_of(cfg, c)
    stored = store(subject.params, subject.spec)
    exposed = sum(stored[n].nbits * int(np.prod(stored[n].shape)) for n in stored.exposed_names)
    clean_wrong = clean != y
    records = []
    for p in range(cfg.placements):
        placement = placement_of(cfg, c, p)
        for v in cfg.voltages:
            faulty = inject(stored, ChipFaults(chip, v, placement, record="errors"))
            params = load(faulty.stored, subject.spec, nonfinite=subject.nonfinite)
            pred, nonfinite = predict(subject.model, params, subject.state, x)
            wrong = pred != y
            records.append({
                "subject": subject.key, "method": subject.method, "transform": subject.transform,
                "format": subject.format, "bits": _nbits(subject), "chip": c, "placement": p,
                "voltage": float(v), "accuracy": float(np.mean(~wrong)),
                "rerr": float(np.mean(wrong | clean_wrong)), "nonfinite": bool(nonfinite),
                "bit_errors": len(faulty.faults), "bits_exposed": int(exposed), "n": int(y.shape[0]),
            })  # fmt: skip
    return records


def _unit(args: tuple) -> tuple[int, int, list[dict[str, Any]]]:
    index, c, cfg, subject, x, y, clean = args
    return index, c, run_unit(cfg, subject, x, y, clean, c)


def lowest_voltage(
    voltages: Sequence[float], accuracies: Sequence[float], clean: float, max_loss: float
) -> float | None:
    """The lowest grid voltage reached walking down from the highest before the loss exceeds ``max_loss``.

    Parameters
    ----------
    voltages, accuracies : sequences of float, same length
        Mean accuracy at each voltage (any order).
    clean : float
        The model's accuracy without faults.
    max_loss : float >= 0
        Largest accepted loss ``clean - accuracy`` (absolute; 0.01 = one point).

    Returns
    -------
    float or None
        None when the highest voltage already loses more than ``max_loss``.

    Math
    ----
    Sort the grid ``V_1 > V_2 > ...``; return ``V_j`` for the largest ``j`` with ``clean - acc(V_i) <=
    max_loss + 1e-9`` for all ``i <= j``.
    """
    fn = "lowest_voltage"
    if len(voltages) != len(accuracies):
        raise ValueError(
            f"{fn}: accuracies must have one value per voltage ({len(voltages)}), got {len(accuracies)}"
        )
    max_loss = validation.check_real(max_loss, "max_loss", fn)
    if not (math.isfinite(max_loss) and max_loss >= 0):
        raise ValueError(f"{fn}: max_loss must be a finite number >= 0, got {max_loss!r}")
    best = None
    for v, acc in sorted(zip(voltages, accuracies, strict=True), key=lambda va: -va[0]):
        if clean - acc > max_loss + 1e-9:
            break
        best = float(v)
    return best


def summarize_sweep(
    records: Sequence[Mapping[str, Any]], clean: Mapping[str, float], *, confidence: float = 0.95
) -> list[dict[str, Any]]:
    """One row per (subject, voltage), voltages descending: means over the (chip, placement) pairs.

    Row fields: ``subject, method, transform, format, bits, voltage, energy_saving, pairs,
    clean_accuracy, accuracy_mean, accuracy_ci_low, accuracy_ci_high, accuracy_min, accuracy_loss,
    rerr_mean, rerr_ci_low, rerr_ci_high, nonfinite_fraction, ber_mean`` (``ber_mean``: mean measured
    bit-error rate; intervals: Student-t over the pairs, clipped to [0, 1]).
    """
    from saf_ref.bits.energy import energy_saving
    from saf_ref.experiments.stats import mean_interval

    cells: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for rec in records:
        cells.setdefault((rec["subject"], rec["voltage"]), []).append(rec)
    order = list(dict.fromkeys(rec["subject"] for rec in records))
    rows = []
    for (subject, v), recs in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), -kv[0][1])):
        acc, acc_lo, acc_hi = mean_interval([r["accuracy"] for r in recs], confidence=confidence)
        rerr, rerr_lo, rerr_hi = mean_interval([r["rerr"] for r in recs], confidence=confidence)
        first = recs[0]
        rows.append({
            "subject": subject, "method": first["method"], "transform": first["transform"],
            "format": first["format"], "bits": first["bits"], "voltage": v,
            "energy_saving": float(energy_saving(v)), "pairs": len(recs),
            "clean_accuracy": clean[subject], "accuracy_mean": acc, "accuracy_ci_low": max(0.0, acc_lo),
            "accuracy_ci_high": min(1.0, acc_hi), "accuracy_min": min(r["accuracy"] for r in recs),
            "accuracy_loss": clean[subject] - acc, "rerr_mean": rerr, "rerr_ci_low": max(0.0, rerr_lo),
            "rerr_ci_high": min(1.0, rerr_hi),
            "nonfinite_fraction": sum(bool(r["nonfinite"]) for r in recs) / len(recs),
            "ber_mean": float(np.mean([r["bit_errors"] / r["bits_exposed"] for r in recs])),
        })  # fmt: skip
    return rows


def savings(
    summary: Sequence[Mapping[str, Any]],
    budgets: Sequence[float] = LOSS_BUDGETS,
    records: Sequence[Mapping[str, Any]] | None = None,
    *,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Per subject: the lowest voltage within each accuracy-loss budget and the energy saved there.

    Fields: ``subject, method, transform, format, bits, clean_accuracy`` and, for each budget ``b`` (in
    percent, e.g. ``1``), ``voltage_<b>pct`` and ``energy_saving_<b>pct`` from the mean accuracy curve
    (None / 0.0 if even the highest voltage loses more; see :func:`lowest_voltage`). With ``records``
    (the per-pair records), also ``energy_saving_<b>pct_pairs_mean``, ``..._ci_low``, ``..._ci_high``:
    the rule applied to each (chip, placement) pair's own curve, the saving averaged over the pairs with
    a Student-t interval (how much the saving varies from chip to chip).
    """
    from saf_ref.bits.energy import energy_saving
    from saf_ref.experiments.stats import mean_interval

    out = []
    for subject in dict.fromkeys(r["subject"] for r in summary):
        rows = [r for r in summary if r["subject"] == subject]
        first = rows[0]
        clean = first["clean_accuracy"]
        row = {k: first[k] for k in ("subject", "method", "transform", "format", "bits", "clean_accuracy")}
        pairs: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
        for rec in records or ():
            if rec["subject"] == subject:
                pairs.setdefault((rec["chip"], rec["placement"]), []).append(rec)
        for b in budgets:
            v = lowest_voltage([r["voltage"] for r in rows], [r["accuracy_mean"] for r in rows], clean, b)
            tag = f"{100 * b:g}pct"
            row[f"voltage_{tag}"] = v
            row[f"energy_saving_{tag}"] = 0.0 if v is None else float(energy_saving(v))
            if pairs:
                per_pair = []
                for recs in pairs.values():
                    pv = lowest_voltage([r["voltage"] for r in recs], [r["accuracy"] for r in recs], clean, b)
                    per_pair.append(0.0 if pv is None else float(energy_saving(pv)))
                m, lo, hi = mean_interval(per_pair, confidence=confidence)
                row[f"energy_saving_{tag}_pairs_mean"] = m
                row[f"energy_saving_{tag}_pairs_ci_low"] = lo
                row[f"energy_saving_{tag}_pairs_ci_high"] = hi
        out.append(row)
    return out


def format_table(rows: Sequence[Mapping[str, Any]], budgets: Sequence[float] = LOSS_BUDGETS) -> str:
    """The savings table: clean accuracy, then per budget the lowest voltage of the mean curve, the
    energy saved there (%), and (when computed) the per-chip saving's mean and interval."""
    per_pair = bool(rows) and all(f"energy_saving_{100 * b:g}pct_pairs_mean" in rows[0] for b in budgets)
    head = f"{'method':<14}{'format':<9}{'bits':>5}{'clean':>7}"
    for b in budgets:
        head += f"{f'V@{100 * b:g}%':>8}{f'saved@{100 * b:g}%':>11}" + (
            f"{'per chip':>19}" if per_pair else ""
        )
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['method']:<14}{r['format']:<9}{r['bits']:>5}{100 * r['clean_accuracy']:>7.1f}"
        for b in budgets:
            tag = f"{100 * b:g}pct"
            v = r[f"voltage_{tag}"]
            line += f"{'-' if v is None else f'{v:.2f}':>8}{100 * r[f'energy_saving_{tag}']:>10.1f}%"
            if per_pair:
                m, lo, hi = (100 * r[f"energy_saving_{tag}_pairs_{k}"] for k in ("mean", "ci_low", "ci_high"))
                line += f"{f'{m:.1f} [{lo:.1f}, {hi:.1f}]':>19}"
        lines.append(line)
    return "\n".join(lines)


@dataclass
class ChipsResult:
    """Per-(subject, chip, placement, voltage) records, the per-(subject, voltage) summary, the savings
    table rows, clean accuracies, whether the run was interrupted, and the configuration."""

    records: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    savings: list[dict[str, Any]]
    clean: list[dict[str, Any]]
    interrupted: bool = False
    config: dict[str, Any] | None = None


def _log(cfg: ChipsConfig, message: str) -> None:
    if cfg.verbose:
        print(message, file=sys.stderr, flush=True)


def _sweep(cfg: ChipsConfig, subjects: list, x, y, clean: list, journal) -> tuple[dict, bool]:
    """Run every (subject, chip) unit, serially or in a process pool; return the records and whether
    Ctrl-C stopped it (pending units cancelled, finished ones kept)."""
    from saf_ref.experiments.campaign import run_units

    units = [(i, c, cfg, s, x, y, clean[i]) for c in range(cfg.chips) for i, s in enumerate(subjects)]
    results: dict[tuple[int, int], list[dict[str, Any]]] = {}
    start = time.perf_counter()

    def collect(unit_result: tuple[int, int, list[dict[str, Any]]]) -> None:
        i, c, records = unit_result
        results[(i, c)] = records
        journal(records)
        _log(cfg, f"  [{len(results)}/{len(units)}] {subjects[i].key}, chip {c}  "
                  f"({time.perf_counter() - start:.0f}s)")  # fmt: skip

    workers = cfg.workers if cfg.workers is not None else available_cpus()  # (the CPUs this process may use)
    executor = "serial" if workers == 1 else "process"
    interrupted = run_units(_unit, units, collect, executor=executor, max_workers=workers)
    return results, interrupted


def run_chips(cfg: ChipsConfig, out: str | os.PathLike, *, force: bool = False) -> ChipsResult:
    """Train, sweep the voltage on every chip and placement, and write the result files to ``out``.

    ``out`` must not hold results unless ``force`` (checked before anything runs). Completed units are
    journaled to ``out/trials.jsonl``; on Ctrl-C during the sweep the finished units are written as usual
    and the result has ``interrupted=True``; during training ``KeyboardInterrupt`` propagates.
    ``results.json`` holds no timings and no run-only settings (workers, checkpoints): the same
    configuration writes the same bytes, whatever the worker count (``run.json`` has the rest).
    """
    from saf_ref.experiments.campaign import Journal, clean_predictions, config_to_json
    from saf_ref.experiments.demo import (
        check_eval_limit,
        check_out,
        eval_split,
        load_dataset,
        prepare_out,
        train_subjects,
    )

    if not isinstance(cfg, ChipsConfig):
        raise TypeError(f"run_chips: cfg must be a ChipsConfig, got {validation.describe(cfg)}")
    out = check_out(out, force, "run_chips", outputs=OUTPUTS)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, cfg.data_path)
    check_fits(cfg, data, "run_chips")  # before anything is written or trained
    check_eval_limit(cfg.eval_limit, data, cfg.dataset, "run_chips")
    prepare_out(out, OUTPUTS)
    _log(
        cfg, f"chips: {cfg.dataset}, model {cfg.model}, {cfg.epochs} epochs per method, bits {list(cfg.bits)}"
    )
    subjects = train_subjects(lambda: build_subjects(cfg, data), cfg.checkpoints)
    x, y = eval_split(data, cfg.eval_limit)
    clean = [clean_predictions(s, x) for s in subjects]
    clean_acc = {s.key: float(np.mean(c == y)) for s, c in zip(subjects, clean, strict=True)}
    _log(cfg, f"chips: {len(subjects)} models x {cfg.chips} chips x {cfg.placements} placements x "
              f"{len(cfg.voltages)} voltages on {y.shape[0]} test images")  # fmt: skip
    journal = Journal(out / "trials.jsonl")
    results, interrupted = _sweep(cfg, subjects, x, y, clean, journal)
    records = [rec for key in sorted(results, key=lambda k: (k[1], k[0])) for rec in results[key]]
    summary = summarize_sweep(records, clean_acc) if records else []
    rows = savings(summary, LOSS_BUDGETS, records)
    # How the run was executed (workers, checkpoints, progress) does not change a result: run.json only.
    run_only = ("workers", "checkpoints", "verbose")
    settings = {k: v for k, v in config_to_json(cfg).items() if k not in run_only}
    config = {"chips": settings, "chip_model": _chip_model_json(), "num_classes": data[4],
              "n_eval": int(y.shape[0]), "loss_budgets": list(LOSS_BUDGETS)}  # fmt: skip
    clean_rows = [{"subject": s.key, "method": s.method, "transform": s.transform, "format": s.format,
                   "bits": _nbits(s), "clean_accuracy": clean_acc[s.key]} for s in subjects]  # fmt: skip
    result = ChipsResult(records, summary, rows, clean_rows, interrupted, config)
    table = format_table(rows)
    seconds = time.perf_counter() - start
    run_settings = {"workers": cfg.workers, "checkpoints": cfg.checkpoints}
    plotted = _write_outputs(result, out, table, journal, seconds, run_settings)
    print(table)
    print(f"\nwrote {out / 'results.json'}, results.csv, savings.csv"
          + (", accuracy_voltage.png, energy_saved.png" if plotted else " (install matplotlib for the plots)")
          + f" in {time.perf_counter() - start:.0f}s")  # fmt: skip
    return result


def _chip_model_json() -> dict[str, Any]:
    from saf_ref.bits import ChipModel

    return ChipModel().to_json()


def _write_outputs(
    result: ChipsResult, out: Path, table: str, journal, seconds: float, run_settings: dict[str, Any]
) -> bool:
    """Write every result file atomically, then drop the journal; return whether the plots were made."""
    from saf_ref.experiments.campaign import rows_to_csv, write_outputs

    def dump(doc: Any) -> str:
        return json.dumps(doc, indent=1, allow_nan=False) + "\n"

    files = {
        "results.json": dump({"config": result.config, "clean": result.clean,
                              "interrupted": result.interrupted, "savings": result.savings,
                              "sweep": result.summary}),
        "run.json": dump({"config": result.config, "run": run_settings, "seconds": seconds,
                          "interrupted": result.interrupted, "records": result.records}),
        "results.csv": rows_to_csv(result.summary),
        "savings.csv": rows_to_csv(result.savings),
        "table.txt": table + "\n",
    }  # fmt: skip
    return write_outputs(out, files, journal, interrupted=result.interrupted, kept="completed units",
                         plot=lambda: _try_plot(result, out))  # fmt: skip


def _try_plot(result: ChipsResult, out: Path) -> bool:
    try:
        from saf_ref.experiments.chip_plots import plot_accuracy_voltage, plot_energy_saved
    except ImportError:  # matplotlib is an optional extra
        return False
    plot_accuracy_voltage(result.summary, out / "accuracy_voltage.png")
    plot_energy_saved(result.savings, out / "energy_saved.png")
    return True


# ------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``saf-ref chips`` (used by :mod:`saf_ref.cli`)."""
    from saf_ref.experiments.demo import add_model_arguments

    d = ChipsConfig.__dataclass_fields__
    parser.add_argument("--out", default="chips_results", help="output directory (default: chips_results)")
    parser.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    parser.add_argument(
        "--quick", action="store_true", help="a short version (6 epochs, 3 chips, 1 placement, 9 voltages)"
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--epochs", type=int, help="training epochs per model, >= 1 (default: 12; --quick: 6)"
    )
    parser.add_argument(
        "--bits",
        type=int,
        nargs="+",
        metavar="B",
        help="quantization widths of the quantized methods (default: 8 4)",
    )
    parser.add_argument(
        "--saf-formats",
        nargs="*",
        metavar="FMT",
        help="formats the SAF (tanh) model is stored in (default: q2.5 float16; none: no SAF)",
    )
    parser.add_argument(
        "--chips", type=int, help=f"chips sampled, >= 1 (default: {d['chips'].default}; --quick: 3)"
    )
    parser.add_argument(
        "--placements",
        type=int,
        help=f"placements per chip, >= 1 (default: {d['placements'].default}; --quick: 1)",
    )
    parser.add_argument(
        "--chip-shape",
        type=int,
        nargs=3,
        metavar=("ARRAYS", "ROWS", "COLUMNS"),
        help="cells of each chip (default: 4 256 256)",
    )
    parser.add_argument(
        "--voltages",
        type=float,
        nargs="+",
        metavar="V",
        help="distinct supply voltages relative to nominal (default: 1.0, 0.95 to 0.66)",
    )
    parser.add_argument(
        "--eval-limit", type=int, metavar="N", help="evaluate on the first N >= 1 test images"
    )
    parser.add_argument("--seed", type=int, help="seed of training, chips and placements (default: 0)")
    parser.add_argument("--workers", type=int, help="worker processes for the sweep (default: all cores)")
    parser.add_argument(
        "--checkpoints",
        help="directory to save trained models to and load them from (shared with saf-ref demo)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output (the table still prints)")


def config_from_args(args: argparse.Namespace) -> ChipsConfig:
    """Build a :class:`ChipsConfig` from parsed options; every option is checked here, before any work,
    and a bad one is named as typed (``--chip-shape``)."""
    base = ChipsConfig.__dataclass_fields__
    values = {k: f.default for k, f in base.items()}
    if args.quick:
        values.update(QUICK)
    names = ("dataset", "data_path", "model", "width", "epochs", "bits", "saf_formats", "chips", "placements",
             "chip_shape", "voltages", "eval_limit", "seed", "workers", "checkpoints")  # fmt: skip
    values.update({k: getattr(args, k) for k in names if getattr(args, k, None) is not None})
    for k in ("bits", "saf_formats", "chip_shape", "voltages"):
        values[k] = tuple(values[k])
    values["verbose"] = not args.quiet
    check_config(values, "saf-ref chips", flag)
    return ChipsConfig(**values)


def run_from_args(args: argparse.Namespace) -> int:
    """``saf-ref chips``: check every option and ``--out``, run; return the exit status (130: interrupted)."""
    from saf_ref.experiments.demo import check_out

    cfg = config_from_args(args)
    check_out(args.out, args.force, "saf-ref chips", "--out", "--force", outputs=OUTPUTS)
    result = run_chips(cfg, args.out, force=args.force)
    if result.interrupted:
        done = len({(r["subject"], r["chip"]) for r in result.records})
        print(
            f"saf-ref chips: interrupted: {done} of {len(result.clean) * cfg.chips} (model, chip) units "
            f"completed; partial results in {os.path.join(args.out, 'results.json')}",
            file=sys.stderr,
        )
        return 130
    return 0
