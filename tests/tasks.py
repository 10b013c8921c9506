"""Ready-to-use tensors of one run, for tests that check the data pipeline (`mulreg.core.data`) without the
engine: the same pool, split and label noise a run of `mulreg.engine.train` sees."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mulreg.config import PAPER_CLASSES
from mulreg.core.data import load_pool, split_run


@dataclass(frozen=True)
class Task:
    """Ready-to-use tensors of one run: train/validation (noisy labels) and test (clean labels)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    flipped: torch.Tensor  # indices into the training pool whose label was flipped


def _task(task: str, *, n_train=None, n_test=None, val_fraction=0.2, label_noise=0.0, seed=1,
          device="cpu", root=None, classes=PAPER_CLASSES) -> Task:
    pool = load_pool(task, n_train, n_test, None if root is None else str(root), str(device), tuple(classes))
    run = split_run(pool, seed, label_noise, val_fraction)
    y = pool.targets(run.labels)
    return Task(
        pool.x_train[run.train_idx], y[run.train_idx],
        pool.x_train[run.val_idx], y[run.val_idx],
        pool.x_test, pool.targets(pool.y_test), run.flipped,
    )


def binary_task(**kwargs) -> Task:
    """Two classes → (−1, +1), by default cats (class 3) vs deer (class 4); keyword arguments as in `_task`."""
    return _task("binary", **kwargs)


def multiclass_task(**kwargs) -> Task:
    """All ten classes with one-hot targets; keyword arguments as in `_task`."""
    return _task("multiclass", **kwargs)
