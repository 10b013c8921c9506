"""Notebook 06's arms: which regulariser each run is, the selection rule per arm, and the two
comparisons the notebook makes (decision rules: docs/PROFILES.md, "quick, notebook 06").

An arm is a network (plain, batch norm, weight norm) with its regularisers (no penalty, additive,
multiplicative, L1, dropout, augmentation), named '<network> · <regulariser>'. Its `setting` is what
the selection rule picks within the arm: λ for a penalty, the rate for dropout, 0 otherwise. Early
stopping alone is the plain network without penalty read at its best-validation epoch under every
epoch rule (every run records every epoch, so it needs no runs of its own).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from mulreg.core.epochs import HEADLINE, RULES, val_twin
from mulreg.engine import selection
from mulreg.protocols import EFF_LR, PENALTY_NAMES, Penalty
from mulreg.results.claims import ALPHA, LEVEL, decide, test

ARM, SETTING, NETWORK = "arm", "setting", "network"
BY = (ARM, "label_noise")
PLAIN = "plain"
NORMALISATIONS = {"model.batch_norm": "batch norm", "model.weight_norm": "weight norm"}  # run column → network
NETWORKS = (PLAIN, *NORMALISATIONS.values())
EARLY_STOPPING = "early stopping"
REGULARISERS = (*(PENALTY_NAMES[p] for p in (Penalty.MUL, Penalty.SUM, Penalty.NONE)), EARLY_STOPPING,
                PENALTY_NAMES[Penalty.L1], "dropout", "augmentation")  # the order of every table
REFERENCE = f"{PLAIN} · {PENALTY_NAMES[Penalty.MUL]}"  # what question (b) compares every arm with
LAST_EPOCHS = 10  # the effective learning rate of a run: its mean over this many last epochs
# the layers whose weight scale the network's output ignores, whose effective learning rate the penalty can move
SCALE_FREE = {"batch norm": lambda layer: layer.startswith("conv"), "weight norm": lambda layer: True}


def arm_name(network: str, regulariser: str) -> str:
    return f"{network} · {regulariser}"


def _on(value) -> bool:
    return value is not None and not pd.isna(value) and bool(value)


def arm_of(run: Mapping) -> str:
    """'<network> · <regulariser>' of one runs-table row, e.g. 'batch norm · additive'."""
    network = next((name for column, name in NORMALISATIONS.items() if _on(run.get(column))), PLAIN)
    parts = [PENALTY_NAMES[Penalty(run["penalty"])]] if run["penalty"] != Penalty.NONE else []
    parts += ["dropout"] * _on(run.get("model.dropout")) + ["augmentation"] * _on(run.get("augment"))
    return arm_name(network, " + ".join(parts) or PENALTY_NAMES[Penalty.NONE])


def setting_of(run: Mapping) -> float:
    """What the selection rule picks within the run's arm: λ, else the dropout rate, else 0."""
    if run["penalty"] != Penalty.NONE:
        return float(run["lam"])
    return float(run["model.dropout"]) if _on(run.get("model.dropout")) else 0.0


