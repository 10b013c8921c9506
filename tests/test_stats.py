"""The statistics behind every "paper vs reproduced" number, on hand-made tables whose answers can be
worked out by hand: `paper.compare` and the paired differences over epochs (the selection rule:
tests/test_selection.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mulreg.results import paper, stats


def test_compare_matches_published_numbers_and_computes_differences():
    reproduced = pd.DataFrame({"quantity": "test_acc", "penalty": ["mul", "sum"], "label_noise": [0.2, 0.2],
                               "value": [0.85, 0.70], "std": [0.01, 0.02], "n": [2, 2]})
    table = paper.compare(reproduced, "fig1").set_index(["penalty", "label_noise"])
    assert len(table) == len(paper.FIG1_TEST_ACC) + len(paper.FIG1_MARGIN)  # one row per published number
    mul = table.loc[("mul", 0.2)]
    mul = mul[mul["quantity"] == "test_acc"].iloc[0]
    assert mul["paper"] == 0.8310 and mul["reproduced"] == 0.85
    assert mul["difference"] == pytest.approx(0.85 - 0.8310) and mul["ratio"] == pytest.approx(0.85 / 0.8310)
    unmatched = table.loc[("none", 0.0)]
    assert unmatched["reproduced"].isna().all()  # the paper's numbers we did not reproduce stay, empty


def test_compare_can_rename_a_quantity_onto_the_papers():
    reproduced = pd.DataFrame({"quantity": ["margin_std_mean", "margin_mean"], "penalty": "mul",
                               "label_noise": 0.0, "value": [0.9, 123.0]})
    table = paper.compare(reproduced, "fig1", quantities=["margin_mean"], rename={"margin_std_mean": "margin_mean"})
    row = table[(table["penalty"] == "mul") & (table["label_noise"] == 0.0)].iloc[0]
    assert row["reproduced"] == 0.9 and row["paper"] == paper.FIG1_MARGIN[("mul", 0.0)]
    assert set(table["quantity"]) == {"margin_mean"}


def test_unknown_penalty_kinds_fail_loudly():
    from mulreg.report.style import penalty_color

    with pytest.raises(ValueError, match="'l3'"):
        penalty_color("l3")
    with pytest.raises(ValueError):
        paper.format_comparison(pd.DataFrame({"penalty": ["l3"], "quantity": ["test_acc"], "paper": [0.5]}))


def test_paired_differences_over_epochs_pair_by_seed_with_a_t_band():
    rows = [{"penalty": pen, "label_noise": 0.2, "seed": seed, "epoch": epoch,
             "test_acc": 0.7 + (0.01 * seed * epoch if pen == "mul" else 0)}
            for pen in ("mul", "none") for seed in (3, 4, 5) for epoch in (1, 2)]
    gap = stats.paired_over_epochs(pd.DataFrame(rows), "mul", "none").set_index("epoch")
    assert gap.loc[2, "n"] == 3 and gap.loc[2, "mean"] == pytest.approx(0.08)
    half = 4.302653 * np.std([0.06, 0.08, 0.10], ddof=1) / np.sqrt(3)
    assert gap.loc[2, "low"] == pytest.approx(0.08 - half, rel=1e-5)
