"""Which epoch a run is read at (docs/PAPER.md, "A protocol question"), computed from its history.

Every run records test accuracy at every epoch, so each rule below is a function of the history,
and the same run can be reported under all of them:

- `test_acc_best_val`: the epoch with the lowest validation loss (its epoch is chosen on held-out
  training data; the headline rule of the notebooks);
- `test_acc_last`: the last epoch trained;
- `test_acc_last10`: the mean over the last `SMOOTHED` epochs (the last epoch, smoothed: a run's
  test accuracy moves by points from one epoch to the next under a constant learning rate);
- `test_acc_authors`: the authors' released scripts (docs/PAPER.md, "What the released code
  reports"): stop when validation loss has not improved by `AUTHORS_MIN_DELTA` for `patience`
  epochs and report the model at the stop (their restore is a no-op; the last epoch if it never
  stops). It reads no test data;
- `test_acc_paper`: the paper's own rule taken literally: stop when test accuracy has not improved
  for `patience` epochs and report the model at the stop (the last epoch if it never stops);
- `test_acc_best_test`: the best test accuracy over all epochs (optimistic: it picks the epoch by
  the test set; the authors' grid runner reports it).

Each rule that does not read the test set has a validation twin (`val_acc_<rule>`: validation
accuracy read at the same epoch or epochs) on which `mulreg.engine.selection` chooses λ.

A run that diverged has no model after its divergence: every accuracy from the first epoch whose
training or validation loss is not finite on is undefined (`defined`), so a rule that reads such an
epoch gives NaN (and the confirmation enters it at chance, docs/PREREGISTRATION.md).

`FAMILY` says how each rule is reported: the primary one, secondary readings, optimistic ones.

`escape_epoch` is the first epoch at which a run left chance level (training accuracy above
chance + `chance_margin`): at a small init scale a run sits at chance for a long plateau first.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CHANCE = {"binary": 0.5, "multiclass": 0.1}
HEADLINE = "test_acc_best_val"
SMOOTHED = 10  # epochs averaged by the smoothed last-epoch rule
AUTHORS_MIN_DELTA = 1e-4  # the released scripts' early-stopping min_delta on validation loss
RULES = {
    "test_acc_best_val": "best validation-loss epoch",
    "test_acc_authors": "authors' code (stop after `patience` epochs without a validation-loss gain, "
                        "model at the stop)",
    "test_acc_last": "last epoch",
    "test_acc_last10": f"mean of the last {SMOOTHED} epochs",
    "test_acc_paper": "paper's rule (stop after `patience` epochs without a test-accuracy gain)",
    "test_acc_best_test": "best test-accuracy epoch (optimistic)",
}
SHORT = {"test_acc_best_val": "best val-loss epoch", "test_acc_authors": "authors' rule",
         "test_acc_last": "last epoch", "test_acc_last10": f"last {SMOOTHED} epochs",
         "test_acc_paper": "paper's rule", "test_acc_best_test": "best test epoch"}  # for figures
PRIMARY, SECONDARY, OPTIMISTIC = "primary", "secondary", "optimistic"
FAMILY = {"test_acc_best_val": PRIMARY, "test_acc_authors": SECONDARY, "test_acc_last": SECONDARY,
          "test_acc_last10": SECONDARY, "test_acc_paper": OPTIMISTIC, "test_acc_best_test": OPTIMISTIC}
ACCURACIES = ("train_acc", "val_acc", "test_acc")


def escape_epoch(history: pd.DataFrame, chance: float, margin: float) -> float:
    """First epoch whose training accuracy exceeds `chance` + `margin`; NaN if none did."""
    left = history.loc[history["train_acc"] > chance + margin, "epoch"]
    return float(left.iloc[0]) if len(left) else math.nan


def defined(history: pd.DataFrame) -> pd.DataFrame:
    """`history` with every accuracy undefined (NaN) from the first epoch whose training or
    validation loss is not finite: a diverged run has no model to read there."""
    losses = history[[c for c in ("train_loss", "val_loss") if c in history]]
    broken = (~np.isfinite(losses.to_numpy(float))).any(axis=1).cumsum() > 0
    if not broken.any():
        return history
    columns = [c for c in ACCURACIES if c in history]
    out = history.copy()
    out.loc[broken, columns] = math.nan
    return out


def paper_rule(history: pd.DataFrame, patience: int) -> tuple[float, int]:
    """(test accuracy, epoch) of the paper's literal rule: training stops at the first epoch that is
    `patience` epochs after the best test accuracy so far; the model at that epoch is reported."""
    best, best_epoch = -math.inf, 0
    for epoch, acc in zip(history["epoch"], history["test_acc"]):
        if acc > best:
            best, best_epoch = acc, epoch
        elif epoch - best_epoch >= patience or math.isnan(acc):
            return float(acc), int(epoch)
    return float(history["test_acc"].iloc[-1]), int(history["epoch"].iloc[-1])


def authors_rule(history: pd.DataFrame, patience: int, min_delta: float = AUTHORS_MIN_DELTA) -> int:
    """The row (position) at which the authors' scripts stop: the first epoch `patience` epochs
    after the last validation loss that beat the best so far by more than `min_delta` (their
    EarlyStopping), or the first epoch with a non-finite loss, or the last epoch."""
    best, best_epoch = math.inf, 0
    for row, (epoch, loss) in enumerate(zip(history["epoch"], history["val_loss"])):
        if not math.isfinite(loss):
            return row
        if loss < best - min_delta:
            best, best_epoch = loss, epoch
        elif epoch - best_epoch >= patience:
            return row
    return len(history) - 1


def val_twin(rule: str) -> str:
    """The validation-accuracy column read at `rule`'s epochs: val_acc_best_val for test_acc_best_val."""
    return rule.replace("test_acc", "val_acc", 1)


