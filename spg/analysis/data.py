"""Images, masks, example picking and small tables from a token store (read-only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image


# ----------------------------------------------------------------------------------- images, data


def load_images(store, idx: Sequence[int], size: int | None = None) -> np.ndarray:
    """The images ``idx`` of a token store as float ``[n, size, size, 3]`` in [0, 1] (default: input size)."""
    size = size or store.image_size
    out = [np.asarray(Image.open(store.paths[i]).convert("RGB").resize((size, size), Image.BILINEAR)) for i in idx]
    return np.stack(out).astype(np.float32) / 255.0


def load_masks(store, idx: Sequence[int], size: int | None = None) -> np.ndarray:
    """Binary ground-truth masks ``[n, size, size]`` of images ``idx``."""
    masks = torch.from_numpy(np.asarray(store.masks[np.asarray(idx)], dtype=np.float32))
    if size and size != masks.shape[-1]:
        masks = F.interpolate(masks[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return masks.numpy() > 0.5


def patches_in_order(store, idx: Sequence[int]) -> torch.Tensor:
    """Patch tokens ``[n, h, w, d]`` float32 of images ``idx`` in the given order."""
    return torch.from_numpy(np.asarray(store.patches[np.asarray(idx)], dtype=np.float32))


def pick_examples(store, n_normal: int = 1, n_anomalous: int = 2, max_categories: int | None = None) -> pd.DataFrame:
    """A few images per category: the first normal ones and anomalous ones of distinct defect types."""
    rows = []
    for cat in store.category_names()[:max_categories]:
        idx = store.indices(cat)
        rows += [(i, "good") for i in idx[store.labels[idx] == 0][:n_normal]]
        bad = idx[store.labels[idx] == 1]
        by_defect = [bad[store.defects[bad] == d] for d in sorted(set(store.defects[bad]))]
        order = [group[j] for j in range(max(map(len, by_defect), default=0)) for group in by_defect if j < len(group)]
        rows += [(i, store.defects[i]) for i in order[:n_anomalous]]
    idx = np.array([r[0] for r in rows], dtype=int)
    return pd.DataFrame({"index": idx, "category": store.categories[idx], "defect": store.defects[idx],
                         "label": store.labels[idx]})


def panels(store, examples: pd.DataFrame, size: int | None = None, score: str | None = None):
    """Images, masks and titles of the rows of an examples table (see :func:`pick_examples`)."""
    idx = examples["index"].to_numpy()
    return load_images(store, idx, size), load_masks(store, idx, size), titles(examples, score)


def titles(examples: pd.DataFrame, score: str | None = None) -> list[str]:
    """``category / defect`` (and the score) for each row of an examples table."""
    text = examples["category"].astype(str) + " / " + examples["defect"].astype(str)
    if score:
        text = text + f"\n{score} score " + examples[score].map("{:.3f}".format)
    return text.tolist()


def store_summary(stores: dict) -> pd.DataFrame:
    """One row per token store: images, anomalous images, categories, token grid and size on disk."""
    rows = []
    for role, s in stores.items():
        mb = sum(f.stat().st_size for f in s.folder.iterdir()) / 2**20
        rows.append({"role": role, "images": len(s), "anomalous": int(s.labels.sum()), "categories": ", ".join(s.category_names()),
                     "grid": f"{s.grid}x{s.grid}", "token dim": s.dim, "input px": s.image_size, "MB on disk": round(mb, 1)})
    return pd.DataFrame(rows).set_index("role")


def backbone_table(model) -> pd.DataFrame:
    """What a backbone does to an image: input size, normalisation, token grid, dimension, weights."""
    d = model.describe()
    rows = {"name": d["name"], "input size (px)": d["image_size"], "mean (RGB)": d["mean"], "std (RGB)": d["std"],
            "token grid": f'{d["grid"]} x {d["grid"]} = {d["grid"] ** 2} patch tokens',
            "token dimension": d["dim"], "pixels per token": d["image_size"] // d["grid"],
            "weights": d["weights"]["tag"] or d["weights"]["source"], "weights source": d["weights"]["source"]}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def token_norms(store, i: int) -> pd.DataFrame:
    """L2 norm of each patch token of image ``i`` as an ``h x w`` table (rows: grid row, columns: grid column)."""
    norms = np.linalg.norm(np.asarray(store.patches[i], dtype=np.float32), axis=-1)
    return pd.DataFrame(norms).rename_axis(index="row", columns="column")


def _pca3(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Tokens ``[n, h, w, d]`` -> their first three principal components as RGB, and variance shares."""
    n, h, w, d = x.shape
    flat = x.reshape(-1, d)
    flat = flat - flat.mean(0)
    _, s, v = torch.linalg.svd(flat, full_matrices=False)
    proj = (flat @ v[:3].T).numpy()
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-8), 0, 1).reshape(n, h, w, 3)
    return rgb, (s**2 / (s**2).sum()).numpy()[:3]


def pca_rgb(store, examples: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """First three principal components of the patch tokens, as RGB ``[n, h, w, 3]``, per category.

    Each image's tokens are first centred on their own mean (which removes global shifts such as
    lighting), then one PCA per category is fitted on the tokens of that category's images in
    ``examples``, so the colours show structure within images rather than differences between
    images or categories. Each component is scaled to [0, 1] between its 1st and 99th percentile.
    Also returns each component's share of the (centred) token variance, per category.
    """
    idx = examples["index"].to_numpy()
    x = patches_in_order(store, idx)
    x = x - x.mean((1, 2), keepdim=True)
    rgb = np.zeros((*x.shape[:3], 3), np.float32)
    rows = []
    for cat in dict.fromkeys(examples["category"]):
        sel = np.flatnonzero(examples["category"].to_numpy() == cat)
        rgb[sel], var = _pca3(x[sel])
        rows.append({"category": cat, "PC1 (red)": var[0], "PC2 (green)": var[1], "PC3 (blue)": var[2]})
    return rgb, pd.DataFrame(rows).set_index("category").round(4)


def counts(values: np.ndarray, name: str, count_name: str = "count") -> pd.DataFrame:
    """How often each distinct value occurs (sorted by value)."""
    return pd.Series(values).value_counts().sort_index().rename_axis(name).to_frame(count_name)


def integer_bins(high: int) -> np.ndarray:
    """Histogram bin edges centred on the integers 0..high."""
    return np.arange(high + 2) - 0.5


def log_frequency(atoms: pd.DataFrame) -> np.ndarray:
    """log10 firing frequency of the atoms that fire at least once."""
    return np.log10(atoms.loc[atoms["fires"] > 0, "frequency"].to_numpy())


def stats_table(stats: dict) -> pd.DataFrame:
    """A flat dict of statistics as a one-column table."""
    def fmt(v):
        if isinstance(v, float) and not v.is_integer():
            return f"{v:.4g}"
        return str(int(v)) if isinstance(v, (int, float)) else str(v)

    return pd.DataFrame({"value": [fmt(v) for v in stats.values()]}, index=list(stats))


