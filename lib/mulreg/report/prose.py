"""What the notebooks say in words, and tables laid out for reading, from the numbers of
`mulreg.results.stats` and `mulreg.results.claims`: each function writes the sentences of one notebook cell.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mulreg.core.epochs import RULES
from mulreg.engine.selection import AS_THE_PAPER, SELECTED_ON, failed, reads_test
from mulreg.engine.sweep import SweepSpec
from mulreg.protocols import PENALTY_NAMES, Penalty
from mulreg.results import arms, claims
from mulreg.results.paper import FIG3_LAMBDA, PROTOCOL
from mulreg.results.stats import GROUP, in_paper_order


def preregistration_note(document: str | None = None) -> str:
    """Which pre-registration the verdict below is judged under: the commit of `document`
    (default docs/PREREGISTRATION.md)."""
    from mulreg.provenance import PREREGISTRATION, prereg_commit

    document = document or PREREGISTRATION
    found = prereg_commit(document)
    if found is None:
        return f"Pre-registration: {document} (its commit cannot be read: not a git checkout)."
    commit, date = found.split()
    return f"Pre-registration: {document} as of commit {commit[:10]} ({date}); the verdict follows its rules."


def lam_text(lam: float) -> str:
    """A λ as read in tables and sentences: up to four significant digits, so that the init-scale arm's
    3.125e-07 and 2.98e-14 are not shown as 3e-07 and 3e-14; 5e-05 stays 5e-05."""
    return f"{lam:.4g}"


def selection_table(best: pd.DataFrame, percent: bool = True) -> pd.DataFrame:
    """`mulreg.engine.selection.select`'s table for reading: chosen λ, the mean it was selected on, the
    reported rule's mean ± std, runs used / excluded; the column names say what was read."""
    out = best.copy()
    scale = 100 if percent else 1
    on, reported = best["selected_on"].iloc[0], best["reported"].iloc[0]
    out["penalty"] = out["penalty"].map(lambda p: PENALTY_NAMES[Penalty(p)])
    out[f"selected on: {on}"] = ["—" if pd.isna(m) else f"{scale * m:.2f}" for m in best["selection_mean"]]
    out[f"reported: {reported}"] = [
        "—" if pd.isna(m) else f"{scale * m:.2f} ± {scale * s:.2f}" if pd.notna(s) else f"{scale * m:.2f}"
        for m, s in zip(best["mean"], best["std"])]
    out["λ"] = ["—" if pd.isna(v) else ("0" if v == 0 else lam_text(v)) for v in best["lam"]]
    out["runs used"] = best["n_used"].fillna(0).astype(int)
    # inside the grid: "" as selected, NaN as read back from selection.csv
    out["at grid end"] = best["grid_end"].fillna("").replace("", "—") if "grid_end" in best else "—"
    out["paper's λ (Fig. 3)"] = [f"{FIG3_LAMBDA[p]:.0e}" if p in FIG3_LAMBDA else "—" for p in best["penalty"]]
    cols = [c for c in ("penalty", "label_noise") if c in out]
    cols += ["λ", "at grid end", "paper's λ (Fig. 3)", f"selected on: {on}", f"reported: {reported}", "runs used",
             "n_runs", "n_excluded"]
    return out[cols].rename(columns={"n_runs": "runs in group", "n_excluded": "excluded"})


def thin_choices(runs: pd.DataFrame, rules: pd.DataFrame, by: Sequence[str] = GROUP,
                 patience: int | None = None) -> list[str]:
    """Sentences for every choice of `epoch_rules` whose λ stands on fewer runs than it has: the
    paper discards runs that stay at chance level, so a λ where some seeds never learn is judged
    on the seeds that did, which flatters it."""
    out = []
    for r in rules.dropna(subset=["lam"]).itertuples():
        same = np.all([np.isclose(runs[k], getattr(r, k), rtol=1e-9, atol=0) if runs[k].dtype.kind == "f"
                       else runs[k] == getattr(r, k) for k in (*by, "lam")], axis=0)
        total = int(same.sum())
        if r.n_used < total:
            out.append(f"{rule_names(patience)[r.metric]}: {PENALTY_NAMES[r.penalty]} at label noise "
                       f"{r.label_noise:g} is λ={r.lam:.0e} on {r.n_used:.0f} of its {total} runs; the other "
                       f"{total - r.n_used:.0f} stayed at chance level "
                       "(or diverged) and, as in the paper, are left out, so this mean is over the runs that learned.")
    return out


