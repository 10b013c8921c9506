"""mulreg.core.models: the paper's two networks, their initialisation and weight normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mulreg.config import RunConfig
from mulreg.core.models import BinaryCNN, MulticlassCNN, build_model, layer_names, weight_matrices
from mulreg.core.penalties import l2_mul, l2_sum


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def conv_params(c_in, c_out, bias):
    return c_in * c_out * 9 + (c_out if bias else 0)


def test_binary_parameter_count():
    model = BinaryCNN()
    assert count_parameters(model) == 228_785
    assert n_params(model) == 228_785


def test_multiclass_parameter_count():
    model = MulticlassCNN()
    assert count_parameters(model) == 5_737_152
    assert n_params(model) == 5_737_152
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_parameter_counts_with_options():
    convs = [(3, 16), (16, 32), (32, 64), (64, 128)]
    expected = sum(conv_params(a, b, True) for a, b in convs) + 512 * 256 + 256 + 256 + 1
    assert n_params(BinaryCNN(bias=True)) == expected
    # batch norm: a scale and a shift per conv channel
    assert n_params(BinaryCNN(batch_norm=True)) == 228_785 + 2 * (16 + 32 + 64 + 128)
    # half width: 8, 16, 32, 64 channels, 128 hidden units
    half = [(3, 8), (8, 16), (16, 32), (32, 64)]
    expected = sum(conv_params(a, b, False) for a, b in half) + 64 * 4 * 128 + 128 + 128 + 1
    assert n_params(BinaryCNN(width=0.5)) == expected
    # multiclass with biases everywhere
    chans = [64, 64, 128, 128, 256, 256, 512, 512]
    assert n_params(MulticlassCNN(bias=True)) == 5_737_152 + sum(chans) + 512 + 10


def test_output_shapes():
    x = torch.randn(5, 3, 32, 32)
    assert BinaryCNN()(x).shape == (5,)
    out, ws = BinaryCNN()(x, with_weights=True)
    assert out.shape == (5,) and len(ws) == 6
    assert MulticlassCNN(width=0.25)(x).shape == (5, 10)
    assert BinaryCNN(dropout=0.3, batch_norm=True, bias=True)(x).shape == (5,)


def test_layer_names():
    assert layer_names(BinaryCNN()) == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
    assert layer_names(MulticlassCNN(width=0.25)) == [f"conv{i}" for i in range(1, 9)] + ["fc1", "fc2"]


def test_binary_architecture_shapes():
    """Four 3×3 convs without bias, 2×2 average pooling after each, 512 → 256 → 1 with biases."""
    model = BinaryCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 16, (3, 3), (1, 1)), (16, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert all(c.bias is None for c in convs)
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 4
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    shapes = [(fc.in_features, fc.out_features, fc.bias is not None) for fc in linears]
    assert shapes == [(512, 256, True), (256, 1, True)]


def test_binary_forward_matches_manual_computation():
    """The forward pass written out with torch.nn.functional."""
    model = build_model(RunConfig(init_scale=1.0, seed=2))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ws = weight_matrices(model)
    h = x
    for w in ws[:4]:
        h = torch.nn.functional.avg_pool2d(torch.relu(torch.nn.functional.conv2d(h, w, padding=1)), 2)
    fc1, fc2 = [m for m in model.modules() if isinstance(m, nn.Linear)]
    h = torch.relu(h.flatten(1) @ fc1.weight.T + fc1.bias)
    expected = (h @ fc2.weight.T + fc2.bias).squeeze(-1)
    torch.testing.assert_close(model(x), expected)


# ---------------------------------------------------------------- init
def test_kaiming_variance_on_large_layer():
    scale = 0.5
    model = build_model(RunConfig(task="multiclass", init_scale=scale, seed=3, model={"width": 0.5}))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    big = convs[-1]  # 256 → 256, 3×3: 589,824 weights, fan_in 2,304
    w = big.weight.detach().double().numpy()
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    expected_var = 2 / fan_in * scale**2
    # relative standard error of a sample variance of N normals: sqrt(2/N) ≈ 0.18 %
    assert w.var() == pytest.approx(expected_var, rel=0.02)
    assert abs(w.mean()) < 5 * np.sqrt(expected_var / w.size)
    # normal, not uniform: kurtosis 3
    assert np.mean((w - w.mean()) ** 4) / w.var() ** 2 == pytest.approx(3.0, rel=0.03)


@pytest.mark.parametrize("scale", [0.2, 1.0])
def test_kaiming_variance_every_binary_layer(scale):
    model = build_model(RunConfig(init_scale=scale, seed=11, model={"bias": True}))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().double().numpy()
            fan_in = int(np.prod(w.shape[1:]))
            expected = 2 / fan_in * scale**2
            tol = 6 * np.sqrt(2 / w.size)  # 6 standard errors of the sample variance
            assert w.var() == pytest.approx(expected, rel=max(tol, 0.02)), m
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), "biases start at zero"


def test_init_scale_multiplies_every_parameter():
    a = build_model(RunConfig(init_scale=1.0, seed=4))
    b = build_model(RunConfig(init_scale=0.2, seed=4))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        torch.testing.assert_close(pb, 0.2 * pa)


def test_seeded_init_reproducible_and_seed_dependent():
    a = build_model(RunConfig(seed=1)).state_dict()
    b = build_model(RunConfig(seed=1)).state_dict()
    c = build_model(RunConfig(seed=2)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight")]
    assert all(not torch.equal(a[k], c[k]) for k in weights)


# ---------------------------------------------------------------- weight normalisation
def test_weight_norm_norms_equal_abs_g_and_same_effective_init():
    plain = build_model(RunConfig(init_scale=0.4, seed=5))
    wn = build_model(RunConfig(init_scale=0.4, seed=5, model={"weight_norm": True}))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(wn(x), plain(x), rtol=1e-4, atol=1e-7)
    layers = [m for m in wn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for m in layers:
            m.parametrizations.weight[0].g.mul_(-1.7)  # any g, also negative
        for m, w in zip(layers, weight_matrices(wn)):
            g = m.parametrizations.weight[0].g
            np.testing.assert_allclose(np.linalg.norm(w.numpy()), abs(g.item()), rtol=1e-5)
    # the learnable parameters are V (original) and one scalar g per layer
    gs = [n for n, p in wn.named_parameters() if n.endswith(".g")]
    assert len(gs) == 6 and all(p.dim() == 0 for n, p in wn.named_parameters() if n.endswith(".g"))


@pytest.mark.parametrize("fn", [l2_sum, l2_mul])
def test_weight_norm_penalties_act_on_g(fn):
    wn = build_model(RunConfig(init_scale=0.4, seed=6, model={"weight_norm": True}))
    layers = [m for m in wn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    gs = np.array([m.parametrizations.weight[0].g.item() for m in layers], dtype=np.float64)
    value = fn(weight_matrices(wn))
    expected = np.sum(gs**2) if fn is l2_sum else np.prod(gs**2)
    assert value.item() == pytest.approx(expected, rel=1e-4)
    value.backward()
    for i, m in enumerate(layers):
        g = m.parametrizations.weight[0].g
        v = m.parametrizations.weight.original
        others = 1.0 if fn is l2_sum else np.prod(np.delete(gs**2, i))
        # ∂R/∂g_i = 2 g_i (· Π_{j≠i} g_j² for the product); R does not depend on the direction V
        assert g.grad.item() == pytest.approx(2 * gs[i] * others, rel=1e-3)
        assert v.grad.abs().max().item() <= 1e-5 * max(1.0, abs(g.grad.item()))
