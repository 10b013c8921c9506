"""Where a number came from: code version, libraries and device, recorded with every run.

`environment(device)` is what a run stores in `provenance.json` beside its metrics (and the runs
table carries as columns); `caption(profile)` is the one line every saved figure carries.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from . import __version__
from .config import PROJECT_ROOT

TIMES = ("started", "finished", "wall_seconds", "train_images_per_second")  # differ between two trainings of a run


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the code runs from; (None, None) outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name (and core count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def environment(device: torch.device | str) -> dict:
    """Versions and device of this process: mulreg, git commit and dirty flag, Python, torch,
    CUDA and cuDNN (None without them), and the device's name."""
    commit, dirty = git_state()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"mulreg_version": __version__, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": cudnn, "device_name": device_name(device)}


def timestamp(seconds: float | None = None) -> str:
    """ISO 8601 local time with offset, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def caption(profile: str) -> str:
    """One line for a saved figure: profile, commit (+ if the tree was dirty) and date."""
    commit, dirty = git_state()
    code = "no git checkout" if commit is None else f"commit {commit[:10]}{'+' if dirty else ''}"
    return f"mulreg {__version__} · profile {profile} · {code} · {time.strftime('%Y-%m-%d')}"


PREREGISTRATION = "docs/PREREGISTRATION.md"


def git_commit() -> str | None:
    return git_state()[0]


@functools.lru_cache(maxsize=1)
def prereg_commit() -> str | None:
    """The commit that last changed docs/PREREGISTRATION.md (None outside a git checkout), which
    every report prints: the pre-registration a verdict was judged under."""
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "log", "-1", "--format=%H %cI", "--", PREREGISTRATION],
                             capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None
