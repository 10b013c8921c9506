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


def mixed_penalty(weights, lam_sum, lam_mul, lam_log, lam_l1=None, depth_normalization=False,
                  features_normalization=None):
    """λ_sum·R_sum + λ_mul·R_mul + λ_log·R_log + λ_l1·R_l1 for runs trained together, each with one λ
    non-zero.

    R_mul is computed as exp(Σ log ‖W_i‖²) with the exponent masked to 0 where λ_mul = 0, so a run
    of another kind never meets inf · 0 (which would turn its gradient into NaN).
    """
    n = squared_norms(weights, features_normalization)
    depth = n.shape[-1] if depth_normalization else 1
    # logs only for runs that use them: a zero norm in a run with λ_mul = λ_log = 0 must not give
    # 0·log 0 = NaN (in the value and, through 0·(1/0), in the gradient)
    uses_log = (lam_mul > 0) | (lam_log > 0)
    log_sum = torch.where(uses_log, n, torch.ones_like(n)).log().sum(-1) / depth
    r_mul = torch.where(lam_mul > 0, log_sum, torch.zeros_like(log_sum)).exp()
    penalty = lam_sum * n.sum(-1) / depth + lam_mul * r_mul + lam_log * log_sum
    if lam_l1 is None:  # no run of the stack uses L1: its term is left out, not multiplied by 0
        return penalty
    return penalty + lam_l1 * absolute_sums(weights, features_normalization).sum(-1) / depth
