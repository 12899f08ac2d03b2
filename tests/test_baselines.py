"""Baselines: dense guides, random dictionary, training-free patch kNN; side-by-side comparison."""

import json

import numpy as np
import pytest
import torch

from spg.baselines import (METHODS, DenseGuideHead, PatchKNNScorer, compare, load_comparison, random_dictionary,
                           summarise)
from spg.guides import GuideConfig, spg_losses
from spg.metrics import METRIC_NAMES
from spg.pipeline import preset_config


def test_dense_head_guides_are_free_vectors_without_sparsity():
    theta = torch.randn(4, 6)
    head = DenseGuideHead(theta)
    assert torch.allclose(head.guides(), theta)  # negative entries kept: no relu, no dictionary
    b = {"global": torch.randn(2, 6), "patches": torch.randn(2, 3, 3, 6),
         "masks": torch.zeros(2, 12, 12), "labels": torch.tensor([0, 1])}
    losses = spg_losses(head, b["global"], b["patches"], b["masks"], b["labels"], GuideConfig())
    assert float(losses["sparsity"]) == 0.0
    losses["total"].backward()
    assert (head.theta.grad != 0).all()


def test_random_dictionary_is_seeded_and_unit_norm():
    a, b = random_dictionary(64, 10, seed=1), random_dictionary(64, 10, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, random_dictionary(64, 10, seed=2))
    assert torch.allclose(a.norm(dim=1), torch.ones(64), atol=1e-6)


def test_patch_knn_scores_the_odd_patch_highest():
    patches = torch.zeros(1, 3, 3, 4)
    patches[..., 0] = 1.0
    patches[0, 1, 2] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # orthogonal to every other patch
    scorer = PatchKNNScorer(knn=1)
    scores = scorer.anomaly_grid(patches)
    assert scores[0, 1, 2] == pytest.approx(1.0)  # cos distance 1 to its nearest neighbour
    assert torch.allclose(scores.flatten()[torch.arange(9) != 5], torch.zeros(8), atol=1e-6)
    assert scorer.anomaly_map(patches, 12).shape == (1, 12, 12)
    assert torch.isnan(scorer.global_score(torch.zeros(1, 4))).all()


@pytest.mark.weights
def test_compare_puts_all_methods_side_by_side(smoke_cache, tmp_path):
    cfg = preset_config("smoke", cache_dir=str(smoke_cache))
    result = compare(cfg, tmp_path, progress=False)
    assert list(result.means.index) == list(METHODS)
    assert list(result.means.columns) == list(METRIC_NAMES)
    assert np.isfinite(result.means["pixel_auroc"]).all()
    assert result.means.loc["spg", "pixel_auroc"] != result.means.loc["dense_guides", "pixel_auroc"]
    again = load_comparison(tmp_path)
    assert np.allclose(again.means.to_numpy(), result.means.to_numpy(), equal_nan=True)
    # per defect type, every method: one row per (category, defect) of the target, e.g. gravel/crack
    defects = again.per_defect.reset_index()
    assert set(defects["method"]) == set(METHODS)
    assert defects.groupby("method").size().nunique() == 1 and defects["defect"].drop_duplicates().iloc[:-1].str.contains("/").all()
    assert (defects["defect"] == "mean").sum() == len(METHODS)  # the mean over defect types, once per method
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert {"sae", "train_spg", "evaluate_training_free"} <= set(timing["seconds"])
    table = summarise([tmp_path], tmp_path / "summary")
    assert list(table.index.get_level_values("method")) == list(METHODS)
    assert table.loc[(table.index[0][0], "spg"), "AUPRO"] == round(result.means.loc["spg", "aupro"] * 100, 1)
    assert {"splits.csv", "splits.png", "runtime.csv"} <= {p.name for p in (tmp_path / "summary").iterdir()}
