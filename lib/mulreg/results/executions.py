"""One registration executed more than once, compared number by number.

An execution whose runs were lost survives only as the numbers its registration's dated note
recorded before the next execution was read (`executions.csv`: replication 2's first execution).
`this_execution` computes the same quantities from the stored runs of the execution at hand, and
`compare` sets the two side by side: the λ chosen, Fig. 1's counts and gaps, each family-B
decision, the λ windows. Outcomes are compared as decisions (holds, reversed, not decided), since
the labels of an undecided claim have grown finer since the first execution was recorded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mulreg.core.epochs import HEADLINE
from mulreg.results.replication import MUL, ONE_OBSERVATION, SUM, window_widths

TABLE = Path(__file__).with_name("executions.csv")
POINTS = 100  # accuracies are fractions; the notes give points
NOISE = "0.2"  # the noise level of the gap the notes recorded under every rule
GAP_RULES = {HEADLINE: "primary rule", "test_acc_authors": "authors' rule", "test_acc_last": "last epoch"}
PENALTY_WORDS = {MUL: "multiplicative", SUM: "additive"}


def recorded(registration: int, execution: str) -> pd.DataFrame:
    """The quantities an earlier execution's note recorded: quantity, value, low, high, source."""
    table = pd.read_csv(TABLE, dtype={"value": str})
    mine = table[(table["registration"] == registration) & (table["execution"] == execution)]
    if mine.empty:
        raise ValueError(f"{TABLE}: no execution {execution!r} of registration {registration}")
    return mine.drop(columns=["registration", "execution"]).reset_index(drop=True)


def this_execution(plan: dict, verdict: pd.DataFrame | None, family_b: pd.DataFrame | None,
                   win: pd.DataFrame) -> dict:
    """The recorded quantities computed from this execution: its confirmation `plan` (the λ chosen),
    Fig. 1's `claims.claims` table, family B (`replication.family_b`) and the λ window
    (`replication.window`). Values: λ and counts as numbers, gaps as (mean, low, high) in points,
    family B as outcomes. With `verdict` and `family_b` None (a selection stage alone), what the
    selection decides: the λ chosen and the windows."""
    out = {f"λ {PENALTY_WORDS[pen]}": one_lambda(plan["lam"][pen]) for pen in (MUL, SUM)}
    if verdict is not None:
        out |= _fig1_quantities(verdict)
    if family_b is not None:
        out |= _family_b_outcomes(family_b)
    return out | _window_quantities(win)


def _family_b_outcomes(family_b: pd.DataFrame) -> dict:
    """Each hypothesis's outcome; one said once as B5's observation carries B5's decision, its label kept."""
    outcomes = dict(zip(family_b["id"], family_b["outcome"]))
    return {hid: f"{outcomes['B5']}: {o}" if o.startswith(ONE_OBSERVATION) else o for hid, o in outcomes.items()}


def _fig1_quantities(verdict: pd.DataFrame) -> dict:
    """Fig. 1's counts under the primary rule, and mul − add at noise 0.2 under each rule read."""
    out = {}
    primary = verdict[verdict["rule"] == HEADLINE]
    out["Fig. 1, primary rule: claims held"] = int((primary["outcome"] == "holds").sum())
    out["Fig. 1, primary rule: claims reversed"] = int((primary["outcome"] == "reversed").sum())
    for rule, words in GAP_RULES.items():
        row = verdict[(verdict["rule"] == rule) & (verdict["claim"] == "multiplicative beats additive")
                      & (verdict["noise"] == NOISE)]
        if len(row):  # a rule this execution did not read stays "not computed"
            gap = tuple(POINTS * float(row.iloc[0][c]) for c in ("mean", "low", "high"))
            out[f"mul − add at noise {NOISE}, {words} (points)"] = gap
    return out


def _window_quantities(win: pd.DataFrame) -> dict:
    """The multiplicative λ window of each seed, and the additive ones summed, in grid points."""
    widths = window_widths(win).set_index(["penalty", "seed"])["points"]
    seeds = sorted(win["seed"].unique())
    out = {f"λ window, multiplicative, seed {seed} (grid points)": int(widths[(MUL, seed)]) for seed in seeds}
    out[f"λ window, additive, seeds {seeds[0]}-{seeds[-1]} (grid points)"] = int(widths[SUM].sum())
    return out


def compare(earlier: pd.DataFrame, now: dict, names: tuple[str, str] = ("first", "this")) -> pd.DataFrame:
    """Each quantity `earlier` recorded beside `now`'s (`this_execution`), with `agree`: the same λ,
    count or decision, or for a gap whether each execution's mean lies in the other's interval (where
    only one has an interval, whether the other's mean lies in it); absent from `now`: not computed."""
    rows = []
    for r in earlier.itertuples():
        mine = now.get(r.quantity)
        rows.append({"quantity": r.quantity, names[0]: _shown(r.value, r.low, r.high), names[1]: _shown_now(mine),
                     "agree": _agree(r, mine)})
    return pd.DataFrame(rows)


def decision(outcome: str) -> str:
    """An outcome as the decision it states: holds (the direction, whatever the magnitude), reversed, or
    not decided (not resolved, or cannot be decided at its n)."""
    if outcome.startswith(("holds", "direction holds")):
        return "holds"
    return "reversed" if outcome.startswith("reversed") else "not decided"


def one_lambda(by_noise: dict) -> float:
    """A plan's λ of one penalty (noise level → λ), NaN where it differs between noise levels."""
    values = sorted(set(by_noise.values()))
    return values[0] if len(values) == 1 else math.nan  # one λ per penalty for every noise level, as registered


def _agree(r, mine) -> str:
    if mine is None:
        return "not computed"
    if isinstance(mine, tuple):
        return "yes" if _within(float(r.value), mine) or _within(mine[0], (float(r.value), r.low, r.high)) else "no"
    if isinstance(mine, str):
        return "yes" if decision(mine) == decision(r.value) else "no"
    return "yes" if np.isclose(float(r.value), float(mine), rtol=1e-9, atol=0) else "no"


def _within(value: float, gap: tuple) -> bool:
    _, low, high = gap
    return not (pd.isna(low) or pd.isna(high)) and low <= value <= high


def _shown(value: str, low: float, high: float) -> str:
    if pd.isna(low):
        return value
    return f"{float(value):+.1f} [{low:+.1f}, {high:+.1f}]"


def _shown_now(mine) -> str:
    if mine is None:
        return "—"
    if isinstance(mine, tuple):
        return f"{mine[0]:+.1f} [{mine[1]:+.1f}, {mine[2]:+.1f}]"
    return mine if isinstance(mine, str) else f"{mine:g}"
