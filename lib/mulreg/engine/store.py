"""The run store: one folder per run, named by the hash of its fully resolved config.

    results/runs/<key>/config.json     the RunConfig
                       history.parquet one row per epoch
                       metrics.json    final metrics and stop reason
                       weights.pt      the reported weights
                       margins.npy     test-set margins of the reported model
                       provenance.json commit, versions, device, times (`mulreg.provenance`)
                       test_correct.npz which test images each epoch classified right (bits)
    results/checkpoints/<key>.pt       training state of an unfinished run
    results/claims/<key>.lock          held (flock) while a process trains the run

A run folder is written under a temporary name, flushed to disk (files and folder) and renamed
into place, so it is either complete or absent, even after a power loss; checkpoints are written the
same way. Leftovers of killed processes (temporary folders, checkpoint temp files) are removed by
the next sweep (`clean`); a run folder that cannot be read is reported, left out of the runs table
and trained again. Checkpoints hold only tensors, numbers, strings, lists and dicts, and are loaded
with `weights_only=True`: a checkpoint cannot run code. Claims are advisory file locks, released by the
operating system when their process dies, so two sweeps on one store never train the same run and
a killed sweep leaves nothing locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from mulreg.config import PROJECT_ROOT, ConfigError, MulregError, RunConfig
from mulreg.engine.result import RunResult

PROVENANCE = "provenance.json"
TEST_CORRECT = "test_correct.npz"
RUN_FILES = ("config.json", "history.parquet", "weights.pt", "margins.npy", "metrics.json")


class CheckpointError(MulregError, RuntimeError):
    """A checkpoint file could not be loaded safely (corrupt, or holding arbitrary objects)."""


def writable_folder(path: Path, what: str) -> Path:
    """`path` as a writable folder (made if missing), or a ConfigError naming `what` and the path in
    the way: a file where a folder must be, or a folder that cannot be created or written."""
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            raise ConfigError(f"{what}: {part} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{what}: cannot create {path} ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{what}: {path} is not writable")
    return path


class Store:
    def __init__(self, root: str | os.PathLike | None = None, checkpoint_every: int = 10, create: bool = True):
        """The store at `root`; with `create` (writers: sweeps) its folders are made and must be
        writable, without (readers: `mulreg runs`) nothing is created or written, so an archived,
        read-only store can be listed and a folder that is no store is left as it is."""
        self.root = Path(root or os.environ.get("MULREG_RESULTS") or PROJECT_ROOT / "results")
        self.every = checkpoint_every
        self._readable: set[str] = set()  # keys whose folder was read successfully
        for sub in ("runs", "checkpoints", "claims") if create else ():
            writable_folder(self.root / sub, f"store {self.root}")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def run_dir(self, key: str) -> Path:
        return self.root / "runs" / key

    def is_complete(self, key: str) -> bool:
        """The run is stored and its folder can be read (an unreadable one counts as missing)."""
        if key in self._readable:
            return True
        d = self.run_dir(key)
        if not _stored(d) or _broken(d):
            return False
        self._readable.add(key)
        return True

    def unreadable(self) -> dict[str, str]:
        """Run folders that exist but cannot be read: key → what is wrong."""
        out = {}
        for k in self.keys():
            problem = _broken(self.run_dir(k))
            if problem:
                out[k] = problem
        return out

    def clean(self) -> list[Path]:
        """Remove what killed processes left behind: temporary run folders and checkpoint temp
        files whose run no live process holds (its claim is free). Returns what was removed."""
        removed = self._set_aside_dangling()
        leftovers = [(p, p.name[1:].split("-")[0]) for p in (self.root / "runs").glob(".*-*")
                     if not p.name.startswith(".broken")]  # mkdtemp's ".<key>-<random>"
        leftovers += [(p, p.name.split(".")[0]) for p in (self.root / "checkpoints").glob("*.tmp*")]
        for path, key in leftovers:
            with self.claim([key], only_incomplete=False) as free:
                if key in free:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def _set_aside_dangling(self) -> list[Path]:
        """Run folders that are links to nothing: renamed `.broken-<key>-<time>` (a run cannot be stored
        over one, so it would be trained again by every sweep), each said in one line."""
        aside = []
        for link in [p for p in (self.root / "runs").iterdir()
                     if p.is_symlink() and not p.exists() and not p.name.startswith(".")]:
            target = link.with_name(f".broken-{link.name}-{int(time.time())}")
            link.rename(target)
            print(f"run folder {link} is a link to {os.readlink(target)}, which does not exist: set aside as "
                  f"{target.name}; the run is trained again and stored in its place", file=sys.stderr, flush=True)
            aside.append(target)
        return aside

    # ---- finished runs
    def save(self, result: RunResult) -> None:
        """Write a finished run atomically and drop its checkpoint."""
        key = result.config.key()
        with _writing(f"run {key}", self.root / "runs") as tmp:
            tmp.mkdir(mode=0o777)  # as the umask allows, like every other folder (mkdtemp's would be 700)
            (tmp / "config.json").write_text(result.config.model_dump_json(indent=1))
            result.history.to_parquet(tmp / "history.parquet")
            torch.save(result.state_dict, tmp / "weights.pt")
            np.save(tmp / "margins.npy", result.test_margins)
            metrics = {"stop_reason": result.stop_reason, **_plain(result.metrics)}
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
            (tmp / PROVENANCE).write_text(json.dumps(result.provenance, indent=1))
            if result.test_correct is not None:
                right = np.asarray(result.test_correct, dtype=bool)
                np.savez_compressed(tmp / TEST_CORRECT, bits=np.packbits(right, axis=1), n=right.shape[1])
            _fsync_folder(tmp)
        target = self.run_dir(key)
        if target.exists() and _broken(target):  # an unreadable earlier copy: keep it aside, store this one
            aside = self.root / "runs" / f".broken-{key}-{int(time.time())}"
            problem = _broken(target)
            target.rename(aside)
            print(f"run folder {target} could not be read ({problem}): set aside as {aside.name}, the run just "
                  "trained stored in its place", file=sys.stderr, flush=True)
        try:
            os.rename(tmp, target)
        except OSError:  # already stored by someone else: keep theirs
            shutil.rmtree(tmp)
        _fsync_folder(self.root / "runs", files=False)
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
            self.test_correct(key),
        )

    def test_correct(self, key: str) -> np.ndarray | None:
        """Epochs × test images, bool: which images the run classified right at each epoch (None
        for runs stored before this was recorded)."""
        path = self.run_dir(key) / TEST_CORRECT
        if not path.exists():
            return None
        with np.load(path) as f:
            return np.unpackbits(f["bits"], axis=1, count=int(f["n"])).astype(bool)

    def keys(self) -> list[str]:
        runs = self.root / "runs"
        return sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) if runs.is_dir() else []

    def load_runs(self, keys: list[str] | None = None, histories: bool = False):
        """One row per complete run: config columns (nested ones dotted), final metrics, stop
        reason and key. With `histories`, also a long table of all epochs, keyed by `key`."""
        readable = []
        for k in self.keys() if keys is None else keys:
            if self.is_complete(k):
                readable.append(k)
            elif _stored(self.run_dir(k)):
                warnings.warn(f"run {k} at {self.run_dir(k)} cannot be read ({_broken(self.run_dir(k))}); left out, "
                              "and trained again by the next sweep", stacklevel=2)
        rows = []
        for k in readable:
            d = self.run_dir(k)
            config = pd.json_normalize(json.loads((d / "config.json").read_text())).iloc[0].to_dict()
            rows.append({"key": k, **config, **json.loads((d / "metrics.json").read_text()), **_provenance(d)})
        table = pd.DataFrame(rows)
        return (table, self.load_histories(readable)) if histories else table

    def load_histories(self, keys: list[str]) -> pd.DataFrame:
        """All epochs of the runs `keys`, one long table keyed by `key`."""
        hist = [pd.read_parquet(self.run_dir(k) / "history.parquet").assign(key=k) for k in keys]
        return pd.concat(hist, ignore_index=True) if hist else pd.DataFrame()

    # ---- checkpoints (the `result.Checkpoints` protocol)
    def checkpoint_path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key}.pt"

    def checkpoints(self, every: int | None = None) -> _Checkpoints:
        return _Checkpoints(self, every or self.every)

    # ---- claims
    @contextlib.contextmanager
    def claim(self, keys: list[str], only_incomplete: bool = True):
        """Lock as many of `keys` as are free; yields the claimed ones (those not yet stored, unless
        `only_incomplete` is False), releases them on exit."""
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
            yield [k for k, _ in held if not (only_incomplete and self.is_complete(k))]
        finally:
            for _, f in held:
                f.close()


    def is_claimed(self, key: str) -> bool:
        """Another process holds `key`'s lock (it is training that run now)."""
        lock = self.root / "claims" / f"{key}.lock"
        if not lock.exists():
            return False
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False