def annotate(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with columns arm, network and setting, plus the early-stopping arm: copies of the
    plain unregularised runs whose every epoch-rule column reads the best-validation epoch."""
    records = runs.to_dict("records")
    out = runs.assign(**{ARM: [arm_of(r) for r in records], SETTING: [setting_of(r) for r in records]})
    out[NETWORK] = out[ARM].str.partition(" · ")[0]
    stopped = out[out[ARM] == arm_name(PLAIN, PENALTY_NAMES[Penalty.NONE])].copy()
    stopped[ARM] = arm_name(PLAIN, EARLY_STOPPING)
    for metric in RULES:
        if metric in stopped and HEADLINE in stopped:
            stopped[metric] = stopped[HEADLINE]
            if val_twin(metric) in stopped and val_twin(HEADLINE) in stopped:
                stopped[val_twin(metric)] = stopped[val_twin(HEADLINE)]
    return ordered(pd.concat([out, stopped], ignore_index=True))


def label_histories(hist: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch histories with each run's arm, network and setting from `annotate`d `runs` (the
    early-stopping copies left out: they share their runs' histories)."""
    own = runs.loc[runs[ARM] != arm_name(PLAIN, EARLY_STOPPING), ["key", ARM, NETWORK, SETTING]]
    return hist.merge(own, on="key")


def penalty_arms(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of every network's own penalty arms (none, additive, multiplicative): those that
    show what a penalty does to the norms and the effective learning rate of each network."""
    own = {PENALTY_NAMES[p] for p in (Penalty.NONE, Penalty.SUM, Penalty.MUL)}
    return runs[runs[ARM].str.partition(" · ")[2].isin(own)]


def arm_order(arm: str) -> tuple[int, int, str]:
    network, _, regulariser = arm.partition(" · ")
    rank = REGULARISERS.index(regulariser) if regulariser in REGULARISERS else len(REGULARISERS)
    return (NETWORKS.index(network) if network in NETWORKS else len(NETWORKS), rank, regulariser)


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by network (plain, batch norm, weight norm), then regulariser, then label noise."""
    if df.empty:
        return df.reset_index(drop=True)
    rank = df[ARM].map(arm_order)
    sort = ["_rank"] + [c for c in ("label_noise", "seed") if c in df]
    return df.assign(_rank=rank).sort_values(sort, kind="stable").drop(columns="_rank").reset_index(drop=True)


def select(runs: pd.DataFrame, metric: str = HEADLINE) -> pd.DataFrame:
    """The selection rule per arm and noise level for `metric` (`mulreg.engine.selection.select` with the
    arm's setting: on validation unless the rule reads the test set), `n_setting`: the runs of the
    chosen setting (used or not), and `grid_end`: 'strongest' or 'weakest' where the chosen setting
    is at an end of its arm's grid (a better one may lie beyond it), empty inside or for one setting."""
    best = selection.select(runs, metric, by=BY, setting=SETTING)  # with its grid_end
    per_setting = runs.groupby([*BY, SETTING]).size().rename("n_setting").reset_index()
    return ordered(best.merge(per_setting, on=[*BY, SETTING], how="left"))


def chosen_runs(runs: pd.DataFrame, metric: str = HEADLINE) -> pd.DataFrame:
    """The usable runs of each arm's chosen setting, selected for `metric`."""
    best = selection.select(runs, metric, by=BY, setting=SETTING)
    return ordered(selection.chosen_runs(runs, best, by=BY, setting=SETTING))


def _per_seed(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`metric` of each arm's chosen setting, one column per arm, indexed by (label_noise, seed)."""
    return chosen_runs(runs, metric).pivot_table(index=["label_noise", "seed"], columns=ARM, values=metric)


def against(runs: pd.DataFrame, reference: str = REFERENCE, metrics: Iterable[str] | None = None,
            level: float = LEVEL, alpha: float = ALPHA) -> pd.DataFrame:
    """Question (b): `reference` against every other arm, paired by seed, under each epoch rule.
    Rows: claim ('<reference> beats <arm>'), arm, noise, rule, and the columns of
    `mulreg.results.claims.test` and `decide` (differences reference − arm, as fractions); each rule's
    comparisons are one Holm family."""
    out = []
    for metric in [m for m in (metrics or RULES) if m in runs and selection.SELECTED_ON[m] in runs]:
        wide = _per_seed(runs, metric)
        if reference not in wide:
            continue
        rows = []
        for arm in sorted(set(wide.columns) - {reference}, key=arm_order):
            gap = wide[reference] - wide[arm]
            for noise in sorted(gap.index.get_level_values("label_noise").unique()):
                rows.append({"claim": f"{reference} beats {arm}", ARM: arm, "noise": f"{noise:g}", "rule": metric,
                             **test(gap.xs(noise, level="label_noise").tolist(), level)})
        if rows:
            out.append(decide(pd.DataFrame(rows), alpha))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def effective_lr(hist: pd.DataFrame, network: str, last: int = LAST_EPOCHS) -> pd.Series:
    """Per run (key): its effective learning rate, the mean over its last `last` epochs and over the
    layers `network` makes scale-free (`SCALE_FREE`) of ‖ΔP_i‖/‖P_i‖ per step."""
    layers = [layer for layer in EFF_LR.layers(hist.columns) if SCALE_FREE[network](layer)]
    tail = hist.sort_values("epoch").groupby("key").tail(last)
    return tail.groupby("key")[[EFF_LR.column(layer) for layer in layers]].mean().mean(axis=1)


def under_normalisation(runs: pd.DataFrame, hist: pd.DataFrame, metric: str = HEADLINE,
                        level: float = LEVEL, alpha: float = ALPHA) -> pd.DataFrame:
    """Question (a), per normalised network, penalty and noise level: the chosen λ against the same
    network without penalty, paired by seed on `metric` (one Holm family: 'regularises' when it
    holds, 'hurts' when reversed, else the outcome), and `eff_lr_ratio`: the penalised runs' mean
    effective learning rate over the unpenalised ones' (`effective_lr`)."""
    picked = chosen_runs(runs, metric)
    wide = picked.pivot_table(index=["label_noise", "seed"], columns=ARM, values=metric)
    rows = []
    for network in NORMALISATIONS.values():
        base = arm_name(network, PENALTY_NAMES[Penalty.NONE])
        rates = effective_lr(hist[hist["key"].isin(picked.loc[picked[NETWORK] == network, "key"])], network)
        for penalty in (Penalty.SUM, Penalty.MUL):
            arm = arm_name(network, PENALTY_NAMES[penalty])
            if arm not in wide or base not in wide:
                continue
            for noise in sorted(wide.index.get_level_values("label_noise").unique()):
                tested = test((wide[arm] - wide[base]).xs(noise, level="label_noise").tolist(), level)
                at = picked[np.isclose(picked["label_noise"], noise)]
                keys = {a: at.loc[at[ARM] == a, "key"] for a in (arm, base)}
                ratio = rates.reindex(keys[arm]).mean() / rates.reindex(keys[base]).mean()
                lam = at.loc[at[ARM] == arm, SETTING]
                rows.append({NETWORK: network, "penalty": PENALTY_NAMES[penalty], "label_noise": noise,
                             "lam": lam.iloc[0] if len(lam) else np.nan, **tested, "eff_lr_ratio": ratio})
    if not rows:
        return pd.DataFrame()
    table = decide(pd.DataFrame(rows), alpha)
    return table.assign(verdict=table["outcome"].map(lambda o: VERDICTS.get(o, o)))


VERDICTS = {"holds": "regularises", "reversed": "hurts"}  # otherwise: the outcome as it is
MOVES = 0.10  # an effective-learning-rate ratio further than this from 1 counts as moving it (docs/PROFILES.md)