def epoch_rules_wide(rules: pd.DataFrame, by: Sequence[str] = GROUP, percent: bool = True,
                     patience: int | None = None) -> pd.DataFrame:
    """`epoch_rules` as one column per rule (mean ± std, chosen λ in brackets); each column says
    what its λ was selected on (validation, or as the paper selects: on test)."""
    scale = 100 if percent else 1
    cell = [("—" if pd.isna(m) else f"{scale * m:.2f} ± {0 if pd.isna(s) else scale * s:.2f} (λ={lam:.0e})"
             if lam else f"{scale * m:.2f} ± {0 if pd.isna(s) else scale * s:.2f}")
            for m, s, lam in zip(rules["mean"], rules["std"], rules["lam"].fillna(0))]
    wide = rules.assign(cell=cell).pivot(index=list(by), columns="metric", values="cell")
    names = rule_names(patience)
    label = {m: f"{names[m]} · λ " + (f"{AS_THE_PAPER.split(':')[0]} (on test)" if reads_test(m)
                                       else f"on {SELECTED_ON[m]}") for m in wide.columns}
    wide = in_paper_order(wide[[r for r in RULES if r in wide.columns]].rename(columns=label).reset_index())
    wide["penalty"] = wide["penalty"].map(lambda p: PENALTY_NAMES[Penalty(p)])
    wide.columns.name = None
    return wide


def paper_rule_note(runs: pd.DataFrame, patience: int) -> str:
    """A sentence on where the paper's literal rule stopped: how many runs it stopped while still at
    chance level (before their escape epoch), which a patience shorter than the plateau does."""
    kept = runs[~failed(runs, "test_acc_paper")]
    early = kept[kept["paper_stop_epoch"] < kept["escape_epoch"]]
    stops = kept["paper_stop_epoch"]
    return (f"The paper's rule with patience {patience} stopped the {len(kept)} runs that left chance level at "
            f"epochs {stops.min():.0f}-{stops.max():.0f} (median {stops.median():.0f}) of {kept['epochs'].max():.0f}; "
            f"{len(early)} of them while still in their chance plateau.")


def memorisation_sentence(fit: pd.DataFrame) -> str:
    """How much of the flipped labels the unregularised runs fit at the end (from `memorisation`),
    and the other penalties' λ beside them."""
    if fit.empty or fit["flipped_fit"].isna().all():
        return "No label noise in this sweep: nothing to memorise."
    noise = fit["label_noise"].iloc[0]
    none = fit[fit["penalty"] == Penalty.NONE]
    head = ("no unregularised run" if none.empty else
            f"the unregularised runs fit {100 * none['flipped_fit'].iloc[0]:.1f} % of their flipped training labels "
            f"(seeds {100 * none['flipped_fit_min'].iloc[0]:.1f}-{100 * none['flipped_fit_max'].iloc[0]:.1f} %)")
    others = [f"{PENALTY_NAMES[r.penalty]} λ={r.lam:.0e}: {100 * r.flipped_fit:.1f} %"
              for r in fit[fit["penalty"] != Penalty.NONE].itertuples() if pd.notna(r.flipped_fit)]
    return f"At label noise {noise:g}, at the end of training, {head}; " + "; ".join(others) + "."


