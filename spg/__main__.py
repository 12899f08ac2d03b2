"""Command line: ``python -m spg run`` (end to end), ``python -m spg compare`` (SPG beside its
baselines), ``python -m spg sweep`` / ``study`` (ablations) and ``python -m spg bench`` (performance).

With no arguments, ``run`` executes the embedded default: synthetic auxiliary categories ->
synthetic target categories, the offline ``efficientnet_lite2`` backbone, the ``default`` preset.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import stable_hash


def _parse_set(items: list[str]) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set expects SECTION.FIELD=VALUE (e.g. sae.n_atoms=1024), got {item!r}")
        sections.setdefault(section, {})[name] = value
    return sections


def build_config(args: argparse.Namespace):
    """The RunConfig described by the command-line arguments."""
    from .pipeline import RunConfig, preset_config

    sections = _parse_set(args.set)
    for name in sections:
        if name not in {"extract", "sae", "guides", "eval", "synthetic"}:
            raise SystemExit(f"--set section {name!r} unknown; use extract, sae, guides, eval or synthetic")
    extract = sections.setdefault("extract", {})
    if args.backbone:
        extract["backbone"] = args.backbone
    if args.weights:
        extract["weights"] = args.weights
    if args.seed is not None:
        for name in ("sae", "guides", "synthetic"):
            sections.setdefault(name, {})["seed"] = args.seed
    top = {"aux": tuple(args.aux or RunConfig.aux), "target": tuple(args.target or RunConfig.target)}
    if args.cache_dir:
        top["cache_dir"] = args.cache_dir
    if args.aux_per_category is not None:
        top["aux_images_per_category"] = args.aux_per_category
    return preset_config(args.preset, **sections, **top)


def _out_dir(args: argparse.Namespace, name: str, key) -> Path:
    """``--out``, or ``runs/<name>-<hash of key>`` (the same settings give the same folder)."""
    return Path(args.out) if args.out else Path("runs") / f"{name}-{stable_hash(key, 8)}"


def _wall_time(t0: float, where: str) -> None:
    print(f"\nwall time {time.perf_counter() - t0:.1f} s; {where}")


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run

    cfg = build_config(args)
    out = _out_dir(args, f"{cfg.preset}-{cfg.extract.backbone}", cfg)
    t0 = time.perf_counter()
    result = run(cfg, out, save_maps=args.save_maps, progress=not args.quiet)
    table = result.evaluation.metrics
    print(f"\nSPG zero-shot results ({cfg.eval.image_score} image score; AUPRO "
          f"{'exact' if cfg.eval.aupro_thresholds is None else f'{cfg.eval.aupro_thresholds}-threshold'}):")
    print((table * 100).round(1).to_string())
    _wall_time(t0, f"results in {out.resolve()}")
    print(f"  metrics: {out / 'metrics.json'}, {out / 'metrics.csv'}; config: {out / 'run_config.json'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .baselines import compare

    cfg = build_config(args)
    out = _out_dir(args, f"compare-{cfg.preset}-{cfg.extract.backbone}", cfg)
    t0 = time.perf_counter()
    result = compare(cfg, out, progress=not args.quiet)
    print("\nSPG and baselines, mean over target categories (same tokens, same protocol):")
    print((result.means * 100).round(1).to_string())
    _wall_time(t0, f"per-category table in {(out / 'comparison.csv').resolve()}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweeps import grid, means, sweep

    cfg = build_config(args)
    axes = {}
    for item in args.grid:
        key, sep, values = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--grid expects SECTION.FIELD=V1,V2,... (e.g. sae.k=8,16,32), got {item!r}")
        axes[key.replace(".", "__")] = values.split(",")
    out = _out_dir(args, f"sweep-{cfg.preset}", [cfg, args.grid])
    t0 = time.perf_counter()
    frame = sweep(cfg, grid(**axes), out, progress=not args.quiet)
    print(means(frame).round(3).to_string())
    _wall_time(t0, f"table in {(out / 'sweep.csv').resolve()}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .studies import run_study

    cfg = build_config(args)
    out = _out_dir(args, f"study-{args.study}", cfg)
    t0 = time.perf_counter()
    table = run_study(args.study, cfg, out, progress=not args.quiet)
    print(table.drop(columns=[c for c in table.columns if "." in c]).to_string())
    _wall_time(t0, f"tables and plot in {out.resolve()}")
    return 0


def cmd_spread(args: argparse.Namespace) -> int:
    from .studies import write_seed_spread

    print(write_seed_spread(args.study, args.folders, args.out).to_string())
    print(f"\nspread.csv, spread_summary.csv and spread.png in {Path(args.out).resolve()}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .baselines import summarise

    table = summarise(args.folders, args.out)
    print(table.to_string())
    print(f"\nsplits.csv, splits.png and runtime.csv in {Path(args.out).resolve()}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(quick=args.quick, out=args.out, paper_backbones_only=args.paper_backbones_only,
                      device=args.device, merge_gpu=args.merge_gpu, work_dir=args.work_dir)


def _add_run_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--preset", default="default", help="paper | default | smoke (default: default)")
    r.add_argument("--aux", nargs="+", metavar="SPEC",
                   help="auxiliary data: synthetic | mvtec:ROOT[:cat1,cat2] | visa:ROOT[:cats] (default synthetic)")
    r.add_argument("--target", nargs="+", metavar="SPEC", help="target data, same forms (default synthetic)")
    r.add_argument("--backbone", help="efficientnet_lite2 (default, offline) | efficientnet_lite0 | dinov3 | dinov2 | openclip")
    r.add_argument("--weights", help="local weights file for dinov3 / dinov2 / openclip")
    r.add_argument("--out", help="results folder (default runs/<preset>-<backbone>-<config hash>)")
    r.add_argument("--cache-dir", help="artifact cache (default $SPG_CACHE_DIR or ~/.cache/spg)")
    r.add_argument("--aux-per-category", type=int, metavar="N",
                   help="train on a seeded sample of at most N auxiliary images per category (default: all)")
    r.add_argument("--seed", type=int, help="seed of the synthetic data, the SAE and the guides")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set sae.n_atoms=1024 --set eval.image_score=lse")
    r.add_argument("--quiet", action="store_true", help="no progress bars")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    r = sub.add_parser("run", help="extract -> SAE -> guides -> zero-shot evaluation")
    _add_run_arguments(r)
    r.add_argument("--save-maps", action="store_true", help="also write one 16-bit PNG anomaly map per target image")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("compare", help="SPG, dense guides, random dictionary and training-free side by side")
    _add_run_arguments(c)
    c.set_defaults(func=cmd_compare)
    w = sub.add_parser("sweep", help="an ablation: the pipeline over a grid of config values")
    _add_run_arguments(w)
    w.add_argument("--grid", action="append", required=True, metavar="SECTION.FIELD=V1,V2",
                   help="one swept axis, e.g. --grid sae.n_atoms=512,1024 --grid sae.k=8,16 (product of axes)")
    w.set_defaults(func=cmd_sweep)
    from .studies import STUDIES

    st = sub.add_parser("study", help="one of the book's ablation studies: its sweep, table and plot")
    st.add_argument("study", choices=sorted(STUDIES), help="which study")
    _add_run_arguments(st)
    st.set_defaults(func=cmd_study)
    sp = sub.add_parser("spread", help="the spread over seeds of a study run once per seed (--seed)")
    sp.add_argument("study", choices=sorted(STUDIES), help="which study")
    sp.add_argument("folders", nargs="+", help="its output folders, one per seed")
    sp.add_argument("--out", required=True, help="where to write spread.csv, spread_summary.csv, spread.png")
    sp.set_defaults(func=cmd_spread)
    sm = sub.add_parser("summary", help="one table and figure over several `compare` result folders")
    sm.add_argument("folders", nargs="+", help="folders written by `python -m spg compare --out`")
    sm.add_argument("--out", required=True, help="where to write splits.csv, splits.png, runtime.csv")
    sm.set_defaults(func=cmd_summary)
    b = sub.add_parser("bench", help="measure each stage against its limit")
    b.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    b.add_argument("--out", default=None,
                   help="where to write bench.json/csv/png (default: results/bench for the full run; --quick: none)")
    b.add_argument("--paper-backbones-only", action="store_true",
                   help="only the paper backbones' forward throughput (random weights, speed only) on --device")
    b.add_argument("--device", default="cpu", help="device of --paper-backbones-only, e.g. cuda (default cpu)")
    b.add_argument("--merge-gpu", metavar="JSON",
                   help="add the bench.json of a --paper-backbones-only --device cuda run to --out (default results/bench)")
    b.add_argument("--work-dir", default=None, help="parent folder of the temporary files (default: system temp)")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    args = parser.parse_args(argv or ["run"])
    from .errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