def rule_metrics(history: pd.DataFrame, chance: float, margin: float) -> dict:
    """Test accuracy under the rules that need no parameter, their validation twins where the run
    has a validation split, and the escape epoch."""
    history = defined(history)
    out = {"escape_epoch": escape_epoch(history, chance, margin),
           "test_acc_best_test": float(history["test_acc"].max()),
           "best_val_epoch": math.nan}
    has_val = "val_loss" in history and history["val_loss"].notna().any()
    at = {"test_acc_last": history.index[-1:], "test_acc_last10": history.index[-SMOOTHED:]}
    if has_val:
        at["test_acc_best_val"] = [history["val_loss"].idxmin()]
        out["best_val_epoch"] = float(history.loc[at["test_acc_best_val"][0], "epoch"])
    elif "val_loss" in history:  # no epoch with a defined validation loss: a run diverged from its first
        out |= {"test_acc_best_val": math.nan, val_twin("test_acc_best_val"): math.nan}
    return out | _read_at(history, at, has_val)


def _read_at(history: pd.DataFrame, at: dict, has_val: bool) -> dict:
    """Each rule's test accuracy (and validation twin) averaged over its rows; NaN if one is undefined."""
    out = {}
    for rule, rows in at.items():
        out[rule] = float(history.loc[rows, "test_acc"].mean(skipna=False))
        if has_val and "val_acc" in history:
            out[val_twin(rule)] = float(history.loc[rows, "val_acc"].mean(skipna=False))
    return out


def with_rules(runs: pd.DataFrame, hist: pd.DataFrame, patience: int | None = None) -> pd.DataFrame:
    """`runs` with every rule's test accuracy and validation twin read off its history (runs stored
    before a rule existed get it too), and, given a `patience`, the paper's literal rule
    (`test_acc_paper`) with the epoch it stops at (`paper_stop_epoch`) and the authors' rule
    (`test_acc_authors`, its validation twin, and `authors_stop_epoch`)."""
    read = {}
    for key, h in hist.groupby("key"):
        h = h.sort_values("epoch").reset_index(drop=True)
        row = rule_metrics(h, math.nan, 0.0)
        row.pop("escape_epoch")
        if patience is not None:
            h = defined(h)
            row["test_acc_paper"], row["paper_stop_epoch"] = paper_rule(h, patience)
            stop = authors_rule(h, patience)
            row |= _read_at(h, {"test_acc_authors": [stop]}, "val_acc" in h)
            row["authors_stop_epoch"] = float(h["epoch"].iloc[stop])
        read[key] = row
    table = pd.DataFrame.from_dict(read, orient="index")
    return runs.drop(columns=[c for c in table.columns if c in runs]).join(table, on="key")
