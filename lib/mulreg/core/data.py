"""CIFAR-10 and the paper's two tasks, held as tensors (no per-sample Python while training).

`load_cifar10` finds the data (argument, env `MULREG_DATA`, or `data/` at the project root) in
torchvision's layout or the image-folder layout, and caches the decoded uint8 arrays. `Pool` is a
task's clean data; `split_run` turns it into one run's view (label noise, then a seeded
validation split, as in the authors' code). `augment` is the optional random crop and flip of
training images.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

from mulreg.config import CIFAR10_CLASSES as CLASSES
from mulreg.config import PAPER_CLASSES, PROJECT_ROOT, MulregError, RunConfig

MEAN = (0.4914, 0.4822, 0.4465)  # the paper's per-channel normalisation
STD = (0.2470, 0.2435, 0.2616)


class DataNotFoundError(MulregError, FileNotFoundError):
    """CIFAR-10 is not where we looked and could not be downloaded."""


class DataError(MulregError):
    """CIFAR-10 was found but a file of it cannot be read."""


@dataclass(frozen=True)
class Images:
    """One partition of CIFAR-10: uint8 images (N, 3, 32, 32) and integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where CIFAR-10 is looked for: `root`, then env MULREG_DATA, then `data/` at the project root."""
    return Path(root or os.environ.get("MULREG_DATA") or PROJECT_ROOT / "data").expanduser().resolve()


def load_cifar10(root: str | os.PathLike | None = None, download: bool = True) -> tuple[Images, Images]:
    """Train and test splits of CIFAR-10 as uint8 tensors, from cache when already decoded."""
    folder = data_root(root)
    if not _layout(folder):
        _download(folder, download)
    cache = _cache_file(folder)
    if not cache.exists():
        arrays = _decode(folder)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")  # one per process: workers may race
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    with np.load(cache) as z:
        return (
            Images(torch.from_numpy(z["x_train"]), torch.from_numpy(z["y_train"])),
            Images(torch.from_numpy(z["x_test"]), torch.from_numpy(z["y_test"])),
        )


def _layout(folder: Path) -> str | None:
    if (folder / "cifar-10-batches-py").is_dir():
        return "torchvision"
    if all((folder / split / name).is_dir() for split in ("train", "test") for name in CLASSES):
        return "image-folder"
    return None


def _download(folder: Path, allowed: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise DataNotFoundError(f"CIFAR-10 folder {folder} (MULREG_DATA, or root=) is a file, not a folder")
    missing = [f"{split}/{name}" for split in ("train", "test") for name in CLASSES
               if not (folder / split / name).is_dir()]
    found = ("the folder does not exist" if not folder.exists() else
             f"it lacks {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}" if len(missing) < 20 else
             "it holds neither layout")
    hint = (
        f"CIFAR-10 not found in {folder} ({found}; looked for {folder / 'cifar-10-batches-py'} and for "
        f"{folder}/{{train,test}}/<class>/ image folders). Point MULREG_DATA at a copy, e.g. "
        "`export MULREG_DATA=../shared/data/cifar10`, or pass root=<folder>"
    )
    if not allowed:
        raise DataNotFoundError(hint + " (download=False)")
    try:
        torchvision.datasets.CIFAR10(folder, train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any network failure means the same thing here
        raise DataNotFoundError(f"{hint}. Downloading it failed: {err}") from None


def _cache_file(folder: Path) -> Path:
    tag = hashlib.sha256(f"{folder}|{_layout(folder)}".encode()).hexdigest()[:12]
    cache_dir = Path(os.environ.get("MULREG_CACHE", PROJECT_ROOT / ".cache"))
    return cache_dir / f"cifar10-{tag}.npz"


def _decode(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for split, train in (("train", True), ("test", False)):
        if _layout(folder) == "torchvision":
            ds = torchvision.datasets.CIFAR10(folder, train=train, download=False)
            x, y = ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)
        else:
            x, y = _decode_image_folder(folder / split)
        arrays[f"x_{split}"] = np.ascontiguousarray(x, dtype=np.uint8)
        arrays[f"y_{split}"] = y.astype(np.int64)
    return arrays


def _decode_image_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = torchvision.datasets.ImageFolder(folder)
    if tuple(ds.classes) != CLASSES:
        raise DataNotFoundError(f"{folder}: class folders {ds.classes} are not CIFAR-10's {CLASSES}")
    images = np.stack([_read_image(ds, path) for path, _ in ds.samples])  # PIL, RGB, (N, H, W, C)
    return images.transpose(0, 3, 1, 2), np.asarray(ds.targets)


def _read_image(ds: torchvision.datasets.ImageFolder, path: str) -> np.ndarray:
    try:
        return np.asarray(ds.loader(path))
    except OSError as err:  # PIL: truncated or not an image at all
        raise DataError(f"unreadable image {path}: {err}. Replace the file, or point MULREG_DATA at an intact "
                        "copy") from None


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float, scaled to [0, 1] and normalised per channel (paper, Sec. 4)."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def generator(seed: int, stream: str) -> torch.Generator:
    """An independent, reproducible random stream per (seed, purpose)."""
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


AUGMENT_PAD = 4  # pixels of zero padding (the mean colour, after normalisation) around an image before its crop


def augment_draws(seed: int, epoch: int, n: int, enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (n, 2) in 0..2·AUGMENT_PAD and horizontal flips (n,) for the n training positions of
    one run's epoch: drawn from (seed, epoch) alone, so they do not depend on the stack, the device or a
    resume. Not `enabled`: the centred crop and no flip, which leave images as they are."""
    if not enabled:
        return torch.full((n, 2), AUGMENT_PAD), torch.zeros(n, dtype=torch.bool)
    g = generator(seed, f"augment-{epoch}")
    return torch.randint(0, 2 * AUGMENT_PAD + 1, (n, 2), generator=g), torch.rand(n, generator=g) < 0.5


