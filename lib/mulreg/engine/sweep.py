"""Sweeps: expand a grid into run configs and train what the store lacks (the selection rule that
reads them is `mulreg.engine.selection`; a sweep file's confirmation stage, `mulreg.engine.stages`).

A sweep file (YAML) holds `base` (RunConfig fields shared by all runs) and `grid` (lists of values;
dotted names reach nested fields, and `lam` may be a dict of lists per penalty). The unregularised
baseline appears once per combination of the other axes, not once per λ. Optional `arms` (a list of
grids) make the sweep the union of `grid` updated by each arm, for sweeps whose parts differ in more
than one axis; `extends` (a path relative to the file) starts from another sweep file (base and grid
merged, other keys replaced), so runs both files name are the same runs in the same store, trained once.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tqdm import tqdm

from mulreg.config import PROJECT_ROOT, ConfigError, MulregError, RunConfig, deep_merge, describe, load_yaml, nest
from mulreg.core.data import check_caps
from mulreg.core.devices import resolve_device
from mulreg.engine.confirm import Confirmation
from mulreg.engine.sizing import group_key, stack_size, vectorizable
from mulreg.engine.store import Store
from mulreg.engine.train import train_group
from mulreg.progress import bar as progress_bar
from mulreg.progress import say
from mulreg.protocols import Penalty

MAX_RUNS = 10_000  # runs a sweep file may expand to unless it sets `max_runs` (a typo can ask for millions)


class SweepSpec(BaseModel):
    """A sweep file: what to run, where to store it, and how to execute it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    arms: list[dict[str, Any]] = []  # the sweep is the union of `grid` updated by each arm (none: `grid` alone)
    store: str | None = None  # relative paths: to the project root; default results/ (or env MULREG_RESULTS)
    executor: Literal["local", "ray"] = "local"
    ray_address: str = "local"  # "auto", "ray://host:port", "host:port" or "local" (private instance)
    strategy: Literal["auto", "inline", "processes"] = "auto"
    workers: int | None = Field(None, ge=1)
    group_size: int | None = Field(None, ge=1)
    gpus_per_task: float = Field(1.0, gt=0, le=1)  # ray executor: a fraction lets several stacks share a GPU
    checkpoint_every: int = Field(10, ge=1)
    confirmation: Confirmation | None = None  # a second stage on fresh seeds (`mulreg.engine.confirm`)
    max_runs: int = Field(MAX_RUNS, ge=1)  # a larger grid is refused before it is expanded; raise it to mean it

    @field_validator("store")
    @classmethod
    def _absolute(cls, store: str | None) -> str | None:
        """One store whatever the working directory (notebooks run in notebooks/, make in the root)."""
        return None if store is None else str((PROJECT_ROOT / os.path.expanduser(store)).resolve())

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SweepSpec:
        values = load_yaml(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a sweep file is a mapping (base, grid, store, ...), "
                              f"got {type(values).__name__}")
        values = _extended(Path(path), values)
        try:
            spec = cls.model_validate(values)
        except ValidationError as err:
            raise ConfigError(f"{path}: " + describe(err)) from None
        if not (spec.base or spec.grid or spec.arms):
            raise ConfigError(f"{path}: the sweep file names nothing to train (no base, grid or arms); it would "
                              "train one default run (2,000 epochs on the whole pool). Give base and grid")
        for where, grid in [("grid", spec.grid)] + [(f"arms[{i}]", arm) for i, arm in enumerate(spec.arms)]:
            check_axes(grid, f"{path}: {where}")
        size = sum(grid_size(spec.base, {**spec.grid, **arm}) for arm in spec.arms or [{}])
        if size > spec.max_runs:
            raise ConfigError(f"{path}: the grid expands to {size:,} runs, more than max_runs {spec.max_runs:,}; "
                              f"shorten an axis, or set `max_runs: {size}` in the file if you mean it")
        try:
            configs = spec.configs()
        except ConfigError as err:  # a base value, or a grid point, that is no valid run
            raise ConfigError(f"{path}: {err}") from None
        if not configs:
            raise ConfigError(f"{path}: the sweep expands to no runs (grid {spec.grid}, {len(spec.arms)} arms)")
        return spec

    def configs(self) -> list[RunConfig]:
        configs: dict[str, RunConfig] = {}
        for arm in self.arms or [{}]:
            for config in expand(self.base, {**self.grid, **arm}):
                configs.setdefault(config.key(), config)
        return list(configs.values())

    def open_store(self) -> Store:
        return Store(self.store, checkpoint_every=self.checkpoint_every)


