"""Issue 38: the first execution of replication 2 (lost, recorded in its dated note) beside a later one,
computed; hand-made tables stand in for the later execution's analyses."""

from __future__ import annotations

import pandas as pd

from mulreg.results import executions
from mulreg.results.claims import MAGNITUDE_EXCLUDED
from mulreg.results.replication import ONE_OBSERVATION


def later_plan_and_window() -> tuple[dict, pd.DataFrame]:
    """A selection that chose the λ the first execution chose; multiplicative windows 8, 6, 8 grid points."""
    plan = {"lam": {"mul": {"0": 1e-6, "0.2": 1e-6}, "sum": {"0": 2e-5, "0.2": 2e-5}}}
    win = pd.DataFrame([{"penalty": pen, "seed": seed, "position": pos, "in_window": pen == "mul" and pos < inside}
                        for seed, inside in ((11, 8), (12, 6), (13, 8)) for pen in ("mul", "sum") for pos in range(9)])
    return plan, win


def later_execution() -> dict:
    """An execution that chose the same λ, held one Fig. 1 claim, found mul − add at noise 0.2 of +1.5
    [+0.4, +2.6] points (primary) and +7.0 [+6.0, +8.0] (authors' rule), decided B8 (n 8) and lost B14."""
    plan, win = later_plan_and_window()
    verdict = pd.DataFrame([
        {"rule": "test_acc_best_val", "claim": "multiplicative beats additive", "noise": "0.2", "mean": 0.015,
         "low": 0.004, "high": 0.026, "outcome": "holds"},
        {"rule": "test_acc_best_val", "claim": "multiplicative beats none", "noise": "0", "mean": 0.0, "low": -0.01,
         "high": 0.01, "outcome": "not resolved"},
        {"rule": "test_acc_authors", "claim": "multiplicative beats additive", "noise": "0.2", "mean": 0.07,
         "low": 0.06, "high": 0.08, "outcome": "holds"}])
    family = pd.DataFrame({"id": ["B1", "B5", "B6", "B8", "B14"],
                           "outcome": [MAGNITUDE_EXCLUDED, "holds", f"{ONE_OBSERVATION} (counted there once)", "holds",
                                       "not resolved"]})
    return executions.this_execution(plan, verdict, family, win)


def test_each_recorded_quantity_is_set_beside_this_execution_and_judged():
    table = executions.compare(executions.recorded(2, "first"), later_execution()).set_index("quantity")
    assert table.loc["λ multiplicative", "agree"] == "yes" and table.loc["λ additive", "this"] == "2e-05"
    assert table.loc["Fig. 1, primary rule: claims held", ["first", "this", "agree"]].tolist() == ["0", "1", "no"]
    primary = table.loc["mul − add at noise 0.2, primary rule (points)"]
    assert (primary["first"], primary["this"], primary["agree"]) == ("+1.1 [+0.1, +2.0]", "+1.5 [+0.4, +2.6]", "yes")
    assert table.loc["mul − add at noise 0.2, authors' rule (points)", "agree"] == "no"  # 8.8 outside [6, 8]
    assert table.loc["mul − add at noise 0.2, last epoch (points)", "agree"] == "not computed"
    assert table.loc["B1", "agree"] == "yes"  # holds, now with the paper's magnitude excluded: the same decision
    assert table.loc["B8", ["first", "this", "agree"]].tolist() == ["not resolved", "holds", "no"]
    assert table.loc["B14", "agree"] == "no" and table.loc["B2", "this"] == "—"
    # B6 said once as B5's observation is B5's decision (on 305f14c it read "not decided" and disagreed)
    assert table.loc["B6", "agree"] == "yes" and table.loc["B6", "this"].startswith(f"holds: {ONE_OBSERVATION}")
    assert table.loc["λ window, multiplicative, seed 12 (grid points)", ["first", "this"]].tolist() == ["7", "6"]
    assert table.loc["λ window, additive, seeds 11-13 (grid points)", "agree"] == "yes"


def test_an_execution_not_recorded_is_named():
    import pytest

    with pytest.raises(ValueError, match="no execution 'second' of registration 2"):
        executions.recorded(2, "second")


def test_a_selection_stage_alone_is_compared_on_what_it_decides():
    """The λ chosen and the windows; every confirmation quantity "not computed" (on efe13ca this needed
    the confirmation stage's tables)."""
    plan, win = later_plan_and_window()
    table = executions.compare(executions.recorded(2, "first"), executions.this_execution(plan, None, None, win))
    decided = table["quantity"].str.startswith("λ")
    assert (table.loc[decided, "agree"] != "not computed").all() and decided.sum() == 6
    assert (table.loc[~decided, "agree"] == "not computed").all()
    assert table.set_index("quantity").loc["λ multiplicative", "agree"] == "yes"
