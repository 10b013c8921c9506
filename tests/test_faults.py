"""Issue 40, faults round 4, through the real command line: bounded inputs (YAML aliases, grid size,
sweep files that are not regular files), duplicate confirmation seeds, and images of another mode;
each one line naming the file, key or option and the fix, exit 2, no traceback, nothing trained.
On c51d60c: the FIFO hung, the alias bomb and the million-run grid ran out of memory or time, the
repeated seeds and the RGBA image were accepted without a word."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_cli_errors import assert_one_message, mulreg, sweep_file, tiny_env, train_args
from test_signals import as_in_a_terminal

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


def figures_08_started(tmp_path) -> tuple[subprocess.Popen, Path]:
    """`mulreg figures --profile smoke --nb 08` in a session of its own, returned once notebook 08 has
    started, with the reports folder it writes (MULREG_REPORTS: the project's own reports/ are left alone)
    holding the HTML of an earlier, complete run."""
    import time

    out_dir = tmp_path / "reports" / "smoke"
    out_dir.mkdir(parents=True)
    (out_dir / "08_claims_ledger.html").write_text("the report of an earlier, complete run")
    env = {**os.environ, "MULREG_REPORTS": str(tmp_path / "reports")}
    proc = subprocess.Popen([sys.executable, "-m", "mulreg", "figures", "--profile", "smoke", "--nb", "08", "-p",
                             "figures_dir", str(tmp_path / "figures")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_in_a_terminal)
    started = time.time()
    shown = ""
    while "08_claims_ledger (smoke) ..." not in shown and time.time() - started < 240:
        char = proc.stdout.read(1)  # the line ends only when the notebook has run: read what is shown
        assert char, f"figures ended before notebook 08 started: {proc.communicate()[1]}"
        shown += char
    time.sleep(1)  # papermill is starting the kernel or executing the notebook (it takes seconds)
    return proc, out_dir


def assert_group_gone(pgid: int) -> None:
    import time

    time.sleep(2)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # nothing of the process group is left: no kernel, no worker


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop", ["sigterm", "sigint"])
def test_a_figures_run_stopped_leaves_no_ok_and_no_process(tmp_path, stop):
    """On c51d60c the index kept the notebook's earlier "ok" and linked an executed copy whose last cells
    never ran. Now it says interrupted, links only the partial .ipynb, and the kernel goes with it; Ctrl-C
    (SIGINT to the whole process group, kernel included) as well as SIGTERM."""
    import signal

    from mulreg.report.reports import INTERRUPTED

    proc, out_dir = figures_08_started(tmp_path)
    if stop == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + (signal.SIGTERM if stop == "sigterm" else signal.SIGINT), err
    assert "Traceback" not in err and "interrupted" in err.splitlines()[-1]
    outcome = (out_dir / "08_claims_ledger.outcome.json").read_text()
    assert INTERRUPTED in outcome and not (out_dir / "08_claims_ledger.html").exists()
    assert "ipynb (incomplete)" in (out_dir / "index.html").read_text()
    assert_group_gone(proc.pid)


@pytest.mark.timeout(300)
def test_a_figures_run_killed_outright_leaves_an_index_that_says_unfinished(tmp_path):
    """SIGKILL leaves the runner no time to write anything: on 364db68 the index kept the earlier "ok" and
    linked the earlier report. Now the index says the notebook started and did not finish before it runs."""
    import signal

    from mulreg.report.reports import UNFINISHED

    proc, out_dir = figures_08_started(tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    index = (out_dir / "index.html").read_text()
    assert UNFINISHED.split(":")[0] in index and "ipynb (incomplete)" in index
    assert not (out_dir / "08_claims_ledger.html").exists()


@pytest.mark.timeout(300)
def test_a_cell_past_the_timeout_stops_its_notebook_and_says_timed_out(tmp_path):
    out_dir = tmp_path / "reports" / "smoke"
    out = mulreg("figures", "--profile", "smoke", "--nb", "08", "--timeout", "1", "-p", "figures_dir",
                 str(tmp_path / "figures"), env={"MULREG_REPORTS": str(tmp_path / "reports")})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "FAILED\n  timed out: A cell timed out while it was being executed, after 1 seconds" in out.stdout
    index = (out_dir / "index.html").read_text()
    assert "timed out" in index and "ipynb (incomplete)" in index  # the partial copy, no report that looks whole
    assert not (out_dir / "08_claims_ledger.html").exists()
    assert not list((tmp_path / "figures").glob("08_*"))


def test_a_timeout_that_is_not_a_positive_number_is_refused():
    out = mulreg("figures", "--profile", "smoke", "--nb", "08", "--timeout", "0")
    assert_one_message(out, "--timeout 0", "above 0")


@pytest.mark.parametrize("address", ["localhost:abc", "head node:6379", "http://head:6379"])
def test_a_mistyped_ray_address_is_one_line_naming_the_forms_ray_takes(tmp_path, address):
    """On c51d60c "localhost:abc" ended in Ray's ValueError traceback."""
    path = sweep_file(tmp_path, "{seed: [1]}")
    out = mulreg("sweep", str(path), "--executor", "ray", "--ray-address", address)
    assert_one_message(out, f"ray_address: {address!r} is not a Ray address", "host:port or ray://host:port")


def unprivileged(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command line as a user whom file permissions bind: as root, root without its capabilities
    (setpriv), so a folder without read or write permission refuses this process as another user's would."""
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"] if os.geteuid() == 0 else []
    if prefix and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: file permissions cannot bind this process")
    return subprocess.run([*prefix, sys.executable, "-m", "mulreg", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def stored(tmp_path_factory, tiny_cifar_image_folder_module) -> Path:
    """A store holding two trained runs (each test that locks a part of it unlocks it again)."""
    folder = tmp_path_factory.mktemp("stored")
    path = sweep_file(folder, "{seed: [1, 2]}")
    assert mulreg("sweep", str(path), env=tiny_env(folder, tiny_cifar_image_folder_module)).returncode == 0
    return folder / "store"


def test_a_run_folder_this_user_may_not_read_is_named_with_what_is_needed(stored):
    """On c51d60c `runs` and `runs --check` ended in a PermissionError traceback."""
    locked = sorted((stored / "runs").iterdir())[0]
    locked.chmod(0)
    try:
        listing = unprivileged("runs", "--store", str(stored))
        check = unprivileged("runs", "--store", str(stored), "--check")
    finally:
        locked.chmod(0o755)
    assert listing.returncode == 1 and "Traceback" not in listing.stderr, listing.stderr
    assert "1 run folder(s) left out: they cannot be read; `mulreg runs --check` says why" in listing.stdout
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    assert f"permission denied on {locked}" in check.stdout and "needs read access" in check.stdout
    assert "2 run folders" in check.stdout and "1 unreadable" in check.stdout


def test_a_store_this_user_may_not_list_is_one_line_naming_it(stored):
    (stored / "runs").chmod(0)
    try:
        out = unprivileged("runs", "--store", str(stored))
    finally:
        (stored / "runs").chmod(0o755)
    assert_one_message(out, f"permission denied on {stored / 'runs'}", "ask its owner")


def test_a_read_only_reports_folder_is_refused_before_anything_trains(tmp_path):
    """On c51d60c a read-only reports/ ended in a traceback once the notebook had run."""
    reports = tmp_path / "reports" / "smoke"
    reports.mkdir(parents=True)
    reports.chmod(0o555)
    try:
        out = unprivileged("figures", "--profile", "smoke", "--nb", "08", "-p", "figures_dir", str(tmp_path / "f"),
                           env={"MULREG_REPORTS": str(tmp_path / "reports")})
    finally:
        reports.chmod(0o755)
    assert_one_message(out, f"reports: {reports} is not writable")


def test_a_kernel_whose_python_is_gone_names_the_command_that_installs_it_again(tmp_path):
    import json

    spec = tmp_path / "jupyter" / "kernels" / "mulreg" / "kernel.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"argv": [str(tmp_path / "moved" / "python"), "-m", "ipykernel_launcher", "-f",
                                         "{connection_file}"], "display_name": "mulreg", "language": "python"}))
    out = mulreg("figures", "--profile", "smoke", "--nb", "08", env={"JUPYTER_PATH": str(tmp_path / "jupyter")})
    assert_one_message(out, f"runs {tmp_path / 'moved' / 'python'}, which is not there",
                       "-m ipykernel install --sys-prefix --name mulreg")


