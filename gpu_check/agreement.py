"""Item a: the engine (mulreg.engine.train) against the plain loop (mulreg.engine.loop.train_plain, on
the CPU) on one config.

Two float32 computations of the same SGD drift apart at rounding level until a ReLU pre-activation
lands on the other side of 0 in one of them: from there the gradients differ by a step and the runs
by ~1e-4 (seen on the CPU after ~100-150 steps of this config). So the value is reported per epoch,
and on a GPU beside the CPU engine's own distance from the loop (the first row on CUDA)."""

from __future__ import annotations

import time

from gpu_check.environment import Skip

TESTS_TOL = (1e-4, 1e-6)  # rtol, atol of the engine/loop comparisons in tests/test_train.py (CPU)
GPU_TOL = (1e-3, 1e-5)  # what this check calls agreement on a GPU (other kernels, reduction orders)


def agreement(w, compile: bool, device: str | None = None) -> dict:
    from mulreg.engine.loop import train_plain
    from mulreg.engine.train import train

    s = w.sz["a"]
    cfg = w.config(n_train=s["n_train"], n_test=s["n_test"], max_epochs=s["epochs"], init_scale=1.0, lr=0.01,
                   penalty="sum", lam=5e-4, label_noise=0.2, compile=compile, device=device or w.device)
    if "plain" not in w.cache:
        t = time.time()
        w.cache["plain"] = (*train_plain(cfg.replace(device="cpu", compile=False)), time.time() - t)
    model, ref, plain_s = w.cache["plain"]
    if compile:
        w.torch._dynamo.reset()
    t = time.time()
    result = train(cfg, progress=False)
    engine_s = time.time() - t
    d = distances(w.torch, model, ref, result)
    status, verdict = judge(w, d, cfg.device == "cpu" and not compile)
    where = cfg.device + (f", cuDNN TF32 {'on' if w.torch.backends.cudnn.allow_tf32 else 'off'}"
                          if cfg.device == "cuda" else "")
    notes = (f"final weights: max |Δw| {d['w_abs']:.2e} ({d['w_abs'] / d['w_scale']:.1e} of max |w|); history max "
             f"|Δ| by epoch {', '.join(f'{v:.1e}' for v in d['by_epoch'])} (worst column {d['worst']}); {verdict}; "
             f"{where}; plain loop {plain_s:.1f} s, engine {engine_s:.1f} s")
    return {"value": d["w_abs"], "notes": notes, "status": status,
            "details": {"history_max_abs_by_epoch": d["by_epoch"].tolist(), "weights_max_abs": d["w_abs"],
                        "weights_max_rel": d["w_abs"] / d["w_scale"], "within_tests_tolerance": d["tight"],
                        "within_gpu_tolerance": d["loose"]}}


def distances(torch, model, ref, result) -> dict:
    """How far the engine's history and final weights are from the loop's."""
    import numpy as np

    got_hist = result.history
    if len(got_hist) != len(ref) or not set(ref.columns) <= set(got_hist.columns):
        raise Skip(f"histories differ in shape: engine {got_hist.shape} {list(got_hist.columns)}, "
                   f"loop {ref.shape} {list(ref.columns)}")
    diff = np.abs(got_hist[ref.columns].to_numpy(float) - ref.to_numpy(float))  # epochs × columns
    ref_state = {k: v.detach().cpu().double() for k, v in model.state_dict().items()}
    got = {k: v.detach().cpu().double() for k, v in result.state_dict.items()}
    if set(ref_state) != set(got):
        raise Skip(f"state dicts differ in keys: {sorted(set(ref_state) ^ set(got))}")

    def within(rtol, atol):
        return all(torch.allclose(got[k], ref_state[k], rtol=rtol, atol=atol) for k in ref_state) and all(
            np.allclose(got_hist[c].to_numpy(float), ref[c].to_numpy(float), rtol=rtol, atol=atol,
                        equal_nan=True) for c in ref.columns)

    return {"by_epoch": np.nanmax(diff, axis=1), "worst": ref.columns[int(np.nanargmax(np.nanmax(diff, axis=0)))],
            "w_abs": max(float((got[k] - ref_state[k]).abs().max()) for k in ref_state),
            "w_scale": max(float(v.abs().max()) for v in ref_state.values()),
            "tight": within(*TESTS_TOL), "loose": within(*GPU_TOL)}


def judge(w, d: dict, is_cpu_baseline: bool) -> tuple[str, str]:
    """(status, verdict): ok within GPU_TOL or as far as the CPU engine; drifted if epoch 1 agrees."""
    verdict = ("within the CPU tests' tolerance (rtol 1e-4, atol 1e-6)" if d["tight"] else
               "within rtol 1e-3, atol 1e-5 (not the CPU tests' 1e-4/1e-6)" if d["loose"] else
               "outside rtol 1e-3, atol 1e-5")
    status = "ok" if d["loose"] else "differs"
    baseline = w.cache.get("cpu engine")
    if is_cpu_baseline:
        w.cache["cpu engine"] = d["w_abs"]
    elif baseline is not None and not d["loose"] and d["w_abs"] <= 10 * max(baseline, 1e-6):
        status = "ok"
        verdict += f", as far as the CPU engine is ({baseline:.1e}): rounding amplified, not another computation"
    if status == "differs" and d["by_epoch"][0] <= GPU_TOL[0]:
        status = "drifted"
        verdict += ("; epoch 1 agrees, later epochs drift: float rounding amplified by SGD through ReLU kinks "
                    "(the plain loop against itself at 1 vs 2 threads drifts 4e-3 in 150 steps of this config)")
    return status, verdict
