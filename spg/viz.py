"""Every figure of the SPG notebooks and book, in one style.

Each public plotting function takes plain arrays or a tidy :class:`pandas.DataFrame` (the data the
figure shows, usually built by :mod:`spg.analysis`) and returns a :class:`matplotlib.figure.Figure`
created without pyplot, so nothing is shown or kept open behind the caller's back.
:func:`save_figure` writes ``<name>.png`` and ``<name>.csv`` (the data behind the figure) side by
side. The method diagram lives in :mod:`spg.overview` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

STYLE: dict[str, object] = {
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12, "figure.dpi": 100,
    "savefig.dpi": 110, "savefig.bbox": "tight", "savefig.facecolor": "white",
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "axes.prop_cycle": matplotlib.cycler(color=["#0072B2", "#E69F00", "#009E73", "#D55E00",
                                                "#CC79A7", "#56B4E9", "#F0E442", "#000000"]),
    "image.cmap": "viridis", "lines.linewidth": 1.6,
}
"""The one rcParams set every figure is drawn and saved with (Okabe-Ito colours)."""
MAP_CMAP = "inferno"
"""Colour map of anomaly maps and atom activations."""
MASK_COLOUR = "#00E5FF"
"""Outline colour of ground-truth masks drawn over images."""


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Context in which figures get the SPG style (used by every function of this module)."""
    with matplotlib.rc_context(STYLE):
        yield


def _styled(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with style():
            return func(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, data: pd.DataFrame, name: str, folder: str | Path) -> Path:
    """Write ``folder/<name>.png`` and ``folder/<name>.csv`` (the data behind it); returns the PNG path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    with style():
        fig.savefig(png)
    data.to_csv(folder / f"{name}.csv", index=not isinstance(data.index, pd.RangeIndex))
    return png


# ------------------------------------------------------------------------------------ line plots


@_styled
def training_curves(history: pd.DataFrame, columns: Sequence[str], titles: Sequence[str] | None = None,
                    log: Sequence[str] = ()) -> Figure:
    """One small panel per ``history`` column against ``epoch`` (log y-axis for columns in ``log``)."""
    fig = _figure(3.0 * len(columns), 2.6)
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for ax, col, title in zip(axes, columns, titles or columns):
        ax.plot(history["epoch"] + 1, history[col], marker="o", markersize=3)
        ax.set(title=title, xlabel="epoch")
        if col in log and (history[col] > 0).all():
            ax.set_yscale("log")
    return fig


@_styled
def histogram(values: np.ndarray, xlabel: str, title: str, *, bins: int | Sequence[float] = 40,
              log_y: bool = False, note: str | None = None) -> Figure:
    """A histogram of ``values`` with an optional note in the corner."""
    fig = _figure(5.0, 3.0)
    ax = fig.subplots()
    ax.hist(values, bins=bins, color="#0072B2", edgecolor="white", linewidth=0.4)
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    if log_y:
        ax.set_yscale("log")
    if note:
        ax.text(0.98, 0.95, note, transform=ax.transAxes, ha="right", va="top",
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
    return fig


@_styled
def bars(data: pd.DataFrame, x: str, y: str, *, hue: str | None = None, title: str = "",
         ylabel: str | None = None, ylim: tuple[float, float] | None = None, horizontal: bool = False) -> Figure:
    """Bar chart of ``y`` per ``x`` (grouped by ``hue`` when given), value labels on single bars."""
    import seaborn as sns

    n = data[x].nunique() * (1 if hue is None else max(1, data[hue].nunique()) * 0.45)
    fig = _figure(3.6 + 0.3 * n, 3.2) if not horizontal else _figure(6.0, 1.2 + 0.28 * data[x].nunique())
    ax = fig.subplots()
    kw = dict(data=data, hue=hue, ax=ax, palette="colorblind" if hue else None, color=None if hue else "#0072B2")
    sns.barplot(**({"x": y, "y": x, "orient": "h"} if horizontal else {"x": x, "y": y}), **kw)
    ax.set_title(title)
    (ax.set_xlabel if horizontal else ax.set_ylabel)(ylabel or y)
    (ax.set_ylabel if horizontal else ax.set_xlabel)("")
    if ylim:
        (ax.set_xlim if horizontal else ax.set_ylim)(*ylim)
    if hue is None:
        ax.bar_label(ax.containers[0], fmt="%.3g", fontsize=8, padding=2)
    elif ax.get_legend():
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title=hue)
    if not horizontal and data[x].astype(str).str.len().max() > 8:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    return fig


@_styled
def mass_curves(mass: pd.DataFrame) -> Figure:
    """Cumulative share of each guide's L1 mass held by its top-n atoms (``guide, n, share``)."""
    fig = _figure(5.6, 3.4)
    ax = fig.subplots()
    for guide, part in mass.groupby("guide", sort=False):
        ax.plot(part["n"], part["share"], label=guide)
    ax.set(xscale="log", ylim=(0, 1.02), xlabel="top-n atoms (by coefficient)", ylabel="share of L1 mass",
           title="How many atoms carry each guide")
    for level in (0.5, 0.9):
        ax.axhline(level, color="0.5", linestyle=":", linewidth=1)
    ax.legend(loc="lower right")
    return fig


@_styled
def metric_curves(curves: pd.DataFrame) -> Figure:
    """Image ROC, image PR, pixel ROC and PRO per category (``curve, category, x, y`` long form)."""
    specs = [("image ROC", "FPR", "TPR"), ("image PR", "recall", "precision"),
             ("pixel ROC", "FPR", "TPR"), ("PRO (exact, FPR <= 0.3)", "FPR", "per-region overlap")]
    fig = _figure(9.0, 7.0)
    axes = fig.subplots(2, 2).ravel()
    for ax, (name, xlabel, ylabel) in zip(axes, specs):
        part = curves[curves["curve"] == name]
        for cat, c in part.groupby("category", sort=False):
            ax.plot(c["x"], c["y"], label=cat, drawstyle="steps-post" if "PR" == name[-2:] else "default")
        if "ROC" in name:
            ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel, ylim=(-0.02, 1.02))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False, title="category")
    return fig


