"""What the check measures, in which order, with which share of the time (no torch here: the parent
plans the table before any worker has started).

An item (a-f) is a question; its rows come in two passes. The first pass ("a", "b", ... units) holds
what matters most with a cold compile cache (each compiled row then costs 30-60 s on a GPU):
engine-vs-loop agreement, eager and compiled throughput at the stack the quick sweep would use,
CUDA-graph capture, peak memory, the quick sweep's wall time. The second pass ("b+", ...) holds the
rest: other stack sizes, memory formats, compiled agreement, notebook 06's arms. UNITS gives the order
and each unit's share of the budget; `--items` takes items (both passes) or units ("b+")."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ITEMS = {  # item: title
    "env": "environment and synthetic data",
    "a": "engine vs plain loop agreement",
    "b": "binary throughput",
    "c": "CUDA graphs (compile_mode reduce-overhead)",
    "d": "peak memory vs footprint estimate",
    "e": "notebook-06 arms, one epoch each",
    "f": "quick binary sweep end to end",
}
UNITS = {  # unit: share of the time budget, in the order run (first pass, then second)
    "env": 0.03, "a": 0.10, "b": 0.14, "c": 0.09, "d": 0.04, "f": 0.18,
    "b+": 0.13, "a+": 0.05, "c+": 0.04, "d+": 0.03, "e": 0.17,
}
SWEEP_K = "sweep"  # K resolved by the worker: the runs the quick binary sweep stacks on this device


def item_of(unit: str) -> str:
    return unit.rstrip("+")


def units_for(names: list[str]) -> list[str]:
    """The units to run, in UNITS' order: "env" always, an item's two passes, or a unit by name."""
    wanted = set(names) | {"env"}
    return [u for u in UNITS if u in wanted or item_of(u) in wanted]


def sizes(short: bool, cuda: bool) -> dict:
    """What each item trains: full on a GPU, small on a CPU (--cpu), tiny with --short."""
    if short:
        return dict(data=(200, 60), a=dict(n_train=80, n_test=40, epochs=2),
                    b=dict(n_train=80, n_test=40, warm=1, timed=1, ks=(1, 2), format_ks=(1,),
                           compiled_ks=(2, 1), compiled_format_ks=(2,)),
                    c=dict(ks=(2, 1), n_train=80, n_test=40, epochs=2), d=dict(ks=(1, 2), n_train=80, n_test=40),
                    e=dict(n_train=40, n_test=20, epochs=1, most=2), f=dict(max_epochs=1, n_train=80, n_test=40))
    if cuda:
        return dict(data=(5000, 1000), a=dict(n_train=2000, n_test=1000, epochs=3),
                    b=dict(n_train=2000, n_test=1000, warm=1, timed=2, ks=(SWEEP_K, 128, 1, 64, 16),
                           format_ks=(1, 64), compiled_ks=(SWEEP_K, 128, 1), compiled_format_ks=(64,)),
                    c=dict(ks=(SWEEP_K, 1), n_train=2000, n_test=1000, epochs=3),
                    d=dict(ks=(SWEEP_K, 1, 16, 64, 128), n_train=2000, n_test=1000),
                    e=dict(n_train=None, n_test=None, epochs=2), f=dict())
    return dict(data=(1000, 300), a=dict(n_train=400, n_test=200, epochs=2),
                b=dict(n_train=300, n_test=150, warm=1, timed=2, ks=(1, 2), format_ks=(1,),
                       compiled_ks=(), compiled_format_ks=()),
                c=dict(ks=(1,), n_train=200, n_test=100, epochs=2), d=dict(ks=(1, 4), n_train=400, n_test=200),
                e=dict(n_train=100, n_test=50, epochs=2, most=2), f=dict(max_epochs=1, n_train=160, n_test=80))


def arms_of_sweep() -> list[dict]:
    """Notebook 06's arms as written in params/quick/regularisers_sweep.yaml ([] if unreadable)."""
    try:
        import yaml

        arms = yaml.safe_load((ROOT / "params/quick/regularisers_sweep.yaml").read_text()).get("arms") or [{}]
        return [dict(a) for a in arms]
    except Exception:  # noqa: BLE001 - the worker reports the real error when it expands the file
        return []


def arm_label(i: int, arm: dict) -> str:
    parts = [f"{k}={v}" for k, v in arm.items() if k != "lam"]
    return f"arm {i}: " + (", ".join(parts) if parts else "binary grid (none, sum, mul)")


def plan(unit: str, device: str, short: bool) -> list[dict]:
    """The rows `unit` measures on `device` ("cuda" or "cpu"), in the order measured. Each row: item,
    setting (its name in the table), unit of the value, device, params (what the worker does)."""
    item = item_of(unit)
    return [r for r in item_rows(item, device, short) if r.pop("unit_name") == unit]


