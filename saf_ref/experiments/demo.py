"""``saf-ref demo``: train hardened and plain models on shipped data, sweep bit-error rates, report.

What it does, with no arguments, no network and only the shipped data:

1. trains three float models with the same seed and budget: a plain **baseline** (w = u), and two
   **SAF** models (w = tanh(u), w = arctan(u)); and four 8-bit **robust-quantization** models
   (per-tensor asymmetric, offset binary, rounded; Stutz et al.): plain, with **weight clipping**,
   clipping plus **RandBET** (random bit-error training), and RandBET without clipping;
2. stores the float models in float32, float16 and q2.5 (raw latents u in memory, f applied after
   reading) and the quantized models in their 8-bit quantizer;
3. runs a bit-error campaign (rates from 1e-7 up to where everything breaks; nested fault patterns per
   trial; :mod:`saf_ref.experiments.campaign`);
4. prints a table and writes ``results.json``, ``results.csv`` and ``results.png`` (when matplotlib is
   installed) to ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from saf_ref.bits import Quantizer
from saf_ref.experiments.campaign import CampaignResult, Subject, run_campaign
from saf_ref.protect import StorageRule, StorageSpec, default_spec, get_transform
from saf_ref.train.checkpoint import load_checkpoint, save_checkpoint
from saf_ref.train.loop import train
from saf_ref.train.optim import SGD
from saf_ref.train.schedules import Cosine

__all__ = [
    "DemoConfig",
    "QUICK",
    "run_demo",
    "format_table",
    "load_dataset",
    "quantizer_8bit",
    "quantized_spec",
]

DEFAULT_RATES = (1e-7, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does is decided here (``saf-ref demo --help`` maps options onto it)."""

    dataset: str = "digits"  # "digits", "mnist5k", "cifar10" (needs data_path)
    data_path: str | None = None
    model: str = "small_cnn"
    width: int = 8
    epochs: int = 12
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    float_transforms: tuple[str, ...] = ("identity", "tanh", "arctan")
    float_formats: tuple[str, ...] = ("float32", "float16", "q2.5")
    weight_clip: float = 0.3
    p_train: float = 0.02
    rates: tuple[float, ...] = DEFAULT_RATES
    trials: int = 20
    eval_limit: int | None = None
    seed: int = 0
    workers: int | None = None
    checkpoints: str | None = None
    verbose: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = {"epochs": 6, "trials": 4, "rates": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)}


def quantizer_8bit(clip: float | None = None) -> Quantizer:
    """The robust 8-bit quantizer of Stutz et al.: per-tensor asymmetric range, offset binary codes,
    round to nearest; ``clip`` additionally bounds the range (weight clipping)."""
    return Quantizer(
        8, scheme="asymmetric", code="offset_binary", rounding="nearest_even", clip=clip, margin=1e-3
    )


def quantized_spec(clip: float | None = None) -> StorageSpec:
    """Every parameter stored with the 8-bit quantizer; only conv/linear weights with the clipped one.

    Weight clipping bounds the *weights*. Batch-norm scales and shifts and biases are stored with the
    unclipped quantizer: clipping them too would silently change the network (a batch-norm scale of 11
    read back as 0.3).
    """
    return StorageSpec(
        (
            StorageRule("*", format=quantizer_8bit(clip), role="weight"),
            StorageRule("*", format=quantizer_8bit(None)),
        )
    )


def load_dataset(name: str, path: str | None = None):
    """The demo's data: ``(x_train, y_train, x_test, y_test, num_classes)``, float32 images in [0, 1]."""
    from saf_ref import data

    if name == "digits":
        d = data.load_digits()
    elif name == "mnist5k":
        d = data.load_mnist5k()
    elif name == "cifar10":
        if path is None:
            raise ValueError(
                "demo: dataset 'cifar10' needs --data-path (the cifar-10-python.tar.gz or "
                "its extracted folder); saf_ref never downloads in the demo"
            )
        d = data.load_cifar10(path)
    else:
        raise ValueError(f"demo: dataset must be one of ('digits', 'mnist5k', 'cifar10'), got {name!r}")
    return d.x_train, d.y_train, d.x_test, d.y_test, int(max(d.y_train.max(), d.y_test.max())) + 1


