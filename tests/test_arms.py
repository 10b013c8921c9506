"""Notebook 06's statistics on a hand-made runs table whose answers are worked out by hand: the arm of
each run, the selection rule within an arm, the early-stopping arm, the paired comparison with the
multiplicative penalty, and the verdict under normalisation with its effective-learning-rate ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mulreg.results import arms

BEST_VAL, LAST = "test_acc_best_val", "test_acc_last"


def run(penalty="none", lam=0.0, seed=1, acc=0.8, last=None, bn=False, wn=False, dropout=0.0, augment=None,
        stop="max_epochs"):
    last = acc if last is None else last
    return {"penalty": penalty, "lam": lam, "seed": seed, BEST_VAL: acc, LAST: last, "val_acc_best_val": acc,
            "val_acc_last": last,
            "model.batch_norm": bn, "model.weight_norm": wn, "model.dropout": dropout, "augment": augment,
            "stop_reason": stop, "label_noise": 0.2}


def runs_table() -> pd.DataFrame:
    rows = [
        run("mul", 5e-7, 1, 0.82, last=0.78), run("mul", 5e-7, 2, 0.84, last=0.77),
        run("mul", 5e-8, 1, 0.80), run("mul", 5e-8, 2, 0.80),
        run(seed=1, acc=0.81, last=0.72), run(seed=2, acc=0.83, last=0.74),  # plain, no penalty
        run(dropout=0.25, seed=1, acc=0.70), run(dropout=0.25, seed=2, acc=0.72),
        run(dropout=0.5, seed=1, acc=0.76), run(dropout=0.5, seed=2, acc=0.74),
        run(augment=True, seed=1, acc=0.60), run(augment=True, seed=2, acc=0.61),
        run("sum", 5e-4, 1, 0.50, bn=True, stop="chance_level"), run("sum", 5e-4, 2, 0.88, bn=True),
        run("sum", 5e-5, 1, 0.84, bn=True), run("sum", 5e-5, 2, 0.86, bn=True),
        run(bn=True, seed=1, acc=0.80), run(bn=True, seed=2, acc=0.81),
    ]
    table = pd.DataFrame(rows)
    return table.assign(key=[f"k{i}" for i in range(len(table))])


def test_every_run_is_named_by_its_network_and_regulariser():
    table = arms.annotate(runs_table())
    by_key = table.drop_duplicates("key").set_index("key")
    assert by_key.loc["k0", "arm"] == "plain · multiplicative" and by_key.loc["k0", "setting"] == 5e-7
    assert by_key.loc["k6", "arm"] == "plain · dropout" and by_key.loc["k6", "setting"] == 0.25
    assert by_key.loc["k10", "arm"] == "plain · augmentation" and by_key.loc["k10", "setting"] == 0.0
    assert by_key.loc["k12", "arm"] == "batch norm · additive" and by_key.loc["k12", "network"] == "batch norm"
    assert by_key.loc["k4", "arm"] == "plain · none"  # augment missing (an old run) reads as off


def test_early_stopping_reads_the_unregularised_runs_at_their_best_validation_epoch_under_every_rule():
    table = arms.annotate(runs_table())
    stopped = table[table["arm"] == "plain · early stopping"].set_index("seed")
    assert list(stopped["key"]) == ["k4", "k5"]
    assert list(stopped[LAST]) == [0.81, 0.83]  # not 0.72, 0.74: the last epoch of an early-stopped run
    plain = table[table["arm"] == "plain · none"].set_index("seed")
    assert list(plain[LAST]) == [0.72, 0.74]


def test_the_selection_rule_picks_within_each_arm_and_says_where_the_grid_ends():
    best = arms.select(arms.annotate(runs_table())).set_index("arm")
    assert best.loc["plain · multiplicative", "setting"] == 5e-7
    assert best.loc["plain · multiplicative", "grid_end"] == "strongest"
    assert best.loc["plain · dropout", "setting"] == 0.5 and best.loc["plain · dropout", "mean"] == pytest.approx(0.75)
    # λ 5e-4 learned on one seed only (0.88): validation selection takes a setting whose every run learned
    bn_add = best.loc["batch norm · additive"]
    assert bn_add["setting"] == 5e-5 and bn_add["grid_end"] == "weakest"
    assert best.loc["batch norm · additive", "n_used"] == 2 and best.loc["batch norm · additive", "n_excluded"] == 1
    assert best.loc["plain · none", "grid_end"] == ""  # one setting: no grid to end
    assert list(best.index[:3]) == ["plain · multiplicative", "plain · none", "plain · early stopping"]


def test_every_arm_is_compared_with_the_multiplicative_penalty_paired_by_seed():
    table = arms.against(arms.annotate(runs_table()), metrics=[BEST_VAL, LAST])
    row = table[(table["arm"] == "plain · augmentation") & (table["rule"] == BEST_VAL)].iloc[0]
    # mul 5e-7 (0.82, 0.84) − augmentation (0.60, 0.61): differences 0.22, 0.23
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.225) and row["outcome"].startswith("not resolved (2 pairs")
    assert row["claim"] == "plain · multiplicative beats plain · augmentation"
    none_last = table[(table["arm"] == "plain · none") & (table["rule"] == LAST)].iloc[0]
    # selected on the last epoch mul takes 5e-8 (0.80, 0.80) over 5e-7 (0.78, 0.77); none 0.72, 0.74
    assert none_last["mean"] == pytest.approx(np.mean([0.08, 0.06]))
    bn = table[(table["arm"] == "batch norm · additive") & (table["rule"] == BEST_VAL)].iloc[0]
    assert bn["n"] == 2 and bn["mean"] == pytest.approx(-0.02)  # 5e-5 (0.84, 0.86) against (0.82, 0.84)
    assert "plain · multiplicative" not in set(table["arm"])


def history(keys_rates: dict[str, float], epochs: int = 12) -> pd.DataFrame:
    """Histories whose conv layers move at a run's rate, except in the first two epochs (left out by
    the last-10 mean) at 100× it, and whose fc1 moves at 1e-2 in every run."""
    rows = []
    for key, rate in keys_rates.items():
        for epoch in range(1, epochs + 1):
            r = rate * (100 if epoch <= epochs - arms.LAST_EPOCHS else 1)
            rows.append({"key": key, "epoch": epoch, "eff_lr_conv1": r, "eff_lr_conv2": r, "eff_lr_fc1": 1e-2})
    return pd.DataFrame(rows)


def test_under_batch_norm_a_penalty_is_judged_against_the_same_network_without_one():
    runs = arms.annotate(runs_table())
    rates = {"k12": 4e-3, "k13": 4e-3, "k14": 3e-3, "k15": 3e-3, "k16": 1e-3, "k17": 1e-3}
    table = arms.under_normalisation(runs, history(rates))
    assert list(table["network"]) == ["batch norm"] and list(table["penalty"]) == ["additive"]
    row = table.iloc[0]
    # chosen λ 5e-5 (5e-4 failed on seed 1): 0.84 − 0.80, 0.86 − 0.81, two pairs resolve nothing
    assert row["lam"] == 5e-5 and row["n"] == 2 and row["mean"] == pytest.approx(0.045)
    assert row["verdict"].startswith("not resolved (2 pairs")
    # batch norm frees the conv layers' scale: the ratio uses them only, and the last 10 epochs
    # only: k14/k15's 3e-3 over k16/k17's 1e-3
    assert row["eff_lr_ratio"] == pytest.approx(3.0)


def test_a_resolved_gain_under_normalisation_is_called_regularising():
    rows = [run("sum", 5e-5, s, 0.86 + 0.001 * s, bn=True) for s in (1, 2, 3, 4)]
    rows += [run(seed=s, acc=0.80 + 0.0011 * s, bn=True) for s in (1, 2, 3, 4)]
    runs = pd.DataFrame(rows).assign(key=[f"k{i}" for i in range(8)])
    table = arms.under_normalisation(arms.annotate(runs), history({f"k{i}": 1e-3 for i in range(8)}))
    # +0.06 minus 0.0001·seed on four seeds: a steady gain, resolved
    assert table.iloc[0]["verdict"] == "regularises" and table.iloc[0]["eff_lr_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("verdict, ratio, says", [
    ("regularises", 1.0, "it regularises here"),
    ("hurts", 3.0, "it hurts here"),
    ("not resolved", 1.5, "whether it regularises is open; it moves the effective learning rate by more than 10%"),
    ("not resolved", 1.05, "its effective learning rate stays within 10% of the unpenalised one"),
])
def test_one_sentence_per_penalty_says_what_it_does_under_normalisation(verdict, ratio, says):
    from mulreg.report import prose

    row = {"network": "batch norm", "penalty": "additive", "label_noise": 0.2, "lam": 5e-4, "n": 2, "mean": 0.01,
           "low": -0.02, "high": 0.04, "verdict": verdict, "eff_lr_ratio": ratio}
    (sentence,) = prose.normalisation_sentences(pd.DataFrame([row]))
    assert says in sentence and f"×{ratio:.2f}" in sentence and sentence.startswith("Batch norm, additive")


def test_the_summary_counts_the_chosen_settings_runs_and_the_arms_exclusions():
    from mulreg.report import prose

    runs = arms.annotate(runs_table())
    summary = prose.arm_summary(runs, arms.against(runs, metrics=[BEST_VAL])).set_index("arm")
    row = summary.loc["batch norm · additive"]
    assert (row["chosen"], row["at grid end"], row["runs used"], row["excluded in arm"]) == ("λ 5e-05", "weakest",
                                                                                            "2/2", "1/4")
    assert summary.loc["plain · dropout", "chosen"] == "rate 0.5"
    assert summary.loc["plain · multiplicative"].iloc[-1] == "reference"
    assert summary.loc["plain · augmentation"].iloc[-1].endswith("not resolved (2 pairs: +22.00, +23.00 pp)")
