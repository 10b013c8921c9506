"""Which epoch a run is read at (docs/PAPER.md, "A protocol question"), computed from its history.

Every run records test accuracy at every epoch, so each rule below is a function of the history,
and the same run can be reported under all of them:

- `test_acc_best_val`: the epoch with the lowest validation loss (looks only at held-out training
  data; the headline rule of the notebooks);
- `test_acc_last`: the last epoch trained;
- `test_acc_paper`: the paper's own rule taken literally: stop when test accuracy has not improved
  for `patience` epochs and report the model at the stop (the last epoch if it never stops);
- `test_acc_best_test`: the best test accuracy over all epochs (optimistic: it picks the epoch by
  the test set; the authors' grid runner reports it).

`escape_epoch` is the first epoch at which a run left chance level (training accuracy above
chance + `chance_margin`): at a small init scale a run sits at chance for a long plateau first.
"""

from __future__ import annotations

import math

import pandas as pd

CHANCE = {"binary": 0.5, "multiclass": 0.1}
HEADLINE = "test_acc_best_val"
RULES = {
    "test_acc_best_val": "best validation-loss epoch",
    "test_acc_last": "last epoch",
    "test_acc_paper": "paper's rule (stop after `patience` epochs without a test-accuracy gain)",
    "test_acc_best_test": "best test-accuracy epoch (optimistic)",
}


def escape_epoch(history: pd.DataFrame, chance: float, margin: float) -> float:
    """First epoch whose training accuracy exceeds `chance` + `margin`; NaN if none did."""
    left = history.loc[history["train_acc"] > chance + margin, "epoch"]
    return float(left.iloc[0]) if len(left) else math.nan


def paper_rule(history: pd.DataFrame, patience: int) -> tuple[float, int]:
    """(test accuracy, epoch) of the paper's literal rule: training stops at the first epoch that is
    `patience` epochs after the best test accuracy so far; the model at that epoch is reported."""
    best, best_epoch = -math.inf, 0
    for epoch, acc in zip(history["epoch"], history["test_acc"]):
        if acc > best:
            best, best_epoch = acc, epoch
        elif epoch - best_epoch >= patience:
            return float(acc), int(epoch)
    return float(history["test_acc"].iloc[-1]), int(history["epoch"].iloc[-1])


def rule_metrics(history: pd.DataFrame, chance: float, margin: float) -> dict:
    """Test accuracy under the rules that need no parameter, and the escape epoch."""
    out = {"test_acc_last": float(history["test_acc"].iloc[-1]),
           "test_acc_best_test": float(history["test_acc"].max()),
           "escape_epoch": escape_epoch(history, chance, margin)}
    if "val_loss" in history and history["val_loss"].notna().any():
        out["test_acc_best_val"] = float(history["test_acc"].loc[history["val_loss"].idxmin()])
    return out
