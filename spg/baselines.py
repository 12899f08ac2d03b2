"""Baselines for SPG, run on the same cached tokens under the same zero-shot protocol.

- **dense guides**: the same four heads and losses, but the guide vectors are free vectors in token
  space (no SAE, no non-negativity, no sparsity): what does the sparse dictionary buy?
- **random dictionary**: SPG's guides over a random unit-norm dictionary of the SAE's size: does the
  dictionary need to be *learned*?
- **training-free**: each patch scored by its cosine distance to its nearest patches of the same
  image (anomalies are rare, so their nearest neighbours are far); no auxiliary data at all.

:func:`compare` trains and evaluates SPG and all three in one call, so they appear side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from . import guides as guides_mod
from .cache import artifact_path, atomic_artifact, is_complete, resolve_cache_dir
from .config import save_json, to_dict
from .features import TokenStore
from .guides import GuideConfig, SPGHead
from .pipeline import GuideArtifact, RunConfig, SAEArtifact, evaluate, extract, train_guides_stage, train_sae_stage

BASELINE_SCHEMA_VERSION = 1
METHODS = ("spg", "dense_guides", "random_dictionary", "training_free")


class DenseGuideHead(SPGHead):
    """Guide vectors learned directly in token space: ``guides() = theta`` (``[4, d]``, unconstrained)."""

    def __init__(self, theta: torch.Tensor, *, tau: float = 0.07) -> None:
        d = theta.shape[1]
        super().__init__(torch.eye(d), torch.ones(d, dtype=torch.bool), tau=tau, theta=theta)

    def coefficients(self) -> torch.Tensor:
        return self.theta

    def sparsity_penalty(self) -> torch.Tensor:
        return self.theta.new_zeros(())


class PatchKNNScorer(torch.nn.Module):
    """Training-free scores: ``1 - mean cosine similarity to the k most similar other patches``."""

    def __init__(self, knn: int = 3) -> None:
        super().__init__()
        self.knn = knn

    def anomaly_grid(self, patches: torch.Tensor) -> torch.Tensor:
        """``[B, h, w, d]`` -> ``[B, h, w]`` outlier scores in ``[0, 2]``."""
        b, h, w, d = patches.shape
        x = F.normalize(patches.reshape(b, h * w, d), dim=-1)
        sim = x @ x.transpose(1, 2)
        sim.diagonal(dim1=1, dim2=2).fill_(-torch.inf)
        return (1 - sim.topk(self.knn, dim=-1).values.mean(-1)).reshape(b, h, w)

    def anomaly_map(self, patches: torch.Tensor, size: int) -> torch.Tensor:
        scores = self.anomaly_grid(patches).unsqueeze(1)
        return F.interpolate(scores, size=(size, size), mode="bilinear", align_corners=False).squeeze(1)

    def global_score(self, global_tokens: torch.Tensor) -> torch.Tensor:
        """There is no global head: NaN, so a ``global``/``hybrid`` image score cannot be mistaken for one."""
        return torch.full((global_tokens.shape[0],), float("nan"))


def random_dictionary(n_atoms: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``n_atoms`` random unit-norm atoms of dimension ``dim``."""
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_atoms, dim, generator=gen), dim=1)


def _train_baseline(
    kind: str, store: TokenStore, cfg: GuideConfig, head: SPGHead, cache_dir: Path, extra_key: dict, progress: bool
) -> GuideArtifact:
    key = {"schema_version": BASELINE_SCHEMA_VERSION, "kind": kind, "features": store.key, "guides": to_dict(cfg), **extra_key}
    folder = artifact_path(resolve_cache_dir(cache_dir), "baselines", key)
    if not is_complete(folder):
        batches = lambda epoch: store.iter_batches(cfg.batch_images, shuffle_seed=cfg.seed * 1000 + epoch)  # noqa: E731
        head, history = guides_mod.train_guides(head.atoms, head.alive, batches, cfg, progress=progress, head=head)
        with atomic_artifact(folder, key) as tmp:
            guides_mod.save_head(head, cfg, tmp, extra={"kind": kind})
            pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
    loaded, _ = guides_mod.load_head(folder)
    if kind == "dense_guides":
        loaded = DenseGuideHead(loaded.theta.detach(), tau=cfg.tau)
    return GuideArtifact(folder, loaded, pd.read_csv(folder / "history.csv"))


