"""The second replication's hypotheses beyond Fig. 1 (docs/PREREGISTRATION-2.md, family B), each
computed from stored runs and tested as registered:

- B1-B4 (Fig. 2): log10 Π‖W_i‖_F, additive over multiplicative and none over additive, paired by seed;
- B5-B6 (Fig. 2, §5): the fraction of flipped training labels fitted, additive and none over multiplicative;
- B7-B8 (Table 1): effective rank of conv4 and fc1, additive over multiplicative;
- B9-B10 (§5): Spearman ρ(test loss, log Π) − ρ(test loss, log Σ) across runs (Williams' t);
- B11 (Fig. 3): filter-normalised sharpness, additive over multiplicative;
- B12-B13 (§6): the multiplicative lead at init scale 0.2 over that at the larger scale;
- B14 (issue 30): the λ window, multiplicative wider than additive (exact sign test).

Every row has the columns of `mulreg.results.claims.test`, so `claims.decide` applies Holm over the
registered family of `FAMILY_B` and the decision rule of the pre-registration.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import stats

from mulreg.core.epochs import HEADLINE
from mulreg.protocols import EXCLUDED, PENALTY_NAMES, Penalty
from mulreg.results import claims, registry

FAMILY_B = 14  # registered hypotheses of family B
WINDOW_FIT = 0.5  # a λ is in the window if its run fits at most this share of the flipped training labels
MIN_AFTER_ESCAPE = 90  # the corrected window's minimum epochs after escape: the registered horizon (issue 38)
POINTS_PER_DECADE = 3  # the grid's 1, 2, 5 steps
EQUAL_DIFFERENCES = "exact permutation (every difference equal)"  # the registered test where sd is 0
SHARPNESS_RADIUS = 0.25
SHARPNESS_DIRECTIONS = (0, 1, 2)
SHARPNESS_IMAGES = 500
PAPER_B = registry.paper_values("B")  # Fig. 2's "10×" (1 decade), Table 1's rank gaps 128 − 47 and 256 − 2
MUL, SUM, NONE = Penalty.MUL.value, Penalty.SUM.value, Penalty.NONE.value


# ---- per-seed values
def per_seed(runs: pd.DataFrame, column: str, noise: float) -> pd.DataFrame:
    """`column` of each run at label noise `noise`, one row per seed, one column per penalty."""
    at = runs[np.isclose(runs["label_noise"], noise)]
    return at.pivot_table(index="seed", columns="penalty", values=column)


def paired(wide: pd.DataFrame, a: str, b: str) -> list[float]:
    if not {a, b} <= set(wide.columns):
        return []
    return (wide[a] - wide[b]).dropna().tolist()


def registered_row(hid: str, result: dict) -> dict:
    """Hypothesis `hid` as the claims table registers it (`registry`), with its test's `result`."""
    c = registry.claims().loc[hid]
    decided_by = EQUAL_DIFFERENCES if result.get("zero_sd") else c["test"]  # the p that `claims.test` used
    return {"id": hid, "claim": c["claim"], "noise": c["noise"], "statistic": c["statistic"], "test": decided_by,
            **result}


# ---- the tests that are not a paired t-test
def williams(x: np.ndarray, y: np.ndarray, z: np.ndarray, ranks: bool = True) -> dict:
    """Williams' t-test of ρ(x, y) = ρ(x, z) for two dependent correlations sharing x (Spearman's,
    as Pearson's on ranks, unless `ranks` is False):
    t = (r_xy − r_xz)·√[(n−1)(1+r_yz) / (2(n−1)/(n−3)·|R| + r̄²(1−r_yz)³)], df = n − 3.
    Exact in level for Pearson's r on normal data; on ranks it is somewhat liberal at small n
    (about 7 % at α 0.05, n 15: tests/test_replication.py)."""
    r = np.corrcoef([stats.rankdata(v) for v in (x, y, z)] if ranks else [x, y, z])
    r12, r13, r23 = r[0, 1], r[0, 2], r[1, 2]
    n = len(x)
    det = 1 - r12 ** 2 - r13 ** 2 - r23 ** 2 + 2 * r12 * r13 * r23
    mean_r = (r12 + r13) / 2
    t = (r12 - r13) * math.sqrt((n - 1) * (1 + r23) / (2 * (n - 1) / (n - 3) * det + mean_r ** 2 * (1 - r23) ** 3))
    p = float(2 * stats.t.sf(abs(t), n - 3))
    return {"n": n, "mean": r12 - r13, "sd": math.nan, "low": math.nan, "high": math.nan, "p_t": p,
            "p_perm": math.nan, "p": p, "zero_sd": False, "diffs": (), "rho_product": r12, "rho_sum": r13}


