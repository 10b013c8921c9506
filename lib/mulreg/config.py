"""One typed run configuration, validated once at the edge.

`RunConfig` holds everything that determines a run's numbers; its `key()` is a stable hash of the
fully resolved config and names the run in the store. Build it from keyword arguments or a dict
(`RunConfig.parse(d)`): unknown keys, wrong types and out-of-range values raise one `ConfigError`
naming the field, the value given and what is allowed, before any data is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mulreg.protocols import Penalty

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: data/, params/, results/, notebooks/

PenaltyKind = Literal[tuple(p.value for p in Penalty)]  # validated against `mulreg.protocols.Penalty`
Monitor = Literal["val_acc", "val_loss", "test_acc"]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PAPER_CLASSES = (3, 4)  # cat → −1, deer → +1 (paper, Sec. 4)
# fields added after stores existed: left out of the run key at their default, so old keys stay valid
KEY_OMITS_DEFAULT = ("classes", "augment", "effective_lr", "epochs_after_escape", "train_past_stop", "flush_denormal")
# where and how a run is computed: not part of its key
HOW = ("device", "compile", "compile_mode", "deterministic", "memory_format")


class MulregError(Exception):
    """An error the project anticipates (bad input, missing data, unavailable device): the command
    line prints its message, without a traceback, and exits with code 2."""


class ConfigError(MulregError, ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


class _Strict(BaseModel):
    # allow_inf_nan: every float is a finite number (`lam: .inf` is refused here, naming the field)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True, allow_inf_nan=False)


class EarlyStopping(_Strict):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    monitor: Monitor = "val_loss"
    patience: int = Field(200, ge=1)
    min_delta: float = Field(1e-4, ge=0)
    restore_best: bool = True


class ModelOptions(_Strict):
    """Architecture switches that the authors' code also has."""

    bias: bool = False  # conv biases (the fully connected layers of BinaryCNN always have one)
    batch_norm: bool = False
    weight_norm: bool = False  # W = g · V/‖V‖_F per layer; the penalties then act on g
    dropout: float = Field(0.0, ge=0, lt=1)
    width: float = Field(1.0, gt=0)  # channel multiplier (1.0 = the paper's network)


