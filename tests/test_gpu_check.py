"""The offline GPU check (gpu_check/, docs/PERFORMANCE.md "Offline GPU check"): its CPU dry run goes end
to end here, a machine where CUDA does not start stops it at once, a worker killed with a cut-off
library in the compile cache does not poison the next, the engine is read by import, the first pass
holds the rows that matter most, and `make gpu-wheels` fetches what the GPU image lacks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from argparse import Namespace
from importlib import metadata
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # gpu_check is run from the repository root, not installed

from gpu_check import environment, plan  # noqa: E402
from gpu_check.parent import Parent  # noqa: E402

CPU_ITEMS = {"a", "b", "d", "e", "f"}  # the items with rows a CPU measures (c needs CUDA or compilation)
SCRIPT = ROOT / "gpu_check/gpu_check.sh"


def check(tmp_path, *args, timeout=280):
    env = os.environ | {"OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    start = time.time()
    done = subprocess.run(["bash", str(SCRIPT), *args, "--work", str(tmp_path / "work"), "--cache",
                           str(tmp_path / "cache")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done, time.time() - start


@pytest.mark.timeout(300)
def test_the_cpu_dry_run_goes_end_to_end(tmp_path):
    done, took = check(tmp_path, "--cpu", "--short")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out/gpu_check.json").read_text())
    markdown = (tmp_path / "out/gpu_check.md").read_text()
    assert "| item | setting | value | unit | status | notes |" in markdown
    assert "Data are synthetic" in markdown and report["data"].startswith("synthetic")
    assert report["environment"]["torch"] and report["environment"]["cuda available"] in (True, False)
    assert report["environment"]["mulreg.engine reads memory_format"] is True
    rows = [r for r in report["rows"] if r["item"] != "env"]
    gpu = [r for r in rows if r["setting"].startswith("cuda ")]
    cpu = [r for r in rows if r["setting"].startswith("cpu ")]
    assert {r["item"] for r in gpu} == set("abcdef")  # every item has its GPU rows, all skipped here
    assert all(r["status"] == "skipped: no CUDA" and r["value"] is None for r in gpu), gpu
    assert {r["item"] for r in cpu} == CPU_ITEMS and len(cpu) + len(gpu) == len(rows)
    # the sweep's row may stop at its allowance on a loaded machine: then it says so and extrapolates
    bad = [r for r in cpu if r["status"] not in ("ok", "partial" * (r["item"] == "f"))
           or not isinstance(r["value"], (int, float))]
    assert not bad, f"CPU rows without a value ({took:.0f} s):\n" + "\n".join(map(str, bad))
    agreement = next(r for r in cpu if r["item"] == "a")
    assert agreement["value"] < 1e-5 and agreement["details"]["within_tests_tolerance"]  # one CPU, same numbers
    assert all(r["value"] > 0 for r in cpu if r["item"] in "bdef")
    assert not any("does not read memory_format" in r["notes"] for r in cpu)
    footprint = next(r for r in cpu if r["item"] == "d")
    assert "leaves out evaluation activations" in footprint["notes"] and "cuDNN" in footprint["notes"]
    assert all(f"| {r['item']}. " in markdown for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA does not start")
@pytest.mark.timeout(120)
def test_a_check_that_cannot_start_cuda_stops_at_once_and_says_why(tmp_path):
    done, took = check(tmp_path, "--short", timeout=110)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "CUDA did not start: torch.cuda.is_available() is False" in done.stderr
    assert took < 60, f"{took:.0f} s: the check should stop as soon as a worker has imported torch"
    report = json.loads((tmp_path / "out/gpu_check.json").read_text())
    assert report["device"].startswith("none: CUDA did not start")
    assert report["rows"] and all(r["status"].startswith("skipped: CUDA did not start") for r in report["rows"])
    assert not list((tmp_path / "work").glob("store-*"))  # nothing was measured


COMPILE = """
import sys, time, torch
f = torch.compile(lambda x: (x.sin() * 2 + 1).relu())
print("compiled", float(f(torch.ones(8)).sum()), flush=True)
time.sleep(float(sys.argv[1]))
"""


def _compile(parent: Parent, hold_s: float) -> subprocess.Popen:
    return parent.spawn([sys.executable, "-c", COMPILE, str(hold_s)])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_worker_killed_with_a_cut_off_library_in_the_cache_does_not_poison_the_next(tmp_path):
    """Inductor keeps its compiled libraries in an on-disk cache that the workers share. A worker
    killed while it writes one leaves it cut off, and every later compiled row that loads it fails
    (`ImportError: ... file too short`). Here the first worker compiles, its libraries are cut to
    0 bytes (what a kill mid-write leaves), and the parent kills it: the next worker compiles afresh."""
    args = Namespace(out=str(tmp_path / "out"), work=str(tmp_path / "work"), cache=str(tmp_path / "cache"),
                     items="b", budget=60.0, cpu=True, short=True, isolate=False)
    parent = Parent(args)
    with open(tmp_path / "worker.log", "a") as parent.log:
        first = _compile(parent, 300)
        deadline = time.time() + 300
        while "compiled" not in (tmp_path / "worker.log").read_text() and time.time() < deadline:
            assert first.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(1)
        libraries = list(parent.cache_dir().rglob("*.so"))
        assert libraries, "the first worker compiled nothing into the shared cache"
        for so in libraries:
            so.write_bytes(b"")
        poisoned = tmp_path / "poisoned"
        shutil.copytree(parent.cache_dir(), poisoned)
        parent.kill(first)
        assert not list(parent.cache_dir().rglob("*.so")) if parent.cache_dir().exists() else True
        second = _compile(parent, 0)
        assert second.wait(timeout=300) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert (tmp_path / "worker.log").read_text().count("compiled ") == 2
    # the hazard is real: a worker that kept the poisoned cache fails
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(poisoned / "inductor"),
                        "TRITON_CACHE_DIR": str(poisoned / "triton")}
    kept = subprocess.run([sys.executable, "-c", COMPILE, "0"], env=env, capture_output=True, text=True, timeout=300)
    assert kept.returncode != 0 and "file too short" in kept.stdout + kept.stderr


def test_the_engine_is_read_by_import_wherever_its_modules_live():
    assert environment.engine_reads("memory_format")  # engine/train.py reads config.memory_format
    assert environment.engine_reads("max_epochs")
    assert not environment.engine_reads("no_such_field_anywhere")
    footprint, stack_size, where = environment.sizing()
    assert where == "mulreg.engine.sizing" and callable(footprint) and callable(stack_size)


def test_rows_say_how_large_an_evaluation_chunk_is():
    assert environment.eval_chunk(128) == (32_768, "max(256, 4096 // 128) · 128 = 32,768")
    assert environment.eval_chunk(1)[0] == 4096 and environment.eval_chunk(16)[0] == 4096


def test_the_first_pass_holds_what_matters_most_with_a_cold_compile_cache():
    assert sum(plan.UNITS.values()) == pytest.approx(1.0)
    order = list(plan.UNITS)
    assert order.index("f") < min(order.index(u) for u in order if u.endswith("+") or u == "e")
    first = [r["setting"] for u in order if u not in ("env", "e") and not u.endswith("+")
             for r in plan.plan(u, "cuda", False)]
    for wanted in ("cuda eager vs plain loop", "cuda eager K=sweep", "cuda compiled K=sweep",
                   "cuda compiled reduce-overhead K=sweep", "cuda eager K=sweep: peak", "cuda params/quick"):
        assert any(s.startswith(wanted) for s in first), (wanted, first)
    later = [r["setting"] for u in order if u.endswith("+") for r in plan.plan(u, "cuda", False)]
    assert not set(first) & set(later) and any("K=128" in s for s in later)
    every = {r["setting"] for item in "abcdef" for r in plan.item_rows(item, "cuda", False)}
    assert every == set(first) | set(later) | {r["setting"] for r in plan.plan("e", "cuda", False)}
    assert plan.units_for(["b+", "e"]) == ["env", "b+", "e"] and plan.units_for(["b"]) == ["env", "b", "b+"]


def test_the_report_names_the_follow_up_call_for_what_had_no_time(tmp_path):
    from gpu_check.report import Report

    report = Report(tmp_path, Namespace(cpu=False, short=False, budget=480.0, items="a,b"), "cuda")
    for unit in ("a", "b", "b+"):
        report.set_plan(plan.plan(unit, "cuda", False), unit)
    report.settle("a", "ok")
    report.settle("b", "ok")
    report.settle("b+", "skipped: allowance spent (3 s left, ~20 s needed)")
    assert report.follow_up() == "bash gpu_check/gpu_check.sh --items b+ --budget SECONDS"
    report.write()
    assert "Follow-up call" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpu_wheels_are_what_the_image_lacks_and_small_enough_to_carry(tmp_path):
    """Needs a reachable package registry (skipped without one) and the project's .venv."""
    if not (ROOT / ".venv/bin/python").exists():
        pytest.skip("needs the project's .venv (make setup)")
    wheels = tmp_path / "whl"
    done = subprocess.run(["make", "-o", ".venv/.installed", "gpu-wheels", f"WHEELS={wheels}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)  # -o: never reinstall the venv here
    offline = ("Name or service not known", "Failed to establish a new connection", "Network is unreachable",
               "Temporary failure in name resolution")
    if done.returncode != 0 and any(s in done.stdout + done.stderr for s in offline):
        pytest.skip("needs a reachable package registry")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(wheels.glob("*.whl"))
    names = {f.name.split("-")[0].lower() for f in files}
    assert names == {"pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions"}
    assert sum(f.stat().st_size for f in files) < 64 * 2**20
    assert any(re.fullmatch(r"pydantic_core-[\d.]+-cp312-cp312-.*manylinux.*x86_64\.whl", f.name) for f in files)
    assert not any(f.name.lower().startswith(("torch", "nvidia", "triton")) for f in files)
    for f in files:  # the versions this venv runs
        name, version = f.name.split("-")[:2]
        assert metadata.version(name) == version, f.name


@pytest.mark.timeout(200)
def test_a_check_that_measured_nothing_fails(tmp_path):
    """Issue 40: a worker that cannot import torch leaves every row skipped or failed; the check exited 0
    (green, nothing measured) on c51d60c, and now says so and exits 4."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('no torch in this environment')\n")
    env = os.environ | {"OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "PYTHONPATH": str(fake)}
    done = subprocess.run(["bash", str(SCRIPT), "--cpu", "--short", "--items", "a", "--work", str(tmp_path / "work"),
                           "--cache", str(tmp_path / "cache")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no row was measured (every one skipped or failed)" in done.stderr
