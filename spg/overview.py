""""SPG in one figure": boxes and arrows from image to anomaly map, with the two training stages.

Drawn with plain matplotlib patches on one axes in a 100 x 84 coordinate box; the small pictures
inside the boxes (an image with a defect, a token grid, atoms, sparse coefficients, a map) are
generated here, so the figure needs no data. Use it through :func:`spg.viz.method_overview`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

FROZEN, STAGE1, STAGE2, INFER = "#D9D9D9", "#CFE3F5", "#FBE1BD", "#D3EFD9"
EDGE = {FROZEN: "#7F7F7F", STAGE1: "#0072B2", STAGE2: "#E69F00", INFER: "#009E73"}


def _box(ax, x: float, y: float, w: float, h: float, colour: str, title: str, body: str = "") -> None:
    """A rounded box centred at (x, y), bold title on top, body text below it."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.4,rounding_size=1.2",
                                fc=colour, ec=EDGE[colour], lw=1.4))
    ax.text(x, y + h / 2 - 1.2, title, ha="center", va="top", fontsize=10, fontweight="bold")
    if body:
        ax.text(x, y - h / 2 + 1.0, body, ha="center", va="bottom", fontsize=8.5, linespacing=1.3)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], label: str = "", *,
           dashed: bool = False, colour: str = "#333333", offset: tuple[float, float] = (0, 1.2)) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, lw=1.5, color=colour,
                                 linestyle="--" if dashed else "-", shrinkA=2, shrinkB=2))
    if label:
        mid = ((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1])
        ax.text(*mid, label, ha="center", va="bottom", fontsize=7.8, color=colour, style="italic")


def _picture(ax, array: np.ndarray, centre: tuple[float, float], w: float, h: float, **kw) -> None:
    x, y = centre
    ax.imshow(array, extent=(x - w / 2, x + w / 2, y - h / 2, y + h / 2), aspect="auto", zorder=3, **kw)


