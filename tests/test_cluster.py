"""The Ray executor on a real local Ray instance (2 CPUs, started once for this module): same runs
table as the local executor, complete runs never resubmitted, a killed worker's task retried."""

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from mulreg.config import ConfigError, RunConfig  # noqa: E402
from mulreg.engine.cluster import resources_for, run_groups_on_ray  # noqa: E402
from mulreg.engine.store import Store  # noqa: E402
from mulreg.engine.sweep import SweepSpec, plan_groups, run  # noqa: E402

BASE = dict(n_train=12, n_test=6, val_fraction=0.25, batch_size=4, max_epochs=2, init_scale=0.5, lr=0.01,
            device="cpu", early_stopping={"patience": 5})
GRID = {"penalty": ["none", "mul"], "lam": [1e-3], "seed": [1, 2]}  # 4 runs


def kill_once_when_armed() -> None:
    """Ray worker set-up hook: the first task that finds the marker file named by env
    MULREG_TEST_KILL_ONCE deletes it and SIGKILLs its own worker, so Ray has to retry the task; one that
    finds MULREG_TEST_RAISE_ONCE's marker raises an error no retry would cure."""
    import os
    import signal

    import mulreg.engine.train

    train_group = mulreg.engine.train.train_group

    def armed(name: str) -> bool:
        try:
            os.remove(os.environ[name])  # atomic: one task wins the marker
        except (FileNotFoundError, KeyError):
            return False
        return True

    def killed_once(*args, **kwargs):
        if armed("MULREG_TEST_RAISE_ONCE"):
            raise ZeroDivisionError("a fault inside the task")
        if armed("MULREG_TEST_KILL_ONCE"):
            os.kill(os.getpid(), signal.SIGKILL)
        return train_group(*args, **kwargs)

    mulreg.engine.train.train_group = killed_once  # the task imports it from mulreg.engine.train when it runs


@pytest.fixture(scope="module")
def kill_marker(tmp_path_factory) -> Path:
    """Touch this file to have the next Ray task's worker killed (`kill_once_when_armed`)."""
    return tmp_path_factory.mktemp("kill") / "kill-once"


@pytest.fixture(scope="module")
def raise_marker(kill_marker) -> Path:
    """Touch this file to have the next Ray task raise an error (`kill_once_when_armed`)."""
    return kill_marker.with_name("raise-once")


@pytest.fixture(scope="module")
def ray_instance(kill_marker, raise_marker):
    import os

    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])  # workers import this file
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"worker_process_setup_hook": kill_once_when_armed,
                          "env_vars": {"MULREG_TEST_KILL_ONCE": str(kill_marker), "PYTHONPATH": path,
                                       "MULREG_TEST_RAISE_ONCE": str(raise_marker)}})
    yield
    ray.shutdown()


@pytest.fixture
def tiny(tiny_cifar_image_folder, monkeypatch):
    monkeypatch.setenv("MULREG_DATA", str(tiny_cifar_image_folder))
    monkeypatch.delenv("MULREG_EXECUTOR", raising=False)
    return tiny_cifar_image_folder


def spec(store: Path, **fields) -> SweepSpec:
    return SweepSpec(base=BASE, grid=GRID, store=str(store), **fields)


