"""Prevent or delay (docs/PREREGISTRATION-3.md, family D) drawn and said: the fitted share of flipped
training labels and test accuracy over epochs, per arm, seeds as thin lines, each run's stop marked;
and the sentences computed from D1 and D2."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from mulreg.protocols import PENALTY_NAMES, Penalty
from mulreg.report.style import penalty_color
from mulreg.results.design import MEMORISED

PANELS = (("train_acc_flipped", "flipped training labels fitted (%)"), ("test_acc", "test accuracy (%)"))


def memorisation_figure(runs: pd.DataFrame, hist: pd.DataFrame) -> Figure:
    """Two panels over epochs for the runs of `runs` (one line per run, coloured by penalty), a dot at
    each run's stop (`authors_stop_epoch`), the dashed line at one half on the fit panel."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 4.2), sharex=True)
    stops = runs.set_index("key")["authors_stop_epoch"]
    for key, h in hist[hist["key"].isin(runs["key"])].groupby("key"):
        h = h.sort_values("epoch")
        penalty = runs.loc[runs["key"] == key, "penalty"].iloc[0]
        at_stop = h[h["epoch"] == stops[key]]
        for ax, (column, _) in zip(axes, PANELS):
            ax.plot(h["epoch"], 100 * h[column], color=penalty_color(penalty), lw=0.8, alpha=0.6)
            ax.plot(at_stop["epoch"], 100 * at_stop[column], "o", color=penalty_color(penalty), ms=4)
    for ax, (_, label) in zip(axes, PANELS):
        ax.set(xlabel="epoch", ylabel=label)
    axes[0].axhline(100 * MEMORISED, color="black", lw=0.8, ls="--")
    for pen in dict.fromkeys(runs["penalty"]):
        axes[0].plot([], [], color=penalty_color(pen), label=PENALTY_NAMES[Penalty(pen)])
    axes[0].plot([], [], "o", color="grey", label="the authors' stop")
    axes[0].legend(loc="lower right", frameon=False)
    fig.tight_layout()
    return fig


def delay_sentences(family_d: pd.DataFrame, horizon: int) -> list[str]:
    """D1 and D2 in words, from their rows of `replication3.family_d`."""
    rows = family_d.set_index("id")
    d1, d2 = rows.loc["D1"], rows.loc["D2"]
    share = 0.5 - d2["mean"]
    return [f"D1 (delay): the multiplicative runs memorise (fit more than half of their flipped labels) a median "
            f"{d1['mean']:+.0f} epochs after the unpenalised run of the same seed (n {int(d1['n'])}; exact sign test "
            f"p {d1['p']:.2g}, Holm p {d1['p_holm']:.2g}): {d1['outcome']}.",
            f"D2 (prevent): {share:.0%} of the {int(d2['n'])} multiplicative runs memorise by epoch {horizon} "
            f"(exact 95 % interval {0.5 - d2['high']:.0%} to {0.5 - d2['low']:.0%}; binomial test against one half "
            f"p {d2['p']:.2g}, Holm p {d2['p_holm']:.2g}): {D2_READING.get(d2['outcome'], d2['outcome'])}."]


D2_READING = {"holds": "it prevents memorisation up to the horizon in most seeds",
              "reversed": "it memorises by the horizon: the penalty delays memorisation at most"}  # as registered
