"""The verdict in words and tables: each tested claim (`mulreg.results.claims`) with its outcome,
what its data exclude, and the epoch rule it was read under, named with its family (primary,
secondary, optimistic); the selection's choices at the end of a grid."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from mulreg.core.epochs import RULES
from mulreg.protocols import PENALTY_NAMES, Penalty
from mulreg.report.prose import _p, _pp, lam_text, rule_names
from mulreg.results import claims, registry
from mulreg.results.paper import FIG3_LAMBDA


def conclusion(table: pd.DataFrame, stage: str, patience: int | None = None,
               excluded: pd.DataFrame | None = None) -> list[str]:
    """What the verdict says, written from its outcomes, strongest finding first: the primary rule's
    outcomes and what its data exclude (`claims.exclusion`), then, per claim, the secondary and
    optimistic rules under which it holds or is reversed, named as such."""
    from mulreg.core.epochs import HEADLINE

    if table.empty:
        return [f"{stage}: no claim could be tested."]
    primary = table[table["rule"] == HEADLINE]
    out = [lead_sentence(table, stage, patience, excluded)]
    family = int(primary["family"].max())
    out.append(f"Primary rule ({rule_label(HEADLINE, patience)}), Holm-corrected over the {family} registered claims:")
    for label in ("holds", "reversed", "not resolved", "not tested"):
        hit = primary[primary["outcome"].str.startswith(label)]
        if len(hit):
            items = "; ".join(f"{c} ({n}, {_pp(m)} points)" for c, n, m in zip(hit["claim"], hit["noise"], hit["mean"]))
            out.append(f"  {label}: {items}.")
    others = table[table["rule"] != HEADLINE]
    rules = others["rule"].nunique()
    decided = others[others["outcome"].isin(["holds", "reversed"])]
    if decided.empty:
        out.append(f"No claim holds or is reversed under the {rules} other epoch rules either.")
        return out
    out.append(f"Under the other epoch rules (each Holm-corrected on its own, not across the {rules} rules: "
               f"{len(others)} tests in all, so read them as secondary or optimistic, never as the verdict):")
    for (claim, noise), g in decided.groupby(["claim", "noise"], sort=False):
        said = "; ".join(f"{o} under {rule_label(r, patience)} ({_pp(m)} points)"
                         for r, o, m in zip(g["rule"], g["outcome"], g["mean"]))
        out.append(f"  '{claim}' ({noise}): {said}.")
    return out


def lead_sentence(table: pd.DataFrame, stage: str, patience: int | None = None,
                  excluded: pd.DataFrame | None = None) -> str:
    """The verdict's first sentence, from the numbers: what the primary rule decides and what its
    data exclude, then the largest gap of the secondary rule 'where training ends' (the last epoch)."""
    from mulreg.core.epochs import HEADLINE

    primary = table[table["rule"] == HEADLINE]
    decided = primary[primary["outcome"].isin(["holds", "reversed"])]
    said = (f"under the primary rule ({rule_label(HEADLINE, patience)}) "
            + ("; ".join(f"'{c}' ({n}) {o}" for c, n, o in zip(decided["claim"], decided["noise"], decided["outcome"]))
               if len(decided) else f"none of the {len(primary)} claims holds or is reversed"))
    if excluded is not None and len(excluded):
        mine = excluded[(excluded["rule"] == HEADLINE) & excluded["excludes"].eq(True)]
        if len(mine):
            bounds = ["" if pd.isna(u) else f", true gaps above {_pp(u)} excluded" for u in mine["excluded_above"]]
            said += ("; its data exclude the paper's own gap for " + "; ".join(
                f"'{c}' ({n}: paper {_pp(g)} points{b})" for c, n, g, b in zip(mine["claim"], mine["noise"],
                                                                             mine["paper"], bounds)))
        else:
            said += "; its data exclude none of the paper's gaps"
    last = table[(table["rule"] == "test_acc_last") & table["n"].gt(0)]
    if len(last):
        top = last.loc[last["mean"].idxmax()]
        said += (f". Where training ends ({rule_label('test_acc_last', patience)}), the largest gap is "
                 f"'{top['claim']}' ({top['noise']}): {_pp(top['mean'])} points, {top['outcome']}")
    return f"{stage}: {said}."


def short_labels() -> dict[str, str]:
    """Every rule's short name with its family, for figures: 'last epoch (secondary)'."""
    from mulreg.core.epochs import FAMILY, SHORT

    return {rule: f"{SHORT[rule]} ({FAMILY[rule]})" for rule in RULES}


