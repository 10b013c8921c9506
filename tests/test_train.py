"""mulreg.engine.train on the tiny image-folder data set: end to end, divergence, stacked runs, the
optimiser arithmetic against torch.optim, early stopping and restoring the best weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mulreg.config import RunConfig
from mulreg.core.data import generator, pool_for, split_run
from mulreg.core.epochs import authors_rule
from mulreg.core.models import build_model
from mulreg.engine.loop import train_plain
from mulreg.engine.train import train, train_group
from mulreg.protocols import StopReason
from tasks import binary_task

LAYERS = ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]


def config(**values) -> RunConfig:
    base = dict(device="cpu", init_scale=1.0, lr=0.01, batch_size=4, max_epochs=2, early_stopping=None)
    return RunConfig.parse({**base, **values})


def run(cfg: RunConfig, root):
    return train(cfg, root=root, progress=False)


def task_of(cfg: RunConfig, root):
    return binary_task(root=root, seed=cfg.seed, label_noise=cfg.label_noise, val_fraction=cfg.val_fraction,
                       n_train=cfg.n_train, n_test=cfg.n_test)


def weights_of(state: dict) -> list[np.ndarray]:
    """Conv/linear weights of a BinaryCNN state dict, in forward order."""
    keys = [k for k in state if k.endswith("weight")]
    return [state[k].double().numpy() for k in keys]


def assert_frames_close(a: pd.DataFrame, b: pd.DataFrame, rtol=1e-4, atol=1e-6):
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=rtol, atol=atol)


def assert_states_close(a: dict, b: dict, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=rtol, atol=atol, err_msg=k)


# ---------------------------------------------------------------- end to end
def test_train_end_to_end(tiny_cifar_image_folder):
    cfg = config(penalty="sum", lam=1e-3, label_noise=0.2, n_train=10, val_fraction=0.2, seed=3)
    result = run(cfg, tiny_cifar_image_folder)
    h = result.history
    assert result.stop_reason in ("max_epochs", "chance_level")
    assert list(h["epoch"]) == [1, 2]
    expected_columns = {"epoch", "train_loss", "penalty_term", "train_acc", "val_loss", "val_acc", "test_loss",
                        "test_acc", "norm_product", "norm_sq_sum", *(f"norm_{n}" for n in LAYERS)}
    assert expected_columns <= set(h.columns)
    # the flipped-label fit is NaN when the training split holds no flipped label (tested below)
    assert np.isfinite(h.drop(columns=["epoch", "train_acc_flipped"]).to_numpy(float)).all()
    norms = h[[f"norm_{n}" for n in LAYERS]].to_numpy()
    np.testing.assert_allclose(h["norm_product"], norms.prod(1), rtol=1e-6)
    np.testing.assert_allclose(h["norm_sq_sum"], (norms**2).sum(1), rtol=1e-6)
    assert (h["penalty_term"] > 0).all()
    assert ((h[["train_acc", "val_acc", "test_acc"]] >= 0) & (h[["train_acc", "val_acc", "test_acc"]] <= 1)).all().all()

    # the reported weights are the last epoch's (no early stopping): its norms are the history's
    w = weights_of(result.state_dict)
    np.testing.assert_allclose(norms[-1], [np.linalg.norm(a) for a in w], rtol=1e-5)

    # final metrics recomputed independently from the reported model
    task = task_of(cfg, tiny_cifar_image_folder)
    assert len(task.x_train) == 8 and len(task.x_val) == 2 and len(task.x_test) == 6
    model = result.model()
    with torch.no_grad():
        out_test = model(task.x_test).double().numpy()
        out_val = model(task.x_val).double().numpy()
        out_train = model(task.x_train).double().numpy()
    y_test, y_val, y_train = (t.double().numpy() for t in (task.y_test, task.y_val, task.y_train))
    m = result.metrics
    assert m["test_acc"] == pytest.approx(np.mean(np.sign(out_test) == y_test))
    assert m["test_loss"] == pytest.approx(np.mean((out_test - y_test) ** 2), rel=1e-4)
    assert m["train_acc"] == pytest.approx(np.mean(np.sign(out_train) == y_train))
    assert h["test_acc"].iloc[-1] == pytest.approx(m["test_acc"])
    assert h["test_loss"].iloc[-1] == pytest.approx(m["test_loss"], rel=1e-4)
    assert h["val_loss"].iloc[-1] == pytest.approx(np.mean((out_val - y_val) ** 2), rel=1e-4)
    assert h["val_acc"].iloc[-1] == pytest.approx(np.mean(np.sign(out_val) == y_val))
    for name, a in zip(LAYERS, w):
        assert m[f"norm_{name}"] == pytest.approx(np.linalg.norm(a), rel=1e-5)
        s = np.linalg.svd(a.reshape(a.shape[0], -1), compute_uv=False)
        assert m[f"rank_{name}"] == int(np.sum(s > 0.01 * s[0]))
    assert m["norm_product"] == pytest.approx(np.prod([np.linalg.norm(a) for a in w]), rel=1e-5)
    assert m["norm_sq_sum"] == pytest.approx(sum(np.sum(a**2) for a in w), rel=1e-5)
    # test margins: y·f(x) of a copy with every layer's weight divided by its norm (biases kept)
    assert result.test_margins.shape == (6,)
    unit = result.model()
    with torch.no_grad():
        for mod in unit.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.div_(float(np.linalg.norm(mod.weight.double().numpy())))
        expected_margins = y_test * unit(task.x_test).double().numpy()
    np.testing.assert_allclose(result.test_margins, expected_margins, rtol=1e-3,
                               atol=1e-5 * np.abs(expected_margins).max())
    margins = result.test_margins.astype(np.float64)
    tol = 1e-5 * np.abs(margins).max()  # margins of both signs: float32 sums cancel
    assert m["margin_mean"] == pytest.approx(margins.mean(), abs=tol)
    ok = np.sign(out_test) == y_test
    if ok.any():
        assert m["margin_mean_correct"] == pytest.approx(margins[ok].mean(), abs=tol)
    for k in ("test_acc_last", "test_acc_best_test", "test_acc_best_val", "epochs", "reported_epoch",
              "margin_std_mean", "margin_norm_mean"):
        assert k in m
    assert m["epochs"] == 2 and m["reported_epoch"] == 2
    assert m["test_acc_last"] == h["test_acc"].iloc[-1]
    assert m["test_acc_best_test"] == h["test_acc"].max()
    assert m["test_acc_best_val"] == h["test_acc"].iloc[int(h["val_loss"].to_numpy().argmin())]


def test_flipped_and_clean_fit_add_up_to_the_training_accuracy(tiny_cifar_image_folder):
    from mulreg.core.data import load_pool, split_run

    cfg = config(label_noise=0.25, n_train=12, val_fraction=0.2, seed=5, max_epochs=3)
    result = run(cfg, tiny_cifar_image_folder)
    h, m = result.history, result.metrics
    pool = load_pool("binary", 12, None, str(tiny_cifar_image_folder))
    data = split_run(pool, cfg.seed, cfg.label_noise, cfg.val_fraction)
    n = len(data.train_idx)
    n_flipped = int(np.isin(data.train_idx.numpy(), data.flipped.numpy()).sum())
    assert 0 < n_flipped < n
    for col in ("train_acc_flipped", "train_acc_clean"):
        assert h[col].between(0, 1).all() and 0 <= m[col] <= 1
    mixed = (n_flipped * h["train_acc_flipped"] + (n - n_flipped) * h["train_acc_clean"]) / n
    np.testing.assert_allclose(mixed, h["train_acc"], rtol=1e-5)
    np.testing.assert_allclose((n_flipped * m["train_acc_flipped"] + (n - n_flipped) * m["train_acc_clean"]) / n,
                               m["train_acc"], rtol=1e-5)


def test_flipped_fit_is_nan_without_label_noise(tiny_cifar_image_folder):
    result = run(config(max_epochs=1, n_train=8), tiny_cifar_image_folder)
    assert result.history["train_acc_flipped"].isna().all() and math.isnan(result.metrics["train_acc_flipped"])
    assert (result.history["train_acc_clean"] == result.history["train_acc"]).all()


def test_classes_choose_the_pair(tiny_cifar_image_folder):
    """Another pair trains on other images: same seed and init, different data, different history."""
    a = run(config(max_epochs=1, n_train=8), tiny_cifar_image_folder)
    b = run(config(max_epochs=1, n_train=8, classes=("dog", "horse")), tiny_cifar_image_folder)
    assert not a.history["train_loss"].equals(b.history["train_loss"])


def test_penalty_column_is_zero_without_penalty(tiny_cifar_image_folder):
    result = run(config(max_epochs=1, n_train=8), tiny_cifar_image_folder)
    assert (result.history["penalty_term"] == 0).all()


# ---------------------------------------------------------------- divergence
@pytest.mark.parametrize("values", [
    dict(lr=10.0, max_epochs=4),
    dict(penalty="mul", lam=1e30, max_epochs=4),
])
def test_divergence_is_recorded_not_raised(tiny_cifar_image_folder, values):
    result = run(config(**values), tiny_cifar_image_folder)
    assert result.stop_reason == "diverged"
    h = result.history
    assert len(h) >= 1
    last = h.iloc[-1]
    assert not all(math.isfinite(last[c]) for c in ("train_loss", "val_loss", "test_loss"))
    # every earlier epoch was finite (the run stopped at the first non-finite one)
    assert np.isfinite(h[["train_loss", "val_loss", "test_loss"]].iloc[:-1].to_numpy()).all()
    assert len(h) <= 4 and result.metrics["epochs"] == len(h)
    assert math.isnan(result.metrics["test_acc"])


def test_divergence_with_restore_best_reports_finite_best_weights(tiny_cifar_image_folder):
    """lr grows the weights slowly enough to have a finite first epoch, then blows up."""
    cfg = config(lr=0.5, max_epochs=20, n_train=10, init_scale=1.0,
                 early_stopping={"monitor": "val_loss", "patience": 50, "restore_best": True})
    result = run(cfg, tiny_cifar_image_folder)
    if result.stop_reason != "diverged" or len(result.history) < 2:
        pytest.skip("this configuration did not diverge after a finite epoch here")
    assert all(torch.isfinite(t).all() for t in result.state_dict.values())
    best = int(np.nanargmin(result.history["val_loss"].to_numpy())) + 1
    assert result.metrics["reported_epoch"] == best
    assert math.isfinite(result.metrics["test_acc"])


# ---------------------------------------------------------------- stacked runs
def test_train_group_matches_separate_runs(tiny_cifar_image_folder):
    configs = [
        config(penalty="none", seed=1, lr=0.002, max_epochs=2),
        config(penalty="sum", lam=1e-2, seed=2, lr=0.005, label_noise=0.2, max_epochs=3),
        config(penalty="mul", lam=1e-3, seed=3, lr=0.002, init_scale=0.2, label_noise=0.1, max_epochs=1),
    ]
    grouped = train_group(configs, root=tiny_cifar_image_folder, progress=False)
    assert [g.config for g in grouped] == configs
    for cfg, g in zip(configs, grouped):
        alone = run(cfg, tiny_cifar_image_folder)
        assert len(g.history) == cfg.max_epochs
        assert g.stop_reason == alone.stop_reason
        assert_frames_close(g.history, alone.history)
        assert_states_close(g.state_dict, alone.state_dict)
        assert g.metrics.keys() == alone.metrics.keys()
        for k in g.metrics:
            np.testing.assert_allclose(g.metrics[k], alone.metrics[k], rtol=1e-4, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(g.test_margins, alone.test_margins, rtol=1e-4, atol=1e-6)
    # the runs really differ from each other
    assert not np.allclose(grouped[0].history["norm_fc1"].iloc[0], grouped[1].history["norm_fc1"].iloc[0])


@pytest.mark.parametrize("k", [1, 2])
def test_compiled_training_matches_eager(tiny_cifar_image_folder, k):
    """config.compile runs the same steps through torch.compile's fused kernels (K=2: under vmap)."""
    from torch._dynamo.utils import counters

    configs = [config(penalty="mul", lam=1e-3, momentum=0.9, seed=s, label_noise=0.2, val_fraction=0.2)
               for s in range(1, k + 1)]
    eager = train_group(configs, root=tiny_cifar_image_folder, progress=False)
    graphs = counters["stats"]["unique_graphs"]
    compiled = train_group([c.replace(compile=True) for c in configs], root=tiny_cifar_image_folder,
                           progress=False)
    assert counters["stats"]["unique_graphs"] > graphs  # compiled for real, not a silent eager fallback
    for e, c in zip(eager, compiled):
        assert c.config.key() == e.config.key()  # how it ran is not part of what ran
        assert_frames_close(e.history, c.history)
        assert_states_close(e.state_dict, c.state_dict)


