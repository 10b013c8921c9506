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
from mulreg.results.replication3 import d2_reading

PANELS = (("train_acc_flipped", "flipped training labels fitted (%)"), ("test_acc", "test accuracy (%)"))
LEGEND_COLUMNS = 3  # up to five entries: two rows that fit the figure's width at the notebooks' font size
LEGEND_ROOM = 0.17  # the share of the figure's height below the panels, for the legend's two rows


def memorisation_figure(runs: pd.DataFrame, hist: pd.DataFrame) -> Figure:
    """Two panels over epochs for the runs of `runs` (one line per run, coloured by penalty), a dot at
    each run's stop (`authors_stop_epoch`; hollow where the rule never fired: `stop_censored`, the run
    read at its last epoch), a cross where it memorised (`memorised_at`), the dashed line at one half on
    the fit panel."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 4.2), sharex=True)
    stops = runs.set_index("key")["authors_stop_epoch"]
    unfired = _unfired(runs)
    memorised = _memorised(runs)
    for key, h in hist[hist["key"].isin(runs["key"])].groupby("key"):
        h = h.sort_values("epoch")
        color = penalty_color(runs.loc[runs["key"] == key, "penalty"].iloc[0])
        at_stop = h[h["epoch"] == stops[key]]
        face = "none" if key in unfired else color
        for ax, (column, _) in zip(axes, PANELS):
            ax.plot(h["epoch"], 100 * h[column], color=color, lw=0.8, alpha=0.6)
            ax.plot(at_stop["epoch"], 100 * at_stop[column], "o", color=color, mfc=face, ms=4)
        crossed = h[h["epoch"] == memorised.get(key)]
        axes[0].plot(crossed["epoch"], 100 * crossed[PANELS[0][0]], "x", color=color, ms=6)
    for ax, (_, label) in zip(axes, PANELS):
        ax.set(xlabel="epoch", ylabel=label)
    axes[0].axhline(100 * MEMORISED, color="black", lw=0.8, ls="--")
    for pen in dict.fromkeys(runs["penalty"]):
        axes[0].plot([], [], color=penalty_color(pen), label=PENALTY_NAMES[Penalty(pen)])
    axes[0].plot([], [], "o", color="grey", label="the authors' stop")
    if unfired:
        axes[0].plot([], [], "o", color="grey", mfc="none", label="no stop by the last epoch (read there)")
    if memorised:
        axes[0].plot([], [], "x", color="grey", label="memorises (above one half, after the escape)")
    fig.tight_layout(rect=(0, LEGEND_ROOM, 1, 1))  # room below the panels for the legend, clear of every curve
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=LEGEND_COLUMNS, frameon=False,
               bbox_to_anchor=(0.5, 0.01))  # inside the figure: the saved caption runs along its bottom edge
    return fig


def _memorised(runs: pd.DataFrame) -> dict[str, int]:
    """Each run's memorisation epoch (`memorised_at`) where it memorised (not censored); none where the
    columns are absent."""
    if "memorised_at" not in runs or "censored" not in runs:
        return {}
    done = runs[~runs["censored"].astype(bool)]
    return dict(zip(done["key"], done["memorised_at"].astype(int)))


def _unfired(runs: pd.DataFrame) -> set[str]:
    """The keys of the runs whose stop never fired (`stop_censored`; none where the column is absent)."""
    if "stop_censored" not in runs:
        return set()
    return set(runs.loc[runs["stop_censored"].astype(bool), "key"])


def delay_sentences(family_d: pd.DataFrame, horizon: int) -> list[str]:
    """D1 and D2 in words, from their rows of `replication3.family_d`: counts, not only the statistic, so
    that a run that never memorised by the horizon (censored) is never said to memorise."""
    rows = family_d.set_index("id")
    d1, d2 = rows.loc["D1"], rows.loc["D2"]
    never = (f" (a run that never memorised by epoch {horizon} counts there, so its difference is a bound: "
             f"{int(d1['censored_mul'])} multiplicative and {int(d1['censored_none'])} unpenalised runs never did)"
             if d1["censored_mul"] or d1["censored_none"] else "")
    return [f"D1 (delay): of {int(d1['n'])} seeds, the multiplicative run memorises (fits more than half of its "
            f"flipped labels, once it has left chance level) later than the unpenalised run of the same seed in "
            f"{int(d1['later'])}, earlier in {int(d1['earlier'])}, at the same epoch in {int(d1['tied'])}{never}; "
            f"median difference "
            f"{d1['mean']:+.0f} epochs (exact sign test on the seeds that differ, p {d1['p']:.2g}, Holm p "
            f"{d1['p_holm']:.2g}): {d1['outcome']}.",
            f"D2 (prevent): {int(d2['memorised'])} of the {int(d2['n'])} multiplicative runs ({0.5 - d2['mean']:.0%}) "
            f"memorise by epoch {horizon} (exact 95 % interval {0.5 - d2['high']:.0%} to {0.5 - d2['low']:.0%}; "
            f"binomial test against one half p {d2['p']:.2g}, Holm p {d2['p_holm']:.2g}): "
            f"{d2_reading(d2['outcome'])}."]


ARMS = {Penalty.MUL: "multiplicative", Penalty.SUM: "additive", Penalty.NONE: "unpenalised"}  # as the sentences say


def fit_at_horizon(runs: pd.DataFrame, hist: pd.DataFrame) -> str:
    """Descriptive, not a registered test: the share of its flipped labels each arm fits at its last
    epoch, median and range over its runs, so that a reader sees how far past one half "memorises" went."""
    last = hist[["key", "epoch", "train_acc_flipped"]].sort_values("epoch").groupby("key").tail(1)
    last = last.merge(runs[["key", "penalty"]], on="key")
    arms = [f"the {ARMS[Penalty(penalty)]} runs {fits.median():.0%} (from {fits.min():.0%} to {fits.max():.0%}, "
            f"n = {len(fits)})" for penalty, fits in last.groupby("penalty")["train_acc_flipped"]]
    return (f"Descriptive, not a registered test: at epoch {int(last['epoch'].max())} the median share of its "
            f"flipped labels a run fits is, for {'; for '.join(arms)}.")
