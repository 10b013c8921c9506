"""The two penalties of the paper, on the layer weights W_1..W_L (weights only, not biases).

    additive        R_sum(W) = Σ_i ‖W_i‖_F²            (Sec. 4, Eq. 5)
    multiplicative  R_mul(W) = Π_i ‖W_i‖_F²            (Sec. 4, Eq. 6)
    log view        R_log(W) = Σ_i log ‖W_i‖_F²        (Sec. 3, Eq. 4: log Π = Σ log; same minimisers)
    L1 (not in the paper) R_l1(W) = Σ_i Σ_jk |W_i,jk|  (a sparsity penalty, for comparison)

Optional normalisations of the authors' code: `features_normalization` divides each ‖W_i‖_F² by
the layer's output ("f_out", W.size(0)) or input ("f_in", W.size(1)) features;
`depth_normalization` divides the sum by L and raises the product to the power 1/L.
"""

from __future__ import annotations

from typing import Literal

import torch

from mulreg.core.models import weight_matrices
from mulreg.protocols import Penalty

FeaturesNormalization = Literal["f_out", "f_in"] | None

__all__ = ["weight_matrices", "squared_norms", "absolute_sums", "l2_sum", "l2_mul", "l2_mul_log", "l1", "penalty",
           "mixed_penalty"]


def squared_norms(weights, features_normalization: FeaturesNormalization = None) -> torch.Tensor:
    """‖W_i‖_F² for each layer (÷ f_out or f_in if asked), stacked on the last dimension."""
    dim = {None: None, "f_out": 0, "f_in": 1}[features_normalization]
    return torch.stack([w.square().sum() / (1 if dim is None else w.size(dim)) for w in weights], -1)


def absolute_sums(weights, features_normalization: FeaturesNormalization = None) -> torch.Tensor:
    """Σ_jk |W_i,jk| for each layer (÷ f_out or f_in if asked), stacked on the last dimension."""
    dim = {None: None, "f_out": 0, "f_in": 1}[features_normalization]
    return torch.stack([w.abs().sum() / (1 if dim is None else w.size(dim)) for w in weights], -1)


def l2_sum(weights, depth_normalization: bool = False, features_normalization: FeaturesNormalization = None):
    """Σ_i ‖W_i‖_F² (Eq. 5), ÷ L with depth normalisation."""
    n = squared_norms(weights, features_normalization)
    return n.sum(-1) / (n.shape[-1] if depth_normalization else 1)


def l2_mul(weights, depth_normalization: bool = False, features_normalization: FeaturesNormalization = None):
    """Π_i ‖W_i‖_F² (Eq. 6), to the power 1/L with depth normalisation."""
    n = squared_norms(weights, features_normalization)
    return n.prod(-1) ** (1 / n.shape[-1] if depth_normalization else 1)


def l2_mul_log(weights, depth_normalization: bool = False, features_normalization: FeaturesNormalization = None):
    """Σ_i log ‖W_i‖_F² (Eq. 4), ÷ L with depth normalisation."""
    n = squared_norms(weights, features_normalization)
    return n.log().sum(-1) / (n.shape[-1] if depth_normalization else 1)


def l1(weights, depth_normalization: bool = False, features_normalization: FeaturesNormalization = None):
    """Σ_i Σ_jk |W_i,jk| (÷ f_out or f_in per layer if asked), ÷ L with depth normalisation."""
    n = absolute_sums(weights, features_normalization)
    return n.sum(-1) / (n.shape[-1] if depth_normalization else 1)


PENALTY_FUNCTIONS = {Penalty.SUM: l2_sum, Penalty.MUL: l2_mul, Penalty.MUL_LOG: l2_mul_log, Penalty.L1: l1}


def penalty(kind: str, weights, depth_normalization=False, features_normalization=None) -> torch.Tensor:
    """R(W) for `kind` in {none, sum, mul, mul_log, l1} (`mulreg.protocols.Penalty`)."""
    if Penalty(kind) == Penalty.NONE:  # an unknown kind raises ValueError here
        return weights[0].new_zeros(())
    return PENALTY_FUNCTIONS[Penalty(kind)](weights, depth_normalization, features_normalization)


def mixed_penalty(weights, lams: dict[Penalty, torch.Tensor], depth_normalization=False,
                  features_normalization=None) -> torch.Tensor:
    """Σ_kind λ_kind·R_kind(W) for runs trained together, each with at most one λ non-zero: `lams`
    holds a λ per run for each kind of `PENALTY_FUNCTIONS` that a run of the stack may use (a kind
    left out costs nothing, rather than being multiplied by 0).

    R_mul and R_log take the logs of ‖W_i‖² only where their λ > 0 (elsewhere of 1), and R_mul is
    exp(Σ log ‖W_i‖²): a run of another kind never meets 0·log 0 or inf · 0, which would turn its
    value or its gradient into NaN.
    """
    total = weights[0].new_zeros(())
    for kind, lam in lams.items():
        total = total + lam * _masked(kind, weights, lam > 0, depth_normalization, features_normalization)
    return total


def _masked(kind: Penalty, weights, used: torch.Tensor, depth_normalization, features_normalization):
    """R_kind(W) per run, its logs taken only where `used` (`mixed_penalty`)."""
    if kind not in (Penalty.MUL, Penalty.MUL_LOG):
        return PENALTY_FUNCTIONS[kind](weights, depth_normalization, features_normalization)
    n = squared_norms(weights, features_normalization)
    depth = n.shape[-1] if depth_normalization else 1
    log_sum = torch.where(used[..., None], n, torch.ones_like(n)).log().sum(-1) / depth  # Σ log ‖W_i‖², Eq. 4
    return log_sum.exp() if kind == Penalty.MUL else log_sum  # Π ‖W_i‖² (Eq. 6) as exp Σ log
