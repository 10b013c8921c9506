"""`scripts/replication3.sh`: the stores of replication 3 carried in carry/ so that a lost machine costs
epochs, not a stage (`carry`), and restored before the registered sweeps resume (`start`). Its layout is
rebuilt in a temporary folder (the repository beside the worktree `../rep3`, whose `make setup` and Python
are stand-ins that log their calls), so the real carry/, record/ and worktree are never touched."""

import csv
import shutil
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replication3.sh"
STORE = "quick-replication3-horizon"
STOPPING = "quick-replication3"
XEON = "Intel(R) Xeon(R) Processor"  # a host name as /proc/cpuinfo gives it, brackets and all
FAKE_PYTHON = "#!/bin/bash\necho \"$*\" >> calls.txt\n"  # the worktree's Python: each sweep's arguments


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts")
    store = tmp_path / "rep3" / "results" / STORE
    (store / "runs" / "finished").mkdir(parents=True)
    (store / "runs" / "finished" / "history.parquet").write_bytes(b"history")
    (store / "runs" / ".writing-123-456").mkdir()  # a run folder being written (the store's temporary name)
    (store / "checkpoints").mkdir()
    (store / "checkpoints" / "inflight.pt").write_bytes(b"state")
    (store / "checkpoints" / "inflight.tmp789").write_bytes(b"half")  # a checkpoint being written
    return repo, store


