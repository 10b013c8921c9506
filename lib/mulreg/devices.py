"""The device a run asks for ("auto", "cpu", "cuda", "mps"), resolved once, with a clear error when
this machine does not have it."""

from __future__ import annotations

import torch

from .config import MulregError


class DeviceError(MulregError, RuntimeError):
    """The device a config asks for is not available on this machine."""


def available_devices() -> list[str]:
    return ["cpu"] + ["cuda"] * torch.cuda.is_available() + ["mps"] * torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """`name` as a torch device ("auto": CUDA, else MPS, else the CPU); DeviceError if unavailable."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name not in available_devices():
        raise DeviceError(f"device: {name!r} was asked for but is not available on this machine; available: "
                          f"{', '.join(available_devices())} (torch {torch.__version__})")
    return torch.device(name)
