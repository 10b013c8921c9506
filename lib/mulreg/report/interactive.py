"""Interactive Plotly versions of Fig. 1 and Fig. 2 (hover for every number, click legend entries
to hide penalties), saved by `mulreg.report.plots.save` as self-contained HTML."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mulreg.report.style import (
    LOG_SCALE,
    PAPER_FOR,
    band_stats,
    metric_label,
    penalties_in,
    penalty_color,
    penalty_label,
)


def noise_robustness_interactive(stats: pd.DataFrame, best: pd.DataFrame | None = None,
                                 paper: pd.DataFrame | None = None,
                                 quantities: Sequence[str] = ("test_acc", "margin_mean", "margin_std_mean"),
                                 paper_for: dict[str, str] = PAPER_FOR) -> go.Figure:
    """Plotly version of `noise_robustness`: hover for mean, std, runs and λ; click the legend to
    toggle a penalty (reproduced and paper lines toggle together)."""
    fig = make_subplots(rows=1, cols=len(quantities), subplot_titles=[metric_label(q) for q in quantities])
    lam = {}
    if best is not None and len(best):
        lam = {(r.penalty, round(r.label_noise, 6)): r.lam for r in best.itertuples()}
    for col, q in enumerate(quantities, 1):
        part = stats[stats["quantity"] == q] if len(stats) else stats
        scale = 100 if q.endswith("acc") else 1
        for pen in penalties_in(part):
            d = part[part["penalty"] == pen].sort_values("label_noise")
            lams = [lam.get((pen, round(v, 6)), np.nan) for v in d["label_noise"]]
            fig.add_trace(go.Scatter(
                x=d["label_noise"], y=scale * d["value"], error_y=dict(array=scale * d["std"].fillna(0)),
                mode="lines+markers", name=penalty_label(pen), legendgroup=pen, showlegend=col == 1,
                line=dict(color=penalty_color(pen)), customdata=np.c_[scale * d["std"].fillna(0), d["n"], lams],
                hovertemplate=(f"{penalty_label(pen)}<br>noise %{{x}}<br>{metric_label(q)} %{{y:.4g}}"
                               " ± %{customdata[0]:.3g}"
                               "<br>runs %{customdata[1]}<br>λ %{customdata[2]:.0e}<extra></extra>")), 1, col)
        if paper is not None and len(paper):
            pp = paper[paper["quantity"] == paper_for.get(q, q)]
            for pen in penalties_in(pp):
                d = pp[pp["penalty"] == pen].sort_values("label_noise")
                fig.add_trace(go.Scatter(
                    x=d["label_noise"], y=scale * d["value"], mode="lines+markers", legendgroup=pen,
                    name=f"{penalty_label(pen)} (paper)", showlegend=col == 1,
                    line=dict(color=penalty_color(pen), dash="dash"), marker=dict(symbol="circle-open"),
                    hovertemplate=f"{penalty_label(pen)} (paper)<br>noise %{{x}}<br>%{{y:.4g}}<extra></extra>"), 1, col)
        fig.update_xaxes(title_text="label noise", row=1, col=col)
        fig.update_yaxes(title_text=metric_label(q) + (" (%)" if scale == 100 else ""), row=1, col=col)
    fig.update_layout(height=460, template="plotly_white", legend=dict(orientation="h", y=-0.2))
    return fig


def training_dynamics_interactive(hist: pd.DataFrame,
                                  metrics: Sequence[str] = ("test_acc", "norm_product", "norm_sq_sum"),
                                  row: str | None = "label_noise", log: Iterable[str] = LOG_SCALE) -> go.Figure:
    """Plotly version of `training_dynamics`: hover for mean/min/max, click a penalty in the
    legend to hide it in every panel."""
    rows = sorted(hist[row].unique()) if row and len(hist) else [None]
    log = set(log)
    titles = [f"{metric_label(m)}" + ("" if rv is None else f" (noise {rv:g})") for rv in rows for m in metrics]
    fig = make_subplots(rows=len(rows), cols=len(metrics), subplot_titles=titles, shared_xaxes=True,
                        vertical_spacing=0.08 if len(rows) > 1 else 0.1)
    shown = set()
    for i, rv in enumerate(rows, 1):
        part = hist if rv is None else hist[np.isclose(hist[row], rv)]
        for j, metric in enumerate(metrics, 1):
            if part.empty or metric not in part:
                continue
            stats = band_stats(part, metric)
            for pen in penalties_in(stats):
                d = stats[stats["penalty"] == pen]
                color = penalty_color(pen)
                fig.add_trace(go.Scatter(
                    x=np.r_[d["epoch"], d["epoch"][::-1]], y=np.r_[d["max"], d["min"][::-1]], fill="toself",
                    fillcolor=_rgba(color, 0.2), line=dict(width=0), hoverinfo="skip", legendgroup=pen,
                    showlegend=False), i, j)
                fig.add_trace(go.Scatter(
                    x=d["epoch"], y=d["mean"], mode="lines", line=dict(color=color), name=penalty_label(pen),
                    legendgroup=pen, showlegend=pen not in shown, customdata=np.c_[d["min"], d["max"], d["count"]],
                    hovertemplate=(f"{penalty_label(pen)}<br>epoch %{{x}}<br>mean %{{y:.4g}}"
                                   "<br>min %{customdata[0]:.4g} max %{customdata[1]:.4g}"
                                   "<br>seeds %{customdata[2]}<extra></extra>")), i, j)
                shown.add(pen)
            if metric in log:
                fig.update_yaxes(type="log", row=i, col=j)
        fig.update_xaxes(title_text="epoch", row=len(rows), col=1)
    fig.update_layout(height=300 * len(rows) + 120, template="plotly_white",
                      legend=dict(orientation="h", y=-0.08 if len(rows) > 1 else -0.2))
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"