class RunConfig(_Strict):
    """Everything that determines one training run's numbers."""

    task: Literal["binary", "multiclass"] = "binary"
    classes: tuple[int, int] = PAPER_CLASSES  # binary task: CIFAR-10 classes → (−1, +1); names accepted
    penalty: PenaltyKind = Penalty.NONE.value
    lam: float = Field(0.0, ge=0)  # λ in L = L_data + λ·R(W)
    depth_normalization: bool = False
    features_normalization: Literal["f_out", "f_in"] | None = None
    init_scale: float = Field(0.2, gt=0)  # s: Kaiming init, then every parameter × s
    seed: int = Field(1, ge=0)
    label_noise: float = Field(0.0, ge=0, lt=0.5)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.03, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(16, ge=1)
    max_epochs: int = Field(2000, ge=1)
    # stop this many epochs after the run leaves chance level (`mulreg.core.epochs.escape_epoch`), at most
    # `max_epochs`: a horizon counted from the end of the chance plateau (docs/PREREGISTRATION-2.md)
    epochs_after_escape: int | None = Field(None, ge=1)
    early_stopping: EarlyStopping | None = EarlyStopping()
    # when early stopping fires, keep the model there as the one reported and train on to `max_epochs`,
    # recording every epoch: the model at the stop and what would have followed it (docs/PREREGISTRATION-3.md)
    train_past_stop: bool = False
    val_fraction: float = Field(0.2, ge=0, lt=1)
    n_train: int | None = Field(None, ge=2)  # cap on the training pool (before the split)
    n_test: int | None = Field(None, ge=1)
    model: ModelOptions = ModelOptions()
    chance_margin: float = Field(0.05, ge=0, lt=0.5)  # chance_level if best train acc ≤ chance + this
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = False  # torch.compile the training step (docs/PERFORMANCE.md)
    # torch.compile's mode: "reduce-overhead" replays CUDA graphs on a GPU (a stack keeps one shape, so one graph)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    deterministic: bool = False  # deterministic kernels on CUDA, at some speed (`devices.backend_settings`)
    # on a CPU, compute subnormal floats as zero: the multiplicative penalty decays unused weights below
    # 1.2e-38, where x86 arithmetic is slow (docs/PERFORMANCE.md, "Subnormal weights"); changes the numbers
    flush_denormal: bool = False
    # images' memory layout: "auto" is channels-last for one run and NCHW for a stack under vmap
    # (docs/PERFORMANCE.md, "Memory layout"); the others force one layout for both
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    augment: bool = False  # random 4-pixel-padded crops and horizontal flips of training images (`data.augment`)
    effective_lr: bool = False  # record eff_lr_<layer> every epoch; costs time per step (docs/PERFORMANCE.md)

    def __init__(self, **values: Any):
        """RunConfig(**values) raises ConfigError too, like RunConfig.parse."""
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise ConfigError(describe(err)) from None

    @field_validator("classes", mode="before")
    @classmethod
    def _class_indices(cls, value: Any) -> tuple[int, ...]:
        """Two distinct CIFAR-10 classes, by index (0-9) or name ('cat', 'deer')."""
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError("give two CIFAR-10 classes, e.g. [3, 4] or [cat, deer]")
        indices = tuple(_class_index(v) for v in value)
        if indices[0] == indices[1]:
            raise ValueError(f"the two classes must differ (both are {CIFAR10_CLASSES[indices[0]]!r})")
        return indices

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.task != "binary" and self.classes != PAPER_CLASSES:
            raise ValueError(f"classes applies to the binary task only (task={self.task!r})")
        if self.penalty == Penalty.NONE and self.lam != 0:
            raise ValueError(f"lam must be 0 when penalty is 'none' (got lam={self.lam})")
        if self.train_past_stop and self.early_stopping is None:
            raise ValueError("train_past_stop needs early_stopping: it trains on past the epoch early stopping fires")
        monitor = self.early_stopping.monitor if self.early_stopping else None
        if monitor in ("val_acc", "val_loss") and self.val_fraction == 0:
            raise ValueError(f"early_stopping.monitor={monitor!r} needs val_fraction > 0")
        return self

    @classmethod
    def parse(cls, values: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
        """Validate a plain dict (from YAML, JSON or keyword arguments) into a RunConfig."""
        return cls(**{**(values or {}), **overrides})

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some fields changed (nested ones as dicts)."""
        return RunConfig.parse(deep_merge(self.model_dump(), changes))

    def key(self) -> str:
        """Stable 16-hex-digit hash of the resolved config; the fields of `HOW` (device, compilation,
        determinism, memory layout) are left out: they say where and how, not what."""
        values = self.model_dump(exclude=set(HOW))
        for name in KEY_OMITS_DEFAULT:
            if values[name] == RunConfig.model_fields[name].default:
                del values[name]
        blob = json.dumps(values, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def num_classes(self) -> int:
        return 1 if self.task == "binary" else 10


def _class_index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a CIFAR-10 class index or name")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value < len(CIFAR10_CLASSES):
            raise ValueError(f"class index {value} is out of range 0-9 ({', '.join(CIFAR10_CLASSES)})")
        return value
    if value.strip().lower() not in CIFAR10_CLASSES:
        raise ValueError(f"unknown class {value!r}; CIFAR-10 has {', '.join(CIFAR10_CLASSES)}")
    return CIFAR10_CLASSES.index(value.strip().lower())


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads 5e-7 (no dot) as a string; read it as the float every researcher means."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


YAML_NODES = 100_000  # nodes a YAML document may hold once its aliases are expanded (an alias bomb holds billions)


def load_yaml(path: str | os.PathLike) -> Any:
    """A YAML file as Python data, with 5e-7 read as a float; a missing file, one that is not a regular
    file (a folder, a FIFO: reading one would wait for a writer), invalid YAML or a document whose
    aliases expand beyond `YAML_NODES` raises ConfigError naming the file (and line and column)."""
    if Path(path).exists() and not Path(path).is_file():
        raise ConfigError(f"{path}: not a regular file (a folder, FIFO or device); give a YAML file")
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as Python data (`load_yaml`'s reading and bounds); errors name `where`."""
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        size = _expanded_size(node, {})
        if size > YAML_NODES:
            raise ConfigError(f"{where}: its aliases expand to {size:,} YAML nodes, more than {YAML_NODES:,}; "
                              "write the values out instead of nesting aliases")
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}{at}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()


def _expanded_size(node, seen: dict[int, int]) -> int:
    """Nodes in `node` with every alias expanded, each shared node counted once per use (memoised,
    so an alias bomb is measured without being expanded)."""
    if node is None:
        return 0
    if id(node) not in seen:
        seen[id(node)] = 1  # a recursive alias counts once
        children = node.value if isinstance(node.value, list) else []
        pairs = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
        seen[id(node)] = 1 + sum(_expanded_size(child, seen) for child in pairs)
    return seen[id(node)]


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `changes`, nested dicts merged rather than replaced."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted names to nested dicts: {'early_stopping.patience': 5} → {'early_stopping': {'patience': 5}}."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def describe(err: ValidationError) -> str:
    """One readable line per problem: field, value given, what is allowed."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "config"
        allowed = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = "unknown field; allowed fields: " + ", ".join(_allowed_fields(e["loc"]))
        lines.append(f"{field}: got {e.get('input')!r}; {allowed.removeprefix('Value error, ')}")
    if len(lines) == 1:
        return f"invalid run configuration: {lines[0]}"
    return "invalid run configuration:\n  " + "\n  ".join(lines)


def _allowed_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        sub = model.model_fields[part].annotation
        model = next((a for a in getattr(sub, "__args__", (sub,)) if isinstance(a, type)), sub)
    return sorted(model.model_fields)