class _Checkpoints:
    def __init__(self, store: Store, every: int):
        self.store, self.every = store, every

    def load(self, key: str) -> dict | None:
        """The run's last checkpoint, or None. One that would run code is refused; a damaged one
        (empty, truncated) is set aside (`.broken-<key>-<time>.pt`) and the run starts again."""
        path = self.store.checkpoint_path(key)
        if not path.exists():
            return None
        try:
            return torch.load(path, weights_only=True)
        except pickle.UnpicklingError as err:
            if "weights only" not in str(err).lower():
                return self._set_aside(path, err)
            raise CheckpointError(f"checkpoint {path} was refused: it holds objects other than tensors, numbers, "
                                  f"strings, lists and dicts ({_first_line(err)}). Delete it to train the "
                                  "run from the start.") from None
        except Exception as err:  # noqa: BLE001 - torch reports damage as RuntimeError, IndexError, EOFError, ...
            return self._set_aside(path, err)

    def epoch(self, key: str) -> int:
        """The epochs the run's last checkpoint holds: what a resumed run has done. 0 without one, or with
        one that cannot be read (read-only: the process that resumes the run refuses or sets it aside)."""
        path = self.store.checkpoint_path(key)
        try:
            return int(torch.load(path, weights_only=True, mmap=True)["epoch"]) if path.exists() else 0
        except Exception:  # noqa: BLE001 - damage or a refused object: said where the run resumes, not here
            return 0

    @staticmethod
    def _set_aside(path: Path, err: BaseException) -> None:
        aside = path.with_name(f".broken-{path.stem}-{int(time.time())}.pt")
        with contextlib.suppress(OSError):
            path.rename(aside)
        print(f"checkpoint {path} cannot be read ({_first_line(err)}); set aside as {aside.name}, the run "
              "starts again", file=sys.stderr, flush=True)
        return None

    def save(self, key: str, state: dict) -> None:
        path = self.store.checkpoint_path(key)
        with _writing(f"the checkpoint of run {key}", path.parent, path.with_suffix(f".tmp{os.getpid()}")) as tmp:
            torch.save(state, tmp)
            _fsync(tmp)
            os.replace(tmp, path)


