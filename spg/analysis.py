"""Read-only analyses behind the notebooks' figures.

Each function reads cached artifacts (a :class:`~spg.features.TokenStore`, a trained SAE, an
:class:`~spg.guides.SPGHead`, an :class:`~spg.pipeline.Evaluation`) and returns numpy arrays or tidy
:class:`pandas.DataFrame` s that :mod:`spg.viz` draws and :func:`spg.viz.save_figure` stores. Nothing
here trains or writes to the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from .guides import GUIDE_NAMES, coefficient_mass, cosine
from .metrics import pr_curve_points, pro_curve, roc_curve_points


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


def titles(examples: pd.DataFrame, score: str | None = None) -> list[str]:
    """``category / defect`` (and the score) for each row of an examples table."""
    text = examples["category"].astype(str) + " / " + examples["defect"].astype(str)
    if score:
        text = text + "\n" + score + " " + examples[score].map("{:.3f}".format)
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


def token_norms(store, i: int) -> np.ndarray:
    """L2 norm of each patch token of image ``i`` -> ``[h, w]``."""
    return np.linalg.norm(np.asarray(store.patches[i], dtype=np.float32), axis=-1)


def pca_rgb(store, idx: Sequence[int]) -> tuple[np.ndarray, pd.DataFrame]:
    """First three principal components of the patch tokens of images ``idx`` as RGB ``[n, h, w, 3]``.

    The PCA is fitted on exactly these tokens; each component is scaled to [0, 1] between its 1st
    and 99th percentile. Also returns each component's share of the token variance.
    """
    x = patches_in_order(store, idx)
    n, h, w, d = x.shape
    flat = x.reshape(-1, d)
    flat = flat - flat.mean(0)
    _, s, v = torch.linalg.svd(flat, full_matrices=False)
    proj = (flat @ v[:3].T).numpy()
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-8), 0, 1).reshape(n, h, w, 3)
    var = (s**2 / (s**2).sum()).numpy()
    return rgb, pd.DataFrame({"component": ["PC1 (red)", "PC2 (green)", "PC3 (blue)"], "variance share": var[:3]})


# ------------------------------------------------------------------------------------------- SAE


def atom_activations(sae, patches: torch.Tensor, atoms: Sequence[int]) -> torch.Tensor:
    """SAE activation of each of ``atoms`` on every patch: ``[B, h, w, d]`` -> ``[B, A, h, w]``."""
    b, h, w, d = patches.shape
    values, indices = sae.encode(patches.reshape(-1, d))
    sel = torch.as_tensor(np.asarray(atoms), dtype=indices.dtype)
    act = (values.unsqueeze(-1) * (indices.unsqueeze(-1) == sel)).sum(1)
    return act.reshape(b, h, w, len(sel)).permute(0, 3, 1, 2)


@dataclass
class SAEPass:
    """One pass of the SAE over a token store."""

    l0: np.ndarray
    """Active latents per token."""
    categories: pd.DataFrame
    """Per category: tokens, reconstruction MSE and explained variance."""
    atoms: pd.DataFrame
    """Per atom: firing count and frequency, firing rate on defect and on normal patches, selectivity."""


@torch.no_grad()
def sae_pass(sae, store, threshold: float = 1e-3, batch_images: int = 8) -> SAEPass:
    """L0, per-category reconstruction quality and per-atom defect selectivity in one pass.

    A patch counts as a defect patch when at least a quarter of its pixels are in the mask.
    """
    atoms, c = sae.atoms(), sae.n_atoms
    l0, per_cat = [], {}
    fire = {True: torch.zeros(c), False: torch.zeros(c)}
    n_tok = {True: 0, False: 0}
    for batch in store.iter_batches(batch_images):
        x = batch["patches"]
        b, h, w, d = x.shape
        flat = x.reshape(-1, d)
        values, indices = sae.encode(flat)
        err = (sae.decode(values, indices, atoms) - flat).pow(2).sum(1)
        l0.append((values > 0).sum(1).numpy())
        defect = (F.adaptive_avg_pool2d(batch["masks"][:, None], (h, w)).reshape(-1) >= 0.25)
        for flag in (True, False):
            sel = defect == flag
            fired = values[sel] > threshold
            fire[flag] += torch.bincount(indices[sel][fired], minlength=c).float()
            n_tok[flag] += int(sel.sum())
        cats = np.repeat(store.categories[batch["index"].numpy()], h * w)
        for cat in np.unique(cats):
            m = torch.from_numpy(cats == cat)
            acc = per_cat.setdefault(cat, [0.0, 0.0, 0.0, 0])
            acc[0] += float(err[m].sum())
            acc[1] = acc[1] + flat[m].sum(0)
            acc[2] = acc[2] + flat[m].pow(2).sum(0)
            acc[3] += int(m.sum())
    cat_rows = [{"category": k, "tokens": n, "mse": e / (n * sae.d_in),
                 "explained_variance": 1 - e / float((s2 - s1.pow(2) / n).sum())} for k, (e, s1, s2, n) in per_cat.items()]
    rate_d, rate_n = fire[True] / max(n_tok[True], 1), fire[False] / max(n_tok[False], 1)
    total = fire[True] + fire[False]
    atoms_df = pd.DataFrame({"atom": np.arange(c), "fires": total.numpy().astype(int),
                             "frequency": (total / max(sum(n_tok.values()), 1)).numpy(),
                             "rate_on_defect": rate_d.numpy(), "rate_on_normal": rate_n.numpy(),
                             "selectivity": (rate_d / (rate_n + 1 / max(n_tok[False], 1))).numpy(),
                             "alive": sae.alive.numpy()})
    return SAEPass(np.concatenate(l0), pd.DataFrame(cat_rows), atoms_df)


def choose_atoms(atoms: pd.DataFrame, n: int = 3, min_fires: int = 5) -> pd.DataFrame:
    """``n`` most frequent atoms and ``n`` most defect-selective ones (firing at least ``min_fires`` times)."""
    frequent = atoms.nlargest(n, "fires").assign(group="most frequent")
    rest = atoms[(atoms["fires"] >= min_fires) & ~atoms["atom"].isin(frequent["atom"])]
    selective = rest.nlargest(n, "selectivity").assign(group="defect-selective")
    return pd.concat([frequent, selective], ignore_index=True)


@torch.no_grad()
def atom_image_scores(sae, store, atoms: Sequence[int], batch_images: int = 8) -> np.ndarray:
    """Each atom's image score (its maximum activation over the image's patches) -> ``[N, A]``."""
    out = np.zeros((len(store), len(atoms)), dtype=np.float32)
    for batch in store.iter_batches(batch_images):
        out[batch["index"].numpy()] = atom_activations(sae, batch["patches"], atoms).amax((2, 3)).numpy()
    return out


def top_images(store, scores: np.ndarray, atoms: Sequence[int], n: int = 6) -> pd.DataFrame:
    """For each atom, the ``n`` images where it is most active (one row per atom and rank)."""
    rows = []
    for a, atom in enumerate(atoms):
        for rank, i in enumerate(np.argsort(-scores[:, a], kind="stable")[:n]):
            rows.append({"atom": int(atom), "rank": rank, "index": int(i), "category": store.categories[i],
                         "defect": store.defects[i], "activation": float(scores[i, a])})
    return pd.DataFrame(rows)


@torch.no_grad()
def activation_panels(sae, store, table: pd.DataFrame, size: int = 224, crop: int | None = None):
    """Images and upsampled activation maps for each (atom, image) row of ``table``.

    Rows are grouped by atom in table order -> ``images [A, n, s, s, 3]``, ``acts [A, n, s, s]`` and
    titles. With ``crop`` (pixels at ``size``), a window of that side centred on the atom's
    strongest patch is cut out instead of the whole image.
    """
    atoms = list(dict.fromkeys(table["atom"]))
    n = int(table.groupby("atom").size().max())
    s = crop or size
    images, acts = np.zeros((len(atoms), n, s, s, 3), np.float32), np.zeros((len(atoms), n, s, s), np.float32)
    names = [[""] * n for _ in atoms]
    for r, atom in enumerate(atoms):
        part = table[table["atom"] == atom].reset_index(drop=True)
        pics = load_images(store, part["index"], size)
        maps = atom_activations(sae, patches_in_order(store, part["index"]), [atom])
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp_min(0).numpy()
        for c, row in part.iterrows():
            y, x = (0, 0) if crop is None else _window(maps[c], crop)
            images[r, c], acts[r, c] = pics[c, y:y + s, x:x + s], maps[c, y:y + s, x:x + s]
            names[r][c] = f"{row['category']} / {row['defect']}\nmax {row['activation']:.2f}"
    return images, acts, names


def _window(act: np.ndarray, crop: int) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(act)), act.shape)
    top = int(np.clip(y - crop // 2, 0, act.shape[0] - crop))
    left = int(np.clip(x - crop // 2, 0, act.shape[1] - crop))
    return top, left


# ---------------------------------------------------------------------------------------- guides


def stats_table(stats: dict) -> pd.DataFrame:
    """A flat dict of statistics as a one-column table."""
    return pd.DataFrame({"value": [round(v, 4) if isinstance(v, float) else v for v in stats.values()]}, index=list(stats))


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
    return pd.DataFrame(rows).set_index("guide")


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


def guide_cosines(head) -> pd.DataFrame:
    """Cosine similarity between the four guide vectors."""
    g = head.guides().detach()
    return pd.DataFrame(cosine(g, g).numpy(), index=list(GUIDE_NAMES), columns=list(GUIDE_NAMES))


@torch.no_grad()
def maps_for(store, head, idx: Sequence[int], blur_sigma: float) -> np.ndarray:
    """Blurred anomaly maps ``[n, S, S]`` of images ``idx`` (in that order)."""
    from .guides import anomaly_maps

    return anomaly_maps(head, patches_in_order(store, idx), store.image_size, blur_sigma).numpy()


# ------------------------------------------------------------------------------------ evaluation


def percent(metrics: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Metrics as percentages, rounded."""
    return (metrics * 100).round(digits)


