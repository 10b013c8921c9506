"""The second replication's tests (`mulreg.results.replication`) and the claims ledger
(`mulreg.results.ledger`) on hand-made runs tables whose answers can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mulreg.results import ledger, replication

RNG_SEED = 7


def null_rejections(ranks: bool, draws: int = 2000) -> float:
    """Share of draws with ρ(x, y) = ρ(x, z) by construction that Williams' t rejects at α 0.05."""
    rng = np.random.default_rng(RNG_SEED)
    rejected = 0
    for _ in range(draws):
        x = rng.normal(size=15)
        y, z = x + rng.normal(size=15), x + rng.normal(size=15)
        rejected += replication.williams(x, y, z, ranks)["p"] < 0.05
    return rejected / draws


def test_williams_t_keeps_its_level_on_pearson_and_is_mildly_liberal_on_ranks():
    """Pearson's r: about 5 % rejected (binomial sd at 2,000 draws: 0.5 %); Spearman's (what B9-B10
    use): about 7 %, the liberal level the pre-registration's dated note discloses."""
    assert 0.035 < null_rejections(ranks=False) < 0.065
    assert 0.05 < null_rejections(ranks=True) < 0.09


def test_williams_t_finds_a_real_difference():
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=15)
    strong = replication.williams(x, x + 0.1 * rng.normal(size=15), rng.normal(size=15))
    assert strong["p"] < 0.01 and strong["mean"] > 0.5 and strong["rho_product"] > strong["rho_sum"]


def selection_runs(mul_in: list[list[bool]], sum_in: list[list[bool]]) -> pd.DataFrame:
    """Per seed, which of 4 grid positions are in each penalty's window (fit 0.2 in, 0.9 out)."""
    rows = []
    for pen, grid, table in (("mul", (1e-8, 1e-7, 1e-6, 1e-5), mul_in), ("sum", (1e-6, 1e-5, 1e-4, 1e-3), sum_in)):
        for seed, flags in zip((11, 12, 13), table):
            for lam, inside in zip(grid, flags):
                rows.append({"penalty": pen, "lam": lam, "seed": seed, "label_noise": 0.2,
                             "stop_reason": "after_escape", "train_acc_flipped": 0.2 if inside else 0.9})
    rows += [{"penalty": "none", "lam": 0.0, "seed": s, "label_noise": 0.2, "stop_reason": "after_escape",
              "train_acc_flipped": 1.0} for s in (11, 12, 13)]
    return pd.DataFrame(rows)


def test_the_window_counts_grid_points_flags_censoring_and_sign_tests_the_pairs():
    mul = [[False, True, True, True], [False, True, True, False], [True, True, True, False]]
    add = [[False, False, True, False], [False, False, False, False], [False, False, True, False]]
    runs = selection_runs(mul, add)
    runs.loc[(runs["penalty"] == "sum") & (runs["lam"] == 1e-3) & (runs["seed"] == 12), "stop_reason"] = "chance_level"
    win = replication.window(runs)
    widths = replication.window_widths(win).set_index(["seed", "penalty"])
    assert widths.loc[(11, "mul"), "points"] == 3 and widths.loc[(11, "mul"), "width"] == pytest.approx(1.0)
    assert bool(widths.loc[(11, "mul"), "censored"]) and bool(widths.loc[(13, "mul"), "censored"])
    assert not bool(widths.loc[(12, "mul"), "censored"]) and widths.loc[(12, "sum"), "points"] == 0
    test = replication.window_test(win)
    assert (test["only_mul"], test["only_sum"]) == (6, 0)  # 8 in mul's windows, 2 in add's, both in 2
    assert test["p"] == pytest.approx(2 * 0.5 ** 6)
    assert test["mean"] == pytest.approx(np.mean([2 / 3, 2 / 3, 2 / 3]))


