"""The book end to end: the five notebooks run through ``spg.book`` on the smoke preset, the Jupyter
Book builds from them with warnings as errors, and the committed notebooks are clean and in sync."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES = ["01_features", "02_sae", "03_guides", "04_evaluation", "05_atoms"]
GLOBAL_PARAMETERS = ["preset", "backbone", "weights", "aux", "target", "cache_dir", "figures_dir"]
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"


def _cells(path: Path) -> list:
    import jupytext

    return jupytext.read(path)["cells"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_pair_in_sync(name):
    """``notebooks/<name>.ipynb`` holds exactly the cells of ``notebooks/<name>.py`` (jupytext pairing)."""
    py, ipynb = REPO / "notebooks" / f"{name}.py", REPO / "notebooks" / f"{name}.ipynb"
    assert py.is_file() and ipynb.is_file()
    summary = [lambda c: c["cell_type"], lambda c: c["source"].strip(), lambda c: c["metadata"].get("tags", [])]
    a, b = _cells(py), _cells(ipynb)
    assert [[f(c) for f in summary] for c in a] == [[f(c) for f in summary] for c in b], (
        f"{ipynb.name} differs from {py.name}: run `jupytext --sync notebooks/{name}.py`")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_no_outputs_and_parameters(name):
    nb = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{name}.ipynb carries outputs; clear them (jupytext --sync from the .py file)")
    params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    source = "".join(params[0]["source"])
    for p in GLOBAL_PARAMETERS:
        assert f"\n{p} = " in "\n" + source, f"{name}: global parameter {p!r} missing"


def _build(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(JUPYTER_BOOK), "build", str(site), "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=600)


def test_book_from_smoke_notebooks(tmp_path, monkeypatch):
    """Execute all notebooks (smoke preset) into a copy of book/, build it with -W, check pages and figures."""
    from spg import book
    from spg.studies import STUDIES

    monkeypatch.setenv("SPG_CACHE_DIR", str(tmp_path / "cache"))
    site = tmp_path / "book"
    shutil.copytree(REPO / "book", site, ignore=shutil.ignore_patterns("_build", "chapters"))
    shutil.copytree(REPO / "results", tmp_path / "results")  # pages include ../results/... files
    done = book.execute(REPO / "book" / "manifest.yml", {"preset": "smoke"}, output_dir=site / "chapters")
    assert [p.stem for p in done] == NAMES
    for path in done:
        assert book.notebook_errors(path) == []
        nb = json.loads(path.read_text())
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and "hide-input" in injected[0]["metadata"]["tags"]
        assert "preset = \"smoke\"" in "".join(injected[0]["source"])
        streams = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "stream"]
        assert all("\r" not in "".join(o["text"]) for o in streams), "progress output not collapsed"

    figures = site / "chapters" / "figures"
    assert (figures / "spg_overview.png").is_file()
    for name in ("01_token_pca", "02_sae_training", "03_guide_mass", "04_curves", "04_examples", "05_gallery"):
        assert (figures / f"{name}.png").stat().st_size > 1000 and (figures / f"{name}.csv").is_file(), name
    assert (figures / "04_metrics.csv").read_text().startswith("category,")

    result = _build(site)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = site / "_build" / "html"
    for page in ["intro", "results", "reproduce", *(f"chapters/{n}" for n in NAMES)]:
        assert (html / f"{page}.html").is_file(), page
    for name in NAMES:
        text = (html / "chapters" / f"{name}.html").read_text()
        assert text.count("<img") >= 3, f"{name}: figures missing from the page"
    results = (html / "results.html").read_text()
    assert "gravel" in results and "AUPRO" in results
    # the recorded real-data and ablation pages render from the committed results/ (no data needed)
    real = (html / "real_data.html").read_text()
    assert "metal_plate" in real and "random_dictionary" in real and "magnetic_tile/blowhole" in real
    for page in ("real_atoms", "real/atoms_a", "ablations/index", *(f"ablations/{s}" for s in sorted(STUDIES))):
        text = (html / f"{page}.html").read_text()
        assert "<img" in text or page == "ablations/index", page
    assert len(list((html / "_images").glob("*.png"))) >= 25

    # A chapter with an error output must fail the build.
    broken = site / "chapters" / "05_atoms.ipynb"
    nb = json.loads(broken.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"].append({"output_type": "error", "ename": "RuntimeError", "evalue": "boom", "traceback": []})
    broken.write_text(json.dumps(nb))
    failed = _build(site)
    assert failed.returncode != 0 and "RuntimeError: boom" in failed.stdout + failed.stderr


def test_missing_weights_fail_fast(tmp_path, monkeypatch):
    """``backbone=openclip`` without weights stops at the first cell that needs them, with the library's message."""
    from papermill.exceptions import PapermillExecutionError

    from spg import book

    monkeypatch.setenv("SPG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPG_WEIGHTS_OPENCLIP", raising=False)
    with pytest.raises(PapermillExecutionError) as err:
        book.execute(REPO / "book" / "manifest.yml", {"preset": "smoke", "backbone": "openclip"},
                     only=["03_guides"], output_dir=tmp_path / "out")
    assert err.value.ename == "WeightsNotFoundError"
    assert "SPG_WEIGHTS_OPENCLIP" in err.value.evalue
    assert book.notebook_errors(tmp_path / "out" / "03_guides.ipynb")
