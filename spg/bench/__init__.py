"""``python -m spg bench``: every stage of SPG measured against its limit, in one process.

Stages and what each is compared with, side by side in the same run (see :mod:`.timing`):

- extraction, images/s end to end (``extract_features`` on PNG files: decode, resize, forward,
  cache write) against the backbone's forward alone on tensors already in memory;
- SAE training, tokens/s and achieved GFLOP/s (4 C d per token) against a float32 matmul of the
  same shape and against a naive dense step (:mod:`.sae_bench`);
- guide training images/s, and the SPG head at inference as a fraction of the backbone forward;
- scaling of extraction, SAE epoch and guide epoch at 1x / 2x / 4x images, and the peak resident
  memory of SAE training streaming from a cache larger than 2 GB (in a child process);
- the paper's backbones (DINOv3 ViT-L/16 @448, CLIP ViT-L/14 @518), forward throughput of the
  architectures with random weights (speed only), on the CPU, or on a GPU with
  ``--paper-backbones-only --device cuda``; ``--merge-gpu`` adds such a run to the committed results.

The full run writes ``results/bench/bench.{json,csv,png}`` (:mod:`.report`); ``--quick`` uses
smaller sizes (a few minutes on 2 cores) and writes files only with ``--out``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from . import report
from .report import RATIO_MEASUREMENTS, SCHEMA_VERSION, check, row

DEFAULT_OUT = Path("results") / "bench"


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run (presets: :data:`FULL`, :data:`QUICK`, :data:`TINY`)."""

    mode: str = "full"
    backbone: str = "efficientnet_lite2"
    random_weights: bool = False
    """Random backbone weights (tests only: speed is the same, no weights file needed)."""
    image_size: int = 448
    png_size: int = 256
    """Side of the generated synthetic PNGs (resized to ``image_size`` when read, as real data is)."""
    extract_images: int = 32
    extract_batch: int = 8
    extract_workers: int = -1
    """DataLoader workers of the measured extraction (-1: the library's default, auto)."""
    extract_compare_workers: tuple[int, ...] = (1,)
    """Also measure end to end with these worker counts (an "(info)" row each)."""
    repeats: int = 5
    sae_tokens: int = 16 * 784
    sae_atoms: int = 2048
    sae_k: int = 32
    sae_repeats: int = 7
    sae_aux_dead: int = 512
    guide_images: int = 48
    scale_extract_base: int = 16
    scale_token_base: int = 64
    scale_repeats: int = 5
    scale_extract_repeats: int = 5
    memory_cache_gb: tuple[float, ...] = (0.5, 2.1)
    """Cache sizes of the memory check, GB (the last one is compared with its peak RSS)."""
    memory_token_fraction: float = 0.25
    paper_backbones: tuple[str, ...] = ("dinov3", "openclip")
    paper_batch: int = 1
    paper_repeats: int = 2
    paper_warmup: int = 1


FULL = BenchConfig()
QUICK = BenchConfig(mode="quick", extract_images=16, repeats=3, extract_compare_workers=(), sae_repeats=5, guide_images=16,
                    scale_extract_base=8, scale_token_base=16, scale_repeats=3, scale_extract_repeats=1,
                    memory_cache_gb=(0.25,),
                    paper_repeats=1, paper_warmup=0)
TINY = BenchConfig(mode="tiny", random_weights=True, image_size=64, png_size=48, extract_images=2, extract_batch=2,
                   extract_compare_workers=(1,),
                   repeats=1, sae_tokens=64, sae_atoms=64, sae_k=4, sae_repeats=1, sae_aux_dead=8, guide_images=4,
                   scale_extract_base=1, scale_token_base=2, scale_repeats=1, scale_extract_repeats=1, memory_cache_gb=(0.002,), paper_backbones=())
