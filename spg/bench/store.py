"""Synthetic token caches for the benchmark, in the exact layout ``spg.features.extract_features``
writes (``global.npy``, ``patches.npy``, ``masks.npy``, ``records.json``, ``meta.json``,
``key.json``), filled with random float16 tokens instead of running a backbone.

The SAE and guide stages only see the cache, so their speed and memory can be measured on caches
of any size (the memory check uses one larger than 2 GB) without extracting thousands of images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from ..cache import KEY_FILE
from ..features import FEATURES_SCHEMA_VERSION, TokenStore

CHUNK_IMAGES = 64


def patch_bytes(n_images: int, grid: int, dim: int) -> int:
    """Size of ``patches.npy``'s data for ``n_images`` images (float16)."""
    return n_images * grid * grid * dim * 2


def images_for_bytes(target_bytes: float, grid: int, dim: int) -> int:
    """Fewest images whose patch tokens exceed ``target_bytes``."""
    return int(target_bytes // patch_bytes(1, grid, dim)) + 1


def write_token_store(
    folder: Path, n_images: int, *, grid: int = 28, dim: int = 464, image_size: int = 448, seed: int = 0
) -> TokenStore:
    """Write a random token cache of ``n_images`` images to ``folder`` and open it.

    Tokens are standard normal (float16) plus a per-image offset; half the images are labelled
    anomalous and get a rectangular mask. Written in chunks, so memory stays small for any size.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    glob = open_memmap(folder / "global.npy", mode="w+", dtype=np.float16, shape=(n_images, dim))
    patches = open_memmap(folder / "patches.npy", mode="w+", dtype=np.float16, shape=(n_images, grid, grid, dim))
    masks = open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(n_images, image_size, image_size))
    labels = np.arange(n_images) % 2
    for start in range(0, n_images, CHUNK_IMAGES):
        stop = min(n_images, start + CHUNK_IMAGES)
        block = rng.standard_normal((stop - start, grid, grid, dim), dtype=np.float32)
        block += rng.standard_normal((stop - start, 1, 1, dim), dtype=np.float32)
        patches[start:stop] = block.astype(np.float16)
        glob[start:stop] = block.mean(axis=(1, 2)).astype(np.float16)
        for i in range(start, stop):
            if labels[i]:
                y, x = rng.integers(0, image_size // 2, size=2)
                masks[i, y : y + image_size // 4, x : x + image_size // 4] = 1
    for arr in (glob, patches, masks):
        arr.flush()
    del glob, patches, masks
    records = [{"path": f"synthetic/{i:06d}.png", "label": int(labels[i]), "category": f"cat{i % 4}",
                "defect": "defect" if labels[i] else "good"} for i in range(n_images)]
    (folder / "records.json").write_text(json.dumps(records))
    key = {"schema_version": FEATURES_SCHEMA_VERSION, "backbone": {"name": "random-tokens", "dim": dim},
           "dataset": "bench-synthetic", "dataset_fingerprint": f"seed{seed}-n{n_images}"}
    meta = {**key, "n_images": n_images, "grid": grid, "dim": dim, "image_size": image_size}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    (folder / KEY_FILE).write_text(json.dumps(key, indent=2))
    return TokenStore(folder)
