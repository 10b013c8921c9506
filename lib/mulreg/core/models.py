"""The paper's two CNNs (docs/PAPER.md, "Network"), with the switches the authors' code has.

Both are plain stacks: [conv → (BN) → ReLU] blocks with 2×2 average pooling, then two linear
layers. Kaiming-normal init (variance 2/fan_in, biases 0), then every parameter × `init_scale`.
With `weight_norm`, each conv/linear weight is W = g · V/‖V‖_F with a learnable scalar g, so
‖W‖_F = |g| and the penalties act on g, as in the authors' code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from mulreg.config import RunConfig


class ScaledUnitNorm(nn.Module):
    """Weight normalisation with one scale per layer: W = g · V/‖V‖_F."""

    def __init__(self, g: float):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(float(g)))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.g * v / v.norm()


class PaperCNN(nn.Module):
    """Conv blocks (channels `blocks`, `convs_per_block` convs each, pooled after each block), then
    Linear(flat → hidden) → ReLU → Linear(hidden → outputs)."""

    def __init__(self, blocks, convs_per_block, hidden, outputs, *, bias=False, fc_bias=True,
                 batch_norm=False, dropout=0.0, width=1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in blocks:
            c_out = max(1, round(c * width))
            for _ in range(convs_per_block):
                layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU())
                c_in = c_out
            layers.append(nn.AvgPool2d(2))
        side = 32 // 2 ** len(blocks)
        hidden = max(1, round(hidden * width))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, hidden, bias=fc_bias),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Linear(hidden, outputs, bias=fc_bias),
        )
        self.outputs = outputs

    def forward(self, x: torch.Tensor, with_weights: bool = False):
        out = self.classifier(self.features(x))
        out = out.squeeze(-1) if self.outputs == 1 else out
        return (out, weight_matrices(self)) if with_weights else out


def BinaryCNN(*, width=1.0, bias=False, batch_norm=False, dropout=0.0) -> PaperCNN:
    """3→16→32→64→128 convs, 512→256→1 (228,785 parameters with defaults)."""
    return PaperCNN((16, 32, 64, 128), 1, 256, 1, bias=bias, fc_bias=True,
                    batch_norm=batch_norm, dropout=dropout, width=width)


def MulticlassCNN(*, width=1.0, bias=False, batch_norm=False, dropout=0.0) -> PaperCNN:
    """Four blocks of two convs (64, 128, 256, 512), 2048→512→10, no biases (5,737,152 parameters)."""
    return PaperCNN((64, 128, 256, 512), 2, 512, 10, bias=bias, fc_bias=bias,
                    batch_norm=batch_norm, dropout=dropout, width=width)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The conv and linear layers, in forward order."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """W_1..W_L: conv and linear weights in forward order (effective weights under weight norm)."""
    return [m.weight for m in weight_layers(model)]


def direction_parameters(model: nn.Module) -> list[str]:
    """Per weight layer, in forward order, the name of the parameter that holds its weight: the
    weight itself, or V under weight norm (W = g·V/‖V‖, whose direction is V's)."""
    names = []
    for prefix, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight = "parametrizations.weight.original" if parametrize.is_parametrized(m, "weight") else "weight"
            names.append(f"{prefix}.{weight}")
    return names


def layer_names(model: nn.Module) -> list[str]:
    """conv1..convN, fc1, fc2: the names the paper's Table 1 uses, in forward order."""
    kinds = ["conv" if isinstance(m, nn.Conv2d) else "fc" for m in weight_layers(model)]
    return [f"{k}{kinds[: i + 1].count(k)}" for i, k in enumerate(kinds)]


def init_weights(model: nn.Module, scale: float, seed: int) -> None:
    """Kaiming-normal weights (variance 2/fan_in), zero biases, then every parameter × `scale`."""
    from mulreg.core.data import generator

    g = generator(seed, "init")
    with torch.no_grad():
        for m in weight_layers(model):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.zero_()
        for p in model.parameters():
            p.mul_(scale)


def add_weight_norm(model: nn.Module) -> None:
    """Reparametrise every conv/linear weight as g · V/‖V‖_F, g starting at the current ‖W‖_F."""
    for m in weight_layers(model):
        parametrize.register_parametrization(m, "weight", ScaledUnitNorm(m.weight.norm().item()))


def build_model(config: RunConfig) -> PaperCNN:
    """The network of `config.task`, initialised from `config.seed` (on the CPU)."""
    opts = config.model
    make = BinaryCNN if config.task == "binary" else MulticlassCNN
    model = make(width=opts.width, bias=opts.bias, batch_norm=opts.batch_norm, dropout=opts.dropout)
    init_weights(model, config.init_scale, config.seed)
    if opts.weight_norm:
        add_weight_norm(model)
    return model
