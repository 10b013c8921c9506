"""The claims ledger: one row per claim of the paper, the paper's number, ours with its interval, the
test, the outcome, what the data exclude, and which replication decided it (docs/PREREGISTRATION.md
for replication 1, docs/PREREGISTRATION-2.md for replication 2). Every cell is computed from the
tables `mulreg.results.claims` and `mulreg.results.replication` produce; a claim no stored run has
tested says so, with the command that tests it and its cost here.
"""

from __future__ import annotations

import math

import pandas as pd

from mulreg.core.epochs import HEADLINE
from mulreg.results import registry, replication3
from mulreg.results.claims import with_magnitude
from mulreg.results.replication3 import PATIENCE, UNFIRED

REPLICATION_1 = "replication 1 (docs/PREREGISTRATION.md)"
REPLICATION_2 = "replication 2 (docs/PREREGISTRATION-2.md)"
REPLICATION_3 = "replication 3 (docs/PREREGISTRATION-3.md)"
FIG1 = [(c["claim"], c["noise"]) for _, c in registry.family("A").iterrows()]  # (claim, noise), the paper's order
TABLE2 = ("multiclass: multiplicative beats additive and none (Table 2)", "Table 2", "68.7 vs 65.1 / 65.0 %")
AUTHORS = "test_acc_authors"  # the paper's own reading: the authors' released stop rule (secondary family)
READINGS = {HEADLINE: "", AUTHORS: ", authors' rule"}  # Fig. 1 under each, the primary first
REPLICATIONS = ("replication 1", "replication 2", "replication 3")  # a column each: every outcome side by side
COLUMNS = ["claim", "where", "paper", "ours (95 % interval, n)", "test", "outcome", "what the data exclude",
           "decided by", *REPLICATIONS]
NOT_REGISTERED = "— (not registered)"
UNTESTED_3 = "not yet: `make figures NB=09`"  # replication 3 runs on request


def fig1_rows(verdict: pd.DataFrame | None, excluded: pd.DataFrame | None, paper: dict, source: str,
              untested: str, each: dict[str, pd.DataFrame | None] | None = None, rule: str = HEADLINE) -> list[dict]:
    """Fig. 1's six claims under `rule` (the primary one by default, or the authors' as the paper's
    own reading), from `claims.claims` and `claims.exclusion` of the deciding replication (or 'not
    tested', with `untested` saying how to test them), and, side by side, each replication's
    outcome, interval and n (`each`: column name → its `claims.claims`)."""
    rows = []
    test = "paired t, Holm over 6" + ("" if rule == HEADLINE else " (secondary family: the paper's own reading)")
    for claim, noise in FIG1:
        row = {"claim": f"{claim} (noise {noise}{READINGS[rule]})", "where": "Fig. 1",
               "paper": _pp(paper.get((claim, noise)))}
        row |= {name: _side(table, claim, noise, rule, _patience(name, rule)) for name, table in (each or {}).items()}
        hit = _hit(verdict, claim, noise, rule)
        if hit is None or hit.empty:
            rows.append(row | _untested(untested))
            continue
        r = hit.iloc[0]
        outcome = with_magnitude(r["outcome"], _excluded(excluded, r))
        rows.append(row | {"ours (95 % interval, n)": _interval(r, 100, " pp"), "test": test, "outcome": outcome,
                           "what the data exclude": _excludes(excluded, r, 100, " pp"), "decided by": source})
    return rows


def _hit(verdict: pd.DataFrame | None, claim: str, noise: str, rule: str = HEADLINE) -> pd.DataFrame | None:
    """`rule`'s row of one claim, or None."""
    if verdict is None or verdict.empty:
        return None
    return verdict[(verdict["rule"] == rule) & (verdict["claim"] == claim) & (verdict["noise"] == noise)]


