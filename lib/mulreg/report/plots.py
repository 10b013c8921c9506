"""The static figures of the paper notebooks (seaborn/matplotlib). Setting a notebook up and saving
figures and tables (`setup`, `note_source`, `save`, `save_table`) live in `mulreg.report.saving`;
their names are given here too, as the notebooks call them (`plots.save`).

Inputs are the tidy tables of `mulreg.results.stats` and `mulreg.results.analysis` (runs, `group_stats`,
`histories`, `margins`, `spectra`). Colours and labels: `mulreg.report.style`; the Plotly versions of
Fig. 1 and 2: `mulreg.report.interactive`; loss surfaces: `mulreg.report.surfaces`.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from mulreg.protocols import EFF_LR, NORM
from mulreg.report.saving import note_source, save, save_table, setup  # noqa: F401 - the notebooks' plots.save
from mulreg.report.style import (
    LOG_SCALE,
    PAPER_FOR,
    arm_style,
    band_stats,
    metric_label,
    penalties_in,
    penalty_color,
    penalty_label,
)


def _empty(ax, message: str = "no runs to show (all excluded, or none stored)") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)


def log_axis(ax, axis: str = "y") -> None:
    """Log scale with plain tick labels (1.37, 2.5e+05), also when the range is under a decade
    and matplotlib would label minor ticks as 1.37×10⁰."""
    getattr(ax, f"set_{axis}scale")("log")
    fmt = mticker.FuncFormatter(lambda v, _: f"{v:.3g}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(fmt)

    def minor(v, pos):
        if not _few_decades(target):
            return ""
        if axis == "x" and pos is not None:  # horizontal labels collide: label about 4 of them
            lo, hi = target.get_view_interval()
            shown = sum(lo <= t <= hi for t in target.get_minorticklocs())
            if pos % max(1, math.ceil(shown / 4)):
                return ""
        return f"{v:.3g}"

    target.set_minor_formatter(mticker.FuncFormatter(minor))


def _few_decades(axis) -> bool:
    lo, hi = axis.get_view_interval()
    return lo > 0 and hi / lo < 10


def _band(ax, stats: pd.DataFrame, x: str, color: str, label: str) -> None:
    ax.plot(stats[x], stats["mean"], color=color, label=label, lw=1.6)
    ax.fill_between(stats[x], stats["min"], stats["max"], color=color, alpha=0.2, lw=0)


# ---- Fig. 1: accuracy and margin vs label noise


def noise_robustness(stats: pd.DataFrame, paper: pd.DataFrame | None = None,
                     quantities: Sequence[str] = ("test_acc", "margin_mean", "margin_std_mean"),
                     paper_for: dict[str, str] = PAPER_FOR) -> Figure:
    """One panel per quantity against label noise, a line per penalty: mean over the seeds of the
    chosen λ with error bars of ± one std over seeds. `stats` is `mulreg.results.stats.group_stats`; `paper`
    (optional, `mulreg.results.paper.published("fig1")`) is drawn as dashed lines with open markers, on
    the panel of the same quantity or of the one `paper_for` maps to it."""
    fig = Figure(figsize=(5.0 * len(quantities), 4.2), layout="constrained")
    axes = fig.subplots(1, len(quantities), squeeze=False)[0]
    for ax, q in zip(axes, quantities):
        part = stats[stats["quantity"] == q] if len(stats) else stats
        scale = 100 if q.endswith("acc") else 1
        if part.empty:
            _empty(ax)
        for pen in penalties_in(part):
            d = part[part["penalty"] == pen].sort_values("label_noise")
            ax.errorbar(d["label_noise"], scale * d["value"], yerr=scale * d["std"].fillna(0), marker="o",
                        capsize=4, color=penalty_color(pen), label=f"{penalty_label(pen)} (reproduced)")
        if paper is not None and len(paper):
            pp = paper[paper["quantity"] == paper_for.get(q, q)]
            for pen in penalties_in(pp):
                d = pp[pp["penalty"] == pen].sort_values("label_noise")
                ax.plot(d["label_noise"], scale * d["value"], ls="--", marker="o", mfc="none",
                        color=penalty_color(pen), alpha=0.8, label=f"{penalty_label(pen)} (paper)")
        ax.set(xlabel="label noise (fraction of flipped training labels)",
               ylabel=metric_label(q) + (" (%)" if scale == 100 else ""), title=metric_label(q) + " vs label noise")
        ax.set_xticks(sorted(set(stats["label_noise"])) if len(stats) else [0, 0.1, 0.2])
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), frameon=False)
    return fig


OUTCOME_COLORS = {"holds": "#009E73", "reversed": "#D55E00"}  # anything else: not resolved (grey)


def verdict_forest(claims: pd.DataFrame, paper: dict[tuple[str, str], float] | None = None,
                   rules: dict[str, str] | None = None) -> Figure:
    """One panel per tested claim (`mulreg.results.claims.claims`), one row per epoch rule: the mean
    paired difference in points with its interval, green where the claim holds, red where it is
    reversed, grey where it is not resolved; a dotted line at 0, a dashed one at the paper's
    difference (`paper`, as from `mulreg.results.claims.paper_gaps`)."""
    tested = claims[claims["n"] > 0]
    panels = list(dict.fromkeys(zip(tested["claim"], tested["noise"])))
    fig = Figure(figsize=(4.6 * max(1, len(panels)), 0.55 * tested["rule"].nunique() + 1.6), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        _empty(axes[0], "no claim could be tested (no pairs of runs)")
    for ax, (claim, noise) in zip(axes, panels):
        part = tested[(tested["claim"] == claim) & (tested["noise"] == noise)].reset_index(drop=True)
        y = np.arange(len(part))[::-1]
        for yi, r in zip(y, part.itertuples()):
            color = OUTCOME_COLORS.get(r.outcome, "#7F7F7F")
            lo, hi = (100 * r.low, 100 * r.high) if pd.notna(r.low) else (100 * r.mean, 100 * r.mean)
            ax.plot([lo, hi], [yi, yi], color=color, lw=2.5)
            ax.plot(100 * r.mean, yi, "o", color=color)
        ax.axvline(0, color="black", lw=0.8, ls=":")
        if paper and (claim, noise) in paper:
            ax.axvline(paper[(claim, noise)], color="black", lw=1, ls="--", label="paper")
            ax.legend(loc="lower right", frameon=False, fontsize="small")
        ax.set_yticks(y, [(rules or {}).get(r, r) for r in part["rule"]])
        ax.set(xlabel="difference in test accuracy (points)", title=f"{claim}\n(label noise {noise})")
    return fig


def paired_gap_over_epochs(gaps: pd.DataFrame) -> Figure:
    """The paired difference in test accuracy (points) between the multiplicative penalty and each
    other penalty at every epoch (`mulreg.results.stats.paired_over_epochs`, one row per comparison
    `other`, label noise and epoch): the mean over seeds as a line, its 95 % t interval as a band,
    one panel per label noise; the dotted line is no difference."""
    levels = sorted(gaps["label_noise"].unique()) if len(gaps) else [None]
    fig = Figure(figsize=(5.2 * len(levels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(levels), squeeze=False, sharey=True)[0]
    for ax, noise in zip(axes, levels):
        if noise is None:
            _empty(ax, "no pairs of runs")
            continue
        part = gaps[np.isclose(gaps["label_noise"], noise)]
        for other, g in part.groupby("other", sort=False):
            color = penalty_color(other)
            n = int(g["n"].max())
            ax.plot(g["epoch"], 100 * g["mean"], color=color,
                    label=f"multiplicative − {penalty_label(other)} ({n} seed pairs)")
            ax.fill_between(g["epoch"], 100 * g["low"], 100 * g["high"], color=color, alpha=0.2, lw=0)
        ax.axhline(0, color="black", lw=0.8, ls=":")
        ax.set(xlabel="epoch", ylabel="difference in test accuracy (points)", title=f"label noise {noise:g}")
        ax.legend(loc="best", frameon=False, fontsize="small")
    return fig


# ---- notebook 06: the arms
def arm_accuracy(chosen: pd.DataFrame, metric: str = "test_acc_best_val", reference: str | None = None) -> Figure:
    """Test accuracy (%) of each arm's chosen setting (`mulreg.results.arms.chosen_runs`), one panel per
    label noise: a dot per seed, a bar for the mean; colour = regulariser, marker = network; the
    dashed line is the `reference` arm's mean."""
    levels = sorted(chosen["label_noise"].unique()) if len(chosen) else [None]
    arms_in = list(dict.fromkeys(chosen["arm"])) if len(chosen) else []
    fig = Figure(figsize=(4.4 * len(levels) + 1.8, 0.32 * len(arms_in) + 1.6), layout="constrained")
    axes = fig.subplots(1, len(levels), squeeze=False, sharey=True)[0]
    for ax, noise in zip(axes, levels):
        if noise is None:
            _empty(ax)
            continue
        part = chosen[np.isclose(chosen["label_noise"], noise)]
        for y, arm in enumerate(arms_in[::-1]):
            acc = 100 * part.loc[part["arm"] == arm, metric]
            color, marker = arm_style(arm)
            if len(acc):
                ax.plot([acc.mean()] * 2, [y - 0.3, y + 0.3], color=color, lw=2.5)
                ax.plot(acc, [y] * len(acc), marker, color=color, alpha=0.8, ls="none")
        if reference is not None and (part["arm"] == reference).any():
            ax.axvline(100 * part.loc[part["arm"] == reference, metric].mean(), color="black", lw=1, ls="--",
                       label=f"{reference} (mean)")
            ax.legend(loc="lower left", frameon=False, fontsize="small")
        ax.set_yticks(range(len(arms_in)), arms_in[::-1])
        ax.set(xlabel="test accuracy (%)", title=f"label noise {noise:g}")
    return fig