def _stored(run_dir: Path) -> bool:
    """The run's folder holds its metrics, or this user may not look (then it is stored, unreadable)."""
    try:
        return (run_dir / "metrics.json").exists()
    except PermissionError:
        return True


def _broken(run_dir: Path) -> str | None:
    """What makes a run folder unreadable, or None: a folder or file this user may not read, a missing or
    damaged file (each file of the run is opened as its reader would: JSON, parquet footer, zip directory,
    npy header and size), or a config whose key is not the folder's name (edited by hand: its numbers
    belong to another run)."""
    try:
        return _broken_file(run_dir)
    except PermissionError as err:
        return (f"permission denied on {err.filename}: this user ({_user()}) needs read access to the run folder "
                f"and its files (owner: {_owner(run_dir)})")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _owner(path: Path) -> str:
    try:
        return path.owner()
    except (KeyError, OSError):
        return "unknown"


def _broken_file(run_dir: Path) -> str | None:
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            return f"{name} missing"
    for name in ("config.json", "metrics.json", PROVENANCE):
        try:
            if name == PROVENANCE and not (run_dir / name).exists():
                continue  # runs stored before provenance was recorded
            value = json.loads((run_dir / name).read_text())
        except PermissionError:
            raise
        except (ValueError, OSError) as err:
            return f"{name} is not valid JSON: {err}"
        if not isinstance(value, dict) or (name == "metrics.json" and "stop_reason" not in value):
            return f"{name} is not what a run stores (a mapping{' with stop_reason' * (name == 'metrics.json')})"
    try:
        key = RunConfig.parse(json.loads((run_dir / "config.json").read_text())).key()
    except ConfigError as err:
        return f"config.json is not a valid run config: {str(err).splitlines()[-1].strip()}"
    if key != run_dir.name:
        return f"config.json is the config of run {key}, not of {run_dir.name} (edited after the run was stored?)"
    return _damaged_file(run_dir)


