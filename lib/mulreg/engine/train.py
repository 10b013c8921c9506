"""The training engine: K runs trained together as one stacked model.

`train(config)` trains one run; `train_group(configs)` trains several that share data shapes
(same task, batch size, data caps, architecture, optimiser kind) in lock-step: every parameter is
stacked along a leading run axis and the network is applied with `torch.func.vmap` over
`functional_call`, so K batches of 16 become one batched forward/backward pass. Each run keeps its
own init seed, data order, label noise, penalty, λ, learning rate and early stopping; a run that
stops leaves the stack. K = 1 (and models with batch norm or dropout, which `vmap` cannot batch)
take the same path with a plain call instead of `vmap`. A training step (forward, `torch.func.grad`,
update) is one pure function of tensors, which `config.compile` hands to `torch.compile` whole.

What it computes is specified by `mulreg.engine.loop.train_plain`, one run as a plain PyTorch loop; the
tests compare the two on every optimiser and model option. Read that first.

Objective per run (paper, Sec. 4, Eq. 5-6): L = MSE(f(x), y) + λ·R(W), R ∈ {0, R_sum, R_mul, R_log, R_l1}.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import time
import types
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from mulreg import provenance
from mulreg.config import RunConfig
from mulreg.core import metrics
from mulreg.core.data import Pool, augment, augment_draws, generator, pool_for, split_run
from mulreg.core.devices import backend_settings, resolve_device
from mulreg.core.epochs import CHANCE, rule_metrics
from mulreg.core.models import build_model, direction_parameters, layer_names
from mulreg.core.penalties import mixed_penalty
from mulreg.engine.result import Checkpoints, RunResult
from mulreg.engine.sizing import group_key, vectorizable
from mulreg.engine.stack import RunState, Stack, upgraded
from mulreg.progress import bar as progress_bar
from mulreg.protocols import EFF_LR, NORM, PENALIZED, StopReason

EVAL_IMAGES = 4096  # images (summed over runs) per evaluation forward pass
MIN_EVAL_CHUNK = 256  # images per run per evaluation pass at least, however many runs a stack holds
STEP_SUMS = 4  # a step's first columns per run: Σ data loss, Σ λR, #correct, #correct among flipped labels
# an epoch's columns per run, in order; then NORM (‖W‖_F) and, when recorded, EFF_LR per layer
TRAIN_COLUMNS = ("train_loss", "penalty_term", "train_acc", "train_acc_flipped", "train_acc_clean")
VAL_COLUMNS = ("val_loss", "val_acc")  # left out of the history of a run without a validation split
TEST_COLUMNS = ("test_loss", "test_acc")


def train(config: RunConfig, *, root=None, checkpoints: Checkpoints | None = None,
          progress: bool = True) -> RunResult:
    """Train one run (see `train_group`)."""
    return train_group([config], root=root, checkpoints=checkpoints, progress=progress)[0]


def train_group(configs: list[RunConfig], *, root=None, checkpoints: Checkpoints | None = None,
                progress: bool = True, on_result=None, on_epochs=None, slots: int | None = None) -> list[RunResult]:
    """Train runs that share a `group_key` together; results come back in the order given, and
    each is also passed to `on_result` as soon as its run stops. `on_epochs(n)` hears of every n
    run-epochs done (a run that stops early counts its remaining epochs as done).

    `slots` runs train at once (default: all of them). When a run stops, the next run in line takes
    its slot at the epoch's end (continuous batching); with none left, the slot idles, masked (zero
    learning rate and λ, no history). The stack keeps one shape from start to end, so a compiled
    step is compiled once; a run's numbers do not depend on its slot or its neighbours."""
    keys = {group_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"train_group needs configs with one group_key, got {len(keys)} different ones")
    if len(configs) > 1 and not all(vectorizable(c) for c in configs):
        raise ValueError("batch norm and dropout cannot be vectorized: train these runs one at a time")
    c0 = configs[0]
    device = resolve_device(c0.device)
    pool = pool_for(c0, root, device)
    engine = _Engine(c0, pool, device)
    runs = [engine.new_run(c, checkpoints) for c in configs]
    waiting = collections.deque(runs)
    stack = engine.stack([waiting.popleft() for _ in range(min(slots or len(runs), len(runs)))], group=runs)
    results: dict[int, RunResult] = {}
    total = sum(r.config.max_epochs for r in runs)
    with progress_bar(total=total, initial=sum(r.epoch for r in runs), unit="epoch", disable=not progress,
                      desc=f"training {len(runs)} run{'s' * (len(runs) > 1)}") as bar:
        def advance(n: int) -> None:
            bar.update(n)
            if on_epochs:
                on_epochs(n)

        while stack.live_runs():
            engine.epoch(stack)
            active = stack.live_runs()
            advance(len(active))
            bar.set_postfix(engine.postfix(active), refresh=False)
            for r in active:
                if checkpoints and r.epoch % checkpoints.every == 0 and not r.stop_reason:
                    checkpoints.save(r.config.key(), r.checkpoint(stack))
            for r in [r for r in active if r.stop_reason]:
                r.capture(stack)
                advance(r.config.max_epochs - r.epoch)
                results[id(r)] = engine.finish(r)
                if on_result:
                    on_result(results[id(r)])
                stack.replace(r, waiting.popleft() if waiting else None)
    return [results[id(r)] for r in runs]


