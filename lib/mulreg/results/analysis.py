"""What the notebooks read from the run store and the data: the sweep a notebook takes, its runs,
histories, margins, spectra, and the runs and data behind the landscape figures.
Statistics of those tables live in `mulreg.results.stats`, sentences in `mulreg.report.prose`.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mulreg.core import metrics as M
from mulreg.core.devices import on_this_machine, resolve_device
from mulreg.core.models import layer_names
from mulreg.engine import confirm, stages
from mulreg.engine.store import Store
from mulreg.engine.sweep import SweepSpec, run
from mulreg.protocols import EXCLUDED, PENALTY_NAMES, Penalty
from mulreg.provenance import provenance_note
from mulreg.results import record
from mulreg.results.landscape import landscape_data
from mulreg.results.stats import in_paper_order


def set_threads(threads: int | None) -> int:
    """Intra-op threads of this process's torch (None: leave torch's default). On a small shared
    CPU one thread is much faster than two when other processes compete for the cores (spin-waiting
    threads). Sweeps with strategy "processes" set one thread per worker by themselves."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def load_sweep(path: str, classes: Sequence[int | str] | None = None,
               seeds: Sequence[int] | int | None = None) -> SweepSpec:
    """The sweep file a notebook takes as its one `sweep` parameter (`params/<profile>/*_sweep.yaml`,
    the format `python -m mulreg sweep` runs; a relative path is relative to the working
    directory), with another binary class pair when `classes` is given (names or indices 0-9) and
    other seeds when `seeds` is given (one or a list; every run config validates its own); with
    either, the sweep is read without its confirmation stage, as an exploratory look."""
    spec = SweepSpec.from_yaml(path)
    base, grid, arms = dict(spec.base), dict(spec.grid), list(spec.arms)
    confirmation = spec.confirmation
    if classes is not None:  # another pair is exploratory: the pre-registered confirmation is cats/deer's
        base["classes"] = list(classes)
        confirmation = None
    if seeds is not None:  # a look at other seeds is exploratory too
        seeds = list(seeds) if isinstance(seeds, (list, tuple)) else [seeds]
        grid["seed"] = seeds
        arms = [{**arm, "seed": seeds} if "seed" in arm else arm for arm in arms]
        confirmation = None
    return spec.model_copy(update={"base": base, "grid": grid, "arms": arms, "confirmation": confirmation})


def reader(store: Store | str) -> Store:
    """`store` for reading: a path opens the store without creating or writing anything in it."""
    return Store(store, create=False) if isinstance(store, (str, os.PathLike)) else store


def reported_levels(spec: SweepSpec) -> list[float]:
    """The label-noise levels a notebook reports: its confirmation's, or, without one, its grid's."""
    if spec.confirmation is not None:
        return sorted(spec.confirmation.label_noise)
    return sorted({c.label_noise for c in spec.configs()})


def run_stages(spec: SweepSpec, progress: bool = True, patience: int | None = None) -> stages.Stages:
    """Train what the store lacks of both stages (`mulreg.engine.stages.run`), say in words what happened,
    and return each stage's runs with every epoch rule read off its histories (the paper's literal
    rule too, given its `patience`). A stage the store lacks and the record holds is read from the
    record and not trained (`stored_stages`); each runs table's `source` column says which."""
    recorded, missing = stored_stages(spec, patience)
    parts = [("selection", recorded.selection), ("confirmation", recorded.confirmation)]
    if not missing and any(len(_split(runs)[1]) for _, runs in parts if runs is not None):
        for name, runs in parts:
            if runs is not None:
                print(f"{name}: {source_line(runs, spec.store)}. {provenance_note(runs)}")
        return recorded
    store = spec.open_store()
    before = set(store.keys())
    start = time.perf_counter()
    done = stages.run(spec, progress=progress)
    seconds = time.perf_counter() - start
    parts = [("selection", done.selection)] + ([("confirmation", done.confirmation)] if done.plan else [])
    keys = [k for _, runs in parts for k in runs["key"]]
    trained = sum(k not in before for k in keys)
    print(f"{len(keys)} runs ({', '.join(f'{len(runs)} {name}' for name, runs in parts)}): "
          f"{len(keys) - trained} found in {store.root}, {trained} trained now in {seconds:.0f} s.")
    rules = {name: stages.read_rules(spec, runs.assign(**{record.SOURCE: record.STORE, "record": None}), patience)
             for name, runs in parts}
    for name, runs in rules.items():
        n_failed = runs["stop_reason"].isin(EXCLUDED).sum() if len(runs) else 0
        print(f"{name}: {source_line(runs, store.root)}; {n_failed} of {len(runs)} runs diverged or never left "
              f"chance level. {provenance_note(runs)}")
    return stages.Stages(rules["selection"], rules.get("confirmation"), done.plan)


