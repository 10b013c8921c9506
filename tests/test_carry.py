"""`scripts/replication3.sh carry`: the stores of replication 3 copied into carry/ so that a lost machine
costs epochs, not a stage. Its layout is rebuilt here in a temporary folder (the repository beside the
worktree `../rep3`), so the real carry/ is never touched."""

import csv
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replication3.sh"
STORE = "quick-replication3-horizon"


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
    assert done.returncode == 2 and done.stderr.strip() == "usage: scripts/replication3.sh start|carry|land"
