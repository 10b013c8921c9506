#!/usr/bin/env python3
"""Offline GPU check: one call on a lent GPU machine measures what docs/PERFORMANCE.md ("Offline GPU
check") lists and writes $OUT/gpu_check.json and $OUT/gpu_check.md (rewritten after every row).

Run it through `tools/gpu_check.sh`, which installs the wheels the GPU image lacks (from .whl/, made
by `make gpu-wheels`) and puts lib/ on the path: mulreg is imported from the checkout, never installed.

    bash tools/gpu_check.sh                 # on a CUDA machine: every item, within 8 minutes
    bash tools/gpu_check.sh --cpu --short   # the dry run CI and tests/test_gpu_check.py make
    bash tools/gpu_check.sh --items b,e --budget 300   # fill in what an earlier call skipped

Items (each a set of rows: item, setting, value, unit, status, notes):
  a  agreement of mulreg.engine.train (the engine) with mulreg.engine.loop.train_plain (the plain loop, on the CPU)
  b  binary throughput, eager and compiled, K runs per stack, each memory_format
  c  CUDA-graph capture with compile_mode "reduce-overhead"
  d  peak GPU memory of a stack against the footprint estimate × K
  e  one epoch of each notebook-06 arm (params/quick/regularisers_sweep.yaml), compiled
  f  the quick binary sweep (params/quick/binary_sweep.yaml, both stages) end to end

The data are synthetic (CIFAR-10's shapes, two classes, random pixels whose brightness depends on
the class), written straight into the decoded-data cache that mulreg.core.data reads: throughput,
memory and engine/loop agreement do not depend on pixel content; accuracies mean nothing.

This process (the parent) imports no torch: it starts a worker process (this file with --worker),
reads the rows the worker appends to an events file, and kills the worker's process group when an
item overruns its time allowance; rows that did not come are reported "skipped: <why>" and a fresh
worker carries on with the next item. On CUDA every item gets its own worker (a crashed kernel or a
poisoned CUDA context costs one item); on a CPU one worker does them all (cheaper to start).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ITEMS = {  # item: (title, share of the time budget)
    "env": ("environment and synthetic data", 0.03),
    "a": ("engine vs plain loop agreement", 0.15),
    "b": ("binary throughput", 0.30),
    "c": ("CUDA graphs (compile_mode reduce-overhead)", 0.09),
    "d": ("peak memory vs footprint estimate", 0.05),
    "e": ("notebook-06 arms, one epoch each", 0.20),
    "f": ("quick binary sweep end to end", 0.18),
}
LOG_MOST = 8 * 2**20  # bytes of gpu_check.log kept (its end)
GRACE_S = 5  # a worker may overrun an item's allowance by this much before it is killed
RESERVE_S = 4  # kept at the end of the budget for writing the results
SYNTHETIC = ("synthetic: CIFAR-10-shaped uint8 images (3×32×32) of two classes (cat, deer), random pixels "
             "whose brightness depends on the class, written into mulreg's decoded-data cache; throughput, "
             "memory and engine/loop agreement do not depend on pixel content, accuracies mean nothing")
TESTS_TOL = (1e-4, 1e-6)  # rtol, atol of the engine/loop comparisons in tests/test_train.py (CPU)
GPU_TOL = (1e-3, 1e-5)  # what this check calls agreement on a GPU (other kernels, reduction orders)


# ---------------------------------------------------------------- sizes and the plan (no torch here)
def sizes(short: bool, cuda: bool) -> dict:
    """What each item trains: full on a GPU, small on a CPU (--cpu), tiny with --short."""
    if short:
        return dict(data=(200, 60), a=dict(n_train=80, n_test=40, epochs=2),
                    b=dict(n_train=80, n_test=40, warm=1, timed=1, ks=(1, 2), format_ks=(1,),
                           compiled_ks=(2, 1), compiled_format_ks=(2,)),
                    c=dict(ks=(2, 1), n_train=80, n_test=40, epochs=2), d=dict(ks=(1, 2), n_train=80, n_test=40),
                    e=dict(n_train=40, n_test=20, epochs=1, most=2), f=dict(max_epochs=1, n_train=80, n_test=40))
    if cuda:
        return dict(data=(5000, 1000), a=dict(n_train=2000, n_test=1000, epochs=3),
                    b=dict(n_train=2000, n_test=1000, warm=1, timed=2, ks=(1, 16, 64, 128), format_ks=(1, 64),
                           compiled_ks=(64, 1, 128, 16), compiled_format_ks=(64, 1)),
                    c=dict(ks=(64, 1), n_train=2000, n_test=1000, epochs=3),
                    d=dict(ks=(1, 16, 64, 128), n_train=2000, n_test=1000),
                    e=dict(n_train=None, n_test=None, epochs=2), f=dict())
    return dict(data=(1000, 300), a=dict(n_train=600, n_test=300, epochs=3),
                b=dict(n_train=400, n_test=200, warm=1, timed=2, ks=(1, 4), format_ks=(1,),
                       compiled_ks=(1,), compiled_format_ks=()),
                c=dict(ks=(1,), n_train=200, n_test=100, epochs=2), d=dict(ks=(1, 4), n_train=400, n_test=200),
                e=dict(n_train=200, n_test=100, epochs=2, most=4), f=dict(max_epochs=2, n_train=200, n_test=100))


def arms_of_sweep() -> list[dict]:
    """Notebook 06's arms as written in params/quick/regularisers_sweep.yaml ([] if unreadable)."""
    try:
        import yaml

        arms = yaml.safe_load((ROOT / "params/quick/regularisers_sweep.yaml").read_text()).get("arms") or [{}]
        return [dict(a) for a in arms]
    except Exception:  # noqa: BLE001 - the worker reports the real error when it expands the file
        return []


