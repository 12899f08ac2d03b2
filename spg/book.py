"""Execute the book's notebooks from one run manifest (``book/manifest.yml``) with papermill.

    python -m spg.book execute                      # the manifest as written (embedded default)
    python -m spg.book execute --set preset=smoke   # override a global parameter (CI uses this)
    python -m spg.book overview                     # only redraw the "SPG in one figure" PNG

The manifest lists global parameters (given to every notebook), each notebook with its own extra
parameters, and the folder the executed notebooks are written to; ``jupyter-book build book/``
then renders those executed notebooks without re-running them. A failing notebook stops the run
with papermill's error (the cell and the exception), so a broken chapter never reaches the book.

Executed notebooks are post-processed for the book: the parameters cell and papermill's injected
parameters cell are tagged ``hide-input`` (they render as one collapsed line), and progress-bar
output is reduced to its final state, as a notebook front end shows it.

This module is also a Sphinx extension (``extra_extensions: [spg.book]`` in ``book/_config.yml``):
it warns about any notebook that contains an error output or was marked failed by papermill, so
``jupyter-book build -W`` refuses to publish a failed chapter.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = REPO / "book" / "manifest.yml"
HIDDEN_TAGS = {"parameters": "hide-input", "injected-parameters": "hide-input"}


def load_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a dict, checked for the keys :func:`execute` needs."""
    import yaml

    manifest = yaml.safe_load(Path(path).read_text())
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: the run manifest must be a YAML mapping")
    for key in ("output_dir", "parameters", "notebooks"):
        if key not in manifest:
            raise ValueError(f"{path}: the run manifest needs a top-level {key!r} entry")
    for entry in manifest["notebooks"]:
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"{path}: every entry of 'notebooks' needs a 'path' (got {entry!r})")
    return manifest


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _final_line_state(text: str) -> str:
    """What a terminal shows: for each line, only the text after its last carriage return."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def _merge_streams(outputs: list[dict]) -> list[dict]:
    """Join consecutive outputs of the same stream, then keep each line's final carriage-return state."""
    merged: list[dict] = []
    for out in outputs:
        if out.get("output_type") == "stream":
            text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
            if merged and merged[-1].get("output_type") == "stream" and merged[-1]["name"] == out["name"]:
                merged[-1]["text"] += text
                continue
            out = {**out, "text": text}
        merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream":
            out["text"] = _final_line_state(out["text"])
    return merged


def postprocess(path: Path) -> None:
    """Tag parameter cells ``hide-input`` and collapse carriage-return progress output, in place."""
    nb = json.loads(Path(path).read_text())
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        for marker, extra in HIDDEN_TAGS.items():
            if marker in tags and extra not in tags:
                tags.append(extra)
        if "outputs" in cell:
            cell["outputs"] = _merge_streams(cell["outputs"])
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def notebook_errors(path: Path) -> list[str]:
    """Descriptions of the error outputs of a notebook (empty when it ran cleanly)."""
    nb = json.loads(Path(path).read_text())
    found = []
    if nb.get("metadata", {}).get("papermill", {}).get("exception"):
        found.append("papermill marked the notebook as failed")
    for i, cell in enumerate(nb.get("cells", []), 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return found


def write_overview(folder: Path) -> Path:
    """Draw the "SPG in one figure" diagram to ``folder/spg_overview.png`` (with its box list as CSV)."""
    import pandas as pd

    from . import viz

    boxes = pd.DataFrame({"box": ["image", "frozen backbone", "tokens", "cosine + softmax", "anomaly map",
                                  "image score", "auxiliary data", "stage (i): TopK SAE", "dictionary D",
                                  "stage (ii): sparse-projected guides"]})
    return viz.save_figure(viz.method_overview(), boxes, "spg_overview", folder, dpi=150)


def execute(manifest_path: Path = DEFAULT_MANIFEST, overrides: dict[str, Any] | None = None,
            only: list[str] | None = None, output_dir: Path | None = None) -> list[Path]:
    """Run every notebook of the manifest with papermill; returns the executed notebook paths.

    Executed notebooks (and, through the notebooks' ``figures_dir``, their figures) go to
    ``output_dir`` (default: the manifest's ``output_dir``, relative to the manifest); the
    method overview figure is written to ``<output_dir>/<figures_dir>/spg_overview.png``.
    """
    import papermill

    manifest_path = Path(manifest_path).resolve()
    manifest = load_manifest(manifest_path)
    base = manifest_path.parent
    out_dir = Path(output_dir).resolve() if output_dir else (base / manifest["output_dir"]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {**manifest["parameters"], **(overrides or {})}
    figures = out_dir / (params.get("figures_dir") or "figures")
    print(f"[spg.book] method overview -> {_show(write_overview(figures))}", flush=True)
    done, t_start = [], time.perf_counter()
    for entry in manifest["notebooks"]:
        source = (base / entry["path"]).resolve()
        if only and source.stem not in only:
            continue
        target = out_dir / source.name
        t0 = time.perf_counter()
        print(f"[spg.book] executing {_show(source)} -> {_show(target)}", flush=True)
        papermill.execute_notebook(
            str(source), str(target), parameters={**params, **entry.get("parameters", {})},
            cwd=str(out_dir), progress_bar=False, kernel_name=manifest.get("kernel", "python3"),
        )
        postprocess(target)
        print(f"[spg.book]   done in {time.perf_counter() - t0:.0f} s", flush=True)
        done.append(target)
    print(f"[spg.book] {len(done)} notebooks in {time.perf_counter() - t_start:.0f} s", flush=True)
    return done


def _show(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ------------------------------------------------------------------------------- Sphinx extension


def _check_source(app, docname: str, source: list[str]) -> None:
    """``source-read`` hook: warn when a notebook page carries an error output."""
    from sphinx.util import logging

    path = Path(app.env.doc2path(docname))
    if path.suffix != ".ipynb":
        return
    for problem in notebook_errors(path):
        logging.getLogger(__name__).warning(
            f"{path.name}: {problem}; fix the notebook and rerun `python -m spg.book execute`",
            location=docname, type="spg", subtype="notebook-error")


def setup(app) -> dict[str, Any]:
    """Register the failed-notebook check with Sphinx."""
    app.connect("source-read", _check_source)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spg.book", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="run the manifest's notebooks with papermill")
    ex.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ex.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a global parameter, e.g. --set preset=smoke")
    ex.add_argument("--only", nargs="+", help="notebook stems to run (default: all)")
    ex.add_argument("--output-dir", type=Path, help="where executed notebooks go (default: the manifest's)")
    ov = sub.add_parser("overview", help="only redraw the method overview figure")
    ov.add_argument("--folder", type=Path, default=REPO / "book" / "chapters" / "figures")
    args = parser.parse_args(argv)
    if args.command == "overview":
        print(write_overview(args.folder))
        return 0
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name):
            parser.error(f"--set expects NAME=VALUE, got {item!r}")
        overrides[name] = _parse_value(value)
    execute(args.manifest, overrides, args.only, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
