"""The selection rule, in one place: which setting (λ, or a dropout rate) of each group is reported.

For each group (penalty × label noise, or an arm of notebook 06 × label noise), average each
setting's runs over the seeds and keep the setting with the best mean (docs/PAPER.md, "Selection
rule"). What the mean is taken of depends on the epoch rule (`mulreg.core.epochs.RULES`) being reported:

- a rule whose epoch is chosen without the test set (best validation-loss epoch, last epoch, mean
  of the last epochs) **selects on validation accuracy read at its own epochs** (`SELECTED_ON`),
  and takes a setting only if every one of its runs learned (none diverged or stayed at chance
  level): nothing about the choice reads the test set (docs/PREREGISTRATION.md);
- a rule that reads the test set anyway (the paper's literal rule, the best test epoch) selects
  **as the paper selects**: on its own test accuracy, discarding failed runs one by one. Its
  numbers are optimistic, and every table says so (`AS_THE_PAPER`).

Ties go to the smaller setting (the weaker penalty). Every table names the column it selected on
and the one it reports.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mulreg.core.epochs import HEADLINE, RULES, val_twin
from mulreg.protocols import EXCLUDED

GROUP = ("penalty", "label_noise")
TEST_READING = ("test_acc_paper", "test_acc_best_test")  # rules whose epoch is chosen by the test set
SELECTED_ON = {rule: (rule if rule in TEST_READING else val_twin(rule)) for rule in RULES}
AS_THE_PAPER = "as the paper selects: λ on test accuracy, failed runs discarded one by one (optimistic)"


def reads_test(rule: str) -> bool:
    """Whether `rule`'s selection reads the test set."""
    return SELECTED_ON[rule] == rule


def failed(runs: pd.DataFrame, column: str) -> pd.Series:
    """Runs that cannot stand behind a mean: diverged, never left chance level, or without `column`."""
    return runs["stop_reason"].isin(EXCLUDED) | runs[column].isna()


def select(runs: pd.DataFrame, rule: str = HEADLINE, by: Sequence[str] = GROUP,
           setting: str = "lam") -> pd.DataFrame:
    """One row per group in `by`: the chosen `setting`, `selected_on` (the column the choice read)
    and its mean `selection_mean`, `reported` (= `rule`) with the chosen setting's `mean`, `std`
    and `n_used` runs, the group's `n_runs` and `n_excluded` (failed runs), and `grid_end`. A group
    with no eligible setting has NaN in its setting and mean."""
    by = list(by)
    on = SELECTED_ON[rule]
    if on not in runs:
        raise KeyError(f"select: the runs table has no column {on!r} to select {rule!r} on "
                       "(read the histories first: mulreg.results.stats.with_rules)")
    # eligibility reads what the choice reads: the validation twin (never a test column) or, as the paper, the test
    runs = runs.assign(_failed=failed(runs, on) | (failed(runs, rule) if reads_test(rule) else False))
    if reads_test(rule):  # as the paper: failed runs discarded one by one
        usable = runs[~runs["_failed"]]
    else:  # a setting counts only if every run of it learned
        any_failed = runs.groupby(by + [setting])["_failed"].transform("any")
        usable = runs[~any_failed.to_numpy()]
    per_setting = (usable.groupby(by + [setting])
                   .agg(selection_mean=(on, "mean"), mean=(rule, "mean"), std=(rule, "std"), n_used=(rule, "size"))
                   .reset_index())
    best = (per_setting.sort_values([*by, "selection_mean", setting], ascending=[True] * len(by) + [False, True])
            .groupby(by).head(1))
    counts = runs.groupby(by).agg(n_runs=("_failed", "size"), n_excluded=("_failed", "sum")).reset_index()
    out = counts.merge(best, on=by, how="left").assign(selected_on=on, reported=rule)
    return grid_end(out, runs, by, setting).sort_values(by).reset_index(drop=True)


def grid_end(best: pd.DataFrame, runs: pd.DataFrame, by: Sequence[str] = GROUP, setting: str = "lam") -> pd.DataFrame:
    """`best` with `grid_end`: 'strongest' or 'weakest' where the chosen setting is the largest or
    smallest of its group's grid (a better one may lie beyond it), empty inside, for a one-value
    grid or without a choice."""
    by = list(by)
    grid = runs.groupby(by)[setting].agg(["min", "max", "nunique"]).reset_index()
    merged = best.merge(grid, on=by, how="left")
    end = np.where(merged[setting] == merged["max"], "strongest",
                   np.where(merged[setting] == merged["min"], "weakest", ""))
    return best.assign(grid_end=np.where(merged["nunique"].to_numpy() > 1, end, ""))


def chooses(runs: pd.DataFrame, by: Sequence[str] = GROUP, setting: str = "lam") -> bool:
    """Whether `runs` leave a choice to make: some group holds more than one `setting` (a sweep whose
    every arm has one λ, fixed beforehand, selects nothing)."""
    return bool(len(runs)) and bool((runs.groupby(list(by))[setting].nunique(dropna=False) > 1).any())


def chosen_runs(runs: pd.DataFrame, best: pd.DataFrame, by: Sequence[str] = GROUP,
                setting: str = "lam") -> pd.DataFrame:
    """The runs behind `select`'s numbers: the usable runs of each group's chosen setting."""
    rule = best["reported"].iloc[0] if len(best) else HEADLINE
    keep = runs[~(failed(runs, SELECTED_ON[rule]) | failed(runs, rule))]
    return keep.merge(best.dropna(subset=[setting])[[*by, setting]], on=[*by, setting])
