"""`make bench`: training throughput of the binary network at batch size 16, side by side.

(a) a reference loop written the way the authors' code trains (a torchvision-style data set with
    per-sample transforms, DataLoader, per-batch penalty and `.item()` bookkeeping, evaluating the
    train and test sets every epoch); (b) `mulreg.engine.train.train`; (c) `mulreg.engine.sweep.run` on K runs
    with the strategy it picks for the device; (d) the same K runs in one process through a stack
    of `--slots` slots refilled as runs finish (continuous batching), to say which strategy wins.
    Unit: training images × runs per second, wall time of whole epochs (evaluation included). Also
    the ceiling: measured matmul FLOP/s of the device divided by the network's training FLOPs per
    image. Medians of `--repeats` timings; a table on stdout and JSON in bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mulreg import provenance
from mulreg.config import PROJECT_ROOT, RunConfig
from mulreg.core.data import MEAN, STD, load_cifar10
from mulreg.core.devices import resolve_device
from mulreg.core.models import build_model, weight_layers
from mulreg.core.penalties import l2_mul
from mulreg.engine.sweep import SweepSpec, run
from mulreg.engine.train import train


class AuthorsStyleCIFAR(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 HWC array → PIL → transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()
        self.transform = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def binary_subset(split, cap: int):
    """The first cap/2 cats (→ −1) and cap/2 deer (→ +1), as uint8 images and float labels."""
    idx = torch.cat([(split.labels == c).nonzero().flatten()[: cap // 2] for c in (3, 4)])
    return split.images[idx], torch.where(split.labels[idx] == 4, 1.0, -1.0)


def reference_loop(config: RunConfig, epochs: int, device: torch.device) -> None:
    """The authors' training loop, in their style (one run)."""
    train_split, test_split = load_cifar10()
    train_set = AuthorsStyleCIFAR(*binary_subset(train_split, config.n_train))
    test_set = AuthorsStyleCIFAR(*binary_subset(test_split, config.n_test))
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True)
    eval_loaders = [DataLoader(s, batch_size=config.batch_size) for s in (train_set, test_set)]
    model = build_model(config).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    criterion = nn.MSELoss()
    for _ in range(epochs):
        model.train()
        running = 0.0
        for x, y in train_loader:
            x, y = x.to(device), y.float().to(device)
            weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            loss = criterion(model(x), y) + config.lam * l2_mul(weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
        model.eval()
        with torch.no_grad():
            for loader in eval_loaders:
                correct = 0
                for x, y in loader:
                    out = model(x.to(device))
                    correct += (torch.sign(out) == y.to(device)).sum().item()


def _weight_layer_calls(config: RunConfig, batch: int) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(layer, input, output) of every conv and linear layer in one forward pass of `batch` images."""
    model = build_model(config)
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, i[0], o))) for m in weight_layers(model)]
    with torch.no_grad():
        model(torch.randn(batch, 3, 32, 32))
    for h in hooks:
        h.remove()
    return calls


def training_flops_per_image(config: RunConfig) -> int:
    """Multiply-adds ×2 of the forward pass, ×3 for training (the backward pass costs two forward
    passes: gradients of inputs and of weights), less the first layer's unused input gradient."""
    forward = [2 * out[0].numel() * (m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features)
               for m, _, out in _weight_layer_calls(config, 1)]
    return 3 * sum(forward) - forward[0]


def kernel_floor(config: RunConfig, device: torch.device, steps: int = 100) -> float:
    """Training images/s of the conv and linear kernels alone (forward, weight and input gradients
    at the config's batch size, channels-last; nothing else): what no engine can beat. On a CPU
    timed on one thread and × cores, as the sweep runs one single-threaded worker per core."""
    calls = [(m.to(device, memory_format=torch.channels_last) if isinstance(m, nn.Conv2d) else m.to(device),
              x.to(device).contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x.to(device))
             for m, x, _ in _weight_layer_calls(config, config.batch_size)]
    for i, (_, x) in enumerate(calls):
        x.requires_grad_(i > 0)  # the images need no gradient

    def step():
        for m, x in calls:
            out = m(x)
            torch.autograd.grad(out, [m.weight, x] if x.requires_grad else [m.weight], torch.ones_like(out))

    threads = torch.get_num_threads()
    workers = 1 if device.type == "cuda" else os.cpu_count() or 1
    torch.set_num_threads(threads if device.type == "cuda" else 1)
    try:
        seconds = timed(lambda: [step() for _ in range(steps)], repeats=5, device=device) / steps
    finally:
        torch.set_num_threads(threads)
    return workers * config.batch_size / seconds


def timed(fn, repeats: int, device: torch.device | None = None) -> float:
    """Median wall seconds of `fn` over `repeats` calls. On CUDA each timing starts and ends with the
    GPU idle (torch.cuda.synchronize): kernels are launched asynchronously, so without it a timing
    would measure their launches, not their work."""

    def sync():
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    args = _arguments(argv)
    device = resolve_device(args.device)
    base = RunConfig.parse(dict(n_train=args.n_train, n_test=args.n_test, max_epochs=args.epochs,
                                early_stopping=None, penalty="mul", lam=5e-7, device=device.type))
    images = round(args.n_train * (1 - base.val_fraction)) * args.epochs  # trained images per run
    variants = _variants(args, base, device)
    # warm-up of this process (data cache, kernels, compiled graphs); sweep workers start clean and
    # compile their own graphs within (c)'s time
    for config in (base, base.replace(compile=True)):
        train(config.replace(max_epochs=1), progress=False)
    flops = training_flops_per_image(base)
    environment = provenance.environment(device)  # host, CPU model and its matmul probe
    ceiling = environment["matmul_gflops"] * 1e9 / flops
    floor = kernel_floor(base, device)
    rows = []
    for name, (runs, fn) in variants.items():
        seconds = timed(fn, args.repeats, device)
        rows.append({"variant": name, "runs": runs, "seconds": seconds, "images_per_s": images * runs / seconds})
        print(f"  measured {name}: {seconds:.1f} s", flush=True)
    ref = rows[0]["images_per_s"]
    for r in rows:
        r["vs_a"] = r["images_per_s"] / ref
        r["of_ceiling"] = r["images_per_s"] / ceiling
    _print_table(rows, flops, ceiling, floor, device, base.batch_size)
    for line in _strategy_verdict(rows):
        print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "environment": environment, "args": vars(args),
                               "training_flops_per_image": flops,
                               "ceiling_images_per_s": ceiling, "kernel_floor_images_per_s": floor,
                               "rows": rows}, indent=1))
    print(f"written to {out}")
    return 0


