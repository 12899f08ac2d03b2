"""The ablation studies: their points are valid configs, a study writes its tables and plot."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from spg import analysis, viz
from spg.config import ConfigError
from spg.pipeline import preset_config
from spg.studies import STUDIES, get_study, run_study
from spg.sweeps import apply_point


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_point_is_a_valid_distinct_config(name):
    study = STUDIES[name]
    base = preset_config("default")
    configs = [apply_point(base, point) for _, point in study.points]
    assert len({label for label, _ in study.points}) == len(study.points)
    assert len(set(configs)) == len(configs)  # no two points train and score the same thing


def test_sae_size_is_the_full_grid_and_unknown_study_is_refused():
    points = [p for _, p in STUDIES["sae_size"].points]
    assert {(p["sae.n_atoms"], p["sae.k"]) for p in points} == {(c, k) for c in (512, 1024, 2048, 4096) for k in (8, 16, 32, 64)}
    with pytest.raises(ConfigError, match="sae_size"):
        get_study("sae_sizes")


@pytest.mark.weights
def test_pooling_study_writes_tables_plot_and_config(smoke_cache, tmp_path):
    table = run_study("pooling", preset_config("smoke", cache_dir=str(smoke_cache)), tmp_path, progress=False)
    assert list(table.index) == [label for label, _ in STUDIES["pooling"].points]
    assert table["pixel_auroc"].nunique() == 1  # pooling only changes image scores
    assert table["image_auroc"].nunique() > 1
    assert pd.read_csv(tmp_path / "means.csv", index_col=0).index.tolist() == list(table.index)
    assert (tmp_path / "plot.png").stat().st_size > 5_000 and (tmp_path / "sweep.csv").is_file()
    assert json.loads((tmp_path / "study.json").read_text())["wall_seconds"] > 0
    shown = pd.read_csv(tmp_path / "table.csv", index_col=0)
    assert list(shown.columns[:6]) == ["I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "AUPRO"]
    assert shown.loc["max", "I-AUROC"] == table.loc["max", "image_auroc"]


def test_sweep_panels_numeric_axis_with_hue():
    data = pd.DataFrame({"sae.n_atoms": [512, 512, 1024, 1024], "sae.k": [8, 16, 8, 16],
                         "aupro": [50.0, 52.0, 55.0, 51.0], "pixel_auroc": [80.0, 81.0, 82.0, 83.0]})
    fig = viz.sweep_panels(data, "sae.n_atoms", ["aupro", "pixel_auroc"], hue="sae.k", title="t")
    axes = fig.get_axes()
    assert len(axes) == 2 and len(axes[0].get_lines()) == 2  # one line per k
    assert list(axes[0].get_lines()[0].get_ydata()) == [50.0, 55.0]


class _OneHotSAE:
    """Atom 0 fires on tokens whose first feature is 1, atom 1 on every token."""

    def encode(self, x):
        values = torch.stack([x[:, 0], torch.ones(len(x))], 1)
        return values, torch.tensor([[0, 1]]).expand(len(x), 2)


class _Store:
    def __init__(self):
        patches = torch.zeros(4, 2, 2, 3)
        patches[2:, 0, 0, 0] = 1.0  # the defect patch of the two anomalous images
        masks = torch.zeros(4, 8, 8)
        masks[2:, :4, :4] = 1.0
        self.data = {"patches": patches, "masks": masks, "labels": torch.tensor([0, 0, 1, 1])}

    def category_names(self):
        return ["c"]

    def indices(self, category=None):
        return np.arange(4)

    def iter_batches(self, batch_images, indices=None):
        yield self.data


def test_defect_firing_separates_defect_atoms_from_everywhere_atoms():
    firing = analysis.defect_firing(_OneHotSAE(), {"target": _Store()}, [0, 1]).set_index("atom")
    assert firing.loc[0, "on_defect"] == 1.0 and firing.loc[0, "on_normal"] == 0.0
    assert firing.loc[0, "lift"] == 8.0  # 1 / (1 / 8 normal patches)
    assert firing.loc[1, "lift"] == 1.0 and firing.loc[0, "defect_patches"] == 2
    top = pd.DataFrame({"atom": [0, 1], "share of L1": [0.25, 0.75]})
    mass = analysis.defect_mass(firing.reset_index(), top)
    assert mass.iloc[0]["their share of the guide's L1 mass"] == 0.25
    # weighted by the coefficients: 0.25 * 1.0 (atom 0) + 0.75 * 1.0 (atom 1 fires everywhere) on defects
    assert mass.iloc[0]["weighted rate on defects"] == 1.0 and mass.iloc[0]["weighted rate on normal"] == 0.75


def _fake_study(folder, seed, values):
    folder.mkdir(parents=True)
    pd.DataFrame({"point": ["max", "global"], "image_auroc": values, "image_ap": values, "image_f1max": values}
                 ).to_csv(folder / "means.csv", index=False)
    (folder / "study.json").write_text(json.dumps({"study": "pooling", "base": {"sae": {"seed": seed}}}))
    return folder


def test_seed_spread_summarises_every_point_over_seeds(tmp_path):
    from spg.studies import write_seed_spread

    folders = [_fake_study(tmp_path / f"s{s}", s, v) for s, v in ((0, [60.0, 80.0]), (1, [40.0, 82.0]), (2, [50.0, 84.0]))]
    summary = write_seed_spread("pooling", folders, tmp_path / "out")
    assert list(summary.index) == ["max", "global"]
    assert summary.loc["max", "I-AUROC mean"] == 50.0 and summary.loc["max", "I-AUROC std"] == 10.0
    assert summary.loc["global", "I-AUROC min"] == 80.0 and summary.loc["global", "seeds"] == 3
    spread = pd.read_csv(tmp_path / "out" / "spread.csv")
    assert sorted(spread["seed"].unique()) == ["seed 0", "seed 1", "seed 2"]
    assert (tmp_path / "out" / "spread.png").is_file()
    with pytest.raises(ConfigError, match="not 'sae_size'"):
        write_seed_spread("sae_size", folders, tmp_path / "bad")
