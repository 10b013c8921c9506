"""Replication 3's families (`mulreg.results.replication3`) on hand-made runs whose answers can be
worked out by hand: the delay and prevent tests, B8 decidable at n = 8, the model at the stop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mulreg.results import replication3

SEEDS = range(31, 39)  # n = 8
MUL_AT = [300, 250, 1000, 400, 120, 90, 500, 600]  # the multiplicative runs' memorisation epochs (1000: censored)
NONE_AT = [100, 110, 95, 130, 100, 90, 100, 100]


def runs_table() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for penalty in ("none", "sum", "mul"):
        for noise in (0.0, 0.2):
            for i, seed in enumerate(SEEDS):
                at = {"mul": MUL_AT, "none": NONE_AT, "sum": NONE_AT}[penalty][i]
                rows.append({"key": f"{penalty}-{noise}-{seed}", "penalty": penalty, "label_noise": noise, "seed": seed,
                             "stop_reason": "early_stopped",
                             "norm_product": {"mul": 3e2, "sum": 3e4, "none": 1e5}[penalty] * rng.uniform(0.8, 1.2),
                             "train_acc_flipped": {"mul": 0.3, "sum": 0.9, "none": 1.0}[penalty] + rng.normal(0, 0.02),
                             "rank_conv4": {"mul": 60, "sum": 120, "none": 125}[penalty] + int(rng.integers(0, 5)),
                             "rank_fc1": {"mul": 2, "sum": 256, "none": 256}[penalty],
                             "memorised_at": at, "censored": penalty == "mul" and at == 1000,
                             "stop_censored": False, "escape_epoch": 10, "above_half_from": 1})
    return pd.DataFrame(rows)


def test_d1_is_the_sign_test_on_the_memorisation_epochs_and_d2_the_binomial_test_of_the_share():
    """Differences 200, 140, 905 (censored), 270, 20, 0, 400, 500: 7 later of the 7 that differ, p = 2/2⁷;
    7 of 8 multiplicative runs memorise by the horizon: p = 2 · 9/256. Holm over 2: 0.031 (holds), 0.070."""
    family = replication3.family_d(runs_table()).set_index("id")
    assert family.loc["D1", "p"] == pytest.approx(2 / 128) and family.loc["D1", "p_holm"] == pytest.approx(4 / 128)
    assert family.loc["D1", "mean"] == pytest.approx((200 + 270) / 2) and family.loc["D1", "outcome"] == "holds"
    assert family.loc["D2", "mean"] == pytest.approx(0.5 - 7 / 8) and family.loc["D2", "p"] == pytest.approx(18 / 256)
    assert family.loc["D2", "outcome"] == "not resolved" and (family["family"] == 2).all()
    assert family.loc["D2", "low"] < 0.5 - 7 / 8 < 0 < family.loc["D2", "high"]  # the share's exact interval: 0.47-1


def test_b8_with_every_difference_equal_is_decided_at_n_8():
    """fc1 rank add − mul = 254 in all 8 seeds: the exact permutation p 2/256 = 0.0078 is below Holm's
    first threshold 0.05/6, so B8 can hold (replication 2's n = 5 could not: 0.0625)."""
    family = replication3.family_b(runs_table()).set_index("id")
    assert list(family.index) == ["B1", "B2", "B5", "B6", "B7", "B8"] and (family["family"] == 6).all()
    assert family.loc["B8", "p"] == pytest.approx(2 / 256) and family.loc["B8", "outcome"] == "holds"
    assert family.loc["B1", "mean"] == pytest.approx(2.0, abs=0.2)  # log10(3e4 / 3e2)
    secondary = replication3.family_b(runs_table().assign(matrix_rank_conv4=128, matrix_rank_fc1=256),
                                      ranks="matrix_rank")
    assert list(secondary["id"]) == ["B7", "B8"] and (secondary["n"] == 8).all() and (secondary["mean"] == 0).all()


def test_read_takes_the_stop_and_the_memorisation_epoch_from_each_history():
    """A run trained to epoch 6 whose validation loss last improved at epoch 2 (patience 200 does not fire:
    the last epoch), and whose flipped fit first exceeds one half at epoch 4."""
    runs = pd.DataFrame([{"key": "k", "penalty": "mul", "label_noise": 0.2, "seed": 31}])
    hist = pd.DataFrame({"key": "k", "epoch": range(1, 7), "val_loss": [1.0, 0.5, 0.6, 0.7, 0.8, 0.9],
                         "val_acc": 0.7, "test_acc": [0.5, 0.6, 0.7, 0.8, 0.75, 0.74], "train_loss": 0.1,
                         "train_acc": 0.9, "train_acc_flipped": [0.1, 0.2, 0.4, 0.6, 0.8, 0.9]})
    out = replication3.read(runs, hist).iloc[0]
    assert out["memorised_at"] == 4 and not out["censored"] and out["above_half_from"] == 4
    assert out["authors_stop_epoch"] == 6 and out["test_acc_authors"] == pytest.approx(0.74)
    assert out["test_acc_best_val"] == pytest.approx(0.6) and out["stop_censored"]  # patience 200 never fired


def test_a_run_trained_past_its_stop_is_censored_at_its_horizon_even_when_its_history_ends_early():
    """Trained past its stop to H = 600 but its history ends at epoch 3 (diverged): never above one half,
    so censored at 600 (on the old code at 3, before every other run's memorisation). A run that stopped
    (not trained past its stop) is censored at its last epoch."""
    runs = pd.DataFrame([{"key": k, "penalty": "mul", "label_noise": 0.2, "seed": 31, "max_epochs": 600,
                          "train_past_stop": past} for k, past in (("past", True), ("stopped", False))])
    hist = pd.concat([pd.DataFrame({"key": k, "epoch": [1, 2, 3], "val_loss": [1.0, 0.9, 0.8], "val_acc": 0.6,
                                    "test_acc": 0.6, "train_loss": 0.1, "train_acc": 0.6,
                                    "train_acc_flipped": [0.1, 0.2, 0.3]}) for k in ("past", "stopped")])
    out = replication3.read(runs, hist).set_index("key")
    assert out.loc["past", "memorised_at"] == 600 and out.loc["past", "censored"]
    assert out.loc["stopped", "memorised_at"] == 3 and out.loc["stopped", "censored"]


def test_the_ledger_shows_replication_3_in_its_column_and_decides_family_d():
    from mulreg.results import ledger

    runs = runs_table()
    runs["test_acc_authors"] = runs["penalty"].map({"mul": 0.78, "sum": 0.72, "none": 0.72}) + 0.01 * runs["seed"] % 3
    runs["test_acc_best_val"] = 0.80
    table = ledger.build(None, None, None, None, None, {}, "not yet").set_index("claim")
    with_third = ledger.build(None, None, None, None, None, {}, "not yet", third=runs).set_index("claim")
    assert (table["replication 3"].isin(["not tested", ledger.NOT_REGISTERED])).all()
    d1 = with_third.loc["D1: multiplicative memorises later than none (noise 0.2)"]
    assert d1["outcome"] == "holds" and d1["decided by"] == ledger.REPLICATION_3
    assert with_third.loc["B8: multiplicative cuts the rank of fc1 (noise 0)", "replication 3"].startswith("holds: ")
    assert with_third.loc["B14: multiplicative prevents memorisation over a wider range of λ (noise 0.2)",
                          "replication 3"] == ledger.NOT_REGISTERED
    authors = with_third.loc["multiplicative beats additive (noise 0.2, authors' rule)", "replication 3"]
    assert authors.startswith("holds: ") and authors.endswith("n 8 · patience 200")  # not the stand-in 40
    assert "patience" not in with_third.loc["multiplicative beats additive (noise 0.2)", "replication 3"]


def test_family_d_is_decided_by_the_runs_past_their_stop_before_the_other_stage_lands():
    """The horizon sweep's runs alone (multiplicative and none at noise 0.2) decide D1-D2 as all 48 runs
    would; every other claim of replication 3 stays 'not tested'."""
    from mulreg.results import ledger

    runs = runs_table()
    past = runs[(runs["label_noise"] == 0.2) & runs["penalty"].isin(["mul", "none"])]
    table = ledger.build(None, None, None, None, None, {}, "not yet", past=past).set_index("claim")
    d1 = table.loc["D1: multiplicative memorises later than none (noise 0.2)"]
    assert d1["outcome"] == "holds" and d1["replication 3"] == ("holds: median +235 epochs (later in 7, earlier in 0, "
                                                               "tied 1; never memorised by H, counted there: 1 mul, "
                                                               "0 none), n 8")
    d2 = table.loc["D2: multiplicative does not memorise up to the horizon (noise 0.2)", "replication 3"]
    assert d2.endswith("n 8 (7 of 8 memorised by H)")
    assert table.loc["D2: multiplicative does not memorise up to the horizon (noise 0.2)", "outcome"] == "not resolved"
    others = table[~table.index.str.startswith("D")]
    assert others["replication 3"].isin(["not tested", ledger.NOT_REGISTERED]).all()


def test_the_runs_past_their_stop_are_read_alone_once_their_stage_is_complete(monkeypatch):
    """`stored_with_past` reads the horizon sweep (the last spec) on its own while the other is incomplete."""
    complete = {"horizon"}
    horizon_runs = runs_table()

    def stored(specs, record_only=False):
        missing = [f"{spec}: incomplete" for spec in specs if spec not in complete]
        return (None, None, missing) if missing else (horizon_runs, None, [])

    monkeypatch.setattr(replication3, "stored", stored)
    assert replication3.stored_with_past(["stop", "horizon"]) == (None, horizon_runs, ["stop: incomplete"])
    complete.add("stop")
    runs, past, missing = replication3.stored_with_past(["stop", "horizon"])
    assert runs is horizon_runs and past is horizon_runs and missing == []


def test_the_prevent_or_delay_figure_draws_a_line_per_run_and_its_sentences_follow_d1_d2():
    from mulreg.report.memorisation import delay_sentences, memorisation_figure

    runs = runs_table()
    runs = runs[(runs["label_noise"] == 0.2) & runs["penalty"].isin(["mul", "none"])].assign(authors_stop_epoch=3)
    hist = pd.concat([pd.DataFrame({"key": k, "epoch": range(1, 6), "train_acc_flipped": 0.2, "test_acc": 0.7})
                      for k in runs["key"]])
    fig = memorisation_figure(runs, hist)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2 * len(runs)  # a line and a stop dot per run
    said = delay_sentences(replication3.family_d(runs_table()), 1000)
    assert said[0].startswith("D1 (delay): of 8 seeds, the multiplicative run memorises") and "+235 epochs" in said[0]
    assert "later than the unpenalised run of the same seed in 7, earlier in 0, at the same epoch in 1" in said[0]
    assert "1 multiplicative and 0 unpenalised runs never did" in said[0] and said[0].endswith("holds.")
    assert "7 of the 8 multiplicative runs (88%) memorise by epoch 1000" in said[1]
    assert said[1].endswith("not resolved.")


def test_the_sentences_never_say_a_censored_run_memorises():
    """Every run censored at H = 600 (none memorised): on the old code D1 read 'the multiplicative runs
    memorise ... a median +0 epochs after', which no run did."""
    from mulreg.report.memorisation import delay_sentences

    runs = runs_table().assign(memorised_at=600, censored=True)
    said = delay_sentences(replication3.family_d(runs), 600)
    assert "in 0, earlier in 0, at the same epoch in 8" in said[0]
    assert "8 multiplicative and 8 unpenalised runs never did" in said[0] and said[0].endswith("not resolved.")
    assert "0 of the 8 multiplicative runs (0%) memorise by epoch 600" in said[1]
    assert said[1].endswith("it prevents memorisation up to the horizon.")  # p = 2/256, Holm 4/256
    from mulreg.results import ledger

    past = runs[(runs["label_noise"] == 0.2) & runs["penalty"].isin(["mul", "none"])]
    table = ledger.build(None, None, None, None, None, {}, "not yet", past=past).set_index("claim")
    d2 = table.loc["D2: multiplicative does not memorise up to the horizon (noise 0.2)"]
    assert d2["outcome"] == "holds"  # the ledger's colours and counts read the bare outcome
    assert d2["replication 3"].startswith("holds (it prevents memorisation up to the horizon): ")


def test_an_unfired_stop_is_drawn_hollow_and_named_in_the_legend():
    from mulreg.report.memorisation import memorisation_figure

    runs = runs_table()
    runs = runs[(runs["label_noise"] == 0.2) & runs["penalty"].isin(["mul", "none"])]
    runs = runs.assign(authors_stop_epoch=5, stop_censored=runs["penalty"] == "mul")
    hist = pd.concat([pd.DataFrame({"key": k, "epoch": range(1, 6), "train_acc_flipped": 0.2, "test_acc": 0.7})
                      for k in runs["key"]])
    ax = memorisation_figure(runs, hist).axes[1]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert sum(line.get_markerfacecolor() == "none" for line in dots) == 8 and len(dots) == 16
    labels = [text.get_text() for text in memorisation_figure(runs, hist).legends[0].get_texts()]
    assert "no stop by the last epoch (read there)" in labels
    assert "memorises (above one half, after the escape)" in labels  # a cross where each run memorised
    crosses = [line for line in memorisation_figure(runs, hist).axes[0].lines if line.get_marker() == "x"]
    assert sum(len(line.get_xdata()) for line in crosses) == 0  # flat fits of 0.2: no run memorised


def test_family_c_joins_fig1_and_the_published_b_numbers_in_one_family_under_the_primary_rule():
    from mulreg.results import claims, paper

    runs = runs_table()
    runs["test_acc_authors"] = runs["penalty"].map({"mul": 0.78, "sum": 0.72, "none": 0.72}) + 0.001 * runs["seed"]
    runs["test_acc_best_val"] = runs["penalty"].map({"mul": 0.80, "sum": 0.80, "none": 0.80}) + 0.002 * runs["seed"]
    fig1, b = replication3.family_c(runs, claims.paper_gaps(paper.published("fig1")))
    assert sorted(b["id"]) == ["B1", "B2", "B7", "B8"] and (b["family_excl"] == 10).all()
    primary = fig1[fig1["rule"] == replication3.AUTHORS]
    assert len(primary) == 6 and (primary["family_excl"] == 10).all()
    assert (fig1[fig1["rule"] == replication3.HEADLINE]["family_excl"] == 6).all()
    assert b.set_index("id").loc["B8", "excludes"] == False  # noqa: E712 - 254 in every seed: the paper's gap stands


def test_decided_says_where_the_papers_magnitude_is_excluded_and_counts_the_unfired_stops_row_by_row():
    """Gaps of 6 points with a tiny spread: A2 (the paper's 9.41) holds in direction with its magnitude excluded,
    A1 (1.63) holds; B7's rank gap ≈ 60 excludes the paper's 81; B8 (254 in every seed) does not. The three
    multiplicative runs at noise 0 whose stop never fired count in every row that compares that arm at 0; the
    unpenalised run at 0.2 whose stop never fired, only in the rows that set the multiplicative one against none."""
    from mulreg.results import claims, ledger, paper

    runs = runs_table()
    runs["test_acc_authors"] = runs["penalty"].map({"mul": 0.78, "sum": 0.72, "none": 0.72}) + 0.001 * runs["seed"]
    runs["test_acc_best_val"] = runs["penalty"].map({"mul": 0.80, "sum": 0.80, "none": 0.80}) + 0.002 * runs["seed"]
    runs.loc[(runs["penalty"] == "mul") & (runs["label_noise"] == 0.0) & (runs["seed"] <= 33), "stop_censored"] = True
    runs.loc[(runs["penalty"] == "none") & (runs["label_noise"] == 0.2) & (runs["seed"] == 31), "stop_censored"] = True
    gaps = claims.paper_gaps(paper.published("fig1"))
    a, b = replication3.decided(runs, gaps)
    primary = a[a["rule"] == replication3.AUTHORS].set_index(["claim", "noise"])
    assert primary.loc[("multiplicative beats additive", "0.2"), "outcome"] == claims.MAGNITUDE_EXCLUDED
    assert primary.loc[("multiplicative beats additive", "0"), "outcome"] == "holds"
    assert primary[replication3.UNFIRED].to_dict() == {
        ("multiplicative beats additive", "0"): 3, ("multiplicative beats additive", "0.2"): 0,
        ("gap to additive grows with noise", "0.2 vs 0"): 3, ("multiplicative beats none", "0"): 3,
        ("multiplicative beats none", "0.2"): 1, ("gap to none grows with noise", "0.2 vs 0"): 4}
    b = b.set_index("id")
    assert b.loc["B7", "outcome"] == claims.MAGNITUDE_EXCLUDED and b.loc["B8", "outcome"] == "holds"
    assert b[replication3.UNFIRED].to_dict() == {"B1": 3, "B2": 0, "B5": 0, "B6": 1, "B7": 3, "B8": 3}
    table = ledger.build(None, None, None, None, None, gaps, "not yet", third=runs).set_index("claim")
    cell = table.loc["multiplicative beats additive (noise 0, authors' rule)", "replication 3"]
    assert cell.startswith("holds: ") and cell.endswith("· 3 stops not fired (read at the last epoch)")
    assert table.loc["multiplicative beats additive (noise 0.2, authors' rule)", "replication 3"].startswith(
        f"{claims.MAGNITUDE_EXCLUDED}: ")


def test_power_restates_each_earlier_effect_at_n_8_against_holms_first_threshold():
    """An earlier replication of 3 seeds whose multiplicative runs lead the additive ones by 1, 2 and 3 points
    at noise 0 (mean 0.02, sd 0.01) under both rules: power at n = 8 and 0.05/6 is the paired t-test's for a
    shift of 0.02 / (0.01/√8) = 5.66 standard errors (df 7): about 0.91."""
    from mulreg.results import design

    earlier = runs_table()
    earlier = earlier[earlier["seed"] <= 33].copy()
    lead = {31: 0.01, 32: 0.02, 33: 0.03}
    earlier["test_acc_authors"] = 0.8 + np.where(earlier["penalty"] == "mul", earlier["seed"].map(lead), 0.0)
    earlier["test_acc_best_val"] = earlier["test_acc_authors"]
    table = replication3.power(earlier).set_index(["id", "rule"])
    expected = design.paired_t_power(0.02, 0.01, 8, 0.05 / 6)
    assert table.loc[("A1", "test_acc_authors"), "power"] == pytest.approx(expected)
    assert 0.85 < expected < 0.95 and table.loc[("A1", "test_acc_authors"), "n"] == 3
    assert table.loc[("B8", replication3.REPORTED), "power"] == pytest.approx(1.0)


def test_the_readme_answers_prevent_or_delay_from_the_runs_past_their_stop_and_checks_its_figure(tmp_path,
                                                                                                   monkeypatch):
    """Before the horizon stage is in the record the README says so; once it is, its paragraph carries D1-D2's
    sentences and `stale` finds the paragraph and figure until `render` writes them from those runs."""
    import shutil

    from PIL import Image

    from mulreg.config import PROJECT_ROOT
    from mulreg.report import readme, saving
    from mulreg.results import analysis

    runs = runs_table()
    past = runs[(runs["label_noise"] == 0.2) & runs["penalty"].isin(["mul", "none"])].assign(authors_stop_epoch=3)
    hist = pd.concat([pd.DataFrame({"key": k, "epoch": range(1, 6), "train_acc_flipped": 0.2, "test_acc": 0.7})
                      for k in past["key"]])
    assert "not in the record yet" in readme.delay_block(None, None, 1000)
    said = readme.delay_block(past, hist, 1000)
    assert "n = 8 seeds" in said and "to epoch 1000" in said and f"{readme.DELAY_NAME}.png" in said
    assert "D1 (delay): of 8 seeds" in said and "7 of the 8 multiplicative runs (88%)" in said
    assert said.count("Descriptive, not a registered test: at epoch 5 ") == 1  # the fit where the histories end
    shutil.copy(PROJECT_ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(PROJECT_ROOT / readme.FIGURES, tmp_path / readme.FIGURES)
    monkeypatch.setattr(readme, "_past_of_record", lambda: (past, hist, 1000))
    png = tmp_path / readme.FIGURES / f"{readme.DELAY_NAME}.png"
    assert readme.stale(tmp_path) == ["README.md: its prevent-or-delay paragraph differs from what the record gives",
                                      f"{png}: not drawn from replication 3's record"]
    readme.render(tmp_path)
    assert readme.stale(tmp_path) == [] and said in (tmp_path / "README.md").read_text()
    caption = Image.open(png).text[saving.SOURCE]  # its own runs, not every stage the ledger reads
    assert caption == analysis.source_line(past)
    fig1 = Image.open(tmp_path / readme.FIGURES / "01_verdict_every_rule.png").text[saving.SOURCE]
    assert "quick/confirmation" in fig1 and "replication" not in fig1  # replication 1's stages alone


def test_the_lambda_note_names_each_arm_whose_lambda_is_not_the_records():
    """Replication 3 took replication 2's first execution's λ (executions.csv: 1e-06, 2e-05); the execution
    in the record chose additive 5e-05 (its plan), so the note names the additive arm, computed."""
    from types import SimpleNamespace as Run

    registered = [Run(penalty="mul", lam=1e-6), Run(penalty="sum", lam=2e-5), Run(penalty="none", lam=0.0)]
    said = replication3.lambda_note(registered)
    assert said.startswith("λ here: multiplicative 1e-06, additive 2e-05; replication 2's first execution chose "
                           "multiplicative 1e-06, additive 2e-05")
    assert said.endswith("its execution of record multiplicative 1e-06, additive 5e-05. The additive arm is at the "
                         "first execution's λ, not at the record's.")
    own = replication3.lambda_note([Run(penalty="mul", lam=5e-13), Run(penalty="sum", lam=5e-5)])
    assert own.endswith("The multiplicative arm is at a λ of its own, neither execution's; the additive arm is at the "
                        "record's λ, not at the first execution's.")


def test_the_censored_counts_and_the_pairs_seed_by_seed():
    """The hand-made runs: the multiplicative run of seed 33 never memorised by H (1000) and its stop never
    fired; the runs that stop are not asked whether they memorised by H."""
    runs = runs_table().assign(lam=0.0, authors_stop_epoch=300, stop_censored=False)
    runs["train_past_stop"] = (runs["label_noise"] == 0.2) & runs["penalty"].isin(["mul", "none"])
    runs.loc[runs["key"] == "mul-0.2-33", "stop_censored"] = True
    counts = replication3.censored(runs).set_index(["penalty", "label_noise"])
    assert counts.loc[("mul", 0.2), ["runs", "stop_not_fired", "never_memorised_by_H"]].tolist() == [8, 1, 1]
    assert counts.loc[("mul", 0.0), "never_memorised_by_H"] == 0  # censored in the table, but not trained past
    pairs = replication3.delays(runs).set_index("seed")
    assert pairs.loc[33, "mul memorised at"] == 1000 and pairs.loc[33, "mul censored"]
    assert list(pairs.columns[:5]) == ["mul escape epoch", "mul memorised at", "mul censored", "mul above half from",
                                       "mul authors stop epoch"]
    assert pairs["mul − none"].tolist() == [200, 140, 905, 270, 20, 0, 400, 500]


def test_a_run_trained_past_its_stop_is_read_as_if_it_had_stopped_there():
    """Patience 2 stands in for 200 (monkeypatched): the validation loss last improves at epoch 2, the rule fires
    at 4, and the loss improves again at epoch 6 (past the stop). The best validation-loss epoch is read up to the
    stop (epoch 2, as for a run that stopped), not at 6 (the old code, reading epochs the protocol never trains);
    the horizon's accuracy is its own column."""
    runs = pd.DataFrame([{"key": "k", "penalty": "mul", "label_noise": 0.2, "seed": 31, "max_epochs": 7,
                          "train_past_stop": True}])
    hist = pd.DataFrame({"key": "k", "epoch": range(1, 8), "val_loss": [1.0, 0.5, 0.6, 0.7, 0.8, 0.1, 0.2],
                         "val_acc": 0.7, "test_acc": [0.5, 0.6, 0.7, 0.8, 0.75, 0.9, 0.95], "train_loss": 0.1,
                         "train_acc": 0.9, "train_acc_flipped": 0.1})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replication3, "PATIENCE", 2)
        out = replication3.read(runs, hist).iloc[0]
    assert out["authors_stop_epoch"] == 4 and out["test_acc_authors"] == pytest.approx(0.8)
    assert out["best_val_epoch"] == 2 and out["test_acc_best_val"] == pytest.approx(0.6)
    assert out["test_acc_last"] == pytest.approx(0.8) and out["test_acc_horizon"] == pytest.approx(0.95)
    assert not out["stop_censored"] and out["censored"] and out["memorised_at"] == 7


def test_a_diverged_run_enters_the_horizon_claim_and_the_flipped_fit_as_chance():
    """Nothing is discarded (the registration): a run whose accuracy or fit is undefined after a divergence
    enters as 0.5; on the old code its pair left the test (n 7)."""
    runs = runs_table().assign(test_acc_horizon=lambda t: t["penalty"].map({"mul": 0.8, "none": 0.7, "sum": 0.7}))
    runs.loc[runs["key"] == "mul-0.2-31", ["test_acc_horizon", "train_acc_flipped", "stop_reason"]] = \
        [np.nan, np.nan, "diverged"]
    horizon = replication3.at_horizon(runs).iloc[0]
    assert horizon["n"] == 8 and horizon["mean"] == pytest.approx((7 * 0.1 - 0.2) / 8)
    b = replication3.family_b(runs).set_index("id")
    assert b.loc["B5", "n"] == 8 and b.loc["B6", "n"] == 8 and b.loc["B1", "n"] == 8  # its norms are kept


def test_a_thin_row_lists_its_differences_in_the_statistics_own_units():
    """Two seeds: too few pairs to decide. B1's decades and B8's ranks read as themselves (they read '+200.00 pp'
    and '+25400.00 pp'); B5's fit, a fraction, in points."""
    runs = runs_table()
    b = replication3.family_b(runs[runs["seed"] <= 32]).set_index("id")
    assert b.loc["B8", "outcome"] == "not resolved (2 pairs: +254, +254 ranks)"
    b1 = b.loc["B1", "outcome"]
    assert b1.startswith("not resolved (2 pairs: +2") and b1.endswith(" decades)")
    assert b.loc["B5", "outcome"].endswith(" pp)")


def test_the_legend_of_five_entries_fits_inside_the_figure_below_the_panels_at_the_notebooks_font_size():
    from mulreg.report.memorisation import memorisation_figure
    from mulreg.report.saving import setup

    setup()  # the notebooks' theme and font size
    runs = runs_table()
    runs = runs[(runs["label_noise"] == 0.2) & runs["penalty"].isin(["mul", "none"])]
    runs = runs.assign(authors_stop_epoch=5, stop_censored=runs["penalty"] == "mul", censored=False, memorised_at=3)
    hist = pd.concat([pd.DataFrame({"key": k, "epoch": range(1, 6), "train_acc_flipped": 0.6, "test_acc": 0.7})
                      for k in runs["key"]])
    fig = memorisation_figure(runs, hist)
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    assert len(fig.legends[0].get_texts()) == 5
    assert legend.x0 >= 0 and legend.x1 <= fig.bbox.width and legend.y0 >= 0  # the saved caption runs below y = 0
    assert all(legend.y1 < ax.get_tightbbox(renderer).y0 for ax in fig.axes)  # clear of every panel and its labels


def test_the_fit_at_the_horizon_is_each_arms_median_and_range_at_its_last_epoch():
    from mulreg.report.memorisation import fit_at_horizon

    runs = pd.DataFrame({"key": ["m1", "m2", "m3", "n1"], "penalty": ["mul", "mul", "mul", "none"]})
    last = {"m1": 0.52, "m2": 0.75, "m3": 0.55, "n1": 1.0}
    hist = pd.concat([pd.DataFrame({"key": k, "epoch": [600, 1, 300], "train_acc_flipped": [fit, 0.9, 0.1],
                                    "penalty": "ignored"})  # unsorted: the last epoch, not the last row
                      for k, fit in last.items()])
    assert fit_at_horizon(runs, hist) == (
        "Descriptive, not a registered test: at epoch 600 the median share of its flipped labels a run fits is, for "
        "the multiplicative runs 55% (from 52% to 75%, n = 3); for the unpenalised runs 100% (from 100% to 100%, "
        "n = 1).")
