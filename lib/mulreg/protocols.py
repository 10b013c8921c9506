"""The names modules agree on, each defined once: penalty kinds (and their names in words), stop
reasons, data splits, and the
families of per-layer columns in histories and runs tables (`norm_<layer>`, `rank_<layer>`).

The enums are `StrEnum`s: a member equals its string ("mul" == Penalty.MUL), so stored files and
tables keep plain strings, and `Penalty(value)` turns an unknown value into a ValueError instead of
a silent default branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable


class Penalty(StrEnum):
    """R(W) in L = MSE + λ·R(W) (`mulreg.core.penalties`)."""

    NONE = "none"
    SUM = "sum"  # additive, Σ_i ‖W_i‖_F²
    MUL = "mul"  # multiplicative, Π_i ‖W_i‖_F²
    MUL_LOG = "mul_log"  # Σ_i log ‖W_i‖_F²
    L1 = "l1"  # Σ_i Σ_jk |W_i,jk|, over the same weights


PENALIZED = (Penalty.SUM, Penalty.MUL, Penalty.MUL_LOG, Penalty.L1)  # the kinds with a λ
PENALTY_NAMES = {Penalty.MUL: "multiplicative", Penalty.SUM: "additive", Penalty.NONE: "none",
                 Penalty.MUL_LOG: "log-multiplicative", Penalty.L1: "L1"}  # in words, in every table and figure
PENALTY_ORDER = (Penalty.MUL, Penalty.SUM, Penalty.NONE, Penalty.MUL_LOG, Penalty.L1)  # the paper's three first


class StopReason(StrEnum):
    """Why a run ended (`mulreg.engine.train`)."""

    MAX_EPOCHS = "max_epochs"
    EARLY_STOPPED = "early_stopped"
    AFTER_ESCAPE = "after_escape"  # trained `epochs_after_escape` epochs past its escape from chance
    DIVERGED = "diverged"  # a loss became inf or NaN
    CHANCE_LEVEL = "chance_level"  # training accuracy never left chance level (`mulreg.core.epochs`)


EXCLUDED = (StopReason.DIVERGED, StopReason.CHANCE_LEVEL)  # left out of every mean, and counted


class Split(StrEnum):
    """Where data comes from: the training pool's two parts, or the test set."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class Family:
    """Per-layer columns `<prefix>_<layer>`; `summaries` are columns with the prefix that are not layers."""

    prefix: str
    summaries: tuple[str, ...] = ()

    def column(self, layer: str) -> str:
        return f"{self.prefix}_{layer}"

    def columns(self, columns: Iterable[str]) -> list[str]:
        """The per-layer columns of this family among `columns`, in their order."""
        return [c for c in columns if c.startswith(f"{self.prefix}_") and c not in self.summaries]

    def layers(self, columns: Iterable[str]) -> list[str]:
        """The layer names of those columns."""
        return [c.removeprefix(f"{self.prefix}_") for c in self.columns(columns)]


NORM = Family("norm", summaries=("norm_product", "norm_sq_sum"))  # ‖W_i‖_F, and Π‖W_i‖_F, Σ‖W_i‖_F²
RANK = Family("rank")  # effective rank of W_i (`mulreg.core.metrics.effective_rank`)
MATRIX_RANK = Family("matrix_rank")  # rank under torch.linalg.matrix_rank's default tolerance (the authors' scripts)
# effective learning rate of layer i: ‖ΔP_i‖/‖P_i‖ per step, averaged over the epoch's steps, where P_i is
# the layer's weight parameter (V under weight norm) (`mulreg.core.metrics.relative_update`)
EFF_LR = Family("eff_lr")
