"""The run store: one folder per run, named by the hash of its fully resolved config.

    results/runs/<key>/config.json     the RunConfig
                       history.parquet one row per epoch
                       metrics.json    final metrics and stop reason
                       weights.pt      the reported weights
                       margins.npy     test-set margins of the reported model
                       provenance.json commit, versions, device, times (`mulreg.provenance`)
    results/checkpoints/<key>.pt       training state of an unfinished run
    results/claims/<key>.lock          held (flock) while a process trains the run

A run folder is written under a temporary name and renamed into place, so it is either complete or
absent; checkpoints are written the same way. Claims are advisory file locks, released by the
operating system when their process dies, so two sweeps on one store never train the same run and
a killed sweep leaves nothing locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import RunConfig
from .data import PROJECT_ROOT
from .train import RunResult

PROVENANCE = "provenance.json"


class Store:
    def __init__(self, root: str | os.PathLike | None = None, checkpoint_every: int = 10):
        self.root = Path(root or os.environ.get("MULREG_RESULTS") or PROJECT_ROOT / "results")
        self.every = checkpoint_every
        for sub in ("runs", "checkpoints", "claims"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def run_dir(self, key: str) -> Path:
        return self.root / "runs" / key

    def is_complete(self, key: str) -> bool:
        return (self.run_dir(key) / "metrics.json").exists()

    # ---- finished runs
    def save(self, result: RunResult) -> None:
        """Write a finished run atomically and drop its checkpoint."""
        key = result.config.key()
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root / "runs"))
        (tmp / "config.json").write_text(result.config.model_dump_json(indent=1))
        result.history.to_parquet(tmp / "history.parquet")
        torch.save(result.state_dict, tmp / "weights.pt")
        np.save(tmp / "margins.npy", result.test_margins)
        metrics = {"stop_reason": result.stop_reason, **_plain(result.metrics)}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (tmp / PROVENANCE).write_text(json.dumps(result.provenance, indent=1))
        try:
            os.rename(tmp, self.run_dir(key))
        except OSError:  # already stored by someone else: keep theirs
            shutil.rmtree(tmp)
        self.checkpoint_path(key).unlink(missing_ok=True)

    def load(self, key: str) -> RunResult:
        d = self.run_dir(key)
        metrics = json.loads((d / "metrics.json").read_text())
        return RunResult(
            RunConfig.parse(json.loads((d / "config.json").read_text())),
            pd.read_parquet(d / "history.parquet"),
            metrics,
            metrics.pop("stop_reason"),
            torch.load(d / "weights.pt", weights_only=True),
            np.load(d / "margins.npy"),
            _provenance(d),
        )

    def keys(self) -> list[str]:
        return sorted(p.name for p in (self.root / "runs").iterdir() if not p.name.startswith("."))

    def load_runs(self, keys: list[str] | None = None, histories: bool = False):
        """One row per complete run: config columns (nested ones dotted), final metrics, stop
        reason and key. With `histories`, also a long table of all epochs, keyed by `key`."""
        keys = [k for k in (self.keys() if keys is None else keys) if self.is_complete(k)]
        rows = []
        for k in keys:
            d = self.run_dir(k)
            config = pd.json_normalize(json.loads((d / "config.json").read_text())).iloc[0].to_dict()
            rows.append({"key": k, **config, **json.loads((d / "metrics.json").read_text()), **_provenance(d)})
        table = pd.DataFrame(rows)
        return (table, self.load_histories(keys)) if histories else table

    def load_histories(self, keys: list[str]) -> pd.DataFrame:
        """All epochs of the runs `keys`, one long table keyed by `key`."""
        hist = [pd.read_parquet(self.run_dir(k) / "history.parquet").assign(key=k) for k in keys]
        return pd.concat(hist, ignore_index=True) if hist else pd.DataFrame()

    # ---- checkpoints (the `train.Checkpoints` protocol)
    def checkpoint_path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key}.pt"

    def checkpoints(self, every: int | None = None) -> _Checkpoints:
        return _Checkpoints(self, every or self.every)

    # ---- claims
    @contextlib.contextmanager
    def claim(self, keys: list[str]):
        """Lock as many of `keys` as are free; yields the claimed ones, releases them on exit."""
        held = []
        try:
            for k in keys:
                f = open(self.root / "claims" / f"{k}.lock", "w")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                held.append((k, f))
            yield [k for k, _ in held if not self.is_complete(k)]
        finally:
            for _, f in held:
                f.close()


class _Checkpoints:
    def __init__(self, store: Store, every: int):
        self.store, self.every = store, every

    def load(self, key: str) -> dict | None:
        path = self.store.checkpoint_path(key)
        return torch.load(path, weights_only=False) if path.exists() else None

    def save(self, key: str, state: dict) -> None:
        path = self.store.checkpoint_path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)


def _provenance(run_dir: Path) -> dict:
    """A run's provenance; empty for runs stored before it was recorded."""
    path = run_dir / PROVENANCE
    return json.loads(path.read_text()) if path.exists() else {}


def _plain(metrics: dict) -> dict:
    """JSON-ready: numpy scalars to Python numbers."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
