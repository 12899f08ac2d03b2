"""Tests of spg.synthetic: determinism, layout, defects, exact masks, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spg import synthetic
from spg.data import DatasetError, mvtec_dataset
from spg.synthetic import (
    AREA_BOUNDS,
    AUX_CATEGORIES,
    DEFECT_KINDS,
    GENERATOR_VERSION,
    TARGET_CATEGORIES,
    SyntheticConfig,
    generate_synthetic,
    render_sample,
    synthetic_dataset,
)

CFG = SyntheticConfig(n_good=2, n_defect_per_kind=2)
TINY = SyntheticConfig(n_good=1, n_defect_per_kind=1, categories=("pill", "fabric"), image_size=64)
ALL = AUX_CATEGORIES + TARGET_CATEGORIES


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All categories, 2 goods and 2 images per defect kind each, 256 px."""
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "data", CFG)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_categories_disjoint_and_mixed() -> None:
    assert not set(AUX_CATEGORIES) & set(TARGET_CATEGORIES)
    assert len(AUX_CATEGORIES) >= 3 and len(TARGET_CATEGORIES) >= 2
    assert set(DEFECT_KINDS) == {"scratch", "crack", "hole", "stain", "missing", "cut_paste"}
    textures = {"brick", "wood", "gravel", "fabric"}
    for side in (AUX_CATEGORIES, TARGET_CATEGORIES):  # textures and objects on both sides
        assert set(side) & textures and set(side) - textures


def test_layout_loads_with_every_kind(generated: Path) -> None:
    ds = mvtec_dataset(generated, image_size=32)
    assert ds.categories == sorted(ALL)
    for cat, d in ds.describe()["categories"].items():
        assert d["defects"] == {"good": 2, **{k: 2 for k in DEFECT_KINDS}}, cat
    marker = json.loads((generated / synthetic.MARKER_NAME).read_text())
    assert marker["generator_version"] == GENERATOR_VERSION and marker["config"]["seed"] == 0


def test_masks_exist_nonempty_and_sized(generated: Path) -> None:
    ds = mvtec_dataset(generated, image_size=32)
    lo, hi = AREA_BOUNDS
    for r in ds.records:
        if r.label == 0:
            assert r.mask_path is None
            continue
        m = np.asarray(Image.open(r.mask_path))
        assert set(np.unique(m).tolist()) == {0, 255}, r.mask_path
        assert lo <= (m > 0).mean() <= hi, (r.mask_path, (m > 0).mean())
    native = mvtec_dataset(generated, ["pill"], image_size=CFG.image_size)  # no resize: mask == file
    for i in np.flatnonzero(native.labels)[::3]:
        file_mask = np.asarray(Image.open(native.records[i].mask_path)) > 0
        assert np.array_equal(native[i]["mask"].numpy() > 0.5, file_mask)


def test_written_files_equal_render_sample(generated: Path) -> None:
    smp = render_sample("hex_nut", "crack", seed=0, index=1, image_size=256)
    img = np.asarray(Image.open(generated / "hex_nut/test/crack/001.png"))
    mask = np.asarray(Image.open(generated / "hex_nut/ground_truth/crack/001_mask.png")) > 0
    assert np.array_equal(img, smp.image) and np.array_equal(mask, smp.mask)


@pytest.mark.parametrize("category", ALL)
def test_defect_changes_exactly_the_mask(category: str) -> None:
    for kind in DEFECT_KINDS:
        smp = render_sample(category, kind, seed=3, index=0, image_size=128)
        diff = np.abs(smp.image.astype(int) - smp.clean.astype(int)).max(axis=2)
        assert smp.mask.any(), kind
        assert (diff[~smp.mask] == 0).all(), f"{category}/{kind}: pixels changed outside the mask"
        assert (diff[smp.mask] > 0).mean() > 0.9, f"{category}/{kind}: mask pixels left unchanged"
        assert diff[smp.mask].mean() > 8, f"{category}/{kind}: defect too faint"
    good = render_sample(category, "good", seed=3, index=0, image_size=128)
    assert not good.mask.any() and np.array_equal(good.image, good.clean)


def test_normals_vary() -> None:
    for cat in ALL:
        a, b = (render_sample(cat, None, seed=0, index=i, image_size=64).image for i in (0, 1))
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 3, cat


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = _files(generate_synthetic(tmp_path / "a", TINY))
    b = _files(generate_synthetic(tmp_path / "b", TINY))
    assert a == b and len(a) == 2 * (1 + 2 * len(DEFECT_KINDS))
    c = _files(generate_synthetic(tmp_path / "c", SyntheticConfig(**{**TINY.__dict__, "seed": 1})))
    assert c.keys() == a.keys() and all(c[k] != a[k] for k in a if "/test/" in k)


def test_regeneration_skipped_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = generate_synthetic(tmp_path / "d", TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def boom(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synthetic, "_write_category", boom)
    assert generate_synthetic(root, TINY) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "user"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a synthetic generation"):
        generate_synthetic(root, TINY)
    assert (root / "keep.txt").read_text() == "mine"
    done = generate_synthetic(tmp_path / "e", TINY)
    with pytest.raises(DatasetError, match="not a synthetic generation"):  # other config: never overwritten
        generate_synthetic(done, SyntheticConfig(**{**TINY.__dict__, "seed": 5}))


def test_synthetic_dataset_roles_and_cache(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_good=1, n_defect_per_kind=1, image_size=64)
    aux = synthetic_dataset("aux", image_size=32, cache_dir=tmp_path, cfg=cfg)
    target = synthetic_dataset("target", image_size=32, cache_dir=tmp_path, cfg=cfg)
    assert aux.categories == sorted(AUX_CATEGORIES) and target.categories == sorted(TARGET_CATEGORIES)
    assert aux[0]["image"].shape == (3, 32, 32)
    roots = list((tmp_path / "synthetic").iterdir())
    assert len(roots) == 1 and synthetic.is_complete(roots[0], cfg)
    with pytest.raises(DatasetError, match="role"):
        synthetic_dataset("test", image_size=32, cache_dir=tmp_path, cfg=cfg)


def test_bad_config() -> None:
    with pytest.raises(DatasetError, match="unknown"):
        synthetic._check_cfg(SyntheticConfig(categories=("unicorn",)))
    with pytest.raises(DatasetError, match="n_good"):
        synthetic._check_cfg(SyntheticConfig(n_good=0))
