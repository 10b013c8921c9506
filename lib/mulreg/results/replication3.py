"""Replication 3's families (docs/PREREGISTRATION-3.md): the authors' protocol read at the model at
their stop (patience 200, not restored), computed from stored runs and tested as registered.

- family A: Fig. 1's six claims under the primary rule (the model at the stop: `test_acc_authors`
  read from each history, which for these runs is the stored model) and, secondary, the best
  validation-loss epoch;
- family B: B1, B2 (log10 Π), B5, B6 (flipped-label fit), B7, B8 (effective rank) of the model at the
  stop, Holm over 6; B7, B8 under `torch.linalg.matrix_rank`'s default tolerance beside them;
- family D: D1 (the multiplicative penalty memorises later than none) and D2 (it does not memorise by
  the horizon), on the runs trained past their stop, Holm over 2;
- at the horizon: multiplicative against no penalty at noise 0.2 (secondary, one claim).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from mulreg.core.epochs import HEADLINE, defined, with_rules
from mulreg.results import claims, design, registry, replication
from mulreg.results.replication import MUL, NONE, SUM, per_seed

PATIENCE = 200  # the authors' early stopping (docs/PAPER.md, "What the released code reports")
AUTHORS = "test_acc_authors"
LITERAL = "above_half_from"  # the first epoch above one half at all: the registered wording read literally
HORIZON = "test_acc_horizon"  # test accuracy at the last epoch trained: H for the runs trained past their stop
RULES = (AUTHORS, HEADLINE)  # the primary family first
NOISE = 0.2  # the prevent-or-delay arms' label noise
SEEDS = 8  # seeds 31-38 (docs/PREREGISTRATION-3.md: n chosen so that every exact test can decide)
REPORTED = "reported model"  # family B's rows: read off the model each run reports (here the one at the stop)
Table = pd.DataFrame | None  # a table, or None where a stage it needs is incomplete
FIRST_STEP = 0.05 / 6  # Holm's first threshold in a family of six: the power is stated against it


def lambda_note(configs: list) -> str:
    """Where this replication's λ come from, computed: each penalty's λ in its sweep (`configs`) beside
    the λ replication 2's first execution chose (which the registration took: `executions.csv`) and
    the λ its execution of record chose (the record's plan), naming any penalty where they differ."""
    from pathlib import Path

    from mulreg.results import analysis, executions

    words = executions.PENALTY_WORDS
    recorded = executions.recorded(2, "first").set_index("quantity")["value"]
    first = {pen: float(recorded[f"λ {word}"]) for pen, word in words.items()}
    plan = analysis.evidence().plan(Path(analysis.ledger_sweep("replication_file").store).name)
    ours = {pen: sorted({c.lam for c in configs if c.penalty == pen}) for pen in words}
    chose = {pen: executions.one_lambda(plan["lam"][pen]) if plan else math.nan for pen in words}

    def listed(values: dict) -> str:
        return ", ".join(f"{words[pen]} {values[pen]:.3g}" for pen in words)

    def origin(pen: str) -> str:
        at_first, at_record = ours[pen] == [first[pen]], ours[pen] == [chose[pen]]
        if at_first and (at_record or plan is None):
            return ""
        here, other = ("first execution", "record") if at_first else ("record", "first execution")
        if at_first or at_record:
            return f"the {words[pen]} arm is at the {here}'s λ, not at the {other}'s"
        return f"the {words[pen]} arm is at a λ of its own, neither execution's"

    said = (f"λ here: {listed({pen: ours[pen][0] for pen in words})}; replication 2's first execution chose "
            f"{listed(first)} (the registration took these), its execution of record "
            f"{listed(chose) if plan else 'is not in the record'}.")
    notes = "; ".join(note for note in map(origin, words) if note)
    return f"{said} {notes[0].upper() + notes[1:]}." if notes else f"{said} Here they agree."


def stored(specs: list, record_only: bool = False) -> tuple[Table, Table, list[str]]:
    """Both sweeps' runs (`read`, with the ranks under matrix_rank's tolerance) and their histories, from
    the local stores or the record (`analysis.stored_stages`), training nothing; (None, None, what is
    missing) unless every run of both is there."""
    from mulreg.results import analysis

    parts, hists, missing = [], [], []
    for spec in specs:
        done, lacking = analysis.stored_stages(spec, PATIENCE, record_only)
        missing += [f"{spec.store}: {line}" for line in lacking]
        if not lacking:
            parts.append(analysis.with_matrix_ranks(spec.store, done.selection))
            hists.append(analysis.histories(spec.store, parts[-1]))
    if missing:
        return None, None, missing
    hist = pd.concat(hists, ignore_index=True)
    return read(pd.concat(parts, ignore_index=True), hist), hist, []


def stored_with_past(specs: list, record_only: bool = False) -> tuple[Table, Table, list[str]]:
    """`stored`'s runs of both sweeps (None unless every run is there), the runs trained past their stop
    (the horizon sweep, the last of `specs`: read on their own as soon as that stage is complete, for
    family D reads no other run) and what is missing."""
    runs, _, missing = stored(specs, record_only)
    past = runs if runs is not None else stored(specs[-1:], record_only)[0]
    return runs, past, missing


def read(runs: pd.DataFrame, hist: pd.DataFrame) -> pd.DataFrame:
    """`runs` with every epoch rule read at the authors' patience, a run trained past its stop read on its
    history up to the stop (as the run that stopped there would be: the registration) with its test accuracy
    at the horizon apart (`test_acc_horizon`); each run's memorisation epoch over its whole history
    (`memorised_at`, and `censored` where the fit never exceeded one half) and `stop_censored` where the
    authors' rule never fired (the run is read at its last epoch)."""
    by_key = {key: h.sort_values("epoch") for key, h in hist.groupby("key")}
    stops = {key: design.authors_stop(h, PATIENCE) for key, h in by_key.items()}
    past = dict(zip(runs["key"], trained_past(runs)))
    to_stop = [h[h["epoch"] <= stops[key][0]] if past.get(key) else h for key, h in by_key.items()]
    out = with_rules(runs, pd.concat(to_stop, ignore_index=True) if to_stop else hist, PATIENCE)
    out[HORIZON] = [float(defined(by_key[key])["test_acc"].iloc[-1]) if key in by_key else math.nan
                    for key in out["key"]]
    memorised = [_memorisation(run, by_key.get(run["key"]), past[run["key"]]) for run in out.to_dict("records")]
    out["memorised_at"] = [epoch for epoch, _ in memorised]
    out["censored"] = [censored for _, censored in memorised]
    out[LITERAL] = [_above_half(by_key.get(key)) for key in out["key"]]
    out["stop_censored"] = [stops[key][1] if key in stops else True for key in out["key"]]
    return out


def trained_past(runs: pd.DataFrame) -> pd.Series:
    """Which of `runs` trained on past their stop (`train_past_stop`; none where the column is absent)."""
    if "train_past_stop" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["train_past_stop"].eq(True)


def _above_half(history: pd.DataFrame | None) -> float:
    """The first epoch whose flipped-label fit exceeds one half, before the escape too: the registered wording
    read literally, shown beside the amended reading (NaN where none does)."""
    if history is None:
        return math.nan
    over = history.loc[history["train_acc_flipped"] > design.MEMORISED, "epoch"]
    return float(over.iloc[0]) if len(over) else math.nan


def _memorisation(run: dict, history: pd.DataFrame | None, past_stop: bool) -> tuple[float, bool]:
    """The run's memorisation epoch: censored at its horizon H when it trained past its stop (so also when
    its history ends before H), else at its last epoch (a run that stopped was not watched further)."""
    if history is None:
        return math.nan, True
    horizon = int(run["max_epochs"]) if past_stop else int(history["epoch"].iloc[-1])
    margin = run.get("chance_margin", design.CHANCE_MARGIN)
    return design.memorisation_epoch(history, horizon, margin=design.CHANCE_MARGIN if pd.isna(margin) else margin)


def decided(runs: pd.DataFrame, paper: dict[tuple[str, str], float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Families A and B with their registered outcomes ("direction holds, the paper's magnitude excluded"
    where family C excludes the paper's number: `paper`, `claims.paper_gaps`) and each row's censored
    count (`unfired`)."""
    a, b = family_a(runs), family_b(runs)
    fig1_c, b_c = family_c(runs, paper)
    keys = ["rule", "claim", "noise"]
    a = a.merge(fig1_c.reindex(columns=[*keys, "excludes"]), on=keys, how="left")  # no paper number: no column
    b = b.merge(b_c.reindex(columns=["id", "excludes"]), on="id", how="left")
    for table in (a, b):
        excludes = table.pop("excludes").eq(True)
        table["outcome"] = [claims.with_magnitude(o, e) for o, e in zip(table["outcome"], excludes)]
    return unfired(a, runs), unfired(b, runs)


UNFIRED = "stops not fired"  # of the runs a row compares: read at their last epoch, the authors' rule never fired
B_OTHER = {"B1": SUM, "B2": SUM, "B5": SUM, "B6": NONE, "B7": SUM, "B8": SUM}  # the arm family B sets against mul


def unfired(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`table` (family A's or B's rows) with `UNFIRED`: how many of the runs its row compares (the
    multiplicative arm and the other, at its noise levels) are read at their last epoch because the
    authors' rule never fired: the registration's censored count, row by row."""
    never = runs["stop_censored"].astype(bool)
    counts = []
    for row in table.to_dict("records"):
        noises = [float(level) for level in str(row["noise"]).split(" vs ")]
        compared = runs["penalty"].isin([MUL, _other(row)]) & np.isin(runs["label_noise"], noises)
        counts.append(int((compared & never).sum()))
    return table.assign(**{UNFIRED: counts})


def _other(row: dict) -> str:
    """The arm a family-A or -B row sets against the multiplicative one."""
    return B_OTHER[row["id"]] if row.get("id") in B_OTHER else row["against"]


def family_a(runs: pd.DataFrame) -> pd.DataFrame:
    """Fig. 1's six claims under each rule of `RULES` (each its own Holm family), every run as trained."""
    return claims.claims(runs, rules=list(RULES), confirmed=True)


def family_b(runs: pd.DataFrame, ranks: str = "rank") -> pd.DataFrame:
    """B1, B2, B5-B8 of the model at the stop, Holm over 6; `ranks`: "rank" (singular values above 1 % of
    the largest, registered) or "matrix_rank" (the authors' tolerance: B7, B8 only, the secondary family of 2)."""
    logged = runs.assign(log_product=np.log10(runs["norm_product"]))
    # nothing is discarded: a diverged run's undefined fit enters as chance (its norms and ranks leave, n says so)
    fit = per_seed(claims.as_trained(runs, "train_acc_flipped"), "train_acc_flipped", 0.2)
    compared = {"B1": per_seed(logged, "log_product", 0.0), "B2": per_seed(logged, "log_product", 0.2),
                "B5": fit, "B6": fit,
                "B7": per_seed(runs, f"{ranks}_conv4", 0.0), "B8": per_seed(runs, f"{ranks}_fc1", 0.0)}
    if ranks != "rank":
        compared = {hid: compared[hid] for hid in ("B7", "B8")}
    rows = [_b_row(hid, wide, B_OTHER[hid]) for hid, wide in compared.items()]
    return claims.decide(pd.DataFrame(rows))


def _b_row(hid: str, wide: pd.DataFrame, other: str) -> dict:
    """Hypothesis `hid`: `other` − multiplicative, paired by seed."""
    return replication.registered_row(hid, claims.test(replication.paired(wide, other, MUL)))


def family_c(runs: pd.DataFrame, paper: dict[tuple[str, str], float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the data exclude, as registered: under the primary rule A1-A6 (the paper's gaps, `paper`:
    `claims.paper_gaps`) and B1, B2, B7, B8 (its "10×" and rank gaps) one Holm family; the best
    validation-loss epoch's A rows their own. Returns (Fig. 1's rows, family B's rows)."""
    fig1 = claims.exclusion(family_a(runs), paper)
    return replication.family_c(fig1, replication.excluded_b(family_b(runs)), rule=AUTHORS)


def censored(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm and noise level: the runs, those whose stop never fired (read at their last epoch) and,
    among those trained past their stop, those that never memorised by H: the censored counts that every
    table of this replication reads (docs/PREREGISTRATION-3.md)."""
    never = runs["censored"].astype(bool) & trained_past(runs)
    return (runs.assign(stop_censored=runs["stop_censored"].astype(bool), never=never)
            .groupby(["penalty", "lam", "label_noise"])
            .agg(runs=("key", "size"), stop_not_fired=("stop_censored", "sum"), never_memorised_by_H=("never", "sum"))
            .reset_index())


def delays(runs: pd.DataFrame) -> pd.DataFrame:
    """D1's pairs seed by seed: each arm's escape from chance level, memorisation epoch (censored: never
    above one half by H after its escape), first epoch above one half at all (the registered wording read
    literally), stop, and the difference the sign test reads."""
    at = runs[np.isclose(runs["label_noise"], NOISE) & runs["penalty"].isin([MUL, NONE])]
    shown = ["escape_epoch", "memorised_at", "censored", LITERAL, "authors_stop_epoch"]
    wide = at.pivot_table(index="seed", columns="penalty", values=shown, aggfunc="first")
    wide = wide[[(what, pen) for pen in (MUL, NONE) for what in shown]]
    wide.columns = [f"{pen} {what.replace('_', ' ')}" for what, pen in wide.columns]
    return wide.assign(**{"mul − none": wide["mul memorised at"] - wide["none memorised at"]}).reset_index()


def family_d(runs: pd.DataFrame) -> pd.DataFrame:
    """D1 and D2 on the multiplicative and no-penalty runs at noise 0.2 (those trained past their stop),
    Holm over 2."""
    at = runs[np.isclose(runs["label_noise"], NOISE)]
    wide = at.pivot_table(index="seed", columns="penalty", values="memorised_at")
    mul = wide[MUL] if MUL in wide else pd.Series(dtype=float)
    delay = design.delay_test(mul, wide[NONE] if NONE in wide else pd.Series(dtype=float))
    memorised = at[(at["penalty"] == MUL) & ~at["censored"].astype(bool)]
    n = int((at["penalty"] == MUL).sum())
    censored = {f"censored_{pen}": int(at.loc[at["penalty"] == pen, "censored"].astype(bool).sum())
                for pen in (MUL, NONE)}  # runs whose fit never exceeded one half by H
    # D1's direction is its median's: at n = 8, p < 0.05 needs 6 or more differing pairs, all on one side
    d1 = _d_row("D1", delay["n"], delay["median"], delay["p"]) | {
        "later": delay["later"], "earlier": delay["differ"] - delay["later"], "tied": delay["n"] - delay["differ"]}
    share = 0.5 - len(memorised) / n if n else math.nan
    p_share = float(stats.binomtest(len(memorised), n, 0.5).pvalue) if n else math.nan
    d2 = _d_row("D2", n, share, p_share, _share_interval(len(memorised), n)) | {"memorised": len(memorised)}
    return claims.decide(pd.DataFrame([d1 | censored, d2 | censored]))


D2_WORDS = {"holds": "it prevents memorisation up to the horizon",
            "reversed": "it memorises by the horizon: the penalty delays memorisation at most"}  # as registered


def d2_reading(outcome: str) -> str:
    """D2's outcome in the registered words ("prevents memorisation up to H" / "memorises by H: delays at
    most"), or as it is (not resolved)."""
    return D2_WORDS.get(outcome, outcome)


def _d_row(hid: str, n: int, statistic: float, p: float, interval: tuple[float, float] = (math.nan, math.nan)) -> dict:
    """A family-D row in `claims.test`'s columns: the statistic as `mean`, the exact test's p."""
    result = {"n": n, "mean": statistic, "sd": math.nan, "low": interval[0], "high": interval[1], "p_t": math.nan,
              "p_perm": math.nan, "p": p if n >= claims.MIN_PAIRS else math.nan, "zero_sd": False, "diffs": ()}
    return replication.registered_row(hid, result)


def _share_interval(k: int, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95 % interval of one half − the share k/n, as D2's statistic reads."""
    if not n:
        return math.nan, math.nan
    ci = stats.binomtest(k, n, 0.5).proportion_ci(0.95, method="exact")
    return 0.5 - ci.high, 0.5 - ci.low


def at_horizon(runs: pd.DataFrame) -> pd.DataFrame:
    """Multiplicative against no penalty at noise 0.2 in test accuracy at the last epoch trained (the
    horizon, for the runs trained past their stop): the secondary family of one."""
    wide = per_seed(claims.as_trained(runs, HORIZON), HORIZON, NOISE)  # an undefined accuracy enters as chance
    diffs = replication.paired(wide, MUL, NONE)
    return claims.decide(pd.DataFrame([{"claim": "multiplicative beats none at the horizon", "noise": f"{NOISE:g}",
                                        **claims.test(diffs)}]))


def power(earlier: pd.DataFrame, n: int = SEEDS, alpha: float = FIRST_STEP) -> pd.DataFrame:
    """Families A and B as an earlier replication measured them (`earlier`, its runs with every rule
    read), with the power of the two-sided paired t-test at `n` seeds and level `alpha` for the mean
    difference and sd it found: what the registration states before its runs train."""
    ids = registry.family("A").reset_index().set_index(["claim", "noise"])["id"]
    fig1 = family_a(earlier)
    fig1["id"] = [ids[(claim, noise)] for claim, noise in zip(fig1["claim"], fig1["noise"])]
    measured = pd.concat([fig1, family_b(earlier).assign(rule=REPORTED)], ignore_index=True)
    measured["power"] = [_power(m, s, n, alpha) for m, s in zip(measured["mean"], measured["sd"])]
    return measured[["id", "claim", "noise", "rule", "n", "mean", "sd", "power"]]


def _power(effect: float, sd: float, n: int, alpha: float) -> float:
    """The paired t-test's power; where every earlier difference was equal (sd 0), the exact permutation
    test's: certain when its floor at `n` is below `alpha`, nil otherwise."""
    if sd > 0:
        return design.paired_t_power(effect, sd, n, alpha)
    floor = design.smallest_p("exact sign-flip permutation", n)
    return float(effect != 0 and floor < alpha)