def confirmation_runs(scale: float = 0.2) -> pd.DataFrame:
    """Seeds 6-8 at noise 0 and 0.2: mul has Π 100× below add, add 10× below none; mul fits fewer
    flipped labels and has lower ranks; accuracies leave a 2-point lead at noise 0.2."""
    rows = []
    for seed in (6, 7, 8):
        for noise in (0.0, 0.2):
            for pen, pi, fit, rank, acc in (("mul", 1e2, 0.2, 40, 0.82), ("sum", 1e4, 0.9, 128, 0.80),
                                           ("none", 1e5, 1.0, 128, 0.80)):
                wobble = 0.001 * seed
                rows.append({"key": f"{pen}{seed}{noise}", "penalty": pen, "lam": 0.0, "seed": seed,
                             "label_noise": noise, "init_scale": scale, "stop_reason": "after_escape",
                             "task": "binary", "norm_product": pi * (1 + wobble), "norm_sq_sum": 50 + seed,
                             "train_acc_flipped": fit + wobble, "rank_conv4": rank - seed % 2,
                             "rank_fc1": 2 * rank - seed,
                             "test_loss": 0.3 + 0.01 * math.log10(pi) + wobble,
                             "test_acc_best_val": acc + (0.0 if scale == 0.2 else -0.02 * (pen == "mul")) + wobble
                             + 0.0005 * (seed * 7 % 3) * (pen == "mul")})
    return pd.DataFrame(rows)


def test_family_b_decides_fourteen_registered_hypotheses_with_holm_over_fourteen():
    runs = confirmation_runs()
    sharp = pd.DataFrame({"mul": [0.01, 0.011, 0.012], "sum": [0.05, 0.052, 0.049]}, index=[6, 7, 8])
    selection = selection_runs([[False, True, True, True]] * 3, [[False, False, True, False]] * 3)
    family = replication.family_b(runs, selection, sharp, confirmation_runs(0.8)).set_index("id")
    assert list(family.index) == [f"B{i}" for i in range(1, 15)]
    assert (family["family"] == replication.FAMILY_B).all()
    assert family.loc["B1", "mean"] == pytest.approx(2.0, abs=1e-2)  # log10 1e4 − log10 1e2
    assert family.loc["B3", "mean"] == pytest.approx(1.0, abs=1e-2)
    assert family.loc["B5", "mean"] == pytest.approx(0.7) and family.loc["B7", "mean"] == pytest.approx(88)
    assert family.loc["B12", "mean"] == pytest.approx(0.02, abs=1e-3)
    assert family.loc["B12", "statistic"] == "[mul − add](s 0.2) − [mul − add](s 0.8)"  # as registered
    assert family.loc["B11", "outcome"] == "holds"
    excluded = replication.excluded_b(family.reset_index()).set_index("id")
    assert set(excluded.index) == set(replication.PAPER_B) and (excluded["family_excl"] == 6).all()
    assert not excluded.loc["B1", "excludes"]  # 2 decades: the paper's "≥ 1 decade" stands


def test_family_b_without_the_larger_scale_leaves_its_rows_untested():
    family = replication.family_b(confirmation_runs(), selection_runs([[True] * 4] * 3, [[True] * 4] * 3))
    untested = family[family["outcome"] == "not tested (no runs)"]["id"].tolist()
    assert untested == ["B11", "B12", "B13"] and (family["family"] == 14).all()
    assert family.set_index("id").loc["B12", "claim"] == ("the multiplicative lead over additive narrows at a larger "
                                                          "init scale")


def test_equal_differences_are_labelled_with_the_permutation_test_and_its_floor():
    from mulreg.report import verdicts

    runs = confirmation_runs()
    runs["rank_fc1"] = np.where(runs["penalty"] == "mul", 2, 256)  # fc1: add − mul = 254 in every seed
    runs["rank_conv4"] = np.where(runs["penalty"] == "mul", 40 + runs["seed"], 128)  # conv4: 82, 81, 80
    family = replication.family_b(runs, selection_runs([[True] * 4] * 3, [[True] * 4] * 3))
    b8 = family.set_index("id").loc["B8"]
    assert b8["test"] == replication.EQUAL_DIFFERENCES and b8["p"] == pytest.approx(2 / 2 ** 3)
    assert verdicts.family_table(family).set_index("id").loc["B8", "test"] == replication.EQUAL_DIFFERENCES
    sentence = next(line for line in verdicts.family_sentences(family) if line.startswith("B8"))
    assert "with 3 pairs that p cannot go below 0.25" in sentence  # issue 38: undecidable, not a failed claim
    assert sentence.endswith("cannot be decided at this n (smallest attainable p 0.25, 1 after Holm).")
    b7 = next(line for line in verdicts.family_sentences(family) if line.startswith("B7"))
    assert "(paired t p" in b7 and "cannot go below" not in b7 and "= +81 ranks over n = 3" in b7


