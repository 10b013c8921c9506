"""Where a number came from: code version, libraries and device, recorded with every run.

`environment(device)` is what a run stores in `provenance.json` beside its metrics (and the runs
table carries as columns); `caption(profile)` is the one line every saved figure carries.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mulreg import __version__
from mulreg.config import PROJECT_ROOT

# when the run's first process began it, then this process's share of the run
TIMES = ("first_started", "started", "finished", "wall_seconds", "train_images_per_second")
MEASURED = (*TIMES, "matmul_gflops")  # measured, not set: they differ between two trainings of one run
PROBE_SIZE = 1024  # n of the n×n float32 matrix product that probes the host's speed
PROBE_REPEATS = 5  # timed products after one warm-up; their median counts


NOT_CODE = ":(exclude)record"  # results of record: a sweep run with --record changes them, not the code


@functools.lru_cache(maxsize=1)
def git_state(root: Path = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at `root`, the one the code runs from; (None, None) outside a
    git checkout. Dirty means a tracked file differs from the commit, `record/` aside (`NOT_CODE`)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", NOT_CODE))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The host CPU's model name (this workplace's hosts vary between Intel and AMD)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name (and core count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores)"


@functools.lru_cache(maxsize=8)
def matmul_gflops(device: torch.device | str, threads: int | None = None) -> float:
    """GFLOP/s of an n×n float32 matrix product on `device` (on a CPU with this process's threads,
    which `threads` names only to key the cache): a probe of the host's speed recorded beside every
    timing, so numbers from hosts that differ (≈ 1.7× here) can be compared as fractions of it."""
    device = torch.device(device)
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, device=device)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE, device=device)
    times = []
    for _ in range(PROBE_REPEATS + 1):
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * PROBE_SIZE**3 / statistics.median(times[1:]) / 1e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device | str) -> dict:
    """Versions and device of this process: mulreg, git commit and dirty flag, Python, torch,
    CUDA and cuDNN (None without them), the device a run got and its name, the host's CPU model,
    and the host's matrix-product speed on that device with this process's threads."""
    device = torch.device(device)
    commit, dirty = git_state()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    threads = torch.get_num_threads()
    return {"mulreg_version": __version__, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": cudnn, "device_used": device.type, "device_name": device_name(device), "cpu_model": cpu_model(),
            "threads": threads, "matmul_gflops": round(matmul_gflops(device, threads), 1)}


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # `timestamp`'s


def timestamp(seconds: float | None = None) -> str:
    """ISO 8601 local time with offset, to the second."""
    return time.strftime(TIME_FORMAT, time.localtime(seconds))


def caption(profile: str) -> str:
    """One line for a saved figure: profile, commit (+ if the tree was dirty) and date."""
    commit, dirty = git_state()
    code = "no git checkout" if commit is None else f"commit {commit[:10]}{'+' if dirty else ''}"
    return f"mulreg {__version__} · profile {profile} · {code} · {time.strftime('%Y-%m-%d')}"


PREREGISTRATION = "docs/PREREGISTRATION.md"


def git_commit() -> str | None:
    return git_state()[0]


@functools.lru_cache(maxsize=None)
def prereg_commit(document: str | None = None) -> str | None:
    """The commit that last changed `document` (default docs/PREREGISTRATION.md; None outside a git
    checkout), which every report prints: the pre-registration a verdict was judged under."""
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "log", "-1", "--format=%H %cI", "--",
                              document or PREREGISTRATION],
                             capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


@functools.lru_cache(maxsize=None)
def registration_commit(document: str) -> str | None:
    """'<hash> <ISO time>' of the commit that added `document`: when it was registered (later
    commits can only add dated notes); None outside a git checkout or before it is committed."""
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "log", "--diff-filter=A", "--format=%H %cI", "--",
                              document], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[-1] if out else None


def first_start(runs: pd.DataFrame) -> pd.Timestamp:
    """When the first of `runs` began training: each run's first process (`first_started`) where its
    provenance has it, else the process that finished it (`started`: later, for a run resumed from a
    checkpoint)."""
    started = runs["started"]
    if "first_started" in runs:
        started = runs["first_started"].fillna(started)
    return pd.to_datetime(started, format=TIME_FORMAT, utc=True).min()


def registered_before(runs: pd.DataFrame, document: str) -> str:
    """Whether `document` was registered (the commit that added it) before the first of `runs`
    started training, in words, with both times (the runs' `started` provenance): what a
    pre-registration has to show."""
    found = registration_commit(document)
    if found is None:
        return f"{document}: no commit found (not a git checkout, or never committed): nothing to check."
    if not len(runs):
        return f"{document}: registered {found.split()[1]} ({found.split()[0][:10]}); none of its runs is stored yet."
    committed = pd.Timestamp(found.split()[1])
    first = first_start(runs)
    order = "before" if committed <= first else "AFTER"
    return (f"{document}: registered (committed) {committed.isoformat()} ({found.split()[0][:10]}), {order} the "
            f"first of its {len(runs)} runs started training ({first.isoformat()}).")


def wall_time(runs: pd.DataFrame, name: str) -> str:
    """How long stage `name` took, in words, from its runs' provenance: first start to last finish
    (pauses and other work on the host included), the hosts, and the run-hours the runs' own processes
    measured (`wall_seconds`: a run resumed from a checkpoint counts its last process only)."""
    if not len(runs) or "started" not in runs:
        return f"{name}: no runs with provenance"
    started = first_start(runs)
    finished = pd.to_datetime(runs["finished"], format=TIME_FORMAT, utc=True).max()
    hours = (finished - started).total_seconds() / 3600
    hosts = ", ".join(sorted(set(runs["cpu_model"].dropna()))) or "host not recorded"
    return (f"{name}: {len(runs)} runs, {started:%Y-%m-%d %H:%M} to {finished:%Y-%m-%d %H:%M} UTC, {hours:.1f} h "
            f"elapsed on {hosts}; {runs['wall_seconds'].sum() / 3600:.1f} run-hours measured by the runs")


# What decides a run's numbers besides its config and device: the modules that train (not those that
# record, report or draw: provenance, progress, results/, report/, tools/) and the locked libraries.
TRAINING_CODE = ("lib/mulreg/core", "lib/mulreg/engine", "lib/mulreg/config.py", "lib/mulreg/protocols.py",
                 "lib/mulreg/__init__.py", "requirements.lock")
CODE_DIFFERS = "training code differs (or is unknown): numbers may not be comparable"


def same_training_code(commits: list[str]) -> bool:
    """Whether every one of `commits` holds the same `TRAINING_CODE` (False where git cannot tell:
    no checkout, or a commit it does not have)."""
    first, *rest = commits
    for other in rest:
        try:
            subprocess.run(["git", "-C", str(PROJECT_ROOT), "diff", "--quiet", first, other, "--", *TRAINING_CODE],
                           capture_output=True, check=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
    return True


def provenance_note(runs: pd.DataFrame) -> str:
    """Which commit(s) and device(s) produced `runs`: a warning when commits whose training code
    differs (or is unknown) produced them; a note when only commits outside it, or devices, differ."""
    missing = pd.Series(np.nan, index=runs.index, dtype=object)
    dirty = runs.get("git_dirty", missing).fillna(False).astype(bool)
    commits = sorted({"not recorded" if pd.isna(c) else c[:10] + "+" * d
                      for c, d in zip(runs.get("git_commit", missing), dirty)})
    devices = sorted({"not recorded" if pd.isna(v) else v for v in runs.get("device_name", missing)})
    legend = " (+: uncommitted changes)" if any(c.endswith("+") for c in commits) else ""
    finished = runs.get("finished", missing).dropna().astype(str).str[:10]
    dates = "dates not recorded" if finished.empty else (
        f"trained {finished.min()}" if finished.min() == finished.max()
        else f"trained {finished.min()} to {finished.max()}")
    n = f"{len(runs)} run{'s' * (len(runs) != 1)}"
    text = (f"{n}, produced by commit {', '.join(commits)} on {', '.join(devices)}{legend}, {dates}; "
            f"this report executed {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    code_changed = len(commits) > 1 and ("not recorded" in commits or bool(legend)
                                         or not same_training_code(sorted(runs["git_commit"].unique())))
    if code_changed:
        return f"WARNING: these runs come from commits whose {CODE_DIFFERS}. {text}"
    if len(commits) > 1:
        text += f" The commits hold the same {', '.join(TRAINING_CODE)}: the code that trained is unchanged."
    if len(devices) > 1:
        text += " More than one device: a run's numbers are reproducible on the device its provenance names."
    return text