def _patience(name: str, rule: str) -> str:
    """Replication 3's cells under the authors' rule say that they were read at their own patience (200),
    not at the stand-in the short horizons of replications 1 and 2 used (`paper_patience`)."""
    return f" · patience {PATIENCE}" if rule == AUTHORS and name == "replication 3" else ""


def _side(verdict: pd.DataFrame | None, claim: str, noise: str, rule: str = HEADLINE, note: str = "") -> str:
    """One replication's cell beside the others: its outcome, mean [interval], n, and `note`; or 'not tested'."""
    hit = _hit(verdict, claim, noise, rule)
    if hit is None or hit.empty:
        return "not tested"
    return f"{hit.iloc[0]['outcome']}: {_interval(hit.iloc[0], 100, ' pp')}{note}{_unfired(hit.iloc[0])}"


def _unfired(r) -> str:
    """Replication 3's censored count in its cells (`replication3.UNFIRED`), where any run is censored."""
    count = int(r.get(UNFIRED, 0))
    return f" · {count} stop{'s' * (count != 1)} not fired (read at the last epoch)" if count else ""


def family_b_rows(family: pd.DataFrame | None, excluded: pd.DataFrame | None, untested: str,
                  notes: dict[str, str] | None = None, third: pd.DataFrame | None = None) -> list[dict]:
    """The fourteen hypotheses of family B (`replication.family_b`), or 'not tested'; `notes`: a
    line to add to a hypothesis's test (B12/B13: a λ chosen at its grid's end); `third`: replication 3's
    family B (`replication3.family_b`), shown in its column."""
    rows = []
    for hid, c in registry.family("B").iterrows():
        hit = None if family is None else family[family["id"] == hid]
        base = {"where": c["where"], "paper": c["paper"], "replication 1": NOT_REGISTERED,
                "replication 3": _column(third, hid, 3)}
        if hit is None or hit.empty:
            rows.append(base | {"claim": registry.label(hid), "replication 2": "not tested"} | _untested(untested))
            continue
        if hit.iloc[0]["n"] == 0:  # replication 2 ran, and no run could test it (no eligible λ, say)
            r = hit.iloc[0]
            rows.append(base | {"claim": f"{hid}: {r['claim']} (noise {r['noise']})"} | _untested(REPLICATION_2)
                        | {"outcome": r["outcome"], "replication 2": r["outcome"]})
            continue
        r = hit.iloc[0]
        ex = None if excluded is None else excluded.set_index("id")
        outcome = with_magnitude(r["outcome"], ex is not None and hid in ex.index and bool(ex.at[hid, "excludes"]))
        test = f"{r['test']}, Holm over {int(r['family'])}" + "".join(f"; {n}" for n in [(notes or {}).get(hid)] if n)
        rows.append(base | {"claim": f"{hid}: {r['claim']} (noise {r['noise']})",
                            "ours (95 % interval, n)": f"{r['statistic']}: " + _in_units(r, hid),
                            "test": test + _as_corrected(r), "outcome": outcome,
                            "what the data exclude": _excludes_b(ex, hid) + _censored(r),
                            "decided by": REPLICATION_2, "replication 2": f"{outcome}: {_in_units(r, hid)}"})
    return rows


def family_d_rows(family: pd.DataFrame | None, untested: str) -> list[dict]:
    """Replication 3's prevent-or-delay hypotheses (`replication3.family_d`), or 'not tested'."""
    rows = []
    for hid, c in registry.family("D").iterrows():
        base = {"claim": registry.label(hid), "where": c["where"], "paper": c["paper"], "replication 1": NOT_REGISTERED,
                "replication 2": NOT_REGISTERED, "replication 3": _column(family, hid, 3)}
        hit = None if family is None else family[family["id"] == hid]
        if hit is None or hit.empty:
            rows.append(base | _untested(untested))
            continue
        r = hit.iloc[0]
        words = replication3.d2_reading(r["outcome"]) if hid == "D2" else r["outcome"]
        said = r["outcome"] if words == r["outcome"] else f"{r['outcome']} ({words})"  # D2: the registered words
        rows.append(base | {"ours (95 % interval, n)": f"{r['statistic']}: {_d_number(r)}",
                            "test": f"{r['test']}, Holm over {int(r['family'])}", "outcome": r["outcome"],
                            "what the data exclude": "—", "decided by": REPLICATION_3,
                            "replication 3": f"{said}: {_d_number(r)}"})
    return rows


