"""Loss landscape and flatness of a trained network (paper, Fig. 3).

Directions are Gaussian and normalised filter-wise (Li et al., 2018, "Visualizing the Loss
Landscape of Neural Nets", Sec. 4): each filter of d is rescaled to the norm of the matching
filter of θ, and biases and normalisation parameters get direction 0. A surface is the data loss
(MSE only; the penalty is reported separately) and the accuracy of θ + α·d₁ + β·d₂ on fixed data
in eval mode, evaluated in chunks of grid points (one `vmap`ped `functional_call` per chunk on an
accelerator; one model at a time on a CPU, where that is faster) and saved chunk by chunk to a
cache so an interrupted computation resumes.

Flatness: top Hessian eigenvalue (power iteration on Hessian-vector products), Hessian trace
(Hutchinson), and two scale-aware sharpness numbers. `rebalance` is the scale control: a ReLU
network with the same function and equal layer norms, where raw Hessian numbers change but the
scale-aware ones do not. Figures and files of surfaces: `mulreg.report.surfaces`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.utils import parametrize

from mulreg.core.data import generator
from mulreg.core.metrics import correct, eval_mode, layer_norms, squared_error
from mulreg.core.models import ScaledUnitNorm, weight_layers
from mulreg.progress import bar as progress_bar
from mulreg.protocols import Split

Params = dict[str, torch.Tensor]
PASS_SIZE = 2048  # models × images per forward pass: bounds activation memory
HOMOGENEOUS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Identity,
               nn.Dropout, ScaledUnitNorm)


# ---- directions

def is_perturbed(p: torch.Tensor) -> bool:
    """Conv kernels and linear matrices (or their weight-norm direction V) are perturbed; biases,
    batch-norm affine parameters and weight-norm scales g (all ≤ 1-D) get direction 0
    (Li et al., 2018, Sec. 4, 'biasbn')."""
    return p.dim() > 1


def filter_normalized_direction(model: nn.Module, seed: int) -> Params:
    """One seeded Gaussian tensor per parameter, each filter rescaled to its weight filter's norm."""
    g = generator(seed, "landscape-direction")
    out = {}
    for name, p in model.named_parameters():
        if not is_perturbed(p):
            out[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=g).to(p)
        # d_ij ← d_ij / ‖d_ij‖ · ‖θ_ij‖ for filter j (conv output channel, linear row) of layer i
        # (Li et al., 2018, Eq. 1)
        ratio = p.detach().flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)
        out[name] = d * ratio.view(-1, *[1] * (p.dim() - 1))
    return out


def cosine(d1: Params, d2: Params) -> float:
    """cos ∠(d₁, d₂) of the concatenated directions (near 0 for independent Gaussian ones)."""
    a, b = (torch.cat([t.flatten() for t in d.values()]) for d in (d1, d2))
    return (a @ b / (a.norm() * b.norm())).item()


# ---- evaluation of many perturbed models

