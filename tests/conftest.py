"""Shared fixtures: a tiny MVTec-layout dataset built on the fly, and the optional real data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _rect_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def build_tiny_mvtec(root: Path) -> Path:
    """Write a tiny MVTec-layout dataset with mixed formats, modes and sizes; returns ``root``.

    ``widget``: good ``000.png`` (RGB 40x30), good ``001.jpg`` (grey 50x50), ``scratch/000.png``
    (RGBA 64x48, colour (200, 100, 50)) and ``scratch/001.png`` (16-bit grey 32x32, value 32768),
    each with a ``_mask.png``. ``tile``: good ``a.bmp`` (RGB 20x20), ``crack/b.tif`` (RGB 30x30) + mask.
    Non-image files (``LICENSE``, ``.DS_Store``) are ignored by loaders.
    """
    rng = np.random.default_rng(0)
    w = root / "widget"
    for sub in ("test/good", "test/scratch", "ground_truth/scratch"):
        (w / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(w / "test/good/000.png")
    Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8), "L").save(w / "test/good/001.jpg")
    (w / "test/good/.DS_Store").write_bytes(b"junk")
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = rng.integers(0, 256, (48, 64))
    Image.fromarray(rgba, "RGBA").save(w / "test/scratch/000.png")
    Image.fromarray(_rect_mask(48, 64, 6, 29, 9, 43)).save(w / "ground_truth/scratch/000_mask.png")
    Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(w / "test/scratch/001.png")
    Image.fromarray(_rect_mask(32, 32, 0, 8, 0, 32)).save(w / "ground_truth/scratch/001_mask.png")
    t = root / "tile"
    for sub in ("test/good", "test/crack", "ground_truth/crack"):
        (t / sub).mkdir(parents=True, exist_ok=True)
    (t / "LICENSE").write_text("not an image")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(t / "test/good/a.bmp")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(t / "test/crack/b.tif")
    Image.fromarray(_rect_mask(30, 30, 5, 20, 5, 25)).save(t / "ground_truth/crack/b_mask.png")
    return root


@pytest.fixture(scope="session")
def tiny_mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only (by convention) tiny MVTec-layout dataset; copy it before changing files."""
    return build_tiny_mvtec(tmp_path_factory.mktemp("tiny_mvtec"))


@pytest.fixture
def tiny_mvtec_copy(tiny_mvtec_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may modify."""
    return Path(shutil.copytree(tiny_mvtec_root, tmp_path / "mvtec"))


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """``<repo>/../shared/data/real`` (MVTec-layout real defect data); skips when absent."""
    root = (REPO / ".." / "shared" / "data" / "real").resolve()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    return root


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact cache shared by the end-to-end tests (so the smoke features are extracted once)."""
    return tmp_path_factory.mktemp("spg_cache")
