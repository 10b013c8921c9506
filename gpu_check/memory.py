"""Item d: peak GPU memory of a K-run stack against the footprint estimate × K, and the stack size the
engine picks on this GPU.

What the estimate counts (mulreg.engine.sizing.footprint, measured on a CPU forward pass of one
batch): weights, gradients, optimiser slots, one batch and the tensors autograd saves. What it leaves
out: the evaluation pass's activations (a chunk of max(MIN_EVAL_CHUNK, EVAL_IMAGES // K) images per
run, × K), cuDNN's workspace and the allocator's rounding; so measured/estimate reads above 1, and
each row says by how much and why."""

from __future__ import annotations

from gpu_check.environment import eval_chunk, sizing

LEFT_OUT = ("the estimate leaves out evaluation activations (one chunk of {chunk}) and cuDNN's workspace "
            "(and the allocator's rounding), so measured/estimate reads high")


def memory(w, k=None, compile: bool = False, what: str = "peak") -> dict:
    footprint, stack_size, where = sizing()
    s = w.sz["d"]
    config = w.config(n_train=s["n_train"], n_test=s["n_test"])
    per_run = footprint(config)
    if what == "footprint":
        _, formula = eval_chunk(1)
        return {"value": per_run / 2**20,
                "notes": f"{where}.footprint: weights, gradients, optimiser slots, one batch and saved tensors of a "
                         f"CPU forward pass; {LEFT_OUT.format(chunk=formula + ' images at K = 1')}; peak memory "
                         "needs CUDA"}
    if what == "stack_size":
        free, total = w.torch.cuda.mem_get_info()
        return {"value": stack_size(config),
                "notes": f"{where}.stack_size: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free, "
                         f"footprint {per_run / 2**20:.2f} MiB per run"}
    n = w.k(k)
    run = w.timed(w.stack(n, n_train=s["n_train"], n_test=s["n_test"], compile=compile), 1)
    estimate = per_run * n / 2**20
    _, formula = eval_chunk(n)
    notes = (f"K = {n}; estimate {where}.footprint × K = {estimate:.1f} MiB; measured/estimate "
             f"{run['peak_mib'] / estimate:.2f}; {LEFT_OUT.format(chunk=formula + ' images')}; peak counted above "
             "what was allocated before the call (the data pool was already on the GPU)")
    return {"value": run["peak_mib"], "notes": notes,
            "details": {"k": n, "footprint_bytes": per_run, "estimate_mib": estimate, "eval_chunk": formula}}