BOOTSTRAP_DRAWS = 2000  # resamples of the seeds in B9/B10's corrected test
NULL_DRAWS = 1000  # simulated replications of the 3 × 5 layout for a test's level under the null
NULL_BOOTSTRAP_LAYOUTS = 150  # simulated layouts for the bootstrap's own level (each a bootstrap of its own): seconds
NULL_BOOTSTRAP_DRAWS = 200  # resamples per simulated layout
RNG_SEED = 38  # of the bootstrap and of the null simulation (issue 38): the same numbers every time


def spearman_gap(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """ρ(x, y) − ρ(x, z), Spearman's (B9/B10's statistic)."""
    r = np.corrcoef([stats.rankdata(v) for v in (x, y, z)])
    return float(r[0, 1] - r[0, 2])


def seed_bootstrap(groups: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                   draws: int = BOOTSTRAP_DRAWS, rng: np.random.Generator | None = None) -> dict:
    """B9/B10 corrected to their unit, the seed: the percentile bootstrap of `spearman_gap` over seeds,
    each draw taking the seeds with replacement and every penalty's run of each (`groups`: one seed
    label per run), so the penalty groups stay whole. p: twice the smaller tail share at 0."""
    rng = rng or np.random.default_rng(RNG_SEED)
    seeds = np.unique(groups)
    rows = [np.flatnonzero(groups == s) for s in seeds]
    boots = np.empty(draws)
    for b in range(draws):
        idx = np.concatenate([rows[i] for i in rng.integers(len(seeds), size=len(seeds))])
        boots[b] = spearman_gap(x[idx], y[idx], z[idx]) if np.ptp(x[idx]) > 0 else math.nan
    boots = boots[~np.isnan(boots)]
    p = min(1.0, 2 * min(np.mean(boots <= 0), np.mean(boots >= 0)))
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"n": len(seeds), "mean": spearman_gap(x, y, z), "low": float(low), "high": float(high), "p": float(p)}


def null_rejections(test, groups: int = 3, per_group: int = 5, draws: int = NULL_DRAWS, alpha: float = 0.05,
                    rng: np.random.Generator | None = None) -> float:
    """The share of simulated layouts (`groups` penalties × `per_group` seeds) in which `test(seed
    labels, x, y, z) → p` rejects at `alpha` under the null: a group effect shared equally by x, y and
    z (so ρ(x, y) = ρ(x, z)) plus independent per-run noise of the same variance."""
    rng = rng or np.random.default_rng(RNG_SEED)
    seeds = np.tile(np.arange(per_group), groups)
    rejected = 0
    for _ in range(draws):
        effect = np.repeat(rng.normal(size=groups), per_group)
        x, y, z = (effect + rng.normal(size=groups * per_group) for _ in range(3))
        rejected += test(seeds, x, y, z) < alpha
    return rejected / draws


@functools.lru_cache
def null_levels(groups: int, per_group: int, alpha: float = 0.05) -> tuple[float, float]:
    """The simulated level (`null_rejections`) of B9/B10's registered test, Williams' t, and of its correction,
    the seed bootstrap, in a layout of `groups` penalties × `per_group` seeds: the liberal-level note (issue 38)."""
    registered = null_rejections(lambda g, x, y, z: williams(x, y, z)["p"], groups, per_group, alpha=alpha)
    corrected = null_rejections(lambda g, x, y, z: seed_bootstrap(g, x, y, z, NULL_BOOTSTRAP_DRAWS)["p"],
                                groups, per_group, NULL_BOOTSTRAP_LAYOUTS, alpha)
    return registered, corrected