def arm_label(i: int, arm: dict) -> str:
    parts = [f"{k}={v}" for k, v in arm.items() if k != "lam"]
    return f"arm {i}: " + (", ".join(parts) if parts else "binary grid (none, sum, mul)")


def plan(item: str, device: str, short: bool) -> list[dict]:
    """The rows `item` measures on `device` ("cuda" or "cpu"), in the order measured. Each row:
    setting (its name in the table), unit, device, params (what the worker does)."""
    cuda = device == "cuda"
    sz = sizes(short, cuda)
    rows: list[dict] = []

    def add(setting: str, unit: str, **params) -> None:
        rows.append({"item": item, "setting": f"{device} {setting}", "unit": unit, "device": device,
                     "params": params})

    if item == "env":
        add("environment", "", what="env")
    elif item == "a":
        s = sz["a"]
        steps = (s["n_train"] - round(0.2 * s["n_train"])) // 16 * s["epochs"]
        what = f"vs plain loop (CPU), {steps} steps, n_train {s['n_train']}"
        if cuda:  # how far the engine on this host's CPU is from the loop: the scale for the GPU rows
            add(f"baseline: engine on this host's CPU, eager, {what}", "max |Δ|", compile=False, device="cpu")
        add(f"eager {what}", "max |Δ|", compile=False)
        if cuda or not short:
            add(f"compiled {what}", "max |Δ|", compile=True)
    elif item == "b":
        s = sz["b"]
        for k in s["ks"]:
            add(f"eager K={k} memory_format=auto", "images·runs/s", k=k, compile=False, memory_format="auto")
        for fmt in ("channels_last", "contiguous"):
            for k in s["format_ks"]:
                add(f"eager K={k} memory_format={fmt}", "images·runs/s", k=k, compile=False, memory_format=fmt)
        if cuda or not short:
            for k in s["compiled_ks"]:
                add(f"compiled K={k} memory_format=auto", "images·runs/s", k=k, compile=True, memory_format="auto")
            for k in s["compiled_format_ks"]:
                for fmt in ("channels_last", "contiguous"):
                    add(f"compiled K={k} memory_format={fmt}", "images·runs/s", k=k, compile=True,
                        memory_format=fmt)
        if cuda:
            k = s["format_ks"][-1]
            add(f"eager K={k} memory_format=auto deterministic", "images·runs/s", k=k, compile=False,
                memory_format="auto", deterministic=True)
    elif item == "c":
        if cuda or not short:
            for k in sz["c"]["ks"]:
                add(f"compiled reduce-overhead K={k}", "CUDA graphs recorded", k=k)
    elif item == "d":
        if cuda:
            for k in sz["d"]["ks"]:
                add(f"eager K={k}: peak allocated during train_group", "MiB", k=k, compile=False)
            k = max(sz["d"]["ks"][:3])
            add(f"compiled K={k}: peak allocated during train_group", "MiB", k=k, compile=True)
            add("stack_size (runs per stack the engine picks here)", "runs", what="stack_size")
        else:
            add("footprint estimate per run (binary, batch 16)", "MiB", what="footprint")
    elif item == "e":
        mode = "compiled" if cuda else "eager"
        arms = arms_of_sweep()
        for i, arm in enumerate(arms):
            add(f"{mode} {arm_label(i, arm)}", "s/epoch", arm=i, compile=cuda)
        if not arms:
            add(f"{mode} arms of params/quick/regularisers_sweep.yaml", "s/epoch", arm=None, compile=cuda)
    elif item == "f":
        if cuda and not short:
            add("params/quick/binary_sweep.yaml, both stages, as written (compiled)", "s")
        else:
            s = sz["f"]
            add(f"params/quick/binary_sweep.yaml, both stages, max_epochs {s['max_epochs']}, n_train {s['n_train']}"
                f"{', compiled' if cuda else ', eager, one inline stack'}", "s")
    return rows


# ---------------------------------------------------------------- the parent: schedule, kill, write
class Report:
    """The rows so far, written to $OUT as JSON and markdown after every change."""

    def __init__(self, out: Path, args, device: str):
        self.out, self.args, self.device = out, args, device
        self.t0 = time.time()
        self.environment: dict = {}
        self.rows: list[dict] = []
        self.items: dict[str, dict] = {}

    def set_plan(self, item: str, rows: list[dict]) -> None:
        for r in rows:
            self.rows.append({"item": item, "title": ITEMS[item][0], "setting": r["setting"], "value": None,
                              "unit": r["unit"], "status": "pending", "notes": ""})

    def put(self, row: dict) -> None:
        for i, r in enumerate(self.rows):
            if r["item"] == row["item"] and r["setting"] == row["setting"]:
                self.rows[i] = {**r, **row}
                return
        self.rows.append({"title": ITEMS.get(row["item"], ("",))[0], "value": None, "unit": "", "notes": "", **row})

    def settle(self, item: str, status: str) -> None:
        """Every row of `item` still pending gets `status` (a "skipped: <why>")."""
        for r in self.rows:
            if r["item"] == item and r["status"] == "pending":
                r["status"] = status

    def write(self) -> None:
        data = {"title": "mulreg offline GPU check", "data": SYNTHETIC,
                "args": {"cpu": self.args.cpu, "short": self.args.short, "budget_s": self.args.budget,
                         "items": self.args.items},
                "device": self.device, "started": _stamp(self.t0), "written": _stamp(time.time()),
                "wall_s": round(time.time() - self.t0, 1), "environment": self.environment,
                "items": self.items, "rows": [{k: v for k, v in r.items() if k != "title"} for r in self.rows]}
        _atomic(self.out / "gpu_check.json", json.dumps(data, indent=1, default=str))
        _atomic(self.out / "gpu_check.md", self.markdown(data))

    def markdown(self, data: dict) -> str:
        lines = ["# mulreg offline GPU check", "",
                 f"{data['started']}, {data['wall_s']} s so far; device {self.device}; "
                 f"arguments {' '.join(sys.argv[1:]) or '(none)'}.", "",
                 f"**Data are synthetic** ({SYNTHETIC}).", "", "## Environment", "", "| | |", "|---|---|"]
        for k, v in _flat(self.environment):
            lines.append(f"| {k} | {_md(v)} |")
        lines += ["", "## Results", "", "| item | setting | value | unit | status | notes |",
                  "|---|---|---:|---|---|---|"]
        for r in self.rows:
            if r["item"] == "env":
                continue
            lines.append(f"| {r['item']}. {r.get('title', '')} | {_md(r['setting'])} | {_fmt(r.get('value'))} | "
                         f"{r.get('unit', '')} | {_md(r.get('status', ''))} | {_md(r.get('notes', ''))} |")
        lines += ["", "Items: " + "; ".join(_item_line(k, v) for k, v in self.items.items()), ""]
        return "\n".join(lines)


