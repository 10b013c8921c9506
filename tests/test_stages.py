"""The two stages of a sweep file on the tiny data set: the confirmation plan is derived by code from
the selection runs, stored with its selection table, reused, and refused when it would change;
confirmation seeds must be fresh."""

from __future__ import annotations

import json

import pytest

from mulreg.config import ConfigError
from mulreg.engine import confirm, stages
from mulreg.engine.sweep import SweepSpec

BASE = dict(n_train=12, n_test=6, val_fraction=0.25, batch_size=4, max_epochs=2, init_scale=1.0, device="cpu",
            early_stopping=None, chance_margin=0.0)
GRID = {"penalty": ["none", "sum", "mul"], "lam": {"sum": [1e-3, 1e-5], "mul": [1e-6, 1e-9]}, "seed": [1, 2],
        "label_noise": [0.2]}


def spec(store, grid=GRID, seeds=(3,)) -> SweepSpec:
    return SweepSpec(base=BASE, grid=grid, store=str(store), strategy="inline",
                     confirmation={"seeds": list(seeds), "label_noise": [0.0, 0.2]})


@pytest.fixture
def tiny(tiny_cifar_image_folder, monkeypatch):
    monkeypatch.setenv("MULREG_DATA", str(tiny_cifar_image_folder))


def test_the_confirmation_is_planned_from_the_selection_runs_stored_and_reused(tiny, tmp_path):
    done = stages.run(spec(tmp_path), progress=False)
    assert len(done.selection) == 10 and len(done.confirmation) == 6  # 3 penalties × 2 noise levels × 1 seed
    plan = json.loads((confirm.folder(tmp_path) / "plan.json").read_text())
    assert plan == done.plan and plan["seeds"] == [3] and plan["selected_on"] == "val_acc_best_val"
    selection = confirm.selection_table(tmp_path).set_index("penalty")
    for pen in ("sum", "mul"):  # the λ the stored selection table chose, used at both noise levels
        assert plan["lam"][pen] == {"0": selection.loc[pen, "lam"], "0.2": selection.loc[pen, "lam"]}
        trained = done.confirmation[done.confirmation["penalty"] == pen]
        assert set(trained["lam"]) == {selection.loc[pen, "lam"]} and set(trained["seed"]) == {3}
    assert set(done.confirmation["label_noise"]) == {0.0, 0.2}
    again = stages.run(spec(tmp_path), progress=False)  # nothing trained, the same plan read back
    assert again.plan == plan and sorted(again.confirmation["key"]) == sorted(done.confirmation["key"])


def test_a_plan_that_would_change_is_refused(tiny, tmp_path):
    stages.run(spec(tmp_path), progress=False, train_confirmation=False)
    fewer = {**GRID, "lam": {"sum": [1e-3], "mul": [1e-6]}}  # another selection stage: refused before training
    with pytest.raises(ConfigError, match="planned on .* from another selection stage .* a store of its own"):
        stages.run(spec(tmp_path, fewer), progress=False)
    rule = confirm.Confirmation(seeds=[3], label_noise=[0.0, 0.2], rule="test_acc_last")
    with pytest.raises(ConfigError, match="the confirmation is fixed once planned"):  # same runs, another rule
        stages.run(spec(tmp_path).model_copy(update={"confirmation": rule}), progress=False)


def test_confirmation_seeds_must_be_fresh(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"share seed\(s\) \[2\] with the selection"):
        stages.run(spec(tmp_path, seeds=(2, 3)), progress=False)
    assert not (confirm.folder(tmp_path) / "plan.json").exists()


def test_the_rule_that_chooses_lambda_must_not_read_the_test_set():
    with pytest.raises(ValueError, match="does not read the test set"):
        confirm.Confirmation(seeds=[3], label_noise=[0.2], rule="test_acc_best_test")