def augment(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random crop with padding and horizontal flip: images x (..., C, H, W) cut at `offsets` (..., 2)
    (row, column) out of their zero-padded copies, then mirrored left-right where `flips` (...) is
    true; on x's device. Offsets (AUGMENT_PAD, AUGMENT_PAD) without a flip give x back exactly."""
    *lead, c, h, w = x.shape
    padded = torch.nn.functional.pad(x.reshape(-1, c, h, w), (AUGMENT_PAD,) * 4).permute(0, 2, 3, 1)
    offsets = offsets.reshape(-1, 2).to(x.device)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (N, W)
    first = torch.arange(len(padded), device=x.device)[:, None, None]
    out = padded[first, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (N, C, H, W)
    out = torch.where(flips.reshape(-1, 1, 1, 1).to(x.device), out.flip(-1), out)
    return out.reshape(*lead, c, h, w)


def flip_labels(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly round(fraction·n) labels chosen by `seed`; returns (new labels, flipped indices).

    Floating ±1 labels are negated; integer class labels move to a different class drawn at random.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n = len(labels)
    g = generator(seed, "label-noise")
    flipped = torch.randperm(n, generator=g)[: round(fraction * n)].sort().values
    new = labels.clone()
    if labels.is_floating_point():
        new[flipped] = -labels[flipped]
    else:
        num_classes = int(labels.max()) + 1
        shift = torch.randint(1, num_classes, (len(flipped),), generator=g)
        new[flipped] = (labels[flipped] + shift) % num_classes
    return new, flipped


@dataclass(frozen=True)
class Pool:
    """A task's clean data on one device: normalised images, targets, and integer classes.

    Binary targets are ±1 floats (N,); multiclass targets are one-hot floats (N, 10).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor  # clean integer labels of the training pool
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.float() if self.task == "binary" else torch.nn.functional.one_hot(labels, 10).float()


@dataclass(frozen=True)
class RunData:
    """One run's view of a pool: its (noisy) training labels and its train/validation indices."""

    labels: torch.Tensor  # labels of the whole training pool, after noise
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    flipped: torch.Tensor


def _take(split: Images, classes: tuple[int, ...], cap: int | None) -> Images:
    """The examples of `classes`, balanced and in data-set order when capped."""
    per_class = None if cap is None else cap // len(classes)
    idx = torch.cat([(split.labels == c).nonzero().flatten()[:per_class] for c in classes]).sort().values
    return Images(split.images[idx], split.labels[idx])


def load_pool(
    task: str,
    n_train: int | None = None,
    n_test: int | None = None,
    root: str | None = None,
    device: str = "cpu",
    classes: tuple[int, ...] = PAPER_CLASSES,
) -> Pool:
    """The clean, normalised data of `task` ("binary": `classes` → −1, +1; "multiclass": all 10)."""
    # resolve root (argument, MULREG_DATA, data/) before the cache: root=None must follow the env
    return _load_pool(task, n_train, n_test, str(data_root(root)), str(device), tuple(classes))


def pool_for(config: RunConfig, root: str | os.PathLike | None = None, device: str = "cpu") -> Pool:
    """The pool a run trains on: its task, data caps and (binary) class pair."""
    return load_pool(config.task, config.n_train, config.n_test, None if root is None else str(root),
                     str(device), config.classes)


@functools.lru_cache(maxsize=4)
def _load_pool(task: str, n_train: int | None, n_test: int | None, root: str, device: str,
               classes: tuple[int, ...]) -> Pool:
    train, test = load_cifar10(root, download=True)
    wanted = classes if task == "binary" else tuple(range(10))
    train, test = _take(train, wanted, n_train), _take(test, wanted, n_test)

    def labels(y: torch.Tensor) -> torch.Tensor:
        return torch.where(y == wanted[1], 1, -1) if task == "binary" else y

    return Pool(
        normalize(train.images).to(device),
        labels(train.labels).to(device),
        normalize(test.images).to(device),
        labels(test.labels).to(device),
        task,
    )


def split_run(pool: Pool, seed: int, label_noise: float, val_fraction: float) -> RunData:
    """Label noise on the training pool first, then a seeded train/validation split (authors' order)."""
    clean = pool.y_train.cpu()
    noisy, flipped = flip_labels(clean.float() if pool.task == "binary" else clean, label_noise, seed)
    n = len(clean)
    order = torch.randperm(n, generator=generator(seed, "validation-split"))
    n_val = round(val_fraction * n)
    device = pool.x_train.device
    return RunData(noisy.to(device).to(clean.dtype), order[n_val:].to(device), order[:n_val].to(device), flipped)
