"""Issue 28, "nothing partial": a stage is read only when every run of it is stored; stage files that
are damaged or removed are rebuilt from the runs they derive from or refused in one line; another
class pair in the same store is refused before training, losing nothing; a notebook parameter that
names a noise level its sweep does not report is refused before any kernel starts.

Checked against the code before these changes (commit 3280ed7): the two claimed-run tests exited 0
("1 runs stored") and the truncated plan ended in a traceback."""

from __future__ import annotations

import json

import pytest

from mulreg.engine import confirm
from mulreg.engine.store import Store
from mulreg.engine.sweep import IncompleteStage, SweepSpec
from mulreg.results import analysis
from test_cli_errors import mulreg, tiny_env

BASE = ("{device: cpu, n_train: 8, n_test: 4, val_fraction: 0.25, batch_size: 4, max_epochs: 2, "
        "early_stopping: null, chance_margin: 0.0, init_scale: 1.0}")
GRID = "{penalty: [none, mul], lam: {mul: [1.0e-6]}, seed: [1], label_noise: [0.2]}"
CONFIRMATION = "confirmation: {seeds: [3], label_noise: [0.2]}\n"


def write_sweep(tmp_path, confirmation: bool = True, base: str = BASE, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(f"store: {tmp_path / 'store'}\nstrategy: inline\nbase: {base}\ngrid: {GRID}\n"
                    + (CONFIRMATION if confirmation else ""))
    return path


def assert_one_message(out, *shown: str) -> None:
    """Exit 2, no traceback, and one last line (after the sweep's progress bars) naming everything in `shown`."""
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(text in last for text in shown), out.stderr


def run_folders(store) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "runs").iterdir() if not p.name.startswith(".")}


def test_a_sweep_with_a_run_another_process_holds_names_it_and_fails(tmp_path, tiny_cifar_image_folder):
    env = tiny_env(tmp_path, tiny_cifar_image_folder)
    path = write_sweep(tmp_path, confirmation=False)
    spec = SweepSpec.from_yaml(path)
    held = spec.configs()[-1]
    with Store(spec.store).claim([held.key()]):  # another process is training this run now
        out = mulreg("sweep", str(path), env=env)
    assert_one_message(out, "1 of the sweep's 2 runs are not stored", held.key(), "mul λ=1e-06",
                       "Another process is training 1 of them now")
    stored = run_folders(tmp_path / "store")
    assert len(stored) == 1 and held.key() not in stored  # the free run is kept
    again = mulreg("sweep", str(path), env=env)
    assert again.returncode == 0, again.stderr
    after = run_folders(tmp_path / "store")
    assert len(after) == 2 and all(after[k] == t for k, t in stored.items())  # nothing trained twice


def test_a_confirmation_stage_with_a_run_held_is_never_read(tmp_path, tiny_cifar_image_folder, monkeypatch):
    monkeypatch.setenv("MULREG_DATA", str(tiny_cifar_image_folder))
    monkeypatch.setenv("MULREG_CACHE", str(tmp_path / "c"))
    env = tiny_env(tmp_path, tiny_cifar_image_folder)
    path = write_sweep(tmp_path)
    assert mulreg("sweep", str(path), "--selection-only", env=env).returncode == 0
    spec = SweepSpec.from_yaml(path)
    plan = confirm.load(spec.store)
    held = spec.model_copy(update={"grid": {}, "arms": confirm.arms(plan), "confirmation": None}).configs()[-1]
    with Store(spec.store).claim([held.key()]):
        out = mulreg("sweep", str(path), env=env)
        with pytest.raises(IncompleteStage, match=held.key()):
            analysis.run_stages(spec, progress=False)  # the notebooks' reader
    assert_one_message(out, "runs are not stored", held.key(), "Another process is training 1 of them now")


def trained_store(tmp_path, tiny_cifar_image_folder):
    env = tiny_env(tmp_path, tiny_cifar_image_folder)
    path = write_sweep(tmp_path)
    first = mulreg("sweep", str(path), env=env)
    assert first.returncode == 0, first.stderr
    return path, env, confirm.folder(tmp_path / "store")