def assert_same_runs(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same configs, metrics and provenance, but for when and how fast each was trained."""
    from mulreg.provenance import MEASURED

    a, b = (t.drop(columns=[c for c in MEASURED if c in t]).sort_values("key").reset_index(drop=True) for t in (a, b))
    assert set(a.columns) == set(b.columns) and list(a["key"]) == list(b["key"])
    for col in a.columns:
        if pd.api.types.is_numeric_dtype(a[col]) and not pd.api.types.is_bool_dtype(a[col]):
            np.testing.assert_allclose(a[col].to_numpy(float), b[col][a.index].to_numpy(float),
                                       rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=col)
        else:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), col


def stored_dirs(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "runs").iterdir())


def test_resources_for_device():
    cpu = [RunConfig.parse(BASE)]
    assert resources_for(cpu) == {"num_cpus": 1, "num_gpus": 0}
    assert resources_for([c.replace(device="cuda") for c in cpu])["num_gpus"] == 1
    auto = [c.replace(device="auto") for c in cpu]
    assert resources_for(auto, {"CPU": 8, "GPU": 2})["num_gpus"] == 1
    assert resources_for(auto, {"CPU": 8})["num_gpus"] == 0


def test_a_fraction_of_a_gpu_per_task_lets_stacks_share_one(tmp_path):
    cuda = [RunConfig.parse(BASE).replace(device="cuda")]
    assert resources_for(cuda, gpus=0.25) == {"num_cpus": 1, "num_gpus": 0.25}
    assert resources_for([RunConfig.parse(BASE)], gpus=0.25)["num_gpus"] == 0  # no GPU for CPU runs
    (tmp_path / "s.yaml").write_text("gpus_per_task: 2\n")
    with pytest.raises(ConfigError, match="gpus_per_task"):
        SweepSpec.from_yaml(tmp_path / "s.yaml")


def test_a_gpu_less_driver_plans_gpu_tasks_and_each_worker_sizes_its_own_stacks(monkeypatch):
    """group_key and the driver's planning never touch CUDA; the task splits into its worker's stacks."""
    from mulreg.engine import cluster, sizing, train

    configs = [RunConfig.parse(BASE).replace(device="cuda", seed=s) for s in range(1, 201)]
    groups = plan_groups(configs, size=cluster.task_size)  # this machine has no GPU: no DeviceError
    assert [len(g) for g in groups] == [sizing.MAX_STACK, 200 - sizing.MAX_STACK]
    bn = [c.replace(model={"batch_norm": True}) for c in configs[:3]]
    assert [len(g) for g in plan_groups(bn, size=cluster.task_size)] == [1, 1, 1]

    import torch

    from mulreg.core import devices

    calls = []  # the task body on a worker that has a GPU holding 3 runs per stack
    monkeypatch.setattr(devices, "resolve_device", lambda name: torch.device(name))
    monkeypatch.setattr(sizing, "stack_size", lambda config: 3)
    monkeypatch.setattr(train, "train_group", lambda group, **kw: calls.append((len(group), kw["slots"])) or group)
    out = cluster._train_task(configs[:8], "/nonexistent-store", "token", 1, {}, None)
    assert calls == [(8, 3)] and out == configs[:8]  # 8 runs through 3 slots, refilled as they stop


def test_ray_sweep_equals_local_and_skips_complete_runs(ray_instance, tiny, tmp_path):
    local = run(spec(tmp_path / "local", strategy="inline"), progress=False)
    on_ray = run(spec(tmp_path / "ray", executor="ray"), progress=False)
    assert len(local) == len(on_ray) == 4
    assert_same_runs(local, on_ray)

    # a second call trains nothing: same files, untouched, and no task submitted
    store = Store(tmp_path / "ray")
    mtimes = {k: (store.run_dir(k) / "metrics.json").stat().st_mtime_ns for k in on_ray["key"]}
    again = run(spec(tmp_path / "ray", executor="ray"), progress=False)
    assert_same_runs(on_ray, again)
    assert {k: (store.run_dir(k) / "metrics.json").stat().st_mtime_ns for k in on_ray["key"]} == mtimes
    groups = plan_groups(spec(tmp_path / "ray").configs())  # all complete, even if a caller passes them
    counts = run_groups_on_ray(groups, store, spec(tmp_path / "ray", executor="ray"), None)
    assert counts["submitted"] == 0 and counts["skipped"] == len(groups) == 4
    assert stored_dirs(tmp_path / "ray") == sorted(on_ray["key"])


def test_killed_worker_is_retried_and_every_run_stored_once(ray_instance, kill_marker, tiny, tmp_path):
    kill_marker.touch()
    sweep = spec(tmp_path / "ray", executor="ray", group_size=2)  # 2 tasks of 2 stacked runs
    table = run(sweep, progress=False)
    assert not kill_marker.exists()  # one task found it and SIGKILLed its worker; Ray ran that task again
    assert len(table) == 4 and table["key"].is_unique
    assert stored_dirs(tmp_path / "ray") == sorted(table["key"])  # no duplicates, no half-written temp dirs
    assert not list((tmp_path / "ray" / "checkpoints").iterdir())
    assert not list((tmp_path / "ray" / "claims").glob("ray-*.driver"))


def test_gpu_sweep_on_cpu_only_cluster_is_refused(ray_instance, tiny, tmp_path):
    group = [RunConfig.parse(BASE).replace(device="cuda")]
    with pytest.raises(ConfigError, match="no GPU"):
        run_groups_on_ray([group], Store(tmp_path / "s"), spec(tmp_path / "s", executor="ray"), None)


def test_executor_from_env_fills_only_what_the_sweep_leaves_unset(monkeypatch):
    from mulreg.engine.sweep import executor_from_env

    monkeypatch.setenv("MULREG_EXECUTOR", "ray")
    monkeypatch.setenv("MULREG_RAY_ADDRESS", "auto")
    picked = executor_from_env(SweepSpec(grid=GRID))  # e.g. a notebook's sweep under `make figures`
    assert (picked.executor, picked.ray_address) == ("ray", "auto") and picked.grid == GRID
    assert executor_from_env(SweepSpec(executor="local")).executor == "local"
    monkeypatch.setenv("MULREG_EXECUTOR", "slurm")
    with pytest.raises(ConfigError, match="executor"):
        executor_from_env(SweepSpec())


def test_task_checkpoints_into_the_store_only_where_the_driver_token_is_visible(tiny, tmp_path):
    from mulreg.engine.cluster import _train_task  # the task body, run here without Ray

    group = [RunConfig.parse({**BASE, "early_stopping": None})]  # 2 epochs, a checkpoint after epoch 1
    store = Store(tmp_path / "store", checkpoint_every=1)
    (store.root / "claims" / "ray-test.driver").touch()
    results = _train_task(group, str(store.root), "ray-test.driver", 1, {}, None)
    assert [r.config.key() for r in results] == [group[0].key()]
    assert store.checkpoint_path(group[0].key()).exists()  # shared store: the worker checkpoints there
    store.checkpoint_path(group[0].key()).unlink()
    _train_task(group, str(store.root), "ray-other.driver", 1, {}, None)  # a store of the same name elsewhere
    assert not list((store.root / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A Ray head started as docs/CLUSTER.md shows it, with token authentication (its own home
    and temp dir, so nothing of the user's Ray is touched); yields its "host:port"."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    import psutil

    home, ray_bin = tmp_path_factory.mktemp("head") / "home", str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token"}
    home.mkdir()
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--block",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        family = [head, *psutil.Process(head.pid).children(recursive=True)]
        for p in family:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                p.send_signal(signal.SIGKILL)
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("driver_env", [{}, {"RAY_AUTH_MODE": "token"}], ids=["no-mode", "mode-without-token"])
def test_a_cluster_that_refuses_the_token_is_named_as_such(token_cluster, tiny, tmp_path, driver_env):
    """The issue's case: `ray start --head` with token authentication, a driver without the token
    (Ray logs the refusal), or told the mode but given no token (Ray raises). One message that says
    authentication failed (not "no cluster"), exit code 2, no Ray log lines."""
    import os
    import subprocess
    import sys

    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "grid": GRID, "store": str(tmp_path / "store"),
                                    "executor": "ray", "ray_address": token_cluster}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    out = subprocess.run([sys.executable, "-m", "mulreg", "sweep", str(path)], capture_output=True, text=True,
                         env={**env, **driver_env, "HOME": str(tmp_path / "driver-home")}, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: ray_address: ") and out.stderr.count("\n") == 1, out.stderr
    assert "authentication failed" in out.stderr and "RAY_AUTH_MODE=token" in out.stderr
    assert not (tmp_path / "store" / "runs").exists() or not any((tmp_path / "store" / "runs").iterdir())


def test_a_ray_sweep_asking_for_more_images_than_the_data_holds_is_refused_before_any_task(tiny, tmp_path):
    """Issue 40: one pre-flight for every executor. On c51d60c the Ray path skipped it: the sweep trained
    on the 12 images there are, exited 0 and stored the 100 asked for."""
    from mulreg.core.data import DataError
    from mulreg.engine.sweep import run

    too_many = spec(tmp_path / "s", executor="ray").model_copy(update={"base": {**BASE, "n_train": 100}})
    with pytest.raises(DataError, match="n_train 100"):
        run(too_many, progress=False)
    assert not (tmp_path / "s" / "runs").exists() or not stored_dirs(tmp_path / "s")


def test_an_error_inside_a_ray_task_is_one_line_and_the_other_runs_are_stored(ray_instance, raise_marker, tiny,
                                                                             tmp_path, capsys):
    """Issue 40: on c51d60c an exception inside a task ended the sweep with a 107-line traceback."""
    import yaml

    from mulreg.__main__ import main

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "grid": GRID, "store": str(tmp_path / "s"), "executor": "ray"}))
    raise_marker.touch()
    assert main(["sweep", str(path)]) == 2
    said = capsys.readouterr().err
    assert "Traceback" not in said and said.count("error: ") == 1, said
    err = said.strip().splitlines()[-1]
    assert err.startswith("error: 1 of 4 Ray tasks failed") and "ZeroDivisionError: a fault inside the task" in err
    assert "rerun the sweep" in err and len(stored_dirs(tmp_path / "s")) == 3
    assert main(["sweep", str(path)]) == 0 and len(stored_dirs(tmp_path / "s")) == 4  # the rerun trains the rest


def http_server() -> tuple[int, Callable[[], None]]:
    """An HTTP server on a free local port: (its port, how to stop it)."""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], server.shutdown


def grpc_server() -> tuple[int, Callable[[], None]]:
    """A gRPC server with no service on a free local port: (its port, how to stop it)."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return port, lambda: server.stop(0)


@pytest.mark.parametrize("serve", [http_server, grpc_server], ids=["http", "grpc"])
def test_an_address_where_another_kind_of_server_listens_is_named_within_seconds(tiny, tmp_path, serve):
    """Issue 40: on c51d60c a Ray address where an HTTP server listened hung for more than 150 s; one where a
    gRPC server of another kind listened passed the gRPC probe and hung in ray.init (more than 240 s)."""
    import subprocess
    import sys
    import time

    import yaml

    port, stop = serve()
    address = f"127.0.0.1:{port}"
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "grid": GRID, "store": str(tmp_path / "s"), "executor": "ray",
                                    "ray_address": address}))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "mulreg", "sweep", str(path)], capture_output=True, text=True,
                         timeout=120)
    stop()
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert f"ray_address: '{address}' answers, but not as a Ray cluster" in out.stderr and "6379" in out.stderr
    assert time.monotonic() - started < 60
