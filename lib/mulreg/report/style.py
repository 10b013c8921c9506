"""The look every figure shares: one colour and one name per penalty kind, axis labels of the
recorded quantities, the mean-and-band statistics of the dynamics plots, and the offline Plotly
renderer (plotly.js embedded, no CDN) that makes exported HTML reports work without a network."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

from mulreg.protocols import EFF_LR, NORM, PENALTY_NAMES, PENALTY_ORDER, Penalty

COLORS = {Penalty.MUL: "#0072B2", Penalty.SUM: "#E69F00", Penalty.NONE: "#7F7F7F", Penalty.MUL_LOG: "#009E73",
          Penalty.L1: "#CC79A7"}


LABELS = {
    "test_acc": "test accuracy", "train_acc": "train accuracy", "val_acc": "validation accuracy",
    "test_loss": "test loss (MSE)", "train_loss": "train loss (MSE)", "val_loss": "validation loss (MSE)",
    "norm_product": "Π‖W_i‖_F", "norm_sq_sum": "Σ‖W_i‖_F²", "margin_mean": "mean test margin (unit-norm layers)",
    "margin_std_mean": "mean test margin y·f(x)/std(f)",
    "penalty_term": "λ·R(W)",
    "train_acc_flipped": "fit of flipped training labels", "train_acc_clean": "fit of clean training labels",
}


# notebook 06: a colour per regulariser (the penalties keep theirs), a marker per network
REGULARISER_COLORS = {**{PENALTY_NAMES[p]: c for p, c in COLORS.items()}, "early stopping": "#332288",
                      "dropout": "#56B4E9", "augmentation": "#D55E00"}
NETWORK_MARKERS = {"plain": "o", "batch norm": "s", "weight norm": "^"}


def arm_style(arm: str) -> tuple[str, str]:
    """(colour, marker) of an arm '<network> · <regulariser>' of `mulreg.results.arms`."""
    network, _, regulariser = arm.partition(" · ")
    return REGULARISER_COLORS.get(regulariser, "#000000"), NETWORK_MARKERS.get(network, "D")


LOG_SCALE = ("norm_product", "norm_sq_sum", "penalty_term", "train_loss", "val_loss", "test_loss")


RENDERER = "mulreg_offline"
PAPER_FOR = {"margin_std_mean": "margin_mean"}  # plotted quantity → the paper's number drawn beside it


class OfflineHTMLRenderer(MimetypeRenderer):
    """text/html output with plotly.js embedded in the first figure of the session (never a CDN,
    never MathJax), so notebooks exported to HTML show their figures without a network."""

    def __init__(self):
        self.sent_library = False

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(fig_dict, include_plotlyjs=not self.sent_library, include_mathjax=False,
                           full_html=False, default_width="100%", default_height=520, validate=False)
        self.sent_library = True
        return {"text/html": html}


def offline_plotly(mimetype: bool = True) -> str:
    """Register and select the offline renderer. With `mimetype`, figures also carry Plotly's JSON
    mimetype, which JupyterLab renders natively (its plotly extension ships with plotly); HTML
    exports use the embedded text/html. Returns the renderer string now in use."""
    pio.renderers[RENDERER] = OfflineHTMLRenderer()
    pio.renderers.default = f"plotly_mimetype+{RENDERER}" if mimetype else RENDERER
    return pio.renderers.default


def penalty_label(p: str) -> str:
    """The penalty kind's name in the paper's words (an unknown kind raises ValueError)."""
    return PENALTY_NAMES[Penalty(p)]


def penalty_color(p: str) -> str:
    """The penalty kind's colour, the same in every figure."""
    return COLORS[Penalty(p)]


def penalties_in(df: pd.DataFrame) -> list[str]:
    present = set(df["penalty"]) if len(df) and "penalty" in df else set()
    return [p for p in PENALTY_ORDER if p in present] + sorted(present - set(PENALTY_ORDER))


def metric_label(metric: str) -> str:
    if metric in NORM.columns([metric]) and metric not in LABELS:
        return f"‖W‖_F of {metric.removeprefix(NORM.prefix + '_')}"
    if metric in EFF_LR.columns([metric]):
        return f"‖ΔW‖/‖W‖ per step of {metric.removeprefix(EFF_LR.prefix + '_')}"
    return LABELS.get(metric, metric)


def band_stats(hist: pd.DataFrame, metric: str, by: Sequence[str] = ("penalty",), x: str = "epoch") -> pd.DataFrame:
    """Mean, min and max of `metric` over seeds per epoch (and group): the line and band of the
    dynamics plots. Runs that stopped early contribute only up to their last epoch."""
    g = hist.groupby(list(by) + [x])[metric]
    return g.agg(["mean", "min", "max", "count"]).reset_index()
