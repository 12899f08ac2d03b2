"""Ablation sweeps: run the pipeline over a list of config overrides and tabulate the metrics.

Points are written as ``{"sae.n_atoms": 1024, "sae.k": 16}``; every point goes through the same
cached stages as :func:`spg.pipeline.run`, so points that share a stage (e.g. several pooling
choices over one trained model) share its artifact.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .config import ConfigError, save_json
from .pipeline import RunConfig, evaluate, extract, override, train_guides_stage, train_sae_stage


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """Cartesian product of axes given as ``sae__n_atoms=[...]`` -> points ``{"sae.n_atoms": ...}``."""
    names = [name.replace("__", ".") for name in axes]
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def apply_point(base: RunConfig, point: dict[str, Any]) -> RunConfig:
    """``base`` with the point's ``section.field`` overrides."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in point.items():
        section, dot, name = key.partition(".")
        if not dot:
            raise ConfigError(f"sweep keys look like 'sae.n_atoms', got {key!r}")
        sections.setdefault(section, {})[name] = value
    return override(base, **sections)


def sweep(base: RunConfig, points: list[dict[str, Any]], out: str | Path | None = None, *,
          labels: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per (point, target category incl. ``mean``): the point's label (``labels``, default
    the overrides as text), its values, the metrics and the point's wall seconds (stages found in
    the cache cost ~0)."""
    labels = labels or [", ".join(f"{k}={v}" for k, v in point.items()) for point in points]
    if len(labels) != len(points):
        raise ConfigError(f"{len(labels)} labels for {len(points)} sweep points")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_json({"base": base, "points": points, "labels": labels}, out / "sweep_config.json")
    rows = []
    for label, point in zip(labels, points):
        cfg = apply_point(base, point)
        t0 = time.perf_counter()
        aux, target = extract(cfg, "aux", progress=progress), extract(cfg, "target", progress=progress)
        sae = train_sae_stage(aux, cfg.sae, cfg.cache_dir, progress=progress)
        guides = train_guides_stage(aux, sae, cfg.guides, cfg.cache_dir, progress=progress)
        table = evaluate(target, guides, cfg.eval, cfg.cache_dir, progress=progress).metrics
        seconds = time.perf_counter() - t0
        for category, metrics in table.iterrows():
            rows.append({"point": label, **point, "category": category, **metrics.to_dict(), "seconds": seconds,
                         "sae_explained_variance": sae.stats.get("explained_variance"), "sae_alive": sae.stats.get("n_alive")})
        if out is not None:  # after every point, so a long sweep that is stopped keeps what it measured
            _write_csv(pd.DataFrame(rows), out / "sweep.csv")
    return pd.DataFrame(rows)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def means(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``mean`` rows of a sweep table, indexed by the swept parameters."""
    keys = [c for c in frame.columns if "." in c]
    return frame[frame["category"] == "mean"].drop(columns="category").set_index(keys)
