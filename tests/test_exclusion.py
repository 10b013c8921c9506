"""What the data exclude (`mulreg.results.claims.against`, `exclusion`), Holm over a registered family,
diverged runs read as registered, and the selection's reading of validation only: checked against
numbers worked out by hand and against runs the engine really drives to divergence."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mulreg.config import RunConfig
from mulreg.core.epochs import RULES, with_rules
from mulreg.engine import selection
from mulreg.engine.train import train
from mulreg.report import prose, verdicts
from mulreg.results import claims
from test_selection import grid_runs

T95_DF2 = 2.919986  # one-sided 95 % quantile of Student's t with 2 degrees of freedom (tables)


def t_cdf_df2(t: float) -> float:
    """Student's t CDF with 2 degrees of freedom in closed form: 1/2 + t / (2·√(2 + t²))."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_the_one_sided_test_against_a_claimed_gap_and_the_excluded_bound_by_hand():
    diffs = [0.01, 0.03, 0.02]  # mean 0.02, sd 0.01, n 3
    se = 0.01 / math.sqrt(3)
    got = claims.against(diffs, 0.094)
    assert got["p_excl"] == pytest.approx(t_cdf_df2((0.02 - 0.094) / se), rel=1e-6)
    assert got["p_excl"] == pytest.approx(0.00302, abs=5e-5)
    assert got["excluded_above"] == pytest.approx(0.02 + T95_DF2 * se, rel=1e-6)
    # a claimed gap inside the data's range is not excluded
    assert claims.against(diffs, 0.02)["p_excl"] == pytest.approx(0.5)
    assert math.isnan(claims.against([0.01, 0.02], 0.05)["p_excl"])  # fewer than 3 pairs


def test_equal_differences_use_the_exact_one_sided_sign_flip_p():
    got = claims.against([0.02, 0.02, 0.02, 0.02], 0.094)
    assert got["p_excl"] == pytest.approx(1 / 16)  # only the all-negative assignment is as low
    assert math.isnan(got["excluded_above"])  # a t bound needs a spread


def test_holm_uses_the_registered_family_size_not_the_count_tested():
    np.testing.assert_allclose(claims.holm([0.01, math.nan, 0.04], family=3), [0.03, math.nan, 0.08])
    np.testing.assert_allclose(claims.holm([0.01, math.nan, 0.04]), [0.02, math.nan, 0.04])
    with pytest.raises(ValueError):
        claims.holm([0.01, 0.02], family=1)
    rows = [claims.test([0.05, 0.051, 0.049]), claims.test([]), claims.test([0.01, 0.02, -0.01])]
    family = claims.decide(pd.DataFrame(rows))
    assert (family["family"] == 3).all()
    assert family.loc[0, "p_holm"] == pytest.approx(min(1, 3 * min(family.loc[0, "p"], family.loc[2, "p"])))


def test_exclusion_tests_each_rule_against_the_paper_in_its_own_family():
    rows = []
    for rule in ("test_acc_best_val", "test_acc_last"):
        for noise, diffs in (("0", [0.01, 0.0, 0.02]), ("0.2", [0.01, 0.03, 0.02])):
            rows.append({"claim": "multiplicative beats additive", "noise": noise, "rule": rule, **claims.test(diffs)})
    table = claims.decide(pd.DataFrame(rows))
    paper = {("multiplicative beats additive", "0"): 1.6, ("multiplicative beats additive", "0.2"): 9.4}
    out = claims.exclusion(table, paper).set_index(["rule", "noise"])
    noisy = out.loc[("test_acc_best_val", "0.2")]
    assert noisy["paper"] == pytest.approx(0.094)
    assert noisy["p_excl"] == pytest.approx(claims.against([0.01, 0.03, 0.02], 0.094)["p_excl"])
    assert (out["family_excl"] == 2).all()
    first = out.loc[("test_acc_best_val", "0")]
    assert noisy["p_excl_holm"] == pytest.approx(min(1, 2 * min(noisy["p_excl"], first["p_excl"])))
    assert bool(noisy["excludes"]) and not bool(first["excludes"])  # +1.6 lies inside [−, 3.0]


def test_nan_test_columns_never_change_a_choice_made_on_validation():
    runs = grid_runs()
    before = {r: selection.select(runs, r)[["penalty", "lam"]] for r in RULES if not selection.reads_test(r)}
    poisoned = runs.copy()
    favourites = poisoned["lam"].isin([1e-7, 1e-5])
    for col in [c for c in runs if c.startswith("test_acc")]:
        poisoned.loc[favourites, col] = math.nan
    for rule, choice in before.items():
        pd.testing.assert_frame_equal(selection.select(poisoned, rule)[["penalty", "lam"]], choice, obj=rule)


def test_a_choice_at_an_end_of_its_grid_is_flagged():
    best = selection.select(grid_runs(), "test_acc_best_val").set_index("penalty")
    assert best.loc["mul", "grid_end"] == "strongest" and best.loc["sum", "grid_end"] == "strongest"
    assert best.loc["none", "grid_end"] == ""  # a one-value grid has no end to speak of
    inner = grid_runs()
    extra = inner[inner["lam"] == 1e-7].assign(lam=1e-6, key=lambda d: d["key"] + "x")
    extra[[c for c in extra if c.startswith("val_acc")]] = 0.1
    best = selection.select(pd.concat([inner, extra]), "test_acc_best_val").set_index("penalty")
    assert best.loc["mul", "lam"] == 1e-7 and best.loc["mul", "grid_end"] == ""


