"""How many runs one stack holds: which runs may share a stack (`group_key`, `vectorizable`), and
how many fit on this machine's device (`stack_size`, from a run's measured `footprint`). Used by the
engine, the sweep's planning and the Ray executor."""

from __future__ import annotations

import torch

from mulreg.config import RunConfig
from mulreg.core.devices import resolve_device
from mulreg.core.models import build_model

MAX_STACK = 128  # runs in one stack at most
FREE_SHARE = 0.5  # of a GPU's free memory a stack may fill; the rest for workspaces, evaluation and the allocator

_FOOTPRINTS: dict[tuple, int] = {}  # group_key → bytes, measured once per process


def group_key(config: RunConfig) -> tuple:
    """Runs with equal keys can be trained in one stack. The device is the configured string, so a
    driver without the device (a GPU-less Ray head) can plan groups for workers that have it."""
    return (config.task, config.classes, config.batch_size, config.n_train, config.n_test, config.val_fraction,
            config.model, config.optimizer, config.depth_normalization,
            config.features_normalization, config.device, config.compile, config.compile_mode, config.deterministic,
            config.memory_format, config.effective_lr, config.flush_denormal)


def vectorizable(config: RunConfig) -> bool:
    """vmap cannot batch batch-norm running statistics or dropout's randomness per run."""
    return not config.model.batch_norm and config.model.dropout == 0


def stack_size(config: RunConfig) -> int:
    """Runs per stack on this machine: large on a GPU, where one batch of 16 leaves it idle (half its
    free memory over the run's measured `footprint`); 1 on a CPU, where stacking runs made training
    slower (docs/PERFORMANCE.md) and worker processes win instead; 1 for runs that cannot be stacked."""
    device = resolve_device(config.device)
    if not vectorizable(config) or device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(MAX_STACK, free * FREE_SHARE // footprint(config))))


def footprint(config: RunConfig) -> int:
    """Bytes one run adds to a stack, measured once per `group_key`: its weights, gradients and
    optimiser state, one batch, and every tensor the forward pass (with the penalty's weights) saves
    for the backward pass, counted by autograd's saved-tensor hooks on a CPU forward of one batch."""
    key = group_key(config)
    if key not in _FOOTPRINTS:
        _FOOTPRINTS[key] = _measure_footprint(config)
    return _FOOTPRINTS[key]


def _measure_footprint(config: RunConfig) -> int:
    model = build_model(config)
    params = list(model.parameters())
    moments = 2 if config.optimizer == "adam" else 1  # Adam's m and v, SGD's momentum buffer
    fixed = sum(p.numel() * p.element_size() for p in params) * (2 + moments)  # weights, gradients, optimiser
    x = torch.zeros(config.batch_size, 3, 32, 32)
    seen = {t.untyped_storage().data_ptr() for t in [*params, x]}  # counted apart
    saved = 0

    def pack(t: torch.Tensor):
        nonlocal saved
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, weights = model(x, with_weights=True)
        out.square().mean() + sum(w.square().sum() for w in weights)  # the objective: what it saves, not its value
    return fixed + x.numel() * x.element_size() + saved
