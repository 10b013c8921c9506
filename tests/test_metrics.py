"""mulreg.core.metrics: ranks, norms, margins and accuracy against numpy and hand-made cases."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mulreg.config import RunConfig
from mulreg.core.metrics import (
    accuracy,
    as_matrix,
    correct,
    effective_rank,
    layer_norms,
    margin_of_outputs,
    margins,
    norm_summaries,
    singular_values,
)
from mulreg.core.models import build_model


def low_rank(m, n, r, seed=0):
    """A @ B of rank r whose r non-zero singular values lie in [0.05, 3] (well above 1 % of the
    largest), with random singular vectors."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    s = np.linspace(3.0, 0.05, r)
    return (u * s) @ v.T


# ---------------------------------------------------------------- effective rank
@pytest.mark.parametrize("m,n,r", [(30, 40, 5), (40, 30, 1), (16, 27, 16), (64, 64, 47), (10, 10, 10)])
def test_effective_rank_of_known_rank(m, n, r):
    a = low_rank(m, n, r, seed=r)
    assert np.linalg.matrix_rank(a) == r  # the construction has the intended rank
    assert effective_rank(torch.from_numpy(a).float()) == r
    # tiny perturbations (1e-6 relative) do not add rank above the 1 % threshold
    noisy = a + 1e-6 * np.abs(a).max() * np.random.default_rng(1).standard_normal(a.shape)
    assert effective_rank(torch.from_numpy(noisy).float()) == r


def test_effective_rank_threshold_edges():
    def diag(*values):
        return torch.diag(torch.tensor(values, dtype=torch.float32))

    assert effective_rank(diag(1.0, 0.0101, 0.5)) == 3  # just above 1 % of the largest
    assert effective_rank(diag(1.0, 0.0099, 0.5)) == 2  # just below
    assert effective_rank(diag(1.0, 0.01)) == 1  # exactly at the threshold: not "above"
    assert effective_rank(diag(2.0, 0.0201)) == 2  # relative to the largest, not absolute
    assert effective_rank(diag(200.0, 1.9)) == 1
    assert effective_rank(torch.zeros(4, 5)) == 0
    assert effective_rank(diag(1.0, 0.5, 0.1), rel_tol=0.2) == 2
    assert effective_rank(diag(1.0, 0.5, 0.1), rel_tol=0.0) == 3
    # a permuted, rotated version has the same rank (singular values, not diagonal entries)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    rotated = q @ np.diag([1.0, 0.0099, 0.5]) @ q.T
    assert effective_rank(torch.from_numpy(rotated).float()) == 2


def test_conv_weight_reshaped_to_out_by_in_k_k():
    """Conv kernels (out, in, kh, kw) are read as (out, in·kh·kw) matrices."""
    m = low_rank(8, 3 * 3 * 3, 2, seed=4)
    w = torch.from_numpy(m.reshape(8, 3, 3, 3)).float()
    assert as_matrix(w).shape == (8, 27)
    np.testing.assert_array_equal(as_matrix(w).numpy(), m.astype(np.float32))
    assert effective_rank(w) == 2
    # another reshape of the same numbers, (out·in, kh·kw), would have a different rank
    assert np.linalg.matrix_rank(m.reshape(24, 9)) != 2
    np.testing.assert_allclose(singular_values(w).numpy(), np.linalg.svd(m, compute_uv=False)[:8],
                               rtol=1e-5, atol=1e-5)
    full = torch.from_numpy(np.random.default_rng(5).standard_normal((16, 3, 3, 3))).float()
    assert effective_rank(full) == 16


# ---------------------------------------------------------------- norms
def np_layer_norms(model):
    return np.array([np.linalg.norm(m.weight.detach().double().numpy())
                     for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])


def test_norms_against_numpy():
    model = build_model(RunConfig(init_scale=0.7, seed=3, model={"bias": True}))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.fill_(5.0)  # biases do not count
    expected = np_layer_norms(model)
    assert len(expected) == 6
    np.testing.assert_allclose(layer_norms(model).numpy(), expected, rtol=1e-5)
    summary = norm_summaries(layer_norms(model).tolist())
    assert summary["norm_product"] == pytest.approx(np.prod(expected), rel=1e-5)
    assert summary["norm_sq_sum"] == pytest.approx(np.sum(expected**2), rel=1e-5)


def test_norms_under_weight_norm_are_abs_g():
    model = build_model(RunConfig(seed=3, model={"weight_norm": True}))
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    gs = np.array([1.5, -2.0, 0.5, 3.0, -0.25, 1.0])
    with torch.no_grad():
        for m, g in zip(layers, gs):
            m.parametrizations.weight[0].g.fill_(g)
    np.testing.assert_allclose(layer_norms(model).numpy(), np.abs(gs), rtol=1e-5)
    summary = norm_summaries(layer_norms(model).tolist())
    assert summary["norm_product"] == pytest.approx(np.prod(np.abs(gs)), rel=1e-5)
    assert summary["norm_sq_sum"] == pytest.approx(np.sum(gs**2), rel=1e-5)


