"""What the paper notebooks compute from the run store, so the notebooks only hold parameters,
calls, figures and prose.

- `load_sweep` reads the one sweep file a notebook takes (notebooks 01-04 share the binary one, so
  its runs are trained once);
- `select` applies the paper's selection rule, `chosen_runs` keeps the runs behind each chosen λ;
- `epoch_rules` reports accuracy under the epoch rules of `mulreg.epochs` (PAPER.md, "A protocol
  question"), `with_paper_rule` adds the paper's literal one; `memorisation` and `escape_table`
  say how much of the flipped labels each run fits and when it left chance level;
- `histories`, `margins`, `rank_table`, `spectra`, `norm_loss_correlation` gather what figures
  and tables need;
- `reduction_notes` says in words how a profile departs from the paper's protocol.
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from . import metrics as M
from .models import layer_names
from .epochs import HEADLINE, RULES, paper_rule
from .paper import PENALTY_NAMES, PENALTY_ORDER, PROTOCOL
from .store import Store
from .sweep import EXCLUDED, SweepSpec, chosen, excluded, run, select_best

GROUP = ("penalty", "label_noise")


def set_threads(threads: int | None) -> int:
    """Intra-op threads of this process's torch (None: leave torch's default). On a small shared
    CPU one thread is much faster than two when other processes compete for the cores (spin-waiting
    threads). Sweeps with strategy "processes" set one thread per worker by themselves."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


# ---- the sweep
def load_sweep(path: str, classes: Sequence[int | str] | None = None,
               seeds: Sequence[int] | int | None = None) -> SweepSpec:
    """The sweep file a notebook takes as its one `sweep` parameter (`params/<profile>/*_sweep.yaml`,
    the format `python -m mulreg sweep` runs; a relative path is relative to the working
    directory), with another binary class pair when `classes` is given (names or indices 0-9) and
    other seeds when `seeds` is given (one or a list; every run config validates its own)."""
    spec = SweepSpec.from_yaml(path)
    base, grid = dict(spec.base), dict(spec.grid)
    if classes is not None:
        base["classes"] = list(classes)
    if seeds is not None:
        grid["seed"] = list(seeds) if isinstance(seeds, (list, tuple)) else [seeds]
    return spec.model_copy(update={"base": base, "grid": grid})


def run_sweep(spec: SweepSpec, progress: bool = True) -> pd.DataFrame:
    """Train what the store lacks (`mulreg.sweep.run`) and say in words what happened."""
    store = spec.open_store()
    configs = spec.configs()
    pending = sum(not store.is_complete(c.key()) for c in configs)
    start = time.perf_counter()
    runs = run(spec, progress=progress)
    seconds = time.perf_counter() - start
    n_excluded = runs["stop_reason"].isin(EXCLUDED).sum() if len(runs) else 0
    print(f"{len(configs)} runs in the sweep: {len(configs) - pending} found in {store.root}, "
          f"{pending} trained now in {seconds:.0f} s; {n_excluded} excluded (diverged or at chance level).")
    print(provenance_note(runs))
    return runs


def provenance_note(runs: pd.DataFrame) -> str:
    """Which commit(s) and device(s) produced `runs`; a warning when there is more than one."""
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
    if len(commits) > 1 or len(devices) > 1:
        return ("WARNING: these runs come from more than one commit or device; numbers may not be comparable. "
                + text)
    return text


