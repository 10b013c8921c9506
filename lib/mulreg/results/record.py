"""The results of record: the runs that decide the claims ledger, kept in the repository (`record/`),
so that the evidence ships with the code and any rerun can be checked against it.

    record/MANIFEST.json                        every file's size and SHA-256 (checked before any read)
    record/<store>/<stage>/runs.parquet         key, config, final metrics, provenance (JSON text per run)
                          /history.parquet      every epoch of every run, keyed by `key`
                          /margins.parquet      test-set margins of the reported model (both normalisations)
                          /test_correct.parquet which test images each epoch classified right (packed bits)
                          /spectra.parquet      singular values of every layer of the reported weights, and
                                                its rank under torch.linalg.matrix_rank's default tolerance
                          /sharpness.parquet    filter-normalised sharpness per direction (`SHARPNESS`)
    record/<store>/selection/plan.json, selection.csv   the confirmation plan this stage chose, and its table

`<store>` is the name of the sweep's store folder (results/quick → quick), `<stage>` selection or
confirmation. A stage is written whole, from a store that holds every run of it, and replaces any
earlier copy; what needs the weights is computed from the fp32 weights when the stage is written, so
the record holds no weights. `Record` reads it, after checking every hash: a file that differs from
the manifest is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mulreg.config import PROJECT_ROOT, MulregError, RunConfig
from mulreg.core import metrics as M
from mulreg.core.epochs import with_rules
from mulreg.core.models import layer_names
from mulreg.engine import confirm, stages
from mulreg.engine.store import Store
from mulreg.engine.sweep import SweepSpec
from mulreg.engine.sweep import run as run_sweep
from mulreg.progress import bar as progress_bar
from mulreg.provenance import MEASURED, cpu_model
from mulreg.results.claims import claims
from mulreg.results.landscape import landscape_data, sharpness

RECORD_ROOT = PROJECT_ROOT / "record"
MANIFEST = "MANIFEST.json"
STAGES = ("selection", "confirmation")
TABLES = ("runs", "history", "margins", "test_correct", "spectra", "sharpness")  # one parquet file each, per stage
STAGE_FILES = ("plan.json", "selection.csv")  # the confirmation plan and the table it was chosen from
SHARPNESS = {"radius": 0.25, "directions": (0, 1, 2), "images": 500}  # replication 2's registered setting
SOURCE = "source"  # the runs-table column that says where a run's numbers were read: STORE or RECORD
STORE, RECORD = "trained here", "record"


def record_root() -> Path:
    """Where the record is: $MULREG_RECORD, else `record/` in the checkout."""
    return Path(os.environ.get("MULREG_RECORD") or RECORD_ROOT)


class RecordError(MulregError):
    """The record is damaged (a hash differs), incomplete, or lacks what was asked of it."""


def store_name(spec: SweepSpec) -> str:
    """The record's name for a sweep's store: its folder's name (results/quick → quick)."""
    return Path(spec.store).name


def stage_keys(spec: SweepSpec, stage: str, plan: dict | None = None) -> list[str] | None:
    """The run keys of one stage of `spec`: the selection grid, or the confirmation `plan`'s runs
    (None when the sweep has no confirmation or no plan yet)."""
    if stage == "selection":
        return [c.key() for c in stages.selection_spec(spec).configs()]
    if spec.confirmation is None or plan is None:
        return None
    return [c.key() for c in stages.confirmation_spec(spec, plan).configs()]


# ---- writing

