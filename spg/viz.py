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
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

STYLE: dict[str, object] = {
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12, "figure.dpi": 100,
    "savefig.dpi": 100, "savefig.bbox": "tight", "savefig.facecolor": "white",
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


def save_figure(fig: Figure, data: pd.DataFrame, name: str, folder: str | Path, dpi: int | None = None) -> Path:
    """Write ``folder/<name>.png`` and ``folder/<name>.csv`` (the data behind it); returns the PNG path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    png.write_bytes(figure_png(fig, dpi))
    data.to_csv(folder / f"{name}.csv", index=not isinstance(data.index, pd.RangeIndex))
    return png


def figure_png(fig: Figure, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes, reduced to a 256-colour palette (about 4x smaller, visually the same)."""
    from PIL import Image

    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format="png", dpi=dpi or STYLE["savefig.dpi"])
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
    return out.getvalue()


# ------------------------------------------------------------------------------------ line plots


@_styled
def training_curves(history: pd.DataFrame, columns: Sequence[str], titles: Sequence[str] | None = None,
                    log: Sequence[str] = ()) -> Figure:
    """One small panel per ``history`` column against ``epoch`` (log y-axis for columns in ``log``)."""
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig = _figure(2.7 * ncols, 2.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(columns):]:
        ax.set_axis_off()
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

    per_x = 1 if hue is None else max(1, data[hue].nunique())
    n = data[x].nunique()
    fig = _figure(3.6 + 0.35 * n * (1 + 0.45 * (per_x - 1)), 3.4) if not horizontal else \
        _figure(6.4, 1.2 + 0.24 * n * (1 + 0.5 * (per_x - 1)))
    ax = fig.subplots()
    kw = dict(data=data, hue=hue, ax=ax, palette="colorblind" if hue else None, color=None if hue else "#0072B2")
    sns.barplot(**({"x": y, "y": x, "orient": "h"} if horizontal else {"x": x, "y": y}), **kw)
    ax.set_title(title)
    (ax.set_xlabel if horizontal else ax.set_ylabel)(ylabel or y)
    (ax.set_ylabel if horizontal else ax.set_xlabel)("")
    if ylim:
        low = min(ylim[0], float(np.nanmin(data[y])) * 1.3)
        (ax.set_xlim if horizontal else ax.set_ylim)(low, ylim[1])
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
def sweep_panels(data: pd.DataFrame, x: str, metrics: Sequence[str], *, hue: str | None = None, title: str = "") -> Figure:
    """One panel per metric (values in %) over a sweep's points: lines over a numeric ``x`` (log2
    axis, one line per ``hue`` value) or markers over categorical point labels (``x="point"``)."""
    fig = _figure(3.3 * len(metrics), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    numeric = x != "point"
    for ax, metric in zip(axes, metrics):
        if numeric:
            for value, part in (data.groupby(hue, sort=True) if hue else [(None, data)]):
                part = part.sort_values(x)
                ax.plot(part[x], part[metric], marker="o", label=None if hue is None else f"{hue.split('.')[-1]}={value}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(data[x].unique()), [str(v) for v in sorted(data[x].unique())])
            ax.set_xlabel(x.split(".")[-1])
        else:
            ax.plot(np.arange(len(data)), data[metric], marker="o", linestyle="none", markersize=7)
            ax.set_xticks(np.arange(len(data)), data[x].astype(str), rotation=35, ha="right")
        from .analysis.results import SHORT_NAMES

        ax.set_title(SHORT_NAMES.get(metric, metric))
        ax.set_ylabel("%")
    if hue:
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle(title)
    return fig


@_styled
def seed_spread(data: pd.DataFrame, metrics: Sequence[str], x: str = "point", title: str = "") -> Figure:
    """One panel per metric: every seed's value per ``x`` as a dot, and the mean over seeds as a bar."""
    import seaborn as sns

    from .analysis.results import SHORT_NAMES

    fig = _figure(3.4 * len(metrics), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        sns.barplot(data=data, x=x, y=metric, ax=ax, color="#56B4E9", errorbar=None, alpha=0.6)
        sns.stripplot(data=data, x=x, y=metric, ax=ax, color="#000000", size=4, jitter=0.15)
        ax.set(title=SHORT_NAMES.get(metric, metric), xlabel="", ylabel="%", ylim=(max(0.0, float(data[metric].min()) - 10), 100))
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle(title)
    return fig


@_styled
def method_panels(data: pd.DataFrame, metrics: Sequence[str], x: str = "target", hue: str = "method") -> Figure:
    """One panel per metric: grouped bars of ``metrics`` (columns of ``data``, in %) per ``x``, one bar per ``hue``."""
    import seaborn as sns

    fig = _figure(3.4 * len(metrics) + 1.6, 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        sns.barplot(data=data, x=x, y=metric, hue=hue, ax=ax, palette="colorblind", legend=ax is axes[-1])
        ax.set(title=metric, xlabel="", ylabel="%", ylim=(max(0.0, float(data[metric].min()) - 10), 100))
    sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title=hue)
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
    fig = _figure(8.0, 6.4)
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
    n = data["category"].nunique()
    fig = _figure(min(2.4 + 0.9 * n, 9.0), 3.6)
    ax = fig.subplots()
    sns.stripplot(data=data, x="category", y=score, hue="image", dodge=True, size=4, alpha=0.8,
                  palette={"normal": "#009E73", "anomalous": "#D55E00"}, ax=ax, jitter=0.25)
    ax.set(xlabel="", ylabel=f"image score ({score})", title="Image scores by category")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="")
    if n > 6:
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    return fig


@_styled
def heatmap(table: pd.DataFrame, title: str, *, cbar_label: str = "", fmt: str = ".2f",
            vmin: float | None = 0, vmax: float | None = 1, cmap: str = "mako_r") -> Figure:
    """Annotated heat map of a numeric table (rows x columns as given); pass a diverging ``cmap``
    (e.g. ``"vlag"``) with symmetric ``vmin``/``vmax`` for signed values."""
    import seaborn as sns

    fig = _figure(min(2.0 + 0.6 * table.shape[1], 12.0), 1.4 + 0.3 * table.shape[0])
    ax = fig.subplots()
    sns.heatmap(table, annot=table.shape[0] * table.shape[1] <= 400, fmt=fmt, cmap=cmap, vmin=vmin, vmax=vmax,
                ax=ax, cbar_kws={"label": cbar_label}, annot_kws={"fontsize": 8}, linewidths=0.3)
    ax.set(title=title, xlabel=table.columns.name or "", ylabel=table.index.name or "")
    ax.tick_params(axis="x", labelrotation=35)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.grid(False)
    return fig


# ------------------------------------------------------------------------------------ image grids


def _clean(ax, title: str = "", size: float = 9) -> None:
    ax.set_title(title, fontsize=size)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _show_image(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(np.clip(image, 0, 1), interpolation="bilinear")
    _clean(ax, title)


def _outline(ax, mask: np.ndarray | None) -> None:
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.2)


def _overlay(ax, image: np.ndarray, values: np.ndarray, vmax: float) -> None:
    """Heat map over an image, transparent where the value is low (so the image stays readable)."""
    from matplotlib import colormaps

    level = np.clip(values / (vmax or 1.0), 0, 1)
    rgba = colormaps[MAP_CMAP](level)
    rgba[..., 3] = 0.85 * np.sqrt(level)
    ax.imshow(np.clip(image, 0, 1), interpolation="bilinear")
    ax.imshow(rgba, interpolation="bilinear")


def _colorbar(fig: Figure, axes, vmax: float, label: str, **kw) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(0, vmax), MAP_CMAP), ax=axes, label=label, **kw)