def escape_summary(runs: pd.DataFrame) -> list[str]:
    """One sentence per penalty: which λ never left chance, and the median escape epoch of the others."""
    out = []
    for pen, g in in_paper_order(runs).groupby("penalty", sort=False):
        never = g[g["escape_epoch"].isna()].groupby("lam").size()
        left = g.dropna(subset=["escape_epoch"])
        by_lam = left.groupby("lam")["escape_epoch"].median().sort_index(ascending=False)
        parts = [f"λ={lam:.0e}: median epoch {e:.0f}" if lam else f"median epoch {e:.0f}" for lam, e in by_lam.items()]
        text = f"{PENALTY_NAMES[pen]}: left chance at " + ("; ".join(parts) or "no λ")
        if len(never):
            text += f". Never left chance in {g['epochs'].max():.0f} epochs: " + ", ".join(
                f"λ={lam:.0e} ({n} of {int((g['lam'] == lam).sum())} runs)" for lam, n in never.items())
        out.append(text + ".")
    return out


def unit_norm_check(m: pd.DataFrame) -> str:
    """A sentence on whether unit-norm margins (`margins(kind="unit_norm")`) still depend on the
    image: with biases left untouched, the weight path of the unit-norm network is scaled down by
    Π‖W_i‖_F while the biases are not, so when Π‖W‖ is large its output is almost a constant."""
    if m.empty:
        return "No margins to check."
    # binary margins are y·f(x): with f constant they are ±f, so look at |margin| = |f(x)|
    per_run = m.assign(size=m["margin"].abs()).groupby(["penalty", "label_noise", "seed"])["size"]
    spread = per_run.std().median()
    size = per_run.mean().median()
    if size > 0 and spread < 0.01 * size:
        return (f"Warning: the unit-norm network's output hardly depends on the image (median std of "
                f"|margin| over test images {spread:.2g} vs median |margin| {size:.2g}): the untouched biases "
                "dominate the unit-norm "
                "network's output, so their mean mostly reflects the biases and the class balance, not "
                "how well test points are separated. The y·f(x)/std(f) margins (the authors' normalisation) do "
                "not have this problem.")
    return (f"The unit-norm network's output varies with the image (median std of |margin| over test "
            f"images {spread:.2g}, median |margin| {size:.2g}).")


def flatness_sentences(verdicts: pd.DataFrame) -> list[str]:
    """The paper's Fig. 3 claim checked against `flatness_verdict` tables (with a `weights`
    column: raw / rebalanced): by how many measures the multiplicative model is flatter."""
    from mulreg.results.paper import FIG3_CLAIM

    def names(who):
        d = verdicts[verdicts["flatter"] == who]
        return ", ".join(d["measure"] + (" (" + d["weights"] + ")" if "weights" in d else "")) or "none"

    n_mul = int((verdicts["flatter"] == "multiplicative").sum())
    return [f"Paper: {FIG3_CLAIM}. Here the multiplicative model is flatter by {n_mul} of {len(verdicts)} "
            f"measures: {names('multiplicative')}.",
            f"The additive model is flatter by: {names('additive')}."]


def rule_names(patience: int | None = None) -> dict[str, str]:
    """`mulreg.core.epochs.RULES` for reading, with the paper's rule's patience written in."""
    if patience is None:
        return dict(RULES)
    return {k: v.replace("`patience`", str(patience)) for k, v in RULES.items()}


def _pp(x: float) -> str:
    return "—" if pd.isna(x) else f"{100 * x:+.1f}"


def _p(x: float) -> str:
    return "—" if pd.isna(x) else f"{x:.2g}"


def norm_ratios(stats: pd.DataFrame) -> list[str]:
    """Sentences with Π(additive)/Π(multiplicative) and Π(none)/Π(additive) per noise level (from
    `group_stats(..., ["norm_product"])`), next to the paper's Table 1 ratios (clean labels)."""
    from mulreg.results.paper import TABLE1_NORM_PRODUCT as P

    pi = stats[stats["quantity"] == "norm_product"].pivot(index="label_noise", columns="penalty", values="value")
    out = []
    for noise, row in pi.iterrows():
        add_mul = row.get(Penalty.SUM, np.nan) / row.get(Penalty.MUL, np.nan)
        none_add = row.get(Penalty.NONE, np.nan) / row.get(Penalty.SUM, np.nan)
        out.append(f"label noise {noise:g}: Π(additive)/Π(multiplicative) = {add_mul:.3g} (paper, clean: "
                   f"{P['sum'] / P['mul']:.3g}); Π(none)/Π(additive) = {none_add:.3g} (paper, clean: "
                   f"{P['none'] / P['sum']:.3g})")
    return out