def write_stage(spec: SweepSpec, stage: str, root: Path | None = None, data_root=None) -> Path:
    """Write one complete stage of `spec`'s store into the record at `root` (replacing an earlier
    copy) and update the manifest. Returns the stage's folder."""
    root = root or record_root()
    store = Store(spec.store, create=False)
    plan = confirm.load(store.root) if spec.confirmation is not None else None
    keys = stage_keys(spec, stage, plan)
    if keys is None:
        raise RecordError(f"{store.root}: no confirmation plan yet, so the confirmation stage cannot be recorded")
    missing = [k for k in keys if not store.is_complete(k)]
    if missing:  # a stage is recorded whole, or not at all
        raise RecordError(f"{store.root} holds {len(keys) - len(missing)} of the {stage} stage's {len(keys)} runs: "
                          "a stage is recorded whole; train the rest with `python -m mulreg sweep <its sweep file>`")
    target = root / store_name(spec) / stage
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=target.parent))
    try:
        _write_tables(store, keys, tmp, data_root)
        if stage == "selection" and plan is not None:  # the plan derived from this stage, and its table
            for name in STAGE_FILES:
                shutil.copyfile(confirm.folder(store.root) / name, tmp / name)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_manifest(root)
    return target


def write_complete(spec: SweepSpec, root: Path | None = None, data_root=None) -> list[str]:
    """Record every stage of `spec` that its store holds whole; returns the stages written."""
    store = Store(spec.store, create=False)
    plan = confirm.load(store.root) if spec.confirmation is not None else None
    written = []
    for stage in STAGES:
        keys = stage_keys(spec, stage, plan)
        if keys and all(store.is_complete(k) for k in keys):
            write_stage(spec, stage, root, data_root)
            written.append(stage)
    return written


def _write_tables(store: Store, keys: list[str], folder: Path, data_root) -> None:
    """The tables of one stage (`TABLES`), one run at a time (each run's weights are loaded once)."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    for key in progress_bar(iterable=keys, desc=f"recording {folder.parent.name}", unit="run"):
        result = store.load(key)
        for name, frame in _run_tables(key, result, data_root).items():
            parts[name].append(frame)
    for name, frames in parts.items():
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        table.to_parquet(folder / f"{name}.parquet", index=False, compression="zstd")


def _run_tables(key: str, result, data_root) -> dict[str, pd.DataFrame]:
    """Everything the analyses read of one run, the quantities of its weights computed now."""
    model = result.model()
    metrics = {"stop_reason": result.stop_reason, **result.metrics}
    runs = pd.DataFrame([{"key": key, "config": result.config.model_dump_json(),
                          "metrics": json.dumps(metrics, default=float), "provenance": json.dumps(result.provenance)}])
    margins = pd.DataFrame({"key": [key], "unit_norm": [np.asarray(result.test_margins, dtype=np.float32)],
                            "output_std": [_output_std_margins(model, result.config, data_root)]})
    right = result.test_correct
    correct = pd.DataFrame({"key": [key], "epochs": [0 if right is None else right.shape[0]],
                            "images": [0 if right is None else right.shape[1]],
                            "bits": [b"" if right is None else np.packbits(right, axis=1).tobytes()]})
    finite = all(bool(torch.isfinite(t).all()) for t in result.state_dict.values())  # a diverged run: no spectra
    spectra = [pd.DataFrame({"key": key, "layer": name, "index": np.arange(1, len(s) + 1), "sv": s,
                             "matrix_rank": M.matrix_rank(w)})
               for name, w in zip(layer_names(model), M.weight_matrices(model)) if finite
               for s in [M.singular_values(w).numpy()]]
    x, y, _ = landscape_data(result.config, SHARPNESS["images"], root=data_root)
    rise = sharpness(model, x, y, [SHARPNESS["radius"]], SHARPNESS["directions"])[0] if finite else np.nan
    sharp = pd.DataFrame({"key": key, "radius": SHARPNESS["radius"], "direction": list(SHARPNESS["directions"]),
                          "images": len(x), "rise": rise})
    spectra = pd.concat(spectra, ignore_index=True) if spectra else pd.DataFrame(
        {"key": pd.Series(dtype=str), "layer": pd.Series(dtype=str), "index": pd.Series(dtype=int),
         "sv": pd.Series(dtype=np.float32), "matrix_rank": pd.Series(dtype=int)})
    return {"runs": runs, "history": result.history.assign(key=key), "margins": margins,
            "test_correct": correct, "spectra": spectra, "sharpness": sharp}


def _output_std_margins(model, config, data_root) -> np.ndarray:
    """y·f(x) / std of f(x) over the test set (the authors' normalisation), of the reported model."""
    from mulreg.core.data import pool_for

    pool = pool_for(config, data_root)
    out = M.predict(model, pool.x_test)
    return M.output_std_margins(out, pool.targets(pool.y_test)).numpy().astype(np.float32)


def write_manifest(root: Path | None = None) -> dict:
    """MANIFEST.json: the size and SHA-256 of every file of the record, and each store's size."""
    root = root or record_root()
    kept = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
            and not any(part.startswith(".") for part in p.relative_to(root).parts)]  # not a stage being written
    files = {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in kept}
    sizes: dict[str, int] = {}
    for path, entry in files.items():
        sizes[path.split("/")[0]] = sizes.get(path.split("/")[0], 0) + entry["bytes"]
    manifest = {"files": files, "bytes_per_store": sizes}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- reading

