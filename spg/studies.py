"""The ablation studies of the book: named sweeps with their points, their plot and their table.

Each :class:`Study` is a list of labelled points (config overrides, as in :mod:`spg.sweeps`) and
the axes to plot them on. :func:`run_study` sweeps a base config over the points and writes
``sweep.csv`` (every point, every target category), ``means.csv`` (the category means, one row per
point, metrics in %), ``table.csv`` (what the book shows), ``plot.png`` + ``plot.csv`` and
``study.json`` (the base config, the points and the wall time). :func:`write_seed_spread`
summarises one study run with several seeds. The command line is ``python -m spg study NAME ...``
and ``python -m spg spread NAME FOLDERS... --out DIR``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .config import ConfigError, save_json
from .pipeline import RunConfig
from .sweeps import grid, sweep

GRID_STAGES = {"2,3,4,5 (default)": (2, 3, 4, 5), "2,3": (2, 3), "3,4": (3, 4), "4,5": (4, 5)}
"""Token-grid choices of EfficientNet-Lite: which stages (strides 8/16/16/32) are concatenated."""


@dataclass(frozen=True)
class Study:
    """One ablation: labelled points and how to plot them."""

    title: str
    """What is varied, as a figure title."""
    points: tuple[tuple[str, dict[str, Any]], ...]
    """``(label, {"section.field": value})`` per point, in plotting order."""
    x: str
    """The plot's x axis: a swept key (numeric axis) or ``"point"`` (the labels, categorical)."""
    hue: str | None = None
    """A second swept key drawn as one line per value, or None."""
    metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc", "aupro")
    """The metrics drawn, one panel each (the tables hold all six)."""


def _sae_size() -> Study:
    points = grid(sae__n_atoms=[512, 1024, 2048, 4096], sae__k=[8, 16, 32, 64])
    return Study("SAE dictionary size C and sparsity k",
                 tuple((f"C={p['sae.n_atoms']} k={p['sae.k']}", p) for p in points), "sae.n_atoms", "sae.k")


def _guide_sparsity() -> Study:
    topn = [(f"top-{n}", {"guides.sparsity": "topn", "guides.top_n": n}) for n in (8, 32, 128, 512, 1024)]
    return Study("Guide sparsity: L1 penalty or top-n coefficients per guide",
                 (("L1", {"guides.sparsity": "l1"}), *topn), "point")


def _pooling() -> Study:
    lse = [(f"lse T={t:g}", {"eval.image_score": "lse", "eval.lse_temperature": t}) for t in (0.01, 0.05, 0.2, 1.0)]
    others = [(name, {"eval.image_score": name}) for name in ("top10_mean", "global", "hybrid")]
    return Study("Image-score pooling (pixel metrics do not depend on it)",
                 (("max", {"eval.image_score": "max"}), *lse, *others), "point",
                 metrics=("image_auroc", "image_ap", "image_f1max"))


def _token_grid() -> Study:
    return Study("Token grid: which backbone stages form the tokens",
                 tuple((label, {"extract.stages": stages}) for label, stages in GRID_STAGES.items()), "point")


def _seeds() -> Study:
    return Study("Seed of the SAE and the guides (the noise floor of the other studies)",
                 tuple((f"seed {s}", {"sae.seed": s, "guides.seed": s}) for s in (0, 1, 2, 3, 4)), "point")


STUDIES: dict[str, Study] = {
    "sae_size": _sae_size(), "guide_sparsity": _guide_sparsity(), "pooling": _pooling(), "token_grid": _token_grid(),
    "seeds": _seeds(),
}
"""The book's studies by name: four ablations and the seed study that measures their noise."""


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; choose one of {sorted(STUDIES)}")
    return STUDIES[name]


def study_means(frame: pd.DataFrame) -> pd.DataFrame:
    """The category-mean row of every point, metrics in % (one decimal), in point order."""
    from .metrics import METRIC_NAMES

    rows = frame[frame["category"] == "mean"].drop(columns="category").reset_index(drop=True)
    rows[list(METRIC_NAMES)] = (rows[list(METRIC_NAMES)] * 100).round(1)
    return rows.set_index("point")


