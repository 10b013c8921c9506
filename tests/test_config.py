"""mulreg.config: validation errors name the field and the value; round trips; the run key."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from mulreg.config import ConfigError, RunConfig

INVALID = [
    # (values, field named in the message, value named in the message)
    ({"lam": -1.0, "penalty": "sum"}, "lam", "-1.0"),
    ({"lam": -1e-9, "penalty": "mul"}, "lam", "-1e-09"),
    ({"label_noise": 0.5}, "label_noise", "0.5"),
    ({"label_noise": -0.1}, "label_noise", "-0.1"),
    ({"label_noise": 0.75}, "label_noise", "0.75"),
    ({"batch_size": 0}, "batch_size", "0"),
    ({"batch_size": -16}, "batch_size", "-16"),
    ({"penalty": "l3"}, "penalty", "'l3'"),  # l1 is a kind since issue 13
    ({"penalty": "Mul"}, "penalty", "'Mul'"),
    ({"early_stopping": {"monitor": "train_acc"}}, "early_stopping.monitor", "'train_acc'"),
    ({"early_stopping": {"patience": 0}}, "early_stopping.patience", "0"),
    ({"lambda": 0.1}, "lambda", "0.1"),
    ({"seeds": [1, 2]}, "seeds", "[1, 2]"),
    ({"model": {"widht": 2.0}}, "model.widht", "2.0"),
    ({"early_stopping": {"patienc": 5}}, "early_stopping.patienc", "5"),
    ({"depth_normalization": "True"}, "depth_normalization", "'True'"),
    ({"model": {"weight_norm": "True"}}, "model.weight_norm", "'True'"),
    ({"early_stopping": {"restore_best": "False"}}, "early_stopping.restore_best", "'False'"),
    ({"depth_normalization": 1}, "depth_normalization", "1"),
    ({"lam": "5e-7", "penalty": "mul"}, "lam", "'5e-7'"),
    ({"seed": 1.5}, "seed", "1.5"),
    ({"seed": -1}, "seed", "-1"),
    ({"features_normalization": "f_mid"}, "features_normalization", "'f_mid'"),
    ({"optimizer": "rmsprop"}, "optimizer", "'rmsprop'"),
    ({"device": "tpu"}, "device", "'tpu'"),
    ({"task": "cifar100"}, "task", "'cifar100'"),
    ({"lr": 0.0}, "lr", "0.0"),
    ({"momentum": 1.0}, "momentum", "1.0"),
    ({"init_scale": 0.0}, "init_scale", "0.0"),
    ({"val_fraction": 1.0}, "val_fraction", "1.0"),
    ({"max_epochs": 0}, "max_epochs", "0"),
    ({"n_train": 1}, "n_train", "1"),
    ({"model": {"dropout": 1.0}}, "model.dropout", "1.0"),
    ({"compile": "yes"}, "compile", "'yes'"),
]


@pytest.mark.parametrize("values,field,shown", INVALID, ids=[f"{f}={v}" for _, f, v in INVALID])
def test_invalid_values_raise_config_error_naming_field_and_value(values, field, shown):
    with pytest.raises(ConfigError) as info:
        RunConfig.parse(values)
    message = str(info.value)
    assert re.search(rf"(^|\s){re.escape(field)}\b", message), message
    assert shown in message, message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("values,field,shown", INVALID[:12], ids=[f"kw-{f}={v}" for _, f, v in INVALID[:12]])
def test_keyword_construction_raises_config_error_too(values, field, shown):
    with pytest.raises(ConfigError) as info:
        RunConfig(**values)
    assert field in str(info.value) and shown in str(info.value)


def test_unknown_key_lists_allowed_fields():
    with pytest.raises(ConfigError) as info:
        RunConfig.parse({"model": {"widht": 2.0}})
    message = str(info.value)
    assert "width" in message and "weight_norm" in message
    assert "batch_size" not in message  # the nested model's fields, not the top-level ones
    with pytest.raises(ConfigError) as info:
        RunConfig.parse({"lamda": 0.1})
    assert "lam" in str(info.value) and "penalty" in str(info.value)


def test_several_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        RunConfig.parse({"batch_size": 0, "label_noise": 0.9})
    assert "batch_size" in str(info.value) and "label_noise" in str(info.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="lam"):
        RunConfig.parse({"penalty": "none", "lam": 0.1})
    with pytest.raises(ConfigError, match="val_fraction"):
        RunConfig.parse({"val_fraction": 0.0, "early_stopping": {"monitor": "val_loss"}})
    # test_acc monitoring or no early stopping needs no validation split
    RunConfig.parse({"val_fraction": 0.0, "early_stopping": {"monitor": "test_acc"}})
    RunConfig.parse({"val_fraction": 0.0, "early_stopping": None})


def test_replace_validates():
    cfg = RunConfig(penalty="mul", lam=5e-7)
    with pytest.raises(ConfigError, match="label_noise"):
        cfg.replace(label_noise=0.6)
    changed = cfg.replace(early_stopping={"patience": 5})
    assert changed.early_stopping.patience == 5
    assert changed.early_stopping.monitor == cfg.early_stopping.monitor  # nested merge keeps the rest
    assert cfg.early_stopping.patience == 200  # the original is unchanged (frozen)


def test_frozen():
    cfg = RunConfig()
    with pytest.raises(Exception):
        cfg.lam = 1.0


def test_defaults_follow_the_released_scripts():
    cfg = RunConfig()
    assert (cfg.task, cfg.penalty, cfg.lam, cfg.optimizer, cfg.lr, cfg.momentum, cfg.batch_size) == (
        "binary", "none", 0.0, "sgd", 0.03, 0.0, 16)
    assert cfg.max_epochs == 2000 and cfg.init_scale == 0.2 and cfg.val_fraction == 0.2
    es = cfg.early_stopping
    assert (es.monitor, es.patience, es.min_delta, es.restore_best) == ("val_loss", 200, 1e-4, True)
    assert cfg.num_classes == 1 and RunConfig(task="multiclass").num_classes == 10


VALID = [
    {},
    {"task": "multiclass", "penalty": "sum", "lam": 5e-9, "seed": 3, "label_noise": 0.2},
    {"penalty": "mul_log", "lam": 1e-3, "depth_normalization": True, "features_normalization": "f_in",
     "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "early_stopping": None, "val_fraction": 0.0,
     "n_train": 256, "n_test": 100, "model": {"bias": True, "batch_norm": True, "weight_norm": True,
                                               "dropout": 0.1, "width": 0.5}, "device": "cpu"},
    {"penalty": "mul", "lam": 5e-7, "early_stopping": {"monitor": "test_acc", "patience": 3,
                                                        "min_delta": 0.0, "restore_best": False}},
]


@pytest.mark.parametrize("values", VALID)
def test_valid_configs_round_trip(values):
    cfg = RunConfig.parse(values)
    dumped = cfg.model_dump()
    for k, v in values.items():  # every given value is kept (nested ones field by field)
        assert ({kk: dumped[k][kk] for kk in v} if isinstance(v, dict) else dumped[k]) == v
    assert RunConfig.parse(cfg.model_dump()) == cfg
    assert RunConfig.parse(json.loads(json.dumps(cfg.model_dump()))) == cfg
    assert RunConfig.parse(yaml.safe_load(yaml.safe_dump(cfg.model_dump()))) == cfg
    assert RunConfig(**cfg.model_dump()) == cfg
    assert RunConfig.parse(cfg.model_dump()).key() == cfg.key()


def test_int_accepted_for_float_fields():
    assert RunConfig.parse({"penalty": "sum", "lam": 1}).lam == 1.0


# ---------------------------------------------------------------- key
def test_key_stable_and_well_formed():
    a = RunConfig.parse(VALID[1])
    b = RunConfig.parse(dict(reversed(list(VALID[1].items()))))  # key order does not matter
    assert a.key() == b.key() == a.key()
    assert re.fullmatch(r"[0-9a-f]{16}", a.key())


def test_key_stable_across_processes():
    """No dependence on Python's per-process hash randomisation."""
    code = ("from mulreg.config import RunConfig; "
            f"print(RunConfig.parse({VALID[3]!r}).key())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert out.stdout.strip() == RunConfig.parse(VALID[3]).key()


@pytest.mark.parametrize("change", [
    {"lam": 5e-6}, {"seed": 2}, {"label_noise": 0.1}, {"init_scale": 0.4}, {"penalty": "sum"},
    {"lr": 0.01}, {"max_epochs": 10}, {"early_stopping": {"patience": 10}},
    {"early_stopping": {"restore_best": False}}, {"model": {"width": 0.5}}, {"model": {"bias": True}},
    {"features_normalization": "f_out"}, {"depth_normalization": True}, {"early_stopping": None},
    {"n_train": 100}, {"batch_size": 32},
])
def test_key_changes_with_fields(change):
    base = RunConfig(penalty="mul", lam=5e-7)
    assert base.replace(**change).key() != base.key()


def test_key_ignores_device_and_compile():
    base = RunConfig(penalty="mul", lam=5e-7)
    keys = {base.replace(device=d, compile=c).key() for d in ("auto", "cpu", "cuda", "mps") for c in (False, True)}
    assert keys == {base.key()}


def test_key_changes_with_classes():
    base = RunConfig(penalty="mul", lam=5e-7)
    assert base.replace(classes=("dog", "horse")).key() != base.key()


def test_classes_at_their_default_leave_keys_of_older_stores_unchanged():
    """A store written before `classes`, `augment`, `effective_lr`, `deterministic`, `compile_mode`,
    `memory_format`, `epochs_after_escape`, `train_past_stop` and `flush_denormal` existed named runs by the hash
    of every other field."""
    import hashlib
    import json

    config = RunConfig(penalty="mul", lam=5e-7, label_noise=0.2)
    before = config.model_dump(exclude={"device", "compile", "classes", "augment", "deterministic", "effective_lr",
                                        "compile_mode", "memory_format", "epochs_after_escape",
                                        "train_past_stop", "flush_denormal"})
    old_key = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert config.key() == old_key == config.replace(classes=["cat", "deer"]).key()
    assert config.key() == config.replace(classes=[3, 4]).key()


# ---------------------------------------------------------------- classes
@pytest.mark.parametrize("value, expected", [
    ((3, 4), (3, 4)), (["cat", "deer"], (3, 4)), (["dog", "horse"], (5, 7)), (["Ship", "0"], (8, 0)),
])
def test_classes_by_index_or_name(value, expected):
    assert RunConfig(classes=value).classes == expected


@pytest.mark.parametrize("value, shown", [
    (["cat", "cat"], "must differ"), (["cat", "unicorn"], "unknown class 'unicorn'"),
    ([3, 10], "out of range 0-9"), ([3], "two CIFAR-10 classes"), ("cat", "two CIFAR-10 classes"),
    ([3, 4, 5], "two CIFAR-10 classes"), ([3, 4.5], "not a CIFAR-10 class"),
])
def test_bad_classes_name_the_field(value, shown):
    with pytest.raises(ConfigError) as err:
        RunConfig(classes=value)
    message = str(err.value)
    assert "classes" in message and shown in message and "\n" not in message


def test_classes_are_for_the_binary_task():
    with pytest.raises(ConfigError, match="classes applies to the binary task only"):
        RunConfig(task="multiclass", classes=("dog", "horse"))


@pytest.mark.parametrize("pair, shown", [
    (["dog", "dog"], "must differ"), (["dog", "unicorn"], "unknown class"), (["3", "10"], "out of range"),
])
def test_train_command_rejects_a_bad_pair_in_one_line(pair, shown, tmp_path):
    out = subprocess.run([sys.executable, "-m", "mulreg", "train", "--classes", *pair, "--epochs", "1",
                          "--out", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "classes" in out.stderr and shown in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("values, field", [
    ({"lam": float("inf"), "penalty": "mul"}, "lam"),
    ({"lam": float("nan"), "penalty": "sum"}, "lam"),
    ({"lr": float("inf")}, "lr"),
    ({"init_scale": float("inf")}, "init_scale"),
    ({"model": {"width": float("inf")}}, "model.width"),
    ({"early_stopping": {"min_delta": float("inf")}}, "early_stopping.min_delta"),
])
def test_a_number_that_is_not_finite_is_refused_naming_the_field(values, field):
    """Issue 28: `lam: .inf` was accepted, stored as null, listed as λ 0 and crashed the sweep."""
    with pytest.raises(ConfigError, match=rf"^invalid run configuration: {re.escape(field)}: got .*finite number"):
        RunConfig.parse(values)
