"""Replication 3's design checks and prevent-or-delay statistics against values worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mulreg.config import ConfigError
from mulreg.results import design


def test_an_exact_tests_floor_is_two_to_the_one_minus_n():
    assert design.smallest_p("exact sign-flip permutation", 5) == pytest.approx(0.0625)  # replication 2's B8
    assert design.smallest_p("exact sign test", 8) == pytest.approx(2 / 256)
    assert design.smallest_p("paired t", 5) == 0.0


def test_a_design_whose_floor_is_above_its_holm_threshold_is_refused_naming_the_hypothesis():
    hyp = pd.DataFrame({"id": ["B7", "B8"], "test": ["paired t", "exact sign-flip permutation"], "n": [5, 5],
                        "family": ["B", "B"]})
    with pytest.raises(ConfigError, match=r"B8 \(exact sign-flip permutation, n 5: smallest p 0.0625 ≥ 0.025\)"):
        design.check_resolvable(hyp)
    fine = design.check_resolvable(hyp.assign(n=[5, 7]))  # 2/128 = 0.0156 < 0.05/2
    assert fine["threshold"].tolist() == [0.025, 0.025] and fine["floor"].iloc[1] == pytest.approx(1 / 64)


def test_paired_t_power_matches_the_normal_approximation_for_a_large_n():
    """n 400, d = 0.2 (effect/sd): power ≈ Φ(0.2·√400 − 1.96) = Φ(2.04) ≈ 0.979 (the t and normal agree)."""
    assert design.paired_t_power(0.2, 1.0, 400, 0.05) == pytest.approx(0.979, abs=0.003)
    assert design.paired_t_power(0.0, 1.0, 6, 0.05) == pytest.approx(0.05, abs=1e-6)  # the level, under the null


@pytest.mark.parametrize("shift", [12.6, 17.2, -20.0])
def test_paired_t_power_is_one_for_a_very_large_effect_either_way(shift):
    """n 8: a shift of 12.6 standard errors made scipy's nct.cdf return NaN in its lower tail (measured
    effects of replication 1 did, e.g. B7's rank gap 58 with sd 9.5)."""
    assert design.paired_t_power(shift / math.sqrt(8), 1.0, 8, 0.05 / 6) == pytest.approx(1.0, abs=1e-6)


def test_the_memorisation_epoch_is_the_first_above_half_after_the_escape_or_censored_at_the_horizon():
    """Before it leaves chance level (training accuracy first above 0.55 at epoch 2) a network guesses and fits
    about half of any labels: epoch 1's 0.52 is not memorisation (the registered wording read it as such, and
    the pilot's every run at noise 0.2 'memorised' at epoch 1). A history that ends before the horizon (a
    diverged run) is censored at the horizon, not at its last epoch; a run that never escapes never memorises."""
    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "train_acc": [0.5, 0.6, 0.7, 0.8, 0.9],
                            "train_acc_flipped": [0.52, 0.4, 0.5, 0.51, 0.9]})
    assert design.memorisation_epoch(history, 600) == (4, False)  # 0.5 is not more than half
    assert design.memorisation_epoch(history.iloc[:3], 600) == (600, True)
    assert design.memorisation_epoch(history.assign(train_acc=0.55), 600) == (600, True)  # never above 0.55
    assert design.memorisation_epoch(history, 600, margin=0.25) == (5, False)  # escapes at epoch 4 (0.8 > 0.75)


def test_the_authors_stop_is_censored_only_where_the_rule_never_fired():
    """Patience 2: the loss last improves at epoch 2, so the rule fires at epoch 4; cut at epoch 3 it has
    not fired (censored, read at 3); a non-finite loss at the last epoch stops there (not censored)."""
    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "val_loss": [1.0, 0.5, 0.6, 0.6, 0.7]})
    assert design.authors_stop(history, 2) == (4, False)
    assert design.authors_stop(history.iloc[:3], 2) == (3, True)
    assert design.authors_stop(history.iloc[:4], 2) == (4, False)  # fires exactly at the last epoch
    diverged = history.iloc[:3].assign(val_loss=[1.0, 0.5, math.nan])
    assert design.authors_stop(diverged, 2) == (3, False)