def _init(cfg: DemoConfig, in_channels: int, num_classes: int):
    from saf_ref.nn.resnet import ARCHS, init_resnet
    from saf_ref.nn.small import init_small_cnn
    from saf_ref.train.loop import parse_model_name

    base = parse_model_name(cfg.model, "demo").base  # "small_cnn@act_clip=6" trains a small_cnn
    if base == "small_cnn":
        return init_small_cnn(in_channels=in_channels, num_classes=num_classes, width=cfg.width, rng=cfg.seed)
    if base in ARCHS:
        return init_resnet(
            base, num_classes=num_classes, in_channels=in_channels, width=cfg.width, rng=cfg.seed
        )
    raise ValueError(f"demo: model must be 'small_cnn' or one of {tuple(ARCHS)}, got {cfg.model!r}")


def _log(cfg: DemoConfig, message: str) -> None:
    if cfg.verbose:
        print(message, file=sys.stderr, flush=True)


# The DemoConfig fields that decide what training produces. A checkpoint is reused only when they all
# match: otherwise "--epochs 12" after a run with "--epochs 1" would silently evaluate the 1-epoch model.
TRAINING_FIELDS = (
    "dataset", "data_path", "model", "width", "epochs", "batch_size", "lr", "momentum", "weight_decay",
    "weight_clip", "p_train", "seed",
)  # fmt: skip


def _check_reusable(cfg: DemoConfig, name: str, path: Path, metadata: dict[str, Any]) -> None:
    """Raise ValueError unless the checkpoint was trained by the demo with this run's training settings."""
    saved = metadata.get("config") if metadata.get("name") == name else None
    if not isinstance(saved, dict):
        raise ValueError(f"demo: checkpoint {path} must have been written by the demo for {name!r}, got "
                         f"metadata {metadata!r}; delete it or choose another --checkpoints directory")
    now = _jsonable(cfg)
    differ = [
        f"{k}={saved.get(k)!r} there, {now[k]!r} now"
        for k in TRAINING_FIELDS if saved.get(k) != now[k]
    ]
    if differ:
        raise ValueError(
            f"demo: checkpoint {path} must have been trained with this run's settings, "
            f"got {'; '.join(differ)}; delete it or choose another --checkpoints directory"
        )


