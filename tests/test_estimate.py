"""`python -m mulreg estimate`: what each notebook would train, counted once, and a measured time."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mulreg.config import RunConfig
from mulreg.tools import estimate
from mulreg.tools.bench import training_flops_per_image


def test_the_work_of_a_run_follows_its_pool_split_and_test_set():
    paper_pool = estimate.Work.of(RunConfig(task="binary"))
    assert (paper_pool.trained, paper_pool.evaluated) == (8_000, 2_000 + 2_000)  # 10,000 → 80/20, 2,000 test
    capped = estimate.Work.of(RunConfig(task="multiclass", n_train=3_000, n_test=1_000, val_fraction=0.1))
    assert (capped.trained, capped.evaluated) == (2_700, 300 + 1_000)
    assert capped.units == pytest.approx(2_700 + 1_300 / 3)


@pytest.mark.slow
@pytest.mark.cifar
def test_each_run_is_counted_once_for_the_first_notebook_that_trains_it():
    if not os.environ.get("MULREG_DATA"):
        pytest.skip("MULREG_DATA is not set")
    table = estimate.estimate("smoke", fresh=True, every=True).set_index("notebook")
    runs = table["runs to train"].to_dict()
    # 01 trains the binary sweep's two stages (20 selection + 18 confirmation runs); 02-04 read it;
    # 06 shares the selection stage's noise-0.2 runs (10 of its 38)
    # 07 trains the replication (15 selection + 18 confirmation) and its init-scale arm (15 + 9); 08 reads;
    # 09 trains replication 3's two sweeps (12 runs that stop, 6 trained past their stop)
    assert runs == {"01_noise_robustness": 38, "02_training_dynamics": 0, "03_rank_table": 0, "04_loss_landscape": 0,
                    "05_multiclass": 3, "06_beyond_the_paper": 28, "07_replication": 57, "08_claims_ledger": 0,
                    "09_replication3": 18}
    assert table["runs in sweep"]["06_beyond_the_paper"] == 38
    assert all(table["hours here"][nb] > 0 for nb in ("01_noise_robustness", "05_multiclass", "06_beyond_the_paper"))
    assert math.isnan(table["hours here"]["03_rank_table"])
    spec = estimate.sweeps_of("smoke", "05_multiclass")[0]
    flop = sum(c.max_epochs * training_flops_per_image(c) * estimate.Work.of(c).units for c in spec.configs())
    assert table["TFLOP"]["05_multiclass"] == pytest.approx(flop / 1e12)


def test_a_sweep_given_on_the_command_line_is_the_one_estimated():
    """Issue 40: `figures -p sweep FILE` trained FILE's runs while the estimate counted the default sweep's."""
    default = estimate.sweeps_of("smoke", "01_noise_robustness")[0]
    other = estimate.sweeps_of("smoke", "01_noise_robustness", {"sweep": "../params/smoke/multiclass_sweep.yaml",
                                                                "unrelated": 1})[0]
    assert default.base["task"] == "binary" and other.base["task"] == "multiclass"


def test_the_command_refuses_an_unknown_profile_in_one_line():
    done = subprocess.run([sys.executable, "-m", "mulreg", "estimate", "huge"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'huge'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU machine the paper profile is timed")
def test_the_paper_profile_is_counted_but_not_timed_on_a_machine_without_its_gpu():
    table = estimate.estimate("paper", fresh=True, every=True)
    trained = table[table["runs to train"] > 0]
    assert set(trained["notebook"]) == {"01_noise_robustness", "05_multiclass", "06_beyond_the_paper", "07_replication",
                                        "09_replication3"}
    assert (trained["TFLOP"] > 0).all() and trained["hours here"].isna().all()
    at_best = trained.set_index("notebook")["H100 hours at best"]
    assert at_best["05_multiclass"] == pytest.approx(trained.set_index("notebook")["TFLOP"]["05_multiclass"]
                                                     / estimate.H100_FP32_TFLOPS / 3600)
    assert set(trained["device"]) == {"cuda"}
    text = estimate.report(table, "paper", fresh=True)
    assert "no time: the runs' device is not on this machine" in text and "05_multiclass" in text


def test_on_a_gpu_the_estimate_times_runs_stacked_as_the_sweep_stacks_them(tiny_cifar_image_folder, monkeypatch):
    """A GPU sweep trains `stack_size` runs per stack, so the rate is measured on such a stack and
    given per run; at most as many runs as are pending of that shape."""
    monkeypatch.setattr(estimate, "stack_size", lambda config: 64)
    config = RunConfig(device="cpu", batch_size=4, early_stopping=None, n_train=12, n_test=6)  # the tiny data's all
    assert estimate.stacked(config, [config.replace(seed=s) for s in range(1, 4)] + [config.replace(batch_size=2)]) == 3
    trained = []
    real = estimate.train_group

    def counted(configs, **kw):
        trained.append(len(configs))
        return real(configs, **kw)

    monkeypatch.setattr(estimate, "train_group", counted)
    rate = estimate.measure(config, tiny_cifar_image_folder, runs=3)
    assert trained == [3] and rate.per_unit > 0 and rate.start >= 0


def test_the_engine_reports_each_epoch_then_each_stopped_run(tiny_cifar_image_folder):
    """What the estimate's clock hears from the real engine at K = 3 runs of 3 epochs: an epoch of the
    stack (3 run-epochs) three times, then each run that stopped at max_epochs with 0 epochs left."""
    config = RunConfig(device="cpu", batch_size=4, early_stopping=None, max_epochs=3, n_train=12, n_test=6)
    heard = []
    estimate.train_group([config.replace(seed=s) for s in (1, 2, 3)], root=tiny_cifar_image_folder, progress=False,
                         on_epochs=heard.append)
    assert heard == [3, 3, 3, 0, 0, 0]


def test_at_three_stacked_runs_the_steady_epoch_is_divided_by_the_steady_epochs(monkeypatch):
    """K = 3, 3 epochs: the first takes 15 s (5 s of start), the others 10 s each; the engine's calls
    as above. The steady epoch is 10 s (2 epochs, not 2 + K calls), per run and work unit."""
    now = [100.0]
    monkeypatch.setattr(estimate, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def engine(configs, on_epochs, **kw):
        for seconds in (15.0, 10.0, 10.0):
            now[0] += seconds
            on_epochs(len(configs))
        for _ in configs:
            on_epochs(0)

    monkeypatch.setattr(estimate, "train_group", engine)
    config = RunConfig(device="cpu", early_stopping=None)
    rate = estimate.measure(config, runs=3)
    units = estimate.Work.of(config.replace(n_train=400, n_test=200)).units  # the measurement's slice
    assert rate.per_unit == pytest.approx(10.0 / (3 * units))
    assert rate.start == pytest.approx(5.0 / 3)


def test_a_sweep_the_record_holds_whole_is_read_there_not_trained_unless_it_is_reproduced():
    """`make figures NB=09` read replication 3 from the record in seconds while the estimate priced 48 runs."""
    from mulreg.results import analysis

    stopping, horizon = estimate.sweeps_of("quick", "09_replication3")
    assert analysis.recorded_whole(stopping) and analysis.recorded_whole(horizon)
    fewer_seeds = stopping.model_copy(update={"grid": {**stopping.grid, "seed": stopping.grid["seed"][:-1]}})
    assert not analysis.recorded_whole(fewer_seeds)  # the record holds another grid: trained
    for fresh in (False, True):  # a fresh clone has the record
        row = estimate.estimate("quick", "09", fresh=fresh).iloc[0]
        assert (row["runs to train"], row["runs in sweep"]) == (0, 48) and math.isnan(row["hours here"])
