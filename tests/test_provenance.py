

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