def test_the_family_table_reads_each_hypothesis_in_its_units_fits_in_points():
    from mulreg.report import verdicts

    family = replication.family_b(confirmation_runs(), selection_runs([[True] * 4] * 3, [[True] * 4] * 3))
    table = verdicts.family_table(family).set_index("id")
    b5 = family.set_index("id").loc["B5"]
    assert table.loc["B5", "units"] == "pp" and table.loc["B5", "mean"] == f"{100 * b5['mean']:+.3g}"
    assert table.loc["B1", "units"] == "decades"
    assert table.loc["B5", "per seed"] == ", ".join(f"{100 * d:+.3g}" for d in b5["diffs"])


def test_the_ledger_is_decided_by_replication_two_once_complete_else_by_one():
    paper = {("multiplicative beats additive", "0.2"): 9.4}
    runs = confirmation_runs()
    only_first = ledger.build(runs, None, None, None, None, paper, "not yet: make figures NB=07 (1 h)")
    assert len(only_first) == 2 * 6 + 14 + 2 + 1  # Fig. 1 under the primary and the authors' rule (issue 38), family D
    assert only_first["claim"].str.endswith(", authors' rule)").sum() == 6
    fig1 = only_first[(only_first["where"] == "Fig. 1") & ~only_first["claim"].str.contains("authors")]
    assert (fig1["decided by"] == ledger.REPLICATION_1).all()
    assert only_first.loc[only_first["claim"].str.startswith("B5: "), "decided by"].item() == ("not yet: make figures "
                                                                                             "NB=07 (1 h)")
    row = fig1[fig1["claim"] == "multiplicative beats additive (noise 0.2)"].iloc[0]
    assert row["paper"] == "+9.4 pp" and row["ours (95 % interval, n)"].startswith("+2")
    assert row["outcome"] == "direction holds, the paper's magnitude excluded"  # holds, and +9.4 is excluded
    excluded = row["what the data exclude"]
    assert excluded.startswith("the paper's gap excluded") and "(this claim alone, one-sided 95 %)" in excluded
    alone, together = (float(x.split(" pp")[0]) for x in excluded.split("above ")[1:3])
    assert together == alone and "for all 1 at once (Bonferroni)" in excluded  # one published gap: a family of 1
    from mulreg.results import claims
    from mulreg.results import paper as published

    six = ledger.build(runs, None, None, None, None, claims.paper_gaps(published.published("fig1")), "unused")
    cell = six.loc[six["claim"] == "multiplicative beats additive (noise 0.2)", "what the data exclude"].item()
    alone, together = (float(x.split(" pp")[0]) for x in cell.split("above ")[1:3])
    assert together > alone and "for all 6 at once (Bonferroni)" in cell
    selection = selection_runs([[True] * 4] * 3, [[True] * 4] * 3)
    both = ledger.build(runs, runs, selection, confirmation_runs(0.8), None, paper, "unused")
    primary = both[(both["where"] == "Fig. 1") & ~both["claim"].str.contains("authors")]
    assert (primary["decided by"] == ledger.REPLICATION_2).all()
    assert both.loc[both["where"] == "Table 2", "outcome"].item() == "not tested here"


