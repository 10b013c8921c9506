"""mulreg.tools.bench: the FLOP count behind the ceiling, against a count by hand."""

from __future__ import annotations

from mulreg.config import RunConfig
from mulreg.tools.bench import training_flops_per_image


def test_training_flops_of_the_binary_network():
    # forward multiply-adds per image: output pixels × (kernel area × input channels) for each conv
    convs = [(16, 32, 3), (32, 16, 16), (64, 8, 32), (128, 4, 64)]  # (out channels, output side, in channels)
    forward = [2 * c * side * side * 9 * c_in for c, side, c_in in convs] + [2 * 512 * 256, 2 * 256 * 1]
    # training = 3 forward passes (forward, input gradients, weight gradients), less conv1's input gradient
    assert training_flops_per_image(RunConfig()) == 3 * sum(forward) - forward[0] == 23_791_104