def parent(args) -> int:
    out = Path(args.out or os.environ.get("OUT") or Path(tempfile.gettempdir()) / "gpu_check_out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="mulreg-gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    items = ["env"] + [i for i in args.items.split(",") if i and i != "env"]
    unknown = [i for i in items if i not in ITEMS]
    if unknown:
        print(f"unknown items {unknown}; known: {', '.join(ITEMS)}", file=sys.stderr)
        return 2
    deadline = time.time() + args.budget - RESERVE_S
    report = Report(out, args, "cpu" if args.cpu else "cuda (if available)")
    report.write()
    log_path = out / "gpu_check.log"
    log = open(log_path, "a")
    planned: set[str] = set()
    todo, workers = list(items), 0
    while todo and deadline - time.time() >= 3:
        events = work / f"events-{os.getpid()}-{workers}.jsonl"
        workers += 1
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--items", ",".join(todo),
               "--work", str(work), "--events", str(events), "--deadline", str(deadline)]
        cmd += ["--cpu"] * args.cpu + ["--short"] * args.short + ["--isolate"] * args.isolate
        log.write(f"\n=== {_stamp(time.time())} worker {workers} for {todo}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        current, started, allowance, seen, progressed = None, time.time(), 0.0, 0, False
        while True:
            rc = proc.poll()
            lines = events.read_text().splitlines() if events.exists() else []
            for line in lines[seen:]:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line still being written: read it next time
                seen += 1
                if ev["event"] == "env":
                    report.environment = ev["env"]
                    cuda = ev["device"] == "cuda"
                    report.device = ev["device"] + ("" if cuda else f" ({ev['why_not_cuda']})")
                    for it in items:
                        if it in planned or it == "env":
                            continue
                        planned.add(it)
                        report.set_plan(it, plan(it, "cuda", args.short))
                        if not cuda:  # a CPU run: its GPU rows, then what it measures on the CPU
                            report.settle(it, "skipped: no CUDA")
                            report.set_plan(it, plan(it, "cpu", args.short))
                elif ev["event"] == "start":
                    current, started, allowance = ev["item"], time.time(), ev["allowance_s"]
                    report.items[current] = {"state": "running", "allowance_s": round(allowance)}
                elif ev["event"] == "row":
                    report.put(ev["row"])
                elif ev["event"] == "done":
                    report.settle(ev["item"], "skipped: not reached")
                    report.items[ev["item"]] |= {"state": "done", "seconds": round(time.time() - started, 1)}
                    todo.remove(ev["item"])
                    current, progressed = None, True
                report.write()
            if rc is not None:
                break
            overrun = current is not None and time.time() - started > allowance + GRACE_S
            if overrun or time.time() > deadline + GRACE_S:
                _kill(proc)
                rc = "killed"
                break
            time.sleep(0.5)
        if current is None and rc == 0 and progressed:
            continue  # the worker did its share (on CUDA: one item); the next one takes the rest
        item = current or todo[0]
        why = (f"skipped: timeout (item allowance {allowance:.0f} s spent)" if rc == "killed" and current
               else "skipped: total budget spent" if rc == "killed"
               else f"skipped: worker died (exit {rc}): {_tail(log_path)}")
        if item not in planned:  # the worker died before it said which device it has
            report.rows.append({"item": item, "title": ITEMS[item][0], "setting": "(whole item)", "value": None,
                                "unit": "", "status": why, "notes": ""})
            planned.add(item)
        report.settle(item, why)
        report.items[item] = report.items.get(item, {}) | {"state": "killed" if rc == "killed" else "died",
                                                           "seconds": round(time.time() - started, 1)}
        todo.remove(item)
        if item == "env":  # no worker gets further than this one did: say so for every item
            report.environment = {"failed": why}
            for it in todo:
                report.rows.append({"item": it, "title": ITEMS[it][0], "setting": "(whole item)", "value": None,
                                    "unit": "", "status": why, "notes": ""})
                report.items[it] = {"state": "not started"}
            todo = []
        report.write()
    for item in todo:
        if item not in planned:
            report.rows.append({"item": item, "title": ITEMS[item][0], "setting": "(whole item)", "value": None,
                                "unit": "", "status": "pending", "notes": ""})
        report.settle(item, f"skipped: total budget ({args.budget:.0f} s) spent")
        report.items[item] = {"state": "not started"}
    report.write()
    log.close()
    if log_path.stat().st_size > LOG_MOST:  # what comes back from the device is limited in size
        with open(log_path, "rb") as f:
            f.seek(-LOG_MOST, os.SEEK_END)
            tail = f.read()
        log_path.write_bytes(b"[... earlier lines cut ...]\n" + tail)
    print((out / "gpu_check.md").read_text())
    return 0


def _item_line(item: str, v: dict) -> str:
    took = f" in {v['seconds']} s" if "seconds" in v else ""
    allowed = f" of {v['allowance_s']} s allowed" if "allowance_s" in v else ""
    return f"{item} {v.get('state', '')}{took}{allowed}"


def _kill(proc: subprocess.Popen) -> None:
    """The worker and everything it started (a sweep, inductor's compile workers): its own session."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            if sig == signal.SIGKILL:
                return
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what the interrupted worker left running
    except ProcessLookupError:
        pass


def _tail(path: Path, n: int = 400) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("===")]
    return " / ".join(lines[-3:])[-n:]


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _md(v, most: int = 400) -> str:
    text = str(v).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= most else text[: most - 1] + "…"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


# ---------------------------------------------------------------- the worker: measurements
class Skip(Exception):
    """A row that cannot be measured here; its message says why."""


class Worker:
    def __init__(self, args):
        self.args = args
        self.events = Path(args.events)
        self.work = Path(args.work)
        self.deadline = float(args.deadline)
        self.item_deadline = self.deadline
        import torch

        import mulreg  # noqa: F401 - before CUDA starts (import torch does not): it sets CUBLAS_WORKSPACE_CONFIG

        self.torch = torch
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.device = "cuda" if self.cuda else "cpu"
        self.sz = sizes(args.short, self.cuda)
        self._plain_cache: dict = {}

    def emit(self, event: str, **fields) -> None:
        with open(self.events, "a") as f:
            f.write(json.dumps({"event": event, **fields}, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def left(self) -> float:
        return self.item_deadline - time.time()

    def run(self, items: list[str]) -> None:
        """Measure `items` in order; on CUDA (or with --isolate) only up to the first one besides env,
        so that each item has a process (and CUDA context) of its own: the parent starts the next worker."""
        self.prepare()
        mine = items
        if self.cuda or self.args.isolate:
            mine = items[: next((n for n, it in enumerate(items) if it != "env"), len(items)) + 1]
        for n, item in enumerate(mine):
            later = sum(ITEMS[i][1] for i in items[n:])
            allowance = max(0.0, (self.deadline - time.time()) * ITEMS[item][1] / later)
            if item == "env":  # everything else needs it: it may take what it needs
                allowance = max(allowance, min(60.0, self.deadline - time.time()))
            self.item_deadline = time.time() + allowance
            self.emit("start", item=item, allowance_s=allowance)
            for row in plan(item, self.device, self.args.short):
                self.measure(item, row)
            self.emit("done", item=item)

    def measure(self, item: str, row: dict) -> None:
        base = {k: row[k] for k in ("item", "setting", "unit")}
        need = 20 if row["params"].get("compile") else 0 if item == "env" else 3
        if self.left() < need:
            self.emit("row", row=base | {"status": f"skipped: allowance spent ({self.left():.0f} s left, "
                                                   f"~{need} s needed)"})
            return
        t = time.time()
        try:
            result = getattr(self, f"item_{item}")(**row["params"])
            status = result.pop("status", "ok")
        except Skip as why:
            result, status = {}, f"skipped: {why}"
        except Exception as err:  # noqa: BLE001 - every failure becomes a row, never a crash
            result, status = {"details": {"traceback": traceback.format_exc()[-2000:]}}, f"skipped: {_oneline(err)}"
            if self.cuda and _is_oom(self.torch, err):
                status = f"skipped: out of GPU memory ({_oneline(err)[:200]})"
            elif isinstance(err, (AttributeError, ImportError)) and "torch" in str(err):
                status = f"skipped: torch {self.torch.__version__} lacks what is used here ({_oneline(err)})"
        finally:
            self.cleanup()
        self.emit("row", row=base | {"status": status, "seconds": round(time.time() - t, 1)} | result)

    def cleanup(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    # ---- set-up: environment and synthetic data
    def prepare(self) -> None:
        os.environ["MULREG_DATA"] = str(self.work / "cifar10-synthetic")
        os.environ["MULREG_CACHE"] = str(self.work / "cache")

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
            env["data"] = f"FAILED to make the synthetic data: {_oneline(err)}"
        try:
            env = environment(self.torch, self.device) | env
        except Exception as err:  # noqa: BLE001
            env["environment"] = f"failed: {_oneline(err)}"
        why_not = "" if self.cuda else ("--cpu given" if self.args.cpu else "no CUDA")
        self.emit("env", env=env, device=self.device, why_not_cuda=why_not)
        return {"value": None, "notes": env["data"], "status": "ok" if "FAILED" not in env["data"] else "failed"}

    # ---- helpers shared by the items
    def config(self, **values):
        from mulreg.config import RunConfig

        base = dict(task="binary", device=self.device, init_scale=0.2, lr=0.03, batch_size=16, early_stopping=None,
                    val_fraction=0.2, penalty="mul", lam=5e-7, max_epochs=1)
        base.update(values)
        if "memory_format" in base and "memory_format" not in RunConfig.model_fields:
            if base["memory_format"] != "auto":
                raise Skip("RunConfig has no memory_format field in this checkout")
            del base["memory_format"]
        return RunConfig.parse(base)

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
        """train_group on `configs` for `epochs` epochs: wall time of each epoch, peak memory above
        what was allocated before, the results."""
        from mulreg.engine.train import train_group

        torch = self.torch
        if configs[0].compile:
            torch._dynamo.reset()  # a fresh compilation, as in a new process (and no recompile limit)
        images = self.pool_images(configs[0])  # loaded (and on the device) before timing
        stamps: list[float] = []

        def on_epochs(n: int) -> None:
            if n:
                stamps.append(time.perf_counter())

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        results = train_group([c.replace(max_epochs=epochs) for c in configs], progress=False, on_epochs=on_epochs,
                              **kw)
        out = {"results": results, "epoch_s": [b - a for a, b in zip([t0] + stamps, stamps)],
               "images": images, "total_s": time.perf_counter() - t0}
        if self.cuda:
            out["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        return out

    # ---- a: the engine against the plain loop
    def item_a(self, compile: bool, device: str | None = None) -> dict:
        """The engine against the plain loop (on the CPU) on one config. Two float32 computations of
        the same SGD drift apart at rounding level until a ReLU pre-activation lands on the other side
        of 0 in one of them: from there the gradients differ by a step and the runs by ~1e-4 (seen on
        the CPU after ~100-150 steps of this config). So the value is reported per epoch, and on a GPU
        beside the CPU engine's own distance from the loop (the first row on CUDA)."""
        import numpy as np

        from mulreg.engine.loop import train_plain
        from mulreg.engine.train import train

        s = self.sz["a"]
        cfg = self.config(n_train=s["n_train"], n_test=s["n_test"], max_epochs=s["epochs"], init_scale=1.0, lr=0.01,
                          penalty="sum", lam=5e-4, label_noise=0.2, compile=compile, device=device or self.device)
        if "plain" not in self._plain_cache:
            t = time.time()
            self._plain_cache["plain"] = (*train_plain(cfg.replace(device="cpu", compile=False)), time.time() - t)
        model, ref, plain_s = self._plain_cache["plain"]
        torch = self.torch
        if compile:
            torch._dynamo.reset()
        t = time.time()
        result = train(cfg, progress=False)
        engine_s = time.time() - t
        got_hist = result.history
        if len(got_hist) != len(ref) or not set(ref.columns) <= set(got_hist.columns):
            raise Skip(f"histories differ in shape: engine {got_hist.shape} {list(got_hist.columns)}, "
                       f"loop {ref.shape} {list(ref.columns)}")
        diff = np.abs(got_hist[ref.columns].to_numpy(float) - ref.to_numpy(float))  # epochs × columns
        by_epoch = np.nanmax(diff, axis=1)
        worst_col = ref.columns[int(np.nanargmax(np.nanmax(diff, axis=0)))]
        ref_state = {k: v.detach().cpu().double() for k, v in model.state_dict().items()}
        got = {k: v.detach().cpu().double() for k, v in result.state_dict.items()}
        if set(ref_state) != set(got):
            raise Skip(f"state dicts differ in keys: {sorted(set(ref_state) ^ set(got))}")
        w_abs = max(float((got[k] - ref_state[k]).abs().max()) for k in ref_state)
        w_scale = max(float(v.abs().max()) for v in ref_state.values())

        def within(rtol, atol):
            return all(torch.allclose(got[k], ref_state[k], rtol=rtol, atol=atol) for k in ref_state) and all(
                np.allclose(got_hist[c].to_numpy(float), ref[c].to_numpy(float), rtol=rtol, atol=atol,
                            equal_nan=True) for c in ref.columns)

        tight, loose = within(*TESTS_TOL), within(*GPU_TOL)
        verdict = ("within the CPU tests' tolerance (rtol 1e-4, atol 1e-6)" if tight else
                   "within rtol 1e-3, atol 1e-5 (not the CPU tests' 1e-4/1e-6)" if loose else
                   "outside rtol 1e-3, atol 1e-5")
        status = "ok" if loose else "differs"
        baseline = self._plain_cache.get("cpu engine")
        if cfg.device == "cpu" and not compile:
            self._plain_cache["cpu engine"] = w_abs
        elif baseline is not None and not loose and w_abs <= 10 * max(baseline, 1e-6):
            status = "ok"
            verdict += f", as far as the CPU engine is ({baseline:.1e}): rounding amplified, not another computation"
        if status == "differs" and by_epoch[0] <= GPU_TOL[0]:
            status = "drifted"
            verdict += ("; epoch 1 agrees, later epochs drift: float rounding amplified by SGD through ReLU kinks "
                        "(the plain loop against itself at 1 vs 2 threads drifts 4e-3 in 150 steps of this config)")
        where = f"{cfg.device}" + (f", cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}"
                                   if cfg.device == "cuda" else "")
        notes = (f"final weights: max |Δw| {w_abs:.2e} ({w_abs / w_scale:.1e} of max |w|); history max |Δ| by epoch "
                 f"{', '.join(f'{v:.1e}' for v in by_epoch)} (worst column {worst_col}); {verdict}; {where}; "
                 f"plain loop {plain_s:.1f} s, engine {engine_s:.1f} s")
        return {"value": w_abs, "notes": notes, "status": status,
                "details": {"history_max_abs_by_epoch": by_epoch.tolist(), "weights_max_abs": w_abs,
                            "weights_max_rel": w_abs / w_scale, "within_tests_tolerance": tight,
                            "within_gpu_tolerance": loose}}

    # ---- b: throughput
    def item_b(self, k: int, compile: bool, memory_format: str, deterministic: bool = False) -> dict:
        s = self.sz["b"]
        run = self.timed(self.stack(k, n_train=s["n_train"], n_test=s["n_test"], compile=compile,
                                    memory_format=memory_format, deterministic=deterministic),
                         s["warm"] + s["timed"])
        steady = sum(run["epoch_s"][s["warm"]:]) / s["timed"]
        rate = k * run["images"] / steady
        first = run["epoch_s"][0]
        notes = (f"{s['timed']} epochs of {run['images']} images × {k} runs after {s['warm']} warm-up: "
                 f"{steady:.2f} s/epoch (evaluation included); first epoch {first:.1f} s"
                 + (f" (≈ {first - steady:.0f} s compiling)" if compile else ""))
        if "peak_mib" in run:
            notes += f"; peak {run['peak_mib']:.0f} MiB"
        if memory_format != "auto" and not _engine_reads("memory_format"):
            notes += "; NB mulreg.engine.train does not read memory_format yet: the layout is the engine's default"
        return {"value": rate, "notes": notes,
                "details": {"epoch_s": run["epoch_s"], "steady_epoch_s": steady, "peak_mib": run.get("peak_mib")}}

    # ---- c: CUDA graphs
    def item_c(self, k: int) -> dict:
        torch = self.torch
        import logging

        s = self.sz["c"]
        messages: list[str] = []

        class Catch(logging.Handler):
            def emit(self, record):
                text = record.getMessage()
                if "cudagraph" in record.name.lower() or "cudagraph" in text.lower() or "cuda graph" in text.lower():
                    messages.append(text.strip().splitlines()[0][:300])

        handler = Catch(level=logging.DEBUG)
        # torch._inductor and torch._dynamo do not pass their records on to "torch": each gets the handler
        loggers = [logging.getLogger(n) for n in ("torch", "torch._inductor", "torch._dynamo")]
        for logger in loggers:
            logger.addHandler(handler)
        try:
            torch._logging.set_logs(cudagraphs=True)
        except Exception as err:  # noqa: BLE001
            messages.append(f"(torch._logging.set_logs(cudagraphs=True) failed: {_oneline(err)})")
        counters = _counters(torch)
        torch._dynamo.reset()  # (timed() resets again: harmless) and it clears the cudagraph trees, where it does
        counters.clear()
        before = _cudagraphs_recorded(torch) if self.cuda else 0
        try:
            run = self.timed(self.stack(k, n_train=s["n_train"], n_test=s["n_test"], compile=True,
                                        compile_mode="reduce-overhead"), s["epochs"])
            inductor = {key: v for key, v in counters.get("inductor", {}).items() if "cudagraph" in key}
            recorded = _cudagraphs_recorded(torch) if self.cuda else 0
            if isinstance(recorded, int) and isinstance(before, int):
                recorded -= before  # trees an older torch's reset() kept
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            try:
                torch._logging.set_logs()
            except Exception:  # noqa: BLE001
                pass
        skips = inductor.get("cudagraph_skips", 0)
        steady = sum(run["epoch_s"][1:]) / max(1, len(run["epoch_s"]) - 1)
        uniq = list(dict.fromkeys(messages))
        if not self.cuda:
            verdict = "no CUDA graphs on a CPU (inductor skips them); the counters are read as on a GPU"
        elif isinstance(recorded, int) and recorded > 0 and not skips:
            verdict = "CUDA graphs captured, no skips"
        elif isinstance(recorded, int) and recorded > 0:
            verdict = f"some graphs captured, {skips} skipped"
        else:
            verdict = f"not captured ({skips} skips)"
        notes = (f"{verdict}; inductor counters {inductor or '{}'}; {k * run['images'] / steady:,.0f} images·runs/s "
                 f"after the first epoch ({run['epoch_s'][0]:.0f} s)")
        if uniq:
            notes += "; messages: " + " | ".join(uniq[:3])
        return {"value": recorded, "notes": notes,
                "details": {"counters": inductor, "messages": uniq[:20], "epoch_s": run["epoch_s"]}}

    # ---- d: peak memory
    def item_d(self, k: int | None = None, compile: bool = False, what: str = "peak") -> dict:
        footprint, stack_size, where = sizing()
        s = self.sz["d"]
        config = self.config(n_train=s["n_train"], n_test=s["n_test"])
        per_run = footprint(config)
        if what == "footprint":
            return {"value": per_run / 2**20,
                    "notes": f"{where}.footprint: weights, gradients, optimiser slots, one batch and saved tensors; "
                             "peak memory needs CUDA"}
        if what == "stack_size":
            free, total = self.torch.cuda.mem_get_info()
            return {"value": stack_size(config),
                    "notes": f"{where}.stack_size: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free, "
                             f"footprint {per_run / 2**20:.2f} MiB per run"}
        run = self.timed(self.stack(k, n_train=s["n_train"], n_test=s["n_test"], compile=compile), 1)
        estimate = per_run * k / 2**20
        notes = (f"estimate {where}.footprint × K = {estimate:.1f} MiB; measured/estimate "
                 f"{run['peak_mib'] / estimate:.2f}; peak counted above what was allocated before the call "
                 f"(the data pool was already on the GPU); includes evaluation chunks of "
                 f"{_eval_images()} images")
        return {"value": run["peak_mib"], "notes": notes,
                "details": {"footprint_bytes": per_run, "estimate_mib": estimate}}

    # ---- e: notebook 06's arms
    def item_e(self, arm: int | None, compile: bool) -> dict:
        from mulreg.engine.sizing import group_key, vectorizable
        from mulreg.engine.sweep import SweepSpec, expand

        if arm is None:
            raise Skip("params/quick/regularisers_sweep.yaml could not be read")
        spec = SweepSpec.from_yaml(ROOT / "params/quick/regularisers_sweep.yaml")
        s = self.sz["e"]
        configs = expand(spec.base, {**spec.grid, **spec.arms[arm]}) if spec.arms else spec.configs()
        changes = dict(device=self.device, compile=compile, max_epochs=s["epochs"])
        if s["n_train"]:
            changes |= dict(n_train=s["n_train"], n_test=s["n_test"])
        configs = [c.replace(**changes) for c in configs]
        first = [c for c in configs if group_key(c) == group_key(configs[0])]
        stack = (first if vectorizable(first[0]) else first[:1])[: s.get("most")]
        run = self.timed(stack, s["epochs"])
        value = run["epoch_s"][-1]
        alone = "" if vectorizable(first[0]) else " (not stackable: each run trains alone)"
        if s.get("most") and vectorizable(first[0]) and len(first) > len(stack):
            alone += f" (at most {s['most']} on a CPU)"
        notes = (f"{len(stack)} of the arm's {len(configs)} runs in one stack{alone}; {run['images']} training "
                 f"images per run; epoch times {', '.join(f'{t:.1f}' for t in run['epoch_s'])} s")
        if compile and len(run["epoch_s"]) > 1:
            notes += f" (the first includes compiling, ≈ {run['epoch_s'][0] - value:.0f} s)"
        if "peak_mib" in run:
            notes += f"; peak {run['peak_mib']:.0f} MiB"
        return {"value": value, "notes": notes}

    # ---- f: the quick binary sweep
    def item_f(self) -> dict:
        import yaml

        from mulreg.config import load_yaml
        from mulreg.engine import stages
        from mulreg.engine.store import Store
        from mulreg.engine.sweep import SweepSpec

        values = load_yaml(ROOT / "params/quick/binary_sweep.yaml")
        store = self.work / f"store-{int(time.time())}"
        values["store"] = str(store)
        values["base"]["device"] = self.device
        s = self.sz["f"]
        if s:
            values["base"] |= {k: s[k] for k in ("max_epochs", "n_train", "n_test")}
        if not self.cuda:  # a dry run of the GPU path: one process, runs stacked, no compilation
            values["base"]["compile"] = False
            values |= {"strategy": "inline", "group_size": 32}
        path = self.work / "quick_binary_sweep.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        spec = SweepSpec.from_yaml(path)
        total_runs = len(stages.all_configs(spec))
        total_epochs = sum(c.max_epochs for c in stages.all_configs(spec))
        log = self.work / "sweep.log"
        timeout = self.left() - 8
        if timeout < 10:
            raise Skip(f"allowance spent before it started ({self.left():.0f} s left)")
        t0 = time.time()
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, "-m", "mulreg", "sweep", str(path)], stdout=f,
                                    stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                rc = None
        wall = time.time() - t0
        done = [k for k in Store(store).keys() if Store(store).is_complete(k)] if store.exists() else []
        text = log.read_text(errors="replace")
        if rc == 0:
            planned = stages.all_configs(spec)  # now with the confirmation plan the selection stage wrote
            return {"value": wall, "notes": f"{len(done)} runs ({len(planned)} planned, "
                                            f"{sum(c.max_epochs for c in planned)} run-epochs) trained and stored "
                                            f"in {wall:.0f} s (one process; start-up, data and compilation included)"}
        if rc is not None:
            raise Skip(f"the sweep exited with {rc}: {_last_lines(text)}")
        epochs_done, how = _sweep_progress(text, store, len(done), spec)
        if not epochs_done:
            return {"value": wall, "status": "partial",
                    "notes": f"stopped at the allowance after {wall:.0f} s: {len(done)} of {total_runs} runs stored, "
                             f"no progress to extrapolate from yet ({how}); log: {_last_lines(text)}"}
        estimate = wall * total_epochs / epochs_done
        return {"value": estimate, "status": "partial",
                "notes": f"extrapolated: stopped at the allowance after {wall:.0f} s with {len(done)} of {total_runs} "
                         f"runs stored and {epochs_done} of {total_epochs} run-epochs done ({how}); "
                         f"{wall:.0f} s × {total_epochs}/{epochs_done} (compilation counted once, so an upper bound)"}


