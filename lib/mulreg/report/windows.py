"""The λ window (docs/PREREGISTRATION-2.md, B14) drawn and said: for each penalty, test accuracy at the
best validation-loss and last epochs and the fitted share of flipped labels against λ, seeds as points."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mulreg.protocols import PENALTY_NAMES, Penalty
from mulreg.report.prose import lam_text
from mulreg.report.style import penalty_color
from mulreg.results.replication import WINDOW_FIT, window_widths

# Labels on two lines, so that the three rows' labels do not overlap.
PANELS = (("test_acc_best_val", "test accuracy (%),\nbest val-loss epoch"),
          ("test_acc_last", "test accuracy (%),\nlast epoch"),
          ("train_acc_flipped", "flipped training\nlabels fitted (%)"))


def window_figure(win: pd.DataFrame) -> Figure:
    """One column per penalty (its own λ axis), one row per quantity of `PANELS`; a point per run
    (hollow: the run never left chance), the shaded band the λ inside the window for every seed."""
    penalties = [p for p in (Penalty.MUL.value, Penalty.SUM.value) if p in set(win["penalty"])]
    fig, axes = plt.subplots(len(PANELS), max(len(penalties), 1), figsize=(5.2 * max(len(penalties), 1), 8.5),
                             squeeze=False, sharey="row")
    for col, pen in enumerate(penalties):
        part = win[win["penalty"] == pen]
        always = part.groupby("lam")["in_window"].all()
        for row, (column, label) in enumerate(PANELS):
            ax = axes[row, col]
            for lam in always[always].index:
                ax.axvspan(lam / 1.25, lam * 1.25, color=penalty_color(pen), alpha=0.12, lw=0)
            for learned, face in ((True, penalty_color(pen)), (False, "none")):
                pts = part[part["learned"] == learned]
                jitter = np.exp(0.06 * (pts["seed"] - pts["seed"].mean()))
                ax.scatter(pts["lam"] * jitter, 100 * pts[column], s=28, facecolors=face,
                           edgecolors=penalty_color(pen), label=None if learned else "never left chance")
            if column == "train_acc_flipped":
                ax.axhline(100 * WINDOW_FIT, color="black", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set(ylabel=label if col == 0 else None, xlabel="λ" if row == len(PANELS) - 1 else None)
        axes[0, col].set_title(f"{PENALTY_NAMES[Penalty(pen)]}: λ window shaded")
    fig.tight_layout()
    return fig


def window_sentences(win: pd.DataFrame, test: dict) -> list[str]:
    """Each penalty's window per seed (λ range, width, censoring) and the registered test's result."""
    widths = window_widths(win)
    out = []
    for (pen, seed), part in win[win["in_window"]].groupby(["penalty", "seed"]):
        w = widths[(widths["penalty"] == pen) & (widths["seed"] == seed)].iloc[0]
        edge = " (reaches a grid end: censored)" if w["censored"] else ""
        span = f"{lam_text(part['lam'].min())} to {lam_text(part['lam'].max())}"
        out.append(f"{PENALTY_NAMES[Penalty(pen)]}, seed {seed}: {int(w['points'])} of the grid's λ in the window, "
                   f"{span}, width {w['width']:.2f} decades{edge}.")
    empty = widths[widths["points"] == 0]
    out += [f"{PENALTY_NAMES[Penalty(r.penalty)]}, seed {r.seed}: no λ of the grid in the window." for r in
            empty.itertuples()]
    if "only_mul" in test:
        out.append(f"(seed, grid position) pairs where only the multiplicative run is in its window: "
                   f"{test['only_mul']}; only the additive one: {test['only_sum']}; exact two-sided sign test "
                   f"p {test['p']:.2g}.")
    return out
