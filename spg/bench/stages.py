"""Benchmarks of the pipeline stages: extraction, guide training, SPG-head inference, scaling.

Each function measures one thing with real library code (``spg.features.extract_features``,
``spg.sae.train_sae``, ``spg.guides.train_guides`` / ``anomaly_maps`` / ``image_scores``) and returns
a plain dict of numbers for the JSON report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import AnomalyDataset
from ..features import ExtractConfig, TokenStore, extract_features, loader_workers
from ..guides import GuideConfig, anomaly_maps, image_scores, make_head, train_guides
from ..sae import SAEConfig, train_sae
from .store import write_token_store
from .timing import fit_exponent, interleaved, paired_exponent, paired_ratio, timed

_counter = itertools.count()


def subset(dataset: AnomalyDataset, n: int) -> AnomalyDataset:
    """The first ``n`` images of ``dataset`` (records repeated when it has fewer)."""
    records = [dataset.records[i % len(dataset.records)] for i in range(n)]
    return AnomalyDataset(records, dataset.image_size, f"{dataset.name}[:{n}]")


def run_extraction(dataset: AnomalyDataset, backbone: Any, cfg: ExtractConfig, work_dir: Path) -> None:
    """``extract_features`` into a fresh cache folder (so it never hits a cached result), then delete it."""
    cache = Path(work_dir) / f"extract-{next(_counter)}"
    try:
        extract_features(dataset, backbone, cache, cfg, progress=False)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def random_head(dim: int, n_atoms: int = 2048, seed: int = 0):
    """An SPG head over a random unit-norm dictionary (speed does not depend on the values)."""
    gen = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(n_atoms, dim, generator=gen), dim=1)
    return make_head(atoms, torch.ones(n_atoms, dtype=torch.bool), GuideConfig(seed=seed))


def bench_extraction(
    dataset: AnomalyDataset, backbone: Any, cfg: ExtractConfig, repeats: int, work_dir: Path,
    compare_workers: tuple[int, ...] = (),
) -> dict[str, Any]:
    """End to end (decode, resize, forward, cache write) vs forward only vs the SPG head vs decoding
    alone (``dataset[i]`` in this process), interleaved.

    Forward only runs the backbone on the same images already decoded into one in-memory tensor,
    in the same batches: the limit extraction can approach. The head (cosines, softmax,
    upsampling, blur, every image score) runs on the tokens of those images; its time per image
    is compared with the forward's. ``compare_workers``: also end to end with that many
    ``DataLoader`` worker processes (instead of ``cfg.num_workers``).
    """
    n, bs, size = len(dataset), cfg.batch_size, backbone.image_size
    images = torch.stack([dataset[i]["image"] for i in range(n)])
    with torch.inference_mode():
        backbone(images[:bs])  # warm-up (first-call allocations, kernel selection)
        tokens = [backbone(images[s : s + bs]) for s in range(0, n, bs)]
    head = random_head(backbone.dim)

    def forward_only() -> None:
        with torch.inference_mode():
            for s in range(0, n, bs):
                backbone(images[s : s + bs])

    def spg_head() -> None:
        with torch.inference_mode():
            for glob, patches in tokens:
                maps = anomaly_maps(head, patches, size, 4.0)
                image_scores(maps, head.global_score(glob))

    def decode_only() -> None:
        for i in range(n):
            dataset[i]

    contenders = {
        "end_to_end": lambda: run_extraction(dataset, backbone, cfg, work_dir),
        "forward_only": forward_only,
        "head": spg_head,
        "decode_only": decode_only,
    }
    for w in compare_workers:
        alt = dataclasses.replace(cfg, num_workers=w)
        contenders[f"end_to_end_{w}_workers"] = lambda alt=alt: run_extraction(dataset, backbone, alt, work_dir)
    t = interleaved(contenders, repeats, warmup=0)
    e2e, fwd, hd, dec = (t[k].median for k in ("end_to_end", "forward_only", "head", "decode_only"))
    return {
        "images": n, "batch_size": bs, "num_workers": loader_workers(cfg, backbone), "image_size": size,
        "end_to_end_vs_forward_by_workers": {w: paired_ratio(t["forward_only"], t[f"end_to_end_{w}_workers"])
                                             for w in compare_workers},
        "backbone": backbone.name, "dim": backbone.dim,
        "timings": {k: v.to_dict() for k, v in t.items()},
        "end_to_end_img_s": n / e2e, "forward_img_s": n / fwd,
        "end_to_end_vs_forward": paired_ratio(t["forward_only"], t["end_to_end"]),
        "decode_ms_per_img": 1000 * dec / n, "decode_vs_forward": paired_ratio(t["decode_only"], t["forward_only"]),
        "head_ms_per_img": 1000 * hd / n, "forward_ms_per_img": 1000 * fwd / n,
        "head_vs_forward": paired_ratio(t["head"], t["forward_only"]),
    }


def bench_guide_training(store: TokenStore, repeats: int, batch_images: int = 8, n_atoms: int = 2048) -> dict[str, Any]:
    """Images/s of guide training (one epoch of ``train_guides`` streaming from ``store``)."""
    head = random_head(store.dim, n_atoms)
    cfg = GuideConfig(epochs=1, batch_images=batch_images)

    def epoch() -> None:
        batches = lambda e: store.iter_batches(batch_images, shuffle_seed=e)  # noqa: E731
        train_guides(head.atoms, head.alive, batches, cfg, progress=False)

    t = interleaved({"epoch": epoch}, repeats, warmup=0)
    return {"images": len(store), "batch_images": batch_images, "timings": {"epoch": t["epoch"].to_dict()},
            "img_s": len(store) / t["epoch"].median}


def sae_epoch(store: TokenStore, cfg: SAEConfig) -> None:
    """One epoch of ``train_sae`` streaming the store's patch tokens (as the pipeline does)."""
    batches = lambda e: store.iter_patch_tokens(cfg.batch_images, shuffle_seed=e, token_fraction=cfg.token_fraction)  # noqa: E731
    train_sae(batches, store.dim, cfg, progress=False)


