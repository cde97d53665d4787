"""Report figures: embedded PNGs with deterministic bytes (no software-version metadata)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.report_tables import SEXES, read_table, term_label  # noqa: E402

SEX_COLOURS = {"women": "#b2182b", "men": "#2166ac"}


def figure_png(fig) -> str:
    """A figure as base64 PNG without the software-version metadata (deterministic bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")



def first_row(frame: pd.DataFrame) -> pd.Series | None:
    """The first row of ``frame``, or None when it is empty."""
    return None if frame.empty else frame.iloc[0]


def interval_bars(ax, position, low, high, colour: str, capsize: float, vertical: bool = False) -> None:
    """Intervals drawn from their own ends (centre ± half-width), not as distances from the
    estimate: a percentile bootstrap interval need not contain its estimate, and an error bar
    measured from the estimate would then be negative."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    centre, half = (low + high) / 2, np.abs(high - low) / 2
    if vertical:
        ax.errorbar(position, centre, yerr=half, fmt="none", ecolor=colour, capsize=capsize)
    else:
        ax.errorbar(centre, position, xerr=half, fmt="none", ecolor=colour, capsize=capsize)


def plot_interval(ax, row: pd.Series, y: float, estimate: str, low: str, high: str, colour: str, label: str | None) -> None:
    """One estimate with its interval as a horizontal error bar at height ``y``."""
    interval_bars(ax, [y], [row[low]], [row[high]], colour, capsize=3)
    ax.plot([row[estimate]], [y], "o", color=colour, label=label)


def gender_figure(effects: pd.DataFrame, title: str, unit: str):
    """Effects with 95% CIs for women and men side by side; true values as open diamonds."""
    main = effects[effects["sex"].isin(["women", "men"])]
    labels = list(dict.fromkeys(main["label"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.8 * len(labels)))
    for i, label in enumerate(labels):
        for j, sex in enumerate(("women", "men")):
            r = first_row(main[(main["label"] == label) & (main["sex"] == sex)])
            if r is None:
                continue
            y = i + (-0.15 if sex == "women" else 0.15)
            plot_interval(ax, r, y, "estimate", "ci_low", "ci_high", SEX_COLOURS[sex], SEXES[sex] if i == 0 else None)
            if "truth" in r and pd.notna(r.get("truth")):
                ax.plot(r["truth"], y, marker="D", mfc="none", mec="black", ms=7,
                        label="True value" if (i == 0 and j == 0) else None)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"Intention-to-treat effect ({unit}), 95% CI")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return fig


def qte_figure(folder: Path, unit: str) -> str | None:
    """Quantile treatment effects by owner gender from a study's estimate outputs (``folder``)."""
    qte = read_table(folder / "qte.csv")
    if qte is None:
        return None
    qte = qte[qte["sample"].isin(["women", "men"])]
    terms = [t for t in ("treat_skills", "treat_capital") if t in set(qte["term"])]
    if qte.empty or not terms:
        return None
    fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.2), sharey=True, squeeze=False)
    for ax, term in zip(axes[0], terms):
        for k, sex in enumerate(("women", "men")):
            d = qte[(qte["term"] == term) & (qte["sample"] == sex)].sort_values("quantile")
            if d.empty:
                continue
            x = d["quantile"] + (k - 0.5) * 0.012
            interval_bars(ax, x, d["ci_low"], d["ci_high"], SEX_COLOURS[sex], capsize=2, vertical=True)
            ax.plot(x, d["estimate"], "o-", color=SEX_COLOURS[sex], ms=4, label=SEXES[sex])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(term_label(term), fontsize=10)
        ax.set_xlabel("Quantile of profit")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"Quantile treatment effect ({unit})")
    axes[0][0].legend(fontsize=8, frameon=False)
    return figure_png(fig)