def make_data(root: Path, train_per_class: int, test_per_class: int) -> str:
    """The synthetic data set at `root` (MULREG_DATA): the image-folder layout's class folders, and
    the decoded arrays written where mulreg.core.data looks for its cache (MULREG_CACHE), so nothing is
    decoded; PNGs (what the image-folder layout reads) where that cache's name cannot be had."""
    import numpy as np

    from mulreg.core import data

    rng = np.random.default_rng(2024)

    def split(per_class: int):
        labels = np.repeat(np.array([3, 4]), per_class)  # cat, deer
        rng.shuffle(labels)
        base = 30 + 20 * labels[:, None, None, None] + rng.integers(-5, 6, size=(len(labels), 3, 1, 1))
        noise = rng.integers(-25, 26, size=(len(labels), 3, 32, 32))
        return np.clip(base + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)

    for part in ("train", "test"):
        for name in data.CLASSES:
            (root / part / name).mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = split(train_per_class), split(test_per_class)
    try:
        cache = data._cache_file(data.data_root(root))
        how = "written into mulreg.core.data's decoded cache"
    except AttributeError:  # mulreg.core.data changed: write what its image-folder reader reads
        cache, how = None, "written as PNGs (mulreg.core.data has no _cache_file)"
    if cache is not None:
        if not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
            os.replace(tmp, cache)
    elif not any((root / "train" / "cat").iterdir()):
        from PIL import Image

        for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            for i, (img, label) in enumerate(zip(x, y)):
                Image.fromarray(img.transpose(1, 2, 0)).save(root / part / data.CLASSES[label] / f"{i:05d}.png")
            for name in data.CLASSES:  # ImageFolder refuses an empty class folder
                if not any((root / part / name).iterdir()):
                    Image.fromarray(x[0].transpose(1, 2, 0)).save(root / part / name / "00000.png")
    train, test = data.load_cifar10(root, download=False)
    if (train.labels == 3).sum() != train_per_class or len(test.images) < 2 * test_per_class:
        raise RuntimeError(f"the synthetic data set reads back wrong: {len(train.images)} train, "
                           f"{len(test.images)} test images")
    return how


