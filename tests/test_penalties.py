"""mulreg.core.penalties against numpy, their gradients, and the mixed penalty of stacked runs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mulreg.core.models import BinaryCNN
from mulreg.core.penalties import l2_mul, l2_mul_log, l2_sum, mixed_penalty, penalty, weight_matrices
from mulreg.protocols import Penalty

NORMS = [None, "f_out", "f_in"]
COMBOS = list(itertools.product([False, True], NORMS))


def random_weights(seed=0, scale=1.0, dtype=torch.float64):
    """Conv and linear weights of varied shapes (f_out = size(0), f_in = size(1) differ)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (6, 4, 3, 3), (5, 24), (2, 5)]
    return [(scale * torch.randn(s, generator=g, dtype=dtype)).requires_grad_() for s in shapes]


def np_squared_norms(weights, features):
    out = []
    for w in weights:
        a = w.detach().numpy().astype(np.float64)
        sq = float(np.sum(a * a))
        div = {None: 1, "f_out": a.shape[0], "f_in": a.shape[1]}[features]
        out.append(sq / div)
    return np.array(out)


def np_sum(weights, depth, features):
    n = np_squared_norms(weights, features)
    return n.sum() / (len(n) if depth else 1)


def np_mul(weights, depth, features):
    n = np_squared_norms(weights, features)
    return np.prod(n) ** (1 / len(n) if depth else 1)


def np_mul_log(weights, depth, features):
    n = np_squared_norms(weights, features)
    return np.sum(np.log(n)) / (len(n) if depth else 1)


REFERENCE = {"sum": (l2_sum, np_sum), "mul": (l2_mul, np_mul), "mul_log": (l2_mul_log, np_mul_log)}


@pytest.mark.parametrize("kind", ["sum", "mul", "mul_log"])
@pytest.mark.parametrize("depth,features", COMBOS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_penalty_matches_numpy(kind, depth, features, dtype):
    fn, ref = REFERENCE[kind]
    for seed in range(3):
        weights = random_weights(seed, dtype=dtype)
        got = fn(weights, depth_normalization=depth, features_normalization=features)
        expected = ref(weights, depth, features)
        rtol = 1e-10 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(got.item(), expected, rtol=rtol)
        # the dispatcher gives the same
        assert penalty(kind, weights, depth, features).item() == pytest.approx(got.item(), rel=1e-12)


def test_hand_made_values():
    w1 = torch.full((2, 3), 1.0)  # ‖W‖² = 6, f_out = 2, f_in = 3
    w2 = torch.full((1, 2), 2.0)  # ‖W‖² = 8, f_out = 1, f_in = 2
    ws = [w1, w2]
    assert l2_sum(ws).item() == pytest.approx(14)
    assert l2_sum(ws, depth_normalization=True).item() == pytest.approx(7)
    assert l2_sum(ws, features_normalization="f_out").item() == pytest.approx(6 / 2 + 8 / 1)
    assert l2_sum(ws, features_normalization="f_in").item() == pytest.approx(6 / 3 + 8 / 2)
    assert l2_mul(ws).item() == pytest.approx(48)
    assert l2_mul(ws, depth_normalization=True).item() == pytest.approx(48 ** 0.5)
    assert l2_mul(ws, features_normalization="f_in").item() == pytest.approx(2 * 4)
    assert l2_mul_log(ws).item() == pytest.approx(np.log(48))
    assert penalty("none", ws).item() == 0


def test_penalties_on_model_use_conv_and_linear_weights_only():
    model = BinaryCNN()
    ws = weight_matrices(model)
    assert [tuple(w.shape) for w in ws] == [(16, 3, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3),
                                            (256, 512), (1, 256)]
    expected = sum(float(np.sum(m.weight.detach().numpy().astype(np.float64) ** 2))
                   for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert l2_sum(ws).item() == pytest.approx(expected, rel=1e-5)
    # biases are not penalised
    with torch.no_grad():
        model.classifier[-1].bias.fill_(100.0)
    assert l2_sum(weight_matrices(model)).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- gradients
def test_gradients_match_analytic_forms():
    weights = random_weights(1)
    grads = torch.autograd.grad(l2_sum(weights), weights)
    for w, g in zip(weights, grads):  # ∂ Σ‖W‖² / ∂W_i = 2 W_i
        np.testing.assert_allclose(g.numpy(), 2 * w.detach().numpy(), rtol=1e-12)

    grads = torch.autograd.grad(l2_mul(weights), weights)
    sq = np_squared_norms(weights, None)
    for i, (w, g) in enumerate(zip(weights, grads)):  # ∂ Π‖W‖² / ∂W_i = 2 W_i Π_{j≠i} ‖W_j‖²
        others = np.prod(np.delete(sq, i))
        np.testing.assert_allclose(g.numpy(), 2 * w.detach().numpy() * others, rtol=1e-10)

    grads = torch.autograd.grad(l2_mul_log(weights), weights)
    for i, (w, g) in enumerate(zip(weights, grads)):  # ∂ Σ log‖W‖² / ∂W_i = 2 W_i / ‖W_i‖²
        np.testing.assert_allclose(g.numpy(), 2 * w.detach().numpy() / sq[i], rtol=1e-10)


@pytest.mark.parametrize("fn", [l2_sum, l2_mul, l2_mul_log])
@pytest.mark.parametrize("depth,features", COMBOS)
def test_gradcheck(fn, depth, features):
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_()
               for s in [(3, 2, 2, 2), (4, 3), (2, 4)]]
    assert torch.autograd.gradcheck(lambda *ws: fn(list(ws), depth, features), weights)


# ---------------------------------------------------------------- mixed penalty
def lams(s=0.0, m=0.0, g=0.0, dtype=torch.float64):
    kinds = (Penalty.SUM, Penalty.MUL, Penalty.MUL_LOG)
    return {kind: torch.tensor(v, dtype=dtype) for kind, v in zip(kinds, (s, m, g))}


@pytest.mark.parametrize("kind", ["sum", "mul", "mul_log"])
@pytest.mark.parametrize("depth,features", COMBOS)
def test_mixed_penalty_equals_single_kind(kind, depth, features):
    weights = random_weights(2)
    lam = 0.37
    values = dict(s=lam * (kind == "sum"), m=lam * (kind == "mul"), g=lam * (kind == "mul_log"))
    got = mixed_penalty(weights, lams(**values), depth_normalization=depth, features_normalization=features)
    expected = lam * REFERENCE[kind][1](weights, depth, features)
    np.testing.assert_allclose(got.item(), expected, rtol=1e-10)
    g_mixed = torch.autograd.grad(got, weights)
    g_single = torch.autograd.grad(lam * REFERENCE[kind][0](weights, depth, features), weights)
    for a, b in zip(g_mixed, g_single):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-300)


