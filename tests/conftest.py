"""Shared fixtures: tiny CIFAR-10 look-alikes in both layouts, a temp cache, and real data when
MULREG_DATA points at it.

Every test gets its own MULREG_CACHE under pytest's temp dir, so nothing is ever written into the
project. The tiny data sets are made of random images whose mean brightness grows with the class
index (so the cat-vs-deer task is learnable and images of different classes are told apart).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

# One thread, here and in any subprocess a test starts (they inherit the environment): on a busy
# 2-core machine OpenMP/MKL spin-waits make 2 threads up to 100x slower, and runs that are compared
# bit for bit across processes must use the same thread count.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)

# Written out here, independent of mulreg.core.data.CLASSES: CIFAR-10's class names by label index.
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TINY_TRAIN_PER_CLASS = 6
TINY_TEST_PER_CLASS = 3


def tiny_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """A random 32×32 RGB uint8 image (H, W, C) whose brightness depends on the class."""
    base = 30 + 20 * label + rng.integers(-5, 6, size=3)
    noise = rng.integers(-25, 26, size=(32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def mulreg_cache(tmp_path_factory, monkeypatch) -> Path:
    """A fresh, empty decoded-data cache per test (never the project's .cache/)."""
    cache = tmp_path_factory.mktemp("mulreg-cache")
    monkeypatch.setenv("MULREG_CACHE", str(cache))
    return cache


def write_tiny_image_folder(root: Path) -> Path:
    """{train,test}/<class>/NNNN.jpg with 6 train and 3 test random JPEGs per class, under `root`."""
    rng = np.random.default_rng(12345)
    for split, per_class in (("train", TINY_TRAIN_PER_CLASS), ("test", TINY_TEST_PER_CLASS)):
        for label, name in enumerate(CIFAR_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(tiny_image(rng, label)).save(folder / f"{i:04d}.jpg", quality=95)
    return root


@pytest.fixture
def tiny_cifar_image_folder(tmp_path) -> Path:
    """{train,test}/<class>/NNNN.jpg with 6 train and 3 test random JPEGs per class."""
    return write_tiny_image_folder(tmp_path / "cifar-images")


@pytest.fixture(scope="module")
def tiny_cifar_image_folder_module(tmp_path_factory) -> Path:
    """The same images, once for a module whose tests share what was trained on them."""
    return write_tiny_image_folder(tmp_path_factory.mktemp("cifar-images") / "cifar-images")


def _write_pickle(path: Path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_cifar_torchvision(tmp_path, monkeypatch):
    """torchvision's layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}.

    Each batch is a pickled dict {"data": uint8 (N, 3072) with the R, G, B planes row-major,
    "labels": [int]} as torchvision.datasets.CIFAR10 reads it (str keys: the real files come from
    Python 2, and torchvision loads them with encoding="latin1", which yields str keys). torchvision
    verifies every file's md5 (in `_check_integrity` and `_load_meta`); the expected md5s are
    patched to those of these files, so its checks still run and pass.

    Returns (root, arrays) with arrays = {"x_train", "y_train", "x_test", "y_test"}, images as
    uint8 (N, 3, 32, 32) in file order.
    """
    import torchvision

    root = tmp_path / "cifar-tv"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(777)

    def batch(n):
        labels = np.concatenate([np.arange(10), rng.integers(0, 10, n - 10)])
        rng.shuffle(labels)
        images = np.stack([tiny_image(rng, int(c)).transpose(2, 0, 1) for c in labels])  # (n, 3, 32, 32)
        return images, labels

    train_list, xs, ys = [], [], []
    for i in range(1, 6):
        x, y = batch(12)
        md5 = _write_pickle(folder / f"data_batch_{i}",
                            {"batch_label": f"training batch {i} of 5", "labels": [int(v) for v in y],
                             "data": x.reshape(len(x), 3072), "filenames": [f"{i}_{j}.png" for j in range(len(x))]})
        train_list.append([f"data_batch_{i}", md5])
        xs.append(x)
        ys.append(y)
    x_test, y_test = batch(15)
    test_md5 = _write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1",
                                                      "labels": [int(v) for v in y_test],
                                                      "data": x_test.reshape(len(x_test), 3072)})
    meta_md5 = _write_pickle(folder / "batches.meta", {"label_names": list(CIFAR_CLASSES),
                                                        "num_cases_per_batch": 12, "num_vis": 3072})
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", train_list)
    monkeypatch.setattr(cifar, "test_list", [["test_batch", test_md5]])
    monkeypatch.setattr(cifar, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta_md5})
    arrays = {"x_train": np.concatenate(xs), "y_train": np.concatenate(ys), "x_test": x_test, "y_test": y_test}
    return root, arrays


@pytest.fixture(scope="session")
def _real_data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mulreg-cache-real")


@pytest.fixture
def cifar_root(_real_data_cache, monkeypatch) -> Path:
    """The real CIFAR-10 (env MULREG_DATA), or skip. Its decoded cache lives in one temp dir per
    session, so the 60,000 images are decoded at most once per test session."""
    value = os.environ.get("MULREG_DATA")
    if not value:
        pytest.skip("MULREG_DATA is not set (real CIFAR-10 needed)")
    root = Path(value).expanduser()
    if not root.is_dir():
        pytest.skip(f"MULREG_DATA={value} is not a folder")
    monkeypatch.setenv("MULREG_CACHE", str(_real_data_cache))
    return root
