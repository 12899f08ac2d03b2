""""SPG in one figure": boxes and arrows from image to anomaly map, with the two training stages.

Drawn with plain matplotlib patches on one axes in a 100 x 50 coordinate box; the small pictures
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
    ax.text(x, y + h / 2 - 1.6, title, ha="center", va="top", fontsize=10, fontweight="bold")
    if body:
        ax.text(x, y - h / 2 + 1.0, body, ha="center", va="bottom", fontsize=8.2, linespacing=1.35)


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
    """The method diagram (call through :func:`spg.viz.method_overview`, which applies the style)."""
    fig = Figure(figsize=(13.5, 6.2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, 100), ylim=(0, 50))
    ax.set_axis_off()
    img, amap = _defect_image()
    rng = np.random.default_rng(0)

    ax.text(1, 47.0, "Inference on a target image (categories never seen in training)", fontsize=11,
            fontweight="bold", color=EDGE[INFER], va="top")
    ax.text(1, 0.8, "Training, once, on auxiliary images with masks (other categories); the backbone stays frozen",
            fontsize=11, fontweight="bold", color="#555555", va="bottom")
    top = 34.5
    _box(ax, 7.5, top, 12, 15, INFER, "image", "RGB, 448x448")
    _picture(ax, img, (7.5, top + 0.2), 7, 7)
    _box(ax, 23.5, top, 14, 15, FROZEN, "frozen backbone", "DINOv3 ViT-L/16 (paper)\nCLIP ViT-L/14-336\nEfficientNet-Lite2 (offline)")
    _box(ax, 40.5, top, 14, 15, FROZEN, "tokens", "patch tokens $x_t$ ($h \\times w \\times d$)\n+ global token $x_0$")
    _picture(ax, rng.random((6, 6, 3)) * 0.6 + 0.3, (40.5, top + 1.3), 5, 5, interpolation="nearest")
    _box(ax, 59.5, top, 18, 15, INFER, "cosine + softmax",
         "$p_t = \\mathrm{softmax}(\\,[\\cos(x_t, g_2),$\n$\\cos(x_t, g_3)]\\,/\\,\\tau\\,)$, $\\tau = 0.07$\n"
         "$g_2$ local-normal, $g_3$ local-anomaly")
    _box(ax, 78, top, 14, 15, INFER, "anomaly map", "upsample to 448 px\n+ Gaussian blur (sigma 4)")
    _picture(ax, amap, (78, top + 1.9), 5.5, 5.5, cmap="inferno")
    _box(ax, 93, top, 11, 15, INFER, "image score", "max of the map\n(or global head on\n$x_0$ with $g_0, g_1$)")
    for x0, x1 in ((13.5, 16.5), (30.5, 33.5), (47.5, 50.5), (68.5, 71), (85, 87.5)):
        _arrow(ax, (x0, top), (x1, top))

    low = 13.5
    _box(ax, 9, low, 15, 16, STAGE1, "auxiliary data", "labelled images and masks\n(e.g. VisA when the\ntarget is MVTec AD)")
    _box(ax, 29, low, 17, 16, STAGE1, "stage (i): TopK SAE",
         "$z = \\mathrm{relu}(\\mathrm{topk}_k(W_{enc}\\,x_t))$\n$\\hat{x} = z\\,D$, no biases\nMSE + AuxK loss")
    _box(ax, 48.5, low, 14, 16, STAGE1, "dictionary D", "C unit-norm atoms\n(C = 4096, k = 32)")
    atoms = rng.standard_normal((7, 10))
    _picture(ax, atoms, (48.5, low + 1.6), 7, 4.2, cmap="coolwarm", interpolation="nearest")
    _box(ax, 71, low, 24, 16, STAGE2, "stage (ii): sparse-projected guides",
         "$g = \\mathrm{relu}(\\Theta)\\,D$: 4 non-negative sparse\ncombinations of atoms (global / local,\n"
         "normal / anomaly); CE + focal + Dice + L1")
    coef = np.zeros((1, 24))
    coef[0, [2, 7, 8, 15, 20]] = [0.9, 0.4, 1.0, 0.6, 0.3]
    _picture(ax, coef, (71, low + 2.4), 10, 1.6, cmap="Oranges", vmin=0, vmax=1, interpolation="nearest")
    code = np.zeros((1, 24))
    code[0, [1, 5, 12, 19]] = [0.5, 1.0, 0.7, 0.4]
    _picture(ax, code, (29, low + 2.4), 10, 1.6, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.text(29, low + 0.6, "sparse code z: k of C latents active", ha="center", va="top", fontsize=7.5, color="#555555")
    ax.text(71, low + 0.6, "coefficients relu(Theta) of one guide: few atoms", ha="center", va="top",
            fontsize=7.5, color="#555555")
    aux_img, _ = _defect_image()
    _picture(ax, aux_img[::-1], (9, low + 1.6), 5.5, 5.5)
    _arrow(ax, (37.5, low), (41.5, low), "learns")
    _arrow(ax, (55.5, low), (59, low), "atoms")
    _arrow(ax, (13, 21.8), (19.5, 26.6), "aux images", dashed=True, offset=(-5.0, -0.8))
    _arrow(ax, (26.5, 26.6), (29, 21.8), "aux tokens", dashed=True, offset=(4.6, -0.8))
    _arrow(ax, (68, 21.8), (62, 26.6), "guides $g_0 \\ldots g_3$", colour=EDGE[STAGE2], offset=(5.5, -0.5))
    for i, (colour, text) in enumerate(((FROZEN, "frozen"), (STAGE1, "stage (i), trained once"),
                                        (STAGE2, "stage (ii), trained once"), (INFER, "zero-shot inference"))):
        ax.add_patch(FancyBboxPatch((86.5, 17.5 - 3.2 * i), 2, 1.6, boxstyle="round,pad=0.2", fc=colour, ec=EDGE[colour]))
        ax.text(89.3, 18.3 - 3.2 * i, text, fontsize=8.2, va="center")
    return fig
