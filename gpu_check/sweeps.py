"""Items e and f: one epoch of each notebook-06 arm (params/quick/regularisers_sweep.yaml), and the quick
binary sweep (params/quick/binary_sweep.yaml, both stages) end to end in its own process."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from gpu_check.environment import Skip
from gpu_check.plan import ROOT
from gpu_check.text import last_lines, oneline


def arms(w, arm: int | None, compile: bool) -> dict:
    from mulreg.engine.sizing import group_key, vectorizable
    from mulreg.engine.sweep import SweepSpec, expand

    if arm is None:
        raise Skip("params/quick/regularisers_sweep.yaml could not be read")
    spec = SweepSpec.from_yaml(ROOT / "params/quick/regularisers_sweep.yaml")
    s = w.sz["e"]
    configs = expand(spec.base, {**spec.grid, **spec.arms[arm]}) if spec.arms else spec.configs()
    changes = dict(device=w.device, compile=compile, max_epochs=s["epochs"])
    if s["n_train"]:
        changes |= dict(n_train=s["n_train"], n_test=s["n_test"])
    configs = [c.replace(**changes) for c in configs]
    first = [c for c in configs if group_key(c) == group_key(configs[0])]
    stack = (first if vectorizable(first[0]) else first[:1])[: s.get("most")]
    run = w.timed(stack, s["epochs"])
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


def sweep(w) -> dict:
    from mulreg.engine import stages
    from mulreg.engine.store import Store
    from mulreg.engine.sweep import SweepSpec

    path, store = sweep_file(w)
    spec = SweepSpec.from_yaml(path)
    planned = stages.all_configs(spec)
    timeout = w.left() - 8
    if timeout < 10:
        raise Skip(f"allowance spent before it started ({w.left():.0f} s left)")
    rc, wall, text = run_sweep(path, w.work / "sweep.log", timeout)
    done = [k for k in Store(store).keys() if Store(store).is_complete(k)] if store.exists() else []
    if rc == 0:
        planned = stages.all_configs(spec)  # now with the confirmation plan the selection stage wrote
        return {"value": wall, "notes": f"{len(done)} runs ({len(planned)} planned, "
                                        f"{sum(c.max_epochs for c in planned)} run-epochs) trained and stored "
                                        f"in {wall:.0f} s (one process; start-up, data and compilation included)"}
    if rc is not None:
        raise Skip(f"the sweep exited with {rc}: {last_lines(text)}")
    total_epochs = sum(c.max_epochs for c in planned)
    epochs_done, how = sweep_progress(text, store, len(done), spec)
    if not epochs_done:
        return {"value": wall, "status": "partial",
                "notes": f"stopped at the allowance after {wall:.0f} s: {len(done)} of {len(planned)} runs stored, "
                         f"no progress to extrapolate from yet ({how}); log: {last_lines(text)}"}
    return {"value": wall * total_epochs / epochs_done, "status": "partial",
            "notes": f"extrapolated: stopped at the allowance after {wall:.0f} s with {len(done)} of {len(planned)} "
                     f"runs stored and {epochs_done} of {total_epochs} run-epochs done ({how}); "
                     f"{wall:.0f} s × {total_epochs}/{epochs_done} (compilation counted once, so an upper bound)"}


def sweep_file(w) -> tuple[Path, Path]:
    """The quick binary sweep as the check runs it: on this device, a store in the work folder; smaller
    where sizes say so; on a CPU a dry run of the GPU path: eager, one inline stack, fewer runs."""
    import yaml

    from mulreg.config import load_yaml

    values = load_yaml(ROOT / "params/quick/binary_sweep.yaml")
    store = w.work / f"store-{int(time.time())}"
    values["store"] = str(store)
    values["base"]["device"] = w.device
    s = w.sz["f"]
    if s:
        values["base"] |= {k: s[k] for k in ("max_epochs", "n_train", "n_test")}
    if not w.cuda:  # every stage and store step, on one seed and one λ per penalty (9 runs, not 32)
        values["base"]["compile"] = False
        values |= {"strategy": "inline", "group_size": 32}
        grid = values["grid"]
        grid["seed"] = grid["seed"][:1]
        grid["lam"] = {kind: lams[:1] for kind, lams in grid["lam"].items()}
        values["confirmation"]["seeds"] = values["confirmation"]["seeds"][:1]
    path = w.work / "quick_binary_sweep.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path, store


def run_sweep(path: Path, log: Path, timeout: float) -> tuple[int | None, float, str]:
    """`python -m mulreg sweep path` in a session of its own: (exit code or None if killed, wall s, log)."""
    from gpu_check.parent import kill_group

    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "mulreg", "sweep", str(path)], stdout=f,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = None
    return rc, time.time() - t0, log.read_text(errors="replace")


def sweep_progress(text: str, store: Path, runs_done: int, spec) -> tuple[int, str]:
    """Run-epochs the killed sweep had done: from its `epochs` progress bar (one per stage), else from
    its checkpoints (every `checkpoint_every` epochs) and stored runs."""
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

        ckpt = Store(store).checkpoints()
        epochs = sum(int((ckpt.load(k) or {}).get("epoch", 0)) for k in
                     [p.stem for p in (store / "checkpoints").glob("*.pt")])
        return epochs + runs_done * spec.base.get("max_epochs", 0), "from checkpoints and stored runs"
    except Exception as err:  # noqa: BLE001
        return 0, f"no progress readable: {oneline(err)}"
