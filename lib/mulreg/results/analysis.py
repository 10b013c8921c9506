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
from mulreg.engine import confirm, stages
from mulreg.core.devices import on_this_machine, resolve_device
from mulreg.core.models import layer_names
from mulreg.protocols import EXCLUDED, PENALTY_NAMES, Penalty, Split
from mulreg.provenance import provenance_note
from mulreg.results.stats import in_paper_order
from mulreg.engine.store import Store
from mulreg.engine.sweep import SweepSpec, run


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
    rule too, given its `patience`)."""
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
    for name, runs in parts:
        n_failed = runs["stop_reason"].isin(EXCLUDED).sum() if len(runs) else 0
        print(f"{name}: {n_failed} of {len(runs)} runs diverged or never left chance level. {provenance_note(runs)}")
    rules = {name: stages.read_rules(spec, runs, patience) for name, runs in parts}
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
    """Per-epoch histories of `runs`, long, with penalty, λ, label noise and seed attached."""
    store = reader(store)
    if not len(runs):
        return pd.DataFrame()
    hist = store.load_histories(list(runs["key"]))
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
    store's `margin_std_mean`)."""
    from mulreg.core.data import pool_for

    store = reader(store)
    parts = []
    for r in runs.itertuples():
        if kind == "unit_norm":
            m = np.load(store.run_dir(r.key) / "margins.npy")
        elif kind == "output_std":
            result = store.load(r.key)
            c = result.config
            pool = pool_for(c, root)
            out = M.predict(result.model(), pool.x_test)
            m = M.output_std_margins(out, pool.targets(pool.y_test)).numpy()
        else:
            raise ValueError(f"kind must be one of {list(MARGIN_KINDS)}, got {kind!r}")
        parts.append(pd.DataFrame({"margin": m, "correct": m > 0, "penalty": r.penalty,
                                   "label_noise": r.label_noise, "seed": r.seed, "lam": r.lam}))
    return in_paper_order(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame(
        columns=["margin", "correct", "penalty", "label_noise", "seed", "lam"])


def spectra(store: Store | str, runs: pd.DataFrame) -> pd.DataFrame:
    """Singular values of every layer of each run's reported weights (conv kernels reshaped to
    out × in·kh·kw), long: penalty, label_noise, seed, layer, index, sv, sv_rel (÷ the largest)."""
    store = reader(store)
    parts = []
    for r in runs.itertuples():
        model = store.load(r.key).model()
        for name, w in zip(layer_names(model), M.weight_matrices(model)):
            s = M.singular_values(w).numpy()
            parts.append(pd.DataFrame({"penalty": r.penalty, "label_noise": r.label_noise, "seed": r.seed,
                                       "layer": name, "index": np.arange(1, len(s) + 1), "sv": s,
                                       "sv_rel": s / s[0] if s[0] > 0 else s}))
    return in_paper_order(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame()


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


def landscape_data(config, n_images: int, split: str = Split.TRAIN, root=None,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, str]:
    """A fixed, unshuffled subset for landscapes and flatness, on `device` (that of the models it
    is evaluated with): the first `n_images` images of the run's training split in data-set order,
    with its (possibly noisy) training targets, or of the test set. Returns (x, y, description)."""
    from mulreg.core.data import pool_for, split_run

    pool = pool_for(config, root)
    if Split(split) not in (Split.TRAIN, Split.TEST):  # an unknown name raises ValueError here
        raise ValueError(f"landscape split: got {split!r}; allowed: train, test")
    if split == Split.TEST:
        x, y = pool.x_test[:n_images], pool.targets(pool.y_test[:n_images])
        return x.to(device), y.to(device), f"first {len(x)} test images (clean labels)"
    data = split_run(pool, config.seed, config.label_noise, config.val_fraction)
    idx = data.train_idx.sort().values[:n_images]
    y = pool.targets(data.labels)[idx]
    return pool.x_train[idx].to(device), y.to(device), (
        f"first {len(idx)} images of the training split (seed {config.seed}, "
        f"data-set order, training labels with noise {config.label_noise:g})")


def forward_throughput(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Images per second of one model's plain forward pass (eval mode, no gradients), for
    comparison with the batched grid evaluation."""
    M.predict(model, x[:64])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        M.predict(model, x, batch=len(x))
    return repeats * len(x) / (time.perf_counter() - start)


def test_correct(store: Store | str, runs: pd.DataFrame) -> dict[str, np.ndarray | None]:
    """Per run key: epochs × test images, bool (`Store.test_correct`; None for runs stored without)."""
    store = reader(store)
    return {key: store.test_correct(key) for key in runs["key"]}


def paired_gaps(hist: pd.DataFrame) -> pd.DataFrame:
    """`mulreg.results.stats.paired_over_epochs` of the multiplicative penalty against each other penalty,
    stacked with a column `other`."""
    from mulreg.results.stats import paired_over_epochs

    parts = [paired_over_epochs(hist, Penalty.MUL, other).assign(other=other)
             for other in (Penalty.SUM, Penalty.NONE)]
    return pd.concat(parts, ignore_index=True)


def stored_stages(spec: SweepSpec, patience: int | None = None) -> tuple[stages.Stages, list[str]]:
    """Both stages of `spec` as its store holds them, training nothing, with every epoch rule read,
    and what is missing in words: a stage is returned only when every one of its runs is stored
    (an incomplete one is None, and named), so nothing is decided on part of a stage."""
    store = Store(spec.store, create=False)  # reads only: an archived, read-only store is read as it is
    missing = []
    wanted = stages.selection_spec(spec).configs()
    done = [c.key() for c in wanted if store.is_complete(c.key())]
    if len(done) < len(wanted):
        missing.append(f"selection stage: {len(done)} of {len(wanted)} runs stored in {store.root}")
        return stages.Stages(pd.DataFrame()), missing
    selection = stages.read_rules(spec, store.load_runs(done), patience)
    plan = confirm.load(store.root) if spec.confirmation is not None else None
    if plan is None:
        missing += ["confirmation stage: not planned yet"] if spec.confirmation is not None else []
        return stages.Stages(selection), missing
    planned = stages.confirmation_spec(spec, plan).configs()
    keys = [c.key() for c in planned if store.is_complete(c.key())]
    if len(keys) < len(planned):
        missing.append(f"confirmation stage: {len(keys)} of {len(planned)} runs stored in {store.root}")
        return stages.Stages(selection, None, plan), missing
    confirmation = stages.read_rules(spec, store.load_runs(keys), patience)
    return stages.Stages(selection, confirmation, plan), missing


def sharpness_by_seed(store: Store | str, runs: pd.DataFrame, noise: float, radius: float,
                      directions: Sequence[int], images: int, progress: bool = True) -> pd.DataFrame:
    """Filter-normalised sharpness of each run at label noise `noise`: the mean over `directions`
    of L(θ + radius·d) − L(θ), data loss on the first `images` of the run's training split
    (`landscape_data`); one row per seed, one column per penalty."""
    from tqdm.auto import tqdm

    from mulreg.results.landscape import sharpness

    store = reader(store)
    at = runs[np.isclose(runs["label_noise"], noise)]
    rows = []
    for r in tqdm(list(at.itertuples()), desc="sharpness", disable=not progress):
        result = store.load(r.key)
        x, y, _ = landscape_data(result.config, images)
        rise = sharpness(result.model(), x, y, [radius], directions)
        rows.append({"seed": r.seed, "penalty": r.penalty, "sharpness": float(rise.mean())})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot(index="seed", columns="penalty", values="sharpness")
