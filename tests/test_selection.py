"""The selection rule (`mulreg.engine.selection`) and the statistics of the verdict (`mulreg.results.claims`), on
hand-made tables whose answers can be worked out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mulreg.core.epochs import RULES, with_rules
from mulreg.engine import selection
from mulreg.results import claims

NON_TEST = [r for r in RULES if not selection.reads_test(r)]


def grid_runs() -> pd.DataFrame:
    """Two λ per penalty, two seeds, noise 0.2: validation prefers mul 1e-7 and sum 1e-5, test the
    other λ of each (every rule's columns set equal, so rules differ only in what they read)."""
    rows = []
    for pen, lam, val, test_ in (("mul", 1e-7, 0.80, 0.70), ("mul", 1e-8, 0.75, 0.90),
                                 ("sum", 1e-5, 0.78, 0.60), ("sum", 1e-6, 0.70, 0.95), ("none", 0.0, 0.72, 0.74)):
        for seed in (1, 2):
            row = {"key": f"{pen}-{lam}-{seed}", "penalty": pen, "lam": lam, "seed": seed, "label_noise": 0.2,
                   "stop_reason": "max_epochs"}
            for rule in RULES:
                row[rule] = test_ + 0.001 * seed
                row[selection.SELECTED_ON[rule].replace("test_acc", "val_acc")] = val + 0.001 * seed
            rows.append(row)
    return pd.DataFrame(rows)


def test_rules_that_do_not_read_the_test_set_select_on_validation():
    for rule in NON_TEST:
        best = selection.select(grid_runs(), rule).set_index("penalty")
        assert best.loc["mul", "lam"] == 1e-7 and best.loc["sum", "lam"] == 1e-5, rule
        assert best.loc["mul", "selected_on"] == rule.replace("test_acc", "val_acc")
        assert best.loc["mul", "reported"] == rule
        assert best.loc["mul", "mean"] == pytest.approx(0.7015)  # the reported rule's test accuracy of λ 1e-7


def test_poisoned_test_columns_change_no_validation_selection():
    """Every test-accuracy column is rewritten so that any rule reading it would flip its choice;
    the choices of the rules that claim not to read the test set stay as they were."""
    runs = grid_runs()
    before = {r: selection.select(runs, r)[["penalty", "lam"]] for r in RULES}
    poisoned = runs.copy()
    for col in [c for c in runs if c.startswith("test_acc")]:
        poisoned[col] = np.where(poisoned["lam"].isin([1e-7, 1e-5]), 0.99, 0.01)
    for rule in RULES:
        after = selection.select(poisoned, rule)[["penalty", "lam"]]
        if selection.reads_test(rule):
            assert not after.equals(before[rule]), f"{rule} reads the test set: poisoning must move it"
        else:
            pd.testing.assert_frame_equal(after, before[rule], obj=rule)


def test_as_the_paper_selects_on_test_and_discards_failed_runs_one_by_one():
    runs = grid_runs()
    runs.loc[runs["key"] == "sum-1e-06-1", ["stop_reason"]] = "chance_level"
    best = selection.select(runs, "test_acc_best_test").set_index("penalty")
    assert best.loc["mul", "lam"] == 1e-8  # test prefers it
    assert best.loc["sum", "lam"] == 1e-6 and best.loc["sum", "n_used"] == 1  # judged on the seed that learned
    val = selection.select(runs, "test_acc_best_val").set_index("penalty")
    assert val.loc["sum", "n_excluded"] == 1 and val.loc["sum", "lam"] == 1e-5


def test_validation_selection_takes_a_setting_only_if_every_run_learned():
    runs = grid_runs()
    runs.loc[runs["key"] == "mul-1e-07-2", "stop_reason"] = "chance_level"  # the validation favourite fails once
    best = selection.select(runs, "test_acc_best_val").set_index("penalty")
    assert best.loc["mul", "lam"] == 1e-8 and best.loc["mul", "n_used"] == 2
    chosen = selection.chosen_runs(runs, selection.select(runs, "test_acc_best_val"))
    assert sorted(chosen.loc[chosen["penalty"] == "mul", "key"]) == ["mul-1e-08-1", "mul-1e-08-2"]


def test_ties_go_to_the_weaker_setting():
    runs = grid_runs()
    runs.loc[runs["penalty"] == "mul", "val_acc_best_val"] = 0.8
    assert selection.select(runs).set_index("penalty").loc["mul", "lam"] == 1e-8


def test_rules_and_their_validation_twins_are_read_off_the_history():
    h = pd.DataFrame({"epoch": range(1, 13), "train_acc": 0.9, "val_loss": [1.0] * 5 + [0.2] + [0.9] * 6,
                      "val_acc": np.linspace(0.5, 0.61, 12), "test_acc": np.linspace(0.6, 0.71, 12)}).assign(key="a")
    runs = with_rules(pd.DataFrame({"key": ["a"]}), h, patience=3).iloc[0]
    assert runs["test_acc_best_val"] == pytest.approx(0.65) and runs["val_acc_best_val"] == pytest.approx(0.55)
    assert runs["test_acc_last"] == pytest.approx(0.71) and runs["val_acc_last"] == pytest.approx(0.61)
    assert runs["test_acc_last10"] == pytest.approx(np.mean(np.linspace(0.6, 0.71, 12)[2:]))
    assert runs["best_val_epoch"] == 6 and runs["test_acc_paper"] == pytest.approx(0.71)


# ---- the statistics
def test_fewer_than_three_pairs_are_not_resolved_and_listed():
    row = claims.decide(pd.DataFrame([claims.test([0.05, 0.06])]))
    assert row.loc[0, "outcome"] == "not resolved (2 pairs: +5.00, +6.00 pp)"
    assert math.isnan(row.loc[0, "p_holm"])  # not part of the family


def test_zero_variance_uses_the_exact_permutation_p():
    t = claims.test([0.02, 0.02, 0.02])
    assert t["zero_sd"] and math.isnan(t["p_t"]) and t["p"] == pytest.approx(2 / 8)
    assert (t["low"], t["high"]) == (0.02, 0.02)
    outcome = claims.decide(pd.DataFrame([t])).loc[0, "outcome"]  # 0.25 is no evidence, and no data could give any
    assert outcome == "cannot be decided at this n (smallest attainable p 0.25, 0.25 after Holm)"


def test_a_test_whose_floor_is_above_alpha_after_holm_cannot_be_decided_and_one_below_can():
    """Issue 38: replication 2's B8 (+254 in all 5 seeds; floor 2/2⁵ = 0.0625, × 14 after Holm) reads as
    undecidable, not as a failed claim; at n = 8 the floor (0.0078 × 6 = 0.047) is below α and it holds."""
    five = claims.decide(pd.DataFrame([claims.test([254.0] * 5)] + [claims.test([0.1, -0.2, 0.3])] * 13))
    assert five.loc[0, "outcome"] == "cannot be decided at this n (smallest attainable p 0.062, 0.88 after Holm)"
    assert five.loc[1, "outcome"] == "not resolved"  # a spread: the t-test decides, and could have
    eight = claims.decide(pd.DataFrame([claims.test([254.0] * 8)] + [claims.test([0.1, -0.2, 0.3])] * 5))
    assert eight.loc[0, "p_holm"] == pytest.approx(6 * 2 / 2 ** 8) and eight.loc[0, "outcome"] == "holds"


def test_a_held_claim_whose_published_size_is_excluded_says_both():
    assert claims.with_magnitude("holds", True) == "direction holds, the paper's magnitude excluded"
    assert claims.with_magnitude("holds", False) == "holds"
    assert claims.with_magnitude("not resolved", True) == "not resolved"


def test_the_permutation_p_is_the_share_of_sign_flips_at_least_as_extreme():
    d = [0.03, -0.01, 0.02, 0.04]
    means = [abs(np.mean(np.array(s) * d)) for s in itertools.product((1, -1), repeat=4)]
    by_hand = sum(m >= abs(np.mean(d)) - 1e-12 for m in means) / 16
    assert claims.permutation_pvalue(d) == pytest.approx(by_hand) == pytest.approx(4 / 16)
    assert claims.permutation_pvalue([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(2 / 32)


def test_holm_multiplies_the_sorted_p_values_and_keeps_them_monotone():
    adjusted = claims.holm([0.01, 0.04, 0.03, float("nan"), 0.005])
    # m = 4 tested: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → 0.06 (monotone)
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, np.nan, 0.02])


def test_holm_decides_the_family_and_t_p_is_scipys():
    clear = [0.050, 0.052, 0.049, 0.051]  # a large, steady gap
    weak = [0.01, 0.03, -0.005, 0.02]
    family = claims.decide(pd.DataFrame([claims.test(clear), claims.test(weak), claims.test([-c for c in clear])]))
    assert family.loc[0, "p_t"] == pytest.approx(stats.ttest_1samp(clear, 0).pvalue)
    assert list(family["outcome"]) == ["holds", "not resolved", "reversed"]
    assert family.loc[0, "p_holm"] == pytest.approx(min(1, 3 * min(family.loc[0, "p_t"], family.loc[2, "p_t"])))


def test_the_resolvable_gap_has_the_stated_power():
    gap = claims.resolvable_gap(sd=0.01, n=5, alpha=0.05)
    crit = stats.t.ppf(0.975, 4)
    nc = gap / (0.01 / math.sqrt(5))
    assert stats.nct.sf(crit, 4, nc) + stats.nct.cdf(-crit, 4, nc) == pytest.approx(0.8)
    assert claims.resolvable_gap(0.01, 3, 0.05 / 6) > claims.resolvable_gap(0.01, 5, 0.05 / 6) > gap


def test_mcnemar_counts_the_images_only_one_run_gets_right():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 1], bool)
    b = np.array([1, 0, 0, 0, 1, 0, 0, 1], bool)
    out = claims.mcnemar(a, b)
    assert (out["only_a"], out["only_b"]) == (4, 1)
    assert out["p"] == pytest.approx(stats.binomtest(4, 5, 0.5).pvalue)