def test_a_missing_kernel_names_the_command_that_installs_it(monkeypatch, capsys):
    from mulreg.__main__ import main
    from mulreg.report import reports

    monkeypatch.setattr(reports, "KERNEL", "mulreg-never-installed")
    assert main(["figures", "--profile", "smoke", "--nb", "08"]) == 2
    err = capsys.readouterr().err
    assert "kernel 'mulreg-never-installed' is not installed" in err and "ipykernel install" in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_figures_counts_the_runs_the_chosen_notebook_lacks_even_when_another_notebook_trains_them(monkeypatch):
    """On c51d60c `figures --nb 02` said "nothing to train" while notebook 01's store, which 02 reads,
    was missing: the estimate counted the shared runs under 01, a notebook not chosen."""
    from mulreg.engine.store import Store
    from mulreg.tools import estimate

    monkeypatch.setattr(estimate, "measure", lambda *args, **kwargs: estimate.Rate(per_unit=1e-6, start=0.0))
    monkeypatch.setattr(Store, "is_complete", lambda self, key: False)  # as on a fresh clone
    every = estimate.estimate("smoke", every=True).set_index("notebook")
    shown = estimate.of_chosen("smoke", "02", every.reset_index())
    assert every["runs to train"]["02_training_dynamics"] == 0  # counted under 01
    assert shown["runs to train"].tolist() == [every["runs to train"]["01_noise_robustness"]] == [38]
    assert "nothing to train" not in estimate.report(shown, "smoke")
