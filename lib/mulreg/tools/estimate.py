"""`python -m mulreg estimate PROFILE`: what a profile's notebooks would train, and about how long it
would take on this device, before anything is trained (`make figures` prints it first).

Per notebook: the runs its sweep file names that the store lacks (a run shared with an earlier
notebook is counted there), their run-epochs at most (`max_epochs`: early stopping only shortens
them), the images they train on and evaluate, the floating-point work, and the time. The time comes
from a short measured step: each distinct network shape among the pending runs trains a few
epochs on a small slice of the data; the steady epochs give seconds per training-image equivalent
(an evaluated image counts a third: forward pass only), the first epoch's excess each run's start
cost (model, compilation). On a CPU the sweep runs one single-threaded worker per core, so the
measurement uses one thread and the time is divided by the workers; on a GPU it stacks runs, so the
measurement trains as many runs in one stack as the sweep would (`sizing.stack_size`, at most the
pending runs of that shape). Notebooks that train nothing of their own (02-04 read 01's runs) show
no time; notebook 04's landscape grids are not estimated.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd
import torch

from mulreg.config import RunConfig
from mulreg.core.devices import on_this_machine, resolve_device
from mulreg.engine.sizing import stack_size
from mulreg.engine.stages import all_configs
from mulreg.engine.sweep import SweepSpec, execution_strategy
from mulreg.engine.train import train_group
from mulreg.report.reports import NOTEBOOKS, notebooks, parameters
from mulreg.results.paper import PROTOCOL
from mulreg.tools.bench import training_flops_per_image

SLICE = {"binary": (400, 200), "multiclass": (500, 200)}  # (n_train, n_test) of the measurement
MEASURED_EPOCHS = 3  # the first compiles; the others are timed
EVAL_WEIGHT = 1 / 3  # an evaluated image costs a forward pass: about a third of a training image
# H100 SXM, FP32 without tensor cores (NVIDIA's datasheet): float32 matmul precision is "highest", so no TF32
H100_FP32_TFLOPS = 67.0


@dataclass(frozen=True)
class Work:
    """What one run asks of the device, per epoch."""

    trained: int  # images per epoch
    evaluated: int  # validation + test images per epoch

    @classmethod
    def of(cls, config: RunConfig) -> Work:
        pool = config.n_train or PROTOCOL[config.task]["n_train"]
        test = config.n_test or PROTOCOL[config.task]["n_test"]
        val = round(pool * config.val_fraction)
        return cls(trained=pool - val, evaluated=val + test)

    @property
    def units(self) -> float:
        return self.trained + EVAL_WEIGHT * self.evaluated


def shape(config: RunConfig) -> tuple:
    """What sets a run's cost per image: network, batch size, device, compilation."""
    m = config.model
    return (config.task, m.width, m.batch_norm, m.weight_norm, config.batch_size, config.device, config.compile)


@dataclass(frozen=True)
class Rate:
    """Measured cost of one network shape: seconds per work unit, and per run to start (building
    the model, compiling, the first evaluation's warm-up)."""

    per_unit: float
    start: float


class EpochClock:
    """`train_group`'s `on_epochs` callback that stamps the end of each epoch of a stack. The engine
    calls it once per epoch with the runs that trained it, then once for each run that stopped, with
    the epochs that run had left: 0 for a run that reached `max_epochs` (K = 3 runs of 3 epochs:
    3, 3, 3, 0, 0, 0). A call with 0 is no epoch. (A run stopped early would report the epochs it
    skipped: the probe stops none early.) On CUDA each stamp waits for the GPU's work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stamps = [self.now()]

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def __call__(self, n: int) -> None:
        if n:
            self.stamps.append(self.now())

    def rate(self, runs: int, units: float) -> Rate:
        """Seconds per work unit of one run from the steady epochs (all but the first), and each run's
        start cost from the first epoch's excess over them."""
        first = self.stamps[1] - self.stamps[0]
        steady = (self.stamps[-1] - self.stamps[1]) / max(1, len(self.stamps) - 2)
        return Rate(per_unit=steady / (runs * units), start=max(0.0, first - steady) / runs)


def measure(config: RunConfig, root=None, runs: int = 1) -> Rate:
    """A few epochs of `runs` runs of `config`'s shape, stacked as a sweep stacks them, on a small
    slice, on one thread on a CPU (as each sweep worker): the steady epochs give the rate per run,
    the first one's excess the start cost."""
    n_train, n_test = (min(cap, n or cap) for cap, n in zip(SLICE[config.task], (config.n_train, config.n_test)))
    probe = config.replace(n_train=n_train, n_test=n_test, max_epochs=MEASURED_EPOCHS, early_stopping=None,
                           epochs_after_escape=None, lam=0.0, penalty="none")
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    probes = [probe.replace(seed=seed) for seed in range(1, runs + 1)]
    clock = EpochClock(device)
    try:
        train_group(probes, root=root, progress=False, on_epochs=clock)
    finally:
        torch.set_num_threads(threads)
    return clock.rate(runs, Work.of(probe).units)


def sweeps_of(profile: str, stem: str, overrides: dict | None = None) -> list[SweepSpec]:
    """The sweep files a notebook's profile parameters name (`sweep`, and any other `*sweep`, such as
    notebook 07's `init_sweep`), as `overrides` (`figures -p`/`--params`) replace them; none for a
    notebook that trains nothing."""
    params = parameters(profile, stem)
    params |= {k: v for k, v in (overrides or {}).items() if k in params}
    paths = [v for k, v in params.items() if k.endswith("sweep") and isinstance(v, str)]
    return [SweepSpec.from_yaml((NOTEBOOKS / path).resolve()) for path in paths]


