"""Token extraction: per-category caching, assembled stores and sampled auxiliary sets."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from spg.data import DatasetError, mvtec_dataset
from spg.features import ExtractConfig, TokenStore, extract_features


class CountingBackbone(torch.nn.Module):
    """A deterministic stand-in backbone (tokens are functions of the pixels) that counts its images."""

    image_size, grid, dim = 32, 2, 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def describe(self) -> dict:
        return {"name": "counting", "image_size": self.image_size}

    def forward(self, images: torch.Tensor):
        self.seen.append(images.shape[0])
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, self.grid).permute(0, 2, 3, 1)
        return pooled.mean((1, 2)), pooled


@pytest.fixture
def backbone() -> CountingBackbone:
    return CountingBackbone()


def _dataset(root, categories=None):
    return mvtec_dataset(root, categories=categories, image_size=CountingBackbone.image_size)


def _rows(store: TokenStore) -> dict[str, np.ndarray]:
    return {p: np.asarray(store.patches[i]) for i, p in enumerate(store.paths)}


def test_each_category_is_extracted_once_and_shared_across_splits(tiny_mvtec_root, tmp_path, backbone):
    cfg = ExtractConfig(batch_size=2)
    both = extract_features(_dataset(tiny_mvtec_root), backbone, tmp_path, cfg, progress=False)
    assert sum(backbone.seen) == 6  # 4 widget + 2 tile images, each once
    assert len(list((tmp_path / "features").iterdir())) == 3  # widget, tile, and the assembled pair
    widget_only = extract_features(_dataset(tiny_mvtec_root, ["widget"]), backbone, tmp_path, cfg, progress=False)
    assert sum(backbone.seen) == 6  # the widget category came from the cache
    assembled, direct = _rows(both), _rows(widget_only)
    assert all(np.array_equal(assembled[p], direct[p]) for p in direct)
    order = [os.path.abspath(r.image_path) for r in _dataset(tiny_mvtec_root).records]
    assert both.paths == order and both.categories.tolist() == [r.category for r in _dataset(tiny_mvtec_root).records]
    assert int(both.labels.sum()) == 3 and both.masks.shape == (6, 32, 32)


def test_sample_is_seeded_capped_and_keeps_both_labels(tiny_mvtec_root):
    ds = _dataset(tiny_mvtec_root)
    sample = ds.sample(2)
    assert sample.name.endswith("@2") and sample.fingerprint() != ds.fingerprint()
    assert [r.image_path for r in sample.records] == [r.image_path for r in ds.sample(2).records]
    for cat in ("widget", "tile"):
        labels = [r.label for r in sample.records if r.category == cat]
        assert sorted(labels) == [0, 1]  # 2 of 4 widgets (half anomalous) and both tiles
    with pytest.raises(DatasetError, match="per_category"):
        ds.sample(1)


def test_sample_reads_whole_categories_from_cache_or_extracts_only_its_images(tiny_mvtec_root, tmp_path, backbone):
    cfg = ExtractConfig(batch_size=8)
    full = _dataset(tiny_mvtec_root)
    sampled = extract_features(full.sample(2), backbone, tmp_path / "fresh", cfg, source=full, progress=False)
    assert sum(backbone.seen) == 4  # nothing cached: only the sampled images ran
    extract_features(full, backbone, tmp_path / "warm", cfg, progress=False)
    backbone.seen.clear()
    again = extract_features(full.sample(2), backbone, tmp_path / "warm", cfg, source=full, progress=False)
    assert backbone.seen == []  # rows copied from the cached whole categories
    assert again.paths == sampled.paths
    assert np.array_equal(np.asarray(again.patches), np.asarray(sampled.patches))


def test_assembled_store_records_where_its_rows_came_from(tiny_mvtec_root, tmp_path, backbone):
    ds = _dataset(tiny_mvtec_root, ["tile", "widget"])
    store = extract_features(ds, backbone, tmp_path, ExtractConfig(), progress=False)
    assert store.paths == [os.path.abspath(r.image_path) for r in ds.records]
    parts = {TokenStore(tmp_path / "features" / key).categories[0] for key in store.meta["assembled_from"]}
    assert parts == {"tile", "widget"}


def test_stored_paths_are_absolute_so_another_working_directory_reads_them(tiny_mvtec_root, tmp_path, backbone, monkeypatch):
    monkeypatch.chdir(tiny_mvtec_root.parent)
    store = extract_features(_dataset(tiny_mvtec_root.name, ["tile"]), backbone, tmp_path, ExtractConfig(), progress=False)
    monkeypatch.chdir(tmp_path)
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in TokenStore(store.folder).paths)