def environment(torch, device: str) -> dict:
    env: dict = {"python": platform.python_version(), "torch": torch.__version__,
                 "torch CUDA": torch.version.cuda, "cuda available": torch.cuda.is_available()}
    try:
        env["cuDNN"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception as err:  # noqa: BLE001
        env["cuDNN"] = f"unknown: {_oneline(err)}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env |= {"GPU": p.name, "GPUs": torch.cuda.device_count(),
                "compute capability": f"{p.major}.{p.minor}", "GPU memory GiB": round(p.total_memory / 2**30, 1),
                "driver": _driver()}
    for module in ("triton", "numpy", "pandas", "pydantic", "pydantic_core", "typing_extensions", "torchvision"):
        env[module] = _version(module)
    env["cpu cores"] = os.cpu_count()
    env["torch threads"] = torch.get_num_threads()
    try:
        from mulreg import provenance

        env["mulreg.provenance.environment"] = provenance.environment(device)
    except Exception as err:  # noqa: BLE001
        env["mulreg.provenance.environment"] = f"failed: {_oneline(err)}"
    try:
        from mulreg.core.devices import backend_settings

        env["mulreg.core.devices.backend_settings"] = backend_settings(torch.device(device))
    except Exception as err:  # noqa: BLE001
        env["mulreg.core.devices.backend_settings"] = f"failed: {_oneline(err)}"
    flags = {}
    for name in ("backends.cudnn.benchmark", "backends.cudnn.deterministic", "backends.cudnn.allow_tf32",
                 "backends.cuda.matmul.allow_tf32", "backends.cudnn.conv.fp32_precision",
                 "backends.cuda.matmul.fp32_precision", "backends.fp32_precision"):
        obj = torch
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
            flags[name] = obj
        except AttributeError:
            flags[name] = f"absent in torch {torch.__version__}"
    flags["get_float32_matmul_precision()"] = torch.get_float32_matmul_precision()
    env["torch flags after backend_settings"] = flags
    try:
        from mulreg.config import RunConfig

        env["RunConfig.memory_format"] = "memory_format" in RunConfig.model_fields
    except Exception as err:  # noqa: BLE001
        env["RunConfig.memory_format"] = f"failed: {_oneline(err)}"
    env["mulreg.engine.train reads memory_format"] = _engine_reads("memory_format")
    env["footprint/stack_size from"] = sizing()[2]
    return env