def display_table(means: pd.DataFrame) -> pd.DataFrame:
    """The book's table of a study: the six metrics (%) under short names, the SAE's explained
    variance and live atoms, and the point's wall seconds (0 when all its stages were cached)."""
    from .analysis.results import SHORT_NAMES
    from .metrics import METRIC_NAMES

    table = means[list(METRIC_NAMES)].rename(columns=SHORT_NAMES)
    return table.assign(**{"SAE expl. var.": means["sae_explained_variance"].round(3),
                           "live atoms": means["sae_alive"], "seconds": means["seconds"].round(0).astype(int)})


def plot_study(study: Study, means: pd.DataFrame):
    """The study's figure: one panel per metric of ``study.metrics`` over its points."""
    from . import viz

    return viz.sweep_panels(means.reset_index(), study.x, list(study.metrics), hue=study.hue, title=study.title)


def run_study(name: str, base: RunConfig, out: str | Path, *, progress: bool = True) -> pd.DataFrame:
    """Sweep ``base`` over the study's points and write its files to ``out``; returns the means table."""
    from .viz import save_figure

    study = get_study(name)
    out = Path(out)
    t0 = time.perf_counter()
    frame = sweep(base, [p for _, p in study.points], out, labels=[label for label, _ in study.points], progress=progress)
    seconds = time.perf_counter() - t0
    table = study_means(frame)
    table.to_csv(out / "means.csv")
    display_table(table).to_csv(out / "table.csv")
    save_figure(plot_study(study, table), table.reset_index(), "plot", out)
    save_json({"study": name, "title": study.title, "base": base, "points": dict(study.points),
               "wall_seconds": round(seconds, 1)}, out / "study.json")
    return table


def across_seeds(folders: dict[str, str | Path]) -> pd.DataFrame:
    """The same study run with several seeds (``folders``: seed label -> study folder): one row per
    (point, seed) with the metrics in %, read from each folder's ``means.csv``."""
    parts = [pd.read_csv(Path(folder) / "means.csv").assign(seed=label) for label, folder in folders.items()]
    frame = pd.concat(parts, ignore_index=True)
    return frame[["point", "seed", *[c for c in frame.columns if c not in ("point", "seed")]]]


def seed_summary(frame: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Per point (in the order first seen): mean, standard deviation, min and max over seeds of each metric."""
    from .analysis.results import SHORT_NAMES

    order = list(dict.fromkeys(frame["point"]))
    stats = frame.groupby("point", sort=False)[list(metrics)].agg(["mean", "std", "min", "max"]).loc[order].round(1)
    stats.columns = [f"{SHORT_NAMES.get(m, m)} {s}" for m, s in stats.columns]
    return stats.assign(seeds=frame.groupby("point", sort=False).size().loc[order])


def write_seed_spread(name: str, folders: list[str | Path], out: str | Path) -> pd.DataFrame:
    """The spread over seeds of a study run once per seed (``python -m spg study NAME --seed S``):
    ``spread.csv`` (every point and seed), ``spread_summary.csv`` (:func:`seed_summary` of the
    study's plotted metrics) and ``spread.png`` + ``.csv``; returns the summary. Each folder's seed
    is read from its ``study.json``."""
    import json

    from .viz import save_figure, seed_spread

    study, out = get_study(name), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = {}
    for folder in map(Path, folders):
        info = json.loads((folder / "study.json").read_text())
        if info["study"] != name:
            raise ConfigError(f"{folder} holds study {info['study']!r}, not {name!r}")
        labels[f"seed {info['base']['sae']['seed']}"] = folder
    frame = across_seeds(labels)
    frame.to_csv(out / "spread.csv", index=False)
    summary = seed_summary(frame, study.metrics)
    summary.to_csv(out / "spread_summary.csv")
    save_figure(seed_spread(frame, list(study.metrics), title=f"{study.title}: {len(labels)} seeds"), frame, "spread", out)
    return summary

