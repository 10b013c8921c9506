"""Small text and file helpers shared by the parent and the worker (no torch here)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def oneline(err: BaseException) -> str:
    """'Kind: first line of the message', at most 400 characters."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]


def last_lines(text: str, n: int = 3) -> str:
    """The last `n` non-empty lines of `text`, joined by ' / ' (progress bars' carriage returns too)."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " / ".join(lines[-n:])[-500:]


def tail(path: Path, n: int = 400) -> str:
    """The last lines of a worker's log, without the parent's '===' markers."""
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("===")]
    return " / ".join(lines[-3:])[-n:]


def jsonable(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def flat(d: dict, prefix: str = ""):
    """('a.b', value) for every leaf of a nested dict."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def md(v, most: int = 400) -> str:
    """A markdown table cell: no pipes, no newlines, at most `most` characters."""
    text = str(v).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= most else text[: most - 1] + "…"


def fmt(v) -> str:
    """A value for the table: thousands separated, else three significant digits."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)