def _cached(cfg: DemoConfig, name: str, trainer):
    """Train with ``trainer()``, or load the checkpoint ``<checkpoints>/<name>.npz`` if it exists.

    A checkpoint is reused only if it was trained with this run's :data:`TRAINING_FIELDS`
    (``ValueError`` otherwise).
    """
    path = None if cfg.checkpoints is None else Path(cfg.checkpoints) / f"{name}.npz"
    if path is not None and path.exists():
        ckpt = load_checkpoint(path)
        _check_reusable(cfg, name, path, ckpt.metadata)
        _log(cfg, f"[{name}] loaded {path}")
        return ckpt.params, ckpt.state
    start = time.perf_counter()
    params, state = trainer()
    _log(cfg, f"[{name}] trained in {time.perf_counter() - start:.1f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, params=params, state=state, metadata={"name": name, "config": _jsonable(cfg)})
    return params, state


def _jsonable(cfg: DemoConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


def _train_float(cfg, data, init, transform: str):
    optimizer = SGD(cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params, state, _ = train(
        *init,
        data,
        model=cfg.model,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=optimizer,
        schedule=Cosine(cfg.lr, cfg.epochs),
        transform=None if transform == "identity" else get_transform(transform),
        augment=None,
        rng=cfg.seed + 1,
        verbose=False,
    )
    return params, state


def _train_quantized(cfg, data, init, *, clip: float | None, p_train: float):
    from saf_ref.train.randbet import RandBETConfig, train_protected

    optimizer = SGD(cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    spec = quantized_spec(clip)
    params, state, _ = train_protected(
        *init,
        data,
        model=cfg.model,
        spec=spec,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=optimizer,
        schedule=Cosine(cfg.lr, cfg.epochs),
        config=RandBETConfig(p_train=p_train, weight_clip=clip),
        rng=cfg.seed + 1,
        verbose=False,
    )
    return params, state


def build_subjects(cfg: DemoConfig, data) -> list[Subject]:
    """Train (or load) every model and describe how each is stored."""
    x_train, _, _, _, num_classes = data
    init = _init(cfg, x_train.shape[1], num_classes)
    subjects = []
    for transform in cfg.float_transforms:
        method = "baseline" if transform == "identity" else "saf"
        params, state = _cached(
            cfg, f"{method}_{transform}", lambda t=transform: _train_float(cfg, data[:4], init, t)
        )
        for fmt in cfg.float_formats:
            subjects.append(
                Subject(method, transform, fmt, cfg.model, params, state, default_spec(fmt, transform))
            )
    # Stutz et al.'s RandBET trains with weight clipping; RandBET without clipping is shown too, because
    # on a small network whose classifier layer is not followed by batch norm, clipping costs clean
    # accuracy (see the README).
    quantized = (
        ("robust_quant", None, 0.0),
        ("clipping", cfg.weight_clip, 0.0),
        ("randbet", cfg.weight_clip, cfg.p_train),
        ("randbet_noclip", None, cfg.p_train),
    )
    for method, clip, p_train in quantized:
        params, state = _cached(
            cfg, method, lambda c=clip, p=p_train: _train_quantized(cfg, data[:4], init, clip=c, p_train=p)
        )
        subjects.append(Subject(method, "identity", "quant8", cfg.model, params, state, quantized_spec(clip)))
    return subjects


def format_table(result: CampaignResult, metric: str = "accuracy_mean") -> str:
    """A text table: one row per subject, clean accuracy, then ``metric`` (in %) at each rate."""
    rates = sorted({row["ber"] for row in result.summary})
    cells = {(row["subject"], row["ber"]): row[metric] for row in result.summary}
    head = f"{'method':<16}{'transform':<10}{'format':<9}{'clean':>7}" + "".join(f"{r:>8.0e}" for r in rates)
    lines = [head, "-" * len(head)]
    for c in result.clean:
        row = f"{c['method']:<16}{c['transform']:<10}{c['format']:<9}{100 * c['clean_accuracy']:>7.1f}"
        row += "".join(
            f"{100 * cells[(c['subject'], r)]:>8.1f}" if (c["subject"], r) in cells else f"{'':>8}"
            for r in rates
        )
        lines.append(row)
    return "\n".join(lines)


def run_demo(cfg: DemoConfig, out: str | os.PathLike) -> CampaignResult:
    """Train, sweep, and write ``results.json`` (a list of records), ``results.csv``, ``results.png``,
    ``table.txt`` and ``run.json`` (configuration, clean accuracies, per-trial records)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_dataset(cfg.dataset, cfg.data_path)
    _log(
        cfg,
        f"demo: {cfg.dataset} ({data[0].shape[0]} train / {data[2].shape[0]} test images), "
        f"model {cfg.model}, {cfg.epochs} epochs per method",
    )
    subjects = build_subjects(cfg, data)
    x_eval, y_eval = data[2], data[3]
    if cfg.eval_limit is not None:
        x_eval, y_eval = x_eval[: cfg.eval_limit], y_eval[: cfg.eval_limit]
    _log(cfg, f"demo: bit-error sweep, {len(subjects)} models x {len(cfg.rates)} rates x {cfg.trials} trials")
    result = run_campaign(
        subjects,
        x_eval,
        y_eval,
        cfg.rates,
        trials=cfg.trials,
        seed=cfg.seed,
        max_workers=cfg.workers,
        progress=cfg.verbose,
    )
    result.config.update(
        {"demo": _jsonable(cfg), "seconds": time.perf_counter() - start, "num_classes": data[4]}
    )
    result.to_json(out / "results.json")
    result.to_run_json(out / "run.json")
    result.to_csv(out / "results.csv")
    table = format_table(result)
    (out / "table.txt").write_text(table + "\n", encoding="utf-8")
    plotted = _try_plot(result, out / "results.png", cfg)
    print(table)
    print(
        f"\nwrote {out / 'results.json'}, {out / 'results.csv'}"
        + (f", {out / 'results.png'}" if plotted else " (install matplotlib for results.png)")
        + f" in {time.perf_counter() - start:.0f}s"
    )
    return result


def _try_plot(result: CampaignResult, path: Path, cfg: DemoConfig) -> bool:
    try:
        from saf_ref.experiments.plots import plot_campaign
    except ImportError:  # matplotlib is an optional extra
        return False
    plot_campaign(result, path, title=f"{cfg.model} on {cfg.dataset}: accuracy under random bit errors")
    return True


def config_from_args(args) -> DemoConfig:
    """Build a :class:`DemoConfig` from the parsed ``saf-ref demo`` options."""
    cfg = DemoConfig()
    if args.quick:
        cfg = replace(cfg, **QUICK)
    overrides = {
        k: getattr(args, k)
        for k in (
            "dataset",
            "data_path",
            "model",
            "width",
            "epochs",
            "trials",
            "seed",
            "workers",
            "checkpoints",
            "eval_limit",
        )
        if getattr(args, k, None) is not None
    }
    if getattr(args, "rates", None):
        overrides["rates"] = tuple(args.rates)
    overrides["verbose"] = not args.quiet
    return replace(cfg, **overrides)