def test_confirmed_claims_keep_failed_runs_and_test_growth_across_noise():
    rows = []
    for seed, (clean, noisy) in zip((3, 4, 5), ((0.01, 0.06), (0.00, 0.05), (0.02, 0.07))):
        for noise, gap in ((0.0, clean), (0.2, noisy)):
            for pen, acc in (("mul", 0.8 + gap), ("sum", 0.8), ("none", 0.8)):
                rows.append({"key": f"{pen}{seed}{noise}", "penalty": pen, "lam": 0.0, "seed": seed,
                             "label_noise": noise, "stop_reason": "max_epochs", "test_acc_last": acc})
    runs = pd.DataFrame(rows)
    runs.loc[runs["key"] == "none30.2", ["stop_reason", "test_acc_last"]] = ["diverged", np.nan]
    table = claims.claims(runs, ["test_acc_last"], confirmed=True).set_index(["claim", "noise"])
    none_noisy = table.loc[("multiplicative beats none", "0.2")]
    assert none_noisy["n"] == 3 and none_noisy["diffs"][0] == pytest.approx(0.86 - 0.5)  # the diverged run at chance
    grow = table.loc[("gap to additive grows with noise", "0.2 vs 0")]
    assert grow["mean"] == pytest.approx(0.05) and grow["family"] == 6