def reported_runs(done: stages.Stages) -> pd.DataFrame:
    """The runs a notebook reports: the confirmation runs (fresh seeds, one λ per penalty) where
    there are any, else the selection stage's runs of each λ chosen for the headline rule; says which."""
    from mulreg.results.stats import chosen_for_headline

    if done.confirmation is not None and len(done.confirmation):
        print(f"Reported: the {len(done.confirmation)} confirmation runs (fresh seeds).")
        return in_paper_order(done.confirmation)
    print("Reported: the selection stage's runs of each chosen λ (no confirmation stage: exploratory).")
    return chosen_for_headline(done.selection)


def histories(store: Store | str, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch histories of `runs` (from the store, or the record for runs read from it), long,
    with penalty, λ, label noise and seed attached."""
    if not len(runs):
        return pd.DataFrame()
    local, recorded = _split(runs)
    parts = [reader(store).load_histories(list(local["key"]))] if len(local) else []
    parts += [evidence().histories(recorded)] if len(recorded) else []
    hist = pd.concat(parts, ignore_index=True)
    info = runs[["key", "penalty", "lam", "label_noise", "seed"]]
    return in_paper_order(hist.merge(info, on="key"))


MARGIN_KINDS = {
    "unit_norm": "y·f(x) of the network with unit-norm layers, biases untouched (docs/PAPER.md, 'Metrics')",
    "output_std": "y·f(x) / std over the test set of f(x) (the authors' code)",
}


def margins(store: Store | str, runs: pd.DataFrame, kind: str = "unit_norm", root=None) -> pd.DataFrame:
    """Test-set margins of `runs`, one row per test image and run: `kind` "unit_norm" reads the
    stored margins of the unit-norm network; "output_std" evaluates the reported model on the
    test set and divides y·f(x) by the std of f(x) (the authors' normalisation, whose mean is the
    store's `margin_std_mean`). Runs read from the record give both as recorded."""
    if kind not in MARGIN_KINDS:
        raise ValueError(f"kind must be one of {list(MARGIN_KINDS)}, got {kind!r}")
    local, recorded = _split(runs)
    found = evidence().margins(recorded, kind) if len(recorded) else {}
    store = reader(store)
    for r in local.itertuples():
        found[r.key] = np.load(store.run_dir(r.key) / "margins.npy") if kind == "unit_norm" else \
            _output_std_margins(store.load(r.key), root)
    parts = [pd.DataFrame({"margin": found[r.key], "correct": found[r.key] > 0, "penalty": r.penalty,
                           "label_noise": r.label_noise, "seed": r.seed, "lam": r.lam}) for r in runs.itertuples()]
    return in_paper_order(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame(
        columns=["margin", "correct", "penalty", "label_noise", "seed", "lam"])


def _output_std_margins(result, root) -> np.ndarray:
    from mulreg.core.data import pool_for

    pool = pool_for(result.config, root)
    out = M.predict(result.model(), pool.x_test)
    return M.output_std_margins(out, pool.targets(pool.y_test)).numpy()


def spectra(store: Store | str, runs: pd.DataFrame) -> pd.DataFrame:
    """Singular values of every layer of each run's reported weights (conv kernels reshaped to
    out × in·kh·kw; from the record for runs read from it), long: penalty, label_noise, seed,
    layer, index, sv, sv_rel (÷ the largest)."""
    local, recorded = _split(runs)
    store = reader(store)
    parts = [evidence().spectra(recorded)] if len(recorded) else []
    for r in local.itertuples():
        model = store.load(r.key).model()
        parts += [pd.DataFrame({"key": r.key, "layer": name, "index": np.arange(1, len(s) + 1), "sv": s,
                                "matrix_rank": M.matrix_rank(w)})
                  for name, w in zip(layer_names(model), M.weight_matrices(model))
                  for s in [M.singular_values(w).numpy()]]
    if not parts:
        return pd.DataFrame()
    sv = pd.concat(parts, ignore_index=True)
    top = sv.groupby(["key", "layer"])["sv"].transform("max")
    sv["sv_rel"] = np.where(top > 0, sv["sv"] / top.where(top > 0, 1), sv["sv"])
    info = runs[["key", "penalty", "label_noise", "seed"]]
    out = info.merge(sv, on="key")  # runs' order, then layers in network order
    return in_paper_order(out[["key", "penalty", "label_noise", "seed", "layer", "index", "sv", "sv_rel",
                               "matrix_rank"]])


def with_matrix_ranks(store: Store | str, runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with each layer's rank under `torch.linalg.matrix_rank`'s default tolerance
    (`matrix_rank_<layer>`, `mulreg.protocols.MATRIX_RANK`), from the weights or the record."""
    from mulreg.protocols import MATRIX_RANK

    sv = spectra(store, runs)
    if sv.empty:
        return runs
    wide = sv.drop_duplicates(["key", "layer"]).pivot(index="key", columns="layer", values="matrix_rank")
    wide = wide[list(dict.fromkeys(sv["layer"]))]  # network order
    wide.columns = [MATRIX_RANK.column(layer) for layer in wide.columns]
    return runs.merge(wide.reset_index(), on="key", how="left")


def ensure_run(spec: SweepSpec, **fields) -> pd.Series:
    """The run of `spec`'s base config with `fields` changed (penalty, lam, seed, label_noise…),
    from the store, or trained now and stored; returned as a runs-table row."""
    fields = dict(fields)
    lam = fields.pop("lam", spec.base.get("lam", 0.0))
    single = SweepSpec(base={**spec.base, **fields}, grid={"lam": [float(lam)]}, store=spec.store,
                       strategy="inline", checkpoint_every=spec.checkpoint_every)
    table = run(single, progress=False)
    return table.iloc[0]


def landscape_pair(runs: pd.DataFrame, best: pd.DataFrame, label_noise: float, seed: int,
                   lam: dict[str, float | None] | None = None, spec: SweepSpec | None = None) -> dict[str, pd.Series]:
    """The additive and multiplicative runs to compare, same init scale, seed and label noise:
    λ chosen by the selection rule at `label_noise`, or given in `lam` (e.g. the paper's Fig. 3
    values, `mulreg.results.paper.FIG3_LAMBDA`). A run the sweep lacks is trained with `spec`'s base
    config when `spec` is given."""
    out = {}
    for pen in (Penalty.SUM, Penalty.MUL):
        if lam and lam.get(pen) is not None:
            value = float(lam[pen])
        else:
            row = best[(best["penalty"] == pen) & np.isclose(best["label_noise"], label_noise)]
            if row.empty or pd.isna(row["lam"].iloc[0]):
                raise LookupError(f"no {PENALTY_NAMES[pen]} run survived at label noise {label_noise}; "
                                  "give its λ explicitly")
            value = float(row["lam"].iloc[0])
        match = runs[(runs["penalty"] == pen) & np.isclose(runs["lam"], value, rtol=1e-9, atol=0)
                     & np.isclose(runs["label_noise"], label_noise) & (runs["seed"] == seed)]
        if not match.empty:
            out[pen] = match.iloc[0]
        elif spec is not None:
            out[pen] = ensure_run(spec, penalty=pen, lam=value, seed=seed, label_noise=label_noise)
        else:
            raise LookupError(f"the sweep has no {pen} run with λ={value:g}, noise {label_noise}, seed {seed}")
    return out


def cached_frame(path, compute, **key) -> pd.DataFrame:
    """`compute()` (a DataFrame with an index) cached as CSV at `path`, tagged with a hash of
    `key` (everything the numbers depend on): a later call with the same key reads the file."""
    import hashlib
    import json
    from pathlib import Path

    tag = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = Path(path)
    path = path.with_name(f"{path.stem}-{tag}{path.suffix or '.csv'}")
    if path.exists():
        return pd.read_csv(path, index_col=0)
    frame = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp)
    tmp.replace(path)
    return frame


def describe_runs(pair: dict[str, pd.Series], names: dict[str, str]) -> pd.DataFrame:
    """One row per run of `landscape_pair`: name, store key, test accuracy, norms, epochs."""
    return pd.DataFrame([{"model": names[p], "key": r.key, "test acc": r.test_acc, "Π‖W‖": r.norm_product,
                          "Σ‖W‖²": r.norm_sq_sum, "epochs": r.epochs} for p, r in pair.items()])


def compute_device(config) -> torch.device:
    """Where to evaluate `config`'s runs (landscapes, Hessians): its own device where this machine
    has it, else the CPU (a store trained on a GPU read on a laptop)."""
    return resolve_device(config.device) if on_this_machine(config.device) else torch.device("cpu")


def forward_throughput(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Images per second of one model's plain forward pass (eval mode, no gradients), for
    comparison with the batched grid evaluation."""
    M.predict(model, x[:64])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        M.predict(model, x, batch=len(x))
    return repeats * len(x) / (time.perf_counter() - start)


def test_correct(store: Store | str, runs: pd.DataFrame) -> dict[str, np.ndarray | None]:
    """Per run key: epochs × test images, bool (`Store.test_correct`, or the record's; None for
    runs stored without)."""
    local, recorded = _split(runs)
    found = evidence().test_correct(recorded) if len(recorded) else {}
    found |= {key: reader(store).test_correct(key) for key in local["key"]}
    return {key: found[key] for key in runs["key"]}


def paired_gaps(hist: pd.DataFrame) -> pd.DataFrame:
    """`mulreg.results.stats.paired_over_epochs` of the multiplicative penalty against each other penalty,
    stacked with a column `other`."""
    from mulreg.results.stats import paired_over_epochs

    parts = [paired_over_epochs(hist, Penalty.MUL, other).assign(other=other)
             for other in (Penalty.SUM, Penalty.NONE)]
    return pd.concat(parts, ignore_index=True)


def stored_stages(spec: SweepSpec, patience: int | None = None,
                  record_only: bool = False) -> tuple[stages.Stages, list[str]]:
    """Both stages of `spec`, training nothing, with every epoch rule read, and what is missing in
    words. Each stage is read from the local store when it holds every run of it, else from the
    record (`mulreg.results.record`) when that holds it; an incomplete one is None (and named), so
    nothing is decided on part of a stage. Each runs table's `source` column says where it was read;
    with `record_only`, no local store is read (what the README shows)."""
    store = Store(spec.store, create=False)  # reads only: an archived, read-only store is read as it is

    def stored(keys: list[str]) -> bool:
        return not record_only and all(store.is_complete(k) for k in keys)

    name = record.store_name(spec)
    missing = []
    wanted = [c.key() for c in stages.selection_spec(spec).configs()]
    if stored(wanted):
        selection = _from_store(spec, store, wanted, patience)
        plan = confirm.load(store.root) if spec.confirmation is not None else None
    elif evidence().holds(name, "selection", wanted):
        selection = _from_record(name, "selection", patience)
        plan = evidence().plan(name) if spec.confirmation is not None else None
    else:
        done = sum(store.is_complete(k) for k in wanted)
        missing.append(f"selection stage: {done} of {len(wanted)} runs stored in {store.root}, and not in the record")
        return stages.Stages(pd.DataFrame()), missing
    if plan is None:
        missing += ["confirmation stage: not planned yet"] if spec.confirmation is not None else []
        return stages.Stages(selection), missing
    planned = record.stage_keys(spec, "confirmation", plan)
    if stored(planned):
        confirmation = _from_store(spec, store, planned, patience)
    elif evidence().holds(name, "confirmation", planned):
        confirmation = _from_record(name, "confirmation", patience)
    else:
        done = sum(store.is_complete(k) for k in planned)
        missing.append(f"confirmation stage: {done} of {len(planned)} runs stored in {store.root}, "
                       "and not in the record")
        return stages.Stages(selection, None, plan), missing
    return stages.Stages(selection, confirmation, plan), missing


def _from_store(spec: SweepSpec, store: Store, keys: list[str], patience: int | None) -> pd.DataFrame:
    runs = store.load_runs(keys).assign(**{record.SOURCE: record.STORE, "record": None})
    return stages.read_rules(spec, runs, patience)


def _from_record(name: str, stage: str, patience: int | None) -> pd.DataFrame:
    from mulreg.core.epochs import with_rules

    runs = evidence().runs(name, stage)
    return with_rules(runs, evidence().histories(runs), patience)


def ledger_params(profile: str = "quick") -> dict:
    """The ledger notebook's (08) parameters in `profile`."""
    from mulreg.config import PROJECT_ROOT, load_yaml

    return load_yaml(PROJECT_ROOT / "params" / profile / "08_claims_ledger.yaml")


def ledger_sweep(name: str, profile: str = "quick") -> SweepSpec:
    """The sweep the ledger notebook's (08) parameter `name` names in `profile` (its runs may be read
    from the record)."""
    from mulreg.config import PROJECT_ROOT

    return load_sweep(str(PROJECT_ROOT / "notebooks" / ledger_params(profile)[name]))


def evidence() -> record.Record:
    """The results of record (`record/`, or $MULREG_RECORD), checked against its manifest once per
    process: a damaged file is refused in one line naming it."""
    root = record.record_root()
    if _RECORD.get("root") != root:
        _RECORD.update(root=root, record=record.Record(root))
    return _RECORD["record"]


_RECORD: dict = {}


def recorded_whole(spec: SweepSpec) -> bool:
    """Whether the results of record hold every stage of `spec` whole: a notebook then reads them there
    and trains nothing of it (`stored_stages`)."""
    name = record.store_name(spec)
    if not evidence().holds(name, "selection", record.stage_keys(spec, "selection")):
        return False
    planned = record.stage_keys(spec, "confirmation", evidence().plan(name))
    return spec.confirmation is None or (planned is not None and evidence().holds(name, "confirmation", planned))


def _split(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`runs` read from a store, and those read from the record."""
    recorded = runs[record.SOURCE] == record.RECORD if record.SOURCE in runs else pd.Series(False, index=runs.index)
    return runs[~recorded], runs[recorded]


def source_line(runs: pd.DataFrame, store: str | os.PathLike | None = None) -> str:
    """Where `runs`' numbers come from, in one line: "results of record (<store>/<stage>): host,
    commit, dates" or "trained here (<store>)"."""
    local, recorded = _split(runs)
    parts = []
    for where, group in recorded.groupby("record") if len(recorded) else ():  # local runs may lack the column
        commits = ", ".join(sorted({str(c)[:10] for c in group.get("git_commit", pd.Series(dtype=object)).dropna()}))
        hosts = ", ".join(sorted(set(group.get("cpu_model", pd.Series(dtype=object)).dropna())))
        started = group.get("started", pd.Series(dtype=object)).dropna().astype(str).str[:10]
        finished = group.get("finished", pd.Series(dtype=object)).dropna().astype(str).str[:10]
        dates = f"{started.min()} to {finished.max()}" if len(started) and len(finished) else "dates not recorded"
        digest = evidence().digest(where.split("/")[0])
        parts.append(f"results of record ({where}, {len(group)} runs, record {digest}): host "
                     f"{hosts or 'not recorded'}, commit {commits or 'not recorded'}, trained {dates}")
    if len(local):
        parts.append(f"trained here ({store or 'local store'}, {len(local)} runs)")
    return "; ".join(parts) or "no runs"


def stages_source(done: stages.Stages, store: str | os.PathLike | None = None) -> str:
    """`source_line` of both stages' runs together."""
    parts = [runs for runs in (done.selection, done.confirmation) if runs is not None and len(runs)]
    return source_line(pd.concat(parts, ignore_index=True), store) if parts else "no runs"


def selection_table(spec: SweepSpec) -> pd.DataFrame:
    """The selection table behind the confirmation plan: the local store's, else the record's."""
    if confirm.load(spec.store) is not None:
        return confirm.selection_table(spec.store)
    return evidence().selection_table(record.store_name(spec))


def sharpness_by_seed(store: Store | str, runs: pd.DataFrame, noise: float, radius: float,
                      directions: Sequence[int], images: int, progress: bool = True) -> pd.DataFrame:
    """Filter-normalised sharpness of each run at label noise `noise`: the mean over `directions`
    of L(θ + radius·d) − L(θ), data loss on the first `images` of the run's training split
    (`landscape_data`); one row per seed, one column per penalty. Runs read from the record give
    it as recorded (at `record.SHARPNESS`'s setting; another setting is refused)."""
    from tqdm.auto import tqdm

    from mulreg.results.landscape import sharpness

    at = runs[np.isclose(runs["label_noise"], noise)]
    local, recorded = _split(at)
    rows = []
    if len(recorded):
        asked = {"radius": radius, "directions": tuple(directions), "images": images}
        if asked != record.SHARPNESS:
            raise record.RecordError(f"the record holds sharpness at {record.SHARPNESS} only; asked for {asked}")
        rise = evidence().sharpness(recorded).groupby("key")["rise"].mean()
        rows += [{"seed": r.seed, "penalty": r.penalty, "sharpness": float(rise[r.key])} for r in recorded.itertuples()]
    store = reader(store)
    for r in tqdm(list(local.itertuples()), desc="sharpness", disable=not progress):
        result = store.load(r.key)
        x, y, _ = landscape_data(result.config, images)
        rise = sharpness(result.model(), x, y, [radius], directions)
        rows.append({"seed": r.seed, "penalty": r.penalty, "sharpness": float(rise.mean())})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot(index="seed", columns="penalty", values="sharpness")