def test_train_group_rejects_mixed_groups(tiny_cifar_image_folder):
    with pytest.raises(ValueError):
        train_group([config(), config(batch_size=8)], root=tiny_cifar_image_folder, progress=False)


# ---------------------------------------------------------------- against the plain loop (mulreg.engine.loop)
@pytest.mark.parametrize("values", [
    dict(optimizer="sgd", momentum=0.9, lr=0.01, penalty="sum", lam=1e-3, effective_lr=True),
    dict(optimizer="sgd", momentum=0.0, lr=0.02, penalty="none"),
    dict(optimizer="adam", lr=1e-3, penalty="mul", lam=1e-4, init_scale=0.5, effective_lr=True),
    dict(optimizer="sgd", momentum=0.9, lr=0.01, penalty="sum", lam=1e-3, model={"batch_norm": True, "bias": True}),
    dict(optimizer="sgd", lr=0.01, penalty="mul", lam=1e-6, init_scale=0.5, model={"weight_norm": True},
         effective_lr=True),
    dict(optimizer="sgd", momentum=0.9, lr=0.01, penalty="l1", lam=1e-3),
    dict(optimizer="sgd", lr=0.02, penalty="mul", lam=1e-6, init_scale=0.5, augment=True),
    dict(optimizer="sgd", lr=0.01, penalty="mul", lam=1e-6, init_scale=0.5, model={"batch_norm": True}, augment=True,
         effective_lr=True),
])
def test_single_run_matches_the_plain_loop(tiny_cifar_image_folder, values):
    cfg = config(batch_size=3, max_epochs=2, seed=5, label_noise=0.2, val_fraction=0.2, **values)
    result = run(cfg, tiny_cifar_image_folder)
    model, ref = train_plain(cfg, root=tiny_cifar_image_folder)
    assert result.stop_reason in ("max_epochs", "chance_level")
    assert_states_close(result.state_dict, {k: v.detach() for k, v in model.state_dict().items()},
                        rtol=1e-4, atol=1e-6)
    for col in ref.columns:
        np.testing.assert_allclose(result.history[col], ref[col], rtol=1e-4, atol=1e-6, err_msg=col)


