"""Token extraction and the on-disk token store.

A backbone is run once over a dataset; its global tokens, patch-token grids and the binarised
input-size masks (and each image's absolute path, so any working directory can read the images
back) are written to a content-addressed cache folder as float16 / uint8 ``.npy`` files
that are memory-mapped when read. SAE and guide training then stream batches from the store
(read with ``preadv``, :meth:`TokenStore.read_rows`) without loading it into memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .cache import artifact_path, atomic_artifact, is_complete

FEATURES_SCHEMA_VERSION = 1
RECORD_FIELDS = ("path", "label", "category", "defect")


@dataclass(frozen=True)
class ExtractConfig:
    """How tokens are extracted (the backbone's own preprocessing is stored with the backbone)."""

    backbone: str = "efficientnet_lite2"
    """Registered backbone name (``spg.backbones.available_backbones()``)."""
    weights: str | None = None
    """Local weights file for the paper backbones (dinov3, dinov2, openclip); None: env var or hub cache."""
    batch_size: int = 8
    """Images per forward pass."""
    num_workers: int = -1
    """DataLoader worker processes decoding images while the backbone runs; 0: decode inline;
    -1 (auto): 0 for a backbone on the CPU, up to 4 for one on a GPU. On the CPU, decoding and
    resizing costs a few percent of a forward pass, while a worker process takes a core from the
    backbone's threads, which then wait for it (on 2 cores: 81% of the forward-only rate with one
    worker, 91% inline; ``python -m spg bench``)."""
    stages: tuple[int, ...] | None = None
    """EfficientNet-Lite only: which stages form the token grid (None: the backbone's default
    ``(2, 3, 4, 5)``, strides 8/16/16/32). The token-grid ablation varies this."""


class TokenStore:
    """Read access to an extracted token cache folder (float16 on disk): the arrays are memory-mapped
    for random access; :meth:`batch` and the iterators read their rows with :meth:`read_rows`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.meta: dict[str, Any] = json.loads((self.folder / "meta.json").read_text())
        if self.meta.get("schema_version") != FEATURES_SCHEMA_VERSION:
            raise ValueError(
                f"{self.folder}: feature schema {self.meta.get('schema_version')} != "
                f"{FEATURES_SCHEMA_VERSION}; delete the folder to re-extract."
            )
        self.global_tokens = np.load(self.folder / "global.npy", mmap_mode="r")
        self.patches = np.load(self.folder / "patches.npy", mmap_mode="r")
        self.masks = np.load(self.folder / "masks.npy", mmap_mode="r")
        records = json.loads((self.folder / "records.json").read_text())
        self.paths = [r["path"] for r in records]
        self.labels = np.array([r["label"] for r in records], dtype=np.int64)
        self.categories = np.array([r["category"] for r in records])
        self.defects = np.array([r["defect"] for r in records])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.patches.shape[-1])

    @property
    def grid(self) -> int:
        return int(self.patches.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.masks.shape[-1])

    @property
    def key(self) -> str:
        return self.folder.name

    def category_names(self) -> list[str]:
        return sorted(set(self.categories.tolist()))

    def indices(self, category: str | None = None) -> np.ndarray:
        """Image indices, all or of one category."""
        return np.arange(len(self)) if category is None else np.flatnonzero(self.categories == category)

    def read_rows(self, name: str, idx: Sequence[int]) -> np.ndarray:
        """Rows ``idx`` of ``global.npy`` / ``patches.npy`` / ``masks.npy`` (``name``: ``global``,
        ``patches``, ``masks``) as a fresh in-memory array, in the order given.

        Read with ``os.preadv`` rather than through the memory map: streaming over the whole cache
        then leaves the file's pages in the OS page cache, not mapped into this process, so the
        resident memory of training stays bounded by a batch, whatever the cache size. Runs of
        consecutive rows are read in one call.
        """
        arr = {"global": self.global_tokens, "patches": self.patches, "masks": self.masks}[name]
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx),) + arr.shape[1:], dtype=arr.dtype)
        if len(idx) == 0:
            return out
        if idx.min() < 0 or idx.max() >= len(arr):
            raise IndexError(f"{self.folder}: rows {idx.tolist()} out of range for {len(arr)} images")
        row_bytes = out[0].nbytes
        fd = self._file(name)
        flat = out.reshape(len(idx), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(idx)]):
            _pread_exact(fd, memoryview(flat[start:stop]).cast("B"), arr.offset + int(idx[start]) * row_bytes)
        return out

    def _file(self, name: str) -> int:
        """File descriptor of ``name``.npy, opened once per store (closed with the store)."""
        files = self.__dict__.setdefault("_files", {})
        if name not in files:
            files[name] = open(self.folder / f"{name}.npy", "rb", buffering=0)
        return files[name].fileno()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_files"}  # files are reopened on use

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        """Tokens, masks and labels of images ``idx`` as float32 / int64 tensors."""
        idx = np.sort(np.asarray(idx))
        return {
            "global": torch.from_numpy(self.read_rows("global", idx).astype(np.float32)),
            "patches": torch.from_numpy(self.read_rows("patches", idx).astype(np.float32)),
            "masks": torch.from_numpy(self.read_rows("masks", idx).astype(np.float32)),
            "labels": torch.from_numpy(self.labels[idx]),
            "index": torch.from_numpy(idx),
        }

    def iter_batches(
        self, batch_images: int, *, shuffle_seed: int | None = None, indices: np.ndarray | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``batch_images`` images, in a seeded random order when ``shuffle_seed`` is set."""
        order = self.indices() if indices is None else np.asarray(indices)
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(order)
        for start in range(0, len(order), batch_images):
            yield self.batch(order[start : start + batch_images])

    def iter_patch_tokens(
        self, batch_images: int, *, shuffle_seed: int | None = None, token_fraction: float = 1.0
    ) -> Iterator[torch.Tensor]:
        """Patch tokens of ``batch_images`` images at a time, flattened to ``[n, d]`` float32.

        ``token_fraction < 1`` keeps that share of each image's tokens, drawn at random per image
        (from ``shuffle_seed``), to cut the cost of a step on a CPU.
        """
        if not 0 < token_fraction <= 1:
            raise ValueError(f"token_fraction must be in (0, 1], got {token_fraction}")
        rng = np.random.default_rng(shuffle_seed)
        order = self.indices() if shuffle_seed is None else rng.permutation(len(self))
        n_tokens = self.grid * self.grid
        keep = max(1, int(round(token_fraction * n_tokens)))
        for start in range(0, len(order), batch_images):
            idx = np.sort(order[start : start + batch_images])
            tokens = self.read_rows("patches", idx).reshape(len(idx), n_tokens, self.dim)
            if keep < n_tokens:
                pick = np.argsort(rng.random((len(idx), n_tokens)), axis=1)[:, :keep]
                tokens = np.take_along_axis(tokens, pick[:, :, None], axis=1)
            yield torch.from_numpy(tokens.astype(np.float32).reshape(-1, self.dim))


def _pread_exact(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from file ``fd`` at ``offset`` (``preadv`` may return short counts)."""
    done = 0
    while done < len(buf):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [buf[done:]], offset + done)
        else:  # platforms without preadv: one extra copy
            data = os.pread(fd, len(buf) - done, offset + done)
            n = len(data)
            buf[done : done + n] = data
        if n <= 0:
            raise OSError(f"unexpected end of file reading {len(buf)} bytes at offset {offset}")
        done += n


def loader_workers(cfg: ExtractConfig, backbone: Any) -> int:
    """``cfg.num_workers``, with -1 (auto) resolved for ``backbone``'s device (see :class:`ExtractConfig`)."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    param = next(iter(backbone.parameters()), None)
    if param is None or param.device.type == "cpu":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def feature_key(backbone_description: dict[str, Any], dataset_fingerprint: str, dataset_name: str) -> dict[str, Any]:
    """What identifies a token cache: backbone (incl. preprocessing and weights), dataset, schema."""
    return {
        "schema_version": FEATURES_SCHEMA_VERSION,
        "backbone": backbone_description,
        "dataset": dataset_name,
        "dataset_fingerprint": dataset_fingerprint,
    }


def extract_features(
    dataset: Any, backbone: Any, cache_dir: Path, cfg: ExtractConfig, *, source: Any = None, progress: bool = True
) -> TokenStore:
    """The token store of ``dataset`` (from the cache when present).

    The backbone runs once per *category*: each category is extracted into its own cache entry,
    and a store of several categories is assembled from those entries by copying rows, so
    cross-dataset splits that share a category share its extraction. When ``dataset`` is a sample
    of ``source`` (``AnomalyDataset.sample``), its rows are copied from the cached stores of
    ``source``'s whole categories where those exist; otherwise only the sampled images are extracted.
    """
    description = backbone.describe()
    key = feature_key(description, dataset.fingerprint(), dataset.name)
    folder = artifact_path(cache_dir, "features", key)
    if is_complete(folder):
        return TokenStore(folder)
    source = dataset if source is None else source
    if source is dataset and len(dataset.categories) == 1:
        return _extract_dataset(dataset, backbone, folder, key, cfg, progress)
    parts = []
    for category in source.categories:
        whole = source.subset([category])
        cached = is_complete(artifact_path(cache_dir, "features", feature_key(description, whole.fingerprint(), whole.name)))
        part = whole if source is dataset or cached else dataset.subset([category])
        parts.append(extract_features(part, backbone, cache_dir, cfg, progress=progress))
    return assemble_store(parts, [str(r.image_path) for r in dataset.records], folder, key)


def assemble_store(parts: Sequence[TokenStore], paths: Sequence[str], folder: Path, key: dict[str, Any]) -> TokenStore:
    """A new store at ``folder`` holding the images ``paths`` (in that order), copied from ``parts``."""
    where = {os.path.abspath(p): (i, row) for i, part in enumerate(parts) for row, p in enumerate(part.paths)}
    paths = [os.path.abspath(p) for p in paths]
    missing = [p for p in paths if p not in where]
    if missing:
        raise ValueError(f"{len(missing)} images (e.g. {missing[0]}) are in none of the stores to assemble from")
    first = parts[0]
    if any(p.grid != first.grid or p.dim != first.dim or p.image_size != first.image_size for p in parts):
        raise ValueError("stores to assemble differ in grid, token dimension or image size")
    n = len(paths)
    with atomic_artifact(folder, key) as tmp:
        out = {
            "global": open_memmap(tmp / "global.npy", mode="w+", dtype=np.float16, shape=(n, first.dim)),
            "patches": open_memmap(tmp / "patches.npy", mode="w+", dtype=np.float16, shape=(n, first.grid, first.grid, first.dim)),
            "masks": open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, first.image_size, first.image_size)),
        }
        records = []
        for start in range(0, n, 64):
            chunk = [where[p] for p in paths[start : start + 64]]
            for name, arr in out.items():
                arr[start : start + len(chunk)] = np.stack([parts[i].read_rows(name, [row])[0] for i, row in chunk])
            records += [
                {"path": os.path.abspath(parts[i].paths[row]), "label": int(parts[i].labels[row]),
                 "category": str(parts[i].categories[row]), "defect": str(parts[i].defects[row])}
                for i, row in chunk
            ]
        for arr in out.values():
            arr.flush()
        del out
        (tmp / "records.json").write_text(json.dumps(records))
        meta = {"schema_version": FEATURES_SCHEMA_VERSION, **key, "n_images": n, "grid": first.grid,
                "dim": first.dim, "image_size": first.image_size, "assembled_from": [p.key for p in parts]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return TokenStore(folder)


@torch.inference_mode()
def _extract_dataset(dataset: Any, backbone: Any, folder: Path, key: dict[str, Any], cfg: ExtractConfig, progress: bool) -> TokenStore:
    """Run ``backbone`` over every image of ``dataset`` into a new store at ``folder``."""
    n, s, g, d = len(dataset), backbone.image_size, backbone.grid, backbone.dim
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=loader_workers(cfg, backbone))
    with atomic_artifact(folder, key) as tmp:
        glob = open_memmap(tmp / "global.npy", mode="w+", dtype=np.float16, shape=(n, d))
        patches = open_memmap(tmp / "patches.npy", mode="w+", dtype=np.float16, shape=(n, g, g, d))
        masks = open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, s, s))
        records: list[dict[str, Any]] = []
        start = 0
        for batch in tqdm(loader, desc=f"extract {dataset.name}", unit="batch", disable=not progress):
            b = batch["image"].shape[0]
            global_tokens, patch_tokens = backbone(batch["image"])
            glob[start : start + b] = global_tokens.numpy().astype(np.float16)
            patches[start : start + b] = patch_tokens.numpy().astype(np.float16)
            masks[start : start + b] = (batch["mask"].numpy() > 0.5).astype(np.uint8)
            records += [
                {"path": os.path.abspath(p), "label": int(lbl), "category": c, "defect": dft}
                for p, lbl, c, dft in zip(batch["path"], batch["label"], batch["category"], batch["defect"])
            ]
            start += b
        for arr in (glob, patches, masks):
            arr.flush()
        del glob, patches, masks
        (tmp / "records.json").write_text(json.dumps(records))
        meta = {"schema_version": FEATURES_SCHEMA_VERSION, **key, "n_images": n, "grid": g, "dim": d, "image_size": s}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return TokenStore(folder)
