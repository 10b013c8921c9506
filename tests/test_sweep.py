"""Grid expansion, the paper's selection rule, and sweeps that skip what the store holds."""

import pandas as pd
import pytest

from mulreg.config import ConfigError
from mulreg.engine.selection import failed
from mulreg.engine.store import Store
from mulreg.engine.sweep import SweepSpec, expand, plan_groups, run

LAMS = [5e-1, 5e-3, 5e-5]


def test_grid_expansion_counts_baseline_once_per_other_axes():
    configs = expand({"max_epochs": 3}, {"penalty": ["none", "sum", "mul"], "lam": LAMS,
                                         "seed": [1, 2, 3], "label_noise": [0.0, 0.1, 0.2]})
    by_penalty = pd.Series([c.penalty for c in configs]).value_counts()
    assert by_penalty["sum"] == by_penalty["mul"] == 3 * 3 * 3
    assert by_penalty["none"] == 3 * 3  # once per (seed, noise), not once per λ
    assert all(c.lam == 0 for c in configs if c.penalty == "none")
    assert len({c.key() for c in configs}) == len(configs)


def test_grid_lam_per_penalty_and_dotted_fields():
    configs = expand({}, {"penalty": ["sum", "mul"], "lam": {"sum": [1e-3], "mul": [1e-7, 1e-9]},
                          "early_stopping.patience": [5, 7]})
    assert sorted((c.penalty, c.lam) for c in configs if c.early_stopping.patience == 5) == [
        ("mul", 1e-9), ("mul", 1e-7), ("sum", 1e-3)]
    assert {c.early_stopping.patience for c in configs} == {5, 7}


def test_grid_keeps_base_lambda_without_lam_axis():
    configs = expand({"penalty": "mul", "lam": 5e-7}, {"seed": [1, 2]})
    assert [c.lam for c in configs] == [5e-7, 5e-7]


def test_bad_grid_value_names_the_field():
    with pytest.raises(ConfigError, match="label_noise"):
        expand({}, {"label_noise": [0.7]})


