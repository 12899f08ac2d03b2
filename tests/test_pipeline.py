"""End to end: the smoke preset on synthetic data through the pipeline and the command line."""

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spg.__main__ import main
from spg.config import ConfigError
from spg.metrics import METRIC_NAMES
from spg.pipeline import extract, preset_config, run, train_sae_stage

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def smoke_run(smoke_cache, tmp_path_factory):
    cfg = preset_config("smoke", cache_dir=str(smoke_cache))
    out = tmp_path_factory.mktemp("smoke_run")
    t0 = time.perf_counter()
    result = run(cfg, out, save_maps=True, progress=False)
    return result, out, time.perf_counter() - t0


def test_smoke_run_writes_metrics_configs_and_maps(smoke_run):
    result, out, seconds = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    targets = result.evaluation.metrics.index.drop("mean").tolist()
    assert set(metrics["per_category"]) == set(targets) == set(metrics["target_categories"])
    assert not set(metrics["aux_categories"]) & set(targets)
    for cat, values in metrics["per_category"].items():
        assert list(values) == list(METRIC_NAMES)
        assert all(v is None or 0 <= v <= 1 for v in values.values()), (cat, values)
    table = pd.read_csv(out / "metrics.csv", index_col=0)
    assert table.loc["mean", "image_auroc"] == pytest.approx(np.nanmean(table.drop("mean")["image_auroc"]))
    assert (out / "run_config.json").is_file() and (out / "scores.csv").is_file()
    scores = pd.read_csv(out / "scores.csv")
    pngs = sorted((out / "maps").rglob("*.png"))
    assert len(pngs) == len(scores)
    first = np.asarray(Image.open(pngs[0]))
    assert first.dtype == np.uint16 and first.shape == (448, 448)
    assert seconds < 180


def test_rerun_reuses_cache_and_reproduces(smoke_run, tmp_path):
    result, out, first_seconds = smoke_run
    t0 = time.perf_counter()
    again = run(result.config, tmp_path, progress=False)
    assert time.perf_counter() - t0 < max(10.0, first_seconds / 3)
    assert again.sae.folder == result.sae.folder and again.guides.folder == result.guides.folder
    pd.testing.assert_frame_equal(again.evaluation.metrics, result.evaluation.metrics)


def test_changed_parameter_never_reads_stale_artifacts(smoke_run):
    result, _, _ = smoke_run
    cfg = preset_config("smoke", cache_dir=result.config.cache_dir, sae={"k": 4})
    aux = extract(cfg, "aux", progress=False)
    sae = train_sae_stage(aux, cfg.sae, cfg.cache_dir, progress=False)
    assert sae.folder != result.sae.folder and sae.sae.k == 4


def test_same_seed_same_results_from_scratch(smoke_run, tmp_path):
    result, _, _ = smoke_run
    cfg = preset_config("smoke", cache_dir=str(tmp_path / "fresh_cache"))
    fresh = run(cfg, tmp_path / "out", progress=False)
    pd.testing.assert_frame_equal(fresh.evaluation.metrics, result.evaluation.metrics)


def test_overlapping_categories_are_refused(smoke_cache, tmp_path):
    cfg = preset_config("smoke", cache_dir=str(smoke_cache), target=("synthetic:brick",))
    with pytest.raises(ConfigError, match="brick.*disjoint"):
        run(cfg, tmp_path, progress=False)


def test_cli_runs_smoke_and_prints_where_results_are(smoke_cache, tmp_path, capsys):
    code = main(["run", "--preset", "smoke", "--cache-dir", str(smoke_cache), "--out", str(tmp_path / "cli"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "image_auroc" in printed and str((tmp_path / "cli").resolve()) in printed
    assert (tmp_path / "cli" / "metrics.json").is_file()


def test_cli_set_overrides_and_rejects_unknown_fields(smoke_cache, tmp_path, capsys):
    code = main(["run", "--preset", "smoke", "--cache-dir", str(smoke_cache), "--out", str(tmp_path),
                 "--quiet", "--set", "sae.n_atom=3"])
    assert code == 2
    assert "n_atom" in capsys.readouterr().err


def test_cli_paper_backbone_without_weights_fails_fast_with_instructions(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "spg", "run", "--backbone", "openclip", "--preset", "smoke",
         "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "ViT-L-14-336" in proc.stderr and "SPG_WEIGHTS_OPENCLIP" in proc.stderr
    assert time.perf_counter() - t0 < 60


def test_sampled_aux_trains_on_the_sample_and_keeps_the_target_whole(smoke_cache):
    from spg.__main__ import build_config, make_parser

    args = make_parser().parse_args(["study", "pooling", "--preset", "smoke", "--aux-per-category", "2",
                                     "--cache-dir", str(smoke_cache)])
    cfg = build_config(args)
    assert cfg.aux_images_per_category == 2
    aux, target = extract(cfg, "aux", progress=False), extract(cfg, "target", progress=False)
    whole = extract(preset_config("smoke", cache_dir=str(smoke_cache)), "aux", progress=False)
    assert len(aux) == 2 * len(aux.category_names()) < len(whole)
    assert set(aux.labels.tolist()) == {0, 1}
    assert len(target) == len(extract(preset_config("smoke", cache_dir=str(smoke_cache)), "target", progress=False))
    assert set(aux.paths) < set(whole.paths)
    with pytest.raises(ConfigError, match="aux-per-category"):
        preset_config("smoke", aux_images_per_category=1)