def _per_sample(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss and correctness per sample; y are float targets, ±1 (N,) or one-hot (N, C)."""
    return squared_error(out, y), correct(out, y)


@torch.no_grad()
def evaluate(model: nn.Module, stacked: Params, x: torch.Tensor, y: torch.Tensor,
             pass_size: int = PASS_SIZE, vectorize: bool | None = None,
             autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy on (x, y) of K models: `model` with the tensors of `stacked` (each
    (K, ...), by parameter name) swapped in. `vectorize` (default: off the CPU) runs all K in one
    vmapped forward pass per batch of pass_size/K images; otherwise one model at a time on batches
    of pass_size images, which is faster on a CPU, where vmap's grouped convolutions and layout
    copies cost more than they save. Images go channels-last (faster oneDNN convolutions).
    `autocast=torch.bfloat16` runs the forward pass in bfloat16 (faster on a CPU with AMX,
    docs/PERFORMANCE.md; losses then differ from float32 by ~0.4 % typically, a few % at worst); errors are
    summed in float32."""
    k = next(iter(stacked.values())).shape[0]
    device = next(iter(stacked.values())).device
    vectorize = device.type != "cpu" if vectorize is None else vectorize

    def run(params, xb, yb):
        return _per_sample(functional_call(model, params, (xb,)).float(), yb)

    def one_by_one(params, xb, yb):
        per_model = [run({n: t[i] for n, t in params.items()}, xb, yb) for i in range(k)]
        return tuple(torch.stack(v) for v in zip(*per_model))

    fn, batch = (vmap(run, in_dims=(0, None, None)), max(1, pass_size // k)) if vectorize else (one_by_one, pass_size)
    layout = torch.channels_last if x.dim() == 4 else torch.preserve_format
    sums = torch.zeros(2, k, device=device)
    precision = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with eval_mode(model), precision:
        for s in range(0, len(x), batch):
            xb = x[s:s + batch].to(device, memory_format=layout)
            loss, ok = fn(stacked, xb, y[s:s + batch].to(device))
            sums += torch.stack([loss.sum(1), ok.sum(1)])
    return sums[0] / len(x), sums[1] / len(x)


def _grid_points(theta: Params, d1: Params, d2: Params, ab: torch.Tensor) -> Params:
    """θ + α·d₁ + β·d₂ for K pairs (α, β), stacked along a new first dimension."""
    def col(v, t):
        return v.view(-1, *[1] * t.dim())

    return {n: t + col(ab[:, 0], t) * d1[n] + col(ab[:, 1], t) * d2[n] for n, t in theta.items()}


# ---- surfaces

@dataclass
class Surface:
    """Loss and accuracy of θ + α·d₁ + β·d₂ on a grid (a 1-D slice has betas = [0])."""

    alphas: np.ndarray  # (A,)
    betas: np.ndarray  # (B,)
    loss: np.ndarray  # (A, B) data MSE; NaN where not computed yet
    acc: np.ndarray  # (A, B)
    done: np.ndarray  # (A, B) bool: computed points
    seeds: tuple[int, int]  # seeds of d₁, d₂ (filter_normalized_direction)
    cosine: float  # cos ∠(d₁, d₂)
    meta: dict = field(default_factory=dict)  # n_images, data, autocast, fingerprint, seconds

    @classmethod
    def empty(cls, alphas: np.ndarray, betas: np.ndarray, seeds, cosine: float, meta: dict) -> Surface:
        nan = np.full((len(alphas), len(betas)), np.nan)
        return cls(alphas, betas, nan, nan.copy(), np.zeros(nan.shape, bool), tuple(map(int, seeds)), cosine, meta)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def throughput(self) -> float:
        """Models × images evaluated per second of compute (whole grid, over all sessions)."""
        return self.loss.size * self.meta["n_images"] / self.meta["seconds"]

    def save(self, path: str | os.PathLike) -> None:
        """Write to a .npz (arrays + a JSON header) atomically: temporary file, then os.replace."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        header = json.dumps({"seeds": list(self.seeds), "cosine": self.cosine, "meta": self.meta})
        with open(tmp, "wb") as f:
            np.savez(f, alphas=self.alphas, betas=self.betas, loss=self.loss, acc=self.acc,
                     done=self.done, header=np.array(header))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Surface:
        with np.load(path) as z:
            header = json.loads(str(z["header"]))
            return cls(z["alphas"], z["betas"], z["loss"], z["acc"], z["done"],
                       tuple(header["seeds"]), header["cosine"], header["meta"])


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *grid) -> str:
    """Hash of everything a surface depends on: weights, buffers, data and the grid."""
    h = hashlib.sha256()
    for t in [*model.state_dict().values(), x, y]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([np.asarray(g).tolist() for g in grid]).encode())
    return h.hexdigest()[:16]


def _cached(cache: str | os.PathLike | None, key: str) -> Surface | None:
    if cache is None or not Path(cache).exists():
        return None
    saved = Surface.load(cache)
    if saved.meta.get("fingerprint") == key:
        return saved
    warnings.warn(f"{cache} holds a surface of another model, data or grid; recomputing it")
    return None


def surface(model: nn.Module, x: torch.Tensor, y: torch.Tensor, alphas: Sequence[float],
            betas: Sequence[float] | None = None, *, seeds: tuple[int, int] = (0, 1),
            cache: str | os.PathLike | None = None, data: str = "", models_per_pass: int = 32,
            pass_size: int = PASS_SIZE, vectorize: bool | None = None, autocast: torch.dtype | None = None,
            progress: bool = True) -> Surface:
    """Data loss and accuracy of θ + α·d₁ + β·d₂ over alphas × betas (betas None: the 1-D slice
    along d₁) on (x, y), float targets as `Pool.targets` gives them; pass a fixed, unshuffled
    subset and describe it in `data`. `models_per_pass` points are evaluated together (see
    `evaluate` for `pass_size`, `vectorize` and `autocast`). With `cache`, every finished chunk
    is saved; a complete cache of the same model, data, grid, seeds and precision is returned
    without recomputation, a partial one is resumed."""
    alphas = np.asarray(alphas, dtype=float)
    betas = np.zeros(1) if betas is None else np.asarray(betas, dtype=float)
    key = fingerprint(model, x, y, alphas, betas, seeds, str(autocast))
    surf = _cached(cache, key)
    if surf is not None and surf.complete:
        return surf
    d1, d2 = (filter_normalized_direction(model, s) for s in seeds)
    if surf is None:
        meta = {"n_images": len(x), "data": data, "autocast": str(autocast), "fingerprint": key, "seconds": 0.0}
        surf = Surface.empty(alphas, betas, seeds, cosine(d1, d2), meta)
    theta = {n: p.detach() for n, p in model.named_parameters() if is_perturbed(p)}
    device = next(iter(theta.values())).device
    # on the device and channels-last once, not in every pass of `evaluate`
    x = x.to(device, memory_format=torch.channels_last) if x.dim() == 4 else x.to(device)
    todo = np.argwhere(~surf.done)
    with progress_bar(total=surf.done.size, initial=int(surf.done.sum()), unit="model", disable=not progress,
                      desc=f"surface on {len(x)} images") as bar:
        for s in range(0, len(todo), models_per_pass):
            i, j = todo[s:s + models_per_pass].T
            start = time.perf_counter()
            ab = torch.tensor(np.stack([alphas[i], betas[j]], 1)).to(next(iter(theta.values())))
            loss, acc = evaluate(model, _grid_points(theta, d1, d2, ab), x, y, pass_size, vectorize, autocast)
            surf.loss[i, j], surf.acc[i, j], surf.done[i, j] = loss.cpu().numpy(), acc.cpu().numpy(), True
            surf.meta["seconds"] += time.perf_counter() - start
            if cache is not None:
                surf.save(cache)
            bar.update(len(i))
    return surf


# ---- flatness

def _loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def loss(params: Params) -> torch.Tensor:
        return _per_sample(functional_call(model, params, (x,)), y)[0].mean()
    return loss


def hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: Params, batch: int = 1000) -> Params:
    """H·v of the data loss on (x, y) w.r.t. all parameters, as the forward derivative of the
    gradient along v (forward-over-reverse, torch.func), summed over batches weighted by size."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    with eval_mode(model), warnings.catch_warnings():
        # torch's own forward-AD set-up still scripts its decompositions on first use
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        for s in range(0, len(x), batch):
            xb, yb = x[s:s + batch], y[s:s + batch]
            _, hv = jvp(grad(_loss_of(model, xb, yb)), (params,), (v,))
            for n in total:
                total[n] += hv[n] * (len(xb) / len(x))
    return total


def _dot(a: Params, b: Params) -> float:
    return sum((a[n] * b[n]).sum() for n in a).item()


def top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, iters: int = 20,
                   tol: float = 1e-3, seed: int = 0, batch: int = 1000) -> float:
    """Largest-magnitude eigenvalue of the Hessian of the data loss, by power iteration:
    v ← Hv/‖Hv‖, λ = vᵀHv, until λ changes by less than `tol` relative."""
    g = generator(seed, "power-iteration")
    v = {n: torch.randn(p.shape, generator=g).to(p) for n, p in model.named_parameters()}
    lam = float("nan")
    for _ in range(iters):
        norm = _dot(v, v) ** 0.5
        v = {n: t / norm for n, t in v.items()}
        hv = hvp(model, x, y, v, batch)
        prev, lam = lam, _dot(v, hv)  # Rayleigh quotient of the unit vector v
        v = hv
        if abs(lam - prev) <= tol * abs(lam):
            break
    return lam


def hessian_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, samples: int = 20,
                  seed: int = 0, batch: int = 1000) -> tuple[float, float]:
    """tr H ≈ mean of vᵀHv over Rademacher vectors v (Hutchinson, 1989: E[vvᵀ] = I, so
    E[vᵀHv] = tr H); returns (estimate, standard error)."""
    g = generator(seed, "hutchinson")
    est = []
    for _ in range(samples):
        v = {n: (torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p) for n, p in model.named_parameters()}
        est.append(_dot(v, hvp(model, x, y, v, batch)))
    se = np.std(est, ddof=1) / samples**0.5 if samples > 1 else float("nan")
    return float(np.mean(est)), float(se)


def sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float],
              seeds: Iterable[int], pass_size: int = PASS_SIZE) -> np.ndarray:
    """L(θ + r·d_s) − L(θ) for every radius r (rows) and filter-normalised direction d_s (columns).
    Scale-aware: each filter moves by r times its own norm, so rescaling layers leaves it unchanged."""
    theta = {n: p.detach() for n, p in model.named_parameters() if is_perturbed(p)}
    dirs = [filter_normalized_direction(model, s) for s in seeds]
    stacked = {n: torch.stack([t] + [t + r * d[n] for r in radii for d in dirs]) for n, t in theta.items()}
    loss, _ = evaluate(model, stacked, x, y, pass_size)
    return (loss[1:] - loss[0]).view(len(radii), len(dirs)).cpu().numpy()


