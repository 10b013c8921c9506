"""The state the engine trains: one run's own (`RunState`: config, data view, epoch, history,
early stopping) and several runs' tensors stacked along a leading run axis (`Stack`), whose
positions, the slots, are refilled as runs stop (`mulreg.engine.train.train_group`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_map

from mulreg.config import RunConfig
from mulreg.core.epochs import CHANCE
from mulreg.engine.loop import LOSSES
from mulreg.protocols import PENALIZED, Penalty, StopReason

OLD_OPTIMIZER_KEY = "slots"  # what checkpoints written before 2026-11-29 call the optimiser state


@dataclass
class RunState:
    """One run's own state between stacks: its config, data view, epoch, history, early stopping."""

    config: RunConfig
    targets: torch.Tensor  # training-pool targets after label noise
    flipped: torch.Tensor  # 1.0 where label noise flipped the training-pool label, else 0.0
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    state: dict  # "params", "buffers", "optimizer" (its state: momentum or Adam's moments), unstacked
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: float | None = None
    best_epoch: int = 0
    best_state: dict | None = None
    stop_epoch: int | None = None  # `train_past_stop`: the epoch early stopping fired, training went on
    stop_state: dict | None = None  # ... and the model reported from there (the best epoch's with restore_best)
    test_correct: list[torch.Tensor] = field(default_factory=list)  # per epoch: test images right, bits packed
    stop_reason: str | None = None
    started: float = field(default_factory=time.time)  # when this process began (or resumed) training it
    first_started: float | None = None  # when its first process began it (checkpoints keep it; None: not known)
    start_epoch: int = 0

    def begin(self) -> None:
        """The run takes a slot: this process's share of it starts now, and a fresh run's first start."""
        self.started = time.time()
        if self.epoch == 0:
            self.first_started = self.started

    def capture(self, stack: Stack) -> None:
        """Copy this run's row of the stack back into `state`."""
        k = stack.slot_of(self)
        self.state = {part: {n: t[k].detach().clone() for n, t in tensors.items()}
                      for part, tensors in stack.tensors().items()}

    def checkpoint(self, stack: Stack) -> dict:
        self.capture(stack)
        fields = ("epoch", "history", "best", "best_epoch", "best_state", "stop_epoch", "stop_state", "state",
                  "test_correct", "first_started")
        return tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t,
                        {f: getattr(self, f) for f in fields})

    def escaped(self) -> float:
        """The epoch this run left chance level (`mulreg.core.epochs.escape_epoch`), inf before it has."""
        above = CHANCE[self.config.task] + self.config.chance_margin
        return next((i + 1 for i, row in enumerate(self.history) if row["train_acc"] > above), math.inf)

    def observe(self, row: dict, weights_k: dict, test_correct: torch.Tensor) -> None:
        """Record one epoch and apply divergence, early stopping and the epoch limit."""
        self.epoch += 1
        self.history.append(row)
        self.test_correct.append(test_correct)
        es = self.config.early_stopping
        if not all(math.isfinite(row[c]) for c in LOSSES if c in row):
            self.stop_reason = StopReason.DIVERGED
            return
        if self.config.epochs_after_escape and self.epoch - self.escaped() >= self.config.epochs_after_escape:
            self.stop_reason = StopReason.AFTER_ESCAPE
        if es is not None and not self.stop_reason and self.stop_epoch is None:
            value = row[es.monitor] * (-1 if es.monitor.endswith("acc") else 1)  # lower is better
            if self.best is None or value < self.best - es.min_delta:
                self.best, self.best_epoch = value, self.epoch
                self.best_state = {n: t.detach().clone() for n, t in weights_k.items()}
            elif self.epoch - self.best_epoch >= es.patience:
                self._stopped(weights_k)
        if not self.stop_reason and self.epoch >= self.config.max_epochs:
            self.stop_reason = StopReason.MAX_EPOCHS


    def _stopped(self, weights_k: dict) -> None:
        """Early stopping fired: the run ends, or with `train_past_stop` keeps the model it reports and trains on."""
        if not self.config.train_past_stop:
            self.stop_reason = StopReason.EARLY_STOPPED
            return
        self.stop_epoch = self.epoch
        restore = self.config.early_stopping.restore_best
        self.stop_state = self.best_state if restore else {n: t.detach().clone() for n, t in weights_k.items()}