def _extended(path: Path, values: dict[str, Any], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`values` of the sweep file at `path` over those of the file it `extends`: base and grid merged
    (this file's entries win), every other key (store, strategy, arms, ...) replaced where given."""
    parent = values.pop("extends", None)
    if parent is None:
        return values
    parent_path = (path.parent / str(parent)).resolve()
    if parent_path in seen:
        raise ConfigError(f"{path}: extends {parent!r}, which extends it back (a cycle)")
    try:
        inherited = load_yaml(parent_path) or {}
    except ConfigError as err:
        raise ConfigError(f"{path}: extends {parent!r}: {err}") from None
    if not isinstance(inherited, dict):
        raise ConfigError(f"{parent_path}: a sweep file is a mapping (base, grid, store, ...)")
    inherited = _extended(parent_path, inherited, (*seen, path.resolve()))
    merged = dict(inherited)
    for k in ("base", "grid"):
        merged[k] = deep_merge(merged.get(k) or {}, values.pop(k, None) or {})
    return {**merged, **values}


def check_axes(grid: dict[str, Any], where: str) -> None:
    """Refuse a grid axis that is empty or repeats a value, and a λ list for a penalty the grid does
    not train, naming the key."""
    for axis, values in grid.items():
        lists = values.items() if axis == "lam" and isinstance(values, dict) else [(None, values)]
        for penalty, v in lists:
            name = f"{axis}.{penalty}" if penalty else axis
            if not isinstance(v, list):
                raise ConfigError(f"{where}.{name}: a grid axis is a list of values, got {v!r}")
            if not v:
                raise ConfigError(f"{where}.{name}: an empty list makes a sweep of no runs; give at least one value")
            odd = [x for x in v if isinstance(x, float) and not math.isfinite(x)]
            if odd:
                raise ConfigError(f"{where}.{name}: {odd[0]!r} is not a finite number")
            repeated = sorted({repr(x) for x in v if v.count(x) > 1})
            if repeated:
                raise ConfigError(f"{where}.{name}: repeats {', '.join(repeated)}; list each value once")
    lam, penalties = grid.get("lam"), grid.get("penalty")
    if isinstance(lam, dict) and isinstance(penalties, list):
        stray = sorted(set(lam) - set(penalties))
        if stray:
            raise ConfigError(f"{where}.lam: λ values for {', '.join(stray)}, which is not in {where}.penalty "
                              f"{penalties}; add it there or remove its λ list")


def grid_size(base: dict[str, Any], grid: dict[str, Any]) -> int:
    """How many runs `expand` would make of `grid` × `base`, counted from the axes (an upper bound:
    nothing is expanded, so a huge grid costs nothing to measure)."""
    grid = dict(grid)
    lam = grid.pop("lam", [base.get("lam", 0.0)])
    penalties = grid.pop("penalty", [base.get("penalty", Penalty.NONE)])
    per_penalty = [1 if p == Penalty.NONE else len(lam.get(p, []) if isinstance(lam, dict) else lam) for p in penalties]
    return math.prod(len(v) for v in grid.values()) * sum(per_penalty)


def expand(base: dict[str, Any], grid: dict[str, Any]) -> list[RunConfig]:
    """All run configs of `grid` × `base`, validated, with duplicates (the baseline's λ) removed."""
    grid = dict(grid)
    lam = grid.pop("lam", [base.get("lam", 0.0)])
    axes = list(grid)
    configs: dict[str, RunConfig] = {}
    for values in itertools.product(*(grid[a] for a in axes)):
        point = dict(zip(axes, values))
        penalty = point.get("penalty", base.get("penalty", Penalty.NONE))
        lams = [0.0] if penalty == Penalty.NONE else (lam.get(penalty, []) if isinstance(lam, dict) else lam)
        for value in lams:
            config = RunConfig.parse(nest({**base, **point, "lam": value}))
            configs.setdefault(config.key(), config)
    return list(configs.values())


# ---- execution
def plan_groups(configs: list[RunConfig], group_size: int | None = None,
                size=stack_size) -> list[list[RunConfig]]:
    """Split runs into stacks that can train together: `group_size` runs at most, else `size(config)`
    (default: what this machine's device holds, `mulreg.engine.sizing.stack_size`)."""
    by_key: dict[tuple, list[RunConfig]] = {}
    for c in configs:
        by_key.setdefault(group_key(c), []).append(c)
    groups = []
    for members in by_key.values():
        k = 1 if not vectorizable(members[0]) else group_size or size(members[0])
        groups += [members[i : i + k] for i in range(0, len(members), k)]
    return groups


def run(spec: SweepSpec, *, progress: bool = True, root=None, configs: list[RunConfig] | None = None) -> pd.DataFrame:
    """Train every run of `spec` (or only `configs`, runs of another origin) the store lacks; return
    the runs table of the whole sweep.

    On a CPU the runs go to worker processes started from a forkserver, which imports the calling
    script's main module again: a script that calls `run` needs `if __name__ == "__main__":`
    (notebooks and `python -m mulreg sweep` need nothing)."""
    spec = executor_from_env(spec)
    store = spec.open_store()
    store.clean()
    configs = spec.configs() if configs is None else configs
    pending = [c for c in configs if not store.is_complete(c.key())]
    if pending and spec.executor == "ray":
        from mulreg.engine.cluster import check_address

        check_address(spec.ray_address)  # a mistyped address is named before the data are read
    if pending:  # one pre-flight for every executor, in this process, before anything trains or is sent
        _preflight(pending, root, devices=spec.executor == "local")
    if spec.executor == "ray":  # sized on the workers, which may have devices this driver lacks
        from mulreg.engine.cluster import task_size

        groups = plan_groups(pending, spec.group_size, task_size)
    else:  # stackable runs: one group per shape, its slots refilled as runs stop (`train_group`)
        groups = plan_groups(pending, size=lambda c: 1 if slots_for(spec, c) == 1 else len(pending))
    show_epochs = progress and spec.executor != "ray"  # Ray's workers report runs, not epochs
    with (_cluster_session(spec, pending),
          progress_bar(total=len(configs), initial=len(configs) - len(pending), unit="run", desc="sweep",
                       disable=not progress) as bar,
          progress_bar(total=sum(c.max_epochs for c in pending), initial=_resumed_epochs(pending, store) if
                       show_epochs else 0, unit="epoch", desc="epochs", position=1, leave=False,
                       disable=not show_epochs) as epochs):
        if spec.executor == "ray":
            from mulreg.engine.cluster import run_groups_on_ray

            run_groups_on_ray(groups, store, spec, bar, root=root,
                              on_result=lambda result: record(result, store, bar))
        elif execution_strategy(spec, pending) == "processes":
            _run_processes(groups, store, spec, bar, epochs, root)
        else:
            for group in groups:
                _train_claimed(group, store, root, bar, epochs.update, slots_for(spec, group[0]))
    require_complete(configs, store)
    return store.load_runs([c.key() for c in configs])


def _resumed_epochs(pending: list[RunConfig], store: Store) -> int:
    """The epochs the pending runs' checkpoints hold (they resume there), so the epochs bar starts where
    the sweep stopped and its time left counts only what is left."""
    checkpoints = store.checkpoints()
    return sum(checkpoints.epoch(c.key()) for c in pending)


class IncompleteStage(MulregError):
    """Some runs of a sweep are not stored after it ran: another process holds them, or they failed to store."""


SHOWN_MISSING = 4  # runs named in an incomplete stage's message; the rest are counted


def require_complete(configs: list[RunConfig], store: Store) -> None:
    """Refuse a sweep with runs not stored, naming them: nothing is read or decided on part of a stage."""
    missing = [c for c in configs if not store.is_complete(c.key())]
    if not missing:
        return
    held = sum(store.is_claimed(c.key()) for c in missing)
    names = "; ".join(f"{c.penalty} λ={c.lam:g} noise {c.label_noise:g} seed {c.seed} ({c.key()})"
                      for c in missing[:SHOWN_MISSING])
    more = f"; and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else ""
    raise IncompleteStage(f"{len(missing)} of the sweep's {len(configs)} runs are not stored in {store.root}: "
                          f"{names}{more}. Another process is training {held} of them now: run this again when it "
                          "has finished; nothing is decided on part of a sweep")


def _cluster_session(spec: SweepSpec, pending: list[RunConfig]):
    """Ray connected before any output when the sweep has runs for it (`mulreg.engine.cluster.session`)."""
    if not pending or spec.executor != "ray":
        return contextlib.nullcontext()
    from mulreg.engine.cluster import session

    return session(spec)


def _preflight(pending: list[RunConfig], root, devices: bool = True) -> None:
    """Fail before any training when a device is unavailable (with `devices`: not for Ray, whose
    workers may have devices this driver lacks), the data cannot be found and read, or holds fewer
    images than a run's `n_train` or `n_test` (this also decodes and caches CIFAR-10 once, for all
    workers)."""
    for device in {c.device for c in pending} if devices else ():
        resolve_device(device)
    check_caps(pending, root)


def executor_from_env(spec: SweepSpec) -> SweepSpec:
    """Env MULREG_EXECUTOR / MULREG_RAY_ADDRESS choose the executor of sweeps that set none
    themselves, e.g. the notebooks' sweeps under `make figures` (docs/CLUSTER.md)."""
    env = {"executor": os.environ.get("MULREG_EXECUTOR"), "ray_address": os.environ.get("MULREG_RAY_ADDRESS")}
    update = {k: v for k, v in env.items() if v and k not in spec.model_fields_set}
    if not update:
        return spec
    try:
        return SweepSpec.model_validate(spec.model_dump(exclude_unset=True) | update)
    except ValidationError as err:
        raise ConfigError("env MULREG_EXECUTOR / MULREG_RAY_ADDRESS: " + describe(err)) from None


def execution_strategy(spec: SweepSpec, pending: list[RunConfig]) -> str:
    """"inline" (one process, stack after stack) or "processes" (one single-threaded worker per core)."""
    if spec.strategy != "auto":
        return spec.strategy
    on_cpu = bool(pending) and resolve_device(pending[0].device).type == "cpu"
    return "processes" if on_cpu and (os.cpu_count() or 1) > 1 and len(pending) > 1 else "inline"


def summary(row: dict) -> str:
    """One line per finished run, from a runs-table row (config fields, metrics, stop reason)."""
    return (f"{row['penalty']:>7} λ={row['lam']:<8g} noise={row['label_noise']:<4g} seed={row['seed']:<3} "
            f"test acc {row.get('test_acc', float('nan')):.4f} after {row['epochs']} epochs ({row['stop_reason']})")


def slots_for(spec: SweepSpec, config: RunConfig) -> int:
    """Runs trained at once in one stack: the sweep's `group_size`, else what this device holds."""
    return 1 if not vectorizable(config) else spec.group_size or stack_size(config)


def _train_claimed(group: list[RunConfig], store: Store, root, bar: tqdm | None, on_epochs=None,
                   slots: int = 1) -> None:
    """Train the runs of `group` that no other process holds, `slots` at a time, saving each as it
    finishes."""
    with store.claim([c.key() for c in group]) as claimed:
        todo = [c for c in group if c.key() in claimed]
        if not todo:
            return

        train_group(todo, root=root, checkpoints=store.checkpoints(), progress=False,
                    on_result=lambda result: record(result, store, bar), on_epochs=on_epochs, slots=slots)


def record(result, store: Store, bar: tqdm | None) -> None:
    """Store a finished run; where progress is shown, count it and print its summary line."""
    store.save(result)
    if bar is not None:
        bar.update()
        say(bar, summary(result.config.model_dump() | result.metrics | {"stop_reason": result.stop_reason}))


_epochs_done = None  # in a worker process: the counter of run-epochs shared with the parent


def _init_worker(counter) -> None:
    global _epochs_done
    _epochs_done = counter
    torch.set_num_threads(1)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: this worker is killed when its parent (the forkserver, which exits with the sweep) dies,
    so a sweep killed outright (SIGKILL) leaves no worker training on."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _count_epochs(n: int) -> None:
    with _epochs_done.get_lock():
        _epochs_done.value += n


def _worker(group: list[RunConfig], store_root: str, every: int, root) -> None:
    _train_claimed(group, Store(store_root, every), root, None, _count_epochs)


def _worker_context():
    """forkserver: workers fork from a clean server that has imported torch and mulreg once, so
    they start in milliseconds (spawn re-imports torch in each: measurably slower, see
    docs/PERFORMANCE.md) without inheriting the caller's autograd threads, which plain fork must
    not (a worker compiling `torch.compile` graphs fails after its parent compiled any). spawn
    where forkserver does not exist."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(["mulreg.engine.sweep"])
    return ctx


def _run_processes(groups, store: Store, spec: SweepSpec, bar: tqdm, epochs: tqdm, root) -> None:
    """One worker process per core, one thread each: on a small CPU this beats threads within one
    process (see docs/PERFORMANCE.md). The parent reports progress from the store and a shared
    epoch counter."""
    workers = spec.workers or os.cpu_count() or 1
    keys = [c.key() for g in groups for c in g]
    reported: set[str] = set()
    ctx = _worker_context()
    counter = ctx.Value("q", 0)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,))
    errors = []
    try:
        futures = {pool.submit(_worker, g, str(store.root), store.every, root) for g in groups}
        while futures:
            finished, futures = wait(futures, timeout=1, return_when=FIRST_COMPLETED)
            errors += [f.exception() for f in finished if f.exception()]
            epochs.update(counter.value - epochs.n)
            _report_new(store, keys, reported, bar)
    except BaseException:  # Ctrl-C, SIGTERM (`mulreg.__main__`) or an error here: no worker trains on
        _stop_workers(pool)
        raise
    pool.shutdown()
    _report_new(store, keys, reported, bar)
    if errors:  # the other groups ran on; the finished runs are stored
        failed = f"{len(errors)} of {len(groups)} groups failed (the finished runs are stored)"
        if isinstance(errors[0], MulregError):  # anticipated (a damaged file, a full disk): one line, no traceback
            raise MulregError(f"{failed}; first error: {errors[0]}")
        raise RuntimeError(f"{failed}; first error: {errors[0]!r}") from errors[0]


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now (their runs' checkpoints are kept, their claims freed by the OS),
    rather than waiting for their groups to finish as `shutdown` would."""
    processes = list((pool._processes or {}).values())
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
    pool.shutdown(wait=False, cancel_futures=True)


def _report_new(store: Store, keys: list[str], reported: set[str], bar: tqdm) -> None:
    new = [k for k in keys if k not in reported and store.is_complete(k)]
    if not new:
        return
    for row in store.load_runs(new).to_dict("records"):
        say(bar, summary(row))
    reported.update(new)
    bar.update(len(new))
