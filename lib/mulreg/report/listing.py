"""A runs table for the terminal: one line per run, what varies in columns, what does not above."""

from __future__ import annotations

import textwrap

import pandas as pd

from mulreg.core.epochs import RULES

WIDTH = 120
COLUMNS = {  # runs-table column → short heading, in the order shown
    "key": "key", "task": "task", "penalty": "penalty", "lam": "λ", "label_noise": "noise", "seed": "seed",
    "stop_reason": "stop", "epochs": "epochs", "escape_epoch": "escape",
    "test_acc_best_val": "acc@val", "test_acc_last": "acc@last", "test_acc_best_test": "acc@test",
    "git_commit": "commit", "device": "asked", "device_used": "device", "device_name": "device name",
}


def runs_listing(runs: pd.DataFrame, width: int = WIDTH) -> str:
    """`runs` (a store's runs table) as text at most `width` columns wide: fields with one value for
    every run are listed once above the table; accuracies in %, commits shortened."""
    if runs.empty:
        return "no runs"
    table = runs[[c for c in COLUMNS if c in runs]].copy()
    if "git_commit" in table:
        table["git_commit"] = table["git_commit"].map(lambda c: str(c)[:8] if pd.notna(c) else "-")
    for col in (c for c in RULES if c in table):
        table[col] = (100 * table[col]).round(1)
    constant = [c for c in table.columns if c != "key" and table[c].astype(str).nunique() == 1]
    head = "; ".join(f"{COLUMNS[c]}: {table[c].iloc[0]}" for c in constant)
    shown = table.drop(columns=constant).rename(columns=COLUMNS)
    if "λ" in shown:
        shown["λ"] = shown["λ"].map(lambda v: f"{v:.0e}" if v else "0")
    sort = [c for c in ("task", "penalty", "λ", "noise", "seed") if c in shown]
    body = shown.sort_values(sort).to_string(index=False, max_colwidth=28, na_rep="-")
    lines = [line[:width] for line in body.splitlines()]
    title = f"{len(runs)} runs. Same for all: {head}" if head else f"{len(runs)} runs"
    return "\n".join(textwrap.wrap(title, width) + lines)
