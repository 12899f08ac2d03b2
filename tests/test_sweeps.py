import pytest

from spg.config import ConfigError
from spg.metrics import METRIC_NAMES
from spg.pipeline import preset_config
from spg.sweeps import apply_point, grid, means, sweep


def test_grid_and_apply_point():
    points = grid(sae__n_atoms=[64, 128], sae__k=[4, 8])
    assert points == [{"sae.n_atoms": 64, "sae.k": 4}, {"sae.n_atoms": 64, "sae.k": 8},
                      {"sae.n_atoms": 128, "sae.k": 4}, {"sae.n_atoms": 128, "sae.k": 8}]
    cfg = apply_point(preset_config("smoke"), {"sae.k": 2, "eval.image_score": "lse"})
    assert cfg.sae.k == 2 and cfg.eval.image_score == "lse"
    with pytest.raises(ConfigError):
        apply_point(cfg, {"k": 2})


@pytest.mark.weights
def test_sweep_tabulates_every_point(smoke_cache, tmp_path):
    base = preset_config("smoke", cache_dir=str(smoke_cache))
    points = [{"eval.image_score": s} for s in ("max", "top10_mean")]
    frame = sweep(base, points, tmp_path, progress=False)
    table = means(frame)
    assert list(table.index) == ["max", "top10_mean"]
    assert set(METRIC_NAMES) <= set(table.columns)
    # pooling changes image metrics only; pixel metrics come from the same maps
    assert table["pixel_auroc"].nunique() == 1
    assert (tmp_path / "sweep.csv").is_file()
