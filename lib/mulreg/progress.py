"""Progress where people watch it, a concise log where they read it afterwards.

In a terminal or JupyterLab, long work shows tqdm progress bars (widgets in JupyterLab). In the
executed notebooks of the HTML reports (the notebook runner sets `REPORT_ENV`), redrawn bars would
leave hundreds of lines of escape codes, so bars are off there and `say` prints plain lines: one per
finished run, and a summary at the end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tqdm.auto import tqdm

REPORT_ENV = "MULREG_REPORT"


def in_report() -> bool:
    """True while the notebook runner executes notebooks for the reports."""
    return os.environ.get(REPORT_ENV) == "1"


@contextlib.contextmanager
def reporting() -> Iterator[None]:
    """Notebooks executed for the reports: `in_report` holds here and in the kernels started meanwhile
    (they inherit the environment); afterwards the environment is as it was, so progress bars come
    back in the session or test process that ran them."""
    before = os.environ.get(REPORT_ENV)
    os.environ[REPORT_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[REPORT_ENV]
        else:
            os.environ[REPORT_ENV] = before


def bar(*, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm progress bar, disabled in reports (`in_report`)."""
    return tqdm(disable=disable or in_report(), dynamic_ncols=True, **kwargs)


def say(b: tqdm | None, text: str) -> None:
    """A line of log beside bar `b`: written above the bar while it shows, printed in reports, and
    dropped where progress output was turned off (`b` is None or disabled outside a report)."""
    if b is not None and not b.disable:
        b.write(text)
    elif b is not None and in_report():
        print(text, flush=True)