def train_dense_guides(store: TokenStore, cfg: GuideConfig, cache_dir=None, *, progress: bool = True) -> GuideArtifact:
    """The dense-guides baseline (same init, losses, optimiser and EMA as SPG's guides)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    theta = cfg.init_mean + cfg.init_std * torch.randn(4, store.dim, generator=gen)
    return _train_baseline("dense_guides", store, cfg, DenseGuideHead(theta, tau=cfg.tau), cache_dir, {}, progress)


def train_random_dictionary_guides(
    store: TokenStore, n_atoms: int, cfg: GuideConfig, cache_dir=None, *, progress: bool = True
) -> GuideArtifact:
    """SPG's guides over a random unit-norm dictionary with ``n_atoms`` atoms (all alive)."""
    atoms = random_dictionary(n_atoms, store.dim, cfg.seed)
    head = guides_mod.make_head(atoms, torch.ones(n_atoms, dtype=torch.bool), cfg)
    return _train_baseline("random_dictionary", store, cfg, head, cache_dir, {"n_atoms": n_atoms}, progress)


def training_free(knn: int = 3, cache_dir=None) -> GuideArtifact:
    """The training-free reference as an artifact (a folder holding only its key) for :func:`evaluate`."""
    key = {"schema_version": BASELINE_SCHEMA_VERSION, "kind": "training_free", "knn": knn}
    folder = artifact_path(resolve_cache_dir(cache_dir), "baselines", key)
    if not is_complete(folder):
        with atomic_artifact(folder, key):
            pass
    return GuideArtifact(folder, PatchKNNScorer(knn), pd.DataFrame())


@dataclass
class Comparison:
    metrics: pd.DataFrame
    """Long table: one row per (method, category) including each method's ``mean`` row."""
    means: pd.DataFrame
    """Methods x metrics: the category means side by side."""
    per_defect: pd.DataFrame | None = None
    """Long table: one row per (method, ``category/defect``), each defect type against the normal images."""