class _Engine:
    """The functions one group of runs shares: model template, objective, steps and evaluation.
    `mulreg.engine.loop.train_plain` is the same computation for one run, written as a plain loop."""

    def __init__(self, config: RunConfig, pool: Pool, device: torch.device):
        self.pool, self.device = pool, device
        self.binary = config.task == "binary"
        self.vectorize = vectorizable(config)
        self.optimizer = config.optimizer
        self.norm_kwargs = dict(depth_normalization=config.depth_normalization,
                                features_normalization=config.features_normalization)
        self.model = build_model(config).to(device)
        self.layers = layer_names(self.model)
        self.columns = (*TRAIN_COLUMNS, *VAL_COLUMNS, *TEST_COLUMNS, *map(NORM.column, self.layers),
                        *(map(EFF_LR.column, self.layers) if config.effective_lr else ()))
        self.directions = direction_parameters(self.model)  # the parameters whose relative update is recorded
        self.compile, self.compile_mode = config.compile, config.compile_mode
        self.memory_format = config.memory_format
        self.rng_devices = [device.index or 0] if device.type == "cuda" else []  # generators fork_rng restores
        if self.compile:
            # inductor warns in every process of a CPU-only machine that it found no CUDA runtime,
            # which says nothing about compiling for the CPU and would litter every notebook report
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self.steps: dict[tuple[bool, ...], Callable] = {}  # (batched, heavy_ball, effective_lr) → compiled step
        self.evaluators: dict[tuple[bool, bool], Callable] = {}  # (batched, shared images) → compiled evaluator
        self.backend = backend_settings(device, config.deterministic, config.flush_denormal)  # in each provenance
        provenance.git_state()  # the commit is read (and cached) when training starts, not when a run ends

    def new_run(self, config: RunConfig, checkpoints: Checkpoints | None) -> RunState:
        data = split_run(self.pool, config.seed, config.label_noise, config.val_fraction)
        flipped = torch.zeros(len(data.labels), device=self.device)
        flipped[data.flipped.to(self.device)] = 1.0
        run = RunState(config, self.pool.targets(data.labels), flipped, data.train_idx, data.val_idx, {})
        saved = checkpoints.load(config.key()) if checkpoints else None
        if saved:
            for name, value in upgraded(saved).items():
                setattr(run, name, value)  # on the CPU until a stack takes it
            run.start_epoch = run.epoch
            return run
        model = build_model(config)  # on the CPU: a run's state reaches the device when a stack takes it
        params = {n: p.detach() for n, p in model.named_parameters()}
        run.state = {
            "params": params,
            "buffers": dict(model.named_buffers()),
            "optimizer": {f"{moment}.{n}": torch.zeros_like(p) for n, p in params.items()
                          for moment in (("m", "v") if self.optimizer == "adam" else ("momentum",))}
            | ({"step": torch.zeros(())} if self.optimizer == "adam" else {}),
        }
        return run

    def stack(self, runs: list[RunState], group: list[RunState]) -> Stack:
        stack = Stack(runs, self.device, self.vectorize, group)
        if self.compile and self.compile_mode == "reduce-overhead":
            # CUDA graphs replay fixed addresses: the step updates these in place and `Stack.replace`
            # copies a new run into them, so their addresses hold for the stack's life
            for tensor in stack.static_tensors():
                torch._dynamo.mark_static_address(tensor)
        return stack

    # ---- one epoch: training steps, then evaluation
    def epoch(self, stack: Stack) -> None:
        train, eff_lr = self._train(stack)
        self.model.eval()  # until the next training steps: batch-norm statistics and dropout left alone
        val, _ = self._evaluate(stack, self.pool.x_train, stack.val_idx)
        test, test_ok = self._evaluate(stack, self.pool.x_test, None)
        weights = _over_runs(self._weights, (0, 0), stack.batched)(stack.params, stack.buffers)
        norms = torch.stack([w.flatten(1).norm(dim=1) for w in weights], 1)  # ‖W_i‖_F per run and layer
        per_run = torch.cat([train, val, test, norms, eff_lr], 1).cpu()  # `self.columns`; one device sync per epoch
        test_ok = torch.from_numpy(np.packbits(test_ok.cpu().numpy(), axis=1))  # 1 bit per test image
        for k, run in enumerate(stack.runs):
            if stack.live[k]:
                row = self._row(run, per_run[k])
                run.observe(row, {n: t[k] for n, t in (stack.params | stack.buffers).items()}, test_ok[k])

    def _train(self, stack: Stack) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over each run's training split in its own seeded order, B samples per step
        (augmented for runs that ask for it); returns per run (mean data loss, mean λR, accuracy,
        accuracy on flipped labels, accuracy on clean labels) over the epoch, against the training
        labels, as seen while training, and each layer's mean relative update (effective lr)."""
        runs, B, n = stack.runs, stack.runs[0].config.batch_size, len(stack.runs[0].train_idx)
        order = torch.stack([r.train_idx[torch.randperm(n, generator=generator(r.config.seed, f"epoch-{r.epoch}"))
                                         .to(self.device)] for r in runs])
        rows = torch.arange(len(runs), device=self.device)[:, None]
        totals = torch.zeros(len(runs), STEP_SUMS + len(self.layers) * stack.effective_lr, device=self.device)
        step = self._step_for(stack)
        draws = None
        if stack.augment:  # crop offsets (K, n, 2) and flips (K, n) of this epoch
            per_run = [augment_draws(r.config.seed, r.epoch, n, r.config.augment) for r in runs]
            draws = tuple(torch.stack(d).to(self.device) for d in zip(*per_run))
        self.model.train()
        with torch.random.fork_rng(devices=self.rng_devices):  # dropout: a per-epoch seed; the caller's RNG untouched
            torch.manual_seed(int(generator(runs[0].config.seed, f"dropout-{runs[0].epoch}").initial_seed()))
            for start in range(0, n, B):
                idx = order[:, start:start + B]
                x, y, flipped = self.pool.x_train[idx], stack.targets[rows, idx], stack.flipped[rows, idx]
                if draws is not None:
                    x = augment(x, draws[0][:, start:start + B], draws[1][:, start:start + B])
                totals += step(stack.params, stack.buffers, stack.optimizer, x, y, flipped, stack.hyper)
        loss, reg, n_correct, n_flipped_correct = totals[:, :STEP_SUMS].unbind(1)
        n_flipped = stack.n_flipped
        return (torch.stack([loss / n, reg / n, n_correct / n, n_flipped_correct / n_flipped,  # 0/0: NaN, no noise
                             (n_correct - n_flipped_correct) / (n - n_flipped)], 1),
                totals[:, STEP_SUMS:] / math.ceil(n / B))

    def _step_for(self, stack: Stack) -> Callable:
        """The training step for this kind of stack, compiled once per kind when config.compile."""
        kind = (stack.batched, stack.heavy_ball, stack.effective_lr)
        if kind not in self.steps:
            self.steps[kind] = self._compiled(functools.partial(self._step, *kind))
        return self.steps[kind]

    def _step(self, batched: bool, heavy_ball: bool, effective_lr: bool, params, buffers, optimizer, x, y, flipped,
              hyper) -> torch.Tensor:
        """One optimiser step of every run k on its batch (x[k], y[k]), in place; returns per run
        (Σ data loss, Σ λR, #correct, #correct among flipped labels) over the batch, then, with
        `effective_lr`, each layer's relative update ‖ΔP‖/‖P‖. A pure function of tensors, so that
        `torch.compile` makes one graph of forward, backward and update."""
        objective = _over_runs(self._objective, (0,) * 6, batched)
        x = _layout(x, self._channels_last(batched))

        def summed(params, buffers):  # Σ_k L_k: the runs share no parameters, so its gradient holds each run's own
            loss, aux = objective(params, buffers, x, y, flipped, hyper)
            return loss.sum(), aux

        grads, (data, reg, counts) = grad(summed, has_aux=True)(params, buffers)  # buffers: batch-norm statistics
        directions = self.directions if effective_lr else []
        before = [params[name].detach().clone() for name in directions]
        self._update(params, optimizer, grads, hyper, heavy_ball)
        moved = [metrics.relative_update(b, params[name])[:, None] for b, name in zip(before, directions)]
        return torch.cat([torch.stack([data * y.shape[1], reg * y.shape[1]], 1), counts, *moved], 1)

    def _objective(self, params, buffers, x, y, flipped, hyper):
        """L = MSE(f(x), y) + λ·R(W) for one run (paper, Sec. 4, Eq. 5-6), with (data loss, λR,
        (#correct, #correct among flipped labels))."""
        out, weights = functional_call(self.model, (params, buffers), (x,), {"with_weights": True})
        data = (out - y).square().mean()
        lams = {kind: hyper[f"lam_{kind}"] for kind in PENALIZED if f"lam_{kind}" in hyper}
        reg = mixed_penalty(weights, lams, **self.norm_kwargs)
        return data + reg, (data, reg, metrics.correct_counts(out, y, flipped, self.binary))

    @torch.no_grad()
    def _update(self, params, optimizer, grads, hyper, heavy_ball: bool) -> None:
        """SGD (with momentum) or Adam, element-wise with each run's own lr and momentum; the same
        arithmetic as torch.optim.SGD / torch.optim.Adam with their defaults."""
        lr, mu = hyper["lr"], hyper["momentum"]
        if self.optimizer == "adam":
            optimizer["step"] += 1
            t = optimizer["step"]
        for name, p in params.items():
            g = grads[name]
            shape = (-1,) + (1,) * (p.dim() - 1)
            if self.optimizer == "sgd" and not heavy_ball:
                p.sub_(lr.view(shape) * g)  # θ ← θ − η g
            elif self.optimizer == "sgd":
                buf = optimizer[f"momentum.{name}"].mul_(mu.view(shape)).add_(g)  # b ← μb + g
                p.sub_(lr.view(shape) * buf)  # θ ← θ − η b
            else:
                m = optimizer[f"m.{name}"].lerp_(g, 0.1)  # m ← β1 m + (1−β1) g, β1 = 0.9
                v = optimizer[f"v.{name}"].mul_(0.999).addcmul_(g, g, value=0.001)  # v ← β2 v + (1−β2) g²
                c1, c2 = (1 - 0.9 ** t).view(shape), (1 - 0.999 ** t).view(shape)
                p.sub_(lr.view(shape) / c1 * m / (v.sqrt() / c2.sqrt() + 1e-8))

    def _loss_and_correct(self, params, buffers, x, y):
        out = functional_call(self.model, (params, buffers), (x,))
        return metrics.squared_error(out, y), metrics.correct(out, y, self.binary)

    def _weights(self, params, buffers):
        x = self.pool.x_test[:1]
        return functional_call(self.model, (params, buffers), (x,), {"with_weights": True})[1]

    def _compiled(self, fn):
        """`torch.compile(fn)` when config.compile: fused kernels, faster training steps after a
        one-off compilation (docs/PERFORMANCE.md). One whole graph (`fullgraph`) behind an entry
        point of its own (`_own_entry`), and a recompilation beyond dynamo's limit raises instead of
        falling back to eager, so a run's numbers never depend on what its process compiled before."""
        if not self.compile:
            return fn
        mode = None if self.compile_mode == "default" else self.compile_mode
        compiled = torch.compile(_own_entry(fn), fullgraph=True, dynamic=False, mode=mode)

        def call(*args):
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                return compiled(*args)

        return call

    def _channels_last(self, batched: bool) -> bool:
        """Whether images go in channels-last: config.memory_format, where "auto" is channels-last for
        one run (faster convolutions on a CPU) and NCHW under vmap (docs/PERFORMANCE.md, "Memory layout")."""
        return not batched if self.memory_format == "auto" else self.memory_format == "channels_last"

    def _row(self, run: RunState, values: torch.Tensor) -> dict:
        """One run's history row: its epoch's values (`epoch`'s columns, in `self.columns`' order)."""
        named = dict(zip(self.columns, values.tolist(), strict=True))
        row = {"epoch": run.epoch + 1} | {c: v for c, v in named.items() if len(run.val_idx) or c not in VAL_COLUMNS}
        return row | metrics.norm_summaries([named[NORM.column(name)] for name in self.layers])

    @torch.no_grad()
    def _evaluate(self, stack: Stack, x_all: torch.Tensor,
                  idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per run: (mean loss, accuracy) on its own indices into `x_all`, or on all of it (the
        model in eval mode), and which images it classified right (runs × images, bool). Chunks of
        equal size, the last padded and its padding masked, so that a compiled evaluator sees one shape."""
        K = len(stack.runs)
        n = len(x_all) if idx is None else idx.shape[1]
        if n == 0:
            return torch.full((K, 2), float("nan"), device=self.device), torch.zeros(K, 0, dtype=torch.bool)
        chunk = _chunk_size(n, max(MIN_EVAL_CHUNK, EVAL_IMAGES // K))
        pick = torch.arange(n + (-n) % chunk, device=self.device).clamp(max=n - 1)  # padded: repeats the last image
        fn = self._evaluator(stack.batched, idx is None)
        rows = torch.arange(K, device=self.device)[:, None]
        y_all = self.pool.targets(self.pool.y_test) if idx is None else None
        sums = torch.zeros(K, 2, device=self.device)
        right = []
        for s in range(0, n, chunk):
            sel, real = pick[s:s + chunk], torch.arange(s, s + chunk, device=self.device) < n
            if idx is None:
                x, y = x_all[sel], y_all[sel]
            else:
                sel = idx[:, sel]
                x, y = x_all[sel], stack.targets[rows, sel]
            loss, ok = fn(stack.params, stack.buffers, _layout(x, self._channels_last(stack.batched)), y)
            sums += torch.stack([torch.where(real, loss, 0).sum(-1), torch.where(real, ok.float(), 0).sum(-1)], 1)
            right.append(ok.reshape(K, -1).clone())  # a CUDA graph's replay would overwrite its outputs
        return sums / n, torch.cat(right, 1)[:, :n]

    def _evaluator(self, batched: bool, shared_images: bool) -> Callable:
        """(loss, correct) per run and image, compiled once per kind: one image set for all runs
        (the test set) or each run's own (its validation split)."""
        kind = (batched, shared_images)
        if kind not in self.evaluators:
            in_dims = (0, 0, None, None) if shared_images else (0, 0, 0, 0)
            self.evaluators[kind] = self._compiled(_over_runs(self._loss_and_correct, in_dims, batched))
        return self.evaluators[kind]

    def postfix(self, runs: list[RunState]) -> dict:
        last = runs[0].history[-1]
        if len(runs) == 1:
            return {"epoch": runs[0].epoch, "loss": f"{last['train_loss']:.4f}", "test_acc": f"{last['test_acc']:.3f}"}
        return {"active": len(runs), "epoch": max(r.epoch for r in runs)}

    # ---- after the last epoch
    def finish(self, run: RunState) -> RunResult:
        """Final metrics of the reported weights: the best epoch's if restore_best, else the last; with
        `train_past_stop`, those of the epoch early stopping fired (or its best), trained past."""
        es = run.config.early_stopping
        restore = es is not None and es.restore_best and run.best_state is not None
        weights = run.best_state if restore else run.state["params"] | run.state["buffers"]
        reported = run.best_epoch if restore else run.epoch
        if run.stop_state is not None:
            weights, reported = run.stop_state, run.best_epoch if es.restore_best else run.stop_epoch
        model = build_model(run.config).to(self.device)
        model.load_state_dict(weights)
        history = pd.DataFrame(run.history)
        chance = CHANCE[run.config.task]
        final = metrics.reported_metrics(model, self.pool, run.train_idx, run.targets, run.flipped)
        final |= rule_metrics(history, chance, run.config.chance_margin)
        final |= {"epochs": run.epoch, "reported_epoch": reported}
        if run.config.train_past_stop:
            final["stop_epoch"] = math.nan if run.stop_epoch is None else run.stop_epoch
        reason = run.stop_reason
        if reason != StopReason.DIVERGED and math.isnan(final["escape_epoch"]):
            reason = StopReason.CHANCE_LEVEL
        margins = final.pop("_margins")
        return RunResult(run.config, history, final, reason,
                         {n: t.cpu() for n, t in model.state_dict().items()}, margins, self._provenance(run),
                         _unpacked(run.test_correct, len(self.pool.x_test)) if len(run.test_correct) == run.epoch
                         else None)  # None: resumed from a checkpoint written before test images were recorded

    def _provenance(self, run: RunState) -> dict:
        """Code, versions and device, and this process's share of the run: times and throughput."""
        end = time.time()
        images = (run.epoch - run.start_epoch) * len(run.train_idx)
        first = None if run.first_started is None else provenance.timestamp(run.first_started)
        times = (first, provenance.timestamp(run.started), provenance.timestamp(end), end - run.started,
                 images / max(end - run.started, 1e-9))
        return provenance.environment(self.device) | self.backend | dict(zip(provenance.TIMES, times))


def _over_runs(fn, in_dims: tuple, batched: bool):
    """fn over the run axis: vmap, or a plain call on run 0 for a single or unbatchable run."""
    if batched:
        return vmap(fn, in_dims=in_dims)

    def single(*args):
        first = [tree_map(lambda t: t[0], a) if d == 0 else a for a, d in zip(args, in_dims)]
        return tree_map(lambda t: t.unsqueeze(0), fn(*first))

    return single


def _unpacked(packed: list[torch.Tensor], n: int) -> np.ndarray:
    """Epochs × `n` bool from one packed row of bits per epoch."""
    return np.unpackbits(torch.stack(packed).numpy(), axis=1, count=n).astype(bool)


def _chunk_size(n: int, most: int) -> int:
    """The size of ⌈n / most⌉ equal chunks covering n images: the last one pads at most a few."""
    return math.ceil(n / math.ceil(n / most))


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images (N, C, H, W) shared by the runs, or stacked per run (K, N, C, H, W), in channels-last
    memory when asked: a stack is stored as (N, H, W, K, C), so that vmap's grouped convolution, which
    views it as (N, K·C, H, W), and each single run, which takes its row, both see channels-last."""
    if not channels_last:
        return x
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)


def _own_entry(fn: Callable) -> Callable:
    """`fn` behind a function whose code object is new. Dynamo keeps compiled graphs per code
    object for the whole process, and counts them against its recompile limit (8): every engine's
    steps and evaluators would otherwise share a few code objects (`_step`, `_over_runs.single`,
    vmap's wrapper), so a long-lived worker training many kinds of run would pass the limit."""
    def entry(*args):
        return fn(*args)

    return types.FunctionType(entry.__code__.replace(), entry.__globals__, "entry", None, entry.__closure__)