def _arguments(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=4000, help="training pool (80%% trained on, 20%% validation)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4], help="runs per sweep for (c) and (d)")
    p.add_argument("--slots", type=int, default=2, help="slots of (d)'s stack, refilled as runs finish")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(PROJECT_ROOT / "bench" / "results.json"))
    return p.parse_args(argv)


def _variants(args: argparse.Namespace, base: RunConfig, device: torch.device) -> dict:
    """variant name → (runs, a function that trains them once)."""
    compiled = base.replace(compile=True)

    def sweep(k: int, config: RunConfig, **how):
        def go():
            with tempfile.TemporaryDirectory() as store:
                run(SweepSpec(base=config.model_dump(), grid={"seed": list(range(1, k + 1))}, store=store, **how),
                    progress=False)
        return go

    refilled = {"group_size": args.slots, "strategy": "inline"}  # one process, `slots` runs stacked with vmap
    return {
        "(a) authors-style loop": (1, lambda: reference_loop(base, args.epochs, device)),
        "(b) mulreg.engine.train": (1, lambda: train(base, progress=False)),
        "(b) mulreg.engine.train, compiled": (1, lambda: train(compiled, progress=False)),
        **{f"(c) sweep, K={k}": (k, sweep(k, base)) for k in args.ks},
        **{f"(c) sweep, K={k}, compiled": (k, sweep(k, compiled)) for k in args.ks},
        **{f"(d) refilled stack, K={k} in {args.slots} slots": (k, sweep(k, base, **refilled))
           for k in args.ks if k > args.slots},
        **{f"(d) refilled stack, K={k} in {args.slots} slots, compiled": (k, sweep(k, compiled, **refilled))
           for k in args.ks if k > args.slots},
    }


def _strategy_verdict(rows: list[dict]) -> list[str]:
    """(d) against (c) at the same K and compilation: does a refilled stack in one process beat the
    sweep's own strategy on this device?"""
    rate = {r["variant"]: r["images_per_s"] for r in rows}
    out = []
    for name, d in rate.items():
        if name.startswith("(d)"):
            k, compiled = name.split("K=")[1].split()[0], name.endswith("compiled")
            c = rate.get(f"(c) sweep, K={k}" + (", compiled" if compiled else ""))
            if c:
                out.append(f"{name}: {d / c:.2f}x the sweep's own strategy (c) at K={k} "
                           f"({'the refilled stack wins' if d > c else 'the sweep strategy wins'})")
    return out


def _print_table(rows, flops, ceiling, floor, device, batch_size: int) -> None:
    print(f"\ndevice {device}, {torch.get_num_threads()} threads; training FLOPs/image {flops / 1e6:.1f} M; "
          f"ceiling {ceiling:,.0f} images/s (matmul FLOP/s ÷ FLOPs/image)")
    w = max(len(r["variant"]) for r in rows) + 2
    print(f"{'variant':<{w}}{'runs':>5}{'seconds':>9}{'images·runs/s':>15}{'vs (a)':>8}{'of ceiling':>12}")
    for r in rows:
        print(f"{r['variant']:<{w}}{r['runs']:>5}{r['seconds']:>9.1f}{r['images_per_s']:>15,.0f}"
              f"{r['vs_a']:>7.2f}x{r['of_ceiling']:>11.0%}")
    print(f"kernel floor: the conv/linear kernels alone reach {floor:,.0f} images/s ({floor / ceiling:.0%} of the "
          f"ceiling) at batch {batch_size}; no engine built on them can exceed that")


if __name__ == "__main__":
    raise SystemExit(main())
