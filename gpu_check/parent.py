"""The parent: starts worker processes, reads the rows they append to an events file, kills a worker's
process group when its unit overruns the allowance, and keeps the report (no torch here).

Rows that did not come are reported "skipped: <why>" and a fresh worker carries on with the next
unit. On CUDA every unit gets its own worker (a crashed kernel or a poisoned CUDA context costs one
unit); on a CPU one worker does them all (cheaper to start). Workers share one compile cache
(inductor's and Triton's, under --cache) so that later calls on a warm machine compile less; a
worker killed mid-compile can leave a cut-off library there (`ImportError: ... file too short` in
every later compiled row), so after a kill that cache is thrown away and the next worker starts a
fresh one. A worker that cannot start CUDA (without --cpu) ends the whole check at once: exit 3."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_check.plan import ROOT, plan, units_for
from gpu_check.report import Report
from gpu_check.text import stamp, tail

LOG_MOST = 8 * 2**20  # bytes of gpu_check.log kept (its end)
GRACE_S = 5  # a worker may overrun a unit's allowance by this much before it is killed
RESERVE_S = 4  # kept at the end of the budget for writing the results
NO_CUDA_EXIT = 3
NOTHING_MEASURED_EXIT = 4  # every row skipped or failed: a check that measured nothing is no pass


@dataclass
class Watch:
    """What the parent knows of the worker it follows."""

    current: str | None = None  # the unit it measures
    started: float = 0.0
    allowance: float = 0.0
    seen: int = 0  # events read
    progressed: bool = False  # it finished a unit


class Parent:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out or os.environ.get("OUT") or Path(tempfile.gettempdir()) / "gpu_check_out").resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="mulreg-gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.cache = Path(args.cache or Path(tempfile.gettempdir()) / "mulreg-gpu-check-cache").resolve()
        self.units = units_for([i for i in args.items.split(",") if i])
        self.deadline = time.time() + args.budget - RESERVE_S
        self.report = Report(self.out, args, "cpu" if args.cpu else "cuda (if available)")
        self.log_path = self.out / "gpu_check.log"
        self.log = None
        self.planned: set[str] = set()  # units whose rows are in the table
        self.todo = list(self.units)
        self.workers = self.kills = 0
        self.fatal: str | None = None

    # ---- the compile cache
    def cache_dir(self) -> Path:
        return self.cache / "current"

    def worker_env(self) -> dict:
        """The environment of a worker: its compile caches in cache_dir()."""
        here = self.cache_dir()
        here.mkdir(parents=True, exist_ok=True)
        return os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(here / "inductor"),
                             "TRITON_CACHE_DIR": str(here / "triton")}

    def discard_cache(self) -> None:
        """Move the cache a killed worker wrote to aside (a straggler then writes there) and delete it."""
        here = self.cache_dir()
        if here.exists():
            self.kills += 1
            aside = self.cache / f"killed-{os.getpid()}-{self.kills}"
            os.replace(here, aside)
            shutil.rmtree(aside, ignore_errors=True)

    # ---- workers
    def spawn(self, cmd: list[str]) -> subprocess.Popen:
        """A worker in a session of its own (so that it and what it starts can be killed together)."""
        self.log.write(f"\n=== {stamp(time.time())} worker {self.workers} for {self.todo}\n")
        self.log.flush()
        return subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                                env=self.worker_env())

    def kill(self, proc: subprocess.Popen) -> None:
        kill_group(proc)
        self.discard_cache()

    def command(self, events: Path) -> list[str]:
        a = self.args
        return ([sys.executable, "-m", "gpu_check", "--worker", "--items", ",".join(self.todo), "--work",
                 str(self.work), "--events", str(events), "--deadline", str(self.deadline)]
                + ["--cpu"] * a.cpu + ["--short"] * a.short + ["--isolate"] * a.isolate)

    def run(self) -> int:
        self.report.write()
        with open(self.log_path, "a") as self.log:
            while self.todo and self.deadline - time.time() >= 3 and not self.fatal:
                self.one_worker()
            self.finish()
        if self.fatal:
            print(f"gpu_check: CUDA did not start: {self.fatal} (no rows measured; --cpu for a dry run without CUDA)",
                  file=sys.stderr)
            return NO_CUDA_EXIT
        if not any(r["value"] is not None for r in self.report.rows):
            print(f"gpu_check: no row was measured (every one skipped or failed); see {self.log_path}",
                  file=sys.stderr)
            return NOTHING_MEASURED_EXIT
        return 0

    def one_worker(self) -> None:
        events = self.work / f"events-{os.getpid()}-{self.workers}.jsonl"
        self.workers += 1
        proc = self.spawn(self.command(events))
        watch = Watch(started=time.time())
        rc = self.follow(proc, events, watch)
        if self.fatal:
            self.stop_all(f"skipped: CUDA did not start: {self.fatal}")
        elif watch.current is not None or rc != 0 or not watch.progressed:
            self.lost(rc, watch)

    def follow(self, proc: subprocess.Popen, events: Path, watch: Watch):
        """Read the worker's events until it exits (its exit code) or overruns ("killed")."""
        while True:
            rc = proc.poll()
            lines = events.read_text().splitlines() if events.exists() else []
            for line in lines[watch.seen:]:
                try:
                    ev = json.loads(line)
                except ValueError:
                    break  # a line still being written: read it next time
                watch.seen += 1
                self.on_event(ev, watch)
                self.report.write()
            if rc is not None:
                return rc
            overrun = watch.current is not None and time.time() - watch.started > watch.allowance + GRACE_S
            if overrun or time.time() > self.deadline + GRACE_S:
                self.kill(proc)
                return "killed"
            time.sleep(0.5)

    def on_event(self, ev: dict, watch: Watch) -> None:
        kind = ev["event"]
        if kind == "env":
            self.on_env(ev)
        elif kind == "start":
            watch.current, watch.started, watch.allowance = ev["unit"], time.time(), ev["allowance_s"]
            self.report.units[watch.current] = {"state": "running", "allowance_s": round(watch.allowance)}
        elif kind == "row":
            self.report.put(ev["row"])
        elif kind == "done":
            self.report.settle(ev["unit"], "skipped: not reached")
            self.report.units[ev["unit"]] |= {"state": "done", "seconds": round(time.time() - watch.started, 1)}
            self.todo.remove(ev["unit"])
            watch.current, watch.progressed = None, True
        elif kind == "fatal":
            self.fatal = ev["why"]
            self.report.environment = ev.get("env", {})
            self.report.device = f"none: CUDA did not start ({ev['why']})"

    def on_env(self, ev: dict) -> None:
        """The worker's device is known: plan the table (on a CPU: the GPU rows, skipped, then the CPU's)."""
        self.report.environment = ev["env"]
        cuda = ev["device"] == "cuda"
        self.report.device = ev["device"] + ("" if cuda else f" ({ev['why_not_cuda']})")
        for unit in self.units:
            if unit in self.planned or unit == "env":
                continue
            self.planned.add(unit)
            self.report.set_plan(plan(unit, "cuda", self.args.short), unit)
            if not cuda:
                self.report.settle(unit, "skipped: no CUDA")
                self.report.set_plan(plan(unit, "cpu", self.args.short), unit)

    def lost(self, rc, watch: Watch) -> None:
        """The worker was killed or died inside a unit (or before its first): that unit is skipped."""
        unit = watch.current or self.todo[0]
        why = (f"skipped: timeout (item allowance {watch.allowance:.0f} s spent)" if rc == "killed" and watch.current
               else "skipped: total budget spent" if rc == "killed"
               else f"skipped: worker died (exit {rc}): {tail(self.log_path)}")
        if unit not in self.planned:  # the worker died before it said which device it has
            self.report.whole(unit, why)
            self.planned.add(unit)
        self.report.settle(unit, why)
        self.report.units[unit] = self.report.units.get(unit, {}) | {
            "state": "killed" if rc == "killed" else "died", "seconds": round(time.time() - watch.started, 1)}
        self.todo.remove(unit)
        if unit == "env":  # no worker gets further than this one did: say so for every unit
            self.report.environment = {"failed": why}
            self.stop_all(why)
        self.report.write()

    def stop_all(self, why: str) -> None:
        for unit in self.todo:
            if unit not in self.planned:
                self.report.whole(unit, why)
                self.planned.add(unit)
            self.report.units[unit] = {"state": "not started"}
        self.report.settle_all(why)
        self.todo = []

    def finish(self) -> None:
        for unit in self.todo:
            if unit not in self.planned:
                self.report.whole(unit, "pending")
            self.report.settle(unit, f"skipped: total budget ({self.args.budget:.0f} s) spent")
            self.report.units[unit] = {"state": "not started"}
        self.report.write()
        self.log.flush()
        if self.log_path.stat().st_size > LOG_MOST:  # what comes back from the device is limited in size
            with open(self.log_path, "rb") as f:
                f.seek(-LOG_MOST, os.SEEK_END)
                cut = f.read()
            self.log_path.write_bytes(b"[... earlier lines cut ...]\n" + cut)
        print((self.out / "gpu_check.md").read_text())


def kill_group(proc: subprocess.Popen) -> None:
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

