"""The paper's published numbers (docs/PAPER.md, "Published results to compare against") as plain
data, its protocol, and the "paper vs. reproduced" tables the notebooks show.

Penalties are named as in `RunConfig.penalty`: "mul" (multiplicative, L2-mul), "sum" (additive,
L2-sum), "none" (unregularised). Accuracies are fractions (the paper prints percentages for Fig. 1:
89.50 % is stored as 0.8950), so they compare directly with the run store's `test_acc`.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from mulreg.protocols import PENALTY_NAMES, PENALTY_ORDER, Penalty

LAYERS = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2")

# ---- the protocol (docs/PAPER.md, "Binary task", "Multiclass task")
LAMBDA_GRID = tuple(5 * 10.0 ** -k for k in range(1, 16))  # 5e-1 … 5e-15 (binary)
MULTICLASS_LAMBDA_GRID = tuple(5 * 10.0 ** -k for k in range(1, 21))  # 5e-1 … 5e-20
PROTOCOL = {
    "binary": {
        "n_train": 10_000,  # cats + deer, the whole training pool (before the 80/20 split)
        "n_test": 2_000,
        "max_epochs": 2_000,
        "patience": 200,
        "seeds": 5,
        "label_noise": (0.0, 0.1, 0.2),
        "lambdas": len(LAMBDA_GRID),
        "init_scale": 0.2,
        "batch_size": 16,
        "lr": 0.03,
        "width": 1.0,
    },
    "multiclass": {
        "n_train": 50_000,
        "n_test": 10_000,
        "max_epochs": 2_000,
        "patience": 200,
        "seeds": 10,
        "label_noise": (0.0,),
        "lambdas": len(MULTICLASS_LAMBDA_GRID),
        "batch_size": 16,
        "lr": 0.03,
        "width": 1.0,
    },
}

# ---- Fig. 1: binary, s = 0.2, best λ per group, mean over 5 seeds
FIG1_TEST_ACC = {  # (penalty, label noise) → test accuracy
    ("mul", 0.0): 0.8950, ("sum", 0.0): 0.8787, ("none", 0.0): 0.8780,
    ("mul", 0.1): 0.8668, ("sum", 0.1): 0.8113, ("none", 0.1): 0.8020,
    ("mul", 0.2): 0.8310, ("sum", 0.2): 0.7369, ("none", 0.2): 0.7308,
}
FIG1_MARGIN = {  # mean test margin of the unit-norm network; the paper gives 0 and 0.2 only
    ("mul", 0.0): 0.8329, ("sum", 0.0): 0.7896, ("none", 0.0): 0.7890,
    ("mul", 0.2): 0.7109, ("sum", 0.2): 0.5124, ("none", 0.2): 0.5066,
}

# ---- Table 1: best configuration of each group (binary, clean labels, s = 0.2)
TABLE1_RANK = {
    "mul": {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 47, "fc1": 2, "fc2": 1},
    "sum": {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 128, "fc1": 256, "fc2": 1},
    "none": {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 128, "fc1": 256, "fc2": 1},
}
TABLE1_NORM = {  # ‖W_i‖_F
    "mul": {"conv1": 7.39, "conv2": 16.84, "conv3": 10.74, "conv4": 1.29, "fc1": 0.46, "fc2": 0.38},
    "sum": {"conv1": 4.55, "conv2": 5.14, "conv3": 6.39, "conv4": 6.18, "fc1": 5.19, "fc2": 3.57},
    "none": {"conv1": 5.71, "conv2": 6.78, "conv3": 8.47, "conv4": 9.04, "fc1": 10.25, "fc2": 3.10},
}
TABLE1_NORM_SQ_SUM = {"mul": 456.0, "sum": 166.0, "none": 347.0}  # Σ‖W_i‖_F²
TABLE1_NORM_PRODUCT = {"mul": 3.01e2, "sum": 1.71e4, "none": 9.42e4}  # Π‖W_i‖_F

# ---- Fig. 3: loss landscape around the best runs (s = 0.2, one fixed seed)
FIG3_LAMBDA = {"sum": 5e-9, "mul": 5e-7}
FIG3_CLAIM = "the multiplicative basin is broader and flatter than the additive one"

# ---- Table 2: multiclass, mean over 10 seeds, best λ
TABLE2 = {
    "mul": {"norm_product": 3.73e7, "norm_sq_sum": 679.0, "train_acc": 0.891, "test_acc": 0.687},
    "sum": {"norm_product": 1.10e9, "norm_sq_sum": 875.0, "train_acc": 0.925, "test_acc": 0.651},
    "none": {"norm_product": 1.67e9, "norm_sq_sum": 960.0, "train_acc": 0.937, "test_acc": 0.650},
}

KEYS = ("source", "quantity", "penalty", "label_noise", "layer")


def published(source: str | Iterable[str] | None = None) -> pd.DataFrame:
    """Every published number as one tidy table: source (fig1, table1, table2), quantity,
    penalty, label_noise (NaN where the source has none), layer (None where per network), value."""
    rows = []
    for (pen, noise), v in FIG1_TEST_ACC.items():
        rows.append(("fig1", "test_acc", pen, noise, None, v))
    for (pen, noise), v in FIG1_MARGIN.items():
        rows.append(("fig1", "margin_mean", pen, noise, None, v))
    for pen in TABLE1_RANK:
        for layer in LAYERS:
            rows.append(("table1", "rank", pen, 0.0, layer, TABLE1_RANK[pen][layer]))
            rows.append(("table1", "norm", pen, 0.0, layer, TABLE1_NORM[pen][layer]))
        rows.append(("table1", "norm_sq_sum", pen, 0.0, None, TABLE1_NORM_SQ_SUM[pen]))
        rows.append(("table1", "norm_product", pen, 0.0, None, TABLE1_NORM_PRODUCT[pen]))
    for pen, values in TABLE2.items():
        for q, v in values.items():
            rows.append(("table2", q, pen, 0.0, None, v))
    table = pd.DataFrame(rows, columns=[*KEYS, "value"])
    table["value"] = table["value"].astype(float)
    if source is not None:
        table = table[table["source"].isin([source] if isinstance(source, str) else list(source))]
    return table.reset_index(drop=True)


def compare(reproduced: pd.DataFrame, source: str | Iterable[str], *, quantities: Iterable[str] | None = None,
            rename: dict[str, str] | None = None, how: str = "left") -> pd.DataFrame:
    """The "paper vs. reproduced" table.

    `reproduced` is tidy: columns `quantity`, `penalty`, optionally `label_noise` and `layer`,
    `value`, and optionally `std` and `n` (runs behind the value). It is matched to the published
    numbers of `source` on (quantity, penalty, label_noise, layer); the result has one row per
    published number (how="left"; "outer" also keeps reproduced numbers the paper lacks), with
    `paper`, `reproduced`, `std`, `n`, `difference` (reproduced − paper) and `ratio`
    (reproduced / paper). `quantities` keeps only those published quantities; `rename` maps a
    reproduced quantity onto a published one (e.g. {"margin_std_mean": "margin_mean"} to compare
    another margin definition with the paper's), replacing any reproduced row of that name."""
    paper = published(source).drop(columns="source").rename(columns={"value": "paper"})
    if quantities is not None:
        paper = paper[paper["quantity"].isin(list(quantities))]
    rep = reproduced.copy()
    if rename:
        rep = rep[~rep["quantity"].isin(list(rename.values()))]
        rep["quantity"] = rep["quantity"].replace(rename)
    if "label_noise" not in rep:
        rep["label_noise"] = 0.0
    if "layer" not in rep:
        rep["layer"] = None
    rep = rep.rename(columns={"value": "reproduced"})
    for col in ("std", "n"):
        if col not in rep:
            rep[col] = np.nan
    keys = ["quantity", "penalty", "label_noise", "layer"]
    # None and NaN do not match each other in a merge: use one sentinel for "no layer"
    paper["layer"] = paper["layer"].fillna("—")
    rep["layer"] = rep["layer"].fillna("—").astype(object)
    rep["label_noise"] = rep["label_noise"].astype(float).round(6)
    paper["label_noise"] = paper["label_noise"].astype(float).round(6)
    out = paper.merge(rep[keys + ["reproduced", "std", "n"]], on=keys, how=how)
    out["difference"] = out["reproduced"] - out["paper"]
    out["ratio"] = out["reproduced"] / out["paper"]
    out["penalty"] = pd.Categorical(out["penalty"], [p for p in PENALTY_ORDER if p in set(out["penalty"])])
    return out.sort_values(["quantity", "label_noise", "penalty"], kind="stable").reset_index(drop=True)


def format_comparison(table: pd.DataFrame, percent: Iterable[str] = ("test_acc", "train_acc")):
    """A display version of `compare`'s table: penalty names in words, accuracies in %, large
    norms in scientific notation; returns a pandas Styler (renders in HTML reports)."""
    percent = set(percent)
    shown = table.assign(penalty=table["penalty"].map(lambda p: PENALTY_NAMES[Penalty(p)]))

    def fmt(row, col):
        v = row[col]
        if pd.isna(v):
            return "—"
        if col == "ratio":
            return f"{v:.3g}×"
        if row["quantity"] in percent and col in ("paper", "reproduced", "difference", "std"):
            return f"{100 * v:+.2f} pp" if col == "difference" else f"{100 * v:.2f} %"
        if col == "n":
            return f"{int(v)}"
        return f"{v:.4g}"

    rows = table.to_dict("records")
    cols = [c for c in ("paper", "reproduced", "std", "n", "difference", "ratio") if c in shown]
    for col in cols:
        shown[col] = [fmt(r, col) for r in rows]
    keep = [c for c in ("quantity", "penalty", "label_noise", "layer")
            if c in ("quantity", "penalty") or (c in shown and shown[c].nunique() > 1)]
    return shown[keep + cols].style.hide(axis="index")
