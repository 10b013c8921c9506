"""The worker: a process that imports torch and mulreg, checks that CUDA starts (unless --cpu), and
measures the rows of its units, appending each as one JSON line to the events file the parent reads.

On CUDA (or with --isolate) a worker measures one unit besides "env" and exits: the parent starts the
next. Each unit's allowance is its share (plan.UNITS) of the time left; a row that no longer fits,
or that fails, becomes a row "skipped: <why>", never a crash. The item functions live in agreement,
throughput, memory and sweeps; each takes this worker and a row's params, and returns the row's value,
notes, status and details."""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from gpu_check.environment import Skip, brief, cuda_problem, environment, make_data
from gpu_check.plan import ROOT, SWEEP_K, UNITS, plan, sizes
from gpu_check.text import jsonable, oneline

NO_CUDA_EXIT = 3  # the parent's too (parent.NO_CUDA_EXIT)


class Worker:
    def __init__(self, args):
        self.args = args
        self.events = Path(args.events)
        self.work = Path(args.work)
        self.deadline = float(args.deadline)
        self.unit_deadline = self.deadline
        import torch

        import mulreg  # noqa: F401 - before CUDA starts (import torch does not): it sets CUBLAS_WORKSPACE_CONFIG

        self.torch = torch
        self.cuda = not args.cpu  # checked in run(): a worker without CUDA stops there
        self.device = "cuda" if self.cuda else "cpu"
        self.sz = sizes(args.short, self.cuda)
        self.cache: dict = {}  # what rows share: the plain loop's run, the CPU engine's distance, K=sweep

    def emit(self, event: str, **fields) -> None:
        with open(self.events, "a") as f:
            f.write(json.dumps({"event": event, **fields}, default=jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def left(self) -> float:
        return self.unit_deadline - time.time()

    def run(self, units: list[str]) -> int:
        """Measure `units` in order; on CUDA (or with --isolate) only up to the first one besides env,
        so that each unit has a process (and CUDA context) of its own."""
        if self.cuda and (why := cuda_problem(self.torch)):
            self.emit("fatal", why=why, env=brief(self.torch))
            return NO_CUDA_EXIT
        os.environ["MULREG_DATA"] = str(self.work / "cifar10-synthetic")
        os.environ["MULREG_CACHE"] = str(self.work / "cache")
        mine = units
        if self.cuda or self.args.isolate:
            mine = units[: next((n for n, u in enumerate(units) if u != "env"), len(units)) + 1]
        for n, unit in enumerate(mine):
            later = sum(UNITS[u] for u in units[n:] if u == unit or plan(u, self.device, self.args.short))
            allowance = max(0.0, (self.deadline - time.time()) * UNITS[unit] / later)
            if unit == "env":  # everything else needs it: it may take what it needs
                allowance = max(allowance, min(60.0, self.deadline - time.time()))
            self.unit_deadline = time.time() + allowance
            self.emit("start", unit=unit, allowance_s=allowance)
            for row in plan(unit, self.device, self.args.short):
                self.measure(row)
            self.emit("done", unit=unit)
        return 0

    def measure(self, row: dict) -> None:
        from gpu_check.items import FUNCTIONS

        item = row["item"]
        base = {k: row[k] for k in ("item", "setting", "unit")}
        need = 20 if row["params"].get("compile") else 0 if item == "env" else 3
        if self.left() < need:
            self.emit("row", row=base | {"status": f"skipped: allowance spent ({self.left():.0f} s left, "
                                                   f"~{need} s needed)"})
            return
        t = time.time()
        try:
            result = FUNCTIONS[item](self, **row["params"])
            status = result.pop("status", "ok")
        except Skip as why:
            result, status = {}, f"skipped: {why}"
        except Exception as err:  # noqa: BLE001 - every failure becomes a row, never a crash
            result, status = {"details": {"traceback": traceback.format_exc()[-2000:]}}, self.why_failed(err)
        finally:
            self.cleanup()
        self.emit("row", row=base | {"status": status, "seconds": round(time.time() - t, 1)} | result)

    def why_failed(self, err: Exception) -> str:
        kinds = tuple(k for k in (getattr(self.torch, "OutOfMemoryError", None),
                                  getattr(self.torch.cuda, "OutOfMemoryError", None)) if k)
        if self.cuda and (isinstance(err, kinds) or "out of memory" in str(err).lower()):
            return f"skipped: out of GPU memory ({oneline(err)[:200]})"
        if isinstance(err, (AttributeError, ImportError)) and "torch" in str(err):
            return f"skipped: torch {self.torch.__version__} lacks what is used here ({oneline(err)})"
        return f"skipped: {oneline(err)}"

    def cleanup(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def item_env(self, what: str) -> dict:
        """The environment, and the synthetic data set; the parent hears of the device even when
        either fails."""
        t = time.time()
        train_per_class, test_per_class = self.sz["data"]
        env: dict = {}
        try:
            how = make_data(self.work / "cifar10-synthetic", train_per_class, test_per_class)
            env["data"] = (f"synthetic, {2 * train_per_class} train + {2 * test_per_class} test images (classes "
                           f"cat, deer), {how}, made in {time.time() - t:.1f} s in {self.work}")
        except Exception as err:  # noqa: BLE001 - every item will say what then fails
            env["data"] = f"FAILED to make the synthetic data: {oneline(err)}"
        try:
            env = environment(self.torch, self.device) | env
        except Exception as err:  # noqa: BLE001
            env["environment"] = f"failed: {oneline(err)}"
        self.emit("env", env=env, device=self.device, why_not_cuda="" if self.cuda else "--cpu given")
        return {"value": None, "notes": env["data"], "status": "ok" if "FAILED" not in env["data"] else "failed"}

    # ---- what the items share
    def config(self, **values):
        from mulreg.config import RunConfig

        base = dict(task="binary", device=self.device, init_scale=0.2, lr=0.03, batch_size=16, early_stopping=None,
                    val_fraction=0.2, penalty="mul", lam=5e-7, max_epochs=1)
        return RunConfig.parse(base | values)

    def k(self, k) -> int:
        """K as planned: a number, or SWEEP_K: the most runs the quick binary sweep's selection stage
        stacks on this device (`mulreg.engine.sweep.plan_groups`)."""
        if k != SWEEP_K:
            return k
        if SWEEP_K not in self.cache:
            from mulreg.engine.sweep import SweepSpec, plan_groups

            spec = SweepSpec.from_yaml(ROOT / "params/quick/binary_sweep.yaml")
            configs = [c.replace(device=self.device) for c in spec.configs()]
            self.cache[SWEEP_K] = max(len(g) for g in plan_groups(configs))
        return self.cache[SWEEP_K]

    def stack(self, k: int, **values) -> list:
        c = self.config(**values)
        return [c.replace(seed=s) for s in range(1, k + 1)]

    def pool_images(self, config) -> int:
        """Training images per run and epoch (the pool less its validation split); loads the pool."""
        from mulreg.core.data import pool_for
        from mulreg.core.devices import resolve_device

        n = len(pool_for(config, None, resolve_device(config.device)).x_train)
        return n - round(config.val_fraction * n)

    def timed(self, configs: list, epochs: int, **kw) -> dict:
        """train_group on `configs` for `epochs` epochs: wall time of each epoch (CUDA synchronised at
        every stamp), peak memory above what was allocated before, the results."""
        from mulreg.engine.train import train_group

        torch = self.torch
        if configs[0].compile:
            torch._dynamo.reset()  # a fresh compilation, as in a new process (and no recompile limit)
        images = self.pool_images(configs[0])  # loaded (and on the device) before timing
        stamps: list[float] = []

        def on_epochs(n: int) -> None:
            if n:  # a run that stops at max_epochs reports its remaining epochs: 0, not an epoch
                self.sync()
                stamps.append(time.perf_counter())

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        results = train_group([c.replace(max_epochs=epochs) for c in configs], progress=False, on_epochs=on_epochs,
                              **kw)
        self.sync()
        out = {"results": results, "epoch_s": [b - a for a, b in zip([t0] + stamps, stamps)],
               "images": images, "total_s": time.perf_counter() - t0}
        if self.cuda:
            out["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        return out

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
