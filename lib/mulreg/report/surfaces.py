"""Figures and files of loss surfaces (`mulreg.results.landscape.Surface`, paper Fig. 3): interactive 3-D
surfaces (Plotly), contour panels and 1-D slices (matplotlib), sharpness against radius, and
ParaView .vtp files. Kept apart from `mulreg.results.landscape` so that computing a surface or a Hessian
imports no plotting or VTK library."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from vtkmodules.util.numpy_support import (
    numpy_to_vtk,
    numpy_to_vtkIdTypeArray,
)
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

from mulreg.report.plots import log_axis, penalty_color
from mulreg.results.landscape import Surface


def _log_loss(s: Surface) -> np.ndarray:
    if not s.complete:
        raise ValueError("the surface is not complete: run `surface(...)` to the end first")
    return np.log10(s.loss)


def plot_surfaces_3d(surfaces: dict[str, Surface], title: str = "log₁₀ loss") -> go.Figure:
    """Interactive 3-D log₁₀ loss surfaces on shared axes and one shared colour scale; click a
    legend entry or use the buttons to show them one at a time."""
    z = {name: _log_loss(s) for name, s in surfaces.items()}
    fig = go.Figure()
    for name, s in surfaces.items():
        fig.add_trace(go.Surface(x=s.alphas, y=s.betas, z=z[name].T, name=name, showlegend=True,
                                 coloraxis="coloraxis", opacity=0.85,
                                 hovertemplate=f"{name}<br>α=%{{x:.2f}} β=%{{y:.2f}}<br>log₁₀ loss=%{{z:.3f}}"
                                               "<extra></extra>"))
    names = list(surfaces)
    buttons = [dict(label="all", method="restyle", args=[{"visible": [True] * len(names)}])]
    buttons += [dict(label=n, method="restyle", args=[{"visible": [m == n for m in names]}]) for n in names]
    fig.update_layout(
        title=title, coloraxis=dict(colorscale="Viridis", cmin=min(v.min() for v in z.values()),
                                    cmax=max(v.max() for v in z.values()), colorbar=dict(title="log₁₀ loss")),
        scene=dict(xaxis_title="α (d₁)", yaxis_title="β (d₂)", zaxis_title="log₁₀ loss"),
        updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=0, y=1.08, xanchor="left")],
        legend=dict(x=0, y=1), margin=dict(l=0, r=0, t=60, b=0))
    return fig


def plot_contours(surfaces: dict[str, Surface], levels: int = 20) -> Figure:
    """Side-by-side filled contours of log₁₀ loss with shared levels; + marks the trained weights."""
    z = {name: _log_loss(s) for name, s in surfaces.items()}
    if any(len(s.betas) < 2 for s in surfaces.values()):
        raise ValueError("contours need 2-D surfaces (betas with at least 2 values)")
    shared = np.linspace(min(v.min() for v in z.values()), max(v.max() for v in z.values()), levels)
    fig = Figure(figsize=(4.2 * len(surfaces) + 1, 4), layout="constrained")
    axes = fig.subplots(1, len(surfaces), sharex=True, sharey=True, squeeze=False)[0]
    for ax, (name, s) in zip(axes, surfaces.items()):
        filled = ax.contourf(s.alphas, s.betas, z[name].T, levels=shared, cmap="viridis")
        ax.contour(s.alphas, s.betas, z[name].T, levels=shared, colors="k", linewidths=0.3)
        ax.plot(0, 0, "r+", markersize=10)
        ax.set(title=name, xlabel="α (d₁)", aspect="equal")
    axes[0].set_ylabel("β (d₂)")
    fig.colorbar(filled, ax=list(axes), label="log₁₀ loss")
    return fig


def write_vtp(surface: Surface, path: str | os.PathLike) -> None:
    """ParaView polydata: one point (α, β, log₁₀ loss) per grid point, with point data `loss`,
    `log10_loss` and `accuracy`, and one quad per grid cell. Written atomically."""
    z = _log_loss(surface)
    a_n, b_n = z.shape
    aa, bb = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.stack([aa, bb, z], -1).reshape(-1, 3), deep=True))
    corner = (np.arange(a_n - 1)[:, None] * b_n + np.arange(b_n - 1)).ravel()  # point (i, j) is i·B + j
    quads = np.stack([corner, corner + b_n, corner + b_n + 1, corner + 1], 1).ravel()
    cells = vtkCellArray()
    cells.SetData(numpy_to_vtkIdTypeArray(np.arange(0, len(quads) + 1, 4), deep=True),
                  numpy_to_vtkIdTypeArray(quads, deep=True))
    poly = vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(cells)
    for name, values in {"loss": surface.loss, "log10_loss": z, "accuracy": surface.acc}.items():
        array = numpy_to_vtk(np.ascontiguousarray(values.ravel()), deep=True)
        array.SetName(name)
        poly.GetPointData().AddArray(array)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.vtp")
    writer = vtkXMLPolyDataWriter()
    writer.SetFileName(str(tmp))
    writer.SetInputData(poly)
    if writer.Write() != 1:
        raise OSError(f"vtk could not write {tmp}")
    os.replace(tmp, path)


def landscape_slices(slices: dict[str, Surface], kinds: dict[str, str], log: bool = True) -> Figure:
    """1-D slices θ + α·d₁ (`Surface`s with one β) by name: loss and accuracy vs α, coloured by
    the penalty kind `kinds[name]` of each."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_l, ax_a = fig.subplots(1, 2, sharex=True)
    for name, s in slices.items():
        color = penalty_color(kinds[name])
        ax_l.plot(s.alphas, s.loss[:, 0], label=name, color=color)
        ax_a.plot(s.alphas, 100 * s.acc[:, 0], label=name, color=color)
    if log:
        log_axis(ax_l)
    ax_l.set(xlabel="α (filter-normalised direction d₁)", ylabel="data loss (MSE)", title="loss along d₁")
    ax_a.set(xlabel="α", ylabel="accuracy (%)", title="accuracy along d₁")
    ax_l.legend(frameon=False)
    return fig


def sharpness_vs_radius(table: pd.DataFrame, kinds: dict[str, str]) -> Figure:
    """Mean ± std over direction seeds of the loss increase L(θ + r·d) − L(θ) against the radius r,
    one line per model (`table` columns: model, radius, mean, std; a model is "<name>, <variant>",
    coloured by the penalty kind `kinds[name]`)."""
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for name, d in table.groupby("model", sort=False):
        base, _, variant = str(name).rpartition(", ")
        dashed = variant == "rebalanced"
        ax.errorbar(d["radius"], d["mean"], yerr=d["std"], marker="s" if dashed else "o", capsize=4, label=name,
                    color=penalty_color(kinds[base]), ls="--" if dashed else "-", mfc="none" if dashed else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="radius r (relative, filter-normalised)", ylabel="loss increase L(θ+r·d) − L(θ)",
           title="Loss increase at radius r (mean ± std over directions)")
    ax.legend(frameon=False)
    return fig