def adaptive_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float,
                       batch: int = 1000) -> float:
    """ASAM's worst case in the ball ‖T⁻¹ε‖ ≤ ρ with T = |w| (Kwon et al., 2021), by its one-step
    solution ε = ρ·T²∇L / ‖T∇L‖, on the weights only (biases and g fixed): L(θ + ε) − L(θ).
    Invariant to rescaling the layers of a ReLU network."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    weights = [n for n, p in params.items() if is_perturbed(p)]
    g = {n: torch.zeros_like(p) for n, p in params.items()}
    with eval_mode(model):
        for s in range(0, len(x), batch):
            xb, yb = x[s:s + batch], y[s:s + batch]
            gb = grad(_loss_of(model, xb, yb))(params)
            for n in weights:
                g[n] += gb[n] * (len(xb) / len(x))
    tg = {n: params[n].abs() * g[n] for n in weights}  # T∇L
    scale = rho / _dot(tg, tg) ** 0.5
    stacked = {n: torch.stack([params[n], params[n] + scale * params[n].abs() * tg[n]]) for n in weights}
    loss, _ = evaluate(model, stacked, x, y)
    return (loss[1] - loss[0]).item()


def flatness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, radii: Sequence[float] = (0.1, 0.25, 0.5),
             seeds: Sequence[int] = range(5), rho: float = 0.1, iters: int = 20, samples: int = 20,
             seed: int = 0, batch: int = 1000) -> dict[str, float]:
    """All flatness numbers of `model` on the same fixed (x, y), as one table row: loss, acc,
    hessian_top, hessian_trace (± hessian_trace_se), sharpness_r{r} (mean over the direction
    `seeds`, and its _std), asam_rho{rho}. `batch` bounds the images per Hessian-vector product."""
    centre = {n: p.detach()[None] for n, p in model.named_parameters() if is_perturbed(p)}
    loss, acc = evaluate(model, centre, x, y)
    trace, trace_se = hessian_trace(model, x, y, samples=samples, seed=seed, batch=batch)
    sharp = sharpness(model, x, y, radii, seeds)
    return {
        "loss": loss.item(), "acc": acc.item(),
        "hessian_top": top_eigenvalue(model, x, y, iters=iters, seed=seed, batch=batch),
        "hessian_trace": trace, "hessian_trace_se": trace_se,
        **{f"sharpness_r{r:g}": float(row.mean()) for r, row in zip(radii, sharp)},
        **{f"sharpness_r{r:g}_std": float(row.std(ddof=1)) if len(row) > 1 else float("nan")
           for r, row in zip(radii, sharp)},
        f"asam_rho{rho:g}": adaptive_sharpness(model, x, y, rho, batch),
    }


# ---- scale control

def _scale_weight(layer: nn.Module, c: torch.Tensor) -> None:
    if not parametrize.is_parametrized(layer, "weight"):
        layer.weight.mul_(c)
    elif isinstance(layer.parametrizations.weight[0], ScaledUnitNorm):
        layer.parametrizations.weight[0].g.mul_(c)  # W = g·V/‖V‖: scaling g scales W
    else:
        raise ValueError(f"cannot rescale a weight parametrised by {type(layer.parametrizations.weight[0]).__name__}")


def rebalance(model: nn.Module) -> nn.Module:
    """A copy of a plain ReLU chain (conv/linear layers in `weight_layers` order, ReLU and
    pooling between them, no batch norm) computing the same function with every layer at the
    geometric mean ‖W‖ of the original norms (so Π‖W_i‖ is unchanged).

    Layer i is scaled by c_i = mean/‖W_i‖ and its bias by C_i = c_1⋯c_i: ReLU and pooling are
    positively homogeneous, so layer i's output becomes C_i times the original, and the network's
    output C_L = Π c_i = 1 times it."""
    leaves = {type(m).__name__ for m in model.modules()
              if not list(m.children()) and not isinstance(m, HOMOGENEOUS)}
    if leaves:
        raise ValueError(f"rebalance needs a ReLU network of conv/linear layers without batch norm; "
                         f"{sorted(leaves)} are not positively homogeneous")
    new = copy.deepcopy(model)
    layers = weight_layers(new)
    with torch.no_grad():
        norms = layer_norms(new).double()
        target = norms.log().mean().exp()  # geometric mean
        cumulative = torch.ones((), dtype=torch.float64)
        for layer, norm in zip(layers, norms):
            c = target / norm
            cumulative = cumulative * c
            _scale_weight(layer, c.float())
            if layer.bias is not None:
                layer.bias.mul_(cumulative.float())
    return new


def landscape_data(config, n_images: int, split: str = Split.TRAIN, root=None,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, str]:
    """A fixed, unshuffled subset for landscapes and flatness, on `device` (that of the models it
    is evaluated with): the first `n_images` images of the run's training split in data-set order,
    with its (possibly noisy) training targets, or of the test set. Returns (x, y, description)."""
    from mulreg.core.data import pool_for, split_run

    pool = pool_for(config, root)
    if Split(split) not in (Split.TRAIN, Split.TEST):  # an unknown name raises ValueError here
        raise ValueError(f"landscape split: got {split!r}; allowed: train, test")
    if split == Split.TEST:
        x, y = pool.x_test[:n_images], pool.targets(pool.y_test[:n_images])
        return x.to(device), y.to(device), f"first {len(x)} test images (clean labels)"
    data = split_run(pool, config.seed, config.label_noise, config.val_fraction)
    idx = data.train_idx.sort().values[:n_images]
    y = pool.targets(data.labels)[idx]
    return pool.x_train[idx].to(device), y.to(device), (
        f"first {len(idx)} images of the training split (seed {config.seed}, "
        f"data-set order, training labels with noise {config.label_noise:g})")