PAPER_NAMES = {"dinov3": "DINOv3 ViT-L/16 @448", "openclip": "CLIP ViT-L/14 @518", "dinov2": "DINOv2 ViT-L/14 @448"}


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def synthetic_images(cfg: BenchConfig, work_dir: Path, n_needed: int):
    """Generate synthetic PNGs (MVTec layout) into ``work_dir`` and load them at ``cfg.image_size``."""
    from ..synthetic import AUX_CATEGORIES, DEFECT_KINDS, SyntheticConfig, synthetic_dataset

    per_cat = -(-n_needed // len(AUX_CATEGORIES))
    n_def = max(1, per_cat // (3 * len(DEFECT_KINDS)))
    syn = SyntheticConfig(image_size=cfg.png_size, n_good=max(1, per_cat - n_def * len(DEFECT_KINDS)),
                          n_defect_per_kind=n_def, categories=AUX_CATEGORIES)
    return synthetic_dataset("aux", image_size=cfg.image_size, cache_dir=work_dir, cfg=syn)


def run_pipeline_bench(cfg: BenchConfig, work_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All CPU measurements; ``(results, rows)``."""
    import torch

    from ..backbones import build_backbone
    from ..features import ExtractConfig
    from ..sae import SAEConfig
    from . import memory, sae_bench, stages
    from .store import images_for_bytes, write_token_store

    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone, random_weights=cfg.random_weights, image_size=cfg.image_size)
    grid, dim, size = backbone.grid, backbone.dim, backbone.image_size
    extract_cfg = ExtractConfig(backbone=cfg.backbone, batch_size=cfg.extract_batch, num_workers=cfg.extract_workers)
    dataset = synthetic_images(cfg, work_dir, max(cfg.extract_images, 4 * cfg.scale_extract_base))

    _log(f"extraction: {cfg.extract_images} images, end to end vs forward only vs SPG head, {cfg.repeats} repeats")
    ex = results["extraction"] = stages.bench_extraction(
        stages.subset(dataset, cfg.extract_images), backbone, extract_cfg, cfg.repeats, work_dir,
        cfg.extract_compare_workers)
    rows += [
        row("extraction", "end to end (decode, resize, forward, write)", ex["end_to_end_img_s"], "img/s"),
        row("extraction", "forward only (tensors in memory)", ex["forward_img_s"], "img/s"),
        row("extraction", "decode + resize alone (1 process)", ex["decode_ms_per_img"], "ms/img",
            f"forward {ex['forward_ms_per_img']:.3g} ms/img", ex["decode_vs_forward"], "(info)"),
        row("extraction", "end to end / forward only", ex["end_to_end_img_s"], "img/s",
            f"forward {ex['forward_img_s']:.3g} img/s; default loader: "
            + (f"{ex['num_workers']} worker processes" if ex["num_workers"] else "decoding inline"),
            ex["end_to_end_vs_forward"], ">= 0.85", check(ex["end_to_end_vs_forward"], ">=", 0.85)),
    ]
    for w, ratio in ex["end_to_end_vs_forward_by_workers"].items():
        rows.append(row("extraction", f"end to end with {w} worker process{'es' * (w != 1)} / forward only",
                        ex["images"] / ex["timings"][f"end_to_end_{w}_workers"]["median_s"], "img/s",
                        f"forward {ex['forward_img_s']:.3g} img/s", ratio, "(info)"))

    _log(f"SAE step: {cfg.sae_tokens} tokens, d={dim}, C={cfg.sae_atoms}, k={cfg.sae_k}; matmul, fast, naive")
    sae = results["sae"] = sae_bench.bench_sae_step(cfg.sae_tokens, dim, cfg.sae_atoms, cfg.sae_k, cfg.sae_repeats)
    rows += [
        row("sae", "matmul [N,d] @ [d,C] float32", sae["matmul_gflops"], "GFLOP/s"),
        row("sae", "training step", sae["fast_tokens_s"], "tokens/s"),
        row("sae", "achieved / matmul GFLOP/s", sae["fast_gflops"], "GFLOP/s",
            f"matmul {sae['matmul_gflops']:.3g} GFLOP/s", sae["fast_vs_matmul"], ">= 0.5",
            check(sae["fast_vs_matmul"], ">=", 0.5)),
        row("sae", "naive step (dense z @ D, autograd)", sae["naive_tokens_s"], "tokens/s"),
        row("sae", "speed-up over naive step", sae["fast_tokens_s"], "tokens/s",
            f"naive {sae['naive_tokens_s']:.3g} tokens/s", sae["speedup_vs_naive"], ">= 3",
            check(sae["speedup_vs_naive"], ">=", 3.0)),
    ]
    if cfg.sae_aux_dead:
        _log(f"SAE step with AuxK active ({cfg.sae_aux_dead} dead latents)")
        aux = results["sae_auxk"] = sae_bench.bench_sae_step(
            cfg.sae_tokens, dim, cfg.sae_atoms, cfg.sae_k, max(1, cfg.sae_repeats - 2), aux_dead=cfg.sae_aux_dead)
        rows.append(row("sae (AuxK on)", f"speed-up over naive, {cfg.sae_aux_dead} dead latents", aux["fast_tokens_s"],
                        "tokens/s", f"naive {aux['naive_tokens_s']:.3g} tokens/s", aux["speedup_vs_naive"], "(info)"))

    _log(f"guide training: {cfg.guide_images} images")
    store = write_token_store(work_dir / "guides", cfg.guide_images, grid=grid, dim=dim, image_size=size)
    gd = results["guides"] = stages.bench_guide_training(store, cfg.repeats, n_atoms=cfg.sae_atoms)
    rows += [
        row("guides", "training (1 epoch, batch 8)", gd["img_s"], "img/s"),
        row("inference", "SPG head (maps, blur, scores)", ex["head_ms_per_img"], "ms/img"),
        row("inference", "head / backbone forward", ex["head_ms_per_img"], "ms/img",
            f"forward {ex['forward_ms_per_img']:.3g} ms/img", ex["head_vs_forward"], "<= 0.05",
            check(ex["head_vs_forward"], "<=", 0.05)),
    ]

    _log(f"scaling: 1x/2x/4x of {cfg.scale_extract_base} images (extraction), {cfg.scale_token_base} (SAE, guides)")
    sae_cfg = SAEConfig(n_atoms=cfg.sae_atoms, k=cfg.sae_k, epochs=1, batch_images=16)
    sc = results["scaling"] = stages.bench_scaling(
        dataset, backbone, extract_cfg, cfg.scale_extract_base, cfg.scale_token_base, sae_cfg, cfg.scale_repeats,
        cfg.scale_extract_repeats, work_dir, grid, dim, size)
    for stage, label in (("extract", "extraction"), ("sae", "SAE epoch"), ("guides", "guide epoch")):
        s = sc[stage]
        times = ", ".join(f"{v:.3g}" for v in s["seconds"])
        rows.append(row("scaling", f"{label} time exponent", s["exponent"], "",
                        f"{s['images'][0]}/{s['images'][1]}/{s['images'][2]} images: {times} s", s["exponent"],
                        "0.85 .. 1.15", check(s["exponent"], "in", (0.85, 1.15))))

    results["memory"] = []
    for gb in cfg.memory_cache_gb:
        n_mem = images_for_bytes(gb * 1e9, grid, dim)
        _log(f"memory: SAE training streaming a {gb} GB cache ({n_mem} images) in a child process")
        mem_store = write_token_store(work_dir / "memory", n_mem, grid=grid, dim=dim, image_size=size, seed=1)
        results["memory"].append(memory.measure_in_subprocess(
            mem_store.folder, n_atoms=cfg.sae_atoms, k=cfg.sae_k, token_fraction=cfg.memory_token_fraction))
        shutil.rmtree(mem_store.folder, ignore_errors=True)
    rows += memory_rows(cfg, results["memory"])

    results["paper_backbones"] = []
    rows += run_paper_backbones(cfg, "cpu", results["paper_backbones"])
    return results, rows


def memory_rows(cfg: BenchConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak RSS against the cache size (target where the cache exceeds 2 GB) and, with two cache
    sizes, the peak of the larger against the smaller (bounded: about 1)."""
    big, small = runs[-1], runs[0]
    full = big["cache_mb"] * 2**20 > 2e9
    ratio = big["peak_rss_mb"] / big["cache_mb"]
    note = "" if full else f" ({cfg.mode}: smaller than the > 2 GB of the full run)"
    rows = [row("memory", "peak RSS / cache size", big["peak_rss_mb"], "MiB",
                f"cache {big['cache_mb']:,.0f} MiB{note}; {big['baseline_peak_rss_mb']:.0f} MiB before training "
                f"(torch loaded)", ratio, "<= 0.5" if full else "(info)", check(ratio, "<=", 0.5) if full else None)]
    if len(runs) > 1:
        growth = big["peak_rss_mb"] / small["peak_rss_mb"]
        rows.append(row("memory", "peak RSS, large / small cache", big["peak_rss_mb"], "MiB",
                        f"{small['peak_rss_mb']:.0f} MiB with a {small['cache_mb']:,.0f} MiB cache "
                        f"({big['cache_mb'] / small['cache_mb']:.1f}x smaller)", growth, "<= 1.1",
                        check(growth, "<=", 1.1)))
    return rows


def run_paper_backbones(cfg: BenchConfig, device: str, sink: list[dict[str, Any]],
                        batches: tuple[int, ...] | None = None, dtypes: tuple[str, ...] = ("float32",)) -> list[dict[str, Any]]:
    """Forward throughput of the paper backbones' architectures (random weights) on ``device``."""
    from .stages import bench_paper_backbone

    rows = []
    for name in cfg.paper_backbones:
        for batch in batches or (cfg.paper_batch,):
            for dtype in dtypes:
                _log(f"paper backbone {name} on {device}, batch {batch}, {dtype}")
                r = bench_paper_backbone(name, device, batch, cfg.paper_repeats, cfg.paper_warmup, dtype)
                sink.append(r)
                cold = "" if cfg.paper_warmup else ", single cold forward"
                where = "GPU" if device.startswith("cuda") else device
                rows.append(row(f"paper backbones ({where})", f"{PAPER_NAMES.get(name, name)} forward, batch {batch}, {dtype}",
                                r["img_s"], "img/s", f"speed only: random weights{cold}"))
    return rows


def _record(cfg: BenchConfig, results: dict[str, Any], rows: list[dict[str, Any]], device: str, t0: float,
            start_load: list[float] | None) -> dict[str, Any]:
    from .timing import load_average, machine_description

    machine = machine_description(device)
    machine["load_average_start"], machine["load_average_end"] = start_load, load_average()
    return {"schema_version": SCHEMA_VERSION, "mode": cfg.mode,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "config": dataclasses.asdict(cfg), "results": results, "rows": rows,
            "ratios": list(RATIO_MEASUREMENTS), "seconds_total": time.perf_counter() - t0}


def main(quick: bool = False, out: str | Path | None = None, *, paper_backbones_only: bool = False,
         device: str = "cpu", merge_gpu: str | Path | None = None, config: BenchConfig | None = None,
         work_dir: str | Path | None = None, stream: TextIO | None = None) -> int:
    """Run the benchmark, print one table and (full run, or ``out``) write the result files.

    ``paper_backbones_only``: only the paper backbones on ``device`` (batches 1 and 16, float32 and
    bfloat16 on a GPU; files to ``out``, default ``results/bench/gpu`` on a GPU, none on the CPU);
    ``merge_gpu``: add the JSON of such a GPU run to ``out`` (default ``results/bench``) and stop.
    """
    from .timing import load_average

    stream = stream or sys.stdout
    if merge_gpu:
        paths = report.merge_gpu(Path(out or DEFAULT_OUT), Path(merge_gpu))
        print(f"merged {merge_gpu} into {paths['json']} (and {paths['csv'].name}, {paths['png'].name})", file=stream)
        return 0
    cfg = config or (QUICK if quick else FULL)
    if out:
        out = Path(out)
    elif paper_backbones_only:  # never overwrite the full run's files with a partial run
        out = DEFAULT_OUT / "gpu" if device.startswith("cuda") else None
    else:
        out = DEFAULT_OUT if cfg.mode == "full" else None
    start_load = load_average()
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="spg-bench-", dir=work_dir))
    try:
        if paper_backbones_only:
            results: dict[str, Any] = {"paper_backbones": []}
            gpu = device.startswith("cuda")
            if gpu:
                cfg = dataclasses.replace(cfg, paper_repeats=10, paper_warmup=3)
            rows = run_paper_backbones(cfg, device, results["paper_backbones"], (1, 16) if gpu else None,
                                       ("float32", "bfloat16") if gpu else ("float32",))
            cfg = dataclasses.replace(cfg, mode="paper-backbones")
        else:
            results, rows = run_pipeline_bench(cfg, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = _record(cfg, results, rows, device, t0, start_load)
    m = data["machine"]
    share = report.cpu_obtained(data)
    title = (f"spg bench ({cfg.mode}), {m['cpu_model']}, {m['cpus_available']} CPUs, torch {m['torch']} "
             f"({m['torch_threads']} threads), device {device}; load average {m['load_average_start']} -> "
             f"{m['load_average_end']}" + (f"; cores obtained {share:.2f}" if share is not None else "")
             + f"; {data['seconds_total']:.0f} s")
    print(report.format_table(rows, title), file=stream)
    if out is not None:
        paths = report.write_results(data, out, plot=True)
        print(f"results: {', '.join(str(p) for p in paths.values())}", file=stream)
    return 0
