"""The four SPG stages as one call each, every one cached by its config.

``extract`` -> ``train_sae_stage`` -> ``train_guides_stage`` -> ``evaluate``; :func:`run` chains
them for a :class:`RunConfig` and writes the results folder. The notebooks call these same
functions, so a notebook and the command line share every artifact in the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import guides as guides_mod
from . import sae as sae_mod
from .cache import artifact_path, atomic_artifact, is_complete, resolve_cache_dir
from .config import ConfigError, from_dict, load_json, replace, save_json, to_dict
from .features import ExtractConfig, TokenStore, extract_features
from .guides import GuideConfig, SPGHead
from .metrics import METRIC_NAMES, compute_metrics, metrics_table
from .sae import SAEConfig, TopKSAE
from .synthetic import SyntheticConfig

RESULTS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    """How the trained guides are applied to the target images and scored."""

    blur_sigma: float = 4.0
    """Gaussian blur (pixels at input size) of each anomaly map; inference only."""
    image_score: str = "max"
    """Image score reported in the metrics: one of ``spg.guides.IMAGE_SCORES``."""
    lse_temperature: float = 0.05
    """Temperature of the log-sum-exp pooling score."""
    aupro_thresholds: int | None = None
    """None: exact AUPRO (MVTec definition); an integer: the AnomalyCLIP-style K-threshold variant."""
    batch_images: int = 8
    """Images per inference batch."""

    def __post_init__(self) -> None:
        if self.image_score not in guides_mod.IMAGE_SCORES:
            raise ConfigError(f"image_score must be one of {guides_mod.IMAGE_SCORES}, got {self.image_score!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one end-to-end SPG run depends on (saved as ``run_config.json``)."""

    aux: tuple[str, ...] = ("synthetic",)
    """Auxiliary (training) dataset specs: ``synthetic``, ``mvtec:ROOT[:cats]``, ``visa:ROOT[:cats]``."""
    target: tuple[str, ...] = ("synthetic",)
    """Target (zero-shot test) dataset specs, same forms; never used for training or selection."""
    preset: str = "default"
    """The preset these settings started from (``paper``, ``default``, ``smoke``)."""
    cache_dir: str | None = None
    """Artifact cache; None: ``$SPG_CACHE_DIR`` or ``~/.cache/spg``."""
    aux_images_per_category: int | None = None
    """Train on at most this many auxiliary images per category (``AnomalyDataset.sample``, seed 0,
    each category keeping its share of anomalous images), to make ablation sweeps affordable;
    None: all. Their tokens are copied from the whole categories' cached tokens when those exist,
    otherwise only the sampled images are extracted. Target images are never sampled."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    """Token extraction."""
    sae: SAEConfig = field(default_factory=SAEConfig)
    """Stage (i)."""
    guides: GuideConfig = field(default_factory=GuideConfig)
    """Stage (ii)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Inference and metrics."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The generated dataset used by ``synthetic`` specs."""

    def __post_init__(self) -> None:
        n = self.aux_images_per_category
        if n is not None and (not isinstance(n, int) or n < 2):
            raise ConfigError(f"aux_images_per_category (--aux-per-category) must be an integer >= 2 "
                              f"(a normal and an anomalous image per category) or None for all images, got {n!r}")


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's settings (SPG_METHOD.md §3-4); hours on a GPU with a ViT-L backbone.
    "paper": {},
    # Scaled so the synthetic default runs in minutes on a 2-core CPU.
    "default": {
        "sae": {"n_atoms": 2048, "epochs": 10, "token_fraction": 0.25, "dead_after_tokens": 1_000_000},
        "guides": {"epochs": 15, "ema_decay": 0.99},
    },
    # Seconds: for tests and CI.
    "smoke": {
        "sae": {"n_atoms": 256, "k": 8, "aux_k": 64, "epochs": 2, "batch_images": 8, "dead_after_tokens": 20_000},
        "guides": {"epochs": 2, "batch_images": 4, "ema_decay": 0.9},
        "synthetic": {"n_good": 3, "n_defect_per_kind": 1},
    },
}