def effective_lr_curves(hist: pd.DataFrame) -> Figure:
    """‖ΔW‖/‖W‖ per step of each layer over epochs (log scale), one row per network, one curve per
    penalty (mean over seeds, min–max band), for the runs that recorded it (`effective_lr: true`)."""
    columns = EFF_LR.columns(hist.columns)
    recorded = hist.dropna(subset=columns, how="all") if columns else hist.iloc[:0]
    if recorded.empty:
        fig = Figure(figsize=(6, 2), layout="constrained")
        _empty(fig.subplots(), "no run recorded its effective learning rate (effective_lr: false)")
        return fig
    return training_dynamics(recorded, metrics=columns, row="network", log=columns)


def arm_differences(versus: pd.DataFrame, rules: dict[str, str]) -> Figure:
    """`mulreg.results.arms.against` drawn: one panel per epoch rule, one row per arm: the reference's mean
    lead over the arm (points) with its 95 % interval, green where the reference is ahead, red where
    the arm is, grey where it is not resolved; a dotted line at 0."""
    tested = versus[versus["n"] > 0]
    panels = [r for r in rules if r in set(tested["rule"])]
    rows = list(dict.fromkeys(zip(tested["arm"], tested["noise"])))
    fig = Figure(figsize=(3.6 * max(1, len(panels)) + 2.2, 0.32 * len(rows) + 1.8), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False, sharey=True)[0]
    if not panels:
        _empty(axes[0], "no arm could be compared (no pairs of runs)")
    y = {row: i for i, row in enumerate(rows[::-1])}
    for ax, rule in zip(axes, panels):
        for r in tested[tested["rule"] == rule].itertuples():
            color = OUTCOME_COLORS.get(r.outcome, "#7F7F7F")
            lo, hi = (100 * r.low, 100 * r.high) if pd.notna(r.low) else (100 * r.mean, 100 * r.mean)
            yi = y[(r.arm, r.noise)]
            ax.plot([lo, hi], [yi, yi], color=color, lw=2.5)
            ax.plot(100 * r.mean, yi, "o", color=color)
        ax.axvline(0, color="black", lw=0.8, ls=":")
        ax.set(xlabel="lead in test accuracy (points)", title=rules[rule])
    levels = {noise for _, noise in rows}
    labels = [arm if len(levels) == 1 else f"{arm} (noise {noise})" for arm, noise in rows[::-1]]
    axes[0].set_yticks(range(len(rows)), labels)
    return fig