# ---------------------------------------------------------------- margins
def manual_unit_copy(model):
    """A copy with every conv/linear weight divided by its (numpy) Frobenius norm."""
    unit = copy.deepcopy(model)
    with torch.no_grad():
        for m in unit.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                norm = np.linalg.norm(m.weight.detach().double().numpy())
                m.weight.copy_(m.weight / float(norm))
    return unit.eval()


def data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.where(torch.rand(n, generator=g) > 0.5, 1.0, -1.0)
    return x, y


def test_margins_leave_model_untouched_and_match_manual_copy():
    model = build_model(RunConfig(init_scale=1.0, seed=8, model={"bias": True, "dropout": 0.5}))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.normal_(0, 0.1)  # biases must stay as they are in the unit-norm copy
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data()
    got = margins(model, x, y)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "margins must not modify the model"
    assert model.training, "the model's train/eval mode is left as it was"
    assert all(p.grad is None for p in model.parameters())

    unit = manual_unit_copy(model)
    with torch.no_grad():
        expected = y.numpy() * unit(x).numpy()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-7)
    # dropout is off in the copy: deterministic
    torch.testing.assert_close(margins(model, x, y), got)
    # the margins of a unit-norm network do not depend on the scale of the trained weights
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for m in scaled.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(3.7)
    np.testing.assert_allclose(margins(scaled, x, y).numpy(), got.numpy(), rtol=1e-4, atol=1e-7)


def test_margins_in_batches_equal_one_pass():
    model = build_model(RunConfig(init_scale=1.0, seed=2))
    x, y = data(n=5)
    from mulreg.core import metrics

    torch.testing.assert_close(metrics.margin_of_outputs(metrics.predict(metrics.unit_norm_copy(model), x, batch=2), y),
                               margins(model, x, y))


def test_margins_under_weight_norm():
    model = build_model(RunConfig(init_scale=0.5, seed=4, model={"weight_norm": True}))
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        layers[0].parametrizations.weight[0].g.fill_(-2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data()
    got = margins(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the same network without weight norm, effective weights divided by their norm
    plain = build_model(RunConfig(init_scale=0.5, seed=4))
    with torch.no_grad():
        for m, w in zip([m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))], layers):
            eff = w.weight.detach()
            m.weight.copy_(eff / float(np.linalg.norm(eff.double().numpy())))
        expected = y * plain.eval()(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-7)


def test_multiclass_margin_hand_made():
    out = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -4.0, -2.0]])
    y = torch.nn.functional.one_hot(torch.tensor([0, 0, 2, 2]), 3).float()
    # f_y − max_{j≠y} f_j
    expected = [1 - 3, 5 - 1, 0 - 0, -2 - (-1)]
    assert margin_of_outputs(out, y).tolist() == expected


def test_multiclass_margins_of_network():
    model = build_model(RunConfig(task="multiclass", init_scale=1.0, seed=1, model={"width": 0.25}))
    x, _ = data(n=4)
    labels = torch.tensor([0, 3, 9, 3])
    y = torch.nn.functional.one_hot(labels, 10).float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = margins(model, x, y).numpy()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        out = manual_unit_copy(model)(x).double().numpy()
    expected = [out[i, c] - np.max(np.delete(out[i], c)) for i, c in enumerate(labels.tolist())]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-8)


def test_binary_margin_hand_made():
    out = torch.tensor([0.5, -0.2, 0.1, -3.0])
    y = torch.tensor([1.0, 1.0, -1.0, -1.0])
    assert margin_of_outputs(out, y).tolist() == pytest.approx([0.5, -0.2, -0.1, 3.0])


# ---------------------------------------------------------------- accuracy
def test_accuracy_binary():
    out = torch.tensor([0.5, -0.2, 0.1, -3.0, 2.0])
    y = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    assert accuracy(out, y) == pytest.approx(3 / 5)
    assert correct(out, y).tolist() == [True, False, False, True, True]
    assert accuracy(-out, y) == pytest.approx(2 / 5)


def test_accuracy_one_hot():
    out = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.2, 0.1], [0.3, 0.2, 0.1]])
    y = torch.nn.functional.one_hot(torch.tensor([1, 0, 2, 1]), 3).float()
    assert correct(out, y).tolist() == [True, True, False, False]
    assert accuracy(out, y) == pytest.approx(0.5)


def test_normalized_margins_equal_outputs_over_the_norm_product():
    from mulreg.config import RunConfig
    from mulreg.core.metrics import margin_of_outputs, normalized_margins
    from mulreg.core.models import build_model

    torch.manual_seed(0)
    model = build_model(RunConfig.parse(dict(model={"width": 0.25}), init_scale=1.0)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_()  # non-zero biases must be scaled too
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([1.0, -1.0] * 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    product = torch.stack([w.norm() for w in [m.weight for m in model.modules()
                                              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]]).prod()
    expected = margin_of_outputs(model(x).detach() / product, y)
    assert torch.allclose(normalized_margins(model, x, y), expected, rtol=1e-4, atol=1e-9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_relative_update_on_a_hand_made_step():
    from mulreg.core.metrics import relative_update

    before = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])  # two runs: ‖W‖ = 5 and 1
    after = torch.tensor([[[3.0, 4.5]], [[1.0, 0.0]]])  # run 1 moved by 0.5, run 2 not at all
    assert relative_update(before, after).tolist() == pytest.approx([0.1, 0.0])
