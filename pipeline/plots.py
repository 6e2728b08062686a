"""Figures drawn by Agg without pyplot, written through a stage's commit (fileio.committed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .fileio import Commit


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (5, 3.5)):
    """(figure, axes) drawn by Agg without pyplot: no process-wide backend or figure registry is
    touched, so a stage or test that runs after the report sees matplotlib as it was."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def save_figure(fig, path: Path, commit: Commit) -> Path:
    return commit.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def plot_matrix(commit: Commit, path: Path, values: np.ndarray, xlabels: list[str], ylabels: list[str], title: str,
                fmt: str, cmap: str, vmin=None, vmax=None, xlabel: str = "", ylabel: str = "") -> Path:
    """A heatmap (rows x columns) with every cell's value written in it."""
    fig, ax = subplots(figsize=(1.0 + 0.9 * len(xlabels) + 1.5, 1.0 + 0.7 * len(ylabels)))
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(np.arange(len(xlabels)), xlabels, rotation=30, ha="right")
    ax.set_yticks(np.arange(len(ylabels)), ylabels)
    mid = (np.nanmax(values) + np.nanmin(values)) / 2
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, format(v, fmt), ha="center", va="center", color="white" if v > mid else "black", fontsize=8)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, path, commit)


def plot_scatter(commit: Commit, path: Path, y: np.ndarray, pred: np.ndarray, title: str) -> Path:
    """Predicted (n,) against true (n,) values, with the diagonal."""
    fig, ax = subplots(figsize=(4.5, 4.5))
    ax.scatter(y, pred, s=8, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":")
    ax.set_xlabel("true"), ax.set_ylabel("predicted"), ax.set_title(title)
    return save_figure(fig, path, commit)


def plot_residuals(commit: Commit, path: Path, y: np.ndarray, pred: np.ndarray, title: str) -> Path:
    """Residuals (pred - true) against the true value (left) and their histogram (right)."""
    fig, (left, right) = subplots(1, 2, figsize=(9, 3.5))
    res = pred - y
    left.scatter(y, res, s=8, alpha=0.5)
    left.axhline(0, color="grey", linestyle=":")
    left.set_xlabel("true"), left.set_ylabel("predicted - true")
    right.hist(res, bins=30)
    right.set_xlabel("predicted - true"), right.set_ylabel("rows")
    fig.suptitle(title)
    return save_figure(fig, path, commit)