def stacked(config: RunConfig, pending: list[RunConfig]) -> int:
    """Runs of `config`'s shape the sweep trains in one stack: as many as fit on a GPU, 1 on a CPU."""
    return min(stack_size(config), sum(shape(c) == shape(config) for c in pending))


def workers(spec: SweepSpec, pending: list[RunConfig]) -> int:
    """Runs training at once: one worker per core where the sweep uses processes, else one."""
    if not on_this_machine(pending[0].device) or execution_strategy(spec, pending) != "processes":
        return 1
    return max(1, min(spec.workers or os.cpu_count() or 1, len(pending)))


def estimate(profile: str, prefix: str | None = None, fresh: bool = False, root=None,
             every: bool = False, overrides: dict | None = None, retrained: Collection = ()) -> pd.DataFrame:
    """One row per notebook (`mulreg.report.reports.notebooks(prefix, every)`): runs to train (and in its
    sweep, both stages: `mulreg.engine.stages.all_configs`), run-epochs, images trained and evaluated,
    TFLOP, and the estimated hours on this device (NaN where nothing is trained). A sweep the results
    of record hold whole is read there, not trained, unless its store is one of `retrained` (what
    `make figures` reproduces). With `fresh`, as on a fresh clone (which has the record): the runs
    already stored count too; `overrides`: notebook parameters given on the command line (another sweep file)."""
    from mulreg.results import analysis

    counted: set[str] = set()
    rates: dict[tuple, Rate] = {}
    flops: dict[tuple, int] = {}  # training FLOPs per image of each shape
    rows = []
    for nb in notebooks(prefix, every):
        specs = sweeps_of(profile, nb.stem, overrides)
        pending, configs = [], []
        for spec in specs:
            mine = all_configs(spec, planned=not fresh)
            store = spec.open_store()
            read = spec.store not in retrained and analysis.recorded_whole(spec)
            pending += [c for c in mine if c.key() not in counted and not read
                        and (fresh or not store.is_complete(c.key()))]
            counted |= {c.key() for c in mine}
            configs += mine
        seconds = flop = trained = evaluated = epochs = 0.0
        for c in pending:
            work = Work.of(c)
            if shape(c) not in rates:  # a device this machine lacks (the paper profile's GPU) cannot be timed here
                rates[shape(c)] = (measure(c, root, stacked(c, pending)) if on_this_machine(c.device)
                                   else Rate(math.nan, math.nan))
            seconds += rates[shape(c)].start + c.max_epochs * work.units * rates[shape(c)].per_unit
            if shape(c) not in flops:
                flops[shape(c)] = training_flops_per_image(c)
            flop += c.max_epochs * flops[shape(c)] * work.units
            trained += c.max_epochs * work.trained
            evaluated += c.max_epochs * work.evaluated
            epochs += c.max_epochs
        rows.append({"notebook": nb.stem, "runs to train": len(pending), "runs in sweep": len(configs),
                     "run-epochs": int(epochs), "images trained": int(trained), "images evaluated": int(evaluated),
                     "TFLOP": flop / 1e12,
                     "hours here": seconds / workers(specs[0], pending) / 3600 if pending else math.nan,
                     "H100 hours at best": flop / 1e12 / H100_FP32_TFLOPS / 3600 if pending else math.nan,
                     "device": ", ".join(sorted({c.device for c in pending}))})
    return pd.DataFrame(rows)


def of_chosen(profile: str, prefix: str | None, every: pd.DataFrame, overrides: dict | None = None) -> pd.DataFrame:
    """The rows `mulreg figures` shows: with `--nb prefix` the chosen notebooks' own runs (a run shared
    with a notebook not chosen counts here; in `every`, the estimate of every notebook, it counts
    there), else the paper notebooks' rows of `every`."""
    if prefix:
        return estimate(profile, prefix, overrides=overrides)
    return every[every["notebook"].isin({nb.stem for nb in notebooks()})]


def report(table: pd.DataFrame, profile: str, fresh: bool = False) -> str:
    """The table for reading, with its total and what it leaves out."""
    timed = table.loc[table["runs to train"] > 0, "hours here"]
    total = timed.sum() if timed.notna().all() else math.nan
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"this CPU ({os.cpu_count()} cores)"
    hours = {c: table[c].map(lambda v: "—" if math.isnan(v) else f"{v:,.2f}")
             for c in ("hours here", "H100 hours at best")}
    shown = table.assign(TFLOP=table["TFLOP"].map(lambda v: f"{v:,.1f}"), **hours)
    for col in ("images trained", "images evaluated"):
        shown[col] = shown[col].map(lambda v: f"{v:,}")
    stored = "as on a fresh clone" if fresh else "runs stored or in the record are not counted"
    return (f"Estimate for profile {profile!r} on {device}, training only (at most: early stopping shortens runs; "
            f"{stored}):\n{shown.to_string(index=False)}\n"
            + ("nothing to train: every run is in its store or the record" if not table["runs to train"].any() else
               f"total ≈ {total:.2f} h ({60 * total:.0f} min)" if not math.isnan(total) else
               "no time: the runs' device is not on this machine (—)")
            + "; not estimated: set-up, HTML exports, notebook 04's landscape grids. 'H100 hours at best': the "
              f"FLOPs at an H100's {H100_FP32_TFLOPS:g} TFLOP/s fp32 peak, a lower bound (no GPU measurement yet, "
              "docs/PERFORMANCE.md).")
