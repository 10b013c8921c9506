"""mulreg.core.data: label noise, both CIFAR-10 layouts, the cache, the tasks (checked with numpy/PIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import CIFAR_CLASSES, TINY_TEST_PER_CLASS, TINY_TRAIN_PER_CLASS
from mulreg.core import data
from mulreg.core.data import DataNotFoundError, flip_labels, load_cifar10
from tasks import binary_task, multiclass_task

# the paper's channel statistics (PAPER.md, "Binary task"), written out independently
PAPER_MEAN = np.array([0.4914, 0.4822, 0.4465])
PAPER_STD = np.array([0.2470, 0.2435, 0.2616])


def np_normalize(images_uint8: np.ndarray) -> np.ndarray:
    return (images_uint8.astype(np.float64) / 255 - PAPER_MEAN[None, :, None, None]) / PAPER_STD[None, :, None, None]


# ---------------------------------------------------------------- flip_labels
@pytest.mark.parametrize("n,fraction", [(1000, 0.2), (1000, 0.123), (37, 0.1), (10, 0.0), (10, 1.0), (999, 0.4)])
def test_flip_labels_binary_exact_count_and_negation(n, fraction):
    rng = np.random.default_rng(n)
    labels = torch.from_numpy(rng.choice([-1.0, 1.0], size=n)).float()
    before = labels.clone()
    new, flipped = flip_labels(labels, fraction, seed=3)
    k = round(fraction * n)
    assert torch.equal(labels, before), "input labels must not be modified"
    assert len(flipped) == k
    assert len(set(flipped.tolist())) == k
    assert flipped.tolist() == sorted(flipped.tolist())
    changed = np.flatnonzero(new.numpy() != labels.numpy())
    np.testing.assert_array_equal(changed, np.sort(flipped.numpy()))
    np.testing.assert_array_equal(new.numpy()[changed], -labels.numpy()[changed])
    assert set(np.unique(new.numpy())) <= {-1.0, 1.0}


def test_flip_labels_deterministic_per_seed_and_seeds_differ():
    labels = torch.ones(500)
    a_new, a_idx = flip_labels(labels, 0.2, seed=1)
    b_new, b_idx = flip_labels(labels, 0.2, seed=1)
    c_new, c_idx = flip_labels(labels, 0.2, seed=2)
    assert torch.equal(a_idx, b_idx) and torch.equal(a_new, b_new)
    assert not torch.equal(a_idx, c_idx)
    # different seeds pick mostly different samples (expected overlap 20 % of 100)
    assert len(set(a_idx.tolist()) & set(c_idx.tolist())) < 60


def test_flip_labels_multiclass_moves_to_a_different_class():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(np.concatenate([np.arange(10), rng.integers(0, 10, 990)])).long()
    new, flipped = flip_labels(labels, 0.3, seed=5)
    assert new.dtype == labels.dtype
    assert len(flipped) == 300
    old_np, new_np, idx = labels.numpy(), new.numpy(), flipped.numpy()
    np.testing.assert_array_equal(np.flatnonzero(new_np != old_np), np.sort(idx))
    assert ((new_np >= 0) & (new_np <= 9)).all()
    # the new class is drawn at random among the 9 others: every offset shows up
    offsets = (new_np[idx] - old_np[idx]) % 10
    assert set(offsets.tolist()) == set(range(1, 10))
    assert torch.equal(flip_labels(labels, 0.3, seed=5)[0], new)


def test_flip_labels_rejects_bad_fraction():
    with pytest.raises(ValueError):
        flip_labels(torch.ones(10), 1.5, seed=1)


# ---------------------------------------------------------------- image-folder layout
def _pil_images(folder):
    return [np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in sorted(folder.glob("*.jpg"))]


def test_load_image_folder_layout(tiny_cifar_image_folder):
    train, test = load_cifar10(root=tiny_cifar_image_folder, download=False)
    for split, part, per_class in (("train", train, TINY_TRAIN_PER_CLASS), ("test", test, TINY_TEST_PER_CLASS)):
        assert part.images.shape == (10 * per_class, 3, 32, 32)
        assert part.images.dtype == torch.uint8
        assert part.labels.dtype == torch.int64
        assert part.labels.shape == (10 * per_class,)
        np.testing.assert_array_equal(np.bincount(part.labels.numpy(), minlength=10), [per_class] * 10)
        images = part.images.numpy().astype(int)
        for label, name in enumerate(CIFAR_CLASSES):
            expected = _pil_images(tiny_cifar_image_folder / split / name)
            got = images[part.labels.numpy() == label]
            # every decoded image of this label is one of this class's files (decoded by PIL), and
            # all files are there: channel order (RGB, CHW) and labels both right
            dist = np.array([[np.abs(g - e).max() for e in expected] for g in got])
            assert (dist.min(1) <= 2).all(), f"{split}/{name}: images do not match their files"
            assert sorted(dist.argmin(1).tolist()) == list(range(per_class))


def test_second_load_comes_from_cache(tiny_cifar_image_folder, mulreg_cache, monkeypatch):
    assert not list(mulreg_cache.glob("*"))
    train1, test1 = load_cifar10(root=tiny_cifar_image_folder, download=False)
    files = list(mulreg_cache.glob("cifar10-*.npz"))
    assert len(files) == 1, f"expected one cache file in {mulreg_cache}, found {files}"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the images again instead of using the cache")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_decoding)
    monkeypatch.setattr(torchvision.datasets, "ImageFolder", no_decoding)
    train2, test2 = load_cifar10(root=tiny_cifar_image_folder, download=False)
    assert torch.equal(train1.images, train2.images) and torch.equal(train1.labels, train2.labels)
    assert torch.equal(test1.images, test2.images) and torch.equal(test1.labels, test2.labels)


# ---------------------------------------------------------------- torchvision layout
def test_load_torchvision_layout(tiny_cifar_torchvision, mulreg_cache, monkeypatch):
    root, arrays = tiny_cifar_torchvision
    train, test = load_cifar10(root=root, download=False)
    assert train.images.dtype == torch.uint8 and test.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and test.labels.dtype == torch.int64
    assert train.images.shape == (60, 3, 32, 32) and test.images.shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(train.images.numpy(), arrays["x_train"])
    np.testing.assert_array_equal(train.labels.numpy(), arrays["y_train"])
    np.testing.assert_array_equal(test.images.numpy(), arrays["x_test"])
    np.testing.assert_array_equal(test.labels.numpy(), arrays["y_test"])
    assert len(list(mulreg_cache.glob("cifar10-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("read the batches again instead of using the cache")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_decoding)
    train2, _ = load_cifar10(root=root, download=False)
    np.testing.assert_array_equal(train2.images.numpy(), arrays["x_train"])


def test_torchvision_layout_env_var(tiny_cifar_torchvision, monkeypatch):
    root, arrays = tiny_cifar_torchvision
    monkeypatch.setenv("MULREG_DATA", str(root))
    train, _ = load_cifar10(download=False)
    np.testing.assert_array_equal(train.labels.numpy(), arrays["y_train"])


# ---------------------------------------------------------------- missing data
def test_missing_folder_without_download_raises_helpful_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(root=missing, download=False)
    message = str(info.value)
    assert str(missing) in message
    assert "MULREG_DATA" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_env_folder_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "env-nowhere"
    monkeypatch.setenv("MULREG_DATA", str(missing))
    with pytest.raises(DataNotFoundError, match="MULREG_DATA") as info:
        load_cifar10(download=False)
    assert str(missing) in str(info.value)


def test_incomplete_image_folder_is_not_accepted(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DataNotFoundError):
        load_cifar10(root=tmp_path, download=False)


# ---------------------------------------------------------------- tasks
def _match(got: np.ndarray, expected: np.ndarray, atol: float = 1e-5) -> np.ndarray:
    """For each row of `got`, the index of the row of `expected` it equals (within atol)."""
    dist = np.abs(got.reshape(len(got), 1, -1) - expected.reshape(1, len(expected), -1)).max(-1)
    assert (dist.min(1) <= atol).all(), "an image is not in the expected set"
    return dist.argmin(1)


def test_binary_task_labels_normalisation_and_split(tiny_cifar_image_folder):
    train, test = load_cifar10(root=tiny_cifar_image_folder)
    task = binary_task(root=tiny_cifar_image_folder, val_fraction=0.25, seed=4)
    # test set: the cat (3) and deer (4) test images in data-set order, normalised by the paper's stats
    keep = np.isin(test.labels.numpy(), [3, 4])
    np.testing.assert_allclose(task.x_test.numpy(), np_normalize(test.images.numpy()[keep]), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(task.y_test.numpy(), np.where(test.labels.numpy()[keep] == 4, 1.0, -1.0))
    assert task.x_test.dtype == torch.float32 and task.y_test.dtype == torch.float32
    # training pool: 12 cat/deer images, split 9 train + round(0.25·12) = 3 validation, no overlap
    pool = np.isin(train.labels.numpy(), [3, 4])
    assert len(task.x_train) == 9 and len(task.x_val) == 3
    assert len(task.y_train) == 9 and len(task.y_val) == 3
    expected = np_normalize(train.images.numpy()[pool])
    which = _match(torch.cat([task.x_train, task.x_val]).numpy(), expected)
    assert sorted(which.tolist()) == list(range(12)), "train + validation must be the whole pool"
    # each image keeps its own class's label (cat → −1, deer → +1)
    expected_y = np.where(train.labels.numpy()[pool] == 4, 1.0, -1.0)
    np.testing.assert_array_equal(torch.cat([task.y_train, task.y_val]).numpy(), expected_y[which])
    assert len(task.flipped) == 0


def test_binary_task_split_is_seeded(tiny_cifar_image_folder):
    a = binary_task(root=tiny_cifar_image_folder, seed=1)
    b = binary_task(root=tiny_cifar_image_folder, seed=1)
    c = binary_task(root=tiny_cifar_image_folder, seed=2)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(torch.cat([a.x_train, a.x_val]), torch.cat([c.x_train, c.x_val]))


def test_binary_task_label_noise_only_on_training_pool(tiny_cifar_image_folder):
    clean = binary_task(root=tiny_cifar_image_folder, label_noise=0.0, seed=7, val_fraction=0.25)
    noisy = binary_task(root=tiny_cifar_image_folder, label_noise=0.4, seed=7, val_fraction=0.25)
    # same split (noise first, then the seeded split), exactly round(0.4 · 12) = 5 labels flipped
    assert torch.equal(clean.x_train, noisy.x_train) and torch.equal(clean.x_val, noisy.x_val)
    assert len(noisy.flipped) == 5
    n_diff = int((clean.y_train != noisy.y_train).sum() + (clean.y_val != noisy.y_val).sum())
    assert n_diff == 5
    assert torch.equal(noisy.y_train[noisy.y_train != clean.y_train], -clean.y_train[noisy.y_train != clean.y_train])
    assert torch.equal(clean.y_test, noisy.y_test) and torch.equal(clean.x_test, noisy.x_test)


def test_binary_task_caps_are_balanced(tiny_cifar_image_folder):
    task = binary_task(root=tiny_cifar_image_folder, n_train=8, n_test=4, val_fraction=0.25)
    labels = torch.cat([task.y_train, task.y_val])
    assert len(labels) == 8 and int((labels == 1).sum()) == 4
    assert len(task.y_test) == 4 and int((task.y_test == 1).sum()) == 2
    assert len(task.x_val) == 2


def test_multiclass_task_one_hot(tiny_cifar_image_folder):
    train, test = load_cifar10(root=tiny_cifar_image_folder)
    task = multiclass_task(root=tiny_cifar_image_folder, val_fraction=0.2, seed=1, label_noise=0.1)
    assert task.x_train.shape == (48, 3, 32, 32) and task.x_val.shape == (12, 3, 32, 32)
    assert task.y_train.shape == (48, 10) and task.y_test.shape == (30, 10)
    for y in (task.y_train, task.y_val, task.y_test):
        assert set(y.unique().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(y.sum(1).numpy(), 1.0)
    np.testing.assert_array_equal(task.y_test.argmax(1).numpy(), test.labels.numpy())
    np.testing.assert_allclose(task.x_test.numpy(), np_normalize(test.images.numpy()), atol=1e-5)
    assert len(task.flipped) == 6


def test_task_on_requested_device(tiny_cifar_image_folder):
    task = binary_task(root=tiny_cifar_image_folder, device="cpu")
    assert task.x_train.device.type == "cpu"


# ---------------------------------------------------------------- real CIFAR-10
@pytest.mark.cifar
@pytest.mark.slow
def test_real_binary_task_sizes(cifar_root, monkeypatch):
    train, test = load_cifar10(root=cifar_root, download=False)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.images.dtype == torch.uint8
    np.testing.assert_array_equal(np.bincount(train.labels.numpy()), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels.numpy()), [1000] * 10)
    def no_decoding(folder):
        raise AssertionError(f"second load decoded {folder} again instead of reading the cache")

    monkeypatch.setattr(data, "_decode", no_decoding)
    again, _ = load_cifar10(root=cifar_root, download=False)
    assert torch.equal(again.images, train.images)

    task = binary_task(root=cifar_root, val_fraction=0.2, seed=1)
    assert task.x_train.shape == (8000, 3, 32, 32) and task.x_val.shape == (2000, 3, 32, 32)
    assert task.x_test.shape == (2000, 3, 32, 32)
    pool = torch.cat([task.y_train, task.y_val])
    assert int((pool == 1).sum()) == 5000 and int((pool == -1).sum()) == 5000
    assert int((task.y_test == 1).sum()) == 1000 and int((task.y_test == -1).sum()) == 1000
    # the first deer test image, normalised independently
    deer = test.images.numpy()[test.labels.numpy() == 4][0]
    x_first = task.x_test.numpy()[task.y_test.numpy() == 1][0]
    np.testing.assert_allclose(x_first, np_normalize(deer[None])[0], atol=1e-5)


def test_root_from_env_is_resolved_per_call(tiny_cifar_image_folder, tiny_cifar_torchvision, monkeypatch):
    """Tasks loaded with root=None follow MULREG_DATA as it is now, not as it was on a first call."""
    tv_root, arrays = tiny_cifar_torchvision
    monkeypatch.setenv("MULREG_DATA", str(tiny_cifar_image_folder))
    a = binary_task(seed=1)
    monkeypatch.setenv("MULREG_DATA", str(tv_root))
    b = binary_task(seed=1)
    keep = np.isin(arrays["y_test"], [3, 4])
    np.testing.assert_allclose(b.x_test.numpy(), np_normalize(arrays["x_test"][keep]), atol=1e-5)
    assert a.x_test.shape != b.x_test.shape or not torch.equal(a.x_test, b.x_test)


def test_concurrent_first_loads_do_not_race(tiny_cifar_image_folder):
    """Worker processes that decode the same data at once must all succeed (one cache file)."""
    import multiprocessing

    from mulreg.core.data import _cache_file

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        shapes = pool.map(_load_shape, [str(tiny_cifar_image_folder)] * 3)
    assert shapes == [(60, 3, 32, 32)] * 3
    assert _cache_file(tiny_cifar_image_folder).exists()
    assert not list(_cache_file(tiny_cifar_image_folder).parent.glob("*.tmp.npz"))


def _load_shape(root):
    from mulreg.core.data import load_cifar10

    return tuple(load_cifar10(root, download=False)[0].images.shape)


def test_augmentation_is_seeded_per_epoch_label_free_and_off_by_default():
    from mulreg.config import RunConfig
    from mulreg.core.data import AUGMENT_PAD, augment, augment_draws

    a, b, c = augment_draws(3, 0, 64), augment_draws(3, 0, 64), augment_draws(3, 1, 64)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # the same (seed, epoch): the same draws
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])  # another epoch: other draws
    assert a[0].min() >= 0 and a[0].max() <= 2 * AUGMENT_PAD and 0 < a[1].float().mean() < 1
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    shifted = augment(x, torch.tensor([[AUGMENT_PAD, AUGMENT_PAD + 1], [AUGMENT_PAD, AUGMENT_PAD]]),
                      torch.tensor([False, True]))
    assert torch.equal(shifted[0, :, :, :-1], x[0, :, :, 1:]) and (shifted[0, :, :, -1] == 0).all()  # one pixel left
    assert torch.equal(shifted[1], x[1].flip(-1))  # mirrored
    # off by default, and left out of the key at its default (tests/test_reference.py: stored keys unchanged)
    assert RunConfig().augment is False and RunConfig().key() != RunConfig(augment=True).key()


# ---------------------------------------------------------------- issue 28: the cache holds what the folder holds
def test_a_folder_that_changed_is_decoded_again_and_its_old_cache_removed(tiny_cifar_image_folder, mulreg_cache):
    train, _ = load_cifar10(root=tiny_cifar_image_folder, download=False)
    first = set(mulreg_cache.glob("cifar10-*.npz"))
    extra = tiny_cifar_image_folder / "train" / "cat" / "9999.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(extra)
    grown, _ = load_cifar10(root=tiny_cifar_image_folder, download=False)
    assert len(grown.labels) == len(train.labels) + 1 and (grown.images == 7).all(dim=(1, 2, 3)).any()
    assert set(mulreg_cache.glob("cifar10-*.npz")).isdisjoint(first), "the old cache file is left behind"
    extra.unlink()
    shrunk, _ = load_cifar10(root=tiny_cifar_image_folder, download=False)
    assert torch.equal(shrunk.images, train.images) and torch.equal(shrunk.labels, train.labels)


def test_a_truncated_cache_file_is_decoded_again(tiny_cifar_image_folder, mulreg_cache, capsys):
    train, test = load_cifar10(root=tiny_cifar_image_folder, download=False)
    (cache,) = mulreg_cache.glob("cifar10-*.npz")
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    again, _ = load_cifar10(root=tiny_cifar_image_folder, download=False)
    said = capsys.readouterr().err.strip().splitlines()  # issue 40: a repair says what it repaired, in one line
    assert len(said) == 1 and said[0].startswith(f"{cache}: cannot be read (") and "decoded again" in said[0]
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert np.load(cache)["x_train"].shape == tuple(train.images.shape)


def test_check_caps_refuses_an_n_train_the_pool_cannot_fill(tiny_cifar_image_folder):
    from mulreg.config import RunConfig
    from mulreg.core.data import DataError, check_caps

    check_caps([RunConfig(n_train=2 * TINY_TRAIN_PER_CLASS)], tiny_cifar_image_folder)  # the whole pool: fine
    check_caps([RunConfig(task="multiclass", n_train=10 * TINY_TRAIN_PER_CLASS)], tiny_cifar_image_folder)
    with pytest.raises(DataError, match=r"n_train 14 asks for 7 training images per class, but .* holds 12 of cat, "
                                        r"deer in all \(too few of cat, deer\)"):
        check_caps([RunConfig(n_train=2 * TINY_TRAIN_PER_CLASS + 2)], tiny_cifar_image_folder)


def test_a_cache_that_cannot_be_written_is_named_and_leaves_no_partial_file(tiny_cifar_image_folder, mulreg_cache,
                                                                             monkeypatch):
    """A full disk read as `Errno 28` with no path and left a partial cache file (≈ 180 MB on CIFAR-10)."""
    from mulreg.core.data import DataError

    def full(path, **arrays):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(DataError, match=rf"decoded-data cache {mulreg_cache} \(MULREG_CACHE\): cannot write "
                                        r"cifar10-.*\.npz \(No space left on device\)"):
        load_cifar10(root=tiny_cifar_image_folder, download=False)
    assert not list(mulreg_cache.iterdir())


def test_a_pool_asked_for_more_images_than_the_data_holds_is_refused_not_truncated(tiny_cifar_image_folder):
    """Issue 40: on c51d60c `load_pool`, as a notebook calls it, returned the 12 images there are for an
    n_train of 100, without a word."""
    from mulreg.core.data import DataError, load_pool

    assert len(load_pool("binary", 2 * TINY_TRAIN_PER_CLASS, root=str(tiny_cifar_image_folder)).y_train) == 12
    with pytest.raises(DataError, match=r"n_train 100 asks for 50 training images per class"):
        load_pool("binary", 100, root=str(tiny_cifar_image_folder))
    with pytest.raises(DataError, match=r"n_test 40 asks for 4 test images per class"):
        load_pool("multiclass", None, 40, root=str(tiny_cifar_image_folder))