def preset_config(name: str = "default", **sections: dict[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of a preset, with per-section overrides (``sae={"k": 16}``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = RunConfig(preset=name)
    for section, changes in PRESETS[name].items():
        cfg = dataclasses.replace(cfg, **{section: replace(getattr(cfg, section), **changes)})
    return override(cfg, **sections)


def override(cfg: RunConfig, **sections: Any) -> RunConfig:
    """Apply ``section={field: value}`` overrides and top-level ``field=value`` overrides."""
    top: dict[str, Any] = {}
    for name, changes in sections.items():
        sub = getattr(cfg, name, None)
        if dataclasses.is_dataclass(sub) and isinstance(changes, dict):
            cfg = dataclasses.replace(cfg, **{name: replace(sub, **changes)})
        else:
            top[name] = changes
    return replace(cfg, **top) if top else cfg


# ----------------------------------------------------------------------------------------- stages


@functools.lru_cache(maxsize=2)
def load_backbone(name: str, weights: str | None = None, stages: tuple[int, ...] | None = None):
    """The frozen backbone (built once per process)."""
    from .backbones import build_backbone

    return build_backbone(name, weights, **({"stages": tuple(stages)} if stages else {}))


def load_dataset(specs: tuple[str, ...], role: str, cfg: RunConfig, image_size: int):
    """One dataset from several specs (their categories must not collide)."""
    from .data import concat_datasets, dataset_from_spec

    cache = resolve_cache_dir(cfg.cache_dir)
    parts = [
        dataset_from_spec(spec, role=role, image_size=image_size, cache_dir=cache, synthetic=cfg.synthetic)
        for spec in specs
    ]
    return parts[0] if len(parts) == 1 else concat_datasets(parts)


def extract(cfg: RunConfig, role: str, *, progress: bool = True) -> TokenStore:
    """Tokens of the auxiliary (``role="aux"``) or target (``"target"``) images, from the cache if present."""
    if role not in ("aux", "target"):
        raise ConfigError(f"role must be 'aux' or 'target', got {role!r}")
    backbone = load_backbone(cfg.extract.backbone, cfg.extract.weights, cfg.extract.stages)
    full = load_dataset(getattr(cfg, role), role, cfg, backbone.image_size)
    sampled = role == "aux" and cfg.aux_images_per_category is not None
    dataset = full.sample(cfg.aux_images_per_category) if sampled else full
    return extract_features(dataset, backbone, resolve_cache_dir(cfg.cache_dir), cfg.extract, source=full, progress=progress)


@dataclass
class SAEArtifact:
    folder: Path
    sae: TopKSAE
    history: pd.DataFrame
    stats: dict[str, Any]


def train_sae_stage(store: TokenStore, cfg: SAEConfig, cache_dir: str | Path | None = None, *, progress: bool = True) -> SAEArtifact:
    """Stage (i) on the auxiliary patch tokens, cached by (features, config)."""
    key = {"schema_version": sae_mod.SAE_SCHEMA_VERSION, "features": store.key, "sae": to_dict(cfg)}
    folder = artifact_path(resolve_cache_dir(cache_dir), "sae", key)
    if not is_complete(folder):
        t0 = time.perf_counter()
        batches = lambda epoch: store.iter_patch_tokens(
            cfg.batch_images, shuffle_seed=cfg.seed * 1000 + epoch, token_fraction=cfg.token_fraction
        )  # noqa: E731
        sae, history = sae_mod.train_sae(batches, store.dim, cfg, progress=progress)
        counts = sae_mod.firing_counts(sae, store.iter_patch_tokens(cfg.batch_images), cfg.fire_threshold)
        sae.alive.copy_(counts > 0)
        stats = sae_mod.reconstruction_stats(sae, store.iter_patch_tokens(cfg.batch_images))
        stats.update(n_alive=int(sae.alive.sum()), train_seconds=time.perf_counter() - t0)
        with atomic_artifact(folder, key) as tmp:
            sae_mod.save_sae(sae, cfg, tmp, extra={"features": store.key, "stats": stats})
            pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
            np.save(tmp / "firing_counts.npy", counts.numpy())
    sae, _ = sae_mod.load_sae(folder)
    stats = load_json(folder / sae_mod.CONFIG_FILE)["stats"]
    return SAEArtifact(folder, sae, pd.read_csv(folder / "history.csv"), stats)


@dataclass
class GuideArtifact:
    folder: Path
    head: SPGHead
    history: pd.DataFrame


def train_guides_stage(
    store: TokenStore, sae: SAEArtifact, cfg: GuideConfig, cache_dir: str | Path | None = None, *, progress: bool = True
) -> GuideArtifact:
    """Stage (ii) on the auxiliary tokens and masks, cached by (features, SAE, config)."""
    key = {"schema_version": guides_mod.GUIDE_SCHEMA_VERSION, "features": store.key, "sae": sae.folder.name, "guides": to_dict(cfg)}
    folder = artifact_path(resolve_cache_dir(cache_dir), "guides", key)
    if not is_complete(folder):
        batches = lambda epoch: store.iter_batches(cfg.batch_images, shuffle_seed=cfg.seed * 1000 + epoch)  # noqa: E731
        head, history = guides_mod.train_guides(sae.sae.atoms().detach(), sae.sae.alive, batches, cfg, progress=progress)
        with atomic_artifact(folder, key) as tmp:
            guides_mod.save_head(head, cfg, tmp, extra={"features": store.key, "sae": sae.folder.name})
            pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
    head, _ = guides_mod.load_head(folder)
    return GuideArtifact(folder, head, pd.read_csv(folder / "history.csv"))


@dataclass
class Evaluation:
    folder: Path
    scores: pd.DataFrame
    """One row per target image: path, category, defect, label and every image score."""
    metrics: pd.DataFrame
    """Per category and mean, the six metrics (``spg.metrics.METRIC_NAMES``)."""
    per_defect: pd.DataFrame
    """The same metrics for each (category, defect type) against that category's normal images."""
    maps_file: Path
    """float16 ``[N, S, S]`` anomaly maps (memory-map it with ``np.load(..., mmap_mode="r")``)."""

    def maps(self) -> np.ndarray:
        return np.load(self.maps_file, mmap_mode="r")


@torch.no_grad()
def predict(store: TokenStore, head: SPGHead, cfg: EvalConfig, out: Path, *, progress: bool = True) -> pd.DataFrame:
    """Anomaly maps (written to ``out/maps.npy``) and every image score for every image of ``store``."""
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    maps = open_memmap(out / "maps.npy", mode="w+", dtype=np.float16, shape=(len(store), store.image_size, store.image_size))
    rows: dict[str, list] = {}
    n_batches = -(-len(store) // cfg.batch_images)
    for batch in tqdm(store.iter_batches(cfg.batch_images), total=n_batches, desc="predict", disable=not progress):
        amap = guides_mod.anomaly_maps(head, batch["patches"], store.image_size, cfg.blur_sigma)
        maps[batch["index"].numpy()] = amap.numpy().astype(np.float16)
        scores = guides_mod.image_scores(amap, head.global_score(batch["global"]), lse_temperature=cfg.lse_temperature)
        for name, value in scores.items():
            rows.setdefault(name, []).extend(value.tolist())
    maps.flush()
    info = pd.DataFrame({"path": store.paths, "category": store.categories, "defect": store.defects, "label": store.labels})
    return pd.concat([info, pd.DataFrame(rows)], axis=1)


def _metrics_for(store: TokenStore, maps: np.ndarray, scores: pd.DataFrame, idx: np.ndarray, cfg: EvalConfig) -> dict[str, float]:
    idx = np.sort(idx)
    return compute_metrics(
        store.labels[idx], scores[cfg.image_score].to_numpy()[idx], store.masks[idx], maps[idx],
        aupro_thresholds=cfg.aupro_thresholds,
    )


def evaluate(store: TokenStore, guides: GuideArtifact, cfg: EvalConfig, cache_dir: str | Path | None = None, *, progress: bool = True) -> Evaluation:
    """Zero-shot evaluation of trained guides on target tokens, per category and per defect type."""
    key = {"schema_version": RESULTS_SCHEMA_VERSION, "features": store.key, "guides": guides.folder.name, "eval": to_dict(cfg)}
    folder = artifact_path(resolve_cache_dir(cache_dir), "evaluation", key)
    if not is_complete(folder):
        with atomic_artifact(folder, key) as tmp:
            scores = predict(store, guides.head, cfg, tmp, progress=progress)
            maps = np.load(tmp / "maps.npy", mmap_mode="r")
            per_cat, per_defect = {}, {}
            for cat in store.category_names():
                idx = store.indices(cat)
                per_cat[cat] = _metrics_for(store, maps, scores, idx, cfg)
                good = idx[store.labels[idx] == 0]
                for defect in sorted(set(store.defects[idx]) - {"good"}):
                    sel = np.concatenate([good, idx[store.defects[idx] == defect]])
                    per_defect[f"{cat}/{defect}"] = _metrics_for(store, maps, scores, sel, cfg)
            scores.to_csv(tmp / "scores.csv", index=False)
            metrics_table(per_cat).to_csv(tmp / "metrics.csv", index_label="category")
            metrics_table(per_defect).to_csv(tmp / "metrics_per_defect.csv", index_label="category/defect")
            del maps
    read = lambda name: pd.read_csv(folder / name, index_col=0)  # noqa: E731
    return Evaluation(folder, pd.read_csv(folder / "scores.csv"), read("metrics.csv"), read("metrics_per_defect.csv"), folder / "maps.npy")


# ------------------------------------------------------------------------------------- end to end


@dataclass
class RunResult:
    out: Path
    config: RunConfig
    sae: SAEArtifact
    guides: GuideArtifact
    evaluation: Evaluation
    seconds: dict[str, float]


def run(cfg: RunConfig, out: str | Path, *, save_maps: bool = False, progress: bool = True) -> RunResult:
    """Extract -> SAE -> guides -> evaluate, then write the results folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(cfg, out / "run_config.json")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    aux = extract(cfg, "aux", progress=progress)
    target = extract(cfg, "target", progress=progress)
    _check_disjoint(aux, target)
    seconds["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    sae = train_sae_stage(aux, cfg.sae, cfg.cache_dir, progress=progress)
    seconds["sae"] = time.perf_counter() - t
    t = time.perf_counter()
    guides = train_guides_stage(aux, sae, cfg.guides, cfg.cache_dir, progress=progress)
    seconds["guides"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = evaluate(target, guides, cfg.eval, cfg.cache_dir, progress=progress)
    seconds["evaluate"] = time.perf_counter() - t
    result = RunResult(out, cfg, sae, guides, evaluation, seconds)
    write_results(result, aux, target)
    if save_maps:
        write_maps(evaluation, target, out / "maps")
    return result


def _check_disjoint(aux: TokenStore, target: TokenStore) -> None:
    shared = sorted(set(aux.category_names()) & set(target.category_names()))
    if shared:
        raise ConfigError(
            f"categories {shared} are in both the auxiliary and the target data; the zero-shot protocol "
            "needs disjoint categories: remove them from one side (e.g. mvtec:ROOT:cat1,cat2)."
        )


def write_results(result: RunResult, aux: TokenStore, target: TokenStore) -> None:
    """``metrics.json``, ``metrics.csv``, per-defect metrics, scores, histories and provenance."""
    out, ev = result.out, result.evaluation
    table = ev.metrics
    per_category = {cat: {m: _num(table.loc[cat, m]) for m in METRIC_NAMES} for cat in table.index if cat != "mean"}
    save_json(
        {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "metrics": METRIC_NAMES,
            "image_score": result.config.eval.image_score,
            "aupro_definition": aupro_definition(result.config.eval),
            "per_category": per_category,
            "mean": {m: _num(table.loc["mean", m]) for m in METRIC_NAMES},
            "aux_categories": aux.category_names(),
            "target_categories": target.category_names(),
            "seconds": result.seconds,
            "sae_stats": result.sae.stats,
            "artifacts": {"aux_features": str(aux.folder), "target_features": str(target.folder),
                          "sae": str(result.sae.folder), "guides": str(result.guides.folder), "evaluation": str(ev.folder)},
        },
        out / "metrics.json",
    )
    table.to_csv(out / "metrics.csv", index_label="category")
    ev.per_defect.to_csv(out / "metrics_per_defect.csv", index_label="category/defect")
    ev.scores.to_csv(out / "scores.csv", index=False)
    result.sae.history.to_csv(out / "sae_history.csv", index=False)
    result.guides.history.to_csv(out / "guide_history.csv", index=False)


def write_maps(evaluation: Evaluation, store: TokenStore, folder: Path) -> None:
    """One 16-bit grey PNG per target image (map value x 65535), ``folder/<category>/<defect>/<name>.png``."""
    from PIL import Image

    maps = evaluation.maps()
    for i, path in enumerate(store.paths):
        dest = folder / store.categories[i] / store.defects[i] / (Path(path).stem + ".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        values = np.clip(maps[i].astype(np.float32), 0, 1) * 65535
        Image.fromarray(values.round().astype(np.uint16)).save(dest)


def aupro_definition(cfg: EvalConfig) -> str:
    """Which AUPRO a number uses, in words (written next to every reported AUPRO)."""
    if cfg.aupro_thresholds is None:
        return "exact MVTec AUPRO: all thresholds, 8-connected regions, area to FPR 0.3 divided by 0.3"
    return f"AnomalyCLIP-style AUPRO: {cfg.aupro_thresholds} thresholds, FPR axis cut at 0.3 and rescaled to [0, 1]"


def _num(value: Any) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def load_run_config(path: str | Path) -> RunConfig:
    """Read a ``run_config.json`` written by :func:`run`."""
    return from_dict(RunConfig, load_json(path))
