"""What the paper measures on a trained network: layer norms, effective rank, margins, accuracy."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mulreg.core.data import Pool
from mulreg.core.models import layer_names, weight_layers, weight_matrices
from mulreg.protocols import NORM, RANK


def layer_norms(model: nn.Module) -> torch.Tensor:
    """‖W_i‖_F for every conv/linear layer, in forward order."""
    with torch.no_grad():
        return torch.stack([w.norm() for w in weight_matrices(model)])


def norm_summaries(norms: Sequence[float]) -> dict[str, float]:
    """Π_i ‖W_i‖_F and Σ_i ‖W_i‖_F² of a network's layer norms (paper, Fig. 2 and Table 1)."""
    return {"norm_product": math.prod(norms), "norm_sq_sum": sum(n * n for n in norms)}


def relative_update(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """‖after − before‖_F / ‖before‖_F per row of the leading (run) axis: the relative size of one
    optimiser step on a weight, its effective learning rate."""
    return (after - before).flatten(1).norm(dim=1) / before.flatten(1).norm(dim=1)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Conv kernels (out, in, kh, kw) → (out, in·kh·kw); matrices unchanged."""
    return weight.detach().reshape(weight.shape[0], -1)


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Singular values of the (reshaped) weight, largest first."""
    return torch.linalg.svdvals(as_matrix(weight).double().cpu()).float()


def effective_rank(weight: torch.Tensor, rel_tol: float = 0.01) -> int:
    """Number of singular values above `rel_tol` × the largest (paper, Table 1)."""
    s = singular_values(weight)
    return int((s > rel_tol * s[0]).sum()) if s[0] > 0 else 0


def matrix_rank(weight: torch.Tensor) -> int:
    """Rank under `torch.linalg.matrix_rank`'s default tolerance (σ_max · max(m, n) · eps of the
    dtype), on the fp32 (reshaped) weight: the authors' scripts' Table 1."""
    return int(torch.linalg.matrix_rank(as_matrix(weight).float().cpu()))


def unit_norm_copy(model: nn.Module, scale_biases: bool = False) -> nn.Module:
    """A copy with every layer's weight divided by its Frobenius norm. Biases are untouched, or with
    `scale_biases` divided by the product of the norms up to their layer, so that a ReLU network
    with average pooling computes exactly f(x)/Π_i‖W_i‖_F."""
    unit = copy.deepcopy(model).eval()
    product = 1.0
    with torch.no_grad():
        for m in weight_layers(unit):
            norm = m.weight.norm().item()
            product *= norm
            if hasattr(m, "parametrizations"):
                g = m.parametrizations.weight[0].g
                g.copy_(torch.sign(g))  # W = g·V/‖V‖ has ‖W‖ = |g|
            else:
                m.weight.div_(norm)
            if scale_biases and m.bias is not None:
                m.bias.div_(product)
    return unit


def normalized_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Margins of f(x)/Π_i‖W_i‖_F (unlike `margins`, whose untouched biases dominate the output)."""
    return margin_of_outputs(predict(unit_norm_copy(model, scale_biases=True), x), y)


@contextmanager
def eval_mode(model: nn.Module):
    """Evaluate with batch-norm running statistics and without dropout; restore the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def predict(model: nn.Module, x: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    """Outputs of `model` in eval mode, in batches, without gradients."""
    with eval_mode(model), torch.no_grad():
        chunks = (x[i : i + batch].contiguous(memory_format=torch.channels_last) for i in range(0, len(x), batch))
        return torch.cat([model(c) for c in chunks])  # channels-last: faster convolutions on a CPU


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample margins of the unit-norm copy: y·f(x) for ±1 targets; for one-hot targets
    f_y(x) − max_{j≠y} f_j(x). The trained model is not modified."""
    return margin_of_outputs(predict(unit_norm_copy(model), x), y)


def margin_of_outputs(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.dim() == 1:  # binary: y_i · f(x_i)
        return y * out
    true = (out * y).sum(-1)
    others = out.masked_fill(y.bool(), float("-inf")).amax(-1)
    return true - others


def output_std_margins(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y·f(x)/std f(x) per sample: the margins the authors' code reports."""
    return margin_of_outputs(out, y) / out.std()


def squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss per sample: (f(x) − y)² for ±1 targets (N,), its mean over the outputs
    for one-hot targets (N, C)."""
    err = (out - y).square()
    return err if y.dim() == 1 else err.mean(-1)


def correct(out: torch.Tensor, y: torch.Tensor, binary: bool | None = None) -> torch.Tensor:
    """Boolean per sample: sign(output) = y for ±1 targets, argmax agreement for one-hot targets
    (`binary` defaults to whether y is one-dimensional)."""
    binary = y.dim() == 1 if binary is None else binary
    return torch.sign(out) == y if binary else out.argmax(-1) == y.argmax(-1)


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct predictions (±1 or one-hot targets)."""
    return correct(out, y).float().mean().item()


def correct_counts(out: torch.Tensor, y: torch.Tensor, flipped: torch.Tensor,
                   binary: bool | None = None) -> torch.Tensor:
    """(number correct, number correct among the samples with `flipped` = 1) against the training
    labels `y`: the two counts behind `label_fit`, cheap enough to take inside every training step."""
    ok = correct(out, y, binary).float()
    return torch.stack([ok.sum(-1), (ok * flipped).sum(-1)], -1)


def label_fit(out: torch.Tensor, y: torch.Tensor, flipped: torch.Tensor) -> tuple[float, float]:
    """Accuracy against the (noisy) training labels `y` on the samples whose label was flipped and
    on the clean ones: a network that memorises every flipped label scores 1.0 on both, one that
    predicts the true classes scores 0.0 on the flipped ones. NaN for an empty subset."""
    flipped = flipped.float()
    n_correct, n_flipped_correct = correct_counts(out, y, flipped).tolist()
    n_flipped = flipped.sum().item()
    n_clean = len(flipped) - n_flipped
    return (n_flipped_correct / n_flipped if n_flipped else float("nan"),
            (n_correct - n_flipped_correct) / n_clean if n_clean else float("nan"))


def reported_metrics(model: nn.Module, pool: Pool, train_idx: torch.Tensor, targets: torch.Tensor,
                     flipped: torch.Tensor) -> dict:
    """Accuracy, loss, label fit, margins, norms and ranks of a run's reported model; `targets` and
    `flipped` are the run's training-pool targets after label noise and its flipped-label mask.
    "_margins" holds the test margins (stored apart). NaN throughout for non-finite weights."""
    y_test = pool.targets(pool.y_test)
    if not all(torch.isfinite(t).all() for t in model.state_dict().values()):
        return {"test_acc": float("nan"), "test_loss": float("nan"), "train_acc": float("nan"),
                "train_acc_flipped": float("nan"), "train_acc_clean": float("nan"),
                "margin_mean": float("nan"), "margin_mean_correct": float("nan"), "margin_norm_mean": float("nan"),
                "margin_std_mean": float("nan"), "_margins": np.array([])}
    out = predict(model, pool.x_test)
    train_out = predict(model, pool.x_train[train_idx])
    m = margins(model, pool.x_test, y_test)
    ok = correct(out, y_test)
    fit_flipped, fit_clean = label_fit(train_out, targets[train_idx], flipped[train_idx])
    norms = layer_norms(model).tolist()
    names = layer_names(model)
    return {
        "test_acc": ok.float().mean().item(),
        "test_loss": (out - y_test).square().mean().item(),
        "train_acc": accuracy(train_out, targets[train_idx]),
        "train_acc_flipped": fit_flipped,  # fit of the flipped training labels: memorisation
        "train_acc_clean": fit_clean,
        "margin_mean": m.mean().item(),
        "margin_mean_correct": m[ok].mean().item() if ok.any() else float("nan"),
        # y·f(x)/Π‖W_i‖ with biases scaled consistently (meaningful where `margin_mean` is not)
        "margin_norm_mean": normalized_margins(model, pool.x_test, y_test).mean().item(),
        "margin_std_mean": output_std_margins(out, y_test).mean().item(),
        **norm_summaries(norms),
        **{NORM.column(n): v for n, v in zip(names, norms)},
        **{RANK.column(n): effective_rank(w) for n, w in zip(names, weight_matrices(model))},
        "_margins": m.cpu().numpy(),
    }
