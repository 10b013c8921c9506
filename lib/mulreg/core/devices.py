"""The device a run asks for ("auto", "cpu", "cuda", "mps"), resolved once, with a clear error when
this machine does not have it; and the backend flags that trade speed for reproducibility, set in one
place (`backend_settings`) and recorded with every run."""

from __future__ import annotations

import os

import torch

from mulreg import CUBLAS_WORKSPACE
from mulreg.config import MulregError


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


def on_this_machine(name: str) -> bool:
    """Whether `resolve_device(name)` would succeed here ("auto" always does)."""
    return name == "auto" or name in available_devices()


def backend_settings(device: torch.device, deterministic: bool = False, flush_denormal: bool = False) -> dict:
    """Set this process's backend flags for training on `device` and return them (a run stores them
    with its provenance; docs/PERFORMANCE.md, "Backend settings", says what each costs):

    - cuDNN autotuning (`cudnn.benchmark`) on CUDA, unless `deterministic`: it picks the fastest
      convolution kernels, which may differ from run to run;
    - float32 matrix products and cuDNN convolutions at full precision ("highest", no TF32: cuDNN
      would otherwise run this network's convolutions, ≈ 97 % of its FLOPs, in TF32 on Ampere and
      later), so numbers on a GPU stay comparable with the CPU's and across GPU generations;
    - with `deterministic`, deterministic algorithms (`torch.use_deterministic_algorithms`) and
      deterministic cuDNN, for bit-identical results on one GPU at some cost in speed;
    - with `flush_denormal`, subnormal floats computed as zero on the CPU (`torch.set_flush_denormal`;
      set either way, so what a process trained before does not carry over), where the CPU supports it."""
    if deterministic and device.type == "cuda" and os.environ.get("CUBLAS_WORKSPACE_CONFIG") is None:
        raise DeviceError("deterministic: true on CUDA needs CUBLAS_WORKSPACE_CONFIG set before CUDA starts; "
                          "importing mulreg first sets it (mulreg/__init__.py), or export "
                          f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} before starting Python")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False  # the flag torch 2.11 and later read alike (one API: mixing raises)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    flushed = torch.set_flush_denormal(flush_denormal) and flush_denormal  # False where the CPU lacks it
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": deterministic,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "float32_conv_precision": "tf32" if torch.backends.cudnn.allow_tf32 else "highest",
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(), "flush_denormal": flushed}
