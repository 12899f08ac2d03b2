"""The SAE and its atoms: one-pass statistics, atom activations, galleries, category generality."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .data import load_images, patches_in_order


# ------------------------------------------------------------------------------------------- SAE


def atom_activations(sae, patches: torch.Tensor, atoms: Sequence[int]) -> torch.Tensor:
    """SAE activation of each of ``atoms`` on every patch: ``[B, h, w, d]`` -> ``[B, A, h, w]``."""
    b, h, w, d = patches.shape
    values, indices = sae.encode(patches.reshape(-1, d))
    sel = torch.tensor(np.array(atoms, dtype=np.int64), dtype=indices.dtype)
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

    A category's explained variance is ``1 - SSE / SST`` with SST taken about the mean of all
    tokens, so the categories combine (token-weighted) into the overall figure. A patch counts as
    a defect patch when at least a quarter of its pixels are in the mask.
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
    n_all = sum(v[3] for v in per_cat.values())
    mean = sum(v[1] for v in per_cat.values()) / max(n_all, 1)
    sst = {k: float((s2 - 2 * mean * s1 + n * mean.pow(2)).sum()) for k, (_, s1, s2, n) in per_cat.items()}
    cat_rows = [{"category": k, "tokens": n, "mse": e / (n * sae.d_in), "explained_variance": 1 - e / sst[k]}
                for k, (e, _, _, n) in per_cat.items()]
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
        order = np.argsort(-scores[:, a], kind="stable")[:n]
        for rank, i in enumerate(order[scores[order, a] > 0]):
            rows.append({"atom": int(atom), "rank": rank, "index": int(i), "category": store.categories[i],
                         "defect": store.defects[i], "activation": float(scores[i, a])})
    return pd.DataFrame(rows)


def top_per_category(store, scores: np.ndarray, atoms: Sequence[int], shown: Sequence[int],
                     max_categories: int | None = None) -> pd.DataFrame:
    """For each atom of ``shown``, its most activating image in each category (``scores`` columns follow ``atoms``)."""
    cats = store.category_names()[:max_categories]
    column = {int(a): j for j, a in enumerate(atoms)}
    rows = []
    for atom in shown:
        for cat in cats:
            idx = store.indices(cat)
            i = int(idx[np.argmax(scores[idx, column[int(atom)]])])
            rows.append({"atom": int(atom), "category": cat, "index": i, "defect": store.defects[i],
                         "activation": float(scores[i, column[int(atom)]])})
    return pd.DataFrame(rows)


@torch.no_grad()
def activation_panels(sae, store, table: pd.DataFrame, size: int = 224, crop: int | None = None,
                      atoms: Sequence[int] | None = None):
    """Images and upsampled activation maps for each (atom, image) row of ``table``.

    Rows are grouped by atom (in the order of ``atoms``, default: as they appear in ``table``) ->
    ``images [A, n, s, s, 3]``, ``acts [A, n, s, s]`` and titles (empty for missing cells). With
    ``crop`` (pixels at ``size``), a window of that side centred on the atom's strongest patch is
    cut out instead of the whole image.
    """
    atoms = list(dict.fromkeys(table["atom"])) if atoms is None else [int(a) for a in atoms]
    n = max(1, int(table.groupby("atom").size().max()) if len(table) else 1)
    s = crop or size
    images, acts = np.zeros((len(atoms), n, s, s, 3), np.float32), np.zeros((len(atoms), n, s, s), np.float32)
    names = [[""] * n for _ in atoms]
    for r, atom in enumerate(atoms):
        part = table[table["atom"] == atom].reset_index(drop=True)
        if part.empty:
            continue
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


# ----------------------------------------------------------------------------------------- atoms


@torch.no_grad()
def defect_firing(sae, stores: dict, atoms: Sequence[int], threshold: float = 1e-3, batch_images: int = 8,
                  min_overlap: float = 0.25) -> pd.DataFrame:
    """Does each atom fire *on the defects*? Per atom, role (key of ``stores``) and category: its firing
    rate on defect patches (at least ``min_overlap`` of the patch in the mask), on the patches of
    normal images, and their ratio ``lift`` (firing on defects / on normal images; the normal rate is
    floored at one patch, so an atom never seen on normal images gets a finite lift; NaN when the
    atom fires on neither)."""
    rows = []
    for role, store in stores.items():
        for cat in store.category_names():
            fire = {"defect": torch.zeros(len(atoms)), "normal": torch.zeros(len(atoms))}
            count = {"defect": 0, "normal": 0}
            for batch in store.iter_batches(batch_images, indices=store.indices(cat)):
                act = atom_activations(sae, batch["patches"], atoms) > threshold  # [B, A, h, w]
                h, w = act.shape[-2:]
                defect = F.adaptive_avg_pool2d(batch["masks"][:, None], (h, w))[:, 0] >= min_overlap
                normal = (batch["labels"] == 0)[:, None, None].expand_as(defect)
                for name, sel in (("defect", defect), ("normal", normal)):
                    fire[name] += act.permute(1, 0, 2, 3)[:, sel].sum(1).float()
                    count[name] += int(sel.sum())
            on_defect = fire["defect"] / max(count["defect"], 1)
            on_normal = fire["normal"] / max(count["normal"], 1)
            lift = on_defect / torch.clamp(on_normal, min=1 / max(count["normal"], 1))
            lift[(fire["defect"] == 0) & (fire["normal"] == 0)] = float("nan")  # fires on neither: no evidence
            rows += [{"atom": int(a), "role": role, "category": cat, "on_defect": float(d), "on_normal": float(n),
                      "lift": float(lf), "defect_patches": count["defect"]}
                     for a, d, n, lf in zip(atoms, on_defect, on_normal, lift)]
    return pd.DataFrame(rows)


def lift_matrix(firing: pd.DataFrame, low: float = -4.0, high: float = 8.0) -> pd.DataFrame:
    """Atoms x ``role: category`` table of ``log2(lift)`` from :func:`defect_firing`, clipped to
    ``[low, high]`` (a lift of 0, never on defects, shows as ``low``); NaN where the atom fires on neither."""
    log2 = np.log2(firing["lift"].clip(lower=2.0**low)).clip(upper=high)
    table = firing.assign(column=firing["role"] + ": " + firing["category"], row="atom " + firing["atom"].astype(str),
                          log2_lift=log2)
    out = table.pivot_table(index="row", columns="column", values="log2_lift", sort=False, dropna=False)
    return out.rename_axis(index="atom", columns="category")


def defect_mass(firing: pd.DataFrame, top: pd.DataFrame, min_lift: float = 2.0) -> pd.DataFrame:
    """Per role and category: the share of the guide's L1 mass (``top``: :func:`~spg.analysis.top_coefficients`)
    held by the listed atoms that fire at least ``min_lift`` times more often on that category's
    defects than on its normal images, how many such atoms there are, and the listed atoms' firing
    rates on defect patches and on normal images averaged with the guide's coefficients as weights
    (does the guide *as a whole* fire more on the defects?)."""
    share = firing.merge(top[["atom", "share of L1"]], on="atom")
    share = share.assign(on_defects=share["lift"] >= min_lift)
    rows = []
    for (role, cat), part in share.groupby(["role", "category"], sort=False):
        hit, weight = part[part["on_defects"]], part["share of L1"] / part["share of L1"].sum()
        rows.append({"role": role, "category": cat, f"atoms with lift >= {min_lift:g}": len(hit),
                     "their share of the guide's L1 mass": round(float(hit["share of L1"].sum()), 4),
                     "listed atoms' share": round(float(part["share of L1"].sum()), 4),
                     "weighted rate on defects": round(float((weight * part["on_defect"]).sum()), 4),
                     "weighted rate on normal": round(float((weight * part["on_normal"]).sum()), 4)})
    return pd.DataFrame(rows)


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


def generality_long(kinds: pd.DataFrame) -> pd.DataFrame:
    """The per-role category counts of :func:`generality` in long form (``atom, role, categories``)."""
    cols = [c for c in kinds.columns if c.endswith(" categories")]
    label = "atom " + kinds["atom"].astype(str) + " (" + kinds["kind"].str.replace("category-", "") + ")"
    out = kinds.assign(atom=label).melt(id_vars="atom", value_vars=cols, var_name="role",
                                                                       value_name="categories")
    return out.assign(role=out["role"].str.replace(" categories", ""))


def firing_matrix(firing: pd.DataFrame) -> pd.DataFrame:
    """Atoms x ``role: category`` table of firing shares (for a heat map)."""
    table = firing.assign(column=firing["role"] + ": " + firing["category"], row="atom " + firing["atom"].astype(str))
    out = table.pivot_table(index="row", columns="column", values="share", sort=False)
    return out.rename_axis(index="atom", columns="category")