@_styled
def image_grid(images: np.ndarray, titles: Sequence[str], *, masks: np.ndarray | None = None,
               ncols: int = 3, suptitle: str = "") -> Figure:
    """Images (``[N, H, W, 3]`` in [0, 1]) with their ground-truth masks outlined."""
    rows = int(np.ceil(len(images) / ncols))
    fig = _figure(2.3 * ncols, 2.4 * rows + 0.3)
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
                suptitle: str = "", ncols: int = 3) -> Figure:
    """Pairs of pictures, ``top[i]`` above ``bottom[i]`` (e.g. an image and the PCA colours of its tokens).

    Pairs are laid out ``ncols`` per block row; ``labels`` name the upper and the lower row.
    """
    n = len(top)
    blocks = int(np.ceil(n / ncols))
    fig = _figure(2.3 * ncols + 0.4, 4.6 * blocks + 0.3)
    axes = fig.subplots(2 * blocks, ncols, squeeze=False)
    for i in range(blocks * ncols):
        upper, lower = axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
        if i >= n:
            upper.set_axis_off()
            lower.set_axis_off()
            continue
        _show_image(upper, top[i], titles[i])
        lower.imshow(np.clip(bottom[i], 0, 1), interpolation="nearest")
        _clean(lower)
        if i % ncols == 0:
            upper.set_ylabel(labels[0])
            lower.set_ylabel(labels[1])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