def _damaged_file(run_dir: Path) -> str | None:
    """The first of a run's binary files that its reader would refuse, with why."""
    readers = {"history.parquet": lambda p: pq.read_metadata(p), "weights.pt": _zip_directory,
               TEST_CORRECT: _zip_directory, "margins.npy": lambda p: np.load(p, mmap_mode="r")}
    for name, read in readers.items():
        path = run_dir / name
        if name == TEST_CORRECT and not path.exists():
            continue  # runs stored before it was recorded
        try:
            if path.stat().st_size == 0:
                return f"{name} is empty"
            read(path)
        except PermissionError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to read it means the same: damaged
            return f"{name} cannot be read ({_first_line(err)})"
    return None


def _zip_directory(path: Path) -> None:
    """torch.save and np.savez files are zip archives: a truncated one has no central directory."""
    with zipfile.ZipFile(path) as z:
        z.namelist()


class StoreWriteError(MulregError, OSError):
    """A run or checkpoint could not be written (a full disk, say); its temporary file is removed."""


@contextlib.contextmanager
def _writing(what: str, folder: Path, tmp: Path | None = None):
    """Yields a temporary path in `folder` (default: a new hidden one) to write `what` into; on failure
    the temporary path is removed and one error names `what`, the folder and the cause."""
    tmp = tmp or folder / f".{what.split()[-1]}-{os.getpid()}-{time.time_ns()}"
    try:
        yield tmp
    except (OSError, RuntimeError) as err:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        cause = err.strerror if isinstance(err, OSError) and err.strerror else _first_line(err)
        raise StoreWriteError(f"cannot write {what} in {folder} ({cause}); free space there and rerun: "
                              "finished runs are kept") from None


def _first_line(err: BaseException) -> str:
    """The error's kind and the first line of its message (some have none: an empty file's EOFError)."""
    text = str(err).strip()
    return type(err).__name__ + (f": {text.splitlines()[0][:200]}" if text else "")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path, files: bool = True) -> None:
    """Flush every file of `folder` (with `files`) and the folder's own entries to disk."""
    if files:
        for f in folder.iterdir():
            _fsync(f)
    _fsync(folder)


def _provenance(run_dir: Path) -> dict:
    """A run's provenance; empty for runs stored before it was recorded."""
    path = run_dir / PROVENANCE
    return json.loads(path.read_text()) if path.exists() else {}


def _plain(metrics: dict) -> dict:
    """JSON-ready: numpy scalars to Python numbers."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