def reduction_notes(profile: str, spec: SweepSpec) -> str:
    """A sentence saying how a profile's sweep departs from the paper's protocol
    (`mulreg.results.paper.PROTOCOL`), or that it follows it."""
    configs = spec.configs()
    c = configs[0]
    paper = PROTOCOL[c.task]
    lams = [len({x.lam for x in configs if x.penalty == p}) for p in (Penalty.SUM, Penalty.MUL)]
    used = {"n_train": c.n_train or paper["n_train"], "n_test": c.n_test or paper["n_test"],
            "max_epochs": c.max_epochs, "seeds": len({x.seed for x in configs}), "lambdas": min(lams),
            "width": c.model.width, "init_scale": c.init_scale, "lr": c.lr, "batch_size": c.batch_size}
    names = {"n_train": "training images (pool before the 80/20 split)", "n_test": "test images",
             "max_epochs": "epochs at most", "seeds": "seeds", "lambdas": "λ values per penalty",
             "width": "× the channel width", "init_scale": "init scale", "lr": "learning rate",
             "batch_size": "batch size"}
    diffs = [f"{used[k]:g} instead of {paper[k]:g} {label}" for k, label in names.items()
             if k in paper and used[k] != paper[k]]
    noise = tuple(sorted({x.label_noise for x in configs}))
    if noise != tuple(paper["label_noise"]):
        diffs.append(f"label noise {list(noise)} instead of {list(paper['label_noise'])}")
    es = c.early_stopping
    if es is None:
        diffs.append("no early stopping (every epoch recorded; epoch rules applied afterwards) instead of "
                     f"patience {paper['patience']}")
    elif es.patience != paper["patience"]:
        diffs.append(f"{es.patience} instead of {paper['patience']} epochs of early-stopping patience")
    stages = ""
    if spec.confirmation is not None:  # the counts above are the selection stage's
        cf = spec.confirmation
        stages = (f" Two stages (docs/PREREGISTRATION.md): the sizes above are the selection stage's (seeds "
                  f"{sorted({x.seed for x in configs})}); the confirmation retrains the chosen λ on fresh seeds "
                  f"{cf.seeds} at label noise {cf.label_noise}.")
    if not diffs:
        return f"Profile '{profile}' follows the paper's {c.task} protocol in every size checked here." + stages
    return (f"Profile '{profile}' is a REDUCED version of the paper's {c.task} protocol: " + "; ".join(diffs)
            + ". Numbers below are therefore not expected to match the paper's digits; docs/PROFILES.md says why."
            + stages)


# ---- notebook 06: the arms
def exploratory_note(spec: SweepSpec) -> str:
    """Notebook 06's first words: how many seeds, and how many comparisons per epoch rule it makes."""
    from mulreg.results.claims import MIN_PAIRS

    table = pd.json_normalize([c.model_dump() for c in spec.configs()])
    named = table.assign(arm=[arms.arm_of(r) for r in table.to_dict("records")])
    n_arms = named["arm"].nunique() + 1  # + early stopping, read from the unregularised runs
    noise = named["label_noise"].nunique()
    seeds = named["seed"].nunique()
    comparisons = (n_arms - 1) * noise
    power = (f"below the {MIN_PAIRS} pairs the verdict rules need to resolve anything, so every comparison "
             "is reported as not resolved with its per-seed differences" if seeds < MIN_PAIRS
             else "each comparison is tested as in notebook 01")
    return (f"Exploratory: {seeds} seed{'s' * (seeds != 1)} per setting, {power}. It compares the multiplicative "
            f"penalty with {n_arms - 1} other arms at {noise} noise level{'s' * (noise != 1)}: {comparisons} "
            f"comparisons per epoch rule, Holm-corrected per rule, under {len(RULES)} rules.")


