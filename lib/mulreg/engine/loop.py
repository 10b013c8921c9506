"""What the engine computes, as one plain loop: a single run, an `nn.Module`, the paper's objective,
torch.optim, evaluation after every epoch, early stopping.

This loop is the specification. `mulreg.engine.train` computes the same numbers for many runs at
once (parameters stacked along a run axis, `vmap`, one compiled step, its own SGD/Adam arithmetic),
and tests/test_train.py checks it against `train_plain` on every optimiser and model option. To try
an idea (a schedule, another loss), change it here first, then in the engine.
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import torch

from mulreg.config import RunConfig
from mulreg.core.data import augment, augment_draws, generator, pool_for, split_run
from mulreg.core.epochs import CHANCE
from mulreg.core.metrics import correct, relative_update, squared_error
from mulreg.core.models import build_model, direction_parameters, layer_names
from mulreg.core.penalties import penalty
from mulreg.protocols import EFF_LR, Split

# A run whose loss is not finite has diverged; the test set is never read to decide it.
LOSSES = ("train_loss", "val_loss")


def train_plain(config: RunConfig, root=None) -> tuple[torch.nn.Module, pd.DataFrame]:
    """Train one run on the CPU as `mulreg.engine.train.train` does; return the reported model (the
    restored best epoch when early stopping says so; with `train_past_stop`, the model where early
    stopping fired, trained past it) and the per-epoch history."""
    pool = pool_for(config, root)
    run = split_run(pool, config.seed, config.label_noise, config.val_fraction)
    y = pool.targets(run.labels)  # training-pool targets after label noise
    model = build_model(config)
    opt = _optimizer(config, model)
    torch.set_flush_denormal(config.flush_denormal)  # as `backend_settings` does
    es = config.early_stopping
    best = math.inf
    best_epoch = 0
    best_state = None
    stop_state = None  # train_past_stop: the model where early stopping fired
    escaped = math.inf  # the epoch the run left chance level
    rows = []
    for epoch in range(1, config.max_epochs + 1):
        row = {"epoch": epoch}
        row |= _train_epoch(config, model, opt, pool, run, y, epoch)
        row |= _evaluate(model, pool, run, y)
        rows.append(row)
        # ---- stop: divergence, a horizon counted from the escape, early stopping
        if not all(math.isfinite(v) for c, v in row.items() if c in LOSSES):
            break  # diverged
        if escaped == math.inf and row["train_acc"] > CHANCE[pool.task] + config.chance_margin:
            escaped = epoch
        if config.epochs_after_escape and epoch - escaped >= config.epochs_after_escape:
            break  # trained the set number of epochs past the chance plateau
        if es is None or stop_state is not None:
            continue
        value = row[es.monitor] * (-1 if es.monitor.endswith("acc") else 1)  # lower is better
        if value < best - es.min_delta:
            best = value
            best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= es.patience and not config.train_past_stop:
            break  # early stopped
        elif epoch - best_epoch >= es.patience:  # early stopping fired: keep its model, train on
            stop_state = best_state if es.restore_best else copy.deepcopy(model.state_dict())
    if stop_state is not None:
        model.load_state_dict(stop_state)
    elif es is not None and es.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), pd.DataFrame(rows)


def _optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def _train_epoch(config: RunConfig, model, opt, pool, run, y, epoch: int) -> dict:
    """One pass over the training split; the epoch's mean data loss, λR and accuracy (and the
    per-layer effective learning rates, when recorded)."""
    model.train()
    binary = pool.task == "binary"
    # ---- data order: a seeded permutation, crops and flips, dropout's draws, all per epoch
    torch.manual_seed(int(generator(config.seed, f"dropout-{epoch - 1}").initial_seed()))
    n = len(run.train_idx)
    order = run.train_idx[torch.randperm(n, generator=generator(config.seed, f"epoch-{epoch - 1}"))]
    crops, flips = augment_draws(config.seed, epoch - 1, n)
    params = dict(model.named_parameters())
    directions = direction_parameters(model) if config.effective_lr else []  # relative updates
    sums = torch.zeros(3)  # Σ data loss, Σ λR, Σ correct, over the epoch's samples
    moved = torch.zeros(len(directions))  # Σ over steps of ‖ΔP_i‖/‖P_i‖: effective learning rates
    for step, idx in enumerate(order.split(config.batch_size)):
        # ---- step: forward, objective (paper Eq. 5-6), backward, update
        x = pool.x_train[idx]
        at = slice(step * config.batch_size, step * config.batch_size + len(idx))
        x = augment(x, crops[at], flips[at]) if config.augment else x  # random crop and flip
        before = [params[name].detach().clone() for name in directions]
        out, weights = model(x, with_weights=True)
        data = squared_error(out, y[idx]).mean()  # MSE(f(x), y)
        reg = config.lam * penalty(config.penalty, weights, config.depth_normalization,
                                   config.features_normalization)  # λ·R(W), paper Eq. 5-6
        opt.zero_grad()
        (data + reg).backward()
        opt.step()
        moved += torch.tensor([relative_update(b[None], params[name].detach()[None]).item()
                               for b, name in zip(before, directions)])
        sums += torch.tensor([data.item() * len(idx), reg.item() * len(idx),
                              correct(out, y[idx], binary).sum().item()])
    row = {"train_loss": sums[0].item() / n, "penalty_term": sums[1].item() / n,
           "train_acc": sums[2].item() / n}
    if config.effective_lr:
        layers = layer_names(model)
        row |= {EFF_LR.column(layer): u / (step + 1) for layer, u in zip(layers, moved.tolist())}
    return row


@torch.no_grad()
def _evaluate(model, pool, run, y) -> dict:
    """Loss and accuracy on the validation split (if any) and the test set, in eval mode."""
    model.eval()
    binary = pool.task == "binary"
    row = {}
    for split, x, t in ((Split.VAL, pool.x_train[run.val_idx], y[run.val_idx]),
                        (Split.TEST, pool.x_test, pool.targets(pool.y_test))):
        if len(x):
            out = model(x)
            row[f"{split}_loss"] = squared_error(out, t).mean().item()
            row[f"{split}_acc"] = correct(out, t, binary).float().mean().item()
    return row
