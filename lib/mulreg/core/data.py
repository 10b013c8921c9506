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
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

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
    """Train and test splits of CIFAR-10 as uint8 tensors, from cache when already decoded (the cache
    is keyed on the data files' names, sizes and modification times: a folder that changed is decoded
    again; an unreadable cache file is decoded again too)."""
    folder = data_root(root)
    if not _layout(folder):
        _download(folder, download)
    cache = _cache_file(folder)
    arrays = _read_cache(cache)
    if arrays is None:
        arrays = _decode(folder)
        _write_cache(cache, arrays)
    return (Images(torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])),
            Images(torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])))


def _read_cache(cache: Path) -> dict[str, np.ndarray] | None:
    """The arrays of `cache`, or None when it is missing or cannot be read (truncated, say: it is removed)."""
    if not cache.exists():
        return None
    try:
        with np.load(cache) as z:
            return {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        cache.unlink(missing_ok=True)
        print(f"{cache}: cannot be read ({type(err).__name__}); removed, and the images are decoded again",
              file=sys.stderr, flush=True)  # a repair says what it repaired
        return None


def _write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `cache` atomically (one temporary file per process: workers may race) and remove the caches
    of earlier contents of the same folder; a cache folder that cannot be written is named."""
    where = f"decoded-data cache {cache.parent} (MULREG_CACHE)"
    if cache.parent.exists() and not cache.parent.is_dir():
        raise DataError(f"{where} is a file, not a folder; point MULREG_CACHE at a folder")
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{where}: cannot write {cache.name} ({err.strerror or err}); free space there or point "
                        "MULREG_CACHE at another folder") from None
    folder_tag = cache.stem.split("-")[1]  # earlier contents, and the path-only name of older versions
    for stale in [*cache.parent.glob(f"cifar10-{folder_tag}-*.npz"), cache.parent / f"cifar10-{folder_tag}.npz"]:
        if stale != cache and ".tmp" not in stale.name:
            stale.unlink(missing_ok=True)


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
    others = sorted({d.name for split in ("train", "test") if (folder / split).is_dir()
                     for d in (folder / split).iterdir() if d.is_dir() and d.name not in CLASSES})
    found = ("the folder does not exist" if not folder.exists() else
             f"it lacks {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}" if len(missing) < 20 else
             "it holds neither layout")
    if others:  # class folders under other names: say which names are expected
        found += (f"; it has class folders {', '.join(others[:4])}{' …' if len(others) > 4 else ''}, and "
                  f"expected exactly {', '.join(CLASSES)} (rename them)")
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
    """cifar10-<folder>-<contents>.npz: the folder's path and layout, then what it holds."""
    layout = _layout(folder)
    tag = hashlib.sha256(f"{folder}|{layout}".encode()).hexdigest()[:12]
    cache_dir = Path(os.environ.get("MULREG_CACHE", PROJECT_ROOT / ".cache"))
    return cache_dir / f"cifar10-{tag}-{_fingerprint(folder, layout)}.npz"


def _fingerprint(folder: Path, layout: str | None) -> str:
    """A hash of every data file's path, size and modification time (60,000 images: a fraction of a second)."""
    tops = [folder / "cifar-10-batches-py"] if layout == "torchvision" else [folder / "train", folder / "test"]
    h = hashlib.sha256()
    for top in tops:
        for path, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(path, name))
                h.update(f"{os.path.relpath(path, folder)}/{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


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
    try:
        ds = torchvision.datasets.ImageFolder(folder)
    except FileNotFoundError as err:  # a class folder without images
        empty = [d for d in sorted(folder.iterdir()) if d.is_dir() and not any(f.is_file() for f in d.iterdir())]
        named = f"class folder {empty[0]} holds no images" if empty else f"{folder}: {err}"
        raise DataError(f"{named}; point MULREG_DATA at a complete copy") from None
    if tuple(ds.classes) != CLASSES:
        raise DataNotFoundError(f"{folder}: class folders {ds.classes} are not CIFAR-10's; expected exactly "
                                f"{', '.join(CLASSES)} (rename them, or point MULREG_DATA at a CIFAR-10 copy)")
    images = np.stack([_read_image(ds, path) for path, _ in ds.samples])  # PIL, RGB, (N, H, W, C)
    return images.transpose(0, 3, 1, 2), np.asarray(ds.targets)


def _read_image(ds: torchvision.datasets.ImageFolder, path: str) -> np.ndarray:
    """One image as (H, W, 3) uint8; one of another mode (greyscale, RGBA, palette) is refused, not
    converted: torchvision's loader would drop an alpha channel or copy a grey one without a word."""
    try:
        with Image.open(path) as opened:
            mode = opened.mode
            image = np.asarray(opened.convert("RGB"))  # loaded before the file closes
    except OSError as err:  # PIL: truncated or not an image at all
        raise DataError(f"unreadable image {path}: {err}. Replace the file, or point MULREG_DATA at an intact "
                        "copy") from None
    if mode != "RGB":
        raise DataError(f"image {path} is {mode}, not RGB like CIFAR-10's images: convert it to RGB (PIL: "
                        "Image.open(f).convert('RGB').save(f)) or point MULREG_DATA at an intact copy")
    if image.shape != (32, 32, 3):
        raise DataError(f"image {path} is {image.shape[1]}×{image.shape[0]} pixels, not CIFAR-10's 32×32. Replace "
                        "the file, or point MULREG_DATA at an intact copy")
    return image


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


def check_caps(configs: list[RunConfig], root: str | os.PathLike | None = None) -> None:
    """Refuse, before any training, a run whose `n_train` or `n_test` asks for more images of its
    classes than the data holds (it would use fewer than it records). Decodes and caches the data once."""
    train, test = load_cifar10(root)
    for name, images in (("n_train", train), ("n_test", test)):
        counts = torch.bincount(images.labels, minlength=len(CLASSES))
        for config in {(c.task, c.classes, getattr(c, name)): c for c in configs
                       if getattr(c, name) is not None}.values():
            _check_cap(name, getattr(config, name), config.task, config.classes, counts, root)


def _check_cap(name: str, asked: int, task: str, classes: tuple[int, ...], counts: torch.Tensor, root) -> None:
    wanted = classes if task == "binary" else tuple(range(len(CLASSES)))
    per_class = asked // len(wanted)
    short = [CLASSES[c] for c in wanted if counts[c] < per_class]
    if short:
        have = int(sum(counts[c] for c in wanted))
        split = "training" if name == "n_train" else "test"
        raise DataError(f"{name} {asked} asks for {per_class} {split} images per class, but {data_root(root)} "
                        f"holds {have} of {', '.join(CLASSES[c] for c in wanted)} in all (too few of "
                        f"{', '.join(short)}); lower {name}, or leave it unset for the whole pool")


def pool_for(config: RunConfig, root: str | os.PathLike | None = None, device: str = "cpu") -> Pool:
    """The pool a run trains on: its task, data caps and (binary) class pair."""
    return load_pool(config.task, config.n_train, config.n_test, None if root is None else str(root),
                     str(device), config.classes)


@functools.lru_cache(maxsize=4)
def _load_pool(task: str, n_train: int | None, n_test: int | None, root: str, device: str,
               classes: tuple[int, ...]) -> Pool:
    train, test = load_cifar10(root, download=True)
    for name, images, asked in (("n_train", train, n_train), ("n_test", test, n_test)):
        if asked is not None:  # a notebook's caller, as a sweep's pre-flight (`check_caps`): never fewer than asked
            _check_cap(name, asked, task, classes, torch.bincount(images.labels, minlength=len(CLASSES)), root)
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
