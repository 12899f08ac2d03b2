"""Fast checks of the figure functions (tiny data) and of the notebook glue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from spg import notebook as nb
from spg import viz
from spg.config import ConfigError

RNG = np.random.default_rng(0)
IMAGES = RNG.random((4, 32, 32, 3))
MASKS = np.zeros((4, 32, 32), bool)
MASKS[1, 8:16, 8:20] = True
MAPS = RNG.random((4, 32, 32))
HISTORY = pd.DataFrame({"epoch": [0, 1, 2], "mse": [3.0, 2.0, 1.5], "aux": [0.0, 0.1, 0.05], "dead_latents": [0, 2, 1]})
CURVES = pd.concat([pd.DataFrame({"curve": c, "category": cat, "x": [0, 0.5, 1], "y": [0, 0.7, 1]})
                    for c in ("image ROC", "image PR", "pixel ROC", "PRO (exact, FPR <= 0.3)") for cat in ("a", "b")])
SCORES = pd.DataFrame({"category": ["a", "a", "b", "b"], "label": [0, 1, 0, 1], "max": [0.1, 0.8, 0.3, 0.6]})
MASS = pd.DataFrame({"guide": ["local_anomaly"] * 3, "n": [1, 10, 100], "share": [0.2, 0.7, 1.0]})
BARS = pd.DataFrame({"category": ["a", "b", "c"], "value": [0.5, -0.1, 0.9]})
LONG = pd.DataFrame({"metric": ["m1", "m1", "m2", "m2"], "category": ["a", "b", "a", "b"], "value": [0.2, 0.4, 0.6, 0.8]})

FIGURES = {
    "method_overview": lambda: viz.method_overview(),
    "training_curves": lambda: viz.training_curves(HISTORY, ["mse", "aux", "dead_latents"], log=["mse"]),
    "histogram": lambda: viz.histogram(RNG.random(50), "x", "title", note="note"),
    "bars": lambda: viz.bars(BARS, "category", "value", ylim=(0, 1)),
    "bars_hue_horizontal": lambda: viz.bars(LONG, "metric", "value", hue="category", horizontal=True),
    "mass_curves": lambda: viz.mass_curves(MASS),
    "metric_curves": lambda: viz.metric_curves(CURVES),
    "score_strips": lambda: viz.score_strips(SCORES, "max"),
    "heatmap": lambda: viz.heatmap(pd.DataFrame(RNG.random((3, 4))), "t"),
    "image_grid": lambda: viz.image_grid(IMAGES, list("abcd"), masks=MASKS, ncols=3),
    "paired_rows": lambda: viz.paired_rows(IMAGES, IMAGES[:, ::4, ::4], list("abcd"), ("top", "bottom")),
    "token_grid": lambda: viz.token_grid(IMAGES[0], RNG.random((4, 4))),
    "map_rows": lambda: viz.map_rows(IMAGES[:3], MASKS[:3], MAPS[:3], list("abc"), groups=["g1", "g1", "g2"]),
    "activation_gallery": lambda: viz.activation_gallery(IMAGES.reshape(2, 2, 32, 32, 3), MAPS.reshape(2, 2, 32, 32),
                                                         ["r1", "r2"], [["a", "b"], ["c", ""]]),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_functions_draw_something(name):
    fig = FIGURES[name]()
    assert isinstance(fig, Figure)
    drawn = [ax for ax in fig.axes if ax.has_data() or ax.patches or ax.texts]
    assert drawn, f"{name}: no axes with content"


def test_save_figure_writes_png_and_csv(tmp_path):
    data = pd.DataFrame({"x": [1, 2], "y": [3, 4]})
    png = viz.save_figure(viz.histogram(np.arange(10), "x", "t"), data, "hist", tmp_path / "out")
    assert png == tmp_path / "out" / "hist.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.read_csv(tmp_path / "out" / "hist.csv").equals(data)


def test_style_is_one_context():
    import matplotlib

    before = matplotlib.rcParams["axes.spines.top"]
    with viz.style():
        assert matplotlib.rcParams["axes.spines.top"] is False
    assert matplotlib.rcParams["axes.spines.top"] == before


def test_make_config_drops_none_and_applies_overrides():
    cfg = nb.make_config("smoke", None, None, "synthetic", "synthetic", None, {"sae.k": 4, "guides": {"epochs": 1}},
                         sae=dict(n_atoms=128, k=None))
    assert cfg.sae.n_atoms == 128 and cfg.sae.k == 4 and cfg.guides.epochs == 1
    assert cfg.extract.backbone == "efficientnet_lite2" and cfg.preset == "smoke"
    cfg = nb.make_config("default", "efficientnet_lite0", None, "synthetic:brick synthetic:wood", "synthetic", "/tmp/c")
    assert cfg.aux == ("synthetic:brick", "synthetic:wood") and cfg.extract.backbone == "efficientnet_lite0"
    assert cfg.cache_dir == "/tmp/c"
    assert "changed from preset" in nb.settings(cfg, "extract").columns
    with pytest.raises(ConfigError):
        nb.make_config("default", overrides={"nonsense.k": 1})
    with pytest.raises(ConfigError):
        nb.make_config("default", sae=dict(not_a_field=1))