SUMMARY_RULES = ("test_acc_best_val", "test_acc_last")  # the two readings of notebook 06's summary table


def _setting(arm: str, value: float) -> str:
    if pd.isna(value):
        return "—"
    if arm.endswith("dropout"):
        return f"rate {value:g}"
    return "—" if value == 0 else f"λ {value:.0e}"


def _mean_std(mean: float, std: float, scale: float = 100) -> str:
    if pd.isna(mean):
        return "—"
    return f"{scale * mean:.2f} ± {scale * std:.2f}" if pd.notna(std) else f"{scale * mean:.2f}"


def arm_summary(runs: pd.DataFrame, versus: pd.DataFrame) -> pd.DataFrame:
    """Notebook 06's summary, one row per arm and noise level: the setting the selection rule chose
    (and whether it is at an end of the arm's grid), test accuracy (%) under the best-validation and
    last-epoch rules, the chosen setting's runs used, the arm's runs excluded, and the
    multiplicative penalty's lead over the arm (points, paired by seed, headline rule; `arms.against`)."""
    best = {m: arms.select(runs, m).set_index([arms.ARM, "label_noise"]) for m in SUMMARY_RULES if m in runs}
    head = best[SUMMARY_RULES[0]]
    out = pd.DataFrame(index=head.index)
    out["chosen"] = [_setting(arm, v) for (arm, _), v in zip(head.index, head[arms.SETTING])]
    out["at grid end"] = head["grid_end"]
    for metric, b in best.items():
        out[f"test acc., {RULES[metric]} (%)"] = [_mean_std(m, s) for m, s in zip(b["mean"], b["std"])]
    out["runs used"] = [f"{u:.0f}/{n:.0f}" for u, n in zip(head["n_used"].fillna(0), head["n_setting"].fillna(0))]
    out["excluded in arm"] = [f"{e:.0f}/{n:.0f}" for e, n in zip(head["n_excluded"], head["n_runs"])]
    lead = versus[versus["rule"] == SUMMARY_RULES[0]]
    lead = {(r[arms.ARM], float(r["noise"])): claims.cell(r) for _, r in lead.iterrows()}
    out[f"{arms.REFERENCE} − arm (pp)"] = [lead.get(i, "reference" if i[0] == arms.REFERENCE else "—")
                                           for i in out.index]
    return out.reset_index()


def normalisation_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per normalised network and penalty (`arms.under_normalisation`): does the
    penalty regularise here, or only move the effective learning rate, with the numbers."""
    out = []
    for r in table.to_dict("records"):
        if pd.isna(r["lam"]) or r["n"] == 0:
            out.append(f"{r['network'].capitalize()}, {r['penalty']} penalty (noise {r['label_noise']:g}): no seed "
                       "has usable runs with and without it (all excluded); no answer.")
            continue
        span = "" if pd.isna(r["low"]) else f" (95 % interval {100 * r['low']:+.1f} to {100 * r['high']:+.1f})"
        moves = abs(r["eff_lr_ratio"] - 1) > arms.MOVES
        rate = ("it moves the effective learning rate by more than " if moves else "its effective learning rate "
                "stays within ") + f"{arms.MOVES:.0%} of the unpenalised one"
        answer = {"regularises": "it regularises here", "hurts": "it hurts here"}.get(
            r["verdict"], f"its effect on accuracy is {r['verdict']} at this n, so whether it regularises is open; "
                          f"{rate}")
        out.append(f"{r['network'].capitalize()}, {r['penalty']} penalty (λ {r['lam']:.0e}, noise "
                   f"{r['label_noise']:g}): {100 * r['mean']:+.1f} points against the same network without it"
                   f"{span}, over {r['n']} seed pair{'s' * (r['n'] != 1)}; effective learning rate of its "
                   f"scale-free layers ×{r['eff_lr_ratio']:.2f} that of the unpenalised network; {answer}.")
    return out