def _defect_image(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A grey texture with a dark scratch, and the scratch's soft anomaly map."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    tex = 0.6 + 0.08 * np.sin(18 * xx + 6 * yy) + 0.05 * rng.standard_normal((size, size))
    line = np.exp(-((yy - 0.35 - 0.45 * xx) ** 2) / 0.0015) * ((xx > 0.25) & (xx < 0.75))
    img = np.stack([tex - 0.45 * line, tex - 0.45 * line, tex - 0.35 * line], axis=-1)
    amap = np.exp(-((yy - 0.35 - 0.45 * xx) ** 2) / 0.01) * np.exp(-((xx - 0.5) ** 2) / 0.08)
    return np.clip(img, 0, 1), amap


def method_overview() -> Figure:
    """The method diagram (call through :func:`spg.viz.method_overview`, which applies the style).

    Inference runs as a U: image -> backbone -> tokens on the first row, then back from right to
    left: cosine + softmax -> anomaly map -> image score. The two training stages form the bottom
    row; the guides they produce feed the cosine box.
    """
    fig = Figure(figsize=(8.8, 7.4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, 100), ylim=(0, 84))
    ax.set_axis_off()
    img, amap = _defect_image()
    rng = np.random.default_rng(0)

    ax.text(1, 83, "Inference on a target image (categories never seen in training)", fontsize=10.5,
            fontweight="bold", color=EDGE[INFER], va="top")
    r1, r2, w, h = 67, 41.5, 27, 16
    _box(ax, 16, r1, w, h, INFER, "image", "RGB, resized to 448 x 448")
    _picture(ax, img, (16, r1 + 0.5), 7, 7.5)
    _box(ax, 50, r1, w, h, FROZEN, "frozen backbone", "DINOv3 ViT-L/16 (paper), CLIP\nViT-L/14-336, EfficientNet-Lite2\n(offline, this book)")
    _box(ax, 84, r1, w, h, FROZEN, "tokens", "patch tokens $x_t$ ($h \\times w \\times d$)\n+ global token $x_0$")
    _picture(ax, rng.random((6, 6, 3)) * 0.6 + 0.3, (84, r1 + 1.2), 6, 6.5, interpolation="nearest")
    _box(ax, 84, r2, w, h, INFER, "cosine + softmax",
         "$p_t = \\mathrm{softmax}([\\cos(x_t, g_2),$\n$\\cos(x_t, g_3)]\\,/\\,\\tau)$, $\\tau = 0.07$\n"
         "$g_2$ local-normal, $g_3$ local-anomaly")
    _box(ax, 50, r2, w, h, INFER, "anomaly map", "upsample to 448 px\n+ Gaussian blur (sigma 4)")
    _picture(ax, amap, (50, r2 + 1.6), 6.5, 7)
    _box(ax, 16, r2, w, h, INFER, "image score", "maximum of the map\n(or the global head:\n$x_0$ against $g_0$, $g_1$)")
    _arrow(ax, (30, r1), (36, r1))
    _arrow(ax, (64, r1), (70, r1))
    _arrow(ax, (84, r1 - h / 2 - 0.6), (84, r2 + h / 2 + 0.6))
    _arrow(ax, (70, r2), (64, r2))
    _arrow(ax, (36, r2), (30, r2))

    ax.text(1, 31, "Training, once, on auxiliary images with masks (other categories)",
            fontsize=10.5, fontweight="bold", color="#555555", va="top")
    low, bw, bh = 14.5, 21.5, 19
    _box(ax, 12, low, bw, bh, STAGE1, "auxiliary data", "labelled images\n+ masks, e.g. VisA\nfor target MVTec AD")
    aux_img, _ = _defect_image()
    _picture(ax, aux_img[::-1], (12, low + 2), 6, 6.5)
    _box(ax, 37, low, bw, bh, STAGE1, "(i) TopK SAE",
         "$z = \\mathrm{relu}(\\mathrm{topk}_k(W_{enc}\\,x_t))$\n$\\hat{x} = z\\,D$, no biases\nMSE + AuxK loss")
    code = np.zeros((1, 16))
    code[0, [1, 5, 9, 13]] = [0.5, 1.0, 0.7, 0.4]
    _picture(ax, code, (37, low + 3.2), 13, 2.2, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    _box(ax, 62, low, bw, bh, STAGE1, "dictionary D", "C unit-norm atoms\n(C = 4096, k = 32)")
    _picture(ax, rng.standard_normal((6, 9)), (62, low + 2.2), 10, 5, cmap="coolwarm", interpolation="nearest")
    _box(ax, 87, low, bw, bh, STAGE2, "(ii) guides", "$g = \\mathrm{relu}(\\Theta)\\,D$: 4 sparse\nnon-negative atom mixes;\nCE + focal + Dice + L1")
    coef = np.zeros((1, 16))
    coef[0, [2, 7, 8, 13]] = [0.9, 0.4, 1.0, 0.6]
    _picture(ax, coef, (87, low + 3.2), 13, 2.2, cmap="Oranges", vmin=0, vmax=1, interpolation="nearest")
    for x0 in (22.75, 47.75, 72.75):
        _arrow(ax, (x0 + 0.3, low), (x0 + 3.5, low))
    _arrow(ax, (87, low + bh / 2 + 0.6), (87, r2 - h / 2 - 0.6), "guides $g_0 \\ldots g_3$", colour=EDGE[STAGE2],
           offset=(6.8, -1.5))
    for i, (colour, text) in enumerate(((FROZEN, "frozen"), (STAGE1, "stage (i)"), (STAGE2, "stage (ii)"),
                                        (INFER, "zero-shot inference"))):
        x = 31 + 16 * i
        ax.add_patch(FancyBboxPatch((x, 0.8), 2.2, 1.8, boxstyle="round,pad=0.2", fc=colour, ec=EDGE[colour]))
        ax.text(x + 3.2, 1.7, text, fontsize=8.5, va="center")
    return fig