def test_fig1_rows_show_every_replication_side_by_side():
    """Issue 37: each replication's outcome, interval and n beside the deciding one (fails on c51d60c)."""
    paper = {("multiplicative beats additive", "0.2"): 9.4}
    first = confirmation_runs()
    second = first.copy()
    second["test_acc_best_val"] = np.where(second["penalty"] == "mul", second["test_acc_best_val"] - 0.05,
                                           second["test_acc_best_val"])  # the lead reversed in replication 2
    table = ledger.build(first, second, selection_runs([[True] * 4] * 3, [[True] * 4] * 3), confirmation_runs(0.8),
                         None, paper, "unused")
    row = table[table["claim"] == "multiplicative beats additive (noise 0.2)"].iloc[0]
    assert row["replication 1"].startswith("holds: +2") and row["replication 1"].endswith(", n 3")
    assert row["replication 2"].split(":")[0] == row["outcome"] and row["outcome"] != "holds"
    only_first = ledger.build(first, None, None, None, None, paper, "unused")
    assert (only_first[only_first["where"] == "Fig. 1"]["replication 2"] == "not tested").all()
    others = only_first[only_first["where"] != "Fig. 1"]["replication 1"]
    assert others.isin([ledger.NOT_REGISTERED, "not tested"]).all()


