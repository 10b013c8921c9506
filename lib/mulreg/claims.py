"""Fig. 1's claims tested run against run: differences paired by seed, with t intervals.

For each epoch rule (`mulreg.epochs.RULES`) the paper's selection rule picks each group's λ
(penalty × label noise) on that rule's test accuracy; the chosen runs of two penalties are then
paired by seed (same init, data order and flipped labels) and their differences summarised as a
mean with a two-sided t confidence interval. Three claims (paper, Fig. 1):

- mul beats add, and mul beats none, at each noise level: d_s = acc(mul, s) − acc(other, s);
- the gap grows with noise: d_s(highest noise) − d_s(lowest noise), per seed.

A claim *holds* when the interval lies above 0, is *reversed* when it lies below 0, and is *not
resolved* otherwise (or with fewer than two pairs).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .epochs import RULES
from .paper import PENALTY_NAMES
from .protocols import EXCLUDED, Penalty
from .sweep import chosen, select_best

LEVEL = 0.95
COMPARED = ((Penalty.MUL, Penalty.SUM), (Penalty.MUL, Penalty.NONE))  # (penalty, the one it is claimed to beat)


def interval(diffs: Sequence[float], level: float = LEVEL) -> dict:
    """Mean of paired differences with its two-sided t interval: n, mean, sd, low, high."""
    d = np.asarray([x for x in diffs if not math.isnan(x)], dtype=float)
    n = len(d)
    mean = d.mean() if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan}
    sd = d.std(ddof=1)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def outcome(ci: dict) -> str:
    """holds / reversed / not resolved at n seeds, from an `interval`."""
    if ci["n"] < 2 or math.isnan(ci["low"]):
        return f"not resolved ({ci['n']} pair{'s' * (ci['n'] != 1)})"
    if ci["low"] > 0:
        return "holds"
    if ci["high"] < 0:
        return "reversed"
    return f"not resolved at {ci['n']} seeds"


def per_seed(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`metric` of each group's chosen λ (selected on `metric`), one column per penalty, indexed by
    (label_noise, seed); excluded runs are missing."""
    picked = chosen(runs, select_best(runs, metric=metric), metric=metric)
    return picked.pivot_table(index=["label_noise", "seed"], columns="penalty", values=metric)


def learned_on_every_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the λ values none of whose runs was excluded (at chance level or diverged): the
    paper discards such runs one by one, which lets a λ that keeps some seeds at chance be judged on
    the seeds that learned; this keeps only settings that learned every time."""
    settings = runs.assign(_bad=runs["stop_reason"].isin(EXCLUDED)).groupby(["penalty", "label_noise", "lam"])
    bad = settings["_bad"].transform("any")
    return runs[~bad.to_numpy()]


def claims(runs: pd.DataFrame, metrics: Sequence[str] | None = None, level: float = LEVEL) -> pd.DataFrame:
    """One row per (claim, rule): claim, noise, rule, n, mean, sd, low, high, outcome (accuracy
    differences as fractions). `metrics`: the rule columns of `runs` to use (default: every rule
    of `mulreg.epochs.RULES` present)."""
    metrics = [m for m in (metrics or RULES) if m in runs]
    rows = []
    for metric in metrics:
        wide = per_seed(runs, metric)
        levels = sorted(wide.index.get_level_values("label_noise").unique())
        for a, b in COMPARED:
            if not {a, b} <= set(wide.columns):
                continue
            gap = (wide[a] - wide[b]).rename("d")
            for noise in levels:
                ci = interval(gap.xs(noise, level="label_noise").tolist(), level)
                rows.append({"claim": f"{PENALTY_NAMES[a]} beats {PENALTY_NAMES[b]}", "noise": f"{noise:g}",
                             "rule": metric, **ci, "outcome": outcome(ci)})
            growth = {"claim": f"gap to {PENALTY_NAMES[b]} grows with noise", "rule": metric}
            if len(levels) > 1:
                lo, hi = gap.xs(levels[0], level="label_noise"), gap.xs(levels[-1], level="label_noise")
                ci = interval((hi - lo).dropna().tolist(), level)
                rows.append(growth | {"noise": f"{levels[-1]:g} vs {levels[0]:g}", **ci, "outcome": outcome(ci)})
            else:
                rows.append(growth | {"noise": "—", **interval([]), "outcome": "not tested (one noise level)"})
    return pd.DataFrame(rows)


def cell(r) -> str:
    """One tested difference for reading: 'mean [low, high]: outcome' in points."""
    if r["n"] == 0:
        return r["outcome"] if r["outcome"].startswith("not tested") else "no pairs"
    span = "" if math.isnan(r["low"]) else f" [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
    return f"{100 * r['mean']:+.1f}{span}: {r['outcome']}"


def claims_wide(table: pd.DataFrame, paper: dict[tuple[str, str], float] | None = None) -> pd.DataFrame:
    """`claims` as one row per claim and one column per rule: 'mean [low, high] pp: outcome', and
    the paper's difference beside it when given as {(claim, noise): difference in points}."""
    wide = table.assign(cell=table.apply(cell, axis=1)).pivot(index=["claim", "noise"], columns="rule", values="cell")
    wide = wide[[m for m in RULES if m in wide.columns]].rename(columns=RULES)
    if paper:
        wide.insert(0, "paper (pp)", [f"{paper[k]:+.1f}" if k in paper else "—" for k in wide.index])
    order = {c: i for i, c in enumerate(dict.fromkeys(table["claim"]))}
    wide = wide.reset_index().sort_values(["claim", "noise"], key=lambda s: s.map(order) if s.name == "claim" else s)
    wide.columns.name = None
    return wide.reset_index(drop=True)


def paper_gaps(published: pd.DataFrame) -> dict[tuple[str, str], float]:
    """The paper's own differences for each claim, in points, keyed like `claims_wide`'s rows, from
    `mulreg.paper.published("fig1")`."""
    acc = published[published["quantity"] == "test_acc"].pivot(index="label_noise", columns="penalty", values="value")
    out = {}
    for a, b in COMPARED:
        gap = 100 * (acc[a] - acc[b])
        out |= {(f"{PENALTY_NAMES[a]} beats {PENALTY_NAMES[b]}", f"{noise:g}"): g for noise, g in gap.items()}
        grows = (f"gap to {PENALTY_NAMES[b]} grows with noise", f"{gap.index[-1]:g} vs {gap.index[0]:g}")
        out[grows] = gap.iloc[-1] - gap.iloc[0]
    return out
