"""What the worker learns before it measures: whether CUDA starts, the environment (versions, device,
backend flags), what the engine reads and sizes (by import, never by path), and the synthetic data."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import platform
import subprocess
from pathlib import Path

from gpu_check.text import oneline

FLAGS = ("backends.cudnn.benchmark", "backends.cudnn.deterministic", "backends.cudnn.allow_tf32",
         "backends.cuda.matmul.allow_tf32", "backends.cudnn.conv.fp32_precision",
         "backends.cuda.matmul.fp32_precision", "backends.fp32_precision")


class Skip(Exception):
    """A row that cannot be measured here; its message says why."""


def cuda_problem(torch) -> str | None:
    """Why CUDA cannot be used here (None: it started: a tensor went to the GPU and back)."""
    if not torch.cuda.is_available():
        return (f"torch.cuda.is_available() is False (torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}; "
                f"driver {driver() or 'not found (no nvidia-smi)'})")
    try:
        x = torch.ones(4, device="cuda")
        if float((x * 2).sum().cpu()) != 8.0:
            return "a sum on the GPU came back wrong"
        torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001 - any failure to start is the reason to stop
        return f"CUDA failed to start: {oneline(err)}"
    return None


def brief(torch) -> dict:
    """The environment in a few fields, for a check that stops before measuring anything."""
    return {"python": platform.python_version(), "torch": torch.__version__, "torch CUDA": torch.version.cuda,
            "driver": driver(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}


def environment(torch, device: str) -> dict:
    env = brief(torch) | {"cuda available": torch.cuda.is_available()}
    env["cuDNN"] = _try(lambda: torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env |= {"GPU": p.name, "GPUs": torch.cuda.device_count(), "compute capability": f"{p.major}.{p.minor}",
                "GPU memory GiB": round(p.total_memory / 2**30, 1)}
    for module in ("triton", "numpy", "pandas", "pydantic", "pydantic_core", "typing_extensions", "torchvision"):
        env[module] = version(module)
    env["cpu cores"] = os.cpu_count()
    env["torch threads"] = torch.get_num_threads()
    env["mulreg.provenance.environment"] = _try(lambda: importlib.import_module("mulreg.provenance")
                                                .environment(device))
    env["mulreg.core.devices.backend_settings"] = _try(lambda: importlib.import_module("mulreg.core.devices")
                                                       .backend_settings(torch.device(device)))
    env["torch flags after backend_settings"] = flags(torch)
    env["RunConfig.memory_format"] = _try(lambda: "memory_format" in importlib.import_module("mulreg.config")
                                          .RunConfig.model_fields)
    env["mulreg.engine reads memory_format"] = _try(lambda: engine_reads("memory_format"))
    env["footprint/stack_size from"] = _try(lambda: sizing()[2])
    return env


def flags(torch) -> dict:
    out = {}
    for name in FLAGS:
        obj = torch
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
            out[name] = obj
        except AttributeError:
            out[name] = f"absent in torch {torch.__version__}"
    out["get_float32_matmul_precision()"] = torch.get_float32_matmul_precision()
    return out


def engine_reads(field: str) -> bool:
    """Whether the engine (any module of the imported package mulreg.engine) reads the config field
    `field` (`config.field`, `c0.field`, ...): read from the modules as imported, wherever they live."""
    import mulreg.engine as engine

    for info in pkgutil.iter_modules(engine.__path__, prefix="mulreg.engine."):
        source = inspect.getsource(importlib.import_module(info.name))
        if f".{field}" in source:
            return True
    return False


def sizing():
    """(footprint, stack_size, module name): from mulreg.engine.sizing (older checkouts: mulreg.engine.train)."""
    for name in ("mulreg.engine.sizing", "mulreg.engine.train"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "footprint") and hasattr(module, "stack_size"):
            return module.footprint, module.stack_size, name
    raise Skip("neither mulreg.engine.sizing nor mulreg.engine.train has footprint and stack_size")


def eval_chunk(k: int) -> tuple[int, str]:
    """Images one evaluation pass of a K-run stack holds (max(MIN_EVAL_CHUNK, EVAL_IMAGES // K) per run,
    × K), and the formula with the engine's constants."""
    from mulreg.engine import train

    most, least = getattr(train, "EVAL_IMAGES", 4096), getattr(train, "MIN_EVAL_CHUNK", 256)
    per_run = max(least, most // k)
    return per_run * k, f"max({least}, {most} // {k}) · {k} = {per_run * k:,}"


def make_data(root: Path, train_per_class: int, test_per_class: int) -> str:
    """The synthetic data set at `root` (MULREG_DATA): the image-folder layout's class folders, and
    the decoded arrays written where mulreg.core.data looks for its cache (MULREG_CACHE), so nothing is
    decoded."""
    import numpy as np

    from mulreg.core import data

    rng = np.random.default_rng(2024)

    def split(per_class: int):
        labels = np.repeat(np.array([3, 4]), per_class)  # cat, deer
        rng.shuffle(labels)
        base = 30 + 20 * labels[:, None, None, None] + rng.integers(-5, 6, size=(len(labels), 3, 1, 1))
        noise = rng.integers(-25, 26, size=(len(labels), 3, 32, 32))
        return np.clip(base + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)

    for part in ("train", "test"):
        for name in data.CLASSES:
            (root / part / name).mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = split(train_per_class), split(test_per_class)
    cache = data._cache_file(data.data_root(root))
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        os.replace(tmp, cache)
    train, test = data.load_cifar10(root, download=False)
    if (train.labels == 3).sum() != train_per_class or len(test.images) < 2 * test_per_class:
        raise RuntimeError(f"the synthetic data set reads back wrong: {len(train.images)} train, "
                           f"{len(test.images)} test images")
    return "written into mulreg.core.data's decoded cache"


def driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def version(module: str) -> str | None:
    from importlib import metadata

    for name in (module.replace("_", "-"), module):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _try(fn):
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - a field that fails says so, the rest is still reported
        return f"failed: {oneline(err)}"