def test_sweep_file_rejects_unknown_keys(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("base: {}\ngrid: {}\nexecuter: ray\n")
    with pytest.raises(ConfigError, match="executer"):
        SweepSpec.from_yaml(f)


def write(path, text: str):
    path.write_text(text)
    return path


def test_a_sweep_file_extends_another_and_unites_its_arms(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "parent.yaml", "store: results/parent\nbase: {max_epochs: 3, lr: 0.1}\n"
          "grid: {penalty: [none, mul], lam: {mul: [1.0e-7]}, seed: [1, 2]}\n")
    child = write(tmp_path / "sub" / "child.yaml", "extends: ../parent.yaml\nbase: {lr: 0.05}\n"
                  "arms:\n  - {}\n  - {penalty: [l1], lam: {l1: [1.0e-6]}}\n  - {penalty: [none], augment: [true]}\n"
                  "  - {model.batch_norm: [true]}\n")
    spec = SweepSpec.from_yaml(child)
    assert spec.store == str(SweepSpec(store="results/parent").store)  # inherited
    configs = spec.configs()
    assert {c.max_epochs for c in configs} == {3} and {c.lr for c in configs} == {0.05}  # base merged
    kinds = sorted((c.penalty, c.augment, c.model.batch_norm) for c in configs if c.seed == 1)
    assert kinds == [("l1", False, False), ("mul", False, False), ("mul", False, True), ("none", False, False),
                     ("none", False, True), ("none", True, False)]
    assert len(configs) == 2 * len(kinds) == len({c.key() for c in configs})  # every arm × both seeds, once


def test_notebook_06s_sweep_holds_every_run_of_01_04_in_the_same_store():
    from mulreg.config import PROJECT_ROOT

    quick = PROJECT_ROOT / "params" / "quick"
    shared = {c.key() for c in SweepSpec.from_yaml(quick / "binary_sweep.yaml").configs()}
    extended = SweepSpec.from_yaml(quick / "regularisers_sweep.yaml")
    assert shared < {c.key() for c in extended.configs()}
    assert extended.store == SweepSpec.from_yaml(quick / "binary_sweep.yaml").store


def test_a_seeds_override_reaches_every_arm(tmp_path):
    from mulreg.results.analysis import load_sweep

    f = write(tmp_path / "s.yaml", "grid: {seed: [1, 2, 3]}\narms:\n  - {}\n  - {seed: [4], augment: [true]}\n")
    assert sorted(c.seed for c in load_sweep(str(f), seeds=[2]).configs()) == [2, 2]


@pytest.mark.parametrize("text, message", [
    ("extends: b.yaml\n", "b.yaml: no such file"),
    ("extends: a.yaml\n", "a cycle"),
    ("- 1\n- 2\n", "a sweep file is a mapping"),
    ("arms: [{}, {lr: [-1.0]}]\n", "lr"),
])
def test_bad_extends_and_arms_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        SweepSpec.from_yaml(write(tmp_path / "a.yaml", text)).configs()


def test_groups_respect_shapes_and_size():
    configs = expand({"device": "cpu"}, {"seed": [1, 2, 3, 4, 5], "batch_size": [8, 16]})
    groups = plan_groups(configs, group_size=2)
    assert sorted(len(g) for g in groups) == [1, 1, 2, 2, 2, 2]
    assert all(len({c.batch_size for c in g}) == 1 for g in groups)
    bn = expand({"device": "cpu", "model": {"batch_norm": True}}, {"seed": [1, 2, 3]})
    assert [len(g) for g in plan_groups(bn, group_size=8)] == [1, 1, 1]


def _tiny_spec(root, store, **grid):
    base = dict(n_train=12, n_test=6, val_fraction=0.25, batch_size=4, max_epochs=2, init_scale=1.0,
                device="cpu", early_stopping={"patience": 5})
    return SweepSpec(base=base, grid=grid or {"seed": [1, 2]}, store=str(store), strategy="inline")


def test_sweep_skips_complete_runs(tiny_cifar_image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MULREG_DATA", str(tiny_cifar_image_folder))
    spec = _tiny_spec(tiny_cifar_image_folder, tmp_path / "store")
    first = run(spec, progress=False)
    assert len(first) == 2
    store = Store(tmp_path / "store")
    mtimes = {k: (store.run_dir(k) / "metrics.json").stat().st_mtime_ns for k in first["key"]}
    bigger = _tiny_spec(tiny_cifar_image_folder, tmp_path / "store", seed=[1, 2, 3])
    second = run(bigger, progress=False)
    assert len(second) == 3
    assert {k: (store.run_dir(k) / "metrics.json").stat().st_mtime_ns for k in first["key"]} == mtimes


def test_sweep_with_diverging_runs_completes_and_excludes_them(tiny_cifar_image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MULREG_DATA", str(tiny_cifar_image_folder))
    spec = _tiny_spec(tiny_cifar_image_folder, tmp_path / "store", penalty=["mul"], lam=[1e30, 1e-9], seed=[1])
    table = run(spec, progress=False)
    reasons = dict(zip(table["lam"], table["stop_reason"]))
    assert reasons[1e30] == "diverged" and reasons[1e-9] != "diverged"
    assert list(failed(table, "test_acc")) == [lam == 1e30 for lam in table["lam"]]  # left out of every mean


def test_a_sweep_with_stacks_trains_each_shape_in_one_group_whose_slots_are_refilled(tiny_cifar_image_folder,
                                                                                     tmp_path, monkeypatch):
    """With `group_size` (runs per stack) the sweep hands all runs of a shape to one `train_group`,
    which keeps that many slots busy as runs stop at different epochs; every run is stored."""
    import mulreg.engine.sweep as sweep_module

    monkeypatch.setenv("MULREG_DATA", str(tiny_cifar_image_folder))
    calls = []
    real = sweep_module.train_group
    monkeypatch.setattr(sweep_module, "train_group",
                        lambda group, **kw: calls.append((len(group), kw["slots"])) or real(group, **kw))
    spec = _tiny_spec(tiny_cifar_image_folder, tmp_path / "store", seed=[1, 2, 3], max_epochs=[1, 2])
    table = run(spec.model_copy(update={"group_size": 2}), progress=False)
    assert calls == [(6, 2)]
    assert len(table) == 6 and sorted(table["epochs"]) == [1, 1, 1, 2, 2, 2]
