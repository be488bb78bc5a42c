"""The plots of the reports, as PNG data URIs to embed in a self-contained page."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def embed(fig: Any) -> str:
    """The figure as a PNG data URI; the figure is closed."""
    plt = _figure()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def embed_file(path: Path) -> str:
    """A PNG file as a data URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def confusion_plot(image: dict[str, Any], threshold: float) -> str:
    plt = _figure()
    matrix = np.array([[image["tp"], image["fn"]], [image["fp"], image["tn"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(matrix, cmap="Blues")
    for (r, c), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        ax.text(c, r, str(value), ha="center", va="center", color=colour, fontsize=12)
    ax.set_xticks([0, 1], ["malignant", "benign"])
    ax.set_yticks([0, 1], ["malignant", "benign"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("histology")
    ax.set_title(f"Images at threshold {threshold:g}")
    return embed(fig)


def tradeoff_plot(tradeoff: pd.DataFrame, chosen: float) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ax.plot(tradeoff["threshold"], tradeoff["sensitivity"], lw=2, label="sensitivity")
    ax.plot(tradeoff["threshold"], tradeoff["specificity"], lw=2, label="specificity")
    ax.axvline(chosen, color="k", ls="--", lw=1, label=f"vote threshold {chosen:.2f}")
    ax.set_xlabel("share of a patient's images called malignant")
    ax.set_ylabel("patients")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Patient vote: threshold trade-off")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return embed(fig)


def calibration_plot(table: pd.DataFrame) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.5, label="perfect")
    if len(table):
        ax.plot(table["predicted"], table["observed"], "o-", lw=2, label="this model")
    ax.set_xlabel("mean predicted P(malignant)")
    ax.set_ylabel("observed malignant share")
    ax.set_title("Calibration per image")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return embed(fig)


def votes_plot(title: str, table: pd.DataFrame, several_models: bool) -> str:
    """Stacked bars of malignant and benign votes per group (and model version)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"{g} ({m[:6]})" if several_models else str(g)
              for g, m in zip(table["grp"], table["model_version"], strict=True)]  # fmt: skip
    ax.bar(labels, table["malignant"], color="#d55", label="malignant")
    ax.bar(labels, table["benign"], bottom=table["malignant"], color="#5a5", label="benign")
    ax.set_ylabel("studies")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    return embed(fig)


def agreement_plot(unit: str, rows: list[dict[str, Any]]) -> str:
    """A forest plot: per group (and model version) each agreement figure with its 95%
    CI, one panel per figure; hollow markers rest on fewer cases than the report warns of."""
    from renalflow.tasks.agreement import FIGURE_NAMES, FIGURES

    plt = _figure()
    labels = [f"{r['by']}: {r['group']}" if r["by"] != "all" else "all" for r in rows]
    several = len({r["model"] for r in rows}) > 1
    if several:
        labels = [f"{label} ({r['model'][:8]})" for label, r in zip(labels, rows, strict=True)]
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(
        1, len(FIGURES), figsize=(10, 1.0 + 0.28 * len(rows)), sharey=True, squeeze=False
    )
    for ax, name in zip(axes[0], FIGURES, strict=True):
        for row, level in zip(rows, y, strict=True):
            figure = row["figures"][name]
            if figure.n == 0:
                continue
            small = any(FIGURE_NAMES[name] in w for w in row["warnings"])
            ax.plot([figure.low, figure.high], [level, level], color="#336", lw=1.5)
            ax.plot(figure.value, level, "o", color="#336", mfc="white" if small else "#336", ms=5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(FIGURE_NAMES[name], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(y, labels)
    fig.suptitle(f"Agreement with reference outcomes: {unit} (95% Wilson CI)", fontsize=10)
    return embed(fig)