def compare(cfg: RunConfig, out: str | Path | None = None, *, knn: int = 3, progress: bool = True) -> Comparison:
    """SPG and the three baselines on the same tokens and target categories, measured in one run."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def timed(name: str, value):
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        return value

    aux = timed("extract_aux", extract(cfg, "aux", progress=progress))
    target = timed("extract_target", extract(cfg, "target", progress=progress))
    sae: SAEArtifact = timed("sae", train_sae_stage(aux, cfg.sae, cfg.cache_dir, progress=progress))
    artifacts = {
        "spg": timed("train_spg", train_guides_stage(aux, sae, cfg.guides, cfg.cache_dir, progress=progress)),
        "dense_guides": timed("train_dense_guides", train_dense_guides(aux, cfg.guides, cfg.cache_dir, progress=progress)),
        "random_dictionary": timed("train_random_dictionary", train_random_dictionary_guides(
            aux, cfg.sae.n_atoms, cfg.guides, cfg.cache_dir, progress=progress)),
        "training_free": timed("training_free", training_free(knn, cfg.cache_dir)),
    }
    tables, defect_tables = [], []
    for method, artifact in artifacts.items():
        evaluation = timed(f"evaluate_{method}", evaluate(target, artifact, cfg.eval, cfg.cache_dir, progress=progress))
        tables.append(evaluation.metrics.rename_axis("category").reset_index().assign(method=method))
        defect_tables.append(evaluation.per_defect.rename_axis("defect").reset_index().assign(method=method))
    long = pd.concat(tables, ignore_index=True).set_index(["method", "category"])
    per_defect = pd.concat(defect_tables, ignore_index=True).set_index(["method", "defect"])
    means = long.xs("mean", level="category").loc[list(METHODS)]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_json(cfg, out / "run_config.json")
        long.to_csv(out / "comparison.csv")
        means.to_csv(out / "comparison_means.csv")
        per_defect.to_csv(out / "comparison_per_defect.csv")
        save_json({"seconds": seconds, "note": "wall seconds per stage in this call; 0-1 s means read from the cache",
                   "n_aux_images": len(aux), "n_target_images": len(target), "threads": torch.get_num_threads()},
                  out / "timing.json")
        write_percent_tables(out)
    return Comparison(long, means, per_defect)


def write_percent_tables(folder: str | Path) -> None:
    """Next to :func:`compare`'s files, the tables the book shows: metrics in % (one decimal) with
    short column names: ``comparison_means_pct.csv`` (methods) and ``comparison_per_defect_pct.csv``
    (each defect type against the category's normal images, per method)."""
    from .analysis.results import percent

    folder = Path(folder)
    result = load_comparison(folder)
    percent(result.means).rename_axis("method").to_csv(folder / "comparison_means_pct.csv")
    if result.per_defect is not None:
        table = percent(result.per_defect).reset_index()
        table = table[table["defect"] != "mean"]  # the category tables hold the means
        table = table.sort_values(["defect", "method"], key=lambda c: c.map(METHODS.index) if c.name == "method" else c)
        table[["defect", "method", *table.columns[2:]]].to_csv(folder / "comparison_per_defect_pct.csv", index=False)


def timing_table(folders: dict[str, str | Path]) -> pd.DataFrame:
    """Wall seconds per stage (rows) of several :func:`compare` runs (columns, named by the keys of
    ``folders``), read from their ``timing.json``, with image counts and the total."""
    import json

    columns = {}
    for name, folder in folders.items():
        info = json.loads((Path(folder) / "timing.json").read_text())
        seconds = pd.Series(info["seconds"], dtype=float)
        columns[name] = pd.concat([pd.Series({"auxiliary images": info["n_aux_images"], "target images": info["n_target_images"]}),
                                   seconds, pd.Series({"total": seconds.sum()})])
    return pd.DataFrame(columns).rename_axis("stage (s)").round(1)


def summarise(folders: list[str | Path], out: str | Path) -> pd.DataFrame:
    """One table and one figure over several :func:`compare` runs (e.g. the three real-data splits):
    ``splits.csv`` (target x method, metrics in %), ``splits.png`` + ``.csv`` and ``runtime.csv``.
    Each run is named by its target categories; returns the table."""
    from .analysis.results import percent
    from .pipeline import load_run_config
    from .viz import method_panels, save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, parts = {}, []
    for folder in map(Path, folders):
        cfg = load_run_config(folder / "run_config.json")
        name = " + ".join(spec.rsplit(":", 1)[-1] for spec in cfg.target)
        names[name] = folder
        parts.append(percent(load_comparison(folder).means).rename_axis("method").reset_index().assign(target=name))
    table = pd.concat(parts, ignore_index=True).set_index(["target", "method"])
    table.to_csv(out / "splits.csv")
    save_figure(method_panels(table.reset_index(), ["I-AUROC", "P-AUROC", "AUPRO"]), table.reset_index(), "splits", out)
    timing_table(names).to_csv(out / "runtime.csv", float_format="%g")
    return table


def load_comparison(folder: str | Path) -> Comparison:
    """Read what :func:`compare` wrote."""
    folder = Path(folder)
    long = pd.read_csv(folder / "comparison.csv", index_col=[0, 1])
    defects = folder / "comparison_per_defect.csv"
    per_defect = pd.read_csv(defects, index_col=[0, 1]) if defects.exists() else None
    return Comparison(long, pd.read_csv(folder / "comparison_means.csv", index_col=0), per_defect)