def _d_number(r) -> str:
    """A family-D row's number with the counts behind it: D1's median with the seeds later, earlier and
    tied and the runs censored at H; D2's share with how many memorised."""
    if r["id"] == "D2":
        return f"{_in_units(r, 'D2')} ({int(r['memorised'])} of {int(r['n'])} memorised by H)"
    never = (f"; never memorised by H, counted there: {int(r['censored_mul'])} mul, {int(r['censored_none'])} none"
             if r["censored_mul"] or r["censored_none"] else "")
    return (f"median {r['mean']:+.3g} epochs (later in {int(r['later'])}, earlier in {int(r['earlier'])}, "
            f"tied {int(r['tied'])}{never}), n {int(r['n'])}")


def _column(family: pd.DataFrame | None, hid: str, number: int) -> str:
    """Hypothesis `hid`'s cell in replication `number`'s column: its outcome and interval, or why there is none."""
    if hid not in registry.registered_in(number):
        return NOT_REGISTERED
    hit = None if family is None else family[family["id"] == hid]
    if hit is None or hit.empty:
        return "not tested"
    return f"{hit.iloc[0]['outcome']}: {_in_units(hit.iloc[0], hid)}{_unfired(hit.iloc[0])}"


def _as_corrected(r) -> str:
    """A registered test beside its correction to the registration's unit, the seed (B9, B10, B14)."""
    if pd.isna(r.get("outcome_corrected", math.nan)):
        return ""
    registered = r.get("registered_as")
    registered = registered if isinstance(registered, str) else f"the {int(r['n'])} runs counted as independent"
    return (f" (as registered: {registered}, p {r['p']:.2g}); corrected to the seed, the registration's unit: "
            f"{r['how_corrected']}, p {r['p_corrected']:.2g}, Holm p {r['p_holm_corrected']:.2g}: "
            f"{r['outcome_corrected']}")


def _censored(r) -> str:
    if not isinstance(r.get("censored"), str):
        return ""
    return (f"; censored: the multiplicative window reaches an end of its grid in {r['censored']} seeds, and no "
            f"width can exceed {r['widest']:.3g} decades, so the interval's upper end is not a width the grid allows")


def ledger(fig1: list[dict], family: list[dict]) -> pd.DataFrame:
    """The ledger's rows in the paper's order, Table 2 last (a demonstration on a CPU)."""
    table2 = {"claim": TABLE2[0], "where": TABLE2[1], "paper": TABLE2[2], "ours (95 % interval, n)": "—",
              "test": "registered for the `paper` profile on a GPU (T1, T2)", "outcome": "not tested here",
              "what the data exclude": "—",
              "decided by": "notebook 05 is a labelled demonstration (¼ width, 3,000 images): it tests nothing",
              **{name: "not tested" for name in REPLICATIONS}}
    return pd.DataFrame(fig1 + family + [table2], columns=COLUMNS)


def _untested(how: str) -> dict:
    return {"ours (95 % interval, n)": "—", "test": "—", "outcome": "not tested yet", "what the data exclude": "—",
            "decided by": how}


def _pp(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1f} pp"


def _interval(r, scale: float, unit: str) -> str:
    span = "" if pd.isna(r["low"]) else f" [{scale * r['low']:+.3g}, {scale * r['high']:+.3g}]"
    return f"{scale * r['mean']:+.3g}{unit}{span}, n {r['n']}"