def test_mixed_penalty_no_penalty_is_zero():
    weights = random_weights(3)
    got = mixed_penalty(weights, lams())
    assert got.item() == 0
    for g in torch.autograd.grad(got, weights):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lam_sum", [0.0, 0.5])
def test_mixed_penalty_zero_norm_is_finite_without_log_terms(lam_sum, dtype):
    """A layer with ‖W‖ = 0 in a run with λ_mul = λ_log = 0 must not produce 0·log 0 = NaN."""
    weights = random_weights(4, dtype=dtype)
    with torch.no_grad():
        weights[1].zero_()
    value = mixed_penalty(weights, lams(s=lam_sum, dtype=dtype))
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(lam_sum * np_sum(weights, False, None), rel=1e-5)
    for w, g in zip(weights, torch.autograd.grad(value, weights)):
        assert torch.isfinite(g).all()
        np.testing.assert_allclose(g.numpy(), 2 * lam_sum * w.detach().numpy(), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("depth", [False, True])
def test_mixed_penalty_overflowing_product_is_finite_for_other_kinds(depth):
    """Π‖W_i‖² overflows float32 here (≈ 1e47); runs with λ_mul = 0 must stay finite."""
    weights = random_weights(6, scale=1e5, dtype=torch.float32)
    assert not torch.isfinite(l2_mul(weights))  # the plain product does overflow
    for s, g in ((0.1, 0.0), (0.0, 0.1), (0.0, 0.0)):
        value = mixed_penalty(weights, lams(s=s, g=g, dtype=torch.float32), depth_normalization=depth)
        expected = s * np_sum(weights, depth, None) + g * np_mul_log(weights, depth, None)
        assert torch.isfinite(value)
        assert value.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
        for grad in torch.autograd.grad(value, weights):
            assert torch.isfinite(grad).all()
    # with λ_mul > 0 the overflow is real (the run diverges) but never silently NaN-free-wrong
    value = mixed_penalty(weights, lams(m=1.0, dtype=torch.float32), depth_normalization=depth)
    if not depth:
        assert torch.isinf(value)
    else:  # (Π‖W‖²)^(1/L) is representable: exp of the mean log
        assert value.item() == pytest.approx(np_mul(weights, True, None), rel=1e-4)


def test_mixed_penalty_batched_over_runs_with_vmap():
    """The training engine applies mixed_penalty per run with torch.func.vmap."""
    runs = [random_weights(s) for s in range(3)]
    stacked = [torch.stack([r[i].detach() for r in runs]) for i in range(len(runs[0]))]
    lam_sum = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    lam_mul = torch.tensor([0.0, 0.25, 0.0], dtype=torch.float64)
    lam_log = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    with torch.no_grad():
        stacked[2][0].zero_()  # run 0: a zero layer in the sum run only
    def per_run(ws, a, b, c):
        return mixed_penalty(ws, {Penalty.SUM: a, Penalty.MUL: b, Penalty.MUL_LOG: c})

    got = torch.func.vmap(per_run)(stacked, lam_sum, lam_mul, lam_log)
    r0 = [w[0] for w in stacked]
    expected = [0.5 * np_sum(r0, False, None), 0.25 * np_mul(runs[1], False, None),
                2.0 * np_mul_log(runs[2], False, None)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_l1_value_and_gradient_against_numpy():
    from mulreg.core.penalties import l1, mixed_penalty

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s) for s in ((4, 3, 3, 3), (5, 4))]
    weights = [torch.tensor(a, requires_grad=True) for a in arrays]
    value = l1(weights)
    assert value.item() == pytest.approx(sum(np.abs(a).sum() for a in arrays))
    value.backward()
    for w, a in zip(weights, arrays):
        np.testing.assert_array_equal(w.grad.numpy(), np.sign(a))  # d|w|/dw = sign(w)
    zero = torch.tensor(0.0, dtype=torch.float64)
    lams = {Penalty.SUM: zero, Penalty.MUL: zero, Penalty.MUL_LOG: zero,
            Penalty.L1: torch.tensor(0.5, dtype=torch.float64)}
    mixed = mixed_penalty([w.detach() for w in weights], lams)
    assert mixed.item() == pytest.approx(0.5 * value.item())
