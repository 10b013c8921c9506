"""Fig. 1's claims tested run against run, as pre-registered (docs/PREREGISTRATION.md).

For each epoch rule (`mulreg.core.epochs.RULES`) each penalty has one accuracy per seed: in a selection
stage, that of the λ `mulreg.engine.selection` chose (on validation, or as the paper selects for the
rules that read the test set); in a confirmation stage, that of the one λ per penalty its runs were
trained with, no run discarded (`confirmed=True`). Two penalties are paired by seed (same init,
data order and flipped labels). The claims (paper, Fig. 1):

- mul beats add, and mul beats none, at each noise level: d_s = acc(mul, s) − acc(other, s);
- the gap grows with noise: d_s(highest noise) − d_s(lowest noise), per seed.

Each claim gets its 95 % t interval, a two-sided paired t-test, the exact paired sign-flip
permutation test, Holm's adjustment over the claims of its rule (one family per rule), an outcome
and the smallest gap the test could resolve at its n (`resolvable_gap`). The outcome is decided
by the Holm-adjusted t p (the permutation p where every difference is equal and t is undefined):
*holds* below `ALPHA` with a positive mean, *reversed* with a negative one, otherwise *not
resolved*; fewer than `MIN_PAIRS` pairs are *not resolved* whatever they show.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from mulreg.core.epochs import CHANCE, RULES
from mulreg.engine.selection import chosen_runs, select
from mulreg.protocols import EXCLUDED, PENALTY_NAMES, Penalty
from mulreg.results import registry

LEVEL = 0.95  # of every t interval
ALPHA = 0.05  # family-wise, per rule (Holm)
MIN_PAIRS = 3  # fewer pairs resolve nothing
POWER = 0.80  # of `resolvable_gap`
COMPARED = ((Penalty.MUL, Penalty.SUM), (Penalty.MUL, Penalty.NONE))  # (penalty, the one it is claimed to beat)


# ---- one set of paired differences
def interval(diffs: Sequence[float], level: float = LEVEL) -> dict:
    """Mean of paired differences with its two-sided t interval: n, mean, sd, low, high (NaN
    bounds below 2 pairs; equal bounds when every difference is equal)."""
    d = _finite(diffs)
    n = len(d)
    mean = d.mean() if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan}
    sd = d.std(ddof=1)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def t_pvalue(diffs: Sequence[float]) -> float:
    """Two-sided paired t-test of mean 0; NaN below 2 pairs or when every difference is equal."""
    d = _finite(diffs)
    if len(d) < 2 or np.ptp(d) == 0:
        return math.nan
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def permutation_pvalue(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip test: the share of the 2ⁿ sign assignments whose |mean| is at least
    the observed one (under no difference each d_s is as likely to have either sign)."""
    d = _finite(diffs)
    if not len(d):
        return math.nan
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    flipped = np.abs((signs * d).mean(axis=1))
    return float(np.mean(flipped >= observed - 1e-12))


def smallest_permutation_p(n: int) -> float:
    """The smallest two-sided p the exact sign-flip test can give with `n` pairs: 2 of the 2ⁿ sign
    assignments (all +, all −) reach the observed |mean| when every difference is equal."""
    return 2 / 2 ** n


