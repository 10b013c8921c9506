"""How mulreg installs (issue 21, point 6): pyproject.toml declares the version ranges the code
supports; requirements.lock (`make lock`) pins the exact, hashed set inside them that `make setup`
installs; and `pip install -e .` into an environment that already holds a torch within the range (a
CUDA one, say) keeps that torch instead of replacing it."""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
NAME = canonicalize_name(PROJECT["name"])


def lock_entries() -> dict[str, tuple[Requirement, list[str]]]:
    """requirements.lock as {name: (requirement, its hashes)}; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    entries = {}
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"an option line in the lock (machine-specific?): {line}"
        spec, *hashes = re.split(r"\s+--hash=", line)
        req = Requirement(spec)
        assert canonicalize_name(req.name) not in entries, f"{req.name} locked twice"
        entries[canonicalize_name(req.name)] = (req, hashes)
    return entries


def pin(req: Requirement) -> Version:
    """The version `name==version` pins (and fails on anything that is not an exact pin)."""
    (spec,) = req.specifier
    assert spec.operator == "==" and "*" not in spec.version, f"{req} is not an exact pin"
    return Version(spec.version)


def declared() -> list[Requirement]:
    """Every requirement pyproject.toml declares, its extras included, less mulreg's references to itself."""
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    reqs += [Requirement(r) for group in PROJECT["optional-dependencies"].values() for r in group]
    return [r for r in reqs if canonicalize_name(r.name) != NAME]


def test_lock_pins_every_declared_requirement_within_its_range_with_hashes():
    entries = lock_entries()
    assert len(entries) > 50  # the whole closure (dev extras and CUDA wheels included), not a stub
    for name, (req, hashes) in entries.items():
        pin(req)
        assert not req.url and not req.marker, f"{req}: the lock holds plain pins for Linux x86-64 only"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{name}: no valid --hash"
    assert NAME not in entries  # mulreg itself is installed from the work tree, after the lock
    for req in declared():
        if req.marker and not req.marker.evaluate({"python_version": "3.11", "sys_platform": "linux",
                                                   "platform_system": "Linux", "platform_machine": "x86_64"}):
            continue
        name = canonicalize_name(req.name)
        assert name in entries, f"{req} is declared in pyproject.toml but not locked"
        assert req.specifier.contains(pin(entries[name][0]), prereleases=True), \
            f"lock pins {entries[name][0]}, outside the declared {req}"


def test_torch_and_torchvision_ranges_hold_the_lock_and_the_oldest_supported_release():
    entries = lock_entries()
    ranges = {canonicalize_name(r.name): r.specifier for r in declared()}
    for name, oldest in (("torch", "2.11.0"), ("torchvision", "0.26.0")):
        assert ranges[name].contains(pin(entries[name][0])), f"locked {name} outside {ranges[name]}"
        assert ranges[name].contains(oldest), f"{name} {oldest} (the GPU machine's) outside {ranges[name]}"
        assert any(s.operator in ("<", "<=") for s in ranges[name]), f"{name} needs an upper bound"
    assert not ranges["torch"].contains("2.5.0")


def test_lock_names_no_machine_specific_source():
    text = LOCK.read_text()
    for marker in ("--index-url", "--extra-index-url", "--find-links", "file:", "/opt/", "/tmp/", str(ROOT)):
        assert marker not in text, f"requirements.lock names {marker!r}"
    assert "make lock" in text.splitlines()[1]  # its header says how to make it again


# ---------------------------------------------------------------- pip install -e . keeps a torch in range


def fake_distribution(site_packages: Path, name: str, version: str) -> None:
    """An installed distribution `name` `version` with no files but its metadata and an importable stub."""
    info = site_packages / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("test_install\n")
    (info / "RECORD").write_text("")
    (site_packages / name).mkdir()
    (site_packages / name / "__init__.py").write_text(f"__version__ = {version!r}\n")


def env_with_torch(tmp_path: Path, torch: str, torchvision: str) -> Path:
    """A fresh venv whose own site-packages hold a fake torch and torchvision; behind them (a .pth)
    the site-packages of the interpreter running the tests, so every other dependency is already
    installed and pip has nothing to decide but torch. Returns the venv's python."""
    venv = tmp_path / f"venv-torch-{torch}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())
    fake_distribution(own, "torch", torch)
    fake_distribution(own, "torchvision", torchvision)
    (own / "zz_base.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    seen = subprocess.run([str(python), "-c", "import importlib.metadata as m, torch; "
                           "print(m.version('torch'), m.version('torchvision'), torch.__version__)"],
                          check=True, capture_output=True, text=True).stdout.split()
    assert seen == [torch, torchvision, torch], f"the fake torch does not shadow the real one: {seen}"
    return python


def planned_installs(python: Path, tmp_path: Path) -> dict[str, str]:
    """What `pip install -e .` would install into `python`'s environment, {name: version}, from a
    copy of the project's metadata (pyproject.toml, README.md, an empty package)."""
    project = tmp_path / "project"
    (project / "lib" / "mulreg").mkdir(parents=True, exist_ok=True)
    (project / "lib" / "mulreg" / "__init__.py").write_text("")
    for f in ("pyproject.toml", "README.md"):
        (project / f).write_text((ROOT / f).read_text())
    report = tmp_path / f"report-{python.parent.parent.name}.json"
    # This interpreter's pip (new enough for --python, --report and index metadata) acting on the venv;
    # setuptools for the editable build comes from the base site-packages.
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--dry-run",
           "--no-build-isolation", "--report", str(report), "-e", str(project)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_pip_install_e_keeps_a_torch_within_the_range(tmp_path):
    installs = planned_installs(env_with_torch(tmp_path, "2.11.0", "0.26.0"), tmp_path)
    assert NAME in installs  # the report is about this project
    assert "torch" not in installs and "torchvision" not in installs, installs


@pytest.mark.slow
def test_pip_install_e_replaces_a_torch_outside_the_range(tmp_path):
    installs = planned_installs(env_with_torch(tmp_path, "2.5.0", "0.20.0"), tmp_path)
    ranges = {canonicalize_name(r.name): r.specifier for r in declared()}
    for name in ("torch", "torchvision"):
        assert name in installs, f"pip keeps {name} outside {ranges[name]}: {installs}"
        assert ranges[name].contains(installs[name]), installs[name]


# ---------------------------------------------------------------- make setup installs the locked set


def made_by_make_setup() -> str | None:
    """Why the running environment cannot be compared with the lock, or None when it can."""
    stamp = ROOT / ".venv" / ".installed"
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        return "not running in the project's .venv"
    if not stamp.exists():
        return ".venv was not made by make setup"
    if stamp.stat().st_mtime < max(LOCK.stat().st_mtime, PYPROJECT.stat().st_mtime):
        return "requirements.lock or pyproject.toml changed since make setup: run it again"
    return None


@pytest.mark.skipif(made_by_make_setup() is not None, reason=str(made_by_make_setup()))
def test_make_setup_installed_exactly_the_locked_set():
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"],
                            check=True, capture_output=True, text=True).stdout
    installed = {canonicalize_name(d["name"]): d["version"] for d in json.loads(listed)}
    installed.pop("pip")  # the installer, upgraded by make setup, not a dependency
    assert installed.pop(NAME) == PROJECT["version"]
    locked = {name: str(pin(req)) for name, (req, _) in lock_entries().items()}
    assert {n: v for n, v in installed.items() if locked.get(n) != v} == {}, "installed but not locked"
    assert {n: v for n, v in locked.items() if installed.get(n) != v} == {}, "locked but not installed"
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, f"the locked set is not self-consistent:\n{check.stdout}"