def window(selection: pd.DataFrame, min_after_escape: int | None = None) -> pd.DataFrame:
    """The λ window of each penalty and seed (noise of the selection stage): one row per run with
    its grid `position` (0 = weakest), `learned`, the flipped labels it fits and `in_window`. With
    `min_after_escape` (the corrected variant, issue 38; the registered rule has none), a run counts as
    learned only if it trained at least that many epochs after it left chance."""
    runs = selection[selection["penalty"].isin([SUM, MUL])].copy()
    runs["position"] = runs.groupby("penalty")["lam"].rank(method="dense").astype(int) - 1
    runs["learned"] = ~runs["stop_reason"].isin(EXCLUDED)
    if min_after_escape is not None:
        runs["learned"] &= (runs["epochs"] - runs["escape_epoch"]) >= min_after_escape
    runs["in_window"] = runs["learned"] & (runs["train_acc_flipped"] <= WINDOW_FIT)
    return runs.sort_values(["penalty", "seed", "lam"]).reset_index(drop=True)


def window_widths(win: pd.DataFrame) -> pd.DataFrame:
    """Per seed and penalty: the window's width in decades and whether it reaches a grid end."""
    last = win.groupby("penalty")["position"].transform("max")
    edge = win["in_window"] & ((win["position"] == 0) | (win["position"] == last))
    out = win.assign(edge=edge).groupby(["seed", "penalty"]).agg(points=("in_window", "sum"), censored=("edge", "any"))
    return out.assign(width=out["points"] / POINTS_PER_DECADE).reset_index()


def grid_ends(selection: pd.DataFrame | None, plan: dict | None) -> list[str]:
    """Each penalty whose planned λ is the weakest or strongest of its selection grid, in words."""
    if selection is None or plan is None or not len(selection):
        return []
    out = []
    for pen, by_noise in plan["lam"].items():
        grid = sorted(selection.loc[selection["penalty"] == pen, "lam"].unique())
        for lam in sorted(set(by_noise.values())):
            if grid and lam in (grid[0], grid[-1]):
                end = "weakest" if lam == grid[0] else "strongest"
                out.append(f"{PENALTY_NAMES[Penalty(pen)]} λ {lam:.4g} is the {end} of its grid")
    return out


def window_test(win: pd.DataFrame) -> dict:
    """B14: the exact two-sided sign test on the (seed, position) pairs whose two runs disagree
    about being in their window, beside the t interval of the per-seed width differences."""
    both = win.pivot_table(index=["seed", "position"], columns="penalty", values="in_window", aggfunc="first")
    if not {SUM, MUL} <= set(both.columns):
        return claims.test([])
    only_mul = int((both[MUL].astype(bool) & ~both[SUM].astype(bool)).sum())
    only_sum = int((both[SUM].astype(bool) & ~both[MUL].astype(bool)).sum())
    per_seed_widths = window_widths(win)
    widths = per_seed_widths.pivot(index="seed", columns="penalty", values="width")
    result = claims.test(paired(widths, MUL, SUM))
    p = stats.binomtest(only_mul, only_mul + only_sum, 0.5).pvalue if only_mul + only_sum else 1.0
    censored = per_seed_widths[per_seed_widths["penalty"] == MUL]["censored"]
    return result | {"p": float(p), "p_perm": math.nan, "only_mul": only_mul, "only_sum": only_sum,
                     "p_seed": result["p"], "censored": f"{int(censored.sum())} of {len(censored)}",
                     "registered_as": f"{only_mul + only_sum} (seed, position) pairs counted as independent",
                     "how_corrected": f"paired t on the {result['n']} seeds' widths",
                     "widest": (win["position"].max() + 1) / POINTS_PER_DECADE}