def sizing():
    """(footprint, stack_size, module name): from mulreg.engine.sizing (older checkouts: mulreg.engine.train)."""
    import importlib

    for name in ("mulreg.engine.sizing", "mulreg.engine.train"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "footprint") and hasattr(module, "stack_size"):
            return module.footprint, module.stack_size, name
    raise Skip("neither mulreg.engine.sizing nor mulreg.engine.train has footprint and stack_size")


def _engine_reads(field: str) -> bool:
    source = ""
    for name in ("train.py", "sizing.py"):
        path = ROOT / "lib/mulreg" / name
        source += path.read_text() if path.exists() else ""
    return field in source


def _eval_images() -> int:
    from mulreg.engine import train

    return getattr(train, "EVAL_IMAGES", "?")


def _counters(torch) -> dict:
    from torch._dynamo.utils import counters

    return counters


def _cudagraphs_recorded(torch):
    """CUDA graphs the cudagraph-tree manager of this device recorded (walks its trees)."""
    try:
        from torch._inductor import cudagraph_trees

        manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    except Exception as err:  # noqa: BLE001
        return f"unknown: torch {torch.__version__} lacks torch._inductor.cudagraph_trees.get_manager ({_oneline(err)})"
    if manager is None:
        return 0
    roots = getattr(manager, "roots", None)
    if roots is None:
        return f"unknown: the manager of torch {torch.__version__} has no roots"
    seen, todo = 0, [n for nodes in roots.values() for n in nodes]
    while todo:
        node = todo.pop()
        seen += 1
        todo += [c for nodes in getattr(node, "children", {}).values() for c in nodes]
    return seen