def _in_units(r, hid: str) -> str:
    """`_interval` in claim `hid`'s units (`registry.units`): points for accuracies and fits, else its own."""
    units = registry.units(hid)
    return _interval(r, 100, " pp") if units == registry.POINTS else _interval(r, 1, f" {units}")


def _exclusion_of(excluded: pd.DataFrame | None, r) -> pd.Series | None:
    if excluded is None or excluded.empty:
        return None
    same = (excluded["rule"] == r["rule"]) & (excluded["claim"] == r["claim"]) & (excluded["noise"] == r["noise"])
    hit = excluded[same]
    return None if hit.empty or pd.isna(hit.iloc[0]["p_excl_holm"]) else hit.iloc[0]


def _excluded(excluded: pd.DataFrame | None, r) -> bool:
    e = _exclusion_of(excluded, r)
    return e is not None and bool(e["excludes"])


def _excludes(excluded: pd.DataFrame | None, r, scale: float, unit: str) -> str:
    e = _exclusion_of(excluded, r)
    if e is None:
        return "—"
    said = "the paper's gap excluded" if e["excludes"] else "the paper's gap not excluded"
    bound = "" if pd.isna(e["excluded_above"]) else (
        f"; every gap above {scale * e['excluded_above']:+.3g}{unit} (this claim alone, one-sided 95 %), "
        f"above {scale * e['excluded_above_adjusted']:+.3g}{unit} for all {int(e['family_excl'])} at once "
        f"(Bonferroni)")
    return f"{said} (Holm p {e['p_excl_holm']:.2g}){bound}"


def _excludes_b(ex: pd.DataFrame | None, hid: str) -> str:
    if ex is None or hid not in ex.index or pd.isna(ex.at[hid, "p_excl_holm"]):
        return "—"
    said = "the paper's value excluded" if ex.at[hid, "excludes"] else "the paper's value not excluded"
    above = ex.at[hid, "excluded_above"]
    bound = "" if pd.isna(above) else f"; everything above {above:+.3g} {registry.units(hid)}"
    return f"{said} (Holm p {ex.at[hid, 'p_excl_holm']:.2g}){bound}"