@pytest.mark.parametrize("damage", ["truncated", "incomplete"])
def test_a_damaged_plan_is_refused_by_readers_and_derived_again_by_the_sweep(tmp_path, tiny_cifar_image_folder,
                                                                             damage):
    path, env, stage = trained_store(tmp_path, tiny_cifar_image_folder)
    plan = (stage / "plan.json").read_text()
    if damage == "truncated":
        (stage / "plan.json").write_text(plan[: len(plan) // 2])
    else:
        (stage / "plan.json").write_text(json.dumps({k: v for k, v in json.loads(plan).items() if k != "lam"}))
    with pytest.raises(confirm.DamagedPlan, match="plan.json .*derives it again"):
        analysis.stored_stages(SweepSpec.from_yaml(path))  # the read-only reader of notebooks 07-08
    assert not list(stage.glob("plan.json.damaged-*"))
    before = run_folders(tmp_path / "store")
    out = mulreg("sweep", str(path), env=env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "set aside as plan.json.damaged-" in out.stdout
    assert json.loads((stage / "plan.json").read_text())["lam"] == json.loads(plan)["lam"]
    assert run_folders(tmp_path / "store") == before and list(stage.glob("plan.json.damaged-*"))


@pytest.mark.parametrize("damage", ["cut off", "cut at a line", "removed"])
def test_a_damaged_selection_table_is_refused_and_written_again(tmp_path, tiny_cifar_image_folder, damage):
    path, env, stage = trained_store(tmp_path, tiny_cifar_image_folder)
    table = stage / "selection.csv"
    text = table.read_text()
    if damage == "removed":
        table.unlink()
    else:
        lines = text.splitlines(keepends=True)
        table.write_text("".join(lines[:-1]) + (lines[-1][:5] if damage == "cut off" else ""))
    with pytest.raises(confirm.ConfigError, match="selection.csv"):
        confirm.selection_table(tmp_path / "store")
    out = mulreg("sweep", str(path), env=env)
    assert out.returncode == 0, out.stderr
    said = "missing" if damage == "removed" else "damaged"
    assert f"selection.csv: {said}; written again" in out.stdout and table.read_text() == text
    assert len(confirm.selection_table(tmp_path / "store")) == 2


def test_another_class_pair_in_the_same_store_is_refused_before_training(tmp_path, tiny_cifar_image_folder):
    path, env, stage = trained_store(tmp_path, tiny_cifar_image_folder)
    plan = (stage / "plan.json").read_text()
    before = run_folders(tmp_path / "store")
    other = write_sweep(tmp_path, base=BASE.replace("{", "{classes: [dog, horse], ", 1), name="dogs.yaml")
    out = mulreg("sweep", str(other), env=env)
    assert_one_message(out, "plan.json", "from another selection stage", "a store of its own", "--store")
    assert (stage / "plan.json").read_text() == plan and run_folders(tmp_path / "store") == before
    elsewhere = mulreg("sweep", str(other), "--store", str(tmp_path / "dogs"), env=env)
    assert elsewhere.returncode == 0, elsewhere.stderr


@pytest.mark.parametrize("value", ["0.9", "0.3"])
def test_a_noise_level_the_sweep_does_not_report_is_refused_before_any_notebook_starts(value):
    out = mulreg("figures", "--profile", "smoke", "--nb", "03", "-p", "table_noise", value)
    assert_one_message(out, "table_noise", "reports label noise", "03_rank_table")
    assert "[1/" not in out.stdout and "Estimate" not in out.stdout


def test_the_notebooks_readers_read_an_archived_store_and_write_nothing_in_it(tmp_path, tiny_cifar_image_folder):
    """An archive holds runs/ and stages/ only; the readers used to create its checkpoints/ and claims/."""
    import shutil

    path, _, _ = trained_store(tmp_path, tiny_cifar_image_folder)
    archive = tmp_path / "archive"
    shutil.copytree(tmp_path / "store", archive, ignore=shutil.ignore_patterns("checkpoints", "claims"))
    spec = SweepSpec.from_yaml(path).model_copy(update={"store": str(archive)})
    done, missing = analysis.stored_stages(spec)
    assert missing == [] and len(done.selection) == 2 and len(done.confirmation) >= 1
    analysis.histories(str(archive), done.confirmation)
    assert sorted(p.name for p in archive.iterdir()) == ["runs", "stages"]