class Record:
    """The record at `root`, its every file checked against the manifest when opened."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root or record_root())
        self.manifest = self._checked()
        self._tables: dict[tuple[str, str, str], pd.DataFrame] = {}

    def _checked(self) -> dict:
        path = self.root / MANIFEST
        if not path.exists():
            return {"files": {}, "bytes_per_store": {}}
        try:
            manifest = json.loads(path.read_text())
            files = manifest["files"]
        except (ValueError, KeyError, TypeError):
            raise RecordError(f"{path} cannot be read; restore it with `git checkout -- {self.root.name}/`") from None
        for name, entry in files.items():
            file = self.root / name
            if not file.is_file():
                raise RecordError(f"{file}: listed in {MANIFEST} but missing; restore it with `git checkout -- {file}`")
            if file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
                raise RecordError(f"{file}: its SHA-256 differs from {MANIFEST} (damaged or edited), so the record "
                                  f"is not read; restore it with `git checkout -- {file}`")
        return manifest

    def has(self, name: str, stage: str) -> bool:
        return f"{name}/{stage}/runs.parquet" in self.manifest["files"]

    def holds(self, name: str, stage: str, keys: list[str]) -> bool:
        """The record holds this stage of store `name`, with exactly the runs `keys`."""
        return self.has(name, stage) and set(self.table(name, stage, "runs")["key"]) == set(keys)

    def table(self, name: str, stage: str, table: str) -> pd.DataFrame:
        if not self.has(name, stage):
            raise RecordError(f"the record holds no {stage} stage of store {name!r} (in {self.root})")
        key = (name, stage, table)
        if key not in self._tables:
            self._tables[key] = pd.read_parquet(self.root / name / stage / f"{table}.parquet")
        return self._tables[key]

    def runs(self, name: str, stage: str) -> pd.DataFrame:
        """One row per run, as `Store.load_runs` gives it (config columns dotted, final metrics,
        provenance, key), with `source` = "record" and `record` = "<store>/<stage>"."""
        rows = []
        for r in self.table(name, stage, "runs").itertuples():
            config = pd.json_normalize(json.loads(r.config)).iloc[0].to_dict()
            rows.append({"key": r.key, **config, **json.loads(r.metrics), **json.loads(r.provenance)})
        return pd.DataFrame(rows).assign(**{SOURCE: RECORD, "record": f"{name}/{stage}"})

    def configs(self, name: str) -> dict[str, RunConfig]:
        """Every recorded run of store `name`: key → its config."""
        tables = [self.table(name, stage, "runs") for stage in STAGES if self.has(name, stage)]
        return {r.key: RunConfig.parse(json.loads(r.config)) for t in tables for r in t.itertuples()}

    def plan(self, name: str) -> dict | None:
        """The confirmation plan chosen from the recorded selection stage (None without one)."""
        path = f"{name}/selection/plan.json"
        return json.loads((self.root / path).read_text()) if path in self.manifest["files"] else None

    def selection_table(self, name: str) -> pd.DataFrame:
        if self.plan(name) is None:
            raise RecordError(f"the record holds no confirmation plan of store {name!r} (in {self.root})")
        return pd.read_csv(self.root / name / "selection" / "selection.csv")

    def _rows(self, runs: pd.DataFrame, table: str) -> pd.DataFrame:
        """The rows of `table` for the recorded runs of `runs` (their `record` column says where)."""
        parts = [self.table(*where.split("/"), table).merge(group[["key"]], on="key")
                 for where, group in runs.groupby("record")]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["key"])

    def histories(self, runs: pd.DataFrame) -> pd.DataFrame:
        return self._rows(runs, "history")

    def margins(self, runs: pd.DataFrame, kind: str) -> dict[str, np.ndarray]:
        return {r.key: np.asarray(getattr(r, kind)) for r in self._rows(runs, "margins").itertuples()}

    def test_correct(self, runs: pd.DataFrame) -> dict[str, np.ndarray | None]:
        out = {}
        for r in self._rows(runs, "test_correct").itertuples():
            bits = np.frombuffer(r.bits, dtype=np.uint8).reshape(r.epochs, -1) if r.epochs else None
            out[r.key] = None if bits is None else np.unpackbits(bits, axis=1, count=r.images).astype(bool)
        return out

    def spectra(self, runs: pd.DataFrame) -> pd.DataFrame:
        return self._rows(runs, "spectra")

    def sharpness(self, runs: pd.DataFrame) -> pd.DataFrame:
        return self._rows(runs, "sharpness")

    def digest(self, name: str) -> str:
        """A short SHA-256 over the manifest entries of store `name`: what a figure drawn from it names."""
        entries = sorted((path, entry["sha256"]) for path, entry in self.manifest["files"].items()
                         if path.startswith(f"{name}/"))
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:12]

    def size(self) -> dict[str, int]:
        """Bytes per store, as the manifest lists them."""
        return dict(self.manifest["bytes_per_store"])



# ---- checking a store against the record

DECISION_COLUMNS = ("stop_reason", "escape_epoch", "best_val_loss_epoch")  # what the epoch rules decide with


def patience_for(sweep_file: str | os.PathLike) -> int | None:
    """The authors' rule's patience the claims ledger reads this profile's runs with (`paper_patience`
    of params/<profile>/08_claims_ledger.yaml, beside the sweep file), None where there is none."""
    from mulreg.config import load_yaml

    ledger = Path(sweep_file).parent / "08_claims_ledger.yaml"
    return load_yaml(ledger).get("paper_patience") if ledger.is_file() else None


def local_stages(spec: SweepSpec, patience: int | None) -> dict[str, pd.DataFrame]:
    """The stages `spec`'s store holds whole, with every epoch rule read."""
    store = Store(spec.store, create=False)
    plan = confirm.load(store.root) if spec.confirmation is not None else None
    out = {}
    for stage in STAGES:
        keys = stage_keys(spec, stage, plan)
        if keys and all(store.is_complete(k) for k in keys):
            out[stage] = stages.read_rules(spec, store.load_runs(keys), patience)
    return out