def rule_labels(patience: int | None = None) -> dict[str, str]:
    """`rule_label` of every rule, for tables."""
    return {rule: rule_label(rule, patience) for rule in RULES}


def rule_label(rule: str, patience: int | None = None) -> str:
    """A rule's name with its family: 'last epoch (secondary)', 'best test-accuracy epoch (optimistic)'."""
    from mulreg.core.epochs import FAMILY, OPTIMISTIC

    name = rule_names(patience)[rule]
    if FAMILY[rule] == OPTIMISTIC:
        return name if name.endswith("(optimistic)") else f"{name} (optimistic)"
    return f"{name} ({FAMILY[rule]})"


def verdict_table(table: pd.DataFrame, rule: str, excluded: pd.DataFrame | None = None) -> pd.DataFrame:
    """One rule's family of `claims.claims` for reading: per claim its pairs, the per-seed
    differences, mean and 95 % t interval (points), t, permutation and Holm-adjusted p, outcome;
    with `excluded` (`claims.exclusion`) the paper's gap, the one-sided test against it (its own
    Holm family) and the bound above which the data exclude every true gap; last, the smallest gap
    resolvable at this n (a rough guide: its sd has n − 1 degrees of freedom)."""
    part = table[table["rule"] == rule]
    out = pd.DataFrame({
        "claim": part["claim"], "noise": part["noise"], "pairs (n)": part["n"],
        "per-seed differences (pp)": [", ".join(f"{100 * d:+.2f}" for d in ds) or "—" for ds in part["diffs"]],
        "mean (pp)": [_pp(m) for m in part["mean"]],
        "95 % t interval (pp)": ["—" if pd.isna(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
                                 for lo, hi in zip(part["low"], part["high"])],
        "t p": [_p(x) for x in part["p_t"]], "permutation p (exact)": [_p(x) for x in part["p_perm"]],
        f"Holm p (of {part['family'].max() if len(part) else 0})": [_p(x) for x in part["p_holm"]],
        "outcome": part["outcome"],
    })
    if excluded is not None:
        ex = excluded[excluded["rule"] == rule]
        m = int(ex["family_excl"].max()) if len(ex) else 0
        out["paper (pp)"] = [_pp(ex.at[i, "paper"]) if i in ex.index else "—" for i in part.index]
        out[f"paper's gap excluded? (one-sided, Holm p of {m})"] = [
            f"{'yes' if ex.at[i, 'excludes'] else 'no'} ({_p(ex.at[i, 'p_excl_holm'])})" if i in ex.index else "—"
            for i in part.index]
        out["true gaps excluded above (pp, 95 %)"] = [_pp(ex.at[i, "excluded_above"]) if i in ex.index else "—"
                                                      for i in part.index]
    out["resolvable gap (pp; sd on n − 1 df)"] = ["—" if pd.isna(g) else f"{100 * g:.1f}" for g in part["resolvable"]]
    return out.reset_index(drop=True)


def verdict_sentences(table: pd.DataFrame, rule: str, stage: str, patience: int | None = None,
                      excluded: pd.DataFrame | None = None) -> list[str]:
    """One sentence per claim of `rule`'s family, written from its computed outcome (and, with
    `excluded`, what its data exclude), after a head naming the rule's family."""
    part = table[table["rule"] == rule]
    if part.empty:
        return [f"{rule_label(rule, patience)}: no claim could be tested."]
    ex = excluded[excluded["rule"] == rule] if excluded is not None else pd.DataFrame()
    out = []
    for i, r in part.iterrows():
        if r["outcome"].startswith("not tested") or r["n"] == 0:
            said = r["outcome"] if r["outcome"].startswith("not tested") else "no pairs"
            out.append(f"'{r['claim']}' ({r['noise']}): {said}.")
            continue
        span = "" if pd.isna(r["low"]) else f", 95 % interval {_pp(r['low'])} to {_pp(r['high'])}"
        test = (f"every difference equal, so the exact permutation p decides{_floor(r)}" if r["zero_sd"]
                else f"t p {_p(r['p_t'])}, exact permutation p {_p(r['p_perm'])}")
        holm = (f"Holm-adjusted p {_p(r['p_holm'])} of {r['family']}" if pd.notna(r["p_holm"])
                else "too few pairs for the decision rule")
        excl = ""
        if i in ex.index and pd.notna(ex.at[i, "p_excl_holm"]):
            verb = "exclude" if ex.at[i, "excludes"] else "do not exclude"
            bound = ex.at[i, "excluded_above"]
            excl = (f"; the data {verb} the paper's {_pp(ex.at[i, 'paper'])} points (one-sided Holm p "
                    f"{_p(ex.at[i, 'p_excl_holm'])})"
                    + ("" if pd.isna(bound) else f" and every true gap above {_pp(bound)} (95 %, one-sided)"))
        out.append(f"'{r['claim']}' (noise {r['noise']}): {_pp(r['mean'])} points over {r['n']} seed pair"
                   f"{'s' * (r['n'] != 1)}{span} ({test}; {holm}): {r['outcome']}{excl}.")
    counts = part["outcome"].map(lambda o: o.split(" (")[0]).value_counts()
    head = (f"{stage}, {rule_label(rule, patience)}: " + ", ".join(f"{n} {o}" for o, n in counts.items())
            + f" of {len(part)} claims.")
    return [head] + out


def edge_sentences(best: pd.DataFrame) -> list[str]:
    """One sentence per chosen λ at an end of its grid (`selection.grid_end`), with the paper's own λ:
    a better value may lie beyond the grid, and at the weak end the penalty may be close to none."""
    out = []
    for r in best.dropna(subset=["lam"]).to_dict("records"):
        if r.get("grid_end") not in ("strongest", "weakest"):  # inside, one value, or read back from CSV as NaN
            continue
        paper = f" (the paper's best λ, Fig. 3: {FIG3_LAMBDA[r['penalty']]:.0e})" if r["penalty"] in FIG3_LAMBDA else ""
        beyond = "weaker" if r["grid_end"] == "weakest" else "stronger"
        out.append(f"The {PENALTY_NAMES[Penalty(r['penalty'])]} penalty's chosen λ = {lam_text(r['lam'])} is the "
                   f"{r['grid_end']} of its grid{paper}: a {beyond} value was not tried, so the choice may be "
                   "limited by the grid.")
    return out


def family_table(table: pd.DataFrame, excluded: pd.DataFrame | None = None) -> pd.DataFrame:
    """Family B (`mulreg.results.replication.family_b`) for reading, in each hypothesis' own units
    (`registry.units`; fits in points): id, claim, statistic, units, test, n, per-seed values, mean with
    its 95 % t interval, p, Holm p, outcome, and, where the paper gives a number, whether the data exclude
    it and the bound."""
    ex = excluded.set_index("id") if excluded is not None and len(excluded) else pd.DataFrame()
    m = int(table["family"].max()) if len(table) else 0
    scales = [_scale(i) for i in table["id"]]
    out = pd.DataFrame({
        "id": table["id"], "claim": table["claim"], "noise": table["noise"], "statistic": table["statistic"],
        "units": [registry.units(i) for i in table["id"]], "test": table["test"], "n": table["n"],
        "per seed": [", ".join(f"{k * d:+.3g}" for d in ds) or "—" for k, ds in zip(scales, table["diffs"])],
        "mean": [_num(k * x) for k, x in zip(scales, table["mean"])],
        "95 % t interval": ["—" if pd.isna(lo) else f"[{k * lo:+.3g}, {k * hi:+.3g}]"
                            for k, lo, hi in zip(scales, table["low"], table["high"])],
        "p": [_p(x) for x in table["p"]], f"Holm p (of {m})": [_p(x) for x in table["p_holm"]],
        "outcome": table["outcome"],
        "paper": [_num(ex.at[i, "paper"]) if i in ex.index else "—" for i in table["id"]],
        "paper's value excluded? (Holm)": [f"{'yes' if ex.at[i, 'excludes'] else 'no'} ({_p(ex.at[i, 'p_excl_holm'])})"
                                           if i in ex.index else "—" for i in table["id"]],
        "excluded above (95 %)": [_num(ex.at[i, "excluded_above"]) if i in ex.index else "—" for i in table["id"]],
    })
    return out.reset_index(drop=True)


def family_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per hypothesis of family B, from its outcome."""
    counts = table["outcome"].map(lambda o: o.split(" (")[0]).value_counts()
    out = ["Family B (the paper's other claims), Holm over the registered " + f"{int(table['family'].max())}: "
           + ", ".join(f"{n} {o}" for o, n in counts.items()) + "."]
    for r in table.to_dict("records"):
        if r["n"] == 0:
            out.append(f"{r['id']} '{r['claim']}' ({r['noise']}): {r['outcome']}.")
            continue
        k = _scale(r["id"])
        units = registry.units(r["id"])
        span = "" if pd.isna(r["low"]) else f", 95 % interval {k * r['low']:+.3g} to {k * r['high']:+.3g} {units}"
        level = "; on ranks its level is about 7 % at a nominal 5 %" if r["test"].startswith("Williams") else ""
        out.append(f"{r['id']} '{r['claim']}' ({r['noise']}): {r['statistic']} = {_num(k * r['mean'])} {units} "
                   f"over n = {r['n']}"
                   f"{span} ({r['test']} p {_p(r['p'])}, Holm p {_p(r['p_holm'])}{level}{_floor(r)}): {r['outcome']}.")
    return out


def _scale(hid: str) -> int:
    """What a claim's differences are multiplied by to read in its units: 100 for points (fractions)."""
    return 100 if registry.units(hid) == registry.POINTS else 1


def _floor(r: dict) -> str:
    """Where every difference is equal, the smallest p its exact permutation test can reach at its n."""
    if not r.get("zero_sd"):
        return ""
    return f"; with {r['n']} pairs that p cannot go below {_p(claims.smallest_permutation_p(r['n']))}"


def _num(x) -> str:
    return "—" if pd.isna(x) else f"{x:+.3g}"


OUTCOME_FILL = {"holds": "#009E73", claims.MAGNITUDE_EXCLUDED: "#F0E442", "reversed": "#D55E00",
                "not resolved": "#BBBBBB", claims.UNDECIDABLE: "#9FD3F0"}  # anything else (not tested): white


def ledger_figure(ledger: pd.DataFrame) -> Figure:
    """The ledger at a glance: one row per claim, coloured by its outcome (green holds, yellow its
    direction holds with the paper's magnitude excluded, red reversed, grey not resolved, light blue
    undecidable at its n, white not tested), with the outcome and who decided it written in."""
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(ledger) + 0.8))
    for y, (outcome, by) in enumerate(zip(ledger["outcome"], ledger["decided by"])):
        fill = OUTCOME_FILL.get(outcome.split(" (")[0], "white")
        ax.add_patch(plt.Rectangle((0, y - 0.4), 1, 0.8, facecolor=fill, edgecolor="#666666", lw=0.5))
        ax.text(1.05, y, f"{outcome} · {by.split(' (')[0]}", va="center", fontsize="small")
    ax.set_yticks(range(len(ledger)), [f"{w}: {c}" for w, c in zip(ledger["where"], ledger["claim"])],
                  fontsize="small")
    ax.set(xlim=(0, 4), ylim=(len(ledger) - 0.5, -0.5), xticks=[], title="The paper's claims, as tested here")
    ax.grid(False)  # the style's grid lines would run under the outcome text
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig
