"""Glue for the papermill notebooks in ``notebooks/``: parameters -> RunConfig, and showing + saving figures.

Every notebook starts with the same global parameters (``preset``, ``backbone``, ``weights``,
``aux``, ``target``, ``cache_dir``, ``figures_dir``, ``overrides``) followed by the fields of its own
stage config; ``None`` means "the preset's value". :func:`make_config` turns them into the same
:class:`~spg.pipeline.RunConfig` the command line builds, so notebooks and ``python -m spg run``
share every cached artifact.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

with warnings.catch_warnings():  # without ipywidgets, tqdm.auto warns once in a kernel; text bars are fine
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401

from .config import ConfigError, to_dict  # noqa: E402
from .pipeline import RunConfig, aupro_definition, override, preset_config  # noqa: E402

SECTIONS = ("extract", "sae", "guides", "eval", "synthetic")


def specs(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Dataset specs from a parameter: several specs separated by spaces (or already a list)."""
    items = text.split() if isinstance(text, str) else list(text)
    if not items:
        raise ConfigError("empty dataset parameter; give at least one spec, e.g. 'synthetic'")
    return tuple(items)


def _nested(overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"sae.k": 16}`` or ``{"sae": {"k": 16}}`` -> ``{"sae": {"k": 16}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (overrides or {}).items():
        section, dot, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"override {key!r}: section must be one of {SECTIONS}")
        if dot:
            out.setdefault(section, {})[name] = value
        elif isinstance(value, dict):
            out.setdefault(section, {}).update(value)
        else:
            raise ConfigError(f"override {key!r} needs a field: write '{key}.FIELD' or give a dict")
    return out


def make_config(preset: str = "default", backbone: str | None = None, weights: str | None = None,
                aux: str = "synthetic", target: str = "synthetic", cache_dir: str | None = None,
                overrides: dict[str, Any] | None = None, **sections: dict[str, Any]) -> RunConfig:
    """The run config of a notebook's parameters.

    ``sections`` maps a config section to this notebook's stage parameters, e.g.
    ``sae=dict(n_atoms=n_atoms, k=k)``; entries that are ``None`` keep the preset's value.
    ``overrides`` (``{"sae.n_atoms": 512}``) sets any field of any stage and is meant for the run
    manifest's global parameters, so that every notebook sees the same upstream artifacts; a
    notebook's own stage parameters take precedence over it.
    """
    changes = _nested(overrides)
    for name, values in sections.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown config section {name!r}; use one of {SECTIONS}")
        changes.setdefault(name, {}).update({k: v for k, v in values.items() if v is not None})
    extract = changes.setdefault("extract", {})
    if backbone is not None:
        extract["backbone"] = backbone
    if weights is not None:
        extract["weights"] = weights
    cfg = preset_config(preset, **{k: v for k, v in changes.items() if v})
    return override(cfg, aux=specs(aux), target=specs(target), cache_dir=cache_dir)


def settings(cfg: RunConfig, *sections: str) -> pd.DataFrame:
    """The fields of ``sections`` with their values and whether they differ from the preset's."""
    base = preset_config(cfg.preset)
    rows = []
    for section in sections:
        now, ref = to_dict(getattr(cfg, section)), to_dict(getattr(base, section))
        rows += [{"setting": f"{section}.{k}", "value": str(v), "changed from preset": "yes" if v != ref[k] else ""}
                 for k, v in now.items()]
    rows += [{"setting": "aux", "value": " ".join(cfg.aux), "changed from preset": ""},
             {"setting": "target", "value": " ".join(cfg.target), "changed from preset": ""}]
    return pd.DataFrame(rows).set_index("setting").rename_axis(None)


def aupro_note(cfg: RunConfig) -> str:
    """One sentence saying which AUPRO definition the evaluation used."""
    return f"**AUPRO definition used here:** {aupro_definition(cfg.eval)}."


def _display(obj: Any) -> None:
    try:
        from IPython.display import display
    except ImportError:  # plain Python: nothing to show
        return
    display(obj)


def show_figure(fig, data: pd.DataFrame, name: str, folder: str | Path | None) -> None:
    """Display ``fig`` as PNG and, when ``folder`` is set, save ``<name>.png`` and ``<name>.csv`` there."""
    from IPython.display import Image

    from .viz import figure_png, save_figure

    if folder:
        _display(Image(filename=str(save_figure(fig, data, name, folder))))
    else:
        _display(Image(data=figure_png(fig)))


def show_table(table: pd.DataFrame, name: str | None = None, folder: str | Path | None = None) -> None:
    """Display a table and, with ``name`` and ``folder``, save it as ``<name>.csv``."""
    if name and folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(folder) / f"{name}.csv", index=not isinstance(table.index, pd.RangeIndex))
    _display(table)


def markdown(text: str) -> None:
    """Display Markdown text computed from the run (rendered as Markdown by the book)."""
    from IPython.display import Markdown

    _display(Markdown(text))