# ---- margin distributions
def margin_violins(m: pd.DataFrame, ylabel: str = "test margin y·f(x)/std(f)") -> Figure:
    """Test-margin distributions per label noise and penalty (`mulreg.results.analysis.margins`); all seeds of
    the chosen λ pooled. Points below 0 are misclassified."""
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.subplots()
    if m.empty:
        _empty(ax)
        return fig
    d = m.assign(penalty=m["penalty"].map(penalty_label))
    order = [penalty_label(p) for p in penalties_in(m)]
    sns.violinplot(data=d, x="label_noise", y="margin", hue="penalty", hue_order=order, ax=ax, cut=0,
                   inner="quartile", density_norm="width",
                   palette={penalty_label(p): penalty_color(p) for p in penalties_in(m)})
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="label noise", ylabel=ylabel,
           title="Distribution of test margins, best λ per group")
    return fig


def margin_ecdf(m: pd.DataFrame, correct_only: bool = False, xlabel: str = "test margin y·f(x)/std(f)") -> Figure:
    """Empirical CDF of test margins, one panel per label noise, one curve per penalty."""
    noises = sorted(m["label_noise"].unique()) if len(m) else [0.0]
    fig = Figure(figsize=(4.2 * len(noises), 3.8), layout="constrained")
    axes = fig.subplots(1, len(noises), sharey=True, squeeze=False)[0]
    for ax, noise in zip(axes, noises):
        d = m[np.isclose(m["label_noise"], noise)] if len(m) else m
        if correct_only and len(d):
            d = d[d["correct"]]
        if d.empty:
            _empty(ax)
        for pen in penalties_in(d):
            sns.ecdfplot(d[d["penalty"] == pen]["margin"], ax=ax, color=penalty_color(pen), label=penalty_label(pen))
        ax.axvline(0, color="k", lw=0.8)
        ax.set(title=f"label noise {noise:g}", xlabel=xlabel + (" (correct only)" if correct_only else ""))
    axes[0].set_ylabel("fraction of test images")
    axes[0].legend(frameon=False)
    return fig