class Stack:
    """Parameters, buffers and optimiser state of several runs, stacked along dimension 0 (one row
    per slot: a position in the stack), and the facts that decide what a training step does with
    them, taken over the whole `group` of runs that may ever fill a slot: `batched` (vmap over the
    run axis, else a plain call on the one run), `heavy_ball` (momentum buffers, only when a run has
    μ > 0), `augment`, and which penalties have a λ. A slot whose run stopped with no run left to take
    it stays `live` False: its run stays in place, masked with zero learning rate and λ, and records
    nothing."""

    def __init__(self, runs: list[RunState], device: torch.device, vectorize: bool, group: list[RunState]):
        self.runs, self.live = list(runs), [True] * len(runs)
        for run in runs:
            run.begin()

        def stacked(part):
            return {n: torch.stack([r.state[part][n] for r in runs]).to(device) for n in runs[0].state[part]}

        self.params = stacked("params")
        self.buffers = stacked("buffers")
        self.optimizer = stacked("optimizer")
        self.targets = torch.stack([r.targets for r in runs])
        self.flipped = torch.stack([r.flipped for r in runs])
        self.n_flipped = torch.stack([r.flipped[r.train_idx].sum() for r in runs])  # in each training split
        self.val_idx = torch.stack([r.val_idx for r in runs]).to(device)  # equal lengths: one group_key
        # the penalty kinds with a λ (L1 only where a run uses it)
        self.kinds = [k for k in PENALIZED if k != Penalty.L1 or any(r.config.penalty == k for r in group)]
        per_slot = [self._hyper(r) for r in runs]
        self.hyper = {h: torch.stack([values[h] for values in per_slot]).to(device) for h in per_slot[0]}
        self.batched = vectorize and len(runs) > 1
        self.augment = any(r.config.augment for r in group)
        self.effective_lr = runs[0].config.effective_lr  # one value per group (`group_key`)
        self.heavy_ball = any(r.config.momentum > 0 for r in group)

    def _hyper(self, run: RunState | None) -> dict[str, torch.Tensor]:
        """Learning rate, momentum and λ of each penalty kind for one slot; all 0 for an idle one."""
        names = ["lr", "momentum", *(f"lam_{k}" for k in self.kinds)]
        if run is None:
            return {h: torch.tensor(0.0) for h in names}
        c = run.config
        values = (c.lr, c.momentum, *(c.lam * (c.penalty == k) for k in self.kinds))
        return {h: torch.tensor(float(v)) for h, v in zip(names, values)}

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"params": self.params, "buffers": self.buffers, "optimizer": self.optimizer}

    def static_tensors(self) -> list[torch.Tensor]:
        """Every stacked tensor a step or evaluation reads, each updated only in place."""
        per_part = [t for tensors in self.tensors().values() for t in tensors.values()]
        return [*per_part, *self.hyper.values(), self.targets, self.flipped, self.n_flipped, self.val_idx]

    def slot_of(self, run: RunState) -> int:
        return next(k for k, r in enumerate(self.runs) if r is run)

    def live_runs(self) -> list[RunState]:
        return [r for r, live in zip(self.runs, self.live) if live]

    @torch.no_grad()
    def replace(self, run: RunState, new: RunState | None) -> None:
        """`new` takes `run`'s slot, its state copied into the stacked rows; None idles the slot."""
        k = self.slot_of(run)
        for h, value in self._hyper(new).items():
            self.hyper[h][k] = value
        if new is None:
            self.live[k] = False
            return
        new.begin()
        for part, tensors in self.tensors().items():
            for n, t in tensors.items():
                t[k] = new.state[part][n]
        self.targets[k], self.flipped[k] = new.targets, new.flipped
        self.val_idx[k] = new.val_idx
        self.n_flipped[k] = new.flipped[new.train_idx].sum()
        self.runs[k] = new


def upgraded(checkpoint: dict) -> dict:
    """A checkpoint as this code reads it: older ones named the optimiser state `OLD_OPTIMIZER_KEY` and
    did not keep when the run first started (None: not known)."""
    state = dict(checkpoint["state"])
    if OLD_OPTIMIZER_KEY in state:
        state["optimizer"] = state.pop(OLD_OPTIMIZER_KEY)
    return checkpoint | {"state": state, "first_started": checkpoint.get("first_started")}
