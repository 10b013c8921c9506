"""Replication 3's design checks and its prevent-or-delay statistics (docs/PREREGISTRATION-3.md).

- `smallest_p`: the smallest p a test can give at n pairs, whatever the data (an exact test's floor);
- `check_resolvable`: a registered family is refused when a test's floor is not below Holm's first
  threshold α/m, so that no hypothesis is undecidable by design (replication 2's B8: 0.0625 at n = 5);
- `paired_t_power`: the power of a two-sided paired t-test for an effect and sd measured earlier;
- `memorisation_epoch`: the first epoch after a run leaves chance level that it fits more than half of
  its flipped training labels, censored at the horizon;
- `authors_stop`: the epoch of the authors' stop, censored where it never fired;
- `delay_test`: multiplicative against no penalty, paired by seed, on those epochs (exact sign test).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from mulreg.config import ConfigError
from mulreg.core.epochs import CHANCE, authors_rule, escape_epoch
from mulreg.results import claims

MEMORISED = 0.5  # a run has memorised once it fits more than this share of its flipped training labels
CHANCE_MARGIN = 0.05  # RunConfig's chance_margin: a run has left chance level above chance + this (escape_epoch)
EXACT_TESTS = ("exact sign-flip permutation", "exact sign test")  # two-sided: floor 2 · 2⁻ⁿ
CONTINUOUS_TESTS = ("paired t", "Williams' t")  # no floor above 0


def smallest_p(test: str, n: int) -> float:
    """The smallest two-sided p `test` can reach with n pairs: 2 · 2⁻ⁿ for the exact tests on signs (every
    difference on one side), 0 for a t-test (n ≥ 2)."""
    if test in CONTINUOUS_TESTS:
        return 0.0 if n >= 2 else 1.0
    if test in EXACT_TESTS:
        return min(1.0, claims.smallest_permutation_p(n))
    raise ValueError(f"unknown test {test!r}; known: {CONTINUOUS_TESTS + EXACT_TESTS}")


def check_resolvable(hypotheses: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """`hypotheses` (columns id, test, n, family) with each test's floor and Holm's first threshold α/m
    (m: its family's size); raises ConfigError naming every hypothesis whose floor is not below it."""
    m = hypotheses.groupby("family")["id"].transform("size")
    table = hypotheses.assign(floor=[smallest_p(t, n) for t, n in zip(hypotheses["test"], hypotheses["n"])],
                              threshold=alpha / m)
    blocked = table[table["floor"] >= table["threshold"]]
    if len(blocked):
        named = "; ".join(f"{r.id} ({r.test}, n {r.n}: smallest p {r.floor:.3g} ≥ {r.threshold:.3g})"
                          for r in blocked.itertuples())
        raise ConfigError(f"these hypotheses could not be decided whatever the data: {named}; raise n or use a "
                          "test without a floor")
    return table


def paired_t_power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level `alpha` for a true mean difference `effect`
    with per-pair sd `sd` (noncentral t, df n − 1)."""
    df = n - 1
    shift = effect / (sd / math.sqrt(n))
    critical = stats.t.ppf(1 - alpha / 2, df)
    # P(T > c) + P(T < −c); the second as P(−T > c) with the shift negated: scipy's nct.cdf returns NaN
    # far in its lower tail (shifts above about 12 at df 7)
    return float(stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift))


def memorisation_epoch(history: pd.DataFrame, horizon: int, share: float = MEMORISED, chance: float = CHANCE["binary"],
                       margin: float = CHANCE_MARGIN) -> tuple[int, bool]:
    """(the first epoch after the run leaves chance level, `escape_epoch`: its training accuracy first above
    `chance` + `margin`, whose flipped-label fit exceeds `share`, False), or (`horizon`, True) when none
    does: censored at the horizon H, also for a run whose history ends before it (a diverged run: its fit
    after the divergence is undefined and enters as chance, not above one half). Before the escape the
    network guesses, and a guess fits about half of any labels: its fit crosses one half by chance (the
    amendment of docs/PREREGISTRATION-3.md, note of 2026-12-06 night)."""
    escaped = escape_epoch(history, chance, margin)
    after = history[history["epoch"] > escaped]  # none when it never escaped (NaN)
    over = after.loc[after["train_acc_flipped"] > share, "epoch"]
    if len(over):
        return int(over.iloc[0]), False
    return horizon, True


def authors_stop(history: pd.DataFrame, patience: int) -> tuple[int, bool]:
    """(the epoch the authors' rule stops at, False), or (the last epoch, True) when it never fired within
    the recorded epochs: censored (a run read there is read at its last epoch, as registered)."""
    h = history.sort_values("epoch").reset_index(drop=True)
    beyond = pd.DataFrame({"epoch": [h["epoch"].iloc[-1] + 1], "val_loss": [math.inf]})  # stops every rule
    at = authors_rule(pd.concat([h[["epoch", "val_loss"]], beyond], ignore_index=True), patience)
    return int(h["epoch"].iloc[min(at, len(h) - 1)]), at == len(h)


def delay_test(mul: pd.Series, none: pd.Series) -> dict:
    """Multiplicative against no penalty on the memorisation epoch, paired by seed (index): the
    differences (a censored multiplicative epoch is a lower bound, so its sign is still known when it is
    above the other's), and the exact two-sided sign test on the pairs that differ."""
    pairs = pd.concat({"mul": mul, "none": none}, axis=1).dropna()
    diffs = pairs["mul"] - pairs["none"]
    later = int((diffs > 0).sum())
    differ = int((diffs != 0).sum())
    p = float(stats.binomtest(later, differ, 0.5).pvalue) if differ else 1.0
    return {"n": len(pairs), "later": later, "differ": differ, "median": float(diffs.median()) if len(diffs) else
            math.nan, "p": p}


PROTOCOL_EPOCHS = 2000  # the authors' cap: a stop the pilot did not see is predicted there
PAST_STOP = ("mul", "none")  # the arms trained past their stop, at `DELAY_NOISE`
DELAY_NOISE = 0.2
WORKERS = 2  # this host's cores: the registered cost is for two runs training side by side


def pilot_stops(runs: pd.DataFrame, hist: pd.DataFrame, train_images: int, patience: int = 200) -> pd.DataFrame:
    """Per pilot run: the epoch the authors' rule stops at (`authors_rule` with `patience`), `censored`
    when it never fired within the recorded epochs, and the seconds one epoch of its `train_images` took
    (its provenance's throughput, of the process that trained it last: right for a run resumed from a
    checkpoint too, whose wall time covers only that process's epochs)."""
    rows = []
    for run in runs.itertuples():
        stop, censored = authors_stop(hist[hist["key"] == run.key], patience)
        rows.append({"penalty": run.penalty, "label_noise": run.label_noise, "seed": run.seed, "stop": stop,
                     "censored": censored, "seconds_per_epoch": train_images / run.train_images_per_second})
    return pd.DataFrame(rows)


def predicted_hours(stops: pd.DataFrame, arms: list[tuple[str, float]], seeds: int, horizon: int,
                    workers: int = WORKERS) -> float:
    """The registered cost rule (docs/PREREGISTRATION-3.md): each (penalty, noise) arm's runs take its
    largest pilot stop (a censored one counts as `PROTOCOL_EPOCHS`), the arms trained past their stop take
    `horizon`; epochs × the pilot's median seconds per run-epoch, shared by `workers`."""
    epochs = 0
    for penalty, noise in arms:
        past_stop = penalty in PAST_STOP and noise == DELAY_NOISE
        epochs += seeds * (horizon if past_stop else stop_epochs(stops, penalty, noise))
    return hours_of(stops, epochs, workers)


def hours_of(stops: pd.DataFrame, epochs: int, workers: int = WORKERS) -> float:
    """`epochs` run-epochs in hours at the pilot's median seconds per run-epoch, shared by `workers`."""
    return epochs * float(stops["seconds_per_epoch"].median()) / workers / 3600


def stop_epochs(stops: pd.DataFrame, penalty: str, noise: float) -> int:
    """A stopping run's predicted epochs: its arm and noise level's largest pilot stop, `PROTOCOL_EPOCHS`
    where one was censored or the pilot has no such run."""
    mine = stops[(stops["penalty"] == penalty) & np.isclose(stops["label_noise"], noise)]
    return PROTOCOL_EPOCHS if mine["censored"].any() or mine.empty else int(mine["stop"].max())


BUDGET_HOURS = 10.0  # the registered aim for the whole design on this 2-core host
HORIZONS = range(1000, 599, -100)  # H: 1,000 where the budget allows, else the largest multiple of 100 ≥ 600
DESIGN_ARMS = [("none", 0.0), ("sum", 0.0), ("mul", 0.0), ("sum", 0.2), ("none", 0.2), ("mul", 0.2)]
# the extras in their registered order: noise 0.1 (three arms), then the paper's multiplicative 5e-7 at
# noise 0.2, a run that stops (priced as the multiplicative arm's stop at that noise)
EXTRAS = {"noise 0.1": [("none", 0.1), ("sum", 0.1), ("mul", 0.1)], "multiplicative 5e-7 at noise 0.2": [("mul", 0.2)]}


def choose_horizon(stops: pd.DataFrame, seeds: int) -> int:
    """The registered rule: the longest of `HORIZONS` whose whole design stays within `BUDGET_HOURS`, else
    the shortest (the cost then is what it is, stated)."""
    fitting = [h for h in HORIZONS if predicted_hours(stops, DESIGN_ARMS, seeds, h) <= BUDGET_HOURS]
    return fitting[0] if fitting else HORIZONS[-1]


def extras_that_fit(stops: pd.DataFrame, seeds: int) -> dict[str, float]:
    """Each extra, in its registered order, with the predicted hours of the design with it at H = 1,000;
    an extra is taken while that stays within `BUDGET_HOURS` (one that does not is skipped, the next tried)."""
    hours = predicted_hours(stops, DESIGN_ARMS, seeds, HORIZONS[0])
    out = {}
    for name, arms in EXTRAS.items():
        extra = hours_of(stops, sum(seeds * stop_epochs(stops, penalty, noise) for penalty, noise in arms))
        out[name] = hours + extra
        hours += extra if hours + extra <= BUDGET_HOURS else 0.0
    return out