def bench_scaling(
    dataset: AnomalyDataset, backbone: Any, extract_cfg: ExtractConfig, base_extract: int,
    base_tokens: int, sae_cfg: SAEConfig, repeats: int, extract_repeats: int, work_dir: Path,
    grid: int, dim: int, image_size: int,
) -> dict[str, Any]:
    """Seconds of extraction, one SAE epoch and one guide epoch at 1x, 2x and 4x the image count.

    Extraction runs on the image files; the SAE and guide epochs on random token caches of
    ``base_tokens * m`` images (same layout and sizes as real ones). Each size's time is the
    median over ``repeats`` (``extract_repeats`` for extraction), sizes interleaved. The exponent of
    time against size (1.0 for linear scaling) is fitted per repeat; its median is reported.
    """
    mult = (1, 2, 4)
    stores = {m: write_token_store(Path(work_dir) / f"scale-{m}x", base_tokens * m, grid=grid, dim=dim,
                                   image_size=image_size, seed=m) for m in mult}
    guide_cfg = GuideConfig(epochs=1)
    head = random_head(dim, sae_cfg.n_atoms)
    extract, tokens = {}, {}
    for m in mult:
        data = subset(dataset, base_extract * m)
        extract[f"extract_{m}x"] = lambda data=data: run_extraction(data, backbone, extract_cfg, work_dir)
        tokens[f"sae_{m}x"] = lambda s=stores[m]: sae_epoch(s, sae_cfg)
        tokens[f"guides_{m}x"] = lambda s=stores[m]: train_guides(
            head.atoms, head.alive, lambda e: s.iter_batches(guide_cfg.batch_images, shuffle_seed=e),
            guide_cfg, progress=False)
    t = {**interleaved(extract, extract_repeats, warmup=0), **interleaved(tokens, repeats, warmup=0)}
    out: dict[str, Any] = {"multipliers": list(mult), "timings": {k: v.to_dict() for k, v in t.items()}}
    for stage, base in (("extract", base_extract), ("sae", base_tokens), ("guides", base_tokens)):
        sizes = [base * m for m in mult]
        secs = [t[f"{stage}_{m}x"].median for m in mult]
        out[stage] = {"images": sizes, "seconds": secs,
                      "exponent": paired_exponent(sizes, [t[f"{stage}_{m}x"] for m in mult]),
                      "exponent_of_medians": fit_exponent(sizes, secs),
                      "ratio_2x": secs[1] / secs[0], "ratio_4x": secs[2] / secs[0]}
    for m in mult:
        shutil.rmtree(stores[m].folder, ignore_errors=True)
    return out


def bench_paper_backbone(name: str, device: str, batch: int, repeats: int, warmup: int,
                         dtype: str = "float32") -> dict[str, Any]:
    """Forward images/s of a paper backbone's architecture built with random weights (speed only:
    the speed of a forward pass does not depend on the weights' values)."""
    from ..backbones import build_backbone

    wall, _, backbone = timed(lambda: build_backbone(name, random_weights=True).to(device))
    x = torch.rand(batch, 3, backbone.image_size, backbone.image_size, device=device)
    autocast = (contextlib.nullcontext() if dtype == "float32"
                else torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype)))

    def forward() -> None:
        with torch.inference_mode(), autocast:
            backbone(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    t = interleaved({"forward": forward}, repeats, warmup=warmup)
    result = {"backbone": name, "device": device, "dtype": dtype, "batch": batch, "image_size": backbone.image_size,
              "tokens": backbone.grid ** 2, "dim": backbone.dim, "build_s": wall, "warmup": warmup,
              "timings": {"forward": t["forward"].to_dict()}, "img_s": batch / t["forward"].median,
              "random_weights": True, "note": "speed only: random weights (speed does not depend on them)"}
    del backbone, x
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result
