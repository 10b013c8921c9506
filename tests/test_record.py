"""Issue 37, the results of record: a sweep writes each stage into the record as it completes; the
notebooks' readers give the same numbers from the record as from the store; a damaged record is
refused naming the file; `mulreg verify` finds a store equal to the record identical, names a run
whose history was edited, and retrains a seeded draw of recorded runs. Every test here fails on
c51d60c (no record, no `--record`, no `verify`)."""

from __future__ import annotations

import shutil
import signal
import tempfile

import numpy as np
import pandas as pd
import pytest

from mulreg.engine.sweep import SweepSpec
from mulreg.results import analysis, record
from test_cli_errors import mulreg, tiny_env

BASE = ("{device: cpu, n_train: 12, n_test: 6, val_fraction: 0.25, batch_size: 4, max_epochs: 3, "
        "early_stopping: null, chance_margin: 0.0, init_scale: 1.0}")
GRID = ("{penalty: [none, sum, mul], lam: {sum: [1.0e-4, 1.0e-3], mul: [1.0e-12, 1.0e-10]}, seed: [1], "
        "label_noise: [0.2]}")
CONFIRMATION = "confirmation: {seeds: [3, 4], label_noise: [0.0, 0.2]}\n"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_cifar_image_folder_module):
    """A tiny sweep trained with `--record` into a record of its own: (sweep file, env, record root)."""
    tmp = tmp_path_factory.mktemp("recorded")
    data = tiny_cifar_image_folder_module
    sweep = tmp / "sweep.yaml"
    sweep.write_text(f"store: {tmp / 'store'}\nstrategy: inline\nbase: {BASE}\ngrid: {GRID}\n{CONFIRMATION}")
    env = tiny_env(tmp, data) | {"MULREG_RECORD": str(tmp / "record")}
    out = mulreg("sweep", str(sweep), "--record", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("recorded the ") == 2, out.stdout  # each stage as it completed
    return sweep, env, tmp / "record"


@pytest.fixture
def copy_of(recorded, tmp_path):
    """A copy of the trained store and its record, to damage: (sweep file, env, record root)."""
    sweep, env, root = recorded
    shutil.copytree(root, tmp_path / "record")
    shutil.copytree(root.parent / "store", tmp_path / "store")
    text = sweep.read_text().replace(str(root.parent / "store"), str(tmp_path / "store"))
    (tmp_path / "sweep.yaml").write_text(text)
    return tmp_path / "sweep.yaml", env | {"MULREG_RECORD": str(tmp_path / "record")}, tmp_path / "record"


def test_the_record_holds_both_stages_with_a_manifest_of_hashes(recorded):
    sweep, _, root = recorded
    rec = record.Record(root)
    assert rec.has("store", "selection") and rec.has("store", "confirmation")
    planned = record.stage_keys(SweepSpec.from_yaml(sweep), "confirmation", rec.plan("store"))
    assert len(rec.runs("store", "selection")) == 5
    assert sorted(rec.runs("store", "confirmation")["key"]) == sorted(planned)
    assert rec.plan("store")["seeds"] == [3, 4]
    files = rec.manifest["files"]
    assert {f"store/{stage}/{t}.parquet" for stage in record.STAGES for t in record.TABLES} | {
        "store/selection/plan.json", "store/selection/selection.csv"} == set(files)
    assert rec.size()["store"] == sum(e["bytes"] for e in files.values())
    assert not list(root.rglob("*.pt"))  # no weights


def test_reading_the_record_gives_what_reading_the_store_gives(recorded, monkeypatch):
    sweep, env, root = recorded
    monkeypatch.setenv("MULREG_DATA", env["MULREG_DATA"])
    monkeypatch.setenv("MULREG_RECORD", str(root))
    spec = SweepSpec.from_yaml(sweep)
    local, missing = analysis.stored_stages(spec, patience=2)
    assert not missing and set(local.confirmation[record.SOURCE]) == {record.STORE}
    gone = spec.model_copy(update={"store": str(root.parent / "fresh-clone" / "store")})  # same name, no runs
    from_record, missing = analysis.stored_stages(gone, patience=2)
    assert not missing and set(from_record.confirmation[record.SOURCE]) == {record.RECORD}
    runs_a, runs_b = local.confirmation, from_record.confirmation
    rules = ["test_acc", "test_acc_best_val", "test_acc_authors", "norm_product", "rank_conv1"]
    pd.testing.assert_frame_equal(runs_a[["key", *rules]].reset_index(drop=True),
                                  runs_b[["key", *rules]].reset_index(drop=True))
    pd.testing.assert_frame_equal(analysis.histories(spec.store, runs_a), analysis.histories(gone.store, runs_b))
    for kind in analysis.MARGIN_KINDS:
        a, b = analysis.margins(spec.store, runs_a, kind), analysis.margins(gone.store, runs_b, kind)
        np.testing.assert_allclose(a["margin"], b["margin"], rtol=1e-6)
    a, b = analysis.test_correct(spec.store, runs_a), analysis.test_correct(gone.store, runs_b)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(analysis.spectra(spec.store, runs_a), analysis.spectra(gone.store, runs_b),
                                  check_dtype=False)
    setting = (0.2, record.SHARPNESS["radius"], record.SHARPNESS["directions"], record.SHARPNESS["images"])
    pd.testing.assert_frame_equal(analysis.sharpness_by_seed(spec.store, runs_a, *setting, progress=False),
                                  analysis.sharpness_by_seed(gone.store, runs_b, *setting, progress=False), rtol=1e-5)
    assert analysis.selection_table(gone).equals(analysis.selection_table(spec))
    digest = record.Record(root).digest("store")
    assert analysis.source_line(runs_b).startswith(f"results of record (store/confirmation, {len(runs_b)} runs, "
                                                   f"record {digest}): host ")
    assert analysis.source_line(runs_a, spec.store).startswith("trained here (")


def test_a_flipped_byte_is_refused_naming_the_file(copy_of):
    sweep, env, root = copy_of
    target = root / "store" / "confirmation" / "history.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    out = mulreg("verify", str(sweep), env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert str(target) in out.stderr.strip().splitlines()[-1] and "SHA-256" in out.stderr
    with pytest.raises(record.RecordError, match="history.parquet"):
        record.Record(root)


def test_a_store_equal_to_the_record_verifies_as_identical(recorded):
    sweep, env, _ = recorded
    out = mulreg("verify", str(sweep), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every decision agrees with the record" in out.stdout
    assert "5 runs in both, 0 only here, 0 only in the record" in out.stdout
    assert out.stdout.count("numbers identical in every run\n") == 2  # both stages, nothing differs
    assert out.stdout.count("per-epoch columns identical at every epoch\n") == 2
    assert "same λ chosen: record {" in out.stdout


def test_a_run_with_an_edited_history_is_named(copy_of):
    sweep, env, root = copy_of
    spec = SweepSpec.from_yaml(sweep)
    key = record.Record(root).runs("store", "confirmation")["key"].iloc[3]
    path = spec.open_store().run_dir(key) / "history.parquet"
    hist = pd.read_parquet(path)
    hist.loc[hist.index[-1], "train_loss"] += 0.125
    hist.to_parquet(path)
    out = mulreg("verify", str(sweep), env=env)
    epoch = int(hist["epoch"].iloc[-1])
    assert f"history train_loss: largest difference 0.125 (run {key}, epoch {epoch})" in out.stdout, out.stdout


def test_a_run_missing_from_the_store_is_a_decision_that_differs(copy_of):
    sweep, env, root = copy_of
    spec = SweepSpec.from_yaml(sweep)
    key = record.Record(root).runs("store", "confirmation")["key"].iloc[0]
    shutil.rmtree(spec.open_store().run_dir(key))
    out = mulreg("verify", str(sweep), env=env)
    assert out.returncode == 1 and "differs: confirmation stage: not complete" in out.stdout, out.stdout


def test_retrain_draws_recorded_runs_and_compares_them(recorded):
    """Exit 0 when every decision agrees, 1 with a `differs:` line each (a run retrained alone need not
    match one trained stacked with others to the bit); either way the report names the draw and hosts."""
    sweep, env, _ = recorded
    out = mulreg("verify", str(sweep), "--retrain", "2", "--seed", "5", env=env)
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert "\nruns retrained here against the results of record (" in out.stdout  # no store is read
    first = next(line for line in out.stdout.splitlines() if line.startswith("retrained 2 of"))
    total = len(record.Record(env["MULREG_RECORD"]).configs("store"))
    assert first.startswith(f"retrained 2 of the record's {total} runs (drawn with seed 5: ")
    assert "hosts: record: " in first
    assert "2 runs in both, 0 only here, 0 only in the record" in out.stdout
    verdict = out.stdout.strip().splitlines()[-1]
    assert verdict == "every decision agrees with the record" if out.returncode == 0 else verdict.endswith("differ")
    again = mulreg("verify", str(sweep), "--retrain", "2", "--seed", "5", env=env)
    drawn = next(line for line in again.stdout.splitlines() if line.startswith("retrained 2 of"))
    assert drawn.split(") in ")[0] == first.split(") in ")[0]  # the same draw


def test_a_retrain_stopped_by_ctrl_c_says_its_runs_are_gone_not_kept(recorded, monkeypatch, capsys, tmp_path):
    """Its runs train into a temporary store, removed as it stops: on 5f340a0 it said "finished runs and
    checkpoints are kept; rerun the same command to resume", untrue of a temporary store."""
    import mulreg.__main__ as cli

    sweep, env, _ = recorded
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real = record.run_sweep

    def stopped_after_training(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C as the last run finishes

    monkeypatch.setattr(record, "run_sweep", stopped_after_training)
    assert cli.main(["verify", str(sweep), "--retrain", "1"]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "temporary store, now removed: rerun to start again" in err and "rerun the same command to resume" not in err
    assert not list(tmp_path.glob("mulreg-retrain-*"))


def test_a_retrain_larger_than_the_record_is_refused(recorded):
    sweep, env, _ = recorded
    out = mulreg("verify", str(sweep), "--retrain", "99", env=env)
    assert out.returncode == 2 and "--retrain 99: the record holds " in out.stderr and "give 1 to " in out.stderr


def test_recording_an_incomplete_stage_is_refused(tmp_path, tiny_cifar_image_folder):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"store: {tmp_path / 'store'}\nstrategy: inline\nbase: {BASE}\ngrid: {GRID}\n")
    env = tiny_env(tmp_path, tiny_cifar_image_folder) | {"MULREG_RECORD": str(tmp_path / "record")}
    out = mulreg("record", str(sweep), env=env)
    assert out.returncode == 2 and "holds no complete stage; nothing recorded" in out.stderr


def test_the_readme_and_figures_show_the_ledger_the_record_gives():
    """Issue 37: README.md's ledger and figures/08_claims_ledger.{csv,png} are what the committed
    record gives; `python -m mulreg readme` writes them again when this fails."""
    from mulreg.report import readme

    assert readme.stale() == []


def test_a_readme_whose_ledger_was_edited_is_found_stale(tmp_path):
    from mulreg.config import PROJECT_ROOT
    from mulreg.report import readme

    shutil.copy(PROJECT_ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(PROJECT_ROOT / readme.FIGURES, tmp_path / readme.FIGURES)
    text = (tmp_path / "README.md").read_text()
    start = text.index(readme.BEGIN)
    row = text.index("| multiplicative beats additive (noise 0.2) |", start)
    (tmp_path / "README.md").write_text(text[:row] + text[row:].replace("| Fig. 1 |", "| Fig. 9 |", 1))
    (tmp_path / readme.FIGURES / f"{readme.NAME}.csv").write_text("claim\nsomething else\n")
    figures = tmp_path / readme.FIGURES
    shutil.copy(figures / "08_claims_ledger.png", figures / "02_training_dynamics.png")  # another figure's
    stale = readme.stale(tmp_path)
    assert stale[0] == "README.md: its ledger differs from the record's" and len(stale) == 3
    assert stale[1].endswith("08_claims_ledger.csv: differs from the record's ledger")
    assert stale[2].endswith("02_training_dynamics.png: not drawn from replication 1's record")


def test_the_readme_paragraph_on_the_figures_is_computed_and_checked_without_drawing(tmp_path, monkeypatch):
    """Its finding on the unit-norm margins comes from the record (on 5f340a0 it was typed), and `stale`
    reads the figures' tables without drawing a figure (it drew all three to get them)."""
    from mulreg.config import PROJECT_ROOT
    from mulreg.report import readme

    def no_drawing(data):
        raise AssertionError("stale drew a figure")

    monkeypatch.setattr(readme, "PAPER_FIGURES", {name: (read, no_drawing)
                                                   for name, (read, _) in readme.PAPER_FIGURES.items()})
    shutil.copy(PROJECT_ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(PROJECT_ROOT / readme.FIGURES, tmp_path / readme.FIGURES)
    assert readme.stale(tmp_path) == []
    text = (tmp_path / "README.md").read_text()
    computed = text[text.index(readme.FIGURES_BEGIN):text.index(readme.FIGURES_END)]
    assert "median std of |margin| over test images" in computed
    typed = computed.replace("hardly depends on the image", "depends on the image")
    (tmp_path / "README.md").write_text(text.replace(computed, typed))
    differs = "README.md: its paragraph on the paper's figures differs from what the record gives"
    assert readme.stale(tmp_path) == [differs]
