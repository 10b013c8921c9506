"""What the engine computes, as one plain loop: a single run, an `nn.Module`, the paper's objective,
torch.optim, evaluation after every epoch, early stopping.

This loop is the specification. `mulreg.engine.train` computes the same numbers for many runs at once
(parameters stacked along a run axis, `vmap`, one compiled step, its own SGD/Adam arithmetic), and
tests/test_train.py checks it against `train_plain` on every optimiser and model option. To try an
idea (a schedule, another loss), change it here first, then in the engine.
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import torch

from mulreg.config import RunConfig
from mulreg.core.data import augment, augment_draws, generator, pool_for, split_run
from mulreg.core.metrics import correct, relative_update, squared_error
from mulreg.core.models import build_model, direction_parameters, layer_names
from mulreg.core.penalties import penalty
from mulreg.protocols import EFF_LR, Split


def train_plain(config: RunConfig, root=None) -> tuple[torch.nn.Module, pd.DataFrame]:
    """Train one run on the CPU as `mulreg.engine.train.train` does; return the reported model (the
    restored best epoch when early stopping says so) and the per-epoch history."""
    pool = pool_for(config, root)
    run = split_run(pool, config.seed, config.label_noise, config.val_fraction)
    y = pool.targets(run.labels)  # training-pool targets after label noise
    model = build_model(config)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    es, best, best_epoch, best_state, rows = config.early_stopping, math.inf, 0, None, []
    n, params = len(run.train_idx), dict(model.named_parameters())
    directions = direction_parameters(model) if config.effective_lr else []  # whose relative updates to record
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        torch.manual_seed(int(generator(config.seed, f"dropout-{epoch - 1}").initial_seed()))  # dropout's draws
        order = run.train_idx[torch.randperm(n, generator=generator(config.seed, f"epoch-{epoch - 1}"))]
        crops, flips = augment_draws(config.seed, epoch - 1, n)
        sums = torch.zeros(3)  # Σ data loss, Σ λR, Σ correct, over the epoch's samples
        moved = torch.zeros(len(directions))  # Σ over steps of ‖ΔP_i‖/‖P_i‖: effective learning rates
        for step, idx in enumerate(order.split(config.batch_size)):
            x, at = pool.x_train[idx], slice(step * config.batch_size, step * config.batch_size + len(idx))
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
                                  correct(out, y[idx], pool.task == "binary").sum().item()])
        row = {"epoch": epoch, "train_loss": sums[0].item() / n, "penalty_term": sums[1].item() / n,
               "train_acc": sums[2].item() / n}
        if config.effective_lr:
            row |= {EFF_LR.column(layer): u / (step + 1) for layer, u in zip(layer_names(model), moved.tolist())}
        model.eval()
        with torch.no_grad():
            for split, x, t in ((Split.VAL, pool.x_train[run.val_idx], y[run.val_idx]),
                                (Split.TEST, pool.x_test, pool.targets(pool.y_test))):
                if len(x):
                    out = model(x)
                    row |= {f"{split}_loss": squared_error(out, t).mean().item(),
                            f"{split}_acc": correct(out, t, pool.task == "binary").float().mean().item()}
        rows.append(row)
        if not all(math.isfinite(row[c]) for c in ("train_loss", "val_loss", "test_loss") if c in row):
            break  # diverged
        if es is not None:
            value = row[es.monitor] * (-1 if es.monitor.endswith("acc") else 1)  # lower is better
            if value < best - es.min_delta:
                best, best_epoch, best_state = value, epoch, copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= es.patience:
                break  # early stopped
    if es is not None and es.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), pd.DataFrame(rows)