def test_the_registration_is_the_commit_that_added_the_document_and_is_checked_against_run_starts():
    from mulreg import provenance

    found = provenance.registration_commit("docs/PREREGISTRATION-2.md")
    if found is None:
        pytest.skip("not a git checkout")
    added = pd.Timestamp(found.split()[1])
    later = (added + pd.Timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S%z")
    earlier = (added - pd.Timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S%z")
    assert ", before the first of its 2 runs" in provenance.registered_before(
        pd.DataFrame({"started": [later, later]}), "docs/PREREGISTRATION-2.md")
    assert "AFTER the first of its 2 runs" in provenance.registered_before(
        pd.DataFrame({"started": [later, earlier]}), "docs/PREREGISTRATION-2.md")
    resumed = pd.DataFrame({"first_started": [earlier, None], "started": [later, later]})  # began before, resumed after
    assert "AFTER the first of its 2 runs" in provenance.registered_before(resumed, "docs/PREREGISTRATION-2.md")


def test_b14_as_registered_beside_its_correction_to_the_seed_with_censoring():
    """Issue 38: the registered sign test counts 7 (seed, position) pairs as independent (p = 2 · 0.5⁷);
    at the registration's unit, the seed, a paired t on the 3 widths (1, 2/3, 2/3 decades) gives the
    p of scipy's one-sample t; the multiplicative window reaches a grid end in 2 of 3 seeds."""
    from scipy import stats as sps

    mul = [[True, True, True, True], [False, True, True, False], [False, True, True, True]]
    add = [[False, False, True, False], [False, False, False, False], [False, False, True, False]]
    selection = selection_runs(mul, add)
    test = replication.window_test(replication.window(selection))
    assert test["p"] == pytest.approx(2 * 0.5 ** 7)
    assert test["p_seed"] == pytest.approx(sps.ttest_1samp([1.0, 2 / 3, 2 / 3], 0).pvalue)
    assert test["censored"] == "2 of 3" and test["widest"] == pytest.approx(4 / 3)
    family = replication.family_b(confirmation_runs(), selection).set_index("id")
    b14 = family.loc["B14"]
    assert b14["p_corrected"] == pytest.approx(test["p_seed"]) and b14["p"] == pytest.approx(test["p"])
    assert b14["p_holm_corrected"] >= b14["p_corrected"] and isinstance(b14["outcome_corrected"], str)
    row = ledger.build(confirmation_runs(), confirmation_runs(), selection, confirmation_runs(0.8), None, {},
                       "unused").set_index("where").loc["issue 30"]
    assert "as registered: 7 (seed, position) pairs counted as independent" in row["test"]
    assert "corrected to the seed, the registration's unit: paired t on the 3 seeds' widths" in row["test"]
    assert "reaches an end of its grid in 2 of 3 seeds" in row["what the data exclude"]


def test_b5_and_b6_that_coincide_are_one_observation():
    """Issue 38: additive and none both fit every flipped label, so B5 and B6 are the same differences."""
    runs = confirmation_runs()
    runs.loc[runs["penalty"] == "sum", "train_acc_flipped"] = runs.loc[runs["penalty"] == "none",
                                                                       "train_acc_flipped"].to_numpy()
    family = replication.family_b(runs, selection_runs([[True] * 4] * 3, [[True] * 4] * 3)).set_index("id")
    assert family.loc["B6", "outcome"] == "the same observation as B5 (counted there once)"
    assert family.loc["B5", "outcome"] == "holds"
    apart = replication.family_b(confirmation_runs(), selection_runs([[True] * 4] * 3, [[True] * 4] * 3))
    assert not apart["outcome"].str.startswith("the same observation").any()


def test_a_lambda_at_its_grids_end_is_named_on_b12_and_b13():
    selection = selection_runs([[True] * 4] * 3, [[True] * 4] * 3)
    plan = {"lam": {"sum": {"0.2": 1e-6}, "mul": {"0.2": 1e-7}}}
    assert replication.grid_ends(selection, plan) == ["additive λ 1e-06 is the weakest of its grid"]
    table = ledger.build(confirmation_runs(), confirmation_runs(), selection, confirmation_runs(0.8), None, {},
                         "unused", replication.grid_ends(selection, plan))
    b12 = table[table["claim"].str.startswith("B12")].iloc[0]
    assert b12["test"].endswith("; the init-scale arm's additive λ 1e-06 is the weakest of its grid")


def test_the_seed_bootstrap_keeps_penalty_groups_whole_and_reads_its_tails():
    """Issue 38, B9/B10 corrected: y follows x exactly and z against it within every seed, so every
    resample of seeds gives ρ(x, y) − ρ(x, z) = 2: interval [2, 2], p 0 (no draw at or below 0)."""
    seeds = np.repeat(np.arange(5), 3)
    x = np.arange(15.0)
    result = replication.seed_bootstrap(seeds, x, x ** 3, -x, draws=200)
    assert result["n"] == 5 and result["mean"] == pytest.approx(2) and result["p"] == 0.0
    assert (result["low"], result["high"]) == (pytest.approx(2), pytest.approx(2))


def test_williams_t_level_in_the_three_by_five_layout_under_a_shared_group_effect():
    """The referee's concern (issue 38): 15 runs are 3 penalty groups × 5 seeds. Under a group effect
    shared equally by the loss and both norms (so ρ(loss, Π) = ρ(loss, Σ)), the simulated level of
    Williams' t stays near its nominal 5 % (1,000 layouts; binomial sd 0.7 %)."""
    rate = replication.null_rejections(lambda g, x, y, z: replication.williams(x, y, z)["p"])
    assert 0.03 < rate < 0.08


def test_family_c_is_one_holm_family_per_rule_over_fig1_and_family_b():
    """Issue 38: under the primary rule, Fig. 1's 6 published gaps and B's 6 published numbers are one
    family of 12 (they were two families of 6); another rule keeps its 6 Fig. 1 rows alone."""
    from mulreg.results import claims
    from mulreg.results import paper as published

    runs = confirmation_runs()
    runs["test_acc_last"] = runs["test_acc_best_val"]
    verdict = claims.claims(runs, rules=["test_acc_best_val", "test_acc_last"], confirmed=True)
    fig1 = claims.exclusion(verdict, claims.paper_gaps(published.published("fig1")))
    b = replication.excluded_b(replication.family_b(runs, selection_runs([[True] * 4] * 3, [[True] * 4] * 3)))
    joint_fig1, joint_b = replication.family_c(fig1, b)
    primary = joint_fig1[joint_fig1["rule"] == "test_acc_best_val"]
    by_hand = claims.holm(np.concatenate([primary["p_excl"], joint_b["p_excl"]]), 12)
    assert np.allclose(np.concatenate([primary["p_excl_holm"], joint_b["p_excl_holm"]]), by_hand, equal_nan=True)
    assert (primary["family_excl"] == 12).all() and (joint_b["family_excl"] == 12).all()
    other = joint_fig1[joint_fig1["rule"] == "test_acc_last"]
    assert (other["family_excl"] == 6).all() and np.allclose(other["p_excl_holm"], claims.holm(other["p_excl"], 6))


def test_the_matrix_rank_table_uses_torchs_default_tolerance():
    """Issue 38: the registered descriptive Table 1 under `torch.linalg.matrix_rank`'s tolerance
    (σ_max · max(m, n) · eps(float32) = 3 · 1.2e-7 here): singular values 1, 1e-3, 1e-9 have rank 2
    there and effective rank 1 at the paper's 1 % tolerance."""
    import torch

    from mulreg.core import metrics as M
    from mulreg.results import stats

    w = torch.diag(torch.tensor([1.0, 1e-3, 1e-9]))
    assert M.matrix_rank(w) == 2 == np.linalg.matrix_rank(w.numpy()) and M.effective_rank(w) == 1
    runs = pd.DataFrame({"penalty": ["mul", "mul", "sum", "sum"], "label_noise": 0.0, "seed": [1, 2, 1, 2],
                         "matrix_rank_conv4": [40, 46, 128, 128], "matrix_rank_fc1": [2, 2, 256, 250]})
    table = stats.matrix_rank_table(runs).set_index("layer")
    assert table.loc["conv4", "mul"] == "43.0 (40–46)" and table.loc["fc1", "sum"] == "253.0 (250–256)"


def test_the_corrected_window_needs_the_registered_horizon_after_escape_and_leaves_the_registered_one_alone():
    """Issue 38: a run that leaves chance at epoch 140 and trains 10 epochs is in the registered window
    (it fits few flipped labels: it has barely learned), not in the corrected variant's."""
    runs = selection_runs([[True] * 4] * 3, [[True] * 4] * 3).assign(epochs=150, escape_epoch=30.0)
    late = (runs["penalty"] == "mul") & (runs["lam"] == 1e-5) & (runs["seed"] == 11)
    runs.loc[late, "escape_epoch"] = 140.0
    registered = replication.window(runs)
    corrected = replication.window(runs, replication.MIN_AFTER_ESCAPE)
    assert registered["in_window"].sum() == 24 and corrected["in_window"].sum() == 23
    assert not corrected.loc[(corrected["penalty"] == "mul") & (corrected["lam"] == 1e-5) & (corrected["seed"] == 11),
                             "in_window"].item()


def test_a_diverged_runs_flipped_fit_enters_family_b_as_chance_not_dropped():
    """Issue 38: 'no confirmation run is discarded'. On c51d60c a diverged run (its fit undefined) left
    B5-B6, so their n fell to 2."""
    runs = confirmation_runs()
    bad = (runs["penalty"] == "mul") & (runs["seed"] == runs["seed"].min()) & (runs["label_noise"] == 0.2)
    runs.loc[bad, ["stop_reason", "train_acc_flipped"]] = ["diverged", np.nan]
    family = replication.family_b(runs, selection_runs([[True] * 4] * 3, [[True] * 4] * 3)).set_index("id")
    assert family.loc["B5", "n"] == 3 and family.loc["B6", "n"] == 3  # all three seeds, the diverged one too
    healthy = replication.family_b(confirmation_runs(), selection_runs([[True] * 4] * 3, [[True] * 4] * 3))
    shift = family.loc["B5", "mean"] - healthy.set_index("id").loc["B5", "mean"]
    mul_fit = confirmation_runs().loc[bad, "train_acc_flipped"].item()
    assert shift == pytest.approx((mul_fit - 0.5) / 3)  # that seed's mul fit read as chance, 0.5


def test_b9_b10_rows_state_the_simulated_level_of_both_their_tests():
    """Issue 38's liberal-level note: the row says how often each test rejects a true null in its own
    layout (3 penalties × the seeds), simulated, not typed; the bootstrap over 5 seeds is the liberal one."""
    williams_level, bootstrap_level = replication.null_levels(3, 5)
    assert 0.03 < williams_level < 0.08 and 0.06 < bootstrap_level < 0.2  # binomial sd: 0.7 % and 2.6 %
    family = replication.family_b(confirmation_runs(), selection_runs([[True] * 4] * 3, [[True] * 4] * 3))
    row = family.set_index("id").loc["B9"]
    seeds = confirmation_runs()["seed"].nunique()
    williams_level, bootstrap_level = replication.null_levels(3, seeds)
    said = f"3 × {seeds} layout {100 * bootstrap_level:.0f} %, Williams' t {100 * williams_level:.0f} %"
    assert said in row["how_corrected"]
