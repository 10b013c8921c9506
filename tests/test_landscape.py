"""mulreg.results.landscape on tiny models and random data (no CIFAR): directions, surfaces and their
cache, Hessian numbers on a known quadratic, rebalancing, exports."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mulreg.config import RunConfig
from mulreg.core.metrics import layer_norms
from mulreg.core.models import build_model
from mulreg.report import surfaces as S
from mulreg.results import landscape as L


def read_vtp(path) -> dict[str, np.ndarray | int]:
    """The points (P, 3), the point-data arrays by name and the number of cells of a .vtp file."""
    if not Path(path).exists():
        raise FileNotFoundError(path)
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    data = poly.GetPointData()
    arrays = {data.GetArrayName(i): vtk_to_numpy(data.GetArray(i)) for i in range(data.GetNumberOfArrays())}
    return {"points": vtk_to_numpy(poly.GetPoints().GetData()), **arrays, "n_cells": poly.GetNumberOfCells()}


def tiny(task="binary", **model):
    return build_model(RunConfig.parse(dict(task=task, init_scale=1.0, model={"width": 0.25, **model}))).eval()


def data(n=24, task="binary", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    if task == "binary":
        return x, torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    return x, nn.functional.one_hot(torch.randint(0, 10, (n,), generator=g), 10).float()


def with_random_biases(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def own_loss(model, x, y):
    """The data MSE and accuracy computed directly, as in training."""
    with torch.no_grad():
        out = model.eval()(x)
    err = (out - y).square()
    loss = (err if y.dim() == 1 else err.mean(-1)).mean().item()
    ok = torch.sign(out) == y if y.dim() == 1 else out.argmax(-1) == y.argmax(-1)
    return loss, ok.float().mean().item()


def synthetic_surface(a=5, b=4):
    alphas, betas = np.linspace(-1, 1, a), np.linspace(-1, 1, b)
    loss = 0.1 + np.add.outer(alphas**2, 2 * betas**2)
    return L.Surface(alphas, betas, loss, np.full(loss.shape, 0.5), np.ones(loss.shape, bool), (0, 1), 0.0,
                     {"n_images": 10, "data": "synthetic", "fingerprint": "-", "seconds": 1.0})


# ---- directions

@pytest.mark.parametrize("opts", [{"bias": True}, {"weight_norm": True}])
def test_filter_normalised_direction(opts):
    model = tiny(**opts)
    d = L.filter_normalized_direction(model, seed=3)
    assert d.keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        if p.dim() > 1:  # every filter has the norm of the weight's filter
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
        else:  # biases and weight-norm g
            assert not d[name].any(), name
    again, other = L.filter_normalized_direction(model, 3), L.filter_normalized_direction(model, 4)
    assert all(torch.equal(d[n], again[n]) for n in d)
    assert abs(L.cosine(d, other)) < 0.1
    assert L.cosine(d, again) == pytest.approx(1.0)


# ---- surfaces

@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_grid_centre_and_points_match_direct_evaluation(task):
    model = with_random_biases(tiny(task, bias=True))
    x, y = data(task=task)
    surf = L.surface(model, x, y, [-0.5, 0.0, 0.5], [-0.25, 0.0, 0.25], seeds=(0, 1), progress=False)
    assert surf.complete and surf.loss.shape == (3, 3)
    loss, acc = own_loss(model, x, y)
    assert surf.loss[1, 1] == pytest.approx(loss, rel=1e-5)
    assert surf.acc[1, 1] == pytest.approx(acc)
    # a corner, by moving a copy of the weights by hand
    d1, d2 = L.filter_normalized_direction(model, 0), L.filter_normalized_direction(model, 1)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(0.5 * d1[name] - 0.25 * d2[name])
    loss, acc = own_loss(moved, x, y)
    assert surf.loss[2, 0] == pytest.approx(loss, rel=1e-4)
    assert surf.acc[2, 0] == pytest.approx(acc)
    assert surf.meta["n_images"] == len(x) and abs(surf.cosine) < 0.1


@pytest.mark.parametrize("opts", [{"bias": True}, {"batch_norm": True}])
def test_vmap_and_one_by_one_agree(opts):
    model = with_random_biases(tiny(**opts))
    x, y = data()
    grid = dict(alphas=np.linspace(-1, 1, 3), betas=np.linspace(-1, 1, 2), progress=False)
    a = L.surface(model, x, y, **grid, vectorize=True, pass_size=40)
    b = L.surface(model, x, y, **grid, vectorize=False, pass_size=10)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-4)
    np.testing.assert_array_equal(a.acc, b.acc)


def test_bfloat16_autocast_is_close_to_float32():
    model = with_random_biases(tiny(bias=True))
    x, y = data()
    grid = dict(alphas=np.linspace(-1, 1, 3), betas=np.linspace(-1, 1, 3), progress=False)
    exact = L.surface(model, x, y, **grid)
    fast = L.surface(model, x, y, **grid, autocast=torch.bfloat16)
    np.testing.assert_allclose(fast.loss, exact.loss, rtol=0.05)
    assert fast.meta["fingerprint"] != exact.meta["fingerprint"]


def test_one_d_slice_and_weight_norm_model():
    model = tiny(weight_norm=True)
    x, y = data()
    surf = L.surface(model, x, y, np.linspace(-1, 1, 5), progress=False)
    assert surf.loss.shape == (5, 1) and surf.complete
    assert surf.loss[2, 0] == pytest.approx(own_loss(model, x, y)[0], rel=1e-5)


class Counting:
    """Wraps landscape.evaluate: counts the points evaluated, can fail on a given call."""

    def __init__(self, fail_on_call=None):
        self.points, self.calls, self.fail_on_call = 0, 0, fail_on_call
        self.real = L.evaluate

    def __call__(self, model, stacked, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        self.points += next(iter(stacked.values())).shape[0]
        return self.real(model, stacked, *args, **kwargs)


def test_cache_is_reused_and_partial_cache_resumes(tmp_path, monkeypatch):
    model = tiny()
    x, y = data(16)
    grid = dict(alphas=np.linspace(-1, 1, 3), betas=np.linspace(-1, 1, 3), models_per_pass=4, progress=False)
    full = L.surface(model, x, y, **grid)  # reference, no cache
    cache = tmp_path / "surface.npz"

    interrupted = Counting(fail_on_call=2)
    monkeypatch.setattr(L, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        L.surface(model, x, y, **grid, cache=cache)
    assert L.Surface.load(cache).done.sum() == 4 and not list(tmp_path.glob("*.tmp"))

    resumed = Counting()
    monkeypatch.setattr(L, "evaluate", resumed)
    surf = L.surface(model, x, y, **grid, cache=cache)
    assert resumed.points == 5  # only the 9 − 4 missing points
    np.testing.assert_allclose(surf.loss, full.loss, rtol=1e-6)

    cached = Counting()
    monkeypatch.setattr(L, "evaluate", cached)
    again = L.surface(model, x, y, **grid, cache=cache)
    assert cached.calls == 0
    np.testing.assert_array_equal(again.loss, surf.loss)
    np.testing.assert_array_equal(again.acc, surf.acc)
    assert again.seeds == (0, 1) and again.cosine == surf.cosine and again.meta == surf.meta

    with pytest.warns(UserWarning, match="another model"):  # other seeds: recomputed
        L.surface(model, x, y, **grid, seeds=(2, 3), cache=cache)
    assert cached.points == 9


# ---- flatness

class Linear(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 1)

    def forward(self, x):
        return self.fc(x).squeeze(-1)


def quadratic_problem(n=64, scales=(3.0, 2.0, 1.5, 1.0, 0.5, 0.25)):
    """MSE of a linear model f(x) = w·x + b: L = mean (w·x + b − y)², Hessian 2/N [XᵀX, Xᵀ1; 1ᵀX, N].
    X has orthogonal columns (orthogonal to 1 as well) of norms `scales`·√N, so the Hessian is
    diag(2·scales², 2): trace 2Σs² + 2, top eigenvalue 2·max s²."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.cat([torch.ones(n, 1), torch.randn(n, len(scales), generator=g)], 1))
    x = q[:, 1:] * torch.tensor(scales) * n**0.5
    y = torch.randn(n, generator=g)
    model = Linear(len(scales))
    s2 = torch.tensor(scales).square()
    return model, x, y, (2 * s2.sum() + 2).item(), (2 * s2.max()).item()


