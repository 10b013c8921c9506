"""The paper's claims as one table (`claims.csv` beside this file): one row per registered hypothesis
with its id, the claim, where the paper makes it, the paper's number (as printed, and as a value where
a test compares against it), the statistic and its units, its direction, the test, its family, the label-noise
level, and the registrations that test it ("1 2": docs/PREREGISTRATION.md and -2.md).

The analyses (`mulreg.results.claims`, `mulreg.results.replication`) and the ledger read a claim's
words and numbers from here, and tests/test_registry.py checks that each registration's hypothesis
table names the same ids with the same statistic and direction: a new claim or a new replication is
a row (or a number in `registrations`) and that test.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

TABLE = Path(__file__).with_name("claims.csv")
COLUMNS = ("id", "family", "claim", "where", "noise", "paper", "paper_value", "statistic", "units", "direction",
           "test", "registrations")
POINTS = "pp"  # the units of a difference of accuracies or fits (fractions), read ×100


@functools.lru_cache(maxsize=1)
def claims() -> pd.DataFrame:
    """Every registered claim, indexed by id, in the table's order."""
    table = pd.read_csv(TABLE, dtype={"noise": str, "registrations": str}, keep_default_na=False,
                        na_values={"paper_value": [""]})
    if tuple(table.columns) != COLUMNS or not table["id"].is_unique:
        raise ValueError(f"{TABLE}: expected the columns {COLUMNS} and one row per id")
    return table.set_index("id")


def family(name: str) -> pd.DataFrame:
    """The claims of one family ("A": Fig. 1; "B": the paper's other claims), in the table's order."""
    table = claims()
    return table[table["family"] == name]


def registered_in(number: int) -> list[str]:
    """The ids registration `number` tests."""
    table = claims()
    return [i for i, regs in table["registrations"].items() if str(number) in regs.split()]


def paper_values(name: str) -> dict[str, float]:
    """id → the paper's number, for the claims of family `name` that have one (family C tests them)."""
    values = family(name)["paper_value"].dropna()
    return {i: float(v) for i, v in values.items()}


def units(hid: str | None) -> str:
    """The units a claim's statistic reads in: `POINTS` for accuracies and fits, else its own (decades,
    ranks, epochs, ...); `POINTS` for a row that is not a registered claim."""
    table = claims()
    return table.loc[hid, "units"] if hid in table.index else POINTS


def label(hid: str) -> str:
    """'B1: Π‖W‖ smaller under multiplicative than additive (noise 0)'."""
    row = claims().loc[hid]
    return f"{hid}: {row['claim']} (noise {row['noise']})"
