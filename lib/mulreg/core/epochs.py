"""Which epoch a run is read at (docs/PAPER.md, "A protocol question"), computed from its history.

Every run records test accuracy at every epoch, so each rule below is a function of the history,
and the same run can be reported under all of them:

- `test_acc_best_val`: the epoch with the lowest validation loss (its epoch is chosen on held-out
  training data; the headline rule of the notebooks);
- `test_acc_last`: the last epoch trained;
- `test_acc_last10`: the mean over the last `SMOOTHED` epochs (the last epoch, smoothed: a run's
  test accuracy moves by points from one epoch to the next under a constant learning rate);
- `test_acc_paper`: the paper's own rule taken literally: stop when test accuracy has not improved
  for `patience` epochs and report the model at the stop (the last epoch if it never stops);
- `test_acc_best_test`: the best test accuracy over all epochs (optimistic: it picks the epoch by
  the test set; the authors' grid runner reports it).

Each rule that does not read the test set has a validation twin (`val_acc_<rule>`: validation
accuracy read at the same epoch or epochs) on which `mulreg.engine.selection` chooses λ.

`escape_epoch` is the first epoch at which a run left chance level (training accuracy above
chance + `chance_margin`): at a small init scale a run sits at chance for a long plateau first.
"""

from __future__ import annotations

import math

import pandas as pd

CHANCE = {"binary": 0.5, "multiclass": 0.1}
HEADLINE = "test_acc_best_val"
SMOOTHED = 10  # epochs averaged by the smoothed last-epoch rule
RULES = {
    "test_acc_best_val": "best validation-loss epoch",
    "test_acc_last": "last epoch",
    "test_acc_last10": f"mean of the last {SMOOTHED} epochs",
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


def val_twin(rule: str) -> str:
    """The validation-accuracy column read at `rule`'s epochs: val_acc_best_val for test_acc_best_val."""
    return rule.replace("test_acc", "val_acc", 1)


def rule_metrics(history: pd.DataFrame, chance: float, margin: float) -> dict:
    """Test accuracy under the rules that need no parameter, their validation twins where the run
    has a validation split, and the escape epoch."""
    out = {"escape_epoch": escape_epoch(history, chance, margin),
           "test_acc_best_test": float(history["test_acc"].max()),
           "best_val_epoch": math.nan}
    has_val = "val_loss" in history and history["val_loss"].notna().any()
    at = {"test_acc_last": history.index[-1:], "test_acc_last10": history.index[-SMOOTHED:]}
    if has_val:
        at["test_acc_best_val"] = [history["val_loss"].idxmin()]
        out["best_val_epoch"] = float(history.loc[at["test_acc_best_val"][0], "epoch"])
    for rule, rows in at.items():
        out[rule] = float(history.loc[rows, "test_acc"].mean())
        if has_val and "val_acc" in history:
            out[val_twin(rule)] = float(history.loc[rows, "val_acc"].mean())
    return out


def with_rules(runs: pd.DataFrame, hist: pd.DataFrame, patience: int | None = None) -> pd.DataFrame:
    """`runs` with every rule's test accuracy and validation twin read off its history (runs stored
    before a rule existed get it too), and, given a `patience`, the paper's literal rule
    (`test_acc_paper`) with the epoch it stops at (`paper_stop_epoch`)."""
    read = {}
    for key, h in hist.groupby("key"):
        h = h.sort_values("epoch").reset_index(drop=True)
        row = rule_metrics(h, math.nan, 0.0)
        row.pop("escape_epoch")
        if patience is not None:
            row["test_acc_paper"], row["paper_stop_epoch"] = paper_rule(h, patience)
        read[key] = row
    table = pd.DataFrame.from_dict(read, orient="index")
    return runs.drop(columns=[c for c in table.columns if c in runs]).join(table, on="key")