def test_hessian_numbers_on_a_known_quadratic():
    model, x, y, trace, top = quadratic_problem()
    assert L.top_eigenvalue(model, x, y, iters=100, tol=1e-7, batch=20) == pytest.approx(top, rel=0.01)
    estimate, _ = L.hessian_trace(model, x, y, samples=5, batch=20)
    assert estimate == pytest.approx(trace, rel=0.01)


def test_top_eigenvalue_on_a_general_quadratic():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 5, generator=g), torch.randn(50, generator=g)
    model = Linear(5)
    design = torch.cat([x, torch.ones(50, 1)], 1).double()
    hessian = 2 / len(x) * design.T @ design
    top = L.top_eigenvalue(model, x, y, iters=300, tol=1e-9)
    assert top == pytest.approx(torch.linalg.eigvalsh(hessian)[-1].item(), rel=0.01)
    estimate, se = L.hessian_trace(model, x, y, samples=400, seed=2)
    assert abs(estimate - hessian.trace().item()) < 4 * se


def test_flatness_table_row():
    model = tiny()
    x, y = data(16)
    row = L.flatness(model, x, y, radii=(0.1, 0.5), seeds=range(3), iters=3, samples=2)
    assert {"loss", "acc", "hessian_top", "hessian_trace", "hessian_trace_se", "sharpness_r0.1",
            "sharpness_r0.5_std", "asam_rho0.1"} <= row.keys()
    assert all(math.isfinite(v) for v in row.values())
    assert row["loss"] == pytest.approx(own_loss(model, x, y)[0], rel=1e-5)


