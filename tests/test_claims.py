"""Epoch rules, memorisation and the paired verdict of Fig. 1's claims, on hand-made data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from mulreg.core.epochs import escape_epoch, paper_rule, rule_metrics
from mulreg.core.metrics import label_fit
from mulreg.results import claims


# ---- memorisation: fit of flipped and clean training labels
def test_label_fit_of_a_model_that_predicts_the_noisy_labels_is_one_on_both():
    noisy = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    flipped = torch.tensor([0, 1, 0, 0, 1, 0])
    out = noisy * 0.7  # sign(out) = the training (noisy) label everywhere
    assert label_fit(out, noisy, flipped) == (1.0, 1.0)


def test_label_fit_of_a_model_that_predicts_the_clean_labels_is_zero_on_flipped():
    clean = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, -1.0])
    flipped = torch.tensor([0, 1, 0, 0, 1, 0])
    noisy = torch.where(flipped.bool(), -clean, clean)
    assert label_fit(clean * 2.0, noisy, flipped) == (0.0, 1.0)


def test_label_fit_counts_each_subset_separately():
    noisy = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    flipped = torch.tensor([1, 1, 0, 0, 0, 0])
    out = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, -1.0])  # flipped: 1 of 2; clean: 3 of 4
    assert label_fit(out, noisy, flipped) == (0.5, 0.75)


def test_label_fit_without_flipped_labels_is_nan_on_that_subset():
    y = torch.tensor([1.0, -1.0])
    fit_flipped, fit_clean = label_fit(y, y, torch.zeros(2))
    assert math.isnan(fit_flipped) and fit_clean == 1.0


# ---- epoch rules on a synthetic history
def history(train_acc, test_acc, val_loss=None) -> pd.DataFrame:
    n = len(train_acc)
    h = pd.DataFrame({"epoch": np.arange(1, n + 1), "train_acc": train_acc, "test_acc": test_acc})
    if val_loss is not None:
        h["val_loss"] = val_loss
    return h


def test_escape_epoch_is_the_first_epoch_above_chance_plus_margin():
    h = history([0.5, 0.52, 0.55, 0.551, 0.7, 0.5], [0.5] * 6)
    assert escape_epoch(h, chance=0.5, margin=0.05) == 4  # 0.55 is not above 0.55
    assert escape_epoch(h, chance=0.5, margin=0.0) == 2


def test_escape_epoch_is_nan_for_a_run_that_never_left_chance():
    assert math.isnan(escape_epoch(history([0.5, 0.53, 0.49], [0.5] * 3), chance=0.5, margin=0.05))


def test_paper_rule_stops_patience_epochs_after_the_best_and_reports_the_model_there():
    acc = [0.5, 0.6, 0.8, 0.7, 0.75, 0.79, 0.6, 0.9]
    assert paper_rule(history([0.9] * 8, acc), patience=3) == (0.79, 6)  # best at 3, stop at 3 + 3
    assert paper_rule(history([0.9] * 8, acc), patience=5) == (0.9, 8)  # never stops: last epoch


def test_paper_rule_stops_inside_a_chance_plateau_when_patience_is_shorter():
    acc = [0.5] * 10 + [0.8] * 5
    assert paper_rule(history([0.5] * 15, acc), patience=4) == (0.5, 5)


def test_rule_metrics_read_the_history():
    h = history([0.5, 0.6, 0.9, 0.95], [0.5, 0.7, 0.8, 0.75], val_loss=[1.0, 0.5, 0.6, 0.7])
    m = rule_metrics(h, chance=0.5, margin=0.05)
    assert m == {"test_acc_last": 0.75, "test_acc_best_test": 0.8, "escape_epoch": 2.0, "test_acc_best_val": 0.7,
                 "test_acc_last10": pytest.approx(0.6875), "best_val_epoch": 2.0}


# ---- paired differences and the verdict
def test_interval_is_the_t_interval_of_the_differences():
    d = [0.03, 0.05, 0.04]
    ci = claims.interval(d)
    half = stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3)
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(0.04)
    assert (ci["low"], ci["high"]) == pytest.approx((0.04 - half, 0.04 + half))
    assert claims.interval([float("nan"), 0.02])["n"] == 1


def runs_table(acc: dict, noise=(0.2,)) -> pd.DataFrame:
    """Hand-made runs: acc[(penalty, λ, noise, seed)] = test accuracy under both rules."""
    rows = [{"key": f"{p}-{lam}-{n}-{s}", "penalty": p, "lam": lam, "label_noise": n, "seed": s,
             "stop_reason": "max_epochs", "test_acc_last": a, "test_acc_best_val": a, "val_acc_last": a,
             "val_acc_best_val": a, "test_acc_best_test": a}
            for (p, lam, n, s), a in acc.items()]
    return pd.DataFrame(rows)


def test_claims_pair_by_seed_after_selecting_each_groups_lambda():
    acc = {("mul", 1e-7, 0.2, 1): 0.80, ("mul", 1e-7, 0.2, 2): 0.78, ("mul", 1e-8, 0.2, 1): 0.70,
           ("mul", 1e-8, 0.2, 2): 0.70, ("sum", 1e-5, 0.2, 1): 0.74, ("sum", 1e-5, 0.2, 2): 0.73,
           ("none", 0.0, 0.2, 1): 0.75, ("none", 0.0, 0.2, 2): 0.74}
    t = claims.claims(runs_table(acc), rules=["test_acc_last"]).set_index("claim")
    row = t.loc["multiplicative beats additive"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.055)  # λ=1e-7 chosen: (0.06 + 0.05) / 2
    half = stats.t.ppf(0.975, 1) * np.std([0.06, 0.05], ddof=1) / math.sqrt(2)
    assert row["low"] == pytest.approx(0.055 - half)
    assert t.loc["gap to additive grows with noise", "outcome"] == "not tested (one noise level)"


def test_gap_growth_is_paired_by_seed_across_noise_levels():
    acc = {}
    for s, (clean_gap, noisy_gap) in enumerate([(0.01, 0.05), (0.00, 0.06), (0.02, 0.05)], 1):
        for n, gap in ((0.0, clean_gap), (0.2, noisy_gap)):
            acc[("mul", 1e-7, n, s)] = 0.8 + gap
            acc[("sum", 1e-5, n, s)] = 0.8
            acc[("none", 0.0, n, s)] = 0.8 - gap
    t = claims.claims(runs_table(acc), rules=["test_acc_last"]).set_index(["claim", "noise"])
    grow = t.loc[("gap to additive grows with noise", "0.2 vs 0")]
    assert grow["mean"] == pytest.approx(np.mean([0.04, 0.06, 0.03]))
    assert grow["p_t"] == pytest.approx(stats.ttest_1samp([0.04, 0.06, 0.03], 0).pvalue) and grow["p_t"] < 0.05
    assert grow["family"] == 6 and grow["p_holm"] > 0.05 and grow["outcome"] == "not resolved"  # Holm over six


def test_a_failed_run_removes_its_setting_from_selection_but_stays_in_a_confirmation():
    acc = {("mul", 1e-7, 0.2, 1): 0.80, ("mul", 1e-7, 0.2, 2): 0.78, ("sum", 1e-5, 0.2, 1): 0.74,
           ("sum", 1e-5, 0.2, 2): 0.73, ("none", 0.0, 0.2, 1): 0.75, ("none", 0.0, 0.2, 2): 0.74}
    runs = runs_table(acc)
    runs.loc[runs["key"] == "sum-1e-05-0.2-2", "stop_reason"] = "chance_level"
    t = claims.claims(runs, rules=["test_acc_last"]).set_index("claim")
    untested = t.loc["multiplicative beats additive"]  # its one λ failed once: validation selection has none
    assert untested["n"] == 0 and untested["outcome"] == "not tested (no runs of additive)"
    assert len(t) == 4 and (t["family"] == 4).all()  # issue 38: an arm without runs keeps its claims in the family
    confirmed = claims.claims(runs, rules=["test_acc_last"], confirmed=True).set_index("claim")
    assert confirmed.loc["multiplicative beats additive", "n"] == 2  # a confirmation keeps every run


def test_family_a_keeps_m_6_when_a_penalty_has_no_runs():
    """Issue 38: on c51d60c the additive arm's three claims were dropped and Holm used m = 3."""
    acc = {(pen, lam, noise, seed): 0.8 + 0.01 * seed + (0.02 if pen == "mul" else 0) * (1 + noise)
           for pen, lam in (("mul", 1e-7), ("none", 0.0)) for noise in (0.0, 0.2) for seed in (1, 2, 3)}
    t = claims.claims(runs_table(acc), rules=["test_acc_last"], confirmed=True)
    assert len(t) == 6 and (t["family"] == 6).all()
    untested = t[t["claim"].str.contains("additive")]
    assert len(untested) == 3 and untested["outcome"].eq("not tested (no runs of additive)").all()
    tested = t[t["p"].notna()]
    assert tested["p_holm"].min() == pytest.approx(min(1.0, 6 * tested["p"].min()))  # Holm's first step: m = 6


