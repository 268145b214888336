"""Plots of ``saf-ref chips`` results (needs matplotlib: ``pip install "saf_ref[plot]"``).

:func:`plot_accuracy_voltage` draws accuracy against supply voltage, one line per stored model with its
interval over (chip, placement) pairs, one panel per word width; :func:`plot_energy_saved` draws the
energy saved at the lowest voltage within each accuracy-loss budget, per model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_accuracy_voltage", "plot_energy_saved"]

_METHOD_COLOR = {
    "robust_quant": "tab:red",
    "clipping": "tab:blue",
    "randbet": "tab:green",
    "saf": "tab:purple",
}


def _label(row: Mapping[str, Any]) -> str:
    return f"{row['method']} ({row['format']})"


def plot_accuracy_voltage(
    summary: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None
) -> None:
    """Save a PNG of mean accuracy (with its interval) against voltage, one panel per bits per word."""
    widths = sorted({r["bits"] for r in summary})
    fig, axes = plt.subplots(1, len(widths), figsize=(5.5 * len(widths), 4.4), squeeze=False, sharey=True)
    for ax, bits in zip(axes[0], widths, strict=True):
        for subject in dict.fromkeys(r["subject"] for r in summary if r["bits"] == bits):
            rows = sorted((r for r in summary if r["subject"] == subject), key=lambda r: r["voltage"])
            x = [r["voltage"] for r in rows]
            color = _METHOD_COLOR.get(rows[0]["method"])
            style = "--" if rows[0]["format"] == "float16" else "-"
            (line,) = ax.plot(
                x,
                [100 * r["accuracy_mean"] for r in rows],
                style,
                color=color,
                marker="o",
                ms=2.5,
                label=_label(rows[0]),
            )
            ax.fill_between(
                x,
                [100 * r["accuracy_ci_low"] for r in rows],
                [100 * r["accuracy_ci_high"] for r in rows],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.invert_xaxis()  # lower voltage (more energy saved) to the right
        ax.set_xlabel("supply voltage / nominal")
        ax.set_title(f"{bits}-bit words", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("accuracy (%) on persistent chip faults")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_energy_saved(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None
) -> None:
    """Save a bar chart of the energy saved within each accuracy-loss budget, one group per model."""
    tags = (
        [k.removeprefix("energy_saving_") for k in rows[0] if k.startswith("energy_saving_")] if rows else []
    )
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2))
    width = 0.8 / max(1, len(tags))
    for j, tag in enumerate(tags):
        xs = [i + (j - (len(tags) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(
            xs,
            [100 * r[f"energy_saving_{tag}"] for r in rows],
            width,
            label=f"accuracy loss <= {tag.removesuffix('pct')}%",
        )
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['method']}\n{r['format']}" for r in rows], fontsize=7)
    ax.set_ylabel("memory energy saved (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
