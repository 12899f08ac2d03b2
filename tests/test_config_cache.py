"""Typed configs (coercion, unknown fields, presets) and the content-addressed cache."""

import json

import pytest

from spg.cache import artifact_path, atomic_artifact, is_complete, read_key
from spg.config import ConfigError, from_dict, replace, stable_hash, to_dict
from spg.features import ExtractConfig
from spg.pipeline import PRESETS, RunConfig, preset_config
from spg.sae import SAEConfig


def test_replace_coerces_strings_from_cli_and_papermill():
    cfg = replace(SAEConfig(), n_atoms="1024", lr="0.01")
    assert cfg.n_atoms == 1024 and cfg.lr == 0.01
    assert replace(ExtractConfig(), stages="2,3").stages == (2, 3)
    assert replace(ExtractConfig(), weights=None).weights is None
    with pytest.raises(ConfigError, match="n_atom.*valid fields"):
        replace(SAEConfig(), n_atom=3)
    with pytest.raises(ConfigError, match="expects int"):
        replace(SAEConfig(), k="many")


def test_run_config_roundtrips_through_json():
    cfg = preset_config("smoke", sae={"k": 4}, aux=("mvtec:/data:a,b",))
    again = from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert stable_hash(again) == stable_hash(cfg)


def test_presets_differ_and_paper_is_the_spec():
    paper = preset_config("paper")
    assert (paper.sae.n_atoms, paper.sae.k, paper.sae.epochs, paper.sae.batch_images) == (4096, 32, 50, 16)
    assert (paper.guides.lr, paper.guides.epochs, paper.guides.batch_images, paper.guides.ema_decay) == (0.01, 15, 8, 0.999)
    hashes = {stable_hash(preset_config(name)) for name in PRESETS}
    assert len(hashes) == len(PRESETS)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("fast")


def test_cache_key_changes_with_any_parameter(tmp_path):
    a = artifact_path(tmp_path, "sae", {"sae": to_dict(SAEConfig())})
    b = artifact_path(tmp_path, "sae", {"sae": to_dict(SAEConfig(k=31))})
    assert a != b and a == artifact_path(tmp_path, "sae", {"sae": to_dict(SAEConfig())})


def test_atomic_artifact_is_all_or_nothing(tmp_path):
    path = tmp_path / "kind" / "abc"
    with pytest.raises(RuntimeError):
        with atomic_artifact(path, {"k": 1}) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not path.exists() and not list((tmp_path / "kind").iterdir())
    with atomic_artifact(path, {"k": 1}) as tmp:
        (tmp / "full.bin").write_bytes(b"x")
    assert is_complete(path) and read_key(path) == {"k": 1}


def test_save_json_writes_nested_configs_as_json_objects(tmp_path):
    from spg.config import load_json, save_json

    cfg = preset_config("smoke")
    save_json({"base": cfg, "points": [{"sae.k": 4}]}, tmp_path / "sweep.json")
    saved = load_json(tmp_path / "sweep.json")
    assert from_dict(RunConfig, saved["base"]) == cfg  # not a repr string
