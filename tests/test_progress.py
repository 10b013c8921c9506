"""Progress bars where people watch, plain lines in the reports: the switch between them is scoped."""

import os

import pytest

from mulreg.progress import REPORT_ENV, bar, in_report, reporting


def test_reporting_turns_bars_off_inside_and_leaves_the_environment_as_it_was(monkeypatch):
    monkeypatch.delenv(REPORT_ENV, raising=False)
    with reporting():
        assert in_report() and bar(total=1).disable
    assert REPORT_ENV not in os.environ and not bar(total=1).disable


def test_reporting_restores_a_value_set_before_it_even_when_the_work_fails(monkeypatch):
    monkeypatch.setenv(REPORT_ENV, "0")
    with pytest.raises(KeyboardInterrupt), reporting():
        assert in_report()
        raise KeyboardInterrupt
    assert os.environ[REPORT_ENV] == "0" and not in_report()