def build(first: pd.DataFrame | None, second: pd.DataFrame | None, second_selection: pd.DataFrame | None,
          larger_scale: pd.DataFrame | None, sharp: pd.DataFrame | None, paper: dict, untested: str,
          scale_ends: list[str] | None = None, third: pd.DataFrame | None = None,
          past: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ledger from the stored confirmation runs of replication 1 (`first`) and 2 (`second`, with
    its selection stage, the init-scale arm's confirmation and the sharpness per seed): Fig. 1 is
    decided by replication 2 where it is complete (its λ chosen on the fair grid), else by
    replication 1; family B only by replication 2. Replication 3's runs (`third`, read by
    `replication3.read`) fill its column; family D is decided by its runs trained past their stop (`past`,
    its complete horizon stage, even before the other stage lands). `untested` says how to test what is not."""
    from mulreg.results import claims, replication

    each = {name: claims.claims(runs, confirmed=True) if runs is not None and len(runs) else None
            for name, runs in zip(REPLICATIONS, (first, second))}
    tested = third is not None and len(third) > 0
    each["replication 3"], third_b = replication3.decided(third, paper) if tested else (None, None)
    trained_past = third if tested else past
    third_d = replication3.family_d(trained_past) if trained_past is not None and len(trained_past) else None
    decider = "replication 2" if each["replication 2"] is not None else "replication 1"
    source = REPLICATION_2 if decider == "replication 2" else REPLICATION_1
    verdict = each[decider]
    excluded = claims.exclusion(verdict, paper) if verdict is not None and len(verdict) else None
    family = excluded_b = None
    if decider == "replication 2":  # family C: Fig. 1's and family B's published numbers, one family per rule
        family = replication.family_b(second, second_selection, sharp, larger_scale)
        excluded, excluded_b = replication.family_c(excluded, replication.excluded_b(family))
    fig1 = [row for rule in READINGS for row in fig1_rows(verdict, excluded, paper, source, untested, each, rule)]
    d_rows = family_d_rows(third_d, UNTESTED_3)
    if family is None:
        return ledger(fig1, family_b_rows(None, None, untested, third=third_b) + d_rows)
    ends = "; ".join(f"the init-scale arm's {end}" for end in scale_ends or [])
    return ledger(fig1, family_b_rows(family, excluded_b, untested, {"B12": ends, "B13": ends}, third_b) + d_rows)


def assemble(first, second, scaled, second_store: str, untested: str, progress: bool = True,
             third: pd.DataFrame | None = None, past: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ledger from the three sweeps' `analysis.stored_stages` (replication 1; replication 2, whose
    store is `second_store`; its init-scale arm) and replication 3's runs (`replication3.stored_with_past`:
    all of them, None while incomplete, and those trained past their stop): family B, and the sharpness
    it reads, only once replication 2 is complete."""
    from mulreg.results import analysis, claims, paper, replication

    complete = second.confirmation is not None and scaled.confirmation is not None
    sharp = None
    if complete:
        sharp = analysis.sharpness_by_seed(second_store, second.confirmation, 0.2, replication.SHARPNESS_RADIUS,
                                           replication.SHARPNESS_DIRECTIONS, replication.SHARPNESS_IMAGES, progress)
    return build(first.confirmation, second.confirmation if complete else None, second.selection,
                 scaled.confirmation, sharp, claims.paper_gaps(paper.published("fig1")), untested,
                 replication.grid_ends(scaled.selection, scaled.plan), third, past)


README_UNTESTED = "not yet: `make figures NB=07`"  # the README's ledger names the command, not this host's cost
THIRD_FILES = ("replication3_file", "replication3_horizon_file")  # notebook 08's parameters: replication 3's sweeps


def of_record(profile: str = "quick") -> tuple[pd.DataFrame, list, pd.DataFrame | None]:
    """The ledger as the results of record alone give it (no local store is read): the README's table.
    Returns it with the stages read and replication 3's runs read (None while none of its stages is
    complete), for their source lines."""
    from mulreg.results import analysis

    patience = analysis.ledger_params(profile)["paper_patience"]
    specs = [analysis.ledger_sweep(name, profile) for name in ("binary_file", "replication_file", "init_scale_file")]
    read = [analysis.stored_stages(spec, patience, record_only=True)[0] for spec in specs]
    third = [analysis.ledger_sweep(name, profile) for name in THIRD_FILES]
    runs, past, _ = replication3.stored_with_past(third, record_only=True)
    table = assemble(read[0], read[1], read[2], specs[1].store, README_UNTESTED, progress=False, third=runs, past=past)
    return table, read, runs if runs is not None else past


def summary(table: pd.DataFrame) -> str:
    """The ledger in one sentence, counted from it: its outcomes under the primary reading and under
    the paper's own (the authors' rule), and the claims whose published number the data exclude."""
    fig1 = table["where"] == "Fig. 1"
    authors = table["claim"].str.endswith(READINGS[AUTHORS] + ")")

    def counted(rows: pd.DataFrame) -> str:
        counts = rows["outcome"].map(lambda o: o.split(" (")[0]).value_counts()
        return ", ".join(f"{n} {o}" for o, n in counts.items())

    excluded = table[~authors & table["what the data exclude"].str.match(r"the paper's (gap|value) excluded")]
    return (f"{int((~authors).sum())} claims under the primary reading (the model at its best validation-loss "
            f"epoch): {counted(table[~authors])}. Fig. 1 under the paper's own reading (the authors' rule): "
            f"{counted(table[fig1 & authors])}. The data exclude the paper's own number for {len(excluded)} claim(s)"
            + (": " + "; ".join(excluded["claim"]) if len(excluded) else "") + ".")