def holm(pvalues: Sequence[float], family: int | None = None) -> np.ndarray:
    """Holm's step-down adjustment of the finite p values among `pvalues` (NaN stays NaN):
    sorted ascending, p_(i) × (m − i + 1), made monotone, capped at 1. m is the registered
    `family` size (every hypothesis registered in the family, tested or not; default: those tested)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested) if family is None else family
    if m < len(tested):
        raise ValueError(f"holm: {len(tested)} p values tested in a family registered with {m} hypotheses")
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def resolvable_gap(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided paired t-test at level `alpha` detects with
    probability `power`, given the differences' sd and n (non-central t); NaN when undefined."""
    if n < 2 or not sd > 0:
        return math.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:  # nc: the gap in standard errors, sd/√n
        wrong_side = np.nan_to_num(stats.nct.cdf(-crit, df, nc))  # ≈ 0, NaN where it underflows
        return stats.nct.sf(crit, df, nc) + wrong_side - power

    top = 4 * crit + 10
    if not shortfall(top) > 0:
        return math.nan
    return float(optimize.brentq(shortfall, 0.0, top)) * sd / math.sqrt(n)


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> dict:
    """Exact McNemar test of two classifiers on the same images: `only_a` / `only_b` images only one
    of them classifies right, and the two-sided binomial p of that split (0.5 under no difference)."""
    a, b = np.asarray(right_a, bool), np.asarray(right_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_a": only_a, "only_b": only_b, "p": float(p)}


def test(diffs: Sequence[float], level: float = LEVEL) -> dict:
    """`interval`, the t and permutation p values, and `p`: the one the decision uses (t; the exact
    permutation p when every difference is equal), with the differences themselves."""
    d = _finite(diffs)
    ci = interval(d, level)
    p_t, p_perm = t_pvalue(d), permutation_pvalue(d)
    zero_sd = len(d) >= 2 and np.ptp(d) == 0
    p = math.nan if len(d) < MIN_PAIRS else (p_perm if zero_sd else p_t)
    return {**ci, "p_t": p_t, "p_perm": p_perm, "p": p, "zero_sd": zero_sd, "diffs": tuple(d.tolist())}


def decide(rows: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """One registered family of `test` rows (every hypothesis of the family, tested or not):
    Holm-adjusted p (`p_holm`, m = the family's size), `outcome`, and `resolvable`: the smallest
    gap resolvable at Holm's first-step level α/m (a rough guide: its sd has n − 1 degrees of freedom)."""
    rows = rows.copy()
    m = len(rows)
    rows["p_holm"] = holm(rows["p"].to_numpy(), m)
    rows["family"] = m
    rows["resolvable"] = [resolvable_gap(sd, n, alpha / max(m, 1)) for sd, n in zip(rows["sd"], rows["n"])]
    rows["outcome"] = [_outcome(r, alpha) for r in rows.to_dict("records")]
    return rows


def against(diffs: Sequence[float], claimed: float, level: float = LEVEL) -> dict:
    """What the data exclude about a claimed true difference: the one-sided paired test of "the
    true mean is at least `claimed`" (`p_excl` = P(T ≤ t), t = (mean − claimed)/(sd/√n); the exact
    one-sided sign-flip p where every difference is equal) and `excluded_above`: the one-sided
    `level` upper bound mean + t_level·sd/√n, above which every true mean is excluded (NaN when
    every difference is equal). Both NaN below `MIN_PAIRS` pairs."""
    d = _finite(diffs)
    n = len(d)
    if n < MIN_PAIRS:
        return {"p_excl": math.nan, "excluded_above": math.nan}
    shifted = d - claimed
    sd = d.std(ddof=1)
    if sd == 0:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        p = float(np.mean((signs * shifted).mean(axis=1) <= shifted.mean() + 1e-12))
        return {"p_excl": p, "excluded_above": math.nan}  # a t bound needs a spread
    se = sd / math.sqrt(n)
    p = float(stats.t.cdf(shifted.mean() / se, n - 1))
    return {"p_excl": p, "excluded_above": float(d.mean() + stats.t.ppf(level, n - 1) * se)}


def exclusion(table: pd.DataFrame, claimed: dict[tuple[str, str], float], alpha: float = ALPHA) -> pd.DataFrame:
    """For every row of `claims`' table with a published difference in `claimed` ({(claim, noise):
    points}, `paper_gaps`): `paper`, the one-sided test against it (`against`), Holm over the rows
    of each rule that have a published difference (their own family: `family_excl`), and `excludes`:
    whether the data exclude the published difference at family-wise `alpha`; `excluded_above` is the
    bound of each claim alone (one-sided `LEVEL`), `excluded_above_adjusted` the same bound at
    1 − alpha / (the family's size): every true gap above it is excluded for all the family's claims at once."""
    keyed = table.assign(paper=[claimed.get((c, n), math.nan) / 100 for c, n in zip(table["claim"], table["noise"])])
    keyed = keyed[keyed["paper"].notna()]
    parts = []
    for _, family in keyed.groupby("rule", sort=False):
        tested = pd.DataFrame([against(d, g) for d, g in zip(family["diffs"], family["paper"])], index=family.index)
        family = family.join(tested)
        family["family_excl"] = len(family)
        family["excluded_above_adjusted"] = [against(d, g, 1 - alpha / len(family))["excluded_above"]
                                             for d, g in zip(family["diffs"], family["paper"])]  # Bonferroni
        family["p_excl_holm"] = holm(family["p_excl"].to_numpy(), len(family))
        family["excludes"] = family["p_excl_holm"] < alpha
        parts.append(family)
    return pd.concat(parts) if parts else keyed


UNDECIDABLE = "cannot be decided at this n"  # the outcome of a test whose smallest attainable p is above α


def _outcome(r: dict, alpha: float) -> str:
    if r["n"] < MIN_PAIRS:
        return f"not resolved ({r['n']} pair{'s' * (r['n'] != 1)}: {_listed(r)})"
    if r["p_holm"] < alpha:
        return "holds" if r["mean"] > 0 else "reversed"
    floor = smallest_permutation_p(r["n"])
    if r["zero_sd"] and min(1.0, floor * r["family"]) >= alpha:  # Holm's first step: m × the floor
        return f"{UNDECIDABLE} (smallest attainable p {floor:.2g}, {min(1.0, floor * r['family']):.2g} after Holm)"
    return "not resolved"


def _listed(r: dict) -> str:
    """A thin row's differences for reading, in its claim's units (`registry.units`): points where
    they are accuracies or fits (fractions), else as they are (decades, ranks, epochs, ...)."""
    units = registry.units(r.get("id"))
    points = units == registry.POINTS
    listed = ", ".join(f"{100 * d:+.2f}" if points else f"{d:+.3g}" for d in r["diffs"])
    return f"{listed or 'none'} {units}"


MAGNITUDE_EXCLUDED = "direction holds, the paper's magnitude excluded"


def with_magnitude(outcome: str, excludes: bool) -> str:
    """A held claim whose published size the data exclude says both (the ledger's own outcome)."""
    return MAGNITUDE_EXCLUDED if outcome == "holds" and excludes else outcome


def _finite(diffs: Iterable[float]) -> np.ndarray:
    d = np.asarray(list(diffs), dtype=float)
    return d[~np.isnan(d)]


# ---- the claims of Fig. 1
def per_seed(runs: pd.DataFrame, rule: str, confirmed: bool = False) -> pd.DataFrame:
    """`rule`'s accuracy of each penalty, one column per penalty, indexed by (label_noise, seed):
    the selected λ's usable runs, or with `confirmed` every run as trained (`as_trained`)."""
    picked = as_trained(runs, rule) if confirmed else chosen_runs(runs, select(runs, rule))
    return picked.pivot_table(index=["label_noise", "seed"], columns="penalty", values=rule)


def as_trained(runs: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Confirmation runs as they are (docs/PREREGISTRATION.md, "Runs that fail"): none discarded,
    a failed run's undefined accuracy read as chance."""
    chance = runs["task"].map(CHANCE) if "task" in runs else CHANCE["binary"]
    failed = runs["stop_reason"].isin(EXCLUDED) & runs[rule].isna()  # undefined: after its divergence
    return runs.assign(**{rule: runs[rule].where(~failed, chance)})


def claims(runs: pd.DataFrame, rules: Sequence[str] | None = None, confirmed: bool = False,
           level: float = LEVEL, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (rule, claim): claim, noise, rule, `against` (the penalty the multiplicative one is
    set against), the columns of `test` and `decide` (accuracy differences as fractions). `rules`: the
    rule columns of `runs` to use (default: every rule of `mulreg.core.epochs.RULES` present); each rule
    is its own Holm family."""
    out = []
    for rule in [r for r in (rules or RULES) if r in runs]:
        wide = per_seed(runs, rule, confirmed)
        levels = sorted(wide.index.get_level_values("label_noise").unique())
        rows = []
        for a, b in COMPARED:
            if not {a, b} <= set(wide.columns):  # an arm without runs: its claims stay in the family, untested
                why = f"no runs of {' or '.join(PENALTY_NAMES[p] for p in (a, b) if p not in wide.columns)}"
                rows += [{"claim": f"{PENALTY_NAMES[a]} beats {PENALTY_NAMES[b]}", "noise": f"{v:g}", "rule": rule,
                          "against": b, **test([], level), "untested": why} for v in levels]
                rows.append({"claim": f"gap to {PENALTY_NAMES[b]} grows with noise", "rule": rule, "noise": "—",
                             "against": b, **test([], level), "untested": why})
                continue
            gap = wide[a] - wide[b]
            for noise in levels:
                rows.append({"claim": f"{PENALTY_NAMES[a]} beats {PENALTY_NAMES[b]}", "noise": f"{noise:g}",
                             "rule": rule, "against": b, **test(gap.xs(noise, level="label_noise").tolist(), level)})
            growth = {"claim": f"gap to {PENALTY_NAMES[b]} grows with noise", "rule": rule, "against": b}
            if len(levels) > 1:
                lo, hi = gap.xs(levels[0], level="label_noise"), gap.xs(levels[-1], level="label_noise")
                rows.append(growth | {"noise": f"{levels[-1]:g} vs {levels[0]:g}", **test((hi - lo).tolist(), level)})
            else:
                rows.append(growth | {"noise": "—", **test([], level), "untested": "one noise level"})
        if rows:
            family = decide(pd.DataFrame(rows), alpha)
            if "untested" in family:
                why = family["untested"].notna()
                family.loc[why, "outcome"] = [f"not tested ({reason})" for reason in family.loc[why, "untested"]]
                family = family.drop(columns="untested")
            out.append(family)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def cell(r) -> str:
    """One tested difference for reading: 'mean [low, high]: outcome (Holm p)' in points."""
    if r["outcome"].startswith("not tested"):
        return r["outcome"]
    if r["n"] == 0:
        return "no pairs"
    span = "" if math.isnan(r["low"]) else f" [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
    p = "" if math.isnan(r["p_holm"]) else f" (Holm p {r['p_holm']:.2g})"
    return f"{100 * r['mean']:+.1f}{span}: {r['outcome']}{p}"


def claims_wide(table: pd.DataFrame, paper: dict[tuple[str, str], float] | None = None,
                names: dict[str, str] | None = None) -> pd.DataFrame:
    """`claims` as one row per claim and one column per rule (named by `names`, default
    `mulreg.core.epochs.RULES`): 'mean [low, high] pp: outcome', and the paper's difference beside it
    when given as {(claim, noise): difference in points}."""
    wide = table.assign(cell=table.apply(cell, axis=1)).pivot(index=["claim", "noise"], columns="rule", values="cell")
    wide = wide[[m for m in RULES if m in wide.columns]].rename(columns=names or RULES)
    if paper:
        wide.insert(0, "paper (pp)", [f"{paper[k]:+.1f}" if k in paper else "—" for k in wide.index])
    order = {c: i for i, c in enumerate(dict.fromkeys(table["claim"]))}
    wide = wide.reset_index().sort_values(["claim", "noise"], key=lambda s: s.map(order) if s.name == "claim" else s)
    wide.columns.name = None
    return wide.reset_index(drop=True)


def paper_gaps(published: pd.DataFrame) -> dict[tuple[str, str], float]:
    """The paper's own differences for each claim, in points, keyed like `claims_wide`'s rows, from
    `mulreg.results.paper.published("fig1")`."""
    acc = published[published["quantity"] == "test_acc"].pivot(index="label_noise", columns="penalty", values="value")
    out = {}
    for a, b in COMPARED:
        gap = 100 * (acc[a] - acc[b])
        out |= {(f"{PENALTY_NAMES[a]} beats {PENALTY_NAMES[b]}", f"{noise:g}"): g for noise, g in gap.items()}
        grows = (f"gap to {PENALTY_NAMES[b]} grows with noise", f"{gap.index[-1]:g} vs {gap.index[0]:g}")
        out[grows] = gap.iloc[-1] - gap.iloc[0]
    return out


def mcnemar_table(runs: pd.DataFrame, right: dict[str, np.ndarray], epochs: dict[str, int]) -> pd.DataFrame:
    """Per seed, noise level and comparison of `COMPARED`: the exact McNemar test of the two runs'
    test images at their reported epochs. `right[key]`: epochs × images (bool, `Store.test_correct`);
    `epochs[key]`: the 1-based epoch the rule reads. Runs without stored images are left out."""
    rows = []
    by_cell = runs.set_index(["label_noise", "seed", "penalty"])["key"]
    for (noise, seed), keys in by_cell.groupby(level=["label_noise", "seed"]):
        keys = keys.droplevel(["label_noise", "seed"])
        for a, b in COMPARED:
            if not {a, b} <= set(keys.index) or right.get(keys[a]) is None or right.get(keys[b]) is None:
                continue
            ka, kb = keys[a], keys[b]
            test_ = mcnemar(right[ka][epochs[ka] - 1], right[kb][epochs[kb] - 1])
            rows.append({"comparison": f"{PENALTY_NAMES[a]} vs {PENALTY_NAMES[b]}", "label_noise": noise,
                         "seed": seed, "only the first right": test_["only_a"],
                         "only the second right": test_["only_b"], "McNemar p": test_["p"]})
    return pd.DataFrame(rows)
