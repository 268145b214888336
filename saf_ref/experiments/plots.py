"""Plots of campaign results (needs matplotlib: ``pip install "saf_ref[plot]"``; the core never does).

:func:`plot_campaign` draws accuracy against bit-error rate (log scale), one line per stored model with
its confidence band over trials; float models on the left, quantized models on the right.
:func:`plot_vulnerability_map` draws a :class:`saf_ref.attack.VulnerabilityMap` as a heatmap, tensors by
bit positions. :func:`plot_layer_vulnerability` draws the per-layer SDC rates of an activation campaign
(:func:`saf_ref.experiments.sdc.run_activation_sdc`) as grouped bars, one group per layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_campaign", "plot_layer_vulnerability", "plot_vulnerability_map"]

_FORMAT_STYLE = {"float32": "-", "float16": "--", "q2.5": ":", "quant8": "-"}
_TRANSFORM_COLOR = {
    "identity": "tab:red",
    "tanh": "tab:blue",
    "arctan": "tab:green",
    "softsign": "tab:purple",
    "hardtanh": "tab:orange",
}
_METHOD_COLOR = {
    "robust_quant": "tab:red",
    "clipping": "tab:blue",
    "randbet": "tab:green",
    "randbet_noclip": "tab:purple",
}


def _series(summary: Sequence[Mapping[str, Any]], subject: str, metric: str):
    rows = sorted((r for r in summary if r["subject"] == subject and r["ber"] > 0), key=lambda r: r["ber"])
    x = [r["ber"] for r in rows]
    if metric == "accuracy":
        return (
            x,
            [r["accuracy_mean"] for r in rows],
            [r["accuracy_ci_low"] for r in rows],
            [r["accuracy_ci_high"] for r in rows],
        )
    return (
        x,
        [r["rerr_mean"] for r in rows],
        [r["rerr_ci_low"] for r in rows],
        [r["rerr_ci_high"] for r in rows],
    )


def plot_campaign(
    result,
    path: str | os.PathLike,
    *,
    metric: str = "accuracy",
    title: str | None = None,
    chance: float | None = None,
) -> None:
    """Save a PNG of ``metric`` ("accuracy" or "rerr") against bit-error rate for every subject.

    Parameters
    ----------
    result : CampaignResult
    path : path of the PNG to write
    metric : {"accuracy", "rerr"}
    title : str, optional
    chance : float, optional
        Draw the chance level (default ``1 / num_classes`` when the result's config records it).
    """
    if metric not in ("accuracy", "rerr"):
        raise ValueError(f"plot_campaign: metric must be one of ('accuracy', 'rerr'), got {metric!r}")
    if chance is None and result.config.get("num_classes"):
        chance = 1.0 / result.config["num_classes"]
    groups = {"float models (latents stored, f applied after reading)": [], "8-bit quantized models": []}
    for c in result.clean:
        key = "8-bit quantized models" if c["format"] == "quant8" else next(iter(groups))
        groups[key].append(c)
    panels = [(name, subs) for name, subs in groups.items() if subs]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False, sharey=True)
    for ax, (name, subs) in zip(axes[0], panels, strict=True):
        for c in subs:
            x, y, lo, hi = _series(result.summary, c["subject"], metric)
            if c["format"] == "quant8":
                color, style, label = _METHOD_COLOR.get(c["method"], None), "-", c["method"]
            else:
                color = _TRANSFORM_COLOR.get(c["transform"], None)
                style = _FORMAT_STYLE.get(c["format"], "-")
                label = f"{c['transform']} / {c['format']}"
            (line,) = ax.plot(x, [100 * v for v in y], style, color=color, marker="o", ms=3, label=label)
            ax.fill_between(
                x, [100 * v for v in lo], [100 * v for v in hi], color=line.get_color(), alpha=0.15
            )
        if chance is not None and metric == "accuracy":
            ax.axhline(100 * chance, color="grey", lw=0.8, ls="-.", label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("bit-error rate p")
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("accuracy (%)" if metric == "accuracy" else "robust error RErr (%)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_vulnerability_map(
    vmap,
    path: str | os.PathLike,
    *,
    column: str = "loss_increase_mean",
    floor: float = 1e-4,
    title: str | None = None,
) -> np.ndarray:
    """Save a PNG heatmap of one column of a vulnerability map: exposed tensors (rows) by bit positions.

    Parameters
    ----------
    vmap : VulnerabilityMap
        From :func:`saf_ref.attack.vulnerability_map`.
    path : path of the PNG to write
    column : str
        Which record field to draw (default the mean exact loss increase of one flip); any numeric column
        :meth:`VulnerabilityMap.matrix` accepts.
    floor : float
        The colour scale is ``log10(max(value, floor))``: damage spans orders of magnitude, and a flip that
        lowers the loss (a negative value) is drawn at the floor.
    title : str, optional

    Returns
    -------
    ndarray, shape (tensors, bits)
        The drawn values, ``log10(max(M, floor))`` with NaN where a tensor has no such bit (blank cells).
    """
    if not (isinstance(floor, (int, float)) and np.isfinite(floor) and floor > 0):
        raise ValueError(f"plot_vulnerability_map: floor must be a finite number > 0, got {floor!r}")
    tensors, m = vmap.matrix(column)
    with np.errstate(invalid="ignore"):
        drawn = np.where(np.isnan(m), np.nan, np.log10(np.maximum(m, floor)))
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * m.shape[1], 1.0 + 0.32 * len(tensors)))
    image = ax.imshow(drawn, cmap="magma", aspect="auto", vmin=np.log10(floor))
    ax.set_xticks(range(m.shape[1]), [str(b) for b in range(m.shape[1])])
    ax.set_yticks(range(len(tensors)), tensors, fontsize=8)
    ax.set_xlabel("bit position (0 = least significant)")
    fig.colorbar(image, ax=ax, label=f"log10 {column} (floored at {floor:g})")
    ax.set_title(title or f"{column} of one flip, by tensor and bit", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_layer_vulnerability(
    summary: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    outcome: str = "sdc",
    ber: float | None = None,
    title: str | None = None,
) -> tuple[list[str], list[str], np.ndarray]:
    """Save a PNG bar chart of an outcome rate per layer (x, in the order of ``summary``), one bar per
    activation format, with the rate's confidence interval as error bars.

    Parameters
    ----------
    summary : sequence of dict
        Summary rows of :func:`saf_ref.experiments.sdc.run_activation_sdc` (keys ``layer``, ``format``,
        ``ber``, ``bit``, ``<outcome>_rate``, ``<outcome>_ci_low``, ``<outcome>_ci_high``); rows of
        per-bit cells (``bit`` not None) are left out.
    path : path of the PNG to write
    outcome : {"sdc", "sdc_top5", "detected", "masked"}
    ber : float, optional
        The bit-error rate drawn (default: the largest in ``summary``).
    title : str, optional

    Returns
    -------
    layers, formats : list of str
    rates : ndarray, shape (formats, layers)
        The drawn rates (NaN where a cell is missing).
    """
    fn = "plot_layer_vulnerability"
    if outcome not in ("sdc", "sdc_top5", "detected", "masked"):
        raise ValueError(
            f"{fn}: outcome must be one of ('sdc', 'sdc_top5', 'detected', 'masked'), got {outcome!r}"
        )
    rows = [r for r in summary if r.get("bit") is None]
    if not rows:
        raise ValueError(f"{fn}: summary must hold activation-campaign rows with bit None, got none")
    rates_seen = sorted({r["ber"] for r in rows})
    ber = rates_seen[-1] if ber is None else ber
    if ber not in rates_seen:
        raise ValueError(f"{fn}: ber must be one of the summary's rates {rates_seen}, got {ber!r}")
    rows = [r for r in rows if r["ber"] == ber]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    formats = list(dict.fromkeys(r["format"] for r in rows))
    rate = np.full((len(formats), len(layers)), np.nan)
    low, high = rate.copy(), rate.copy()
    for r in rows:
        i, j = formats.index(r["format"]), layers.index(r["layer"])
        if r[f"{outcome}_rate"] is not None:
            rate[i, j] = r[f"{outcome}_rate"]
            low[i, j], high[i, j] = r[f"{outcome}_ci_low"], r[f"{outcome}_ci_high"]
    width_in = min(12.0, max(5.0, 1.0 + 0.5 * len(layers) * len(formats) ** 0.5))  # ResNet-20: 19 layers
    fig, ax = plt.subplots(figsize=(width_in, 4.2))
    width = 0.8 / len(formats)
    x = np.arange(len(layers))
    for i, fmt in enumerate(formats):
        err = np.vstack((rate[i] - low[i], high[i] - rate[i])) * 100
        ax.bar(x + (i - (len(formats) - 1) / 2) * width, rate[i] * 100, width, yerr=err, capsize=2, label=fmt)
    tilt = len(layers) > 6  # ResNet tap names overlap unless tilted
    ax.set_xticks(x, layers, rotation=45 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylabel(f"{outcome} rate (% of examples)")
    ax.set_xlabel("layer (activation tap)")
    default_title = f"activation faults at bit-error rate {ber:g}: {outcome} rate by layer"
    ax.set_title(title or default_title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, title="activation format", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return layers, formats, rate