def test_verdict_sentences_are_written_from_the_outcomes():
    from mulreg.report import verdicts

    rows = [{"claim": "multiplicative beats none", "noise": "0.2", "rule": "test_acc_last", **claims.test(d)}
            for d in ([0.05, 0.051, 0.049, 0.05], [0.01, 0.02])]
    rows.append({"claim": "gap to none grows with noise", "noise": "—", "rule": "test_acc_last", **claims.test([])})
    table = claims.decide(pd.DataFrame(rows))
    table.loc[2, "outcome"] = "not tested (one noise level)"
    head, steady, thin, untested = verdicts.verdict_sentences(table, "test_acc_last", "Confirmation")
    assert head.startswith("Confirmation, last epoch (secondary): 1 holds, 1 not resolved, 1 not tested of 3 claims")
    assert "+5.0 points over 4 seed pairs" in steady and steady.endswith(": holds.")
    assert "too few pairs for the decision rule" in thin and "not resolved (2 pairs: +1.00, +2.00 pp)" in thin
    assert untested.endswith("not tested (one noise level).")


def test_chooses_only_where_some_group_holds_more_than_one_lambda():
    fixed = pd.DataFrame({"penalty": ["none", "mul", "mul"], "label_noise": [0.2] * 3, "lam": [0.0, 1e-6, 1e-6]})
    assert not selection.chooses(fixed)
    assert not selection.chooses(fixed.iloc[:0])
    other_noise = pd.concat([fixed, fixed.assign(label_noise=0.0, lam=[0.0, 1e-5, 1e-5])])
    assert not selection.chooses(other_noise)  # one λ per (penalty, noise) group
    assert selection.chooses(pd.concat([fixed, fixed.assign(lam=[0.0, 1e-5, 1e-5])]))