# ---- Fig. 2: training dynamics
def training_dynamics(hist: pd.DataFrame, metrics: Sequence[str] = ("test_acc", "norm_product", "norm_sq_sum"),
                      row: str | None = "label_noise", log: Iterable[str] = LOG_SCALE,
                      title: str | None = None) -> Figure:
    """A grid of panels (rows: values of `row`; columns: `metrics`) of per-epoch curves, one per
    penalty: the mean over seeds as a line, min–max over seeds as a band; log scale for norms."""
    rows = sorted(hist[row].unique()) if row and len(hist) else [None]
    log = set(log)
    fig = Figure(figsize=(4.4 * len(metrics), 3.2 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(metrics), squeeze=False, sharex=True)
    for i, rv in enumerate(rows):
        part = hist if rv is None else hist[hist[row] == rv] if isinstance(rv, str) else hist[np.isclose(hist[row], rv)]
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            if part.empty or metric not in part:
                _empty(ax)
                continue
            stats = band_stats(part, metric)
            for pen in penalties_in(stats):
                _band(ax, stats[stats["penalty"] == pen], "epoch", penalty_color(pen), penalty_label(pen))
            if metric in log:
                log_axis(ax)
            where = "" if rv is None else f"  ({rv})" if isinstance(rv, str) else f"  (label noise {rv:g})"
            ax.set_title(metric_label(metric) + where)
            if i == len(rows) - 1:
                ax.set_xlabel("epoch")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def layer_norm_trajectories(hist: pd.DataFrame, layers: Sequence[str] | None = None, log: bool = True) -> Figure:
    """‖W_i‖_F per epoch, one panel per layer, mean line and min–max band over seeds per penalty."""
    layers = list(layers or NORM.layers(hist.columns))
    cols = min(len(layers), 3) or 1
    nrows = max(1, math.ceil(len(layers) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True).ravel()
    for ax, layer in zip(axes, layers):
        stats = band_stats(hist, NORM.column(layer)) if len(hist) else pd.DataFrame()
        if stats.empty:
            _empty(ax)
        for pen in penalties_in(stats):
            _band(ax, stats[stats["penalty"] == pen], "epoch", penalty_color(pen), penalty_label(pen))
        if log and not stats.empty:
            log_axis(ax)
        ax.set(title=f"‖W‖_F of {layer}", xlabel="epoch")
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    return fig


# ---- Table 1: spectra and norms vs loss
def singular_value_spectra(spec: pd.DataFrame, threshold: float = 0.01) -> Figure:
    """Normalised singular values σ_k/σ_1 per layer (log scale), one curve per penalty (and seed),
    with the effective-rank threshold drawn: the rank is the number of points above the line."""
    layers = list(dict.fromkeys(spec["layer"])) if len(spec) else []
    cols = min(len(layers), 3) or 1
    nrows = max(1, math.ceil(len(layers) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.1 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    if not layers:
        _empty(axes[0])
    for ax, layer in zip(axes, layers):
        d = spec[spec["layer"] == layer]
        for pen in penalties_in(d):
            for k, (_, s) in enumerate(d[d["penalty"] == pen].groupby("seed")):
                rank = int((s["sv_rel"] > threshold).sum())
                ax.plot(s["index"], s["sv_rel"].clip(lower=1e-12), marker="." if len(s) < 40 else None,
                        color=penalty_color(pen), lw=1.3, alpha=1 if k == 0 else 0.5,
                        label=f"{penalty_label(pen)} (rank {rank})" if k == 0 else None)
        ax.axhline(threshold, color="k", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set(title=layer, xlabel="index k", ylabel="σ_k / σ_1")
        ax.legend(frameon=False, fontsize="small")
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.suptitle(f"Normalised singular values; dotted line: threshold {threshold:g} of the effective rank")
    return fig


def norm_vs_loss(runs: pd.DataFrame, loss: str = "test_loss") -> Figure:
    """Final `loss` of every run against Π‖W_i‖_F and against Σ‖W_i‖_F² (log x), colour by
    penalty, marker by label noise: which norm tracks the loss?"""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    if runs.empty:
        _empty(axes[0])
        return fig
    d = runs.assign(penalty=runs["penalty"].map(penalty_label))
    palette = {penalty_label(p): penalty_color(p) for p in penalties_in(runs)}
    for ax, x in zip(axes, ("norm_product", "norm_sq_sum")):
        sns.scatterplot(data=d, x=x, y=loss, hue="penalty", style="label_noise", palette=palette, ax=ax,
                        legend=ax is axes[1])
        log_axis(ax, "x")
        ax.set(xlabel=metric_label(x), ylabel=metric_label(loss))
    if axes[1].get_legend():
        sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1, 1), frameon=False)
    return fig


def style_rank_table(table: pd.DataFrame):
    """`mulreg.results.stats.rank_table` as a styled table: ranks as integers, norms with 3 significant
    digits, Π in scientific notation, ranks below full size highlighted."""
    def fmt(v):
        return "" if pd.isna(v) else f"{v:.3g}"

    styler = table.style.format(fmt)
    rank_cols = [c for c in table.columns if c[0] == "rank"]
    if rank_cols:
        full = table[rank_cols].max(axis=1)
        styler = styler.apply(lambda col: ["background-color: #fde0c5" if pd.notna(v) and v < full[i] else ""
                                           for i, v in col.items()], subset=rank_cols)
        styler = styler.format(lambda v: "" if pd.isna(v) else f"{v:.0f}", subset=rank_cols)
    return styler


# ---- multiclass
def learning_curves(hist: pd.DataFrame, metrics: Sequence[str] = ("train_acc", "test_acc", "test_loss"),
                    title: str | None = "Learning curves, best λ per penalty") -> Figure:
    """Per-epoch curves of the multiclass runs (one row), mean line and min–max band over seeds."""
    return training_dynamics(hist, metrics, row=None, title=title)


