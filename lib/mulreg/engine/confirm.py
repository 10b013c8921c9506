"""The confirmation stage (docs/PREREGISTRATION.md): the selection stage's chosen λ of each penalty,
and no penalty, retrained on fresh seeds at each confirmation noise level.

A sweep file's `grid` is the selection stage; its `confirmation` section names the fresh seeds and
noise levels. `plan` derives the confirmation settings from the stored selection runs by code
(`mulreg.engine.selection.select` under the headline rule, which never reads the test set) and writes
them, with the selection table that produced them, into the store:

    <store>/stages/confirmation/plan.json       λ per penalty and noise, seeds, rule, selection run keys
    <store>/stages/confirmation/selection.csv   the selection table behind it

Once written, a plan is final: a later call that derives other settings (the selection runs or
rule changed) stops with an error instead of training them. `spec` turns a plan into a sweep of its
own (one arm per penalty and noise level) over the same store.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mulreg import provenance
from mulreg.config import ConfigError
from mulreg.core.epochs import HEADLINE, RULES
from mulreg.engine.selection import SELECTED_ON, reads_test, select
from mulreg.protocols import PENALTY_NAMES, Penalty

STAGE = "confirmation"


class Confirmation(BaseModel):
    """A sweep file's `confirmation` section: fresh seeds and the noise levels to confirm at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: list[int] = Field(min_length=1)
    label_noise: list[float] = Field(min_length=1)
    rule: str = HEADLINE  # the epoch rule whose validation twin chooses λ
    preregistration: str = provenance.PREREGISTRATION  # the document that registered this stage, committed first

    @field_validator("rule")
    @classmethod
    def _not_on_test(cls, rule: str) -> str:
        if rule not in RULES or reads_test(rule):
            allowed = [r for r in RULES if not reads_test(r)]
            raise ValueError(f"rule must be one that does not read the test set, one of {allowed}; got {rule!r}")
        return rule

    @field_validator("seeds")
    @classmethod
    def _seeds_once(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds {seeds} repeat {repeated}: each seed is one run per setting; list each once")
        return seeds

    @field_validator("label_noise")
    @classmethod
    def _noise_range(cls, levels: list[float]) -> list[float]:
        if any(not 0 <= v < 0.5 for v in levels):
            raise ValueError(f"label_noise levels must lie in [0, 0.5); got {levels}")
        return sorted(set(levels))


def folder(store_root: str | Path) -> Path:
    return Path(store_root) / "stages" / STAGE


def check_seeds(selection_seeds: set[int], confirmation: Confirmation) -> None:
    """The confirmation's seeds must be fresh: none of them may be a selection seed."""
    shared = sorted(selection_seeds & set(confirmation.seeds))
    if shared:
        raise ConfigError(f"confirmation.seeds {confirmation.seeds} share seed(s) {shared} with the selection "
                          f"grid's seeds {sorted(selection_seeds)}: confirmation seeds must be fresh")


def chosen_lambdas(selection: pd.DataFrame, confirmation: Confirmation) -> dict[str, dict[str, float]]:
    """{penalty: {noise: λ}} for every penalty with a λ and every confirmation noise level: the λ
    chosen at that noise level, or, where the selection stage had one noise level only, the λ chosen
    there. A penalty with no eligible λ is left out (its claims are then not tested)."""
    levels = sorted(selection["label_noise"].unique())
    out: dict[str, dict[str, float]] = {}
    for row in selection.dropna(subset=["lam"]).to_dict("records"):
        pen = Penalty(row["penalty"])
        if pen == Penalty.NONE:
            continue
        targets = confirmation.label_noise if len(levels) == 1 else [v for v in confirmation.label_noise
                                                                      if math.isclose(v, row["label_noise"])]
        for noise in targets:
            out.setdefault(str(pen), {})[f"{noise:g}"] = float(row["lam"])
    missing = [v for v in confirmation.label_noise if len(levels) > 1 and not any(math.isclose(v, x) for x in levels)]
    if missing:
        raise ConfigError(f"confirmation.label_noise {missing}: the selection grid has noise levels {levels}, "
                          "so λ can be chosen only at those (or give the selection grid one level, used for all)")
    return out


def plan(selection_runs: pd.DataFrame, confirmation: Confirmation, store_root: str | Path) -> dict:
    """Derive the confirmation settings from `selection_runs` (with the rule's validation twin:
    `mulreg.results.stats.with_rules`), write them into the store, or check them against the stored plan."""
    check_seeds(set(selection_runs["seed"]), confirmation)
    selection = select(selection_runs, confirmation.rule)
    derived = {"rule": confirmation.rule, "selected_on": SELECTED_ON[confirmation.rule],
               "lam": chosen_lambdas(selection, confirmation), "seeds": list(confirmation.seeds),
               "label_noise": list(confirmation.label_noise),
               "selection_seeds": sorted(int(s) for s in selection_runs["seed"].unique()),
               "selection_label_noise": sorted(float(v) for v in selection_runs["label_noise"].unique()),
               "selection_runs": sorted(selection_runs["key"])}
    where = folder(store_root)
    stored = _load_or_set_aside(store_root)
    if stored is not None:
        same = {k: stored[k] for k in derived} == derived
        if not same:
            raise ConfigError(f"{where / 'plan.json'}: the confirmation settings derived now differ from those "
                              f"stored on {stored['created']} ({_diff(stored, derived)}); the confirmation is "
                              f"fixed once planned. {ANOTHER_STORE}")
        _restore_table(selection, where)
        return stored
    where.mkdir(parents=True, exist_ok=True)
    selection.to_csv(where / "selection.csv", index=False)
    record = derived | {"created": provenance.timestamp(time.time()), "git_commit": provenance.git_commit(),
                        "preregistration": confirmation.preregistration,
                        "prereg_commit": provenance.prereg_commit(confirmation.preregistration)}
    tmp = where / "plan.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(where / "plan.json")
    return record


def _diff(stored: dict, derived: dict) -> str:
    return "; ".join(f"{k}: stored {stored.get(k)!r}, now {v!r}" for k, v in derived.items() if stored.get(k) != v
                     and k != "selection_runs") or "the selection runs differ"


class DamagedPlan(ConfigError):
    """A stored plan.json that cannot be read, or lacks what a plan holds."""


ANOTHER_STORE = ("To plan another confirmation (another class pair, seeds or grid), give that sweep a store of "
                 "its own (`store:` in its file, or --store DIR): this store's plan and runs stay as they are.")
PLAN_KEYS = ("rule", "selected_on", "lam", "seeds", "label_noise", "selection_seeds", "selection_label_noise",
             "selection_runs", "created")
TABLE_COLUMNS = ("penalty", "label_noise", "lam")  # what a selection.csv holds at least
_REDERIVE = ("`python -m mulreg sweep <its sweep file>` sets it aside and derives it again from the stored "
             "selection runs (nothing trained is lost)")


def load(store_root: str | Path) -> dict | None:
    """The stored plan, or None before one is written; a damaged one is refused in one line
    (`python -m mulreg sweep` sets it aside and derives it again from the stored selection runs)."""
    path = folder(store_root) / "plan.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedPlan(f"{path} cannot be read ({err}); {_REDERIVE}") from None
    lacking = [k for k in PLAN_KEYS if k not in record] if isinstance(record, dict) else list(PLAN_KEYS)
    if lacking:
        raise DamagedPlan(f"{path} is incomplete (no {', '.join(lacking)}); {_REDERIVE}")
    return record


def _load_or_set_aside(store_root: str | Path) -> dict | None:
    """The stored plan; a damaged one is renamed plan.json.damaged-<time> (kept) and None returned."""
    try:
        return load(store_root)
    except DamagedPlan as err:
        path = folder(store_root) / "plan.json"
        aside = path.with_name(f"plan.json.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        path.replace(aside)
        print(f"{str(err).split(';')[0]}: set aside as {aside.name}; the plan is derived again from the selection "
              "runs", flush=True)
        return None


def check_store(store_root: str | Path, selection_keys: list[str]) -> None:
    """Refuse, before anything trains, a sweep whose selection stage is not the one this store's plan
    was derived from (another class pair, seeds or grid in the same store); a damaged plan is set aside."""
    stored = _load_or_set_aside(store_root)
    if stored is not None and sorted(selection_keys) != sorted(stored["selection_runs"]):
        raise ConfigError(f"{folder(store_root) / 'plan.json'} was planned on {stored['created']} from another "
                          f"selection stage (seeds {stored['selection_seeds']}, noise "
                          f"{stored['selection_label_noise']}, {len(stored['selection_runs'])} runs) than this "
                          f"sweep's ({len(selection_keys)} runs). {ANOTHER_STORE}")


def _restore_table(selection: pd.DataFrame, where: Path) -> None:
    """Write selection.csv again where it is missing or differs from the table the plan derives from."""
    path = where / "selection.csv"
    text = selection.to_csv(index=False)
    existed = path.exists()
    if existed and path.read_text(errors="replace") == text:
        return
    tmp = path.with_name("selection.csv.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(f"{path}: {'damaged' if existed else 'missing'}; written again from the stored selection runs", flush=True)


def selection_table(store_root: str | Path) -> pd.DataFrame:
    """The selection table stored with the plan, checked against it: a missing, cut-off or damaged one
    is refused in one line."""
    path = folder(store_root) / "selection.csv"
    remedy = "`python -m mulreg sweep <its sweep file>` writes it again from the stored selection runs"
    try:
        text = path.read_text()
        table = pd.read_csv(io.StringIO(text))
    except (OSError, UnicodeDecodeError, ValueError) as err:  # missing, empty, or not a table
        raise ConfigError(f"{path} cannot be read ({_first_line(err)}); {remedy}") from None
    lacking = [c for c in TABLE_COLUMNS if c not in table]
    if lacking or not text.endswith("\n") or table[list(TABLE_COLUMNS[:2])].isna().any().any():
        raise ConfigError(f"{path} is cut off or damaged; {remedy}")
    plan = load(store_root)
    have = set(zip(table["penalty"], table["label_noise"]))
    penalties = [Penalty.NONE.value, *plan["lam"]] if plan else []
    wanted = {(p, v) for p in penalties for v in plan["selection_label_noise"]}
    if wanted - have:
        raise ConfigError(f"{path} lacks the rows of {sorted(wanted - have)} that its plan was chosen from; {remedy}")
    return table


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def arms(record: dict) -> list[dict]:
    """The confirmation runs as sweep arms: no penalty at each noise level, and each penalty at its λ."""
    out = []
    for noise in record["label_noise"]:
        out.append({"penalty": [Penalty.NONE.value], "label_noise": [noise], "seed": record["seeds"]})
        for pen, by_noise in record["lam"].items():
            out.append({"penalty": [pen], "lam": [by_noise[f"{noise:g}"]], "label_noise": [noise],
                        "seed": record["seeds"]})
    return out


def describe(record: dict) -> pd.DataFrame:
    """The plan as a table for reading: penalty, noise, λ, seeds, and how it was chosen."""
    rows = [{"penalty": PENALTY_NAMES[Penalty.NONE], "label noise": noise, "λ": "—"}
            for noise in record["label_noise"]]
    rows += [{"penalty": PENALTY_NAMES[Penalty(p)], "label noise": float(n), "λ": f"{lam:.0e}"}
             for p, by_noise in record["lam"].items() for n, lam in by_noise.items()]
    table = pd.DataFrame(rows)
    return table.assign(seeds=", ".join(map(str, record["seeds"])),
                        **{"chosen on": f"{record['selected_on']} (seeds {record['selection_seeds']}, "
                                        f"noise {record['selection_label_noise']})"})
