"""What a run produced (`RunResult`), and where a run's training state is checkpointed
(`Checkpoints`): the types the engine (`mulreg.engine.train`) hands to the store (`mulreg.engine.store`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from mulreg.config import RunConfig
from mulreg.core.models import build_model


class Checkpoints(Protocol):
    """Where a run's training state is saved every `every` epochs and resumed from."""

    every: int

    def load(self, key: str) -> dict | None: ...

    def save(self, key: str, state: dict) -> None: ...


@dataclass
class RunResult:
    """What one run produced: per-epoch history, final metrics, stop reason and reported weights."""

    config: RunConfig
    history: pd.DataFrame
    metrics: dict
    stop_reason: str
    state_dict: dict[str, torch.Tensor]
    test_margins: np.ndarray
    provenance: dict = field(default_factory=dict)  # code, versions, device, times (`mulreg.provenance`)
    test_correct: np.ndarray | None = None  # epochs × test images, bool: classified right at that epoch

    def model(self, device: str | torch.device = "cpu"):
        """The trained network (the reported weights), in eval mode on `device` (default the CPU)."""
        model = build_model(self.config)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()
