"""A sweep file's two stages (docs/PREREGISTRATION.md): the selection grid, then, where the file has
a `confirmation` section, the chosen λ of each penalty retrained on fresh seeds.

`run(spec)` trains what the store lacks of the selection stage, derives and stores the confirmation
plan from it (`mulreg.engine.confirm.plan`), and trains what the store lacks of the confirmation. Both
stages share the sweep file's `base` and store; a killed call resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from mulreg.core.epochs import with_rules
from mulreg.engine import confirm
from mulreg.engine.store import Store
from mulreg.engine.sweep import SweepSpec
from mulreg.engine.sweep import run as run_sweep


@dataclass
class Stages:
    """What `run` returns: the runs table of each stage (confirmation None without one) and the plan."""

    selection: pd.DataFrame
    confirmation: pd.DataFrame | None = None
    plan: dict | None = None


def selection_spec(spec: SweepSpec) -> SweepSpec:
    """The selection stage alone: the sweep file without its confirmation section."""
    return spec.model_copy(update={"confirmation": None})


def confirmation_spec(spec: SweepSpec, plan: dict) -> SweepSpec:
    """The confirmation stage as a sweep of its own: the same base and store, one arm per penalty
    and noise level of `plan`."""
    return spec.model_copy(update={"grid": {}, "arms": confirm.arms(plan), "confirmation": None})


def read_rules(spec: SweepSpec, runs: pd.DataFrame, patience: int | None = None) -> pd.DataFrame:
    """`runs` with every epoch rule's columns read off the histories in `spec`'s store (the paper's
    literal rule too, given its `patience`)."""
    if not len(runs):
        return runs
    hist = Store(spec.store, create=False).load_histories(list(runs["key"]))
    return with_rules(runs, hist, patience)


def run(spec: SweepSpec, *, progress: bool = True, train_confirmation: bool = True,
        on_stage: Callable[[str], None] | None = None) -> Stages:
    """Train the selection stage, plan the confirmation and (with `train_confirmation`) train it;
    `on_stage(name)` is called as each stage is complete in the store (the record writes it then)."""
    done = on_stage or (lambda name: None)
    if spec.confirmation is not None:
        confirm.check_seeds(set(selection_spec(spec).grid.get("seed", [])) | _arm_seeds(spec), spec.confirmation)
        confirm.check_store(spec.open_store().root, [c.key() for c in selection_spec(spec).configs()])
    selection = run_sweep(selection_spec(spec), progress=progress)  # refuses a stage with runs missing
    if spec.confirmation is None:
        done("selection")
        return Stages(selection)
    plan = confirm.plan(read_rules(spec, selection), spec.confirmation, spec.open_store().root)
    done("selection")  # with its plan: the stage files the confirmation is read with
    second = confirmation_spec(spec, plan)
    if not train_confirmation:
        store = second.open_store()
        keys = [c.key() for c in second.configs() if store.is_complete(c.key())]
        return Stages(selection, store.load_runs(keys) if keys else None, plan)
    confirmation = run_sweep(second, progress=progress)
    done("confirmation")
    return Stages(selection, confirmation, plan)


def _arm_seeds(spec: SweepSpec) -> set[int]:
    return {s for arm in spec.arms for s in arm.get("seed", [])}


def all_configs(spec: SweepSpec, planned: bool = True) -> list:
    """Every run of both stages: the selection grid, and the confirmation as planned in the store,
    or, before its plan exists (or without `planned`, as on a fresh clone), with each penalty at its
    grid's first λ (right in number and shape, for counting and timing only)."""
    first = selection_spec(spec).configs()
    if spec.confirmation is None:
        return first
    plan = confirm.load(spec.open_store().root) if planned else None
    if plan is None:
        lams = {str(c.penalty): c.lam for c in reversed(first) if c.penalty != "none"}
        plan = {"label_noise": spec.confirmation.label_noise, "seeds": spec.confirmation.seeds,
                "lam": {p: {f"{v:g}": lam for v in spec.confirmation.label_noise} for p, lam in lams.items()}}
    return first + confirmation_spec(spec, plan).configs()