def item_rows(item: str, device: str, short: bool) -> list[dict]:
    """Every row of `item`, each with the unit ("b" or "b+") it is measured in."""
    rows: list[dict] = []

    def add(setting: str, unit: str, later: bool = False, **params) -> None:
        rows.append({"item": item, "setting": f"{device} {setting}", "unit": unit, "device": device,
                     "params": params, "unit_name": item + "+" * later})

    BUILDERS[item](add, device == "cuda", sizes(short, device == "cuda"), short)
    return rows


def _env(add, cuda: bool, sz: dict, short: bool) -> None:
    add("environment", "", what="env")


def _agreement(add, cuda: bool, sz: dict, short: bool) -> None:
    s = sz["a"]
    steps = (s["n_train"] - round(0.2 * s["n_train"])) // 16 * s["epochs"]
    what = f"vs plain loop (CPU), {steps} steps, n_train {s['n_train']}"
    if cuda:  # how far the engine on this host's CPU is from the loop: the scale for the GPU rows
        add(f"baseline: engine on this host's CPU, eager, {what}", "max |Δ|", compile=False, device="cpu")
    add(f"eager {what}", "max |Δ|", compile=False)
    if cuda:  # a CPU dry run compiles nothing (a cold compile costs minutes on a loaded 2-core CPU)
        add(f"compiled {what}", "max |Δ|", later=True, compile=True)


def _throughput(add, cuda: bool, sz: dict, short: bool) -> None:
    """Eager, then compiled, at each K (the first K in the first pass: on CUDA the stack the quick sweep
    would use); then the memory formats and, on CUDA, deterministic algorithms."""
    s = sz["b"]
    unit = "images·runs/s"
    compiled = s["compiled_ks"] if cuda else ()  # a CPU dry run compiles nothing (a cold compile: minutes)
    for n, k in enumerate(s["ks"]):
        add(f"eager K={k} memory_format=auto", unit, later=n > 0, k=k, compile=False, memory_format="auto")
        if k in compiled:
            add(f"compiled K={k} memory_format=auto", unit, later=n > 0, k=k, compile=True, memory_format="auto")
    for fmt in ("channels_last", "contiguous"):
        for k in s["format_ks"]:
            add(f"eager K={k} memory_format={fmt}", unit, later=True, k=k, compile=False, memory_format=fmt)
        for k in s["compiled_format_ks"] if cuda else ():
            add(f"compiled K={k} memory_format={fmt}", unit, later=True, k=k, compile=True, memory_format=fmt)
    if cuda:
        k = s["format_ks"][-1]
        add(f"eager K={k} memory_format=auto deterministic", unit, later=True, k=k, compile=False,
            memory_format="auto", deterministic=True)


def _graphs(add, cuda: bool, sz: dict, short: bool) -> None:
    if cuda:  # a CPU captures no CUDA graphs
        for n, k in enumerate(sz["c"]["ks"]):
            add(f"compiled reduce-overhead K={k}", "CUDA graphs recorded", later=n > 0, k=k)


def _memory(add, cuda: bool, sz: dict, short: bool) -> None:
    if not cuda:
        add("footprint estimate per run (binary, batch 16)", "MiB", what="footprint")
        return
    ks = sz["d"]["ks"]
    add(f"eager K={ks[0]}: peak allocated during train_group", "MiB", k=ks[0], compile=False)
    add("stack_size (runs per stack the engine picks here)", "runs", what="stack_size")
    for k in ks[1:]:
        add(f"eager K={k}: peak allocated during train_group", "MiB", later=True, k=k, compile=False)
    add(f"compiled K={ks[0]}: peak allocated during train_group", "MiB", later=True, k=ks[0], compile=True)


def _arms(add, cuda: bool, sz: dict, short: bool) -> None:
    mode = "compiled" if cuda else "eager"
    arms = arms_of_sweep()
    for i, arm in enumerate(arms):
        add(f"{mode} {arm_label(i, arm)}", "s/epoch", arm=i, compile=cuda)
    if not arms:
        add(f"{mode} arms of params/quick/regularisers_sweep.yaml", "s/epoch", arm=None, compile=cuda)


def _sweep(add, cuda: bool, sz: dict, short: bool) -> None:
    if cuda and not short:
        add("params/quick/binary_sweep.yaml, both stages, as written (compiled)", "s")
        return
    s = sz["f"]
    add(f"params/quick/binary_sweep.yaml, both stages, max_epochs {s['max_epochs']}, n_train {s['n_train']}"
        f"{', compiled' if cuda else ', one seed and one λ per penalty, eager, one inline stack'}", "s")


BUILDERS = {"env": _env, "a": _agreement, "b": _throughput, "c": _graphs, "d": _memory, "e": _arms, "f": _sweep}
