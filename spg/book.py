"""Execute the book's notebooks from one run manifest (``book/manifest.yml``) with papermill.

    python -m spg.book execute                      # the manifest as written (embedded default)
    python -m spg.book execute --set preset=smoke   # override a global parameter (CI uses this)

The manifest lists global parameters (given to every notebook), each notebook with its own extra
parameters, and the folder the executed notebooks are written to; ``jupyter-book build book/``
then renders those executed notebooks without re-running them. A failing notebook stops the run
with papermill's error (the cell and the exception), so a broken chapter never reaches the book.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = REPO / "book" / "manifest.yml"


def load_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a dict, checked for the keys :func:`execute` needs."""
    import yaml

    manifest = yaml.safe_load(Path(path).read_text())
    for key in ("output_dir", "parameters", "notebooks"):
        if key not in manifest:
            raise ValueError(f"{path}: the run manifest needs a top-level {key!r} entry")
    return manifest


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def execute(manifest_path: Path = DEFAULT_MANIFEST, overrides: dict[str, Any] | None = None,
            only: list[str] | None = None, output_dir: Path | None = None) -> list[Path]:
    """Run every notebook of the manifest with papermill; returns the executed notebook paths."""
    import papermill

    manifest_path = Path(manifest_path).resolve()
    manifest = load_manifest(manifest_path)
    base = manifest_path.parent
    out_dir = Path(output_dir) if output_dir else (base / manifest["output_dir"]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {**manifest["parameters"], **(overrides or {})}
    done = []
    for entry in manifest["notebooks"]:
        source = (base / entry["path"]).resolve()
        if only and source.stem not in only:
            continue
        target = out_dir / source.name
        t0 = time.perf_counter()
        print(f"[spg.book] executing {source.relative_to(REPO)} -> {target.relative_to(REPO) if target.is_relative_to(REPO) else target}", flush=True)
        papermill.execute_notebook(
            str(source), str(target), parameters={**params, **entry.get("parameters", {})},
            cwd=str(out_dir), progress_bar=False, kernel_name=manifest.get("kernel", "python3"),
        )
        print(f"[spg.book]   done in {time.perf_counter() - t0:.0f} s", flush=True)
        done.append(target)
    return done


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
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects NAME=VALUE, got {item!r}")
        overrides[name] = _parse_value(value)
    execute(args.manifest, overrides, args.only, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