def recorded_stages(rec: Record, name: str, patience: int | None) -> dict[str, pd.DataFrame]:
    """The stages the record holds of store `name`, with every epoch rule read."""
    out = {}
    for stage in STAGES:
        if rec.has(name, stage):
            runs = rec.runs(name, stage)
            out[stage] = with_rules(runs, rec.histories(runs), patience)
    return out


def compare(spec: SweepSpec, rec: Record, patience: int | None) -> tuple[list[str], list[str]]:
    """`spec`'s store against the record, run by run: (lines to print, decisions that differ). The
    decisions are the runs each stage holds, the λ chosen, and every outcome of Fig. 1's claims under
    every epoch rule; the numbers are compared by their largest difference, naming the run."""
    name = store_name(spec)
    here, there = local_stages(spec, patience), recorded_stages(rec, name, patience)
    if not there:
        raise RecordError(f"the record ({rec.root}) holds no stage of store {name!r}: nothing to verify against")
    lines, differs = [], []
    for stage, recorded in there.items():
        local = here.get(stage)
        if local is None:
            differs.append(f"{stage} stage: not complete in {spec.store}, so not compared")
            continue
        hist = Store(spec.store, create=False).load_histories(list(local["key"]))
        lines += compare_runs(stage, local, recorded, differs)
        lines += compare_histories(hist, rec.histories(recorded))
    lam_here = confirm.load(spec.store)
    lam_there = rec.plan(name)
    if lam_there is not None:
        same = lam_here is not None and lam_here["lam"] == lam_there["lam"]
        text = f"λ chosen: record {lam_there['lam']}, here {None if lam_here is None else lam_here['lam']}"
        lines.append(("same " if same else "DIFFERS ") + text)
        differs += [] if same else [text]
    if "confirmation" in here and "confirmation" in there:
        lines += compare_outcomes(here["confirmation"], there["confirmation"], differs)
    return lines, differs


