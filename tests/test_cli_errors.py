"""Bad input through the real command line: one message on stderr, exit code 2, no traceback, and
nothing trained (issue 11, 'Errors at the edge')."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def mulreg(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mulreg", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def assert_one_message(out: subprocess.CompletedProcess, *shown: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: "), out.stderr
    for text in shown:
        assert text in out.stderr, out.stderr


def train_args(tmp_path: Path) -> list[str]:
    return ["train", "--epochs", "1", "--n-train", "8", "--n-test", "4", "--device", "cpu",
            "--out", str(tmp_path / "r.json")]


def test_data_folder_that_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere"
    out = mulreg(*train_args(tmp_path), env={"MULREG_DATA": str(missing), "MULREG_CACHE": str(tmp_path / "c")})
    assert_one_message(out, str(missing), "does not exist", "MULREG_DATA")
    assert not (tmp_path / "r.json").exists()


def test_data_folder_that_is_a_file(tmp_path):
    data = tmp_path / "cifar.tar"
    data.write_text("not a folder")
    out = mulreg(*train_args(tmp_path), env={"MULREG_DATA": str(data), "MULREG_CACHE": str(tmp_path / "c")})
    assert_one_message(out, str(data), "is a file, not a folder")
    assert not (tmp_path / "r.json").exists()


def test_data_folder_with_missing_class_folders(tmp_path, tiny_cifar_image_folder):
    import shutil

    shutil.rmtree(tiny_cifar_image_folder / "test" / "truck")
    out = mulreg(*train_args(tmp_path), env={"MULREG_DATA": str(tiny_cifar_image_folder),
                                              "MULREG_CACHE": str(tmp_path / "c")})
    assert_one_message(out, "test/truck", "MULREG_DATA")


def test_corrupt_image_names_the_file(tmp_path, tiny_cifar_image_folder):
    victim = sorted((tiny_cifar_image_folder / "train" / "cat").iterdir())[0]
    victim.write_bytes(b"\xff\xd8\xff not really a JPEG")
    out = mulreg(*train_args(tmp_path), env={"MULREG_DATA": str(tiny_cifar_image_folder),
                                              "MULREG_CACHE": str(tmp_path / "c")})
    assert_one_message(out, "unreadable image", victim.name)


def test_malformed_sweep_yaml_names_file_line_and_column(tmp_path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("base:\n  task: binary\n  lr: [0.1\ngrid: {}\n")
    assert_one_message(mulreg("sweep", str(bad)), str(bad), "line", "column", "invalid YAML")


def test_sweep_file_that_does_not_exist(tmp_path):
    assert_one_message(mulreg("sweep", str(tmp_path / "nope.yaml")), "nope.yaml", "no such file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, tiny_cifar_image_folder):
    args = [a if a != "cpu" else "cuda" for a in train_args(tmp_path)]
    out = mulreg(*args, env={"MULREG_DATA": str(tiny_cifar_image_folder), "MULREG_CACHE": str(tmp_path / "c")})
    assert_one_message(out, "'cuda'", "available: cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_sweep_on_an_unavailable_device_fails_before_training(tmp_path, tiny_cifar_image_folder):
    spec = tmp_path / "sweep.yaml"
    store = tmp_path / "store"
    spec.write_text(f"store: {store}\nbase: {{n_train: 8, n_test: 4, max_epochs: 1, device: cuda}}\n"
                    "grid: {seed: [1, 2]}\n")
    out = mulreg("sweep", str(spec), env={"MULREG_DATA": str(tiny_cifar_image_folder),
                                          "MULREG_CACHE": str(tmp_path / "c")})
    assert_one_message(out, "'cuda'")
    assert not list((store / "runs").glob("*")) if (store / "runs").exists() else True


def test_invalid_config_value(tmp_path):
    assert_one_message(mulreg(*train_args(tmp_path), "--lr", "-1"), "lr", "-1")


def test_figures_refuses_an_unknown_override_before_any_notebook_runs(tmp_path):
    out = mulreg("figures", "--profile", "smoke", "--nb", "03", "-p", "bogus", "1")
    assert_one_message(out, "bogus", "03_rank_table")
    assert "[1/" not in out.stdout


def test_figures_refuses_a_params_file_key_the_notebook_lacks(monkeypatch):
    from mulreg.config import ConfigError
    from mulreg.report import reports

    real = reports.parameters
    monkeypatch.setattr(reports, "parameters", lambda profile, stem: {**real(profile, stem), "tabel_noise": 0.2})
    with pytest.raises(ConfigError, match="tabel_noise is not a parameter of 03_rank_table"):
        reports.checked_parameters("smoke", reports.notebooks("03"))


def test_figures_overrides_reach_the_notebooks_that_define_them():
    from mulreg.report import reports

    params = reports.checked_parameters("smoke", reports.notebooks("0"), {"table_noise": 0.2, "progress": True})
    assert params["03_rank_table"]["table_noise"] == 0.2 and "table_noise" not in params["01_noise_robustness"]
    assert all(p["progress"] is True for p in params.values())


def test_runs_lists_a_store_and_check_names_an_unreadable_run(tmp_path, tiny_cifar_image_folder):
    from mulreg.config import RunConfig
    from mulreg.engine.store import Store
    from mulreg.engine.train import train

    store = Store(tmp_path / "store")
    configs = [RunConfig(device="cpu", init_scale=1.0, lr=0.01, batch_size=4, max_epochs=1, n_train=8,
                         early_stopping=None, seed=s) for s in (1, 2)]
    for c in configs:
        store.save(train(c, root=tiny_cifar_image_folder, progress=False))
    listing = mulreg("runs", "--store", str(store.root))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert max(map(len, lines)) <= 120 and "2 runs" in lines[0] and "penalty: none" in listing.stdout
    assert all(any(c.key() in line for line in lines) for c in configs)
    assert mulreg("runs", "--store", str(store.root), "--check").returncode == 0

    broken = store.run_dir(configs[1].key()) / "metrics.json"
    broken.write_text("{\"stop_reason\": ")
    check = mulreg("runs", "--store", str(store.root), "--check")
    assert check.returncode == 1 and configs[1].key() in check.stdout and "not valid JSON" in check.stdout
    assert configs[0].key() not in check.stdout
    listing = mulreg("runs", "--store", str(store.root))
    assert listing.returncode == 1 and configs[1].key() not in listing.stdout and "1 runs" in listing.stdout
    assert "1 run folder(s) left out: they cannot be read" in listing.stdout  # on c51d60c: exit 0
    provenance = store.run_dir(configs[0].key()) / "provenance.json"
    provenance.write_text(provenance.read_text()[:30])  # cut off
    listing = mulreg("runs", "--store", str(store.root))
    assert listing.returncode == 1 and "2 run folder(s) left out" in listing.stdout and not listing.stderr
    check = mulreg("runs", "--store", str(store.root), "--check")
    assert check.returncode == 1 and f"{configs[0].key()}  {provenance.parent}: " in check.stdout


def test_a_seeds_override_reaches_every_sweep_notebook_and_narrows_its_sweep():
    from mulreg.report import reports
    from mulreg.results import analysis

    params = reports.checked_parameters("smoke", reports.notebooks("0"), {"seeds": [1]})
    assert all(p["seeds"] == [1] for p in params.values() if "seeds" in p)
    fixed = {stem for stem, p in params.items() if "seeds" not in p}  # the second replication: its seeds registered
    assert fixed == {"07_replication", "08_claims_ledger", "09_replication3"}
    spec = analysis.load_sweep(reports.NOTEBOOKS / params["01_noise_robustness"]["sweep"], seeds=[1])
    full = analysis.load_sweep(reports.NOTEBOOKS / params["01_noise_robustness"]["sweep"])
    assert {c.seed for c in spec.configs()} == {1} and {c.seed for c in full.configs()} == {1, 2}
    assert len(spec.configs()) * 2 == len(full.configs())


# ---- issue 23: paths, degenerate sweeps and notebook parameters, refused at the edge
def sweep_file(tmp_path: Path, grid: str, store: Path | None = None) -> Path:
    path = tmp_path / "sweep.yaml"
    base = "{device: cpu, n_train: 8, n_test: 4, max_epochs: 1}"
    path.write_text(f"store: {store or tmp_path / 'store'}\nbase: {base}\ngrid: {grid}\n")
    return path


@pytest.mark.parametrize("where", ["a file", "a folder under a file"])
def test_a_store_that_is_a_file_is_refused_naming_it(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    store = blocker if where == "a file" else blocker / "store"
    out = mulreg("sweep", str(sweep_file(tmp_path, "{seed: [1]}")), "--store", str(store))
    assert_one_message(out, str(blocker), "is a file, not a folder")


def test_a_sweep_file_extending_a_missing_file_names_the_key(tmp_path):
    path = tmp_path / "child.yaml"
    path.write_text("extends: parent.yaml\ngrid: {seed: [1]}\n")
    assert_one_message(mulreg("sweep", str(path)), "child.yaml: extends 'parent.yaml'", "no such file")


def test_runs_on_a_missing_store_names_it_and_an_empty_one_says_no_runs(tmp_path):
    assert_one_message(mulreg("runs", "--store", str(tmp_path / "nowhere")), "--store", "nowhere", "no such folder")
    (tmp_path / "empty").mkdir()
    empty = mulreg("runs", "--store", str(tmp_path / "empty"))
    assert empty.returncode == 0 and "no runs" in empty.stdout


def test_train_refuses_an_output_path_it_could_not_write_before_training(tmp_path):
    out = mulreg(*train_args(tmp_path)[:-1], str(tmp_path / "missing" / "r.json"))
    assert_one_message(out, "--out", "missing")


@pytest.mark.parametrize("grid, named", [
    ("{seed: []}", "grid.seed: an empty list"),
    ("{seed: [1, 1]}", "grid.seed: repeats 1"),
    ("{penalty: [none, sum], lam: {sum: [1.0e-3], mul: [1.0e-7]}}", "grid.lam: λ values for mul"),
    ("{penalty: [sum], lam: {sum: []}}", "grid.lam.sum: an empty list"),
])
def test_a_degenerate_sweep_file_is_refused_naming_the_key(tmp_path, grid, named):
    out = mulreg("sweep", str(sweep_file(tmp_path, grid)))
    assert_one_message(out, "sweep.yaml", named)
    assert not (tmp_path / "store" / "runs").exists() or not any((tmp_path / "store" / "runs").iterdir())


@pytest.mark.parametrize("name, value, shown", [
    ("seeds", "abc", "seeds='abc'"),
    ("classes", "[3, 3]", "classes=[3, 3]"),
    ("paper_patience", "abc", "paper_patience: 'abc' is a str"),
    ("progress", "7", "progress: 7 is a int"),
])
def test_a_notebook_parameter_of_the_wrong_type_or_value_is_refused_before_any_notebook_starts(name, value, shown):
    out = mulreg("figures", "--profile", "smoke", "--nb", "01", "-p", name, value)
    assert_one_message(out, shown, "01_noise_robustness")
    assert "[1/" not in out.stdout and "Estimate" not in out.stdout


# ---- issue 28: nothing silent
@pytest.mark.parametrize("text, named", [
    ("base: {device: cpu, penalty: mul, lam: .inf}\ngrid: {seed: [1]}\n", "lam: got inf"),
    ("base: {device: cpu, penalty: mul}\ngrid: {lam: [1.0e-3, .inf]}\n", "grid.lam: inf is not a finite number"),
    ("base: {device: cpu, penalty: sum}\ngrid: {lam: {sum: [.nan]}}\n", "grid.lam.sum: nan is not a finite number"),
    ("base: {device: cpu}\ngrid: {lr: [.inf]}\n", "grid.lr: inf is not a finite number"),
])
def test_a_sweep_value_that_is_not_a_finite_number_is_refused_naming_file_and_key(tmp_path, text, named):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"store: {tmp_path / 'store'}\n{text}")
    out = mulreg("sweep", str(path))
    assert_one_message(out, str(path), named)
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "store").exists()


def tiny_env(tmp_path: Path, data: Path) -> dict:
    return {"MULREG_DATA": str(data), "MULREG_CACHE": str(tmp_path / "c")}


def test_train_refuses_an_n_train_larger_than_the_pool_before_training(tmp_path, tiny_cifar_image_folder):
    """It trained on the 12 images there are and recorded the 100 asked for."""
    args = [a if a != "8" else "100" for a in train_args(tmp_path)]
    out = mulreg(*args, env=tiny_env(tmp_path, tiny_cifar_image_folder))
    assert_one_message(out, "n_train 100", str(tiny_cifar_image_folder), "too few of cat, deer")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_sweep_with_an_n_train_larger_than_the_pool_trains_nothing(tmp_path, tiny_cifar_image_folder, executor):
    """Issue 40: one pre-flight for every executor, in the driver, before Ray starts or a task is sent (on
    c51d60c the Ray path trained on the 12 images there are, exited 0 and stored the 40 asked for)."""
    path = sweep_file(tmp_path, "{seed: [1], n_train: [12, 40]}")
    out = mulreg("sweep", str(path), "--executor", executor, env=tiny_env(tmp_path, tiny_cifar_image_folder))
    assert_one_message(out, "n_train 40")
    assert not any((tmp_path / "store" / "runs").iterdir())


def test_an_empty_sweep_file_is_refused_rather_than_run_as_a_default_run(tmp_path):
    """It started one default run (2,000 epochs, the whole pool)."""
    for i, text in enumerate(["", "# nothing yet\n", f"store: {tmp_path / 'store'}\n", "base: {}\ngrid: {}\n"]):
        path = tmp_path / f"sweep{i}.yaml"
        path.write_text(text)
        out = mulreg("sweep", str(path), env={"MULREG_DATA": str(tmp_path / "nowhere")})
        assert_one_message(out, str(path), "names nothing")


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: read-only by mode, or (as root, whom modes do not stop) /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        (Path("/sys") / "mulreg-probe").write_text("")
    except OSError:
        return Path("/sys")
    pytest.skip("no folder here that root cannot write in")


def test_train_refuses_an_out_folder_it_cannot_write_in_before_training(tmp_path, tiny_cifar_image_folder):
    """It trained for the whole run and then failed with a traceback."""
    target = unwritable_folder(tmp_path) / "r.json"
    out = mulreg(*train_args(tmp_path)[:-1], str(target), env=tiny_env(tmp_path, tiny_cifar_image_folder))
    assert_one_message(out, f"--out {target}", "cannot write there")
    assert "after 1 epochs" not in out.stdout


@pytest.mark.parametrize("damage, named", [
    ("empty class folder", "train/dog"),
    ("image of another size", "0000.jpg"),
    ("cache is a file", "MULREG_CACHE"),
])
def test_a_damaged_data_folder_or_cache_names_the_file_in_one_line(tmp_path, tiny_cifar_image_folder, damage, named):
    env = tiny_env(tmp_path, tiny_cifar_image_folder)
    if damage == "empty class folder":
        for f in (tiny_cifar_image_folder / "train" / "dog").iterdir():
            f.unlink()
    elif damage == "image of another size":
        from PIL import Image

        Image.new("RGB", (64, 48)).save(tiny_cifar_image_folder / "test" / "ship" / "0000.jpg")
    else:
        (tmp_path / "c").write_text("not a folder")
    out = mulreg(*train_args(tmp_path), env=env)
    assert_one_message(out, named)
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()


def diverging_sweep(tmp_path: Path, lams: str) -> Path:
    """A sweep file whose every run diverges (lr 1e8), at the multiplicative `lams`."""
    path = tmp_path / "sweep.yaml"
    path.write_text(f"store: {tmp_path / 'store'}\nstrategy: inline\n"
                    "base: {device: cpu, n_train: 8, n_test: 4, max_epochs: 2, lr: 1.0e+8, batch_size: 4, "
                    f"early_stopping: null}}\ngrid: {{penalty: [none, mul], lam: {lams}, seed: [1]}}\n")
    return path


def test_a_sweep_whose_every_run_diverges_says_no_lambda_qualified(tmp_path, tiny_cifar_image_folder):
    """It trained, then failed in `select` with a KeyError."""
    path = diverging_sweep(tmp_path, "[1.0e+30, 1.0e+31]")
    out = mulreg("sweep", str(path), env=tiny_env(tmp_path, tiny_cifar_image_folder))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "no λ for mul qualified at noise 0: 2 of its 2 runs failed" in out.stdout, out.stdout
    assert "no run of the unregularised baseline qualified" in out.stdout


def test_a_sweep_with_one_lambda_per_arm_prints_no_selection_and_no_accuracy(tmp_path, tiny_cifar_image_folder):
    """A registered sweep (replication 3) printed a selection table, test accuracy included, on finishing."""
    path = diverging_sweep(tmp_path, "[1.0e+30]")
    out = mulreg("sweep", str(path), env=tiny_env(tmp_path, tiny_cifar_image_folder))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    closing = out.stdout.partition("selection stage:")[2]
    assert "no selection: every arm has one λ" in closing, out.stdout
    assert "acc" not in closing and "qualified" not in closing
    rows = [line.split() for line in closing.splitlines() if line.split()[:1] in (["none"], ["mul"])]
    assert sorted(rows) == [["mul", "1.000000e+30", "0.0", "1", "1"], ["none", "0.000000e+00", "0.0", "1", "1"]]


def test_train_refuses_an_n_test_larger_than_the_pool_before_training(tmp_path, tiny_cifar_image_folder):
    """It evaluated on the 6 test images there are and recorded the 100 asked for."""
    args = train_args(tmp_path)
    args[args.index("--n-test") + 1] = "100"
    out = mulreg(*args, env=tiny_env(tmp_path, tiny_cifar_image_folder))
    assert_one_message(out, "n_test 100", "test images per class", "too few of cat, deer")
    assert not (tmp_path / "r.json").exists()