@_styled
def token_grid(image: np.ndarray, norms, title: str = "") -> Figure:
    """The input image with the patch grid drawn on it, and the L2 norm of each patch token (``[h, w]``)."""
    norms = np.asarray(norms)
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
    """One row per example: image (mask outlined), ground truth, anomaly map (one colour scale for all maps).

    ``groups`` names each example's group (hits, misses, ...), written at the left of its row.
    """
    n = len(images)
    vmax = float(np.nanmax(maps)) if vmax is None else vmax
    fig = _figure(7.6, 2.3 * n + 0.4)
    axes = fig.subplots(n, 3, squeeze=False)
    for i, row in enumerate(axes):
        _show_image(row[0], images[i], titles[i])
        _outline(row[0], masks[i])
        _show_image(row[1], np.repeat(masks[i][..., None].astype(float), 3, axis=2), "ground truth")
        row[2].imshow(maps[i], cmap=MAP_CMAP, vmin=0.0, vmax=vmax, interpolation="bilinear")
        _clean(row[2], f"{map_label} (max {float(np.max(maps[i])):.2f})")
        _outline(row[2], masks[i])
        if groups is not None:
            row[0].set_ylabel(groups[i], fontsize=9, fontweight="bold")
    if n:
        _colorbar(fig, axes, vmax, f"{map_label} (shared scale 0 to {vmax:.2f})", shrink=min(0.9, 2.5 / n + 0.2))
    if suptitle:
        fig.suptitle(suptitle)
    return fig


@_styled
def activation_gallery(images: np.ndarray, acts: np.ndarray, row_labels: Sequence[str],
                       titles: Sequence[Sequence[str]], suptitle: str = "") -> Figure:
    """Rows of images with an activation heat map over each (``images [R, C, H, W, 3]``, ``acts [R, C, H, W]``).

    Each row (one SAE atom) has its own colour scale from 0 to the row's largest activation; cells
    with an empty title are left blank.
    """
    rows, cols = images.shape[:2]
    fig = _figure(1.8 * cols + 1.1, 1.95 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        vmax = float(np.max(acts[r])) or 1.0
        for c in range(cols):
            ax = axes[r, c]
            if not titles[r][c]:
                ax.set_axis_off()
                continue
            _overlay(ax, images[r, c], acts[r, c], vmax)
            _clean(ax, titles[r][c], 8)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=9, fontweight="bold")
        _colorbar(fig, axes[r, :], vmax, "activation", shrink=0.9, pad=0.01)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def method_overview() -> Figure:
    """"SPG in one figure": the inference path and the two training stages (see :mod:`spg.overview`)."""
    from .overview import method_overview as draw

    with style():
        return draw()
