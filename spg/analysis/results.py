"""Guides and evaluation: coefficient sparsity, guide geometry, maps, metric tables and curves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..guides import GUIDE_NAMES, coefficient_mass, cosine
from ..metrics import pr_curve_points, pro_curve, roc_curve_points
from .data import patches_in_order


# ---------------------------------------------------------------------------------------- guides


def sparsity_table(head, levels: Sequence[float] = (0.5, 0.9, 0.99)) -> pd.DataFrame:
    """Per guide: L1 norm, largest coefficient, atoms with a non-zero coefficient, atoms for each mass level."""
    c = head.coefficients().detach().numpy()
    rows = []
    for g, name in enumerate(GUIDE_NAMES):
        mass = coefficient_mass(head, g)
        row = {"guide": name, "L1 norm": float(c[g].sum()), "max coefficient": float(c[g].max()),
               "non-zero atoms": int((c[g] > 0).sum())}
        row.update({f"atoms for {int(lv * 100)}% of mass": int(np.searchsorted(mass, lv) + 1) for lv in levels})
        rows.append(row)
    return pd.DataFrame(rows).set_index("guide").round(4)


def mass_table(head, guides: Sequence[int] = (0, 1, 2, 3), points: int = 60) -> pd.DataFrame:
    """Cumulative share of each guide's L1 mass held by its top-n atoms, at log-spaced n."""
    n_atoms = head.atoms.shape[0]
    ns = np.unique(np.geomspace(1, n_atoms, points).round().astype(int))
    parts = [pd.DataFrame({"guide": GUIDE_NAMES[g], "n": ns, "share": coefficient_mass(head, g)[ns - 1]}) for g in guides]
    return pd.concat(parts, ignore_index=True)


def top_coefficients(head, guide: int = 3, n: int = 20) -> pd.DataFrame:
    """The ``n`` atoms with the largest coefficients in ``guide`` and their share of its L1 mass."""
    c = head.coefficients()[guide].detach().numpy()
    order = np.argsort(-c, kind="stable")[:n]
    share = c[order] / max(c.sum(), 1e-12)
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "atom": order, "label": [f"atom {a}" for a in order],
                         "coefficient": c[order], "share of L1": share, "cumulative share": np.cumsum(share)})


def mass_at(head, guide: int = 3, ns: Sequence[int] = (1, 2, 5, 10, 20, 50, 100, 200)) -> pd.DataFrame:
    """Share of a guide's L1 mass held by its top-n atoms, for a few n."""
    mass = coefficient_mass(head, guide)
    ns = [n for n in ns if n <= len(mass)]
    return pd.DataFrame({"top-n atoms": ns, "share of L1 mass": [round(float(mass[n - 1]), 4) for n in ns]}).set_index("top-n atoms")


def guide_cosines(head) -> pd.DataFrame:
    """Cosine similarity between the four guide vectors."""
    g = head.guides().detach()
    return pd.DataFrame(cosine(g, g).numpy(), index=list(GUIDE_NAMES), columns=list(GUIDE_NAMES))


@torch.no_grad()
def maps_for(store, head, idx: Sequence[int], blur_sigma: float) -> np.ndarray:
    """Blurred anomaly maps ``[n, S, S]`` of images ``idx`` (in that order)."""
    from ..guides import anomaly_maps

    return anomaly_maps(head, patches_in_order(store, idx), store.image_size, blur_sigma).numpy()


# ------------------------------------------------------------------------------------ evaluation


SHORT_NAMES = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1max": "I-F1max",
               "pixel_auroc": "P-AUROC", "pixel_ap": "P-AP", "aupro": "AUPRO"}
"""Compact column names for metric tables (I- image level, P- pixel level)."""


def percent(metrics: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Metrics as percentages, rounded, with the compact column names of :data:`SHORT_NAMES`."""
    return (metrics * 100).round(digits).rename(columns=SHORT_NAMES)


def long_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-category metrics in long form (``category, metric, value``), metrics named as in :data:`SHORT_NAMES`."""
    table = metrics.rename(columns=SHORT_NAMES).rename_axis("category").reset_index()
    return table.melt(id_vars="category", var_name="metric", value_name="value")


def _thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= max_points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
    return x[keep], y[keep]


def curve_table(store, evaluation, score: str, max_points: int = 300) -> pd.DataFrame:
    """Image ROC / PR, pixel ROC and exact PRO (FPR <= 0.3) per category, in long form, thinned."""
    maps, parts = evaluation.maps(), []
    scores = evaluation.scores[score].to_numpy()
    for cat in store.category_names():
        idx = store.indices(cat)
        masks, cat_maps = np.asarray(store.masks[idx]), np.asarray(maps[idx], dtype=np.float32)
        curves = {"image ROC": roc_curve_points(store.labels[idx], scores[idx]),
                  "image PR": pr_curve_points(store.labels[idx], scores[idx]),
                  "pixel ROC": roc_curve_points(masks, cat_maps),
                  "PRO (exact, FPR <= 0.3)": pro_curve(masks, cat_maps)}
        for name, (x, y) in curves.items():
            x, y = _thin(np.asarray(x), np.asarray(y), max_points)
            parts.append(pd.DataFrame({"curve": name, "category": cat, "x": x, "y": y}))
    return pd.concat(parts, ignore_index=True)


def ranked_examples(scores: pd.DataFrame, score: str, n: int = 2) -> pd.DataFrame:
    """Hits and misses: top-scored anomalies, lowest-scored anomalies, top-scored normal images."""
    s = scores.rename_axis("index").reset_index()
    bad, good = s[s["label"] == 1], s[s["label"] == 0]
    parts = [bad.nlargest(n, score).assign(group="hit: top anomalous"),
             bad.nsmallest(n, score).assign(group="miss: lowest anomalous"),
             good.nlargest(n, score).assign(group="false alarm: top normal")]
    return pd.concat(parts, ignore_index=True)[["group", "index", "category", "defect", "label", score]]