def _carry(repo: Path) -> list[dict]:
    done = subprocess.run(["bash", str(repo / "scripts" / "replication3.sh"), "carry"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with open(repo / "carry" / "intervals.csv") as rows:
        return list(csv.DictReader(rows))


def test_carry_copies_finished_runs_and_checkpoints_but_nothing_being_written(tmp_path):
    repo, _ = _layout(tmp_path)
    rows = _carry(repo)
    carried = repo / "carry" / STORE
    assert sorted(p.name for p in (carried / "runs").iterdir()) == ["finished"]
    assert (carried / "runs" / "finished" / "history.parquet").read_bytes() == b"history"
    assert sorted(p.name for p in (carried / "checkpoints").iterdir()) == ["inflight.pt"]
    assert [(r["event"], r["store"], r["runs"], r["checkpoints"]) for r in rows] == [("carry", STORE, "1", "1")]
    assert rows[0]["host"]  # the host beside every interval


def test_a_second_carry_replaces_the_first_a_finished_runs_checkpoint_goes(tmp_path):
    repo, store = _layout(tmp_path)
    _carry(repo)
    (store / "runs" / "inflight").mkdir()
    (store / "checkpoints" / "inflight.pt").unlink()  # the run finished: the store dropped its checkpoint
    rows = _carry(repo)
    carried = repo / "carry" / STORE
    assert sorted(p.name for p in (carried / "runs").iterdir()) == ["finished", "inflight"]
    assert not list((carried / "checkpoints").iterdir())
    assert [(r["runs"], r["checkpoints"]) for r in rows] == [("1", "1"), ("2", "0")]


def test_the_script_refuses_an_unknown_command_in_one_line(tmp_path):
    repo, _ = _layout(tmp_path)
    done = subprocess.run(["bash", str(repo / "scripts" / "replication3.sh"), "push"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "usage: scripts/replication3.sh start|carry|land|times"


def _fake_worktree(tmp_path: Path) -> Path:
    worktree = tmp_path / "rep3"
    (worktree / ".venv" / "bin").mkdir(parents=True)
    (worktree / "Makefile").write_text("setup:\n\t@true\n")
    python = worktree / ".venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return worktree


def _start(repo: Path, worktree: Path) -> list[str]:
    done = subprocess.run(["bash", str(repo / "scripts" / "replication3.sh"), "start"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    deadline = time.time() + 30
    while time.time() < deadline and "replication3_sweep done" not in _read(worktree / "replication3.log"):
        time.sleep(0.05)
    return _read(worktree / "calls.txt").splitlines()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_start_restores_the_carried_store_and_runs_both_sweeps_in_the_registered_order(tmp_path):
    repo, store = _layout(tmp_path)
    _carry(repo)
    shutil.rmtree(tmp_path / "rep3")  # a fresh machine: the worktree and its results are gone
    worktree = _fake_worktree(tmp_path)
    calls = _start(repo, worktree)
    assert calls == ["-m mulreg sweep params/quick/replication3_horizon_sweep.yaml --record",
                     "-m mulreg sweep params/quick/replication3_sweep.yaml --record"]
    restored = worktree / "results" / STORE
    assert (restored / "runs" / "finished" / "history.parquet").read_bytes() == b"history"
    assert (restored / "checkpoints" / "inflight.pt").read_bytes() == b"state"
    with open(repo / "carry" / "intervals.csv") as rows:
        starts = [(r["event"], r["store"], r["runs"]) for r in csv.DictReader(rows) if r["event"] != "carry"]
    assert starts == [("start", STORE, "1"), ("queued", STOPPING, "0")]  # the stopping sweep waits for the horizon


def test_start_trains_no_store_that_has_landed_in_the_record(tmp_path):
    repo, _ = _layout(tmp_path)
    _carry(repo)
    shutil.rmtree(tmp_path / "rep3")
    (repo / "record" / STORE / "selection").mkdir(parents=True)  # the horizon stage landed
    worktree = _fake_worktree(tmp_path)
    assert _start(repo, worktree) == ["-m mulreg sweep params/quick/replication3_sweep.yaml --record"]
    assert not (worktree / "results" / STORE).exists()
    with open(repo / "carry" / "intervals.csv") as rows:
        assert [(r["event"], r["store"]) for r in csv.DictReader(rows)][-1] == ("start", STOPPING)


def test_land_copies_each_stage_the_sweep_wrote_removes_its_carried_store_and_rebuilds_the_record(tmp_path):
    repo, _ = _layout(tmp_path)
    _carry(repo)
    written = tmp_path / "rep3" / "record" / STORE / "selection"  # the registered sweep wrote the whole stage
    written.mkdir(parents=True)
    (written / "runs.parquet").write_bytes(b"runs")
    (repo / "record" / STOPPING / "selection").mkdir(parents=True)  # landed before: left as it is
    (tmp_path / "rep3" / "record" / STOPPING / "selection").mkdir(parents=True)
    (tmp_path / "rep3" / "record" / STOPPING / "selection" / "runs.parquet").write_bytes(b"again")
    (repo / ".venv" / "bin").mkdir(parents=True)  # the checkout's Python: logs the manifest, README and tests
    (repo / ".venv" / "bin" / "python").write_text(FAKE_PYTHON)
    (repo / ".venv" / "bin" / "python").chmod(0o755)
    (tmp_path / "rep3" / "replication3.log").write_text(  # the sweeps' own lines, progress bars between them
        "replication3_horizon_sweep from 2026-12-07T02:43:37Z\nepochs: 99%\repochs: 100%\r"
        "replication3_horizon_sweep done 2026-12-07T04:55:01Z\n"
        "replication3_sweep from 2026-12-07T04:55:02Z\nepochs: 1%")
    done = subprocess.run(["bash", str(repo / "scripts" / "replication3.sh"), "land"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"landed {STORE}/selection"]
    with open(repo / "carry" / "intervals.csv") as rows:
        ended = [(r["utc"], r["event"], r["store"]) for r in csv.DictReader(rows)][1:]
    assert ended == [("2026-12-07T04:55:01Z", "done", STORE), ("2026-12-07T04:55:02Z", "start", STOPPING)]
    assert (repo / "record" / STORE / "selection" / "runs.parquet").read_bytes() == b"runs"
    assert not list((repo / "record" / STOPPING / "selection").iterdir())
    assert not (repo / "carry" / STORE).exists()  # `start` trains nothing of it again
    calls = _read(repo / "calls.txt").splitlines()
    assert [c.split()[0] for c in calls] == ["-c", "-m", "-m"] and "write_manifest()" in calls[0]
    assert calls[1:] == ["-m mulreg readme", "-m pytest -q tests/test_record.py"]


def test_times_sums_each_execution_per_host_and_starts_a_new_one_after_a_lost_machine(tmp_path):
    repo, _ = _layout(tmp_path)
    (repo / "carry").mkdir()
    host_a, host_b = f'"{XEON}"', '"AMD EPYC"'
    (repo / "carry" / "intervals.csv").write_text("\n".join([
        "utc,event,host,store,runs,checkpoints",
        f"2026-12-06T16:00:00Z,start,{host_a},{STORE},0,0",
        f"2026-12-06T17:30:00Z,lost,{host_a},{STORE},3,",  # execution 1: 1:30, lost
        f"2026-12-06T18:00:00Z,start,{host_a},{STORE},0,0",
        f"2026-12-06T18:00:00Z,queued,{host_a},{STOPPING},0,0",
        f"2026-12-06T18:40:00Z,carry,{host_a},{STORE},2,1",
        f"2026-12-06T19:00:00Z,carry,{host_a},{STORE},3,1",  # 1:00 on A; what A trained after 19:00 is lost
        f"2026-12-06T20:00:00Z,start,{host_b},{STORE},3,1",
        f"2026-12-06T21:15:00Z,done,{host_b},{STORE},0,0",  # 1:15 on B
        f"2026-12-06T21:15:00Z,start,{host_b},{STOPPING},0,0",  # open: not carried yet
    ]) + "\n")
    done = subprocess.run(["bash", str(repo / "scripts" / "replication3.sh"), "times"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{STORE}, execution 1 (lost with its machine, trained again): 1:30 in 1 span ({XEON} 1:30)",
        f"{STORE}, execution 2: 2:15 in 2 spans ({XEON} 1:00, AMD EPYC 1:15)",
        f"{STOPPING}, execution 1: 0:00 in 1 span (AMD EPYC 0:00); training since 2026-12-06T21:15Z, not carried yet"]