def long_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-category metrics in long form (``category, metric, value``)."""
    return metrics.rename_axis("category").reset_index().melt(id_vars="category", var_name="metric", value_name="value")


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


# ----------------------------------------------------------------------------------------- atoms


def category_firing(stores: dict, scores: dict, atoms: Sequence[int], threshold: float = 1e-3) -> pd.DataFrame:
    """Share of each category's images on which each atom fires (image score above ``threshold``)."""
    rows = []
    for role, store in stores.items():
        for cat in store.category_names():
            idx = store.indices(cat)
            share = (scores[role][idx] > threshold).mean(0)
            rows += [{"atom": int(a), "role": role, "category": cat, "share": float(v)} for a, v in zip(atoms, share)]
    return pd.DataFrame(rows)


def generality(firing: pd.DataFrame, min_share: float = 0.1) -> pd.DataFrame:
    """Per atom: in how many auxiliary / target categories it fires (share >= ``min_share``) and its kind.

    ``category-specific``: fires in one or two categories; ``category-general``: in at least half of
    all categories; ``intermediate`` in between; ``silent``: in none.
    """
    fired = firing.assign(fires=firing["share"] >= min_share)
    counts = fired.pivot_table(index="atom", columns="role", values="fires", aggfunc="sum", sort=False).fillna(0).astype(int)
    total, n_cats = counts.sum(1), firing.groupby(["role", "category"]).ngroups
    kind = np.select([total == 0, total <= 2, total >= n_cats / 2], ["silent", "category-specific", "category-general"],
                     "intermediate")
    out = counts.rename(columns=lambda r: f"{r} categories").assign(total=total, kind=kind)
    return out.reset_index()


def firing_matrix(firing: pd.DataFrame) -> pd.DataFrame:
    """Atoms x ``role: category`` table of firing shares (for a heat map)."""
    table = firing.assign(column=firing["role"] + ": " + firing["category"], row="atom " + firing["atom"].astype(str))
    out = table.pivot_table(index="row", columns="column", values="share", sort=False)
    return out.rename_axis(index="atom", columns="category")
