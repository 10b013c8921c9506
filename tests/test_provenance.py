

def test_a_stage_wall_time_is_first_start_to_last_finish_with_its_host_and_run_hours():
    import pandas as pd

    from mulreg import provenance

    runs = pd.DataFrame({"started": ["2026-12-06T05:00:00+0000", "2026-12-06T05:30:00+0000"],
                         "finished": ["2026-12-06T06:00:00+0000", "2026-12-06T07:15:00+0000"],
                         "cpu_model": ["Intel(R) Xeon(R) Processor"] * 2, "wall_seconds": [3600.0, 6300.0]})
    said = provenance.wall_time(runs, "selection")
    assert said == ("selection: 2 runs, 2026-12-06 05:00 to 2026-12-06 07:15 UTC, 2.2 h elapsed on Intel(R) Xeon(R) "
                    "Processor; 2.8 run-hours measured by the runs")
    assert provenance.wall_time(runs.iloc[:0], "confirmation") == "confirmation: no runs with provenance"


def test_a_resumed_runs_first_start_counts_where_its_provenance_keeps_it():
    """A run resumed at 06:30 that its first process began at 04:00: the stage began at 04:00, and a
    registration committed at 05:00 came after it; runs trained before `first_started` was kept read
    `started`."""
    import pandas as pd

    from mulreg import provenance

    runs = pd.DataFrame({"first_started": ["2026-12-06T04:00:00+0000", None],
                         "started": ["2026-12-06T06:30:00+0000", "2026-12-06T05:30:00+0000"],
                         "finished": ["2026-12-06T07:00:00+0000", "2026-12-06T06:00:00+0000"],
                         "cpu_model": ["Intel(R) Xeon(R) Processor"] * 2, "wall_seconds": [1800.0, 1800.0]})
    assert provenance.first_start(runs) == pd.Timestamp("2026-12-06T04:00:00+0000")
    assert provenance.wall_time(runs, "horizon").startswith("horizon: 2 runs, 2026-12-06 04:00 to 2026-12-06 07:00")
    assert provenance.first_start(runs.drop(columns="first_started")) == pd.Timestamp("2026-12-06T05:30:00+0000")


def test_a_checkout_is_dirty_when_its_code_differs_not_when_a_sweep_changed_its_record(tmp_path):
    import subprocess

    from mulreg import provenance

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "record").mkdir()
    (tmp_path / "record" / "MANIFEST.json").write_text("{}")
    (tmp_path / "train.py").write_text("lr = 0.03\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "registered")
    (tmp_path / "record" / "MANIFEST.json").write_text('{"stage": 1}')  # `--record` wrote a stage
    (tmp_path / "results.txt").write_text("untracked")
    assert provenance.git_state.__wrapped__(tmp_path)[1] is False
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    assert provenance.git_state.__wrapped__(tmp_path)[1] is True