@_styled
def score_strips(scores: pd.DataFrame, score: str) -> Figure:
    """Image scores per target category, normal vs anomalous images (one dot per image)."""
    import seaborn as sns

    data = scores.assign(image=np.where(scores["label"] == 1, "anomalous", "normal"))
    fig = _figure(2.0 + 1.1 * data["category"].nunique(), 3.4)
    ax = fig.subplots()
    sns.stripplot(data=data, x="category", y=score, hue="image", dodge=True, size=4, alpha=0.8,
                  palette={"normal": "#009E73", "anomalous": "#D55E00"}, ax=ax, jitter=0.25)
    ax.set(xlabel="", ylabel=f"image score ({score})", title="Image scores by category")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="")
    return fig


@_styled
def heatmap(table: pd.DataFrame, title: str, *, cbar_label: str = "", fmt: str = ".2f",
            vmin: float | None = 0, vmax: float | None = 1) -> Figure:
    """Annotated heat map of a numeric table (rows x columns as given)."""
    import seaborn as sns

    fig = _figure(1.6 + 0.75 * table.shape[1], 1.2 + 0.32 * table.shape[0])
    ax = fig.subplots()
    sns.heatmap(table, annot=table.shape[0] * table.shape[1] <= 400, fmt=fmt, cmap="mako_r", vmin=vmin, vmax=vmax,
                ax=ax, cbar_kws={"label": cbar_label}, annot_kws={"fontsize": 7}, linewidths=0.3)
    ax.set(title=title, xlabel=table.columns.name or "", ylabel=table.index.name or "")
    ax.grid(False)
    return fig


# ------------------------------------------------------------------------------------ image grids


def _clean(ax, title: str = "") -> None:
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _show_image(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(np.clip(image, 0, 1), interpolation="bilinear")
    _clean(ax, title)


def _outline(ax, mask: np.ndarray | None) -> None:
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.2)


