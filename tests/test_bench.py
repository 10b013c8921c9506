"""mulreg.tools.bench: the FLOP count behind the ceiling, against a count by hand; GPU timings synchronise."""

from __future__ import annotations

import torch

from mulreg.config import RunConfig
from mulreg.tools import bench
from mulreg.tools.bench import training_flops_per_image


def test_training_flops_of_the_binary_network():
    # forward multiply-adds per image: output pixels × (kernel area × input channels) for each conv
    convs = [(16, 32, 3), (32, 16, 16), (64, 8, 32), (128, 4, 64)]  # (out channels, output side, in channels)
    forward = [2 * c * side * side * 9 * c_in for c, side, c_in in convs] + [2 * 512 * 256, 2 * 256 * 1]
    # training = 3 forward passes (forward, input gradients, weight gradients), less conv1's input gradient
    assert training_flops_per_image(RunConfig()) == 3 * sum(forward) - forward[0] == 23_791_104


def test_timings_on_cuda_wait_for_the_gpu_before_and_after(monkeypatch):
    """CUDA launches kernels asynchronously: a timing that does not synchronise measures launches."""
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"sync {device}"))
    bench.timed(lambda: events.append("work"), repeats=2, device=torch.device("cuda"))
    assert events == ["sync cuda", "work", "sync cuda"] * 2
    events.clear()
    bench.timed(lambda: events.append("work"), repeats=2, device=torch.device("cpu"))
    assert events == ["work", "work"]


def test_the_kernel_floor_times_on_its_device(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "timed", lambda fn, repeats, device=None: seen.append(device) or 1.0)
    bench.kernel_floor(RunConfig(), torch.device("cpu"), steps=1)
    assert seen == [torch.device("cpu")]