def test_the_selection_table_and_its_edge_sentence_read_a_choice_as_stored(tmp_path):
    best = selection.select(grid_runs(), "test_acc_best_val")
    best.loc[best["penalty"] == "sum", "lam"] = 3.125e-7  # the init-scale arm's λ: not to be shown as 3e-07
    best.to_csv(tmp_path / "selection.csv", index=False)
    stored = pd.read_csv(tmp_path / "selection.csv")  # as notebooks read it back: "" becomes NaN
    table = prose.selection_table(stored).set_index("penalty")
    assert table.loc["additive", "λ"] == "3.125e-07" and table.loc["additive", "at grid end"] == "strongest"
    assert table.loc["none", "at grid end"] == "—"
    sentence = next(s for s in verdicts.edge_sentences(stored) if s.startswith("The additive"))
    assert "λ = 3.125e-07 is the strongest of its grid" in sentence


def _diverged(root, **values):
    base = dict(device="cpu", init_scale=1.0, batch_size=4, early_stopping=None, seed=3, label_noise=0.2)
    result = train(RunConfig.parse({**base, **values}), root=root, progress=False)
    assert result.stop_reason == "diverged"
    return result


def _runs_of(result) -> pd.DataFrame:
    hist = result.history.assign(key="k")
    runs = pd.DataFrame([{"key": "k", "task": "binary", "stop_reason": result.stop_reason}])
    return with_rules(runs, hist, patience=2)


def test_a_run_the_engine_drives_to_divergence_enters_at_chance_under_every_rule(tiny_cifar_image_folder):
    result = _diverged(tiny_cifar_image_folder, penalty="mul", lam=1e30, lr=0.01, max_epochs=4)
    assert len(result.history) == 1  # the first epoch already has no finite loss
    runs = _runs_of(result)
    for rule in RULES:
        assert math.isnan(runs.loc[0, rule]), rule
        assert claims.as_trained(runs, rule).loc[0, rule] == 0.5, rule
    assert result.history["test_acc"].iloc[0] == 0.0  # what the engine records there: sign(NaN) is never ±1


def test_a_run_that_diverges_later_is_undefined_from_its_divergence_on(tiny_cifar_image_folder):
    result = _diverged(tiny_cifar_image_folder, lr=0.1, max_epochs=30)  # diverges in its second epoch
    h = result.history
    assert len(h) >= 2, "the configuration must diverge after a finite epoch"
    runs = _runs_of(result)
    for rule in ("test_acc_last", "test_acc_last10"):
        assert claims.as_trained(runs, rule).loc[0, rule] == 0.5, rule
    finite = h["val_loss"].iloc[:-1]
    assert runs.loc[0, "test_acc_best_val"] == h.loc[finite.idxmin(), "test_acc"]  # an epoch before it: defined
    assert runs.loc[0, "test_acc_best_test"] == h["test_acc"].iloc[:-1].max()
    read = [claims.as_trained(runs, rule).loc[0, rule] for rule in RULES]
    assert all(r > 0 for r in read)  # never the 0 the engine records at the diverged epoch


def _two_rule_verdict() -> pd.DataFrame:
    rows = []
    for rule, gap in (("test_acc_best_val", [0.01, 0.0, 0.02]), ("test_acc_last", [0.07, 0.071, 0.069]),
                      ("test_acc_best_test", [0.05, 0.051, 0.049])):
        family = [{"claim": "multiplicative beats additive", "noise": "0.2", "rule": rule, **claims.test(gap)},
                  {"claim": "multiplicative beats none", "noise": "0.2", "rule": rule, **claims.test(gap)}]
        rows.append(claims.decide(pd.DataFrame(family)))
    return pd.concat(rows, ignore_index=True)


def test_the_first_sentence_says_what_the_primary_data_exclude_and_where_training_ends():
    from mulreg.report import verdicts

    table = _two_rule_verdict()
    excluded = claims.exclusion(table, {("multiplicative beats additive", "0.2"): 9.4})
    lead = verdicts.lead_sentence(table, "Confirmation", 40, excluded)
    assert "none of the 2 claims holds or is reversed" in lead
    bound = excluded.set_index("rule").loc["test_acc_best_val", "excluded_above"]
    said = f"'multiplicative beats additive' (0.2: paper +9.4 points, true gaps above {100 * bound:+.1f} excluded)"
    assert said in lead
    assert "Where training ends (last epoch (secondary)), the largest gap is" in lead and "+7.0 points, holds" in lead


def test_the_conclusion_names_secondary_and_optimistic_families_as_such():
    from mulreg.report import verdicts

    lines = verdicts.conclusion(_two_rule_verdict(), "Confirmation", 40)
    text = "\n".join(lines)
    assert "best test-accuracy epoch (optimistic)" in text and "last epoch (secondary)" in text
    assert "not across the 2 rules" in text and "never as the verdict" in text
    assert lines[1].startswith("Primary rule (best validation-loss epoch (primary)), Holm-corrected over the 2")