# ---------------------------------------------------------------- early stopping
def test_early_stopping_stops_and_restores_best(tiny_cifar_image_folder):
    # min_delta so large that nothing after the first epoch counts as an improvement
    es = {"monitor": "val_loss", "patience": 2, "min_delta": 1e9, "restore_best": True}
    cfg = config(max_epochs=10, n_train=10, lr=0.01, early_stopping=es)
    result = run(cfg, tiny_cifar_image_folder)
    assert len(result.history) == 3  # best at epoch 1, two epochs without improvement
    assert result.metrics["reported_epoch"] == 1 and result.metrics["epochs"] == 3
    assert result.stop_reason in ("early_stopped", "chance_level")
    if result.history["train_acc"].max() > 0.5 + cfg.chance_margin:
        assert result.stop_reason == "early_stopped"
    # the reported weights are the first epoch's: those of the same run stopped after one epoch
    one = run(cfg.replace(max_epochs=1, early_stopping=None), tiny_cifar_image_folder)
    assert_states_close(result.state_dict, one.state_dict, rtol=1e-5, atol=1e-7)
    assert_frames_close(result.history.iloc[:1], one.history, rtol=1e-5, atol=1e-7)
    # and not the last epoch's
    last = run(cfg.replace(max_epochs=3, early_stopping=None), tiny_cifar_image_folder)
    assert not np.allclose(result.state_dict["classifier.1.weight"], last.state_dict["classifier.1.weight"])
    # without restore_best the last weights are reported
    no_restore = run(cfg.replace(early_stopping={"restore_best": False}), tiny_cifar_image_folder)
    assert no_restore.metrics["reported_epoch"] == 3
    assert_states_close(no_restore.state_dict, last.state_dict, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("monitor", ["val_loss", "val_acc", "test_acc"])
def test_early_stopping_follows_the_monitored_history(tiny_cifar_image_folder, monitor):
    es = {"monitor": monitor, "patience": 2, "min_delta": 0.0, "restore_best": True}
    cfg = config(max_epochs=6, lr=0.05, early_stopping=es)
    result = run(cfg, tiny_cifar_image_folder)
    values = result.history[monitor].to_numpy() * (-1 if monitor.endswith("acc") else 1)
    # the rule, written out: improvement = strictly below the best so far (minus min_delta)
    best, best_epoch, stop = None, 0, None
    for epoch, v in enumerate(values, start=1):
        if best is None or v < best:
            best, best_epoch = v, epoch
        elif epoch - best_epoch >= 2:
            stop = epoch
            break
    expected_epochs = stop or cfg.max_epochs
    assert len(result.history) == expected_epochs
    assert result.metrics["reported_epoch"] == best_epoch
    reason = "early_stopped" if stop else "max_epochs"
    if result.history["train_acc"].max() <= 0.5 + cfg.chance_margin:
        reason = "chance_level"
    assert result.stop_reason == reason


@pytest.mark.parametrize("restore_best", [False, True])
def test_a_run_trained_past_its_stop_reports_the_model_at_the_stop(tiny_cifar_image_folder, restore_best):
    """Issue 39: the authors' stop (no restore) read from a run that trained on to a horizon. Its weights
    and metrics are those of the same run stopped there; its history goes on to max_epochs, its first
    epochs equal to the stopped run's; the plain loop agrees."""
    es = {"monitor": "val_loss", "patience": 2, "min_delta": 1e9, "restore_best": restore_best}  # fires at 3
    cfg = config(max_epochs=6, n_train=10, lr=0.01, early_stopping=es)
    stopped = run(cfg, tiny_cifar_image_folder)
    past = run(cfg.replace(train_past_stop=True), tiny_cifar_image_folder)
    assert len(stopped.history) == 3 and len(past.history) == 6
    assert past.metrics["stop_epoch"] == 3 and past.metrics["epochs"] == 6
    assert past.metrics["reported_epoch"] == stopped.metrics["reported_epoch"] == (1 if restore_best else 3)
    assert_states_close(past.state_dict, stopped.state_dict, rtol=1e-5, atol=1e-7)
    assert_frames_close(past.history.iloc[:3], stopped.history, rtol=1e-5, atol=1e-7)
    assert past.metrics["test_acc"] == pytest.approx(stopped.metrics["test_acc"])
    # the analyses' reading of the authors' rule finds the same stop in the longer history
    assert past.history["epoch"].iloc[authors_rule(past.history, 2, 1e9)] == 3
    model, ref = train_plain(cfg.replace(train_past_stop=True), root=tiny_cifar_image_folder)
    assert len(ref) == 6
    assert_states_close(past.state_dict, {k: v.detach() for k, v in model.state_dict().items()})


def test_train_past_stop_without_early_stopping_is_refused():
    from mulreg.config import ConfigError

    with pytest.raises(ConfigError, match="train_past_stop needs early_stopping"):
        config(early_stopping=None, train_past_stop=True)
    assert config().key() == config(train_past_stop=False).key()  # stored runs keep their keys


def test_chance_level_reason(tiny_cifar_image_folder):
    # a chance margin of 0.49 calls every run below 99 % training accuracy "chance level"
    result = run(config(max_epochs=1, lr=1e-6, init_scale=0.2, chance_margin=0.49), tiny_cifar_image_folder)
    assert result.stop_reason == "chance_level"
    assert result.stop_reason in list(StopReason)


@pytest.mark.parametrize("values", [
    dict(early_stopping={"monitor": "val_acc", "patience": 1, "restore_best": True}, max_epochs=5, lr=0.05),
    dict(model={"dropout": 0.3}, max_epochs=2),
])
def test_early_stopping_and_dropout_match_the_plain_loop(tiny_cifar_image_folder, values):
    cfg = config(batch_size=3, seed=2, label_noise=0.2, val_fraction=0.25, **values)
    result = run(cfg, tiny_cifar_image_folder)
    model, ref = train_plain(cfg, root=tiny_cifar_image_folder)
    assert len(result.history) == len(ref)
    assert_states_close(result.state_dict, {k: v.detach() for k, v in model.state_dict().items()})
    for col in ref.columns:
        np.testing.assert_allclose(result.history[col], ref[col], rtol=1e-4, atol=1e-6, err_msg=col)


def test_the_effective_learning_rate_is_the_relative_size_of_each_step(tiny_cifar_image_folder):
    """Plain SGD on one run: the first step moves W by lr·‖∇W‖, so with one step per epoch the
    recorded eff_lr of a layer is lr·‖∇_W L‖/‖W‖ at the initial weights."""
    cfg = config(batch_size=12, n_train=12, val_fraction=0.0, max_epochs=1, lr=0.05, early_stopping=None,
                 effective_lr=True)
    result = run(cfg, tiny_cifar_image_folder)
    model, ref = train_plain(cfg, root=tiny_cifar_image_folder)  # the same step, taken by torch.optim
    first = build_model(cfg)
    pool = pool_for(cfg, tiny_cifar_image_folder)
    data = split_run(pool, cfg.seed, cfg.label_noise, cfg.val_fraction)
    order = data.train_idx[torch.randperm(12, generator=generator(cfg.seed, "epoch-0"))]
    loss = (first(pool.x_train[order]) - pool.targets(data.labels)[order]).square().mean()
    loss.backward()
    expected = cfg.lr * first.features[0].weight.grad.norm() / first.features[0].weight.norm()
    assert result.history["eff_lr_conv1"].iloc[0] == pytest.approx(expected.item(), rel=1e-4)
    assert ref["eff_lr_conv1"].iloc[0] == pytest.approx(expected.item(), rel=1e-4)


def test_backend_settings_are_set_in_one_place_and_recorded_with_the_run(tiny_cifar_image_folder):
    from mulreg.core.devices import backend_settings

    try:
        on = backend_settings(torch.device("cpu"), deterministic=True)
        assert on["deterministic_algorithms"] is True and torch.are_deterministic_algorithms_enabled()
        assert on["cudnn_benchmark"] is False and on["float32_matmul_precision"] == "highest"
        torch.backends.cudnn.allow_tf32 = True  # cuDNN's default: TF32 convolutions on Ampere and later
        result = run(config(deterministic=False), tiny_cifar_image_folder)
        assert not torch.are_deterministic_algorithms_enabled()  # the run set what its config asks
        assert torch.backends.cudnn.allow_tf32 is False and torch.get_float32_matmul_precision() == "highest"
        assert result.provenance["deterministic_algorithms"] is False
        assert result.provenance["float32_matmul_precision"] == "highest"
        assert result.provenance["float32_conv_precision"] == "highest"
        assert result.provenance["device_used"] == "cpu"
        assert result.provenance["matmul_gflops"] > 0 and result.provenance["cpu_model"]
        assert config(deterministic=True).key() == config().key()  # how, not what
    finally:
        backend_settings(torch.device("cpu"), deterministic=False)


def test_training_steps_make_no_host_reads(tiny_cifar_image_folder, monkeypatch):
    """Reading a tensor's value on the host (`.item()`, `.tolist()`, `.cpu()`, `bool`, `float`) waits
    for the device: the engine does it a bounded few times per epoch and never per step. Two runs of
    the same epochs, one with twice the steps per epoch, must read the host equally often."""
    reads = {"n": 0}
    for name in ("item", "tolist", "cpu", "__bool__", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            reads["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def host_reads(n_train: int) -> int:
        reads["n"] = 0
        run(config(n_train=n_train, batch_size=1, max_epochs=3, val_fraction=0.25), tiny_cifar_image_folder)
        return reads["n"]

    assert host_reads(8) == host_reads(12)  # 6 vs 9 steps per epoch (the tiny pool has 12 images)


# ---------------------------------------------------------------- continuous batching
def numbers(result) -> tuple:
    return result.history, {k: v for k, v in result.state_dict.items()}


def test_a_run_gives_the_same_numbers_alone_in_a_full_stack_and_refilled_mid_stack(tiny_cifar_image_folder):
    """Slots of a stack are independent: run R trained from the start beside B, or taking over A's
    slot (either slot) after A stopped, while B is an epoch in, gives bit-identical numbers on a CPU;
    alone (no stack: the unbatched path) it agrees within float tolerance."""
    r = config(penalty="sum", lam=1e-2, seed=5, lr=0.005, label_noise=0.2, max_epochs=3)
    a = config(penalty="mul", lam=1e-3, seed=1, lr=0.002, max_epochs=1)
    b = config(penalty="none", seed=2, lr=0.002, max_epochs=4)
    root = tiny_cifar_image_folder

    def trained(configs):
        out = train_group(configs, root=root, progress=False, slots=2)
        assert [o.config for o in out] == configs  # results in the order given, every one
        return out[configs.index(r)]

    full = trained([r, b])
    for refilled in (trained([a, b, r]), trained([b, a, r])):  # R takes slot 0, then slot 1
        pd.testing.assert_frame_equal(refilled.history, full.history)
        assert all(torch.equal(refilled.state_dict[k], full.state_dict[k]) for k in full.state_dict)
    alone = run(r, root)
    assert_frames_close(alone.history, full.history)
    assert_states_close(alone.state_dict, full.state_dict)


def test_a_run_waiting_for_a_slot_starts_its_clock_when_it_takes_one(tiny_cifar_image_folder, monkeypatch):
    """A run's provenance times it from the moment it takes a slot (it read the moment its group was
    made: a queued run's start, wall time and throughput counted its wait), and a fresh run's first
    start is that moment. The clock is an hour a tick, so the two moments cannot fall in one second."""
    import itertools
    import types

    from mulreg.engine import stack

    clock = itertools.count(1_800_000_000, 3600)
    monkeypatch.setattr(stack, "time", types.SimpleNamespace(time=lambda: float(next(clock))))
    first, queued = (config(penalty="none", seed=seed, lr=0.002, max_epochs=1) for seed in (1, 2))
    a, b = (out.provenance for out in train_group([first, queued], root=tiny_cifar_image_folder, progress=False,
                                                  slots=1))
    assert b["started"] > a["started"]
    assert a["first_started"] == a["started"] and b["first_started"] == b["started"]


def test_flush_denormal_is_set_for_each_run_either_way_and_keyed_only_when_on(tiny_cifar_image_folder):
    """Subnormal floats computed as zero only in the runs that ask (the flag is process-wide: a run after
    one that set it must not inherit it); the default leaves every existing run key as it was."""
    subnormal = torch.tensor([1e-39])
    base = config(penalty="mul", lam=1e-3, max_epochs=1)
    assert base.key() == base.replace(flush_denormal=False).key() != base.replace(flush_denormal=True).key()
    try:
        flushed = run(base.replace(flush_denormal=True), tiny_cifar_image_folder)
        if not flushed.provenance["flush_denormal"]:
            pytest.skip("this CPU cannot flush subnormals")
        assert (subnormal * 1.0).item() == 0.0
        assert not run(base, tiny_cifar_image_folder).provenance["flush_denormal"]
        assert (subnormal * 1.0).item() > 0.0
        train_plain(base.replace(flush_denormal=True), tiny_cifar_image_folder)
        assert (subnormal * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


def test_a_stack_keeps_its_shape_so_a_sweep_compiles_a_bounded_number_of_graphs(tiny_cifar_image_folder,
                                                                                monkeypatch):
    """Runs that stop at different epochs and are refilled from the queue never change the stack's
    shape: nine runs ending at epochs 1-3 in four slots compile exactly what four runs that end
    together do, and go through with dynamo's recompile limit lowered to that count (a hit would
    raise rather than fall back to eager)."""
    from torch._dynamo.testing import CompileCounter

    from mulreg.engine import train as engine

    def graphs(epochs: list[int], limit: int = 8) -> int:
        torch._dynamo.reset()
        counter = CompileCounter()
        monkeypatch.setattr(engine._Engine, "_compiled", lambda self, fn: torch.compile(fn, backend=counter))
        configs = [config(penalty="sum", lam=1e-3, seed=s, lr=0.002, max_epochs=e, compile=True)
                   for s, e in enumerate(epochs, 1)]
        with torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
            results = train_group(configs, root=tiny_cifar_image_folder, progress=False, slots=4)
        assert [len(x.history) for x in results] == epochs
        return counter.frame_count

    together = graphs([2, 2, 2, 2])
    assert graphs([1, 3, 2, 1, 2, 3, 1, 2, 1], limit=together) == together


def test_the_compile_mode_reaches_torch_compile_and_stays_out_of_the_run_key(tiny_cifar_image_folder,
                                                                             monkeypatch):
    """mode="reduce-overhead" (CUDA graphs on a GPU) is how a run is computed, not what."""
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: modes.append(kw["mode"]) or fn)
    graphs = config(compile=True, compile_mode="reduce-overhead")
    run(graphs, tiny_cifar_image_folder)
    assert modes and set(modes) == {"reduce-overhead"}
    assert graphs.key() == config(compile=True).key() == config().key()
    with pytest.raises(ValueError, match="compile_mode"):
        config(compile_mode="fastest")


def test_a_runs_footprint_is_measured_its_activations_growing_with_the_batch():
    """Weights, gradients and optimiser slots are fixed; what the forward pass saves for the backward
    pass grows with the batch, in proportion."""
    from mulreg.engine.sizing import footprint

    sgd = [footprint(config(batch_size=b)) for b in (16, 32, 64)]
    weights = sum(p.numel() * 4 for p in build_model(config()).parameters())
    assert sgd[0] > 3 * weights  # weights, gradients, momentum, and activations on top
    assert sgd[1] - sgd[0] > 0
    assert sgd[2] - sgd[1] == pytest.approx(2 * (sgd[1] - sgd[0]), rel=0.05)
    assert footprint(config(batch_size=16, optimizer="adam")) - sgd[0] == weights  # Adam keeps m and v
    assert footprint(config(task="multiclass", batch_size=16)) > 10 * sgd[0]


def test_a_gpu_stack_holds_what_half_its_free_memory_holds_of_measured_runs(monkeypatch):
    from mulreg.engine import sizing

    cfg = config(batch_size=16)
    monkeypatch.setattr(sizing, "resolve_device", lambda device: torch.device("cuda"))
    for free, slots in ((10, 5), (1, 1), (10_000, sizing.MAX_STACK)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free * sizing.footprint(cfg), 2**40))
        assert sizing.stack_size(cfg) == slots
    assert sizing.stack_size(config(batch_size=16, model={"dropout": 0.5})) == 1  # vmap cannot stack dropout


def test_evaluators_see_one_shape_their_last_chunk_padded_and_masked(tiny_cifar_image_folder, monkeypatch):
    """With chunks that do not divide the test and validation sets, each evaluator is still called
    with one shape, and the padding changes no number: accuracies equal those of one whole chunk."""
    from mulreg.engine import train as engine

    shapes: dict[tuple, set] = {}
    evaluator = engine._Engine._evaluator

    def recording(self, batched, shared_images):
        fn = evaluator(self, batched, shared_images)

        def called(params, buffers, x, y):
            shapes.setdefault((batched, shared_images), set()).add(tuple(x.shape))
            return fn(params, buffers, x, y)
        return called

    cfg = config(n_test=6, n_train=12, val_fraction=0.3)
    whole = run(cfg, tiny_cifar_image_folder).history
    monkeypatch.setattr(engine, "EVAL_IMAGES", 5)
    monkeypatch.setattr(engine._Engine, "_evaluator", recording)
    chunked = run(cfg, tiny_cifar_image_folder).history
    assert len(shapes) == 2 and all(len(s) == 1 for s in shapes.values()), shapes  # test set, validation split
    pd.testing.assert_series_equal(chunked.test_acc, whole.test_acc)
    pd.testing.assert_series_equal(chunked.val_acc, whole.val_acc)
    np.testing.assert_allclose(chunked.test_loss, whole.test_loss, rtol=1e-6)


class MemoryCheckpoints:
    """Checkpoints kept in a dict, every epoch."""

    every = 1

    def __init__(self):
        self.saved = {}

    def load(self, key):
        return self.saved.get(key)

    def save(self, key, state):
        self.saved[key] = state


def test_a_checkpoint_written_before_the_optimiser_state_was_renamed_still_resumes(tiny_cifar_image_folder):
    """Checkpoints written before 2026-11-29 call the optimiser state "slots" (now "optimizer";
    "slots" names positions in a stack): resuming from one gives the numbers of an uninterrupted run."""
    from mulreg.engine.stack import OLD_OPTIMIZER_KEY

    cfg = config(penalty="sum", lam=1e-2, lr=0.005, momentum=0.9, max_epochs=3)
    whole = run(cfg, tiny_cifar_image_folder)
    checkpoints = MemoryCheckpoints()
    short = cfg.replace(max_epochs=2)  # checkpointed after epoch 1; it stops after epoch 2, unsaved
    train(short, root=tiny_cifar_image_folder, checkpoints=checkpoints, progress=False)
    saved = checkpoints.saved[short.key()]
    old = saved | {"state": {OLD_OPTIMIZER_KEY if part == "optimizer" else part: v
                             for part, v in saved["state"].items()}}
    assert OLD_OPTIMIZER_KEY in old["state"] and old["epoch"] == 1
    assert old["state"][OLD_OPTIMIZER_KEY]["momentum.features.0.weight"].abs().sum() > 0  # momentum was saved
    checkpoints.saved = {cfg.key(): old}
    resumed = train(cfg, root=tiny_cifar_image_folder, checkpoints=checkpoints, progress=False)
    pd.testing.assert_frame_equal(resumed.history, whole.history)
    assert all(torch.equal(resumed.state_dict[k], whole.state_dict[k]) for k in whole.state_dict)


# ---------------------------------------------------------------- a horizon counted from the escape
def test_a_horizon_counted_from_the_escape_stops_engine_and_loop_alike(tiny_cifar_image_folder):
    """`epochs_after_escape`: a run trains that many epochs past the first epoch whose training
    accuracy leaves chance level, at most `max_epochs`; the engine (alone and in a stack whose runs
    stop at different epochs) and the plain loop agree epoch for epoch."""
    margin = 0.02
    configs = [config(seed=s, lr=0.05, max_epochs=8, chance_margin=margin, epochs_after_escape=2, batch_size=3)
               for s in (1, 2, 3)]
    stacked = train_group(configs, root=tiny_cifar_image_folder, progress=False)
    for cfg, result in zip(configs, stacked):
        h = result.history
        left = h.index[h["train_acc"] > 0.5 + margin]
        expected = min(int(left[0]) + 1 + 2, 8) if len(left) else 8
        assert len(h) == expected
        assert result.stop_reason == ("after_escape" if len(left) and expected < 8 else
                                      "chance_level" if not len(left) else result.stop_reason)
        _, ref = train_plain(cfg, root=tiny_cifar_image_folder)
        assert len(ref) == len(h)
        for col in ref.columns:
            np.testing.assert_allclose(h[col], ref[col], rtol=1e-4, atol=1e-6, err_msg=col)
    assert any(r.stop_reason == "after_escape" for r in stacked)
    assert configs[0].key() != configs[0].replace(epochs_after_escape=None).key()


def test_divergence_reads_no_test_column():
    """The engine and the plain loop stop on training and validation losses only."""
    from mulreg.engine.loop import LOSSES
    assert "test_loss" not in LOSSES and {"train_loss", "val_loss"} <= set(LOSSES)