def compare_runs(stage: str, local: pd.DataFrame, recorded: pd.DataFrame, differs: list[str]) -> list[str]:
    """Runs in one and not the other, each metric's largest difference and the run it is in, and
    the runs whose epoch-rule decisions (stop reason, escape, best validation epoch) differ."""
    only_here = sorted(set(local["key"]) - set(recorded["key"]))
    only_there = sorted(set(recorded["key"]) - set(local["key"]))
    lines = [f"{stage} stage: {len(set(local['key']) & set(recorded['key']))} runs in both, "
             f"{len(only_here)} only here, {len(only_there)} only in the record"]
    differs += [f"{stage} stage: run {k} only here" for k in only_here]
    differs += [f"{stage} stage: run {k} only in the record" for k in only_there]
    both = local.merge(recorded, on="key", suffixes=("", "_record"))
    numeric = [c for c in local.columns if f"{c}_record" in both and pd.api.types.is_numeric_dtype(local[c])
               and pd.api.types.is_numeric_dtype(both[f"{c}_record"]) and not _measured(c)]
    gaps = {c: _gap(both[c], both[f"{c}_record"]) for c in numeric}
    moved = {c: g for c, g in gaps.items() if g.max() > 0}
    lines.append(f"  {len(numeric) - len(moved)} of {len(numeric)} numbers identical in every run"
                 + (":" if moved else ""))
    for column, gap in sorted(moved.items(), key=lambda item: -item[1].max()):
        lines.append(f"  {column}: largest difference {gap.max():.3g} (run {both.at[gap.idxmax(), 'key']})")
    for column in DECISION_COLUMNS:
        if column in both and f"{column}_record" in both:
            bad = both[[not _same(a, b) for a, b in zip(both[column], both[f"{column}_record"])]]
            differs += [f"{stage} stage: run {r['key']}: {column} {r[column]} here, "
                        f"{r[f'{column}_record']} in the record" for r in bad.to_dict("records")]
    return lines


def compare_histories(here: pd.DataFrame, there: pd.DataFrame) -> list[str]:
    """Every per-epoch column's largest difference over the runs and epochs both hold, naming the
    run and epoch; epochs one side lacks are counted."""
    both = here.merge(there, on=["key", "epoch"], suffixes=("", "_record"))
    lines = []
    unmatched = len(here) + len(there) - 2 * len(both)
    columns = [c for c in here.columns if c not in ("key", "epoch") and f"{c}_record" in both]
    moved = []
    for column in columns:
        gap = _gap(both[column], both[f"{column}_record"])
        if gap.max() > 0:
            at = gap.idxmax()
            moved.append((gap.max(), f"  history {column}: largest difference {gap.max():.3g} "
                                     f"(run {both.at[at, 'key']}, epoch {both.at[at, 'epoch']})"))
    lines.append(f"  {len(columns) - len(moved)} of {len(columns)} per-epoch columns identical at every epoch"
                 + (f"; {unmatched} epochs held by one side only" if unmatched else "") + (":" if moved else ""))
    return lines + [line for _, line in sorted(moved, key=lambda m: -m[0])]


