"""The run store: round trip, atomic completion, claims, and resuming after SIGKILL."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mulreg.config import RunConfig
from mulreg.engine.store import Store
from mulreg.engine.sweep import SweepSpec
from mulreg.engine.train import train

BASE = dict(n_train=12, n_test=6, val_fraction=0.25, batch_size=4, init_scale=0.5, lr=0.01, device="cpu",
            early_stopping=None)


@pytest.fixture
def tiny(tiny_cifar_image_folder, monkeypatch):
    monkeypatch.setenv("MULREG_DATA", str(tiny_cifar_image_folder))
    return tiny_cifar_image_folder


def test_round_trip(tiny, tmp_path):
    result = train(RunConfig.parse(BASE, max_epochs=2, penalty="sum", lam=1e-3), progress=False)
    store = Store(tmp_path)
    key = result.config.key()
    assert not store.is_complete(key)
    store.save(result)
    back = store.load(key)
    assert store.is_complete(key) and back.config == result.config
    assert back.stop_reason == result.stop_reason and back.metrics["test_acc"] == result.metrics["test_acc"]
    assert back.history.equals(result.history)
    assert all(torch.equal(back.state_dict[k], v) for k, v in result.state_dict.items())
    right = back.test_correct  # which test images each epoch classified right, bit for bit after the round trip
    assert right.shape == (2, len(result.test_margins)) and right.dtype == bool and (right == result.test_correct).all()
    assert right.mean(axis=1) == pytest.approx(result.history["test_acc"].to_numpy())
    table, hist = store.load_runs(histories=True)
    assert table.loc[0, "key"] == key and table.loc[0, "lam"] == 1e-3 and "early_stopping" in table
    assert len(hist) == 2 and set(hist["key"]) == {key}


def test_half_written_run_is_not_complete(tiny, tmp_path):
    store = Store(tmp_path)
    key = RunConfig.parse(BASE).key()
    (store.root / "runs" / f".{key}-partial").mkdir()  # what a killed save leaves behind
    store.run_dir(key).mkdir()  # a folder without metrics.json
    assert not store.is_complete(key) and store.load_runs().empty


def test_claims_exclude_other_processes(tmp_path):
    store = Store(tmp_path)
    code = ("import sys, time; from mulreg.engine.store import Store\n"
            "with Store(sys.argv[1]).claim(['a', 'b']) as got:\n"
            "    print(','.join(got), flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "a,b"
        with store.claim(["a", "b", "c"]) as got:
            assert got == ["c"]
    finally:
        holder.kill()
        holder.wait()
    with store.claim(["a"]) as got:  # a killed holder releases its claims
        assert got == ["a"]


KILLED_EPOCHS = 150  # long enough to be killed mid-run (the first checkpoint comes after epoch 1)


def _sweep_file(path, store, base=None, **overrides):
    base = {**BASE, "max_epochs": KILLED_EPOCHS, "penalty": "mul", "lam": 1e-6, **(base or {})}
    spec = SweepSpec(base=base, grid={"seed": [3]},
                     store=str(store), strategy="inline", checkpoint_every=1, **overrides)
    path.write_text(spec.model_dump_json())  # JSON is YAML
    return spec


def _sweep_cli(spec_file, **kwargs):
    kwargs = {"stderr": subprocess.DEVNULL} | kwargs
    return subprocess.Popen([sys.executable, "-m", "mulreg", "sweep", str(spec_file)],
                            stdout=subprocess.DEVNULL, env=os.environ.copy(), **kwargs)


@pytest.mark.parametrize("options", [{}, {"model": {"batch_norm": True}, "augment": True},
                                     {"model": {"weight_norm": True, "dropout": 0.2}}],
                         ids=["plain", "bn+aug", "wn+dropout"])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tiny, tmp_path, options):
    spec = _sweep_file(tmp_path / "killed.yaml", tmp_path / "killed", options)
    _sweep_file(tmp_path / "fresh.yaml", tmp_path / "fresh", options)
    store = Store(tmp_path / "killed")
    key = spec.configs()[0].key()
    proc = _sweep_cli(tmp_path / "killed.yaml")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not store.checkpoint_path(key).exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.checkpoint_path(key).exists(), "the sweep never wrote a checkpoint"
    assert not store.is_complete(key), "the run finished before it could be killed: make it longer"
    saved_epoch = torch.load(store.checkpoint_path(key), weights_only=False)["epoch"]
    assert 0 < saved_epoch < KILLED_EPOCHS

    assert store.checkpoints().epoch(key) == saved_epoch
    resumed = _sweep_cli(tmp_path / "killed.yaml", stderr=subprocess.PIPE, text=True)
    log = resumed.communicate()[1]
    assert resumed.returncode == 0  # resumes from the checkpoint
    assert f" {saved_epoch}/{KILLED_EPOCHS} [" in log  # the epochs bar starts where the run stopped, not at 0
    assert _sweep_cli(tmp_path / "fresh.yaml").wait() == 0  # the same run, never interrupted
    a, b = store.load(key), Store(tmp_path / "fresh").load(key)
    assert a.metrics["epochs"] == b.metrics["epochs"] == KILLED_EPOCHS
    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.test_correct.shape == (KILLED_EPOCHS, len(a.test_margins)) and (a.test_correct == b.test_correct).all()
    assert not store.checkpoint_path(key).exists()
    assert a.provenance["first_started"] < a.provenance["started"]  # the killed process began it, the second ended it


def test_every_run_records_its_provenance(tmp_path, tiny_cifar_image_folder):
    """Commit, versions, device and times are stored with the run and carried by the runs table."""
    import subprocess

    from mulreg import __version__
    from mulreg.config import RunConfig
    from mulreg.engine.train import train
    from mulreg.provenance import provenance_note

    cfg = RunConfig(device="cpu", init_scale=1.0, lr=0.01, batch_size=4, max_epochs=1, n_train=8,
                    early_stopping=None)
    store = Store(tmp_path / "store")
    store.save(train(cfg, root=tiny_cifar_image_folder, progress=False))
    row = store.load_runs().iloc[0]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert row["git_commit"] == (head or None) and row["mulreg_version"] == __version__
    assert row["torch"] == torch.__version__ and row["device_name"]
    assert row["wall_seconds"] > 0 and row["train_images_per_second"] > 0 and row["finished"] >= row["started"]
    assert store.load(cfg.key()).provenance["git_commit"] == row["git_commit"]
    note = provenance_note(store.load_runs())
    assert "WARNING" not in note and note.startswith("1 run, ") and f"trained {row['finished'][:10]}" in note
    mixed = pd.concat([store.load_runs(), store.load_runs().assign(git_commit="0" * 40)])
    assert provenance_note(mixed).startswith("WARNING")



def test_the_provenance_note_warns_only_when_the_code_that_trained_differs(tmp_path, monkeypatch):
    """Runs from two commits that differ only outside the training code (here: in report/) get a
    note, not a warning; a change in core/, an unknown commit or more than one device is said."""
    from mulreg import provenance

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path), *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    commits = []
    git("init", "-q")
    for path, text in (("lib/mulreg/core/m.py", "x = 1"), ("lib/mulreg/report/r.py", "a plot"),
                       ("lib/mulreg/core/m.py", "x = 2")):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
        git("add", path)
        git("commit", "-qm", path)
        commits.append(git("rev-parse", "HEAD"))
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)
    runs = pd.DataFrame({"git_commit": commits[:2], "git_dirty": False, "device_name": "cpu A",
                         "finished": "2026-12-03T14:00:00+0000"})
    note = provenance.provenance_note(runs)
    assert not note.startswith("WARNING") and "the code that trained is unchanged" in note
    assert provenance.provenance_note(runs.assign(git_commit=commits[1:])).startswith("WARNING")
    assert provenance.provenance_note(runs.assign(git_commit=[commits[0], None])).startswith("WARNING")
    mixed_hosts = provenance.provenance_note(runs.assign(device_name=["cpu A", "cpu B"]))
    assert not mixed_hosts.startswith("WARNING") and "More than one device" in mixed_hosts

def _stored_run(tmp_path, root) -> tuple[Store, RunConfig]:
    cfg = RunConfig(device="cpu", init_scale=1.0, lr=0.01, batch_size=4, max_epochs=1, n_train=8,
                    early_stopping=None)
    store = Store(tmp_path / "store")
    store.save(train(cfg, root=root, progress=False))
    return store, cfg


def test_an_unreadable_run_is_reported_skipped_and_stored_again(tmp_path, tiny_cifar_image_folder, capsys):
    store, cfg = _stored_run(tmp_path, tiny_cifar_image_folder)
    key = cfg.key()
    metrics = store.run_dir(key) / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])  # truncated
    fresh = Store(store.root)
    assert not fresh.is_complete(key)
    assert "metrics.json is not valid JSON" in fresh.unreadable()[key]
    with pytest.warns(UserWarning, match=f"run {key} at .* cannot be read"):
        assert fresh.load_runs().empty
    fresh.save(train(cfg, root=tiny_cifar_image_folder, progress=False))  # what the next sweep does
    assert fresh.is_complete(key) and len(Store(store.root).load_runs()) == 1
    assert list((store.root / "runs").glob(f".broken-{key}-*")), "the unreadable copy is kept aside"
    said = [line for line in capsys.readouterr().err.splitlines() if "set aside" in line]  # the repair, said once
    assert len(said) == 1 and said[0].startswith(f"run folder {store.run_dir(key)} could not be read (")


def test_clean_removes_leftovers_of_killed_processes_but_not_of_live_ones(tmp_path):
    store = Store(tmp_path / "store")
    dead_dir = store.root / "runs" / ".0123456789abcdef-x1y2"
    dead_dir.mkdir()
    (dead_dir / "config.json").write_text("{}")
    dead_ckpt = store.root / "checkpoints" / "0123456789abcdef.tmp4242"
    dead_ckpt.write_bytes(b"half a checkpoint")
    live_ckpt = store.root / "checkpoints" / "fedcba9876543210.tmp4343"
    live_ckpt.write_bytes(b"being written")
    with store.claim(["fedcba9876543210"]):  # another process trains this run right now
        child = subprocess.run([sys.executable, "-c", f"from mulreg.engine.store import Store; "
                                f"print(len(Store({str(store.root)!r}).clean()))"], capture_output=True, text=True)
    assert child.returncode == 0 and child.stdout.strip() == "2", child.stderr
    assert not dead_dir.exists() and not dead_ckpt.exists() and live_ckpt.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch.load notes the protocol of the hand-made pickle
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    import pickle

    from mulreg.engine.store import CheckpointError

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    store = Store(tmp_path / "store")
    with open(store.checkpoint_path("0123456789abcdef"), "wb") as f:
        pickle.dump({"epoch": 3, "state": Payload()}, f)
    assert store.checkpoints().epoch("0123456789abcdef") == 0  # the sweep's epoch count reads it: no code runs
    with pytest.raises(CheckpointError, match="was refused"):
        store.checkpoints().load("0123456789abcdef")
    assert not marker.exists()


def test_checkpoints_round_trip_with_weights_only(tmp_path):
    store = Store(tmp_path / "store")
    state = {"epoch": 2, "history": [{"epoch": 1, "test_acc": 0.5}], "best": None, "best_epoch": 0,
             "best_state": None, "state": {"params": {"w": torch.ones(2)}}}
    store.checkpoints().save("0123456789abcdef", state)
    loaded = store.checkpoints().load("0123456789abcdef")
    assert loaded["history"] == state["history"] and torch.equal(loaded["state"]["params"]["w"], torch.ones(2))


def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_sweep(tiny, tmp_path):
    """A sweep of several runs killed (SIGKILL) at random moments, rerun after each kill: the same
    runs, histories and weights as a sweep never interrupted, and no temporary leftovers. Ten kills;
    four under CI (the short form)."""
    import random

    def sweep_file(name):
        spec = SweepSpec(base={**BASE, "max_epochs": 12}, grid={"seed": [1, 2, 3], "penalty": ["none", "mul"],
                                                                "lam": {"mul": [1e-6]}},
                         store=str(tmp_path / name), strategy="inline", checkpoint_every=2)
        (tmp_path / f"{name}.yaml").write_text(spec.model_dump_json())
        return spec

    spec = sweep_file("killed")
    sweep_file("fresh")
    rng = random.Random(20261122)
    kills = 4 if os.environ.get("CI") else 10
    for _ in range(kills):
        proc = _sweep_cli(tmp_path / "killed.yaml")
        time.sleep(rng.uniform(2.0, 9.0))  # start-up (imports, data) and training both get hit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _sweep_cli(tmp_path / "killed.yaml").wait() == 0
    assert _sweep_cli(tmp_path / "fresh.yaml").wait() == 0
    killed, fresh = Store(tmp_path / "killed"), Store(tmp_path / "fresh")
    for config in spec.configs():
        a, b = killed.load(config.key()), fresh.load(config.key())
        assert a.metrics.keys() == b.metrics.keys() and a.stop_reason == b.stop_reason
        assert all(a.metrics[k] == b.metrics[k] or (pd.isna(a.metrics[k]) and pd.isna(b.metrics[k]))
                   for k in b.metrics)
        pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not [p.name for p in (killed.root / "runs").iterdir() if p.name.startswith(".")]
    assert not list((killed.root / "checkpoints").iterdir())


# ---- issue 28: every file of a run checked, a run whose config no longer matches its name, stores read only
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_lam(path: Path) -> None:
    import json

    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "penalty": "mul", "lam": 0.5}))


DAMAGE = [("config.json", _edit_lam, "config.json is the config of run"),
          ("provenance.json", _truncate, "provenance.json is not valid JSON"),
          ("history.parquet", _truncate, "history.parquet cannot be read"),
          ("weights.pt", _truncate, "weights.pt cannot be read"),
          ("test_correct.npz", _truncate, "test_correct.npz cannot be read"),
          ("margins.npy", _truncate, "margins.npy cannot be read"),
          ("metrics.json", lambda p: p.write_text("[1, 2]"), "metrics.json is not what a run stores")]


@pytest.mark.parametrize("name, damage, problem", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_every_file_of_a_run_is_checked_and_a_damaged_run_set_aside_and_stored_again(
        tmp_path, tiny_cifar_image_folder, name, damage, problem):
    """They passed `runs --check` and crashed `runs`, a sweep or a notebook later (or, an edited
    config, were listed with the edited λ)."""
    store, cfg = _stored_run(tmp_path, tiny_cifar_image_folder)
    key = cfg.key()
    damage(store.run_dir(key) / name)
    fresh = Store(store.root)
    assert not fresh.is_complete(key) and problem in fresh.unreadable()[key]
    with pytest.warns(UserWarning, match=f"run {key} at .* cannot be read"):
        assert fresh.load_runs().empty
    fresh.save(train(cfg, root=tiny_cifar_image_folder, progress=False))  # what the next sweep does
    again = Store(store.root)
    assert again.is_complete(key) and not again.unreadable() and again.load(key).config == cfg
    assert list((store.root / "runs").glob(f".broken-{key}-*")), "the damaged copy is kept aside"


def test_runs_check_names_a_run_whose_config_was_edited_and_the_listing_leaves_it_out(tmp_path,
                                                                                      tiny_cifar_image_folder):
    store, cfg = _stored_run(tmp_path, tiny_cifar_image_folder)
    _edit_lam(store.run_dir(cfg.key()) / "config.json")
    cli = [sys.executable, "-m", "mulreg", "runs", "--store", str(store.root)]
    check = subprocess.run([*cli, "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and cfg.key() in check.stdout and "config.json is the config of run" in check.stdout
    listing = subprocess.run(cli, capture_output=True, text=True)
    assert listing.returncode == 1 and "no runs" in listing.stdout and "5e-01" not in listing.stdout, listing.stdout
    assert "1 run folder(s) left out" in listing.stdout


def test_runs_lists_a_read_only_store_and_creates_nothing_in_a_folder_that_is_no_store(
        tmp_path, tiny_cifar_image_folder, monkeypatch, capsys):
    from mulreg.__main__ import main

    store, cfg = _stored_run(tmp_path, tiny_cifar_image_folder)
    shutil.rmtree(store.root / "checkpoints")  # an archive: only runs/ was kept
    shutil.rmtree(store.root / "claims")
    real_access = os.access
    for folder in [store.root, *store.root.rglob("*")]:
        folder.chmod(0o555 if folder.is_dir() else 0o444)  # read-only for everyone but root, ...
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and str(p).startswith(
        str(store.root)) else real_access(p, mode, **kw))  # ... and for root as well
    try:
        assert main(["runs", "--store", str(store.root)]) == 0
        assert cfg.key() in capsys.readouterr().out
        assert main(["runs", "--store", str(store.root), "--check"]) == 0
    finally:
        for folder in [store.root, *store.root.rglob("*")]:
            folder.chmod(0o755 if folder.is_dir() else 0o644)
    assert sorted(p.name for p in store.root.iterdir()) == ["runs"]

    elsewhere = tmp_path / "not-a-store"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    assert main(["runs", "--store", str(elsewhere)]) == 0
    assert "no runs" in capsys.readouterr().out and [p.name for p in elsewhere.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half a zip"], ids=["zero bytes", "truncated"])
def test_a_damaged_checkpoint_is_set_aside_and_the_run_starts_again(tmp_path, content, capsys):
    """A zero-byte checkpoint ended in IndexError; then the repair was a two-line Python warning."""
    store = Store(tmp_path / "store")
    store.checkpoint_path("0123456789abcdef").write_bytes(content)
    assert store.checkpoints().epoch("0123456789abcdef") == 0 and not capsys.readouterr().err  # counts it, quietly
    assert store.checkpoint_path("0123456789abcdef").exists()  # set aside only where the run resumes
    assert store.checkpoints().load("0123456789abcdef") is None
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and re.match("checkpoint .*0123456789abcdef.pt cannot be read .* set aside", said[0])
    assert [p.name.startswith(".broken-0123456789abcdef-") for p in (store.root / "checkpoints").iterdir()] == [True]


def test_a_full_disk_names_the_run_and_leaves_no_partial_files(tmp_path, tiny_cifar_image_folder, monkeypatch):
    """It read as `[enforce fail at inline_container.cc]` with no path, and left the temporary folder."""
    from mulreg.config import MulregError

    cfg = RunConfig(device="cpu", init_scale=1.0, lr=0.01, batch_size=4, max_epochs=1, n_train=8, early_stopping=None)
    result = train(cfg, root=tiny_cifar_image_folder, progress=False)
    store = Store(tmp_path / "store")

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(MulregError, match=f"cannot write run {cfg.key()} in {store.root / 'runs'} "
                                          r"\(RuntimeError: \[enforce fail"):
        store.save(result)
    with pytest.raises(MulregError, match=f"cannot write the checkpoint of run {cfg.key()}"):
        store.checkpoints().save(cfg.key(), {"epoch": 1})
    assert not list((store.root / "runs").iterdir()) and not list((store.root / "checkpoints").iterdir())


def test_run_folders_follow_the_umask(tmp_path, tiny_cifar_image_folder):
    """They were mode 700 whatever the umask: a shared store could not be read by the group."""
    old = os.umask(0o022)
    try:
        store, cfg = _stored_run(tmp_path, tiny_cifar_image_folder)
    finally:
        os.umask(old)
    assert store.run_dir(cfg.key()).stat().st_mode & 0o777 == 0o755


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_an_anticipated_error_in_a_worker_is_one_line(tmp_path, tiny_cifar_image_folder):
    """A refused checkpoint in a worker process came out as a traceback."""
    import pickle

    spec = SweepSpec(base={**BASE, "max_epochs": 2}, grid={"seed": [1, 2]}, store=str(tmp_path / "store"),
                     strategy="processes", workers=2, group_size=1)
    path = tmp_path / "sweep.yaml"
    path.write_text(spec.model_dump_json())
    victim = spec.configs()[1].key()
    with open(Store(spec.store).checkpoint_path(victim), "wb") as f:
        pickle.dump({"epoch": 1, "state": os.system}, f)  # would run code: refused, never loaded
    out = subprocess.run([sys.executable, "-m", "mulreg", "sweep", str(path)], capture_output=True, text=True,
                         env={**os.environ, "MULREG_DATA": str(tiny_cifar_image_folder)}, timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "error: 1 of 2 groups failed (the finished runs are stored); first error: checkpoint " in out.stderr
    assert victim in out.stderr and Store(spec.store).is_complete(spec.configs()[0].key())