def test_the_delay_test_is_the_exact_sign_test_on_the_pairs_that_differ():
    """6 seeds: 5 later under mul (one of them censored), one tie: p = 2 · 2⁻⁵ = 0.0625."""
    mul = pd.Series([300, 250, 1000, 400, 120, 90], index=range(6))
    none = pd.Series([100, 110, 95, 130, 100, 90], index=range(6))
    out = design.delay_test(mul, none)
    assert (out["n"], out["later"], out["differ"]) == (6, 5, 5) and out["p"] == pytest.approx(0.0625)
    assert out["median"] == pytest.approx((140 + 200) / 2)  # differences 200, 140, 905, 270, 20, 0
    assert math.isnan(design.delay_test(mul.iloc[:0], none.iloc[:0])["median"])


def test_the_pilots_stops_and_the_registered_cost_rule():
    """Two pilot runs of 6 epochs, patience 2: one whose validation loss last improves at epoch 2 stops at 4;
    one still improving at epoch 5 is censored. Cost: 2 seeds × (4 + 2,000 censored + 10 horizon × 2 arms)
    epochs × 3 s / 2 workers."""
    runs = pd.DataFrame({"key": ["a", "b"], "penalty": ["sum", "none"], "label_noise": [0.0, 0.0], "seed": [1, 1],
                         "train_images_per_second": [100 / 3, 100 / 3]})  # 3 s an epoch of 100 images
    hist = pd.DataFrame({"key": ["a"] * 6 + ["b"] * 6, "epoch": list(range(1, 7)) * 2,
                         "val_loss": [1.0, 0.5, 0.6, 0.6, 0.7, 0.8] + [1.0, 0.9, 0.8, 0.7, 0.6, 0.6]})
    stops = design.pilot_stops(runs, hist, train_images=100, patience=2).set_index("penalty")
    assert (stops.loc["sum", "stop"], stops.loc["sum", "censored"]) == (4, False)
    assert stops.loc["none", "censored"] and stops.loc["none", "seconds_per_epoch"] == pytest.approx(3.0)
    hours = design.predicted_hours(stops.reset_index(), [("sum", 0.0), ("none", 0.0), ("mul", 0.2), ("none", 0.2)],
                                   seeds=2, horizon=10)
    assert hours == pytest.approx(2 * (4 + 2000 + 10 + 10) * 3.0 / 2 / 3600)


def pilot_table(seconds_per_epoch: float) -> pd.DataFrame:
    """Every arm of the design stopping at epoch 300, the multiplicative one at noise 0.2 at 400."""
    arms = [("none", 0.0), ("sum", 0.0), ("mul", 0.0), ("sum", 0.2), ("none", 0.2), ("mul", 0.2)]
    return pd.DataFrame([{"penalty": p, "label_noise": nu, "seed": 1, "stop": 400 if (p, nu) == ("mul", 0.2) else 300,
                          "censored": False, "seconds_per_epoch": seconds_per_epoch} for p, nu in arms])


@pytest.mark.parametrize(("seconds", "horizon"), [(2.0, 1000), (3.0, 900), (5.0, 600)])
def test_the_registered_horizon_is_the_longest_within_ten_hours_and_never_below_600(seconds, horizon):
    """8 seeds × (4 stopping arms × 300 + 2 arms × H) epochs × t / 2 workers: at t = 2 s, H = 1,000 costs
    7.1 h; at t = 3 s it costs 10.7 h and H = 900 exactly 10.0 h; at t = 5 s even H = 600 costs 13.3 h."""
    assert design.choose_horizon(pilot_table(seconds), seeds=8) == horizon


def test_an_extra_is_taken_in_its_order_only_while_the_design_stays_within_ten_hours():
    """At t = 2 s the design costs 8 × 3,200 × 2 / 7,200 = 7.11 h. Noise 0.1 has no pilot run, so its three
    arms are priced at 2,000 epochs: + 13.33 h, skipped; multiplicative 5e-7 stops where the pilot's
    multiplicative arm at 0.2 did (400): + 0.89 h, taken."""
    hours = design.extras_that_fit(pilot_table(2.0), seeds=8)
    assert hours["noise 0.1"] == pytest.approx(7.1111 + 13.3333, abs=1e-3)
    assert hours["multiplicative 5e-7 at noise 0.2"] == pytest.approx(8.0, abs=1e-3)