def _gap(here: pd.Series, there: pd.Series) -> pd.Series:
    """|here − there| per row: 0 where both are missing, inf where only one is."""
    gap = (here.astype(float) - there.astype(float)).abs()
    return gap.where(here.isna() == there.isna(), np.inf).fillna(0)


def _same(a, b) -> bool:
    """Equal, or both missing (NaN, None)."""
    return (pd.isna(a) and pd.isna(b)) or a == b


def _measured(column: str) -> bool:
    """Provenance that differs between any two trainings of one run (times, speeds)."""
    return column in MEASURED or column in ("threads", "git_dirty")


def compare_outcomes(local: pd.DataFrame, recorded: pd.DataFrame, differs: list[str]) -> list[str]:
    """Fig. 1's claims under every epoch rule on both: how many outcomes agree, each one that differs."""
    here, there = (_outcomes(claims(runs, confirmed=True)) for runs in (local, recorded))
    joined = pd.concat({"here": here, "record": there}, axis=1)
    bad = joined[joined["here"] != joined["record"]]
    differs += [f"outcome of {claim} (noise {noise}, rule {rule}): record {r['record']}, here {r['here']}"
                for (rule, claim, noise), r in bad.iterrows()]
    return [f"{'same' if bad.empty else 'DIFFERS'}: {len(joined) - len(bad)} of {len(joined)} outcomes of Fig. 1's "
            "claims (every epoch rule)"]


def _outcomes(table: pd.DataFrame) -> pd.Series:
    """rule, claim, noise → outcome (empty where no claim could be tested: a penalty without runs)."""
    if table.empty:
        return pd.Series(dtype=object, index=pd.MultiIndex.from_tuples([], names=["rule", "claim", "noise"]))
    return table.set_index(["rule", "claim", "noise"])["outcome"]


def retrain(spec: SweepSpec, rec: Record, n: int, seed: int, patience: int | None) -> tuple[list[str], list[str]]:
    """Retrain `n` recorded runs of `spec`'s store, drawn with `seed`, into a temporary store, each as
    its sweep trains it, and compare them with the record: (lines to print, decisions that differ)."""
    name = store_name(spec)
    recorded = pd.concat([rec.runs(name, s) for s in STAGES if rec.has(name, s)], ignore_index=True)
    if not 1 <= n <= len(recorded):
        raise RecordError(f"--retrain {n}: the record holds {len(recorded)} runs of store {name!r}; give 1 to "
                          f"{len(recorded)}")
    drawn = sorted(np.random.default_rng(seed).choice(sorted(recorded["key"]), size=n, replace=False))
    configs = rec.configs(name)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mulreg-retrain-") as tmp:
        here = spec.model_copy(update={"store": tmp})
        fresh = stages.read_rules(here, run_sweep(here, configs=[configs[key] for key in drawn]), patience)
        fresh_hist = Store(tmp, create=False).load_histories(drawn)
    seconds = time.perf_counter() - start
    chosen = recorded[recorded["key"].isin(drawn)]
    recorded_hist = rec.histories(chosen)
    hosts = f"record: {', '.join(sorted(set(chosen['cpu_model'].dropna())))}; here: {cpu_model()}"
    differs: list[str] = []
    lines = [f"retrained {n} of the record's {len(recorded)} runs (drawn with seed {seed}: {', '.join(drawn)}) "
             f"in {seconds:.0f} s; hosts: {hosts}"]
    lines += compare_runs("retrained", fresh, with_rules(chosen, recorded_hist, patience), differs)
    return lines + compare_histories(fresh_hist, recorded_hist), differs
