"""Items b and c: training throughput of a stack of K runs (eager, compiled, each memory format), and
CUDA-graph capture with compile_mode "reduce-overhead"."""

from __future__ import annotations

import logging

from gpu_check.environment import engine_reads
from gpu_check.text import oneline


def throughput(w, k, compile: bool, memory_format: str, deterministic: bool = False) -> dict:
    s = w.sz["b"]
    n = w.k(k)
    run = w.timed(w.stack(n, n_train=s["n_train"], n_test=s["n_test"], compile=compile,
                          memory_format=memory_format, deterministic=deterministic), s["warm"] + s["timed"])
    steady = sum(run["epoch_s"][s["warm"]:]) / s["timed"]
    first = run["epoch_s"][0]
    notes = (f"{s['timed']} epochs of {run['images']} images × {n} runs after {s['warm']} warm-up: "
             f"{steady:.2f} s/epoch (evaluation included; CUDA synchronised at each epoch's end); first epoch "
             f"{first:.1f} s" + (f" (≈ {first - steady:.0f} s compiling)" if compile else ""))
    if k != n:
        notes = f"K={k}: {n} runs, the quick binary sweep's largest stack here; " + notes
    if "peak_mib" in run:
        notes += f"; peak {run['peak_mib']:.0f} MiB"
    if memory_format != "auto" and not engine_reads("memory_format"):
        notes += "; NB mulreg.engine does not read memory_format: the layout is the engine's default"
    return {"value": n * run["images"] / steady, "notes": notes,
            "details": {"k": n, "epoch_s": run["epoch_s"], "steady_epoch_s": steady, "peak_mib": run.get("peak_mib")}}


class _Catch(logging.Handler):
    """Keeps the first line of every log record about CUDA graphs."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        text = record.getMessage()
        if "cudagraph" in record.name.lower() or "cudagraph" in text.lower() or "cuda graph" in text.lower():
            self.messages.append(text.strip().splitlines()[0][:300])


def graphs(w, k) -> dict:
    torch = w.torch
    s = w.sz["c"]
    n = w.k(k)
    catch = _Catch()
    # torch._inductor and torch._dynamo do not pass their records on to "torch": each gets the handler
    loggers = [logging.getLogger(name) for name in ("torch", "torch._inductor", "torch._dynamo")]
    for logger in loggers:
        logger.addHandler(catch)
    try:
        torch._logging.set_logs(cudagraphs=True)
    except Exception as err:  # noqa: BLE001
        catch.messages.append(f"(torch._logging.set_logs(cudagraphs=True) failed: {oneline(err)})")
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # (timed() resets again: harmless) and it clears the cudagraph trees, where it does
    counters.clear()
    before = recorded(torch) if w.cuda else 0
    try:
        run = w.timed(w.stack(n, n_train=s["n_train"], n_test=s["n_test"], compile=True,
                              compile_mode="reduce-overhead"), s["epochs"])
        inductor = {key: v for key, v in counters.get("inductor", {}).items() if "cudagraph" in key}
        graphs_now = recorded(torch) if w.cuda else 0
        if isinstance(graphs_now, int) and isinstance(before, int):
            graphs_now -= before  # trees an older torch's reset() kept
    finally:
        for logger in loggers:
            logger.removeHandler(catch)
        _quietly(torch._logging.set_logs)
    return _graph_row(w, n, run, inductor, graphs_now, list(dict.fromkeys(catch.messages)))


def _graph_row(w, n: int, run: dict, inductor: dict, graphs_now, messages: list[str]) -> dict:
    skips = inductor.get("cudagraph_skips", 0)
    steady = sum(run["epoch_s"][1:]) / max(1, len(run["epoch_s"]) - 1)
    if not w.cuda:
        verdict = "no CUDA graphs on a CPU (inductor skips them); the counters are read as on a GPU"
    elif isinstance(graphs_now, int) and graphs_now > 0:
        verdict = "CUDA graphs captured, no skips" if not skips else f"some graphs captured, {skips} skipped"
    else:
        verdict = f"not captured ({skips} skips)"
    notes = (f"K = {n}; {verdict}; inductor counters {inductor or '{}'}; {n * run['images'] / steady:,.0f} "
             f"images·runs/s after the first epoch ({run['epoch_s'][0]:.0f} s)")
    if messages:
        notes += "; messages: " + " | ".join(messages[:3])
    return {"value": graphs_now, "notes": notes,
            "details": {"counters": inductor, "messages": messages[:20], "epoch_s": run["epoch_s"]}}


def recorded(torch):
    """CUDA graphs the cudagraph-tree manager of this device recorded (walks its trees)."""
    try:
        from torch._inductor import cudagraph_trees

        manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    except Exception as err:  # noqa: BLE001
        return f"unknown: torch {torch.__version__} lacks torch._inductor.cudagraph_trees.get_manager ({oneline(err)})"
    if manager is None:
        return 0
    roots = getattr(manager, "roots", None)
    if roots is None:
        return f"unknown: the manager of torch {torch.__version__} has no roots"
    seen, todo = 0, [node for nodes in roots.values() for node in nodes]
    while todo:
        node = todo.pop()
        seen += 1
        todo += [c for nodes in getattr(node, "children", {}).values() for c in nodes]
    return seen


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - restoring torch's log settings is best effort
        pass