@_styled
def image_grid(images: np.ndarray, titles: Sequence[str], *, masks: np.ndarray | None = None,
               ncols: int = 6, suptitle: str = "") -> Figure:
    """Images (``[N, H, W, 3]`` in [0, 1]) with their ground-truth masks outlined."""
    rows = int(np.ceil(len(images) / ncols))
    fig = _figure(2.0 * ncols, 2.15 * rows)
    axes = fig.subplots(rows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= len(images):
            ax.set_axis_off()
            continue
        _show_image(ax, images[i], titles[i])
        _outline(ax, None if masks is None else masks[i])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


@_styled
def paired_rows(top: np.ndarray, bottom: np.ndarray, titles: Sequence[str], labels: tuple[str, str],
                suptitle: str = "") -> Figure:
    """Two aligned rows: ``top[i]`` above ``bottom[i]`` (e.g. an image and the PCA colours of its tokens)."""
    n = len(top)
    fig = _figure(2.2 * n, 4.6)
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        _show_image(axes[0, i], top[i], titles[i])
        axes[1, i].imshow(np.clip(bottom[i], 0, 1), interpolation="nearest")
        _clean(axes[1, i])
    axes[0, 0].set_ylabel(labels[0])
    axes[1, 0].set_ylabel(labels[1])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


@_styled
def token_grid(image: np.ndarray, norms: np.ndarray, title: str = "") -> Figure:
    """The input image with the patch grid drawn on it, and the L2 norm of each patch token."""
    size, grid = image.shape[0], norms.shape[0]
    fig = _figure(8.0, 3.9)
    ax, ax2 = fig.subplots(1, 2)
    _show_image(ax, image, f"input {size}x{size} px, {grid}x{grid} token grid ({size // grid} px per token)")
    for edge in np.arange(0, size + 1, size / grid):
        ax.axhline(edge - 0.5, color="white", linewidth=0.4, alpha=0.7)
        ax.axvline(edge - 0.5, color="white", linewidth=0.4, alpha=0.7)
    im = ax2.imshow(norms, cmap="viridis", interpolation="nearest")
    _clean(ax2, "L2 norm of each patch token")
    fig.colorbar(im, ax=ax2, shrink=0.85, label="||x_t||")
    if title:
        fig.suptitle(title)
    return fig


@_styled
def map_rows(images: np.ndarray, masks: np.ndarray, maps: np.ndarray, titles: Sequence[str], *,
             groups: Sequence[str] | None = None, vmax: float | None = None, suptitle: str = "",
             map_label: str = "anomaly map") -> Figure:
    """One row per example: image, ground truth, map over the image (one colour scale for all maps).

    Examples are laid out two per row (six panels); ``groups`` names each example's group and is
    written on its row (hits, misses, ...).
    """
    n = len(images)
    rows = int(np.ceil(n / 2))
    vmax = float(np.nanmax(maps)) if vmax is None else vmax
    fig = _figure(12.5, 2.25 * rows + 0.6)
    axes = fig.subplots(rows, 6, squeeze=False)
    im = None
    for i in range(rows * 2):
        trio = axes[i // 2, 3 * (i % 2): 3 * (i % 2) + 3]
        if i >= n:
            for ax in trio:
                ax.set_axis_off()
            continue
        _show_image(trio[0], images[i], titles[i])
        _outline(trio[0], masks[i])
        _show_image(trio[1], np.repeat(masks[i][..., None].astype(float), 3, axis=2), "ground truth")
        _show_image(trio[2], images[i] * 0.45, f"{map_label} (max {float(np.max(maps[i])):.2f})")
        im = trio[2].imshow(maps[i], cmap=MAP_CMAP, vmin=0.0, vmax=vmax, alpha=0.75)
        _outline(trio[2], masks[i])
        if groups is not None:
            trio[0].set_ylabel(groups[i], fontsize=9, fontweight="bold")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label=f"{map_label} (shared scale 0 to {vmax:.2f})")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


@_styled
def activation_gallery(images: np.ndarray, acts: np.ndarray, row_labels: Sequence[str],
                       titles: Sequence[Sequence[str]], suptitle: str = "") -> Figure:
    """Rows of images with an activation heat map over each (``images [R, C, H, W, 3]``, ``acts [R, C, H, W]``).

    Each row (one SAE atom) has its own colour scale from 0 to the row's largest activation.
    """
    rows, cols = images.shape[:2]
    fig = _figure(1.9 * cols + 0.9, 1.95 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        vmax = float(np.max(acts[r])) or 1.0
        for c in range(cols):
            ax = axes[r, c]
            _show_image(ax, images[r, c] * 0.5, titles[r][c])
            im = ax.imshow(acts[r, c], cmap=MAP_CMAP, vmin=0, vmax=vmax, alpha=0.7)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=9, fontweight="bold")
        fig.colorbar(im, ax=axes[r, :], shrink=0.9, pad=0.01, label="activation")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def method_overview() -> Figure:
    """"SPG in one figure": the inference path and the two training stages (see :mod:`spg.overview`)."""
    from .overview import method_overview as draw

    with style():
        return draw()
