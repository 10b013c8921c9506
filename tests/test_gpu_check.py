"""The offline GPU check (tools/gpu_check.sh, docs/PERFORMANCE.md "Offline GPU check"): its CPU dry
run goes end to end here, and `make gpu-wheels` fetches what the GPU image lacks, small enough to carry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_ITEMS = {"a", "b", "d", "e", "f"}  # the items with rows a CPU measures (c needs CUDA or compilation)


@pytest.mark.timeout(300)
def test_the_cpu_dry_run_goes_end_to_end(tmp_path):
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "PYTHON": sys.executable}
    start = time.time()
    done = subprocess.run(["bash", str(ROOT / "tools/gpu_check.sh"), "--cpu", "--short", "--work",
                           str(tmp_path / "work")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=280)
    took = time.time() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    markdown = (out / "gpu_check.md").read_text()
    assert "| item | setting | value | unit | status | notes |" in markdown
    assert "Data are synthetic" in markdown and report["data"].startswith("synthetic")
    assert report["environment"]["torch"] and report["environment"]["cuda available"] in (True, False)
    rows = [r for r in report["rows"] if r["item"] != "env"]
    gpu = [r for r in rows if r["setting"].startswith("cuda ")]
    cpu = [r for r in rows if r["setting"].startswith("cpu ")]
    assert {r["item"] for r in gpu} == set("abcdef")  # every item has its GPU rows, all skipped here
    assert all(r["status"] == "skipped: no CUDA" and r["value"] is None for r in gpu), gpu
    assert {r["item"] for r in cpu} == CPU_ITEMS and len(cpu) + len(gpu) == len(rows)
    bad = [r for r in cpu if r["status"] != "ok" or not isinstance(r["value"], (int, float))]
    assert not bad, f"CPU rows without a value ({took:.0f} s):\n" + "\n".join(map(str, bad))
    agreement = next(r for r in cpu if r["item"] == "a")
    assert agreement["value"] < 1e-5 and agreement["details"]["within_tests_tolerance"]  # one CPU, same numbers
    assert all(r["value"] > 0 for r in cpu if r["item"] in "bdef")
    assert all(f"| {r['item']}. " in markdown for r in rows)


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
