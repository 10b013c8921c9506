"""Numbers from runs tables and histories, as tables: no store, no data, no sentences.

- `group_stats` / `headline_stats` summarise the runs of each chosen λ (the selection rule is
  `mulreg.engine.selection`);
- `epoch_rules` reads test accuracy under every epoch rule of `mulreg.core.epochs` (docs/PAPER.md, "A
  protocol question"), each with its own selection (`mulreg.engine.selection.select`);
- `paired_over_epochs`: the paired difference between two penalties at every epoch, with its band;
- `memorisation` and `escape_table`: how much of the flipped labels each run fits, and when it
  left chance level;
- `rank_table`, `rank_tidy`, `rank_ranges`, `norm_loss_correlation`, `dynamics_summary`: Table 1
  and Fig. 2; `sharpness_table`, `flatness_verdict`: Fig. 3.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mulreg.core.epochs import HEADLINE, RULES
from mulreg.engine.selection import GROUP, SELECTED_ON, chosen_runs, failed, select
from mulreg.protocols import NORM, PENALTY_ORDER, RANK, StopReason
from mulreg.results.claims import interval


def chosen_for_headline(runs: pd.DataFrame) -> pd.DataFrame:
    """The usable runs of each group's λ chosen for the headline rule (`mulreg.engine.selection`)."""
    return in_paper_order(chosen_runs(runs, select(runs, HEADLINE)))


