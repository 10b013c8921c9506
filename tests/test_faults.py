"""Issue 40, faults round 4, through the real command line: bounded inputs (YAML aliases, grid size,
sweep files that are not regular files), duplicate confirmation seeds, and images of another mode;
each one line naming the file, key or option and the fix, exit 2, no traceback, nothing trained.
On c51d60c: the FIFO hung, the alias bomb and the million-run grid ran out of memory or time, the
repeated seeds and the RGBA image were accepted without a word."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from test_cli_errors import assert_one_message, mulreg, sweep_file, tiny_env, train_args

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def test_a_sweep_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "sweep.yaml"
    os.mkfifo(fifo)
    out = mulreg("sweep", str(fifo))
    assert_one_message(out, str(fifo), "not a regular file")


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = tmp_path / "sweep.yaml"
    bomb.write_text(BOMB + "grid: {seed: [1]}\n")
    out = mulreg("sweep", str(bomb))
    assert_one_message(out, str(bomb), "YAML nodes, more than 100,000", "write the values out")


def test_a_yaml_alias_bomb_in_a_notebook_parameter_is_refused(tmp_path):
    value = "{" + BOMB.replace("\n", ", ").rstrip(", ") + "}"
    out = mulreg("figures", "--profile", "smoke", "--nb", "03", "-p", "table_noise", value)
    assert_one_message(out, "-p table_noise", "YAML nodes")


def test_a_grid_of_a_million_runs_is_refused_with_its_size_before_it_is_expanded(tmp_path):
    path = sweep_file(tmp_path, "{seed: " + str(list(range(1000))) + ", lr: " + str([0.001 * (i + 1) for i in
                                                                                      range(1000)]) + "}")
    out = mulreg("sweep", str(path))
    assert_one_message(out, str(path), "expands to 1,000,000 runs, more than max_runs 10,000", "max_runs: 1000000")
    assert not (tmp_path / "store").exists()


def test_max_runs_lets_a_user_who_means_it_go_on(tmp_path):
    from mulreg.engine.sweep import SweepSpec

    path = sweep_file(tmp_path, "{seed: [1, 2, 3]}")
    path.write_text(path.read_text() + "max_runs: 2\n")
    with pytest.raises(Exception, match="expands to 3 runs, more than max_runs 2"):
        SweepSpec.from_yaml(path)
    path.write_text(path.read_text().replace("max_runs: 2", "max_runs: 3"))
    assert len(SweepSpec.from_yaml(path).configs()) == 3


def test_repeated_confirmation_seeds_are_refused(tmp_path):
    path = sweep_file(tmp_path, "{seed: [1]}")
    path.write_text(path.read_text() + "confirmation: {seeds: [3, 4, 3], label_noise: [0.2]}\n")
    out = mulreg("sweep", str(path))
    assert_one_message(out, str(path), "confirmation.seeds", "repeat [3]", "list each once")


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_an_image_of_another_mode_is_refused_naming_the_file(tmp_path, tiny_cifar_image_folder, mode):
    odd = tiny_cifar_image_folder / "train" / "cat" / "9999.png"
    Image.fromarray(np.zeros((32, 32, len(mode)) if mode == "RGBA" else (32, 32), dtype=np.uint8), mode).save(odd)
    out = mulreg(*train_args(tmp_path), env=tiny_env(tmp_path, tiny_cifar_image_folder))
    assert_one_message(out, str(odd), f"is {mode}, not RGB", "convert it to RGB")
    assert not (tmp_path / "r.json").exists()


def test_class_folders_with_other_names_say_which_names_are_expected(tmp_path, tiny_cifar_image_folder):
    (tiny_cifar_image_folder / "train" / "cat").rename(tiny_cifar_image_folder / "train" / "kitten")
    out = mulreg(*train_args(tmp_path), env=tiny_env(tmp_path, tiny_cifar_image_folder))
    assert_one_message(out, "expected exactly airplane, automobile, bird, cat, deer", "rename them")


def test_a_run_folder_that_is_a_dangling_link_is_set_aside_named_and_the_run_stored(tmp_path,
                                                                                      tiny_cifar_image_folder):
    """On c51d60c the run trained, could not be stored over the link, was dropped, and the sweep exited
    2 blaming another process; every rerun trained it again."""
    from mulreg.engine.sweep import SweepSpec

    env = tiny_env(tmp_path, tiny_cifar_image_folder)
    path = sweep_file(tmp_path, "{seed: [1]}")
    key = SweepSpec.from_yaml(path).configs()[0].key()
    (tmp_path / "store" / "runs").mkdir(parents=True)
    (tmp_path / "store" / "runs" / key).symlink_to(tmp_path / "gone")
    out = mulreg("sweep", str(path), env=env)
    assert out.returncode == 0, out.stderr
    assert f"run folder {tmp_path / 'store' / 'runs' / key} is a link to {tmp_path / 'gone'}" in out.stderr
    assert (tmp_path / "store" / "runs" / key / "metrics.json").is_file()
    again = mulreg("sweep", str(path), env=env)
    assert again.returncode == 0 and "is a link to" not in again.stderr


@pytest.mark.timeout(300)
def test_a_figures_run_stopped_by_sigterm_leaves_no_ok_and_no_process(tmp_path):
    """On c51d60c the index kept the notebook's earlier "ok" and linked an executed copy whose last cells
    never ran. Now it says interrupted, links only the partial .ipynb, and the kernel goes with it."""
    import signal
    import subprocess
    import sys
    import time

    from mulreg.config import PROJECT_ROOT
    from mulreg.report.reports import INTERRUPTED

    out_dir = PROJECT_ROOT / "reports" / "smoke"
    proc = subprocess.Popen([sys.executable, "-m", "mulreg", "figures", "--profile", "smoke", "--nb", "08"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = time.time()
    shown = ""
    while "08_claims_ledger (smoke) ..." not in shown and time.time() - started < 240:
        shown += proc.stdout.read(1)  # the line ends only when the notebook has run: read what is shown
    time.sleep(1)  # papermill is starting the kernel or executing the notebook (it takes seconds)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted" in err.splitlines()[-1]
    outcome = (out_dir / "08_claims_ledger.outcome.json").read_text()
    assert INTERRUPTED in outcome and not (out_dir / "08_claims_ledger.html").exists()
    assert "ipynb (incomplete)" in (out_dir / "index.html").read_text()
    time.sleep(2)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the process group is left: no kernel, no worker


@pytest.mark.parametrize("address", ["localhost:abc", "head node:6379", "http://head:6379"])
def test_a_mistyped_ray_address_is_one_line_naming_the_forms_ray_takes(tmp_path, address):
    """On c51d60c "localhost:abc" ended in Ray's ValueError traceback."""
    path = sweep_file(tmp_path, "{seed: [1]}")
    out = mulreg("sweep", str(path), "--executor", "ray", "--ray-address", address)
    assert_one_message(out, f"ray_address: {address!r} is not a Ray address", "host:port or ray://host:port")