# ---- scale control

def unbalanced(model):
    with torch.no_grad():
        for layer, c in zip([m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))],
                            [4.0, 0.5, 1.0, 3.0, 0.2, 2.0]):
            if hasattr(layer, "parametrizations"):
                layer.parametrizations.weight[0].g.mul_(c)
            else:
                layer.weight.mul_(c)
    return model


@pytest.mark.parametrize("opts", [{"bias": True}, {"weight_norm": True, "bias": True}])
def test_rebalance_keeps_the_function_and_equalises_norms(opts):
    model = unbalanced(with_random_biases(tiny(**opts)))
    x, y = data(16)
    balanced = L.rebalance(model)
    norms, new = layer_norms(model), layer_norms(balanced)
    assert norms.std() > 0.1 * norms.mean()
    torch.testing.assert_close(new, torch.full_like(new, norms.log().mean().exp().item()))
    assert new.prod().item() == pytest.approx(norms.prod().item(), rel=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(balanced(x), model(x), rtol=1e-4, atol=1e-5 * model(x).abs().max().item())
    # the scale-aware sharpness numbers do not see the rescaling
    np.testing.assert_allclose(L.sharpness(balanced, x, y, [0.2], [0, 1]), L.sharpness(model, x, y, [0.2], [0, 1]),
                               rtol=1e-3, atol=1e-6)
    assert L.adaptive_sharpness(balanced, x, y, 0.1) == pytest.approx(L.adaptive_sharpness(model, x, y, 0.1),
                                                                      rel=1e-3, abs=1e-6)


def test_rebalance_refuses_batch_norm():
    with pytest.raises(ValueError, match="BatchNorm2d"):
        L.rebalance(tiny(batch_norm=True))


# ---- export

def test_vtp_reads_back(tmp_path):
    surf = synthetic_surface(5, 4)
    path = tmp_path / "surface.vtp"
    S.write_vtp(surf, path)
    back = read_vtp(path)
    assert back["points"].shape == (20, 3) and back["n_cells"] == 4 * 3
    np.testing.assert_allclose(back["loss"], surf.loss.ravel())
    np.testing.assert_allclose(back["points"][:, 2], np.log10(surf.loss).ravel())
    assert [p.name for p in tmp_path.iterdir()] == ["surface.vtp"]


def test_plots_share_scales():
    surfaces = {"additive": synthetic_surface(), "multiplicative": synthetic_surface()}
    surfaces["multiplicative"].loss = surfaces["multiplicative"].loss * 10
    fig = S.plot_surfaces_3d(surfaces)
    assert [t.name for t in fig.data] == ["additive", "multiplicative"]
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert fig.layout.coloraxis.cmax == pytest.approx(np.log10(surfaces["multiplicative"].loss).max())
    contours = S.plot_contours(surfaces)
    assert len(contours.axes) == 3  # two panels and the shared colour bar
    incomplete = synthetic_surface()
    incomplete.done[0, 0] = False
    with pytest.raises(ValueError, match="not complete"):
        S.plot_contours({"x": incomplete})


# ---- devices
def test_the_landscape_helpers_keep_every_tensor_on_the_models_device(tiny_cifar_image_folder):
    """Notebook 04 evaluates on the sweep's device: models, images, directions, losses, Hessian
    products and rebalanced copies all stay there (checked on the `meta` device, which a CPU has)."""
    import pandas as pd

    from mulreg.engine.result import RunResult
    from mulreg.results.analysis import landscape_data

    config = RunConfig.parse(dict(init_scale=1.0, model={"width": 0.25, "bias": True}, n_train=12, n_test=6))
    result = RunResult(config=config, history=pd.DataFrame(), metrics={}, stop_reason="max_epochs",
                       state_dict=build_model(config).state_dict(), test_margins=np.zeros(0))
    meta = torch.device("meta")
    model = result.model(meta)
    x, y, _ = landscape_data(config, 8, "train", root=tiny_cifar_image_folder, device=meta)
    xt, yt, _ = landscape_data(config, 4, "test", root=tiny_cifar_image_folder, device=meta)
    direction = L.filter_normalized_direction(model, seed=0)
    stacked = {n: torch.stack([p.detach(), p.detach() + direction[n]]) for n, p in model.named_parameters()}
    loss, acc = L.evaluate(model, stacked, x, y)
    tensors = {"model": list(model.parameters()), "images": [x, y, xt, yt], "direction": list(direction.values()),
               "losses": [loss, acc], "hvp": list(L.hvp(model, x, y, direction).values()),
               "rebalanced": list(L.rebalance(model).parameters())}
    assert {name: {t.device for t in ts} for name, ts in tensors.items()} == {name: {meta} for name in tensors}
    assert loss.shape == acc.shape == (2,)