def lambdas_of(runs: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """The λ of each group of `runs` (one per group after a selection or in a confirmation)."""
    return runs.groupby(list(by), as_index=False)["lam"].first()


def group_stats(runs: pd.DataFrame, quantities: Iterable[str], by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Tidy mean, std (over seeds), min, max and n of each quantity per group: the format
    `mulreg.results.paper.compare` and the plots take (columns quantity, <by>, value, std, min, max, n)."""
    rows = []
    for q in quantities:
        g = runs.groupby(list(by))[q].agg(["mean", "std", "min", "max", "count"]).reset_index()
        rows.append(g.rename(columns={"mean": "value", "count": "n"}).assign(quantity=q))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return in_paper_order(out)


def headline_stats(chosen: pd.DataFrame, quantities: Iterable[str] = ()) -> pd.DataFrame:
    """`group_stats` of the headline rule's test accuracy (`mulreg.core.epochs.HEADLINE`), named
    `test_acc` as in the paper's tables, and of `quantities` (of the stored weights)."""
    stats = group_stats(chosen, [HEADLINE, *quantities])
    return stats.assign(quantity=stats["quantity"].replace({HEADLINE: "test_acc"}))


def epoch_rules(runs: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Test accuracy per group under each epoch rule (`mulreg.core.epochs.RULES`), each with its own
    selection (`mulreg.engine.selection.select`): columns rule, <by>, lam, selected_on, mean, std, n_used."""
    parts = []
    for metric, label in RULES.items():
        if metric in runs and SELECTED_ON[metric] in runs:
            parts.append(in_paper_order(select(runs, metric, by=by)).assign(rule=label, metric=metric))
    return pd.concat(parts, ignore_index=True)


def paired_over_epochs(hist: pd.DataFrame, a: str, b: str, column: str = "test_acc",
                       level: float = 0.95) -> pd.DataFrame:
    """The paired difference `column`(a) − `column`(b) at every epoch, per noise level, from the
    histories of runs with one setting per penalty (a confirmation stage): epoch, label_noise,
    n (pairs), mean, low, high (the t interval over seeds)."""
    wide = hist.pivot_table(index=["label_noise", "epoch", "seed"], columns="penalty", values=column)
    if a not in wide or b not in wide:
        return pd.DataFrame(columns=["label_noise", "epoch", "n", "mean", "low", "high"])
    gap = (wide[a] - wide[b]).dropna()
    rows = [{"label_noise": noise, "epoch": epoch, **interval(g.to_numpy(), level)}
            for (noise, epoch), g in gap.groupby(level=["label_noise", "epoch"])]
    return pd.DataFrame(rows).drop(columns="sd")


def memorisation(runs: pd.DataFrame, noise: float | None = None) -> pd.DataFrame:
    """Per penalty and λ at label noise `noise` (default: the highest): the fraction of flipped
    training labels the final model fits (mean, min and max over seeds), of clean ones, and how
    many runs were at chance level."""
    noise = runs["label_noise"].max() if noise is None else noise
    part = runs[np.isclose(runs["label_noise"], noise)]
    # a run at chance level "fits" about half of any labels by guessing: it is counted, not averaged
    learned = part[~failed(part, "train_acc_flipped")]
    fit = learned.groupby(["penalty", "lam"]).agg(
        flipped_fit=("train_acc_flipped", "mean"), flipped_fit_min=("train_acc_flipped", "min"),
        flipped_fit_max=("train_acc_flipped", "max"), clean_fit=("train_acc_clean", "mean"))
    counts = part.groupby(["penalty", "lam"]).agg(
        runs=("key", "size"), at_chance=("stop_reason", lambda r: int((r == StopReason.CHANCE_LEVEL).sum())))
    return in_paper_order(counts.join(fit).reset_index().assign(label_noise=noise))


def escape_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The epoch at which each run left chance level, one row per penalty and λ, one column per
    (label noise, seed); 'never' for runs that stayed at chance for all their epochs."""
    cell = runs.assign(escape=[("never" if pd.isna(e) else f"{e:.0f}") + f" / {n:.0f}"
                               for e, n in zip(runs["escape_epoch"], runs["epochs"])])
    wide = cell.pivot_table(index=["penalty", "lam"], columns=["label_noise", "seed"], values="escape", aggfunc="first")
    wide.columns = [f"noise {n:g}, seed {s}" for n, s in wide.columns]
    return in_paper_order(wide.reset_index())


def representatives(runs: pd.DataFrame, by: Sequence[str] = GROUP, metric: str = "test_acc") -> pd.DataFrame:
    """One run per group: the seed with the highest `metric` among `runs` (e.g. `chosen_runs`),
    for tables of one network (Table 1) and the spectra."""
    if not len(runs):
        return runs
    idx = runs.groupby(list(by))[metric].idxmax()
    return in_paper_order(runs.loc[idx.values])


def rank_table(runs: pd.DataFrame, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1 from one run per penalty (`representatives` at one noise level): rows are layers,
    then Σ‖W‖² and Π‖W‖; columns are (rank|norm, penalty). Ranks of all seeds of the chosen λ
    (min–max) come from `rank_ranges`."""
    layers = list(layers or RANK.layers(runs.columns))
    table = {}
    for r in runs.to_dict("records"):
        pen = r["penalty"]
        table[("rank", pen)] = [r[RANK.column(layer)] for layer in layers] + [np.nan, np.nan]
        table[("‖W‖_F", pen)] = [r[NORM.column(layer)] for layer in layers] + [r["norm_sq_sum"], r["norm_product"]]
    out = pd.DataFrame(table, index=layers + ["Σ‖W‖²", "Π‖W‖"])
    return out.reindex(columns=sorted(out.columns, key=lambda c: (c[0] != "rank", PENALTY_ORDER.index(c[1]))))


def matrix_rank_table(runs: pd.DataFrame, noise: float = 0.0) -> pd.DataFrame:
    """Table 1 under `torch.linalg.matrix_rank`'s default tolerance (descriptive; docs/PREREGISTRATION-2.md,
    beside B7-B8), from `analysis.with_matrix_ranks` runs at label noise `noise`: one row per layer,
    one column per penalty, 'mean (min–max)' over the seeds."""
    from mulreg.protocols import MATRIX_RANK

    at = in_paper_order(runs[np.isclose(runs["label_noise"], noise)])
    table = {}
    for pen, group in at.groupby("penalty", sort=False):
        ranks = group[MATRIX_RANK.columns(group.columns)]
        table[pen] = [f"{m:.1f} ({lo:.0f}–{hi:.0f})" for m, lo, hi in zip(ranks.mean(), ranks.min(), ranks.max())]
    return pd.DataFrame(table, index=pd.Index(MATRIX_RANK.layers(at.columns), name="layer")).reset_index()


def rank_tidy(runs: pd.DataFrame, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """The numbers of `rank_table` in the tidy format of `mulreg.results.paper.compare` (source table1)."""
    layers = list(layers or RANK.layers(runs.columns))
    rows = []
    for r in runs.to_dict("records"):
        base = {"penalty": r["penalty"], "label_noise": r["label_noise"], "n": 1}
        for layer in layers:
            rows.append({**base, "quantity": "rank", "layer": layer, "value": r[RANK.column(layer)]})
            rows.append({**base, "quantity": "norm", "layer": layer, "value": r[NORM.column(layer)]})
        rows.append({**base, "quantity": "norm_sq_sum", "layer": None, "value": r["norm_sq_sum"]})
        rows.append({**base, "quantity": "norm_product", "layer": None, "value": r["norm_product"]})
    return pd.DataFrame(rows)


def rank_ranges(runs: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """min–max of each layer's effective rank over the seeds of the chosen λ."""
    layers = RANK.layers(runs.columns)
    g = runs.groupby(list(by))[[RANK.column(layer) for layer in layers]]
    lo, hi = g.min(), g.max()
    out = pd.DataFrame({layer: [f"{a:.0f}" if a == b else f"{a:.0f}–{b:.0f}"
                                for a, b in zip(lo[RANK.column(layer)], hi[RANK.column(layer)])]
                        for layer in layers}, index=lo.index).reset_index()
    out["seeds"] = g.size().values
    return in_paper_order(out)


def norm_loss_correlation(runs: pd.DataFrame, by: str | None = "label_noise",
                          loss: str = "test_loss") -> pd.DataFrame:
    """Correlation across runs of the final `loss` with log Π‖W‖ and with log Σ‖W‖² (Pearson on
    the logs, and Spearman), overall and per `by` value. Excluded runs are left out."""
    keep = runs[~failed(runs, loss)].copy()
    keep["log10 Π‖W‖"] = np.log10(keep["norm_product"])
    keep["log10 Σ‖W‖²"] = np.log10(keep["norm_sq_sum"])
    groups = [("all", keep)] + ([(v, g) for v, g in keep.groupby(by)] if by else [])
    rows = []
    for label, g in groups:
        row = {by or "group": label, "runs": len(g)}
        for col, short in (("log10 Π‖W‖", "Π"), ("log10 Σ‖W‖²", "Σ")):
            ok = len(g) > 2 and g[col].nunique() > 1 and g[loss].nunique() > 1
            row[f"pearson {short}"] = g[loss].corr(g[col]) if ok else np.nan
            row[f"spearman {short}"] = g[loss].corr(g[col], method="spearman") if ok else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def sharpness_table(flat: pd.DataFrame, radii: Sequence[float]) -> pd.DataFrame:
    """Long table (model, radius, mean, std) of the loss increase at each radius, from rows of
    `mulreg.results.landscape.flatness` indexed by model name."""
    rows = [{"model": name, "radius": r, "mean": row[f"sharpness_r{r:g}"], "std": row.get(f"sharpness_r{r:g}_std")}
            for name, row in flat.iterrows() for r in radii]
    return pd.DataFrame(rows)


def flatness_verdict(flat: pd.DataFrame, additive: str, multiplicative: str) -> pd.DataFrame:
    """For every flatness number of `flat` (rows: models), the additive and multiplicative values,
    their ratio (additive / multiplicative; > 1 means the multiplicative model is flatter for
    sharpness-like numbers) and which is flatter."""
    rows = []
    for col in flat.columns:
        if col in ("loss", "acc") or col.endswith("_std") or col.endswith("_se"):
            continue
        a, m = flat.loc[additive, col], flat.loc[multiplicative, col]
        # the top eigenvalue is the largest in magnitude; the other numbers are signed loss increases
        # or curvature sums, where smaller means flatter
        ka, km = (abs(a), abs(m)) if col == "hessian_top" else (a, m)
        flatter = "—" if pd.isna(a) or pd.isna(m) or a == m else ("multiplicative" if km < ka else "additive")
        rows.append({"measure": col, "additive": a, "multiplicative": m,
                     "additive / multiplicative": a / m if m else np.nan, "flatter": flatter})
    return pd.DataFrame(rows)


def dynamics_summary(hist: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Per group, from the per-epoch histories: Π‖W‖ and Σ‖W‖² at the last epoch (mean over seeds)
    and their change over the second half of training (log10 ratio of the last epoch to the middle
    one), to check Fig. 2's words ('Σ keeps rising while Π stays flat' for the multiplicative run)."""
    rows = []
    for keys, g in hist.sort_values("epoch").groupby(list(by)):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,)))
        for metric in ("norm_product", "norm_sq_sum"):
            per_run = g.groupby("key")[metric]
            last = per_run.last()
            middle = per_run.apply(lambda s: s.iloc[len(s) // 2])
            row[f"{metric} last"] = last.mean()
            row[f"{metric} log10 change, 2nd half"] = np.log10(last / middle).mean()
        row["epochs"] = g.groupby("key")["epoch"].max().mean()
        rows.append(row)
    return in_paper_order(pd.DataFrame(rows))


def in_paper_order(df: pd.DataFrame) -> pd.DataFrame:
    """Penalties in the paper's order (mul, sum, none), then the rest of the rows as they were."""
    if df.empty or "penalty" not in df:
        return df.reset_index(drop=True)
    rank = df["penalty"].map({p: i for i, p in enumerate(PENALTY_ORDER)})
    sort = ["_rank"] + [c for c in ("label_noise",) if c in df]
    return df.assign(_rank=rank).sort_values(sort, kind="stable").drop(columns="_rank").reset_index(drop=True)