def test_thin_choices_name_a_lambda_judged_on_the_runs_that_learned():
    from mulreg.report.prose import thin_choices
    from mulreg.results.stats import epoch_rules

    acc = {("mul", 1e-7, 0.2, 1): 0.80, ("mul", 1e-7, 0.2, 2): 0.78, ("sum", 1e-4, 0.2, 1): 0.5,
           ("sum", 1e-4, 0.2, 2): 0.79, ("sum", 1e-5, 0.2, 1): 0.74, ("sum", 1e-5, 0.2, 2): 0.73,
           ("none", 0.0, 0.2, 1): 0.75, ("none", 0.0, 0.2, 2): 0.74}
    runs = runs_table(acc)
    runs.loc[runs["key"] == "sum-0.0001-0.2-1", "stop_reason"] = "chance_level"
    lines = thin_choices(runs, epoch_rules(runs))  # validation selection never takes a λ with a failed run
    assert len(lines) == 1 and "best test-accuracy epoch" in lines[0] and "λ=1e-04 on 1 of its 2 runs" in lines[0]


def test_memorisation_counts_chance_level_runs_without_averaging_them():
    from mulreg.results.stats import memorisation

    runs = pd.DataFrame({"key": list("abcd"), "penalty": ["sum", "sum", "none", "none"], "lam": [1e-4, 1e-4, 0, 0],
                         "label_noise": 0.2, "seed": [1, 2, 1, 2], "stop_reason": ["chance_level"] + ["max_epochs"] * 3,
                         "train_acc_flipped": [0.5, 0.4, 0.9, 1.0], "train_acc_clean": [0.5, 0.9, 1.0, 1.0]})
    fit = memorisation(runs).set_index("penalty")
    assert fit.loc["sum", "flipped_fit"] == 0.4 and fit.loc["sum", "at_chance"] == 1 and fit.loc["sum", "runs"] == 2
    assert fit.loc["none", "flipped_fit"] == pytest.approx(0.95)