# ---- the selection rule and the runs behind it
def select(runs: pd.DataFrame, metric: str = HEADLINE, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """The paper's selection rule (`mulreg.sweep.select_best`), penalties in the paper's order."""
    best = select_best(runs, metric=metric, by=tuple(by))
    return _order(best)


def chosen_runs(runs: pd.DataFrame, best: pd.DataFrame, by: Sequence[str] = GROUP,
                metric: str = HEADLINE) -> pd.DataFrame:
    """The runs (not excluded) of the λ chosen for each group."""
    return _order(chosen(runs, best, by, metric))


def group_stats(runs: pd.DataFrame, quantities: Iterable[str], by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Tidy mean, std (over seeds), min, max and n of each quantity per group: the format
    `mulreg.paper.compare` and the plots take (columns quantity, <by>, value, std, min, max, n)."""
    rows = []
    for q in quantities:
        g = runs.groupby(list(by))[q].agg(["mean", "std", "min", "max", "count"]).reset_index()
        rows.append(g.rename(columns={"mean": "value", "count": "n"}).assign(quantity=q))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return _order(out)


def headline_stats(chosen: pd.DataFrame, quantities: Iterable[str] = ()) -> pd.DataFrame:
    """`group_stats` of the headline rule's test accuracy (`mulreg.epochs.HEADLINE`), named
    `test_acc` as in the paper's tables, and of `quantities` (of the stored weights)."""
    stats = group_stats(chosen, [HEADLINE, *quantities])
    return stats.assign(quantity=stats["quantity"].replace({HEADLINE: "test_acc"}))


def selection_table(best: pd.DataFrame, percent: bool = True) -> pd.DataFrame:
    """`select`'s table for reading: chosen λ, mean ± std, runs used / excluded."""
    out = best.copy()
    scale = 100 if percent else 1
    out["penalty"] = out["penalty"].map(lambda p: PENALTY_NAMES.get(p, p))
    out["mean ± std"] = [
        "—" if pd.isna(m) else f"{scale * m:.2f} ± {scale * s:.2f}" if pd.notna(s) else f"{scale * m:.2f}"
        for m, s in zip(best["mean"], best["std"])]
    out["λ"] = ["—" if pd.isna(v) else ("0" if v == 0 else f"{v:.0e}") for v in best["lam"]]
    out["runs used"] = best["n_used"].fillna(0).astype(int)
    cols = [c for c in ("penalty", "label_noise") if c in out] + ["λ", "mean ± std", "runs used", "n_runs", "n_excluded"]
    return out[cols].rename(columns={"n_runs": "runs in group", "n_excluded": "excluded"})


def epoch_rules(runs: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Test accuracy per group under each epoch rule (`mulreg.epochs.RULES`), the paper's selection
    rule applied to each: columns rule, <by>, lam, mean, std, n_used."""
    parts = []
    for metric, label in RULES.items():
        if metric in runs:
            parts.append(select(runs, metric=metric, by=by).assign(rule=label, metric=metric))
    return pd.concat(parts, ignore_index=True)


def thin_choices(runs: pd.DataFrame, rules: pd.DataFrame, by: Sequence[str] = GROUP) -> list[str]:
    """Sentences for every choice of `epoch_rules` whose λ stands on fewer runs than it has: the
    paper discards runs that stay at chance level, so a λ where some seeds never learn is judged
    on the seeds that did, which flatters it."""
    out = []
    for r in rules.dropna(subset=["lam"]).itertuples():
        same = np.all([np.isclose(runs[k], getattr(r, k)) if runs[k].dtype.kind == "f" else runs[k] == getattr(r, k)
                       for k in (*by, "lam")], axis=0)
        total = int(same.sum())
        if r.n_used < total:
            out.append(f"{r.rule}: {PENALTY_NAMES[r.penalty]} at label noise {r.label_noise:g} is λ={r.lam:.0e} on "
                       f"{r.n_used:.0f} of its {total} runs; the other {total - r.n_used:.0f} stayed at chance level "
                       "(or diverged) and, as in the paper, are left out, so this mean is over the runs that learned.")
    return out


def epoch_rules_wide(rules: pd.DataFrame, by: Sequence[str] = GROUP, percent: bool = True) -> pd.DataFrame:
    """`epoch_rules` as one column per rule (mean ± std, chosen λ in brackets)."""
    scale = 100 if percent else 1
    cell = [("—" if pd.isna(m) else f"{scale * m:.2f} ± {0 if pd.isna(s) else scale * s:.2f} (λ={lam:.0e})"
             if lam else f"{scale * m:.2f} ± {0 if pd.isna(s) else scale * s:.2f}")
            for m, s, lam in zip(rules["mean"], rules["std"], rules["lam"].fillna(0))]
    wide = rules.assign(cell=cell).pivot(index=list(by), columns="rule", values="cell")
    wide = _order(wide[[r for r in RULES.values() if r in wide.columns]].reset_index())
    wide["penalty"] = wide["penalty"].map(lambda p: PENALTY_NAMES.get(p, p))
    wide.columns.name = None
    return wide


def with_paper_rule(runs: pd.DataFrame, hist: pd.DataFrame, patience: int) -> pd.DataFrame:
    """`runs` with the paper's literal epoch rule (`mulreg.epochs.paper_rule`) read off each run's
    history: `test_acc_paper` and the epoch it stops at, `paper_stop_epoch`."""
    picked = {key: paper_rule(h.sort_values("epoch"), patience) for key, h in hist.groupby("key")}
    return runs.assign(test_acc_paper=runs["key"].map(lambda k: picked.get(k, (np.nan, np.nan))[0]),
                       paper_stop_epoch=runs["key"].map(lambda k: picked.get(k, (np.nan, np.nan))[1]))


def paper_rule_note(runs: pd.DataFrame, patience: int) -> str:
    """A sentence on where the paper's literal rule stopped: how many runs it stopped while still at
    chance level (before their escape epoch), which a patience shorter than the plateau does."""
    kept = runs[~excluded(runs)]
    early = kept[kept["paper_stop_epoch"] < kept["escape_epoch"]]
    stops = kept["paper_stop_epoch"]
    return (f"The paper's rule with patience {patience} stopped the {len(kept)} runs that left chance level at "
            f"epochs {stops.min():.0f}-{stops.max():.0f} (median {stops.median():.0f}) of {kept['epochs'].max():.0f}; "
            f"{len(early)} of them while still in their chance plateau.")


def memorisation(runs: pd.DataFrame, noise: float | None = None) -> pd.DataFrame:
    """Per penalty and λ at label noise `noise` (default: the highest): the fraction of flipped
    training labels the final model fits (mean, min and max over seeds), of clean ones, and how
    many runs were at chance level."""
    noise = runs["label_noise"].max() if noise is None else noise
    part = runs[np.isclose(runs["label_noise"], noise)]
    # a run at chance level "fits" about half of any labels by guessing: it is counted, not averaged
    learned = part[~excluded(part, "train_acc_flipped")]
    fit = learned.groupby(["penalty", "lam"]).agg(
        flipped_fit=("train_acc_flipped", "mean"), flipped_fit_min=("train_acc_flipped", "min"),
        flipped_fit_max=("train_acc_flipped", "max"), clean_fit=("train_acc_clean", "mean"))
    counts = part.groupby(["penalty", "lam"]).agg(
        runs=("key", "size"), at_chance=("stop_reason", lambda r: int((r == "chance_level").sum())))
    return _order(counts.join(fit).reset_index().assign(label_noise=noise))


def memorisation_sentence(fit: pd.DataFrame) -> str:
    """How much of the flipped labels the unregularised runs fit at the end (from `memorisation`),
    and the other penalties' λ beside them."""
    if fit.empty or fit["flipped_fit"].isna().all():
        return "No label noise in this sweep: nothing to memorise."
    noise = fit["label_noise"].iloc[0]
    none = fit[fit["penalty"] == "none"]
    head = ("no unregularised run" if none.empty else
            f"the unregularised runs fit {100 * none['flipped_fit'].iloc[0]:.1f} % of their flipped training labels "
            f"(seeds {100 * none['flipped_fit_min'].iloc[0]:.1f}-{100 * none['flipped_fit_max'].iloc[0]:.1f} %)")
    others = [f"{PENALTY_NAMES[r.penalty]} λ={r.lam:.0e}: {100 * r.flipped_fit:.1f} %"
              for r in fit[fit["penalty"] != "none"].itertuples() if pd.notna(r.flipped_fit)]
    return f"At label noise {noise:g}, at the end of training, {head}; " + "; ".join(others) + "."


def escape_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The epoch at which each run left chance level, one row per penalty and λ, one column per
    (label noise, seed); 'never' for runs that stayed at chance for all their epochs."""
    cell = runs.assign(escape=[("never" if pd.isna(e) else f"{e:.0f}") + f" / {n:.0f}"
                               for e, n in zip(runs["escape_epoch"], runs["epochs"])])
    wide = cell.pivot_table(index=["penalty", "lam"], columns=["label_noise", "seed"], values="escape", aggfunc="first")
    wide.columns = [f"noise {n:g}, seed {s}" for n, s in wide.columns]
    return _order(wide.reset_index())


def escape_summary(runs: pd.DataFrame) -> list[str]:
    """One sentence per penalty: which λ never left chance, and the median escape epoch of the others."""
    out = []
    for pen, g in _order(runs).groupby("penalty", sort=False):
        never = g[g["escape_epoch"].isna()].groupby("lam").size()
        left = g.dropna(subset=["escape_epoch"])
        by_lam = left.groupby("lam")["escape_epoch"].median().sort_index(ascending=False)
        parts = [f"λ={lam:.0e}: median epoch {e:.0f}" if lam else f"median epoch {e:.0f}" for lam, e in by_lam.items()]
        text = f"{PENALTY_NAMES[pen]}: left chance at " + ("; ".join(parts) or "no λ")
        if len(never):
            text += f". Never left chance in {g['epochs'].max():.0f} epochs: " + ", ".join(
                f"λ={lam:.0e} ({n} of {int((g['lam'] == lam).sum())} runs)" for lam, n in never.items())
        out.append(text + ".")
    return out


# ---- per-run data from the store
def histories(store: Store | str, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch histories of `runs`, long, with penalty, λ, label noise and seed attached."""
    store = Store(store) if isinstance(store, str) else store
    if not len(runs):
        return pd.DataFrame()
    hist = store.load_histories(list(runs["key"]))
    info = runs[["key", "penalty", "lam", "label_noise", "seed"]]
    return _order(hist.merge(info, on="key"))


MARGIN_KINDS = {
    "unit_norm": "y·f(x) of the network with unit-norm layers, biases untouched (PAPER.md, 'Metrics')",
    "output_std": "y·f(x) / std over the test set of f(x) (the authors' code)",
}


def margins(store: Store | str, runs: pd.DataFrame, kind: str = "unit_norm", root=None) -> pd.DataFrame:
    """Test-set margins of `runs`, one row per test image and run: `kind` "unit_norm" reads the
    stored margins of the unit-norm network; "output_std" evaluates the reported model on the
    test set and divides y·f(x) by the std of f(x) (the authors' normalisation, whose mean is the
    store's `margin_std_mean`)."""
    from .data import pool_for

    store = Store(store) if isinstance(store, str) else store
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
    return _order(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame(
        columns=["margin", "correct", "penalty", "label_noise", "seed", "lam"])


def unit_norm_check(m: pd.DataFrame) -> str:
    """A sentence on whether unit-norm margins (`margins(kind="unit_norm")`) still depend on the
    image: with biases left untouched, the weight path of the unit-norm network is scaled down by
    Π‖W_i‖_F while the biases are not, so when Π‖W‖ is large its output is almost a constant."""
    if m.empty:
        return "No margins to check."
    # binary margins are y·f(x): with f constant they are ±f, so look at |margin| = |f(x)|
    per_run = m.assign(size=m["margin"].abs()).groupby(["penalty", "label_noise", "seed"])["size"]
    spread = per_run.std().median()
    size = per_run.mean().median()
    if size > 0 and spread < 0.01 * size:
        return (f"Warning: the unit-norm network's output hardly depends on the image (median std of "
                f"|margin| over test images {spread:.2g} vs median |margin| {size:.2g}): the untouched biases "
                "dominate the unit-norm "
                "network's output, so their mean mostly reflects the biases and the class balance, not "
                "how well test points are separated. The y·f(x)/std(f) margins below do not have this problem.")
    return (f"The unit-norm network's output varies with the image (median std of |margin| over test "
            f"images {spread:.2g}, median |margin| {size:.2g}).")


def representatives(runs: pd.DataFrame, by: Sequence[str] = GROUP, metric: str = "test_acc") -> pd.DataFrame:
    """One run per group: the seed with the highest `metric` among `runs` (e.g. `chosen_runs`),
    for tables of one network (Table 1) and the spectra."""
    if not len(runs):
        return runs
    idx = runs.groupby(list(by))[metric].idxmax()
    return _order(runs.loc[idx.values])


def rank_table(runs: pd.DataFrame, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1 from one run per penalty (`representatives` at one noise level): rows are layers,
    then Σ‖W‖² and Π‖W‖; columns are (rank|norm, penalty). Ranks of all seeds of the chosen λ
    (min–max) come from `rank_ranges`."""
    layers = list(layers or [c[5:] for c in runs.columns if c.startswith("rank_")])
    table = {}
    for r in runs.to_dict("records"):
        pen = r["penalty"]
        table[("rank", pen)] = [r[f"rank_{l}"] for l in layers] + [np.nan, np.nan]
        table[("‖W‖_F", pen)] = [r[f"norm_{l}"] for l in layers] + [r["norm_sq_sum"], r["norm_product"]]
    out = pd.DataFrame(table, index=layers + ["Σ‖W‖²", "Π‖W‖"])
    return out.reindex(columns=sorted(out.columns, key=lambda c: (c[0] != "rank", PENALTY_ORDER.index(c[1]))))


def rank_tidy(runs: pd.DataFrame, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """The numbers of `rank_table` in the tidy format of `mulreg.paper.compare` (source table1)."""
    layers = list(layers or [c[5:] for c in runs.columns if c.startswith("rank_")])
    rows = []
    for r in runs.to_dict("records"):
        base = {"penalty": r["penalty"], "label_noise": r["label_noise"], "n": 1}
        for l in layers:
            rows.append({**base, "quantity": "rank", "layer": l, "value": r[f"rank_{l}"]})
            rows.append({**base, "quantity": "norm", "layer": l, "value": r[f"norm_{l}"]})
        rows.append({**base, "quantity": "norm_sq_sum", "layer": None, "value": r["norm_sq_sum"]})
        rows.append({**base, "quantity": "norm_product", "layer": None, "value": r["norm_product"]})
    return pd.DataFrame(rows)


def rank_ranges(runs: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """min–max of each layer's effective rank over the seeds of the chosen λ."""
    cols = [c for c in runs.columns if c.startswith("rank_")]
    g = runs.groupby(list(by))[cols]
    lo, hi = g.min(), g.max()
    out = pd.DataFrame({c[5:]: [f"{a:.0f}" if a == b else f"{a:.0f}–{b:.0f}" for a, b in zip(lo[c], hi[c])]
                        for c in cols}, index=lo.index).reset_index()
    out["seeds"] = g.size().values
    return _order(out)


def spectra(store: Store | str, runs: pd.DataFrame) -> pd.DataFrame:
    """Singular values of every layer of each run's reported weights (conv kernels reshaped to
    out × in·kh·kw), long: penalty, label_noise, seed, layer, index, sv, sv_rel (÷ the largest)."""
    store = Store(store) if isinstance(store, str) else store
    parts = []
    for r in runs.itertuples():
        model = store.load(r.key).model()
        for name, w in zip(layer_names(model), M.weight_matrices(model)):
            s = M.singular_values(w).numpy()
            parts.append(pd.DataFrame({"penalty": r.penalty, "label_noise": r.label_noise, "seed": r.seed,
                                       "layer": name, "index": np.arange(1, len(s) + 1), "sv": s,
                                       "sv_rel": s / s[0] if s[0] > 0 else s}))
    return _order(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame()


def norm_loss_correlation(runs: pd.DataFrame, by: str | None = "label_noise",
                          loss: str = "test_loss") -> pd.DataFrame:
    """Correlation across runs of the final `loss` with log Π‖W‖ and with log Σ‖W‖² (Pearson on
    the logs, and Spearman), overall and per `by` value. Excluded runs are left out."""
    keep = runs[~excluded(runs)].copy()
    keep["log10 Π‖W‖"] = np.log10(keep["norm_product"])
    keep["log10 Σ‖W‖²"] = np.log10(keep["norm_sq_sum"])
    groups = [("all", keep)] + ([(v, g) for v, g in keep.groupby(by)] if by else [])
    rows = []
    for label, g in groups:
        row = {by or "group": label, "runs": len(g)}
        for col, short in (("log10 Π‖W‖", "Π"), ("log10 Σ‖W‖²", "Σ")):
            ok = len(g) > 2 and g[col].nunique() > 1 and g[loss].nunique() > 1
            row[f"pearson {short}"] = g[loss].corr(g[col]) if ok else np.nan
            row[f"spearman {short}"] = g[loss].corr(g[col], method="spearman") if ok else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# ---- landscape helpers
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
    values, `mulreg.paper.FIG3_LAMBDA`). A run the sweep lacks is trained with `spec`'s base
    config when `spec` is given."""
    out = {}
    for pen in ("sum", "mul"):
        if lam and lam.get(pen) is not None:
            value = float(lam[pen])
        else:
            row = best[(best["penalty"] == pen) & np.isclose(best["label_noise"], label_noise)]
            if row.empty or pd.isna(row["lam"].iloc[0]):
                raise LookupError(f"no {PENALTY_NAMES[pen]} run survived at label noise {label_noise}; "
                                  "give its λ explicitly")
            value = float(row["lam"].iloc[0])
        match = runs[(runs["penalty"] == pen) & np.isclose(runs["lam"], value)
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


def sharpness_table(flat: pd.DataFrame, radii: Sequence[float]) -> pd.DataFrame:
    """Long table (model, radius, mean, std) of the loss increase at each radius, from rows of
    `mulreg.landscape.flatness` indexed by model name."""
    rows = [{"model": name, "radius": r, "mean": row[f"sharpness_r{r:g}"], "std": row.get(f"sharpness_r{r:g}_std")}
            for name, row in flat.iterrows() for r in radii]
    return pd.DataFrame(rows)


def flatness_verdict(flat: pd.DataFrame, additive: str, multiplicative: str) -> pd.DataFrame:
    """For every flatness number of `flat` (rows: models), the additive and multiplicative values,
    their ratio (additive / multiplicative; > 1 means the multiplicative model is flatter for
    sharpness-like numbers) and which is flatter."""
    rows = []
    for col in flat.columns:
        if col in ("loss", "acc") or col.endswith("_std") or col.endswith("_se"):
            continue
        a, m = flat.loc[additive, col], flat.loc[multiplicative, col]
        # the top eigenvalue is the largest in magnitude; the other numbers are signed loss increases
        # or curvature sums, where smaller means flatter
        ka, km = (abs(a), abs(m)) if col == "hessian_top" else (a, m)
        flatter = "—" if pd.isna(a) or pd.isna(m) or a == m else ("multiplicative" if km < ka else "additive")
        rows.append({"measure": col, "additive": a, "multiplicative": m,
                     "additive / multiplicative": a / m if m else np.nan, "flatter": flatter})
    return pd.DataFrame(rows)


def flatness_sentences(verdicts: pd.DataFrame) -> list[str]:
    """The paper's Fig. 3 claim checked against `flatness_verdict` tables (with a `weights`
    column: raw / rebalanced): by how many measures the multiplicative model is flatter."""
    from .paper import FIG3_CLAIM

    def names(who):
        d = verdicts[verdicts["flatter"] == who]
        return ", ".join(d["measure"] + (" (" + d["weights"] + ")" if "weights" in d else "")) or "none"

    n_mul = int((verdicts["flatter"] == "multiplicative").sum())
    return [f"Paper: {FIG3_CLAIM}. Here the multiplicative model is flatter by {n_mul} of {len(verdicts)} "
            f"measures: {names('multiplicative')}.",
            f"The additive model is flatter by: {names('additive')}."]


def describe_runs(pair: dict[str, pd.Series], names: dict[str, str]) -> pd.DataFrame:
    """One row per run of `landscape_pair`: name, store key, test accuracy, norms, epochs."""
    return pd.DataFrame([{"model": names[p], "key": r.key, "test acc": r.test_acc, "Π‖W‖": r.norm_product,
                          "Σ‖W‖²": r.norm_sq_sum, "epochs": r.epochs} for p, r in pair.items()])


def landscape_data(config, n_images: int, split: str = "train", root=None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A fixed, unshuffled subset for landscapes and flatness: the first `n_images` images of the
    run's training split in data-set order, with its (possibly noisy) training targets, or of
    the test set. Returns (x, y, description)."""
    from .data import pool_for, split_run

    pool = pool_for(config, root)
    if split == "test":
        x, y = pool.x_test[:n_images], pool.targets(pool.y_test[:n_images])
        return x, y, f"first {len(x)} test images (clean labels)"
    data = split_run(pool, config.seed, config.label_noise, config.val_fraction)
    idx = data.train_idx.sort().values[:n_images]
    y = pool.targets(data.labels)[idx]
    return pool.x_train[idx], y, (f"first {len(idx)} images of the training split (seed {config.seed}, "
                                  f"data-set order, training labels with noise {config.label_noise:g})")


def forward_throughput(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Images per second of one model's plain forward pass (eval mode, no gradients), for
    comparison with the batched grid evaluation."""
    M.predict(model, x[:64])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        M.predict(model, x, batch=len(x))
    return repeats * len(x) / (time.perf_counter() - start)


# ---- claims in words
def verdict(stats: pd.DataFrame, quantity: str = "test_acc", source: str = "fig1",
            by: str = "label_noise") -> list[str]:
    """Sentences comparing the multiplicative with the additive and unregularised groups for
    `quantity` (from `group_stats`), next to the paper's gaps; a gap within one std over seeds
    (or measured on one seed) is called out as not resolved."""
    from .paper import published

    pub = published(source)
    pub = pub[pub["quantity"] == quantity]
    d = stats[stats["quantity"] == quantity]
    pct = quantity.endswith("acc")
    unit, scale = (" pp", 100) if pct else ("", 1)
    out = []
    for level in sorted(d[by].unique()) if len(d) else []:
        here = d[np.isclose(d[by], level)].set_index("penalty")
        there = pub[np.isclose(pub[by], level)].set_index("penalty") if by in pub else pub.set_index("penalty")
        if "mul" not in here.index:
            out.append(f"{by} {level:g}: no multiplicative run survived; nothing to compare.")
            continue
        parts = []
        for other in ("sum", "none"):
            if other not in here.index:
                continue
            gap = scale * (here.loc["mul", "value"] - here.loc[other, "value"])
            spread = scale * np.nanmax([here.loc["mul", "std"], here.loc[other, "std"], 0])
            n = int(min(here.loc["mul", "n"], here.loc[other, "n"]))
            paper_gap = (scale * (there.loc["mul", "value"] - there.loc[other, "value"])
                         if {"mul", other} <= set(there.index) else np.nan)
            resolved = ("one seed only, so the gap's spread is unknown" if n < 2 else
                        "larger than one std over seeds" if abs(gap) > spread else
                        f"within one std over seeds ({spread:.2f}{unit}): not resolved")
            paper_txt = "" if np.isnan(paper_gap) else f"; paper {paper_gap:+.2f}{unit}"
            parts.append(f"vs {PENALTY_NAMES[other]} {gap:+.2f}{unit} ({resolved}{paper_txt})")
        better = all(here.loc["mul", "value"] > here.loc[o, "value"] for o in ("sum", "none") if o in here.index)
        head = "multiplicative is best" if better else "multiplicative is NOT best"
        out.append(f"{by} {level:g}: {head}; " + "; ".join(parts) + ".")
    return out


def norm_ratios(stats: pd.DataFrame) -> list[str]:
    """Sentences with Π(additive)/Π(multiplicative) and Π(none)/Π(additive) per noise level (from
    `group_stats(..., ["norm_product"])`), next to the paper's Table 1 ratios (clean labels)."""
    from .paper import TABLE1_NORM_PRODUCT as P

    pi = stats[stats["quantity"] == "norm_product"].pivot(index="label_noise", columns="penalty", values="value")
    out = []
    for noise, row in pi.iterrows():
        add_mul = row.get("sum", np.nan) / row.get("mul", np.nan)
        none_add = row.get("none", np.nan) / row.get("sum", np.nan)
        out.append(f"label noise {noise:g}: Π(additive)/Π(multiplicative) = {add_mul:.3g} (paper, clean: "
                   f"{P['sum'] / P['mul']:.3g}); Π(none)/Π(additive) = {none_add:.3g} (paper, clean: "
                   f"{P['none'] / P['sum']:.3g})")
    return out


def dynamics_summary(hist: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Per group, from the per-epoch histories: Π‖W‖ and Σ‖W‖² at the last epoch (mean over seeds)
    and their change over the second half of training (log10 ratio of the last epoch to the middle
    one), to check Fig. 2's words ('Σ keeps rising while Π stays flat' for the multiplicative run)."""
    rows = []
    for keys, g in hist.sort_values("epoch").groupby(list(by)):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,)))
        for metric in ("norm_product", "norm_sq_sum"):
            per_run = g.groupby("key")[metric]
            last = per_run.last()
            middle = per_run.apply(lambda s: s.iloc[len(s) // 2])
            row[f"{metric} last"] = last.mean()
            row[f"{metric} log10 change, 2nd half"] = np.log10(last / middle).mean()
        row["epochs"] = g.groupby("key")["epoch"].max().mean()
        rows.append(row)
    return _order(pd.DataFrame(rows))


# ---- profiles
def reduction_notes(profile: str, spec: SweepSpec) -> str:
    """A sentence saying how a profile's sweep departs from the paper's protocol
    (`mulreg.paper.PROTOCOL`), or that it follows it."""
    configs = spec.configs()
    c = configs[0]
    paper = PROTOCOL[c.task]
    lams = [sum(1 for x in configs if x.penalty == p and x.seed == c.seed and x.label_noise == c.label_noise)
            for p in ("sum", "mul")]
    used = {"n_train": c.n_train or paper["n_train"], "n_test": c.n_test or paper["n_test"],
            "max_epochs": c.max_epochs, "seeds": len({x.seed for x in configs}), "lambdas": min(lams),
            "width": c.model.width, "init_scale": c.init_scale, "lr": c.lr, "batch_size": c.batch_size}
    names = {"n_train": "training images (pool before the 80/20 split)", "n_test": "test images",
             "max_epochs": "epochs at most", "seeds": "seeds", "lambdas": "λ values per penalty",
             "width": "× the channel width", "init_scale": "init scale", "lr": "learning rate",
             "batch_size": "batch size"}
    diffs = [f"{used[k]:g} instead of {paper[k]:g} {label}" for k, label in names.items()
             if k in paper and used[k] != paper[k]]
    noise = tuple(sorted({x.label_noise for x in configs}))
    if noise != tuple(paper["label_noise"]):
        diffs.append(f"label noise {list(noise)} instead of {list(paper['label_noise'])}")
    es = c.early_stopping
    if es is None:
        diffs.append("no early stopping (every epoch recorded; epoch rules applied afterwards) instead of "
                     f"patience {paper['patience']}")
    elif es.patience != paper["patience"]:
        diffs.append(f"{es.patience} instead of {paper['patience']} epochs of early-stopping patience")
    if not diffs:
        return f"Profile '{profile}' follows the paper's {c.task} protocol in every size checked here."
    return (f"Profile '{profile}' is a REDUCED version of the paper's {c.task} protocol: " + "; ".join(diffs)
            + ". Numbers below are therefore not expected to match the paper's digits; docs/PROFILES.md says why.")


def _order(df: pd.DataFrame) -> pd.DataFrame:
    """Penalties in the paper's order (mul, sum, none), then the rest of the rows as they were."""
    if df.empty or "penalty" not in df:
        return df.reset_index(drop=True)
    rank = df["penalty"].map({p: i for i, p in enumerate(PENALTY_ORDER)})
    sort = ["_rank"] + [c for c in ("label_noise",) if c in df]
    return df.assign(_rank=rank).sort_values(sort, kind="stable").drop(columns="_rank").reset_index(drop=True)
