"""Setting a notebook up for figures, and saving them: `setup()` once per notebook sets the theme and
the offline Plotly renderer; `save(fig, name, figures_dir)` writes any figure (Plotly ones as
self-contained HTML) where the report index finds it (`<notebook number>_<what>.png/.svg/.html`), and
`save_table` a table beside them, each with a caption: profile, commit and date, and where the numbers
come from (`note_source`). `mulreg.report.plots` holds the figures and gives these names too."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import matplotlib as mpl
import pandas as pd
import plotly.graph_objects as go
import seaborn as sns

from mulreg import provenance
from mulreg.report.style import offline_plotly

# ---- set-up and saving
SOURCE = "Source"  # the PNG text field holding the caption: what the figure was drawn from
SAVE_DPI = 150  # resolution of every PNG written
_caption: dict[str, str] = {}  # under every figure saved: profile, commit, date (`setup`); source (`note_source`)


def setup(context: str = "notebook", font_scale: float = 1.0, dpi: int = 110, profile: str | None = None) -> None:
    """Seaborn theme, inline figure resolution, offline Plotly: call once at the top of a notebook.
    With `profile`, every figure `save` writes carries a caption: profile, commit and date."""
    _caption.clear()
    _caption.update({} if profile is None else {"made": provenance.caption(profile)})
    try:  # figures built with matplotlib.figure.Figure display inline only once this is active
        from IPython import get_ipython

        if get_ipython() is not None:
            get_ipython().run_line_magic("matplotlib", "inline")
    except ImportError:
        pass
    sns.set_theme(context=context, style="whitegrid", font_scale=font_scale)
    mpl.rcParams.update({"figure.dpi": dpi, "savefig.bbox": "tight", "svg.fonttype": "none",
                         "axes.titlesize": "medium"})
    offline_plotly()


def note_source(line: str) -> None:
    """Where the numbers come from ("results of record: host, commit, dates" or "trained here"), written
    under every figure and table `save` and `save_table` write from now on."""
    _caption["source"] = line


def save(fig, name: str, figures_dir: str | Path, formats: Sequence[str] = ("png", "svg"),
         dpi: int = SAVE_DPI, metadata: dict[str, str] | None = None) -> list[Path]:
    """Write `fig` into `figures_dir` as `<name>.png` and `<name>.svg` (matplotlib figure or seaborn
    grid) or as a self-contained `<name>.html` (Plotly figure, plotly.js embedded), the PNG with
    its caption and `metadata` in its text fields. Returns the paths."""
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(fig, go.Figure):
        path = folder / f"{name}.html"
        captioned = go.Figure(fig)
        if _caption:
            captioned.add_annotation(text=" · ".join(_caption.values()), xref="paper", yref="paper", x=1, y=1.06,
                                     showarrow=False, xanchor="right", font={"size": 10, "color": "grey"})
        captioned.write_html(path, include_plotlyjs=True, include_mathjax=False, full_html=True)
        return [path]
    fig = getattr(fig, "figure", fig)  # seaborn FacetGrid / JointGrid
    text = fig.text(0, 0, " · ".join(_caption.values()), fontsize=7, color="grey", va="top", wrap=True,
                    transform=fig.transFigure) if _caption else None
    paths = []
    for fmt in formats:
        path = folder / f"{name}.{fmt}"
        stamp = {SOURCE: " · ".join(_caption.values())} | (metadata or {}) if fmt == "png" else None
        fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=stamp)
        paths.append(path)
    if text is not None:
        text.remove()  # the notebook shows the figure without it; the files carry it
    return paths


def save_table(table: pd.DataFrame, name: str, figures_dir: str | Path) -> Path:
    """A table beside the figures, as CSV and as an HTML fragment (the reports index shows it)."""
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / f"{name}.csv", index=False)
    path = folder / f"{name}.html"
    source = f'<p class="source">{html.escape(_caption["source"])}</p>' if "source" in _caption else ""
    path.write_text(table.to_html(index=False, border=0, na_rep="—") + source)
    return path