# ---- family B
def family_b(confirmation: pd.DataFrame, selection: pd.DataFrame, sharp: pd.DataFrame | None = None,
             larger_scale: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every hypothesis of family B that the runs given can test, and the rest as 'not tested',
    decided together with Holm over `FAMILY_B`. `confirmation`: the replication's confirmation runs
    (with `HEADLINE` read); `selection`: its selection stage; `sharp`: sharpness per seed (columns
    by penalty, noise 0.2); `larger_scale`: the init-scale arm's confirmation runs."""
    log_pi = confirmation.assign(log_product=np.log10(confirmation["norm_product"]))
    rows = []
    for i, noise in enumerate((0.0, 0.2)):
        wide = per_seed(log_pi, "log_product", noise)
        rows.append(registered_row(f"B{1 + i}", claims.test(paired(wide, SUM, MUL))))
        rows.append(registered_row(f"B{3 + i}", claims.test(paired(wide, NONE, SUM))))
    # no confirmation run is discarded (docs/PREREGISTRATION-2.md): a diverged run's undefined fit enters as
    # chance, like its accuracy; its norms and ranks are undefined, so its pair leaves B1-B4 and B7-B8 (n says so)
    fit = per_seed(claims.as_trained(confirmation, "train_acc_flipped"), "train_acc_flipped", 0.2)
    rows += [registered_row(hid, claims.test(paired(fit, other, MUL))) for hid, other in (("B5", SUM), ("B6", NONE))]
    for hid, layer in (("B7", "conv4"), ("B8", "fc1")):
        rows.append(registered_row(hid, claims.test(paired(per_seed(confirmation, f"rank_{layer}", 0.0), SUM, MUL))))
    rows += [_correlation_row(f"B{9 + i}", confirmation, noise) for i, noise in enumerate((0.0, 0.2))]
    rows.append(registered_row("B11", claims.test(paired(sharp, SUM, MUL) if sharp is not None else [])))
    rows += _init_scale_rows(confirmation, larger_scale)
    rows.append(registered_row("B14", window_test(window(selection))))
    rows.sort(key=lambda r: int(r["id"][1:]))
    table = claims.decide(pd.DataFrame(rows))
    untested = table["p"].isna()
    table.loc[untested & table["n"].eq(0), "outcome"] = "not tested (no runs)"
    return _one_observation(_b14_at_the_seed(table))


def _b14_at_the_seed(table: pd.DataFrame) -> pd.DataFrame:
    """B14 and B9/B10 as registered and, beside them, corrected to the registration's unit, the seed
    (issue 38): B14 by the paired t-test of the per-seed window widths instead of the sign test over
    (seed, position) pairs, B9/B10 by a bootstrap over seeds instead of Williams' t on runs taken as
    independent; each decided by Holm over the same family (`p_corrected`, `p_holm_corrected`,
    `outcome_corrected`), the registered numbers left as they are."""
    if "p_seed" not in table:
        return table
    at = table["p_seed"].notna()
    corrected = claims.decide(table.assign(p=table["p_seed"].where(at, table["p"])))
    table.loc[at, "p_corrected"] = corrected.loc[at, "p"]
    table.loc[at, "p_holm_corrected"] = corrected.loc[at, "p_holm"]
    table.loc[at, "outcome_corrected"] = corrected.loc[at, "outcome"]
    return table


ONE_OBSERVATION = "the same observation as B5"


def _one_observation(table: pd.DataFrame) -> pd.DataFrame:
    """B6 is B5 again where their differences coincide (additive and none fitting the same share of
    flipped labels in every seed): said once, so one observation is not counted as two outcomes."""
    rows = table.set_index("id")
    if {"B5", "B6"} <= set(rows.index) and rows.at["B5", "n"] and rows.at["B5", "diffs"] == rows.at["B6", "diffs"]:
        table.loc[table["id"] == "B6", "outcome"] = f"{ONE_OBSERVATION} (counted there once)"
    return table


def _correlation_row(hid: str, runs: pd.DataFrame, noise: float) -> dict:
    at = runs[np.isclose(runs["label_noise"], noise)].dropna(subset=["test_loss", "norm_product", "norm_sq_sum"])
    if len(at) < 4:
        return registered_row(hid, claims.test([]))
    x, y, z = at["test_loss"].to_numpy(), np.log(at["norm_product"].to_numpy()), np.log(at["norm_sq_sum"].to_numpy())
    result = williams(x, y, z)
    corrected = seed_bootstrap(at["seed"].to_numpy(), x, y, z)
    groups = at["penalty"].nunique()
    level_registered, level_corrected = null_levels(groups, corrected["n"])
    return registered_row(hid, result | {
        "p_seed": corrected["p"], "seeds": corrected["n"],
        "how_corrected": f"bootstrap over the {corrected['n']} seeds keeping the penalty groups ({BOOTSTRAP_DRAWS} "
                         f"draws; 95 % interval {corrected['low']:+.2f} to {corrected['high']:+.2f}; simulated level "
                         f"at α 0.05 in this {groups} × {corrected['n']} layout {100 * level_corrected:.0f} %, "
                         f"Williams' t {100 * level_registered:.0f} %)"})


def _init_scale_rows(confirmation: pd.DataFrame, larger: pd.DataFrame | None) -> list[dict]:
    rows = []
    small = per_seed(claims.as_trained(confirmation, HEADLINE), HEADLINE, 0.2)
    big = per_seed(claims.as_trained(larger, HEADLINE), HEADLINE, 0.2) if larger is not None else None
    for hid, other in (("B12", SUM), ("B13", NONE)):
        both = big is not None and {MUL, other} <= set(big.columns) and {MUL, other} <= set(small.columns)
        diffs = (small[MUL] - small[other] - (big[MUL] - big[other])).dropna().tolist() if both else []
        rows.append(registered_row(hid, claims.test(diffs)))
    return rows


def excluded_b(table: pd.DataFrame) -> pd.DataFrame:
    """Family C for family B: the rows with a published number (`PAPER_B`), the one-sided test of
    'the true difference is at least the paper's', Holm over them, and the excluded bound."""
    rows = table[table["id"].isin(list(PAPER_B))].copy()
    tested = pd.DataFrame([claims.against(d, PAPER_B[i]) for i, d in zip(rows["id"], rows["diffs"])], index=rows.index)
    rows = rows.join(tested).assign(paper=[PAPER_B[i] for i in rows["id"]], family_excl=len(PAPER_B))
    rows["p_excl_holm"] = claims.holm(rows["p_excl"].to_numpy(), len(PAPER_B))
    rows["excludes"] = rows["p_excl_holm"] < claims.ALPHA
    return rows


def family_c(fig1: pd.DataFrame, b: pd.DataFrame, rule: str = HEADLINE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Family C as registered, one family per rule: under `rule` (the one family B is read under),
    Fig. 1's exclusion rows (`claims.exclusion`) and family B's (`excluded_b`) are one Holm family;
    the other rules keep Fig. 1's rows alone. Returns both tables with `p_excl_holm`, `excludes`,
    `family_excl` and the family's Bonferroni bound (`excluded_above_adjusted`) recomputed."""
    at = fig1.index[(fig1["rule"] == rule) & fig1["p_excl"].notna()] if "p_excl" in fig1 else fig1.index[:0]
    m = len(at) + len(b)
    published = fig1.loc[at, "p_excl"].to_numpy(float) if len(at) else np.array([])
    joint = claims.holm(np.concatenate([published, b["p_excl"].to_numpy(float)]), m)
    level = 1 - claims.ALPHA / m
    b = b.assign(p_excl_holm=joint[len(at):], family_excl=m, excludes=joint[len(at):] < claims.ALPHA,
                 excluded_above_adjusted=[claims.against(d, PAPER_B[i], level)["excluded_above"]
                                          for i, d in zip(b["id"], b["diffs"])])
    fig1 = fig1.copy()
    for j, row in enumerate(at):
        fig1.loc[row, ["p_excl_holm", "family_excl", "excludes"]] = [joint[j], m, joint[j] < claims.ALPHA]
        fig1.loc[row, "excluded_above_adjusted"] = claims.against(fig1.at[row, "diffs"], fig1.at[row, "paper"],
                                                                  level)["excluded_above"]
    return fig1, b