def _sweep_progress(text: str, store: Path, runs_done: int, spec) -> tuple[int, str]:
    """Run-epochs the killed sweep had done: from its `epochs` progress bar (one per stage), else from
    its checkpoints (every `checkpoint_every` epochs) and stored runs."""
    import re

    counts = [(int(a), int(b)) for a, b in re.findall(r"epochs:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)", text)]
    if counts:
        done, last = 0, (0, 0)
        for n, total in counts:
            if total != last[1] or n < last[0]:  # a new stage's bar
                done += last[0]
            last = (n, total)
        return done + last[0], "from the sweep's epoch bar"
    try:
        from mulreg.engine.store import Store

        st = Store(store)
        ckpt = st.checkpoints()
        epochs = sum(int((ckpt.load(k) or {}).get("epoch", 0)) for k in
                     [p.stem for p in (store / "checkpoints").glob("*.pt")])
        epochs += runs_done * spec.base.get("max_epochs", 0)
        return epochs, "from checkpoints and stored runs"
    except Exception as err:  # noqa: BLE001
        return 0, f"no progress readable: {_oneline(err)}"


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module.replace("_", "-"))
    except metadata.PackageNotFoundError:
        try:
            return metadata.version(module)
        except metadata.PackageNotFoundError:
            return None


def _is_oom(torch, err: Exception) -> bool:
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(torch.cuda, "OutOfMemoryError", None)) if k)
    return isinstance(err, kinds) or "out of memory" in str(err).lower()


def _oneline(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " / ".join(lines[-n:])[-500:]


def _jsonable(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="a dry run without CUDA: GPU rows say 'skipped: no CUDA', "
                   "the rest runs on the CPU")
    p.add_argument("--short", action="store_true", help="tiny sizes (CI; well under a minute on a 2-core CPU)")
    p.add_argument("--items", default="a,b,c,d,e,f", help="which items, comma-separated (default: %(default)s)")
    p.add_argument("--budget", type=float, help="seconds for everything (default 480; 180 with --short)")
    p.add_argument("--out", help="where gpu_check.json/.md go (default: $OUT, else /tmp/gpu_check_out)")
    p.add_argument("--work", help="scratch folder: data, cache, store (default: a new one under /tmp)")
    p.add_argument("--isolate", action="store_true", help="one worker process per item also on a CPU (always on CUDA)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    p.add_argument("--deadline", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 180.0 if args.short else 480.0
    if args.worker:
        Worker(args).run(args.items.split(","))
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
