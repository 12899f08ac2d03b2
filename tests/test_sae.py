"""The TopK SAE of SPG_METHOD.md §3: architecture, sparse decode, AuxK, dead latents, persistence."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spg.sae import SAEConfig, SAETrainer, TopKSAE, firing_counts, load_sae, reconstruction_stats, save_sae, train_sae


def sparse_data(n=4096, d=32, n_true=64, k=4, seed=0):
    """Tokens that are exact non-negative sparse combinations of a hidden dictionary."""
    g = torch.Generator().manual_seed(seed)
    true_atoms = F.normalize(torch.randn(n_true, d, generator=g), dim=1)
    idx = torch.stack([torch.randperm(n_true, generator=g)[:k] for _ in range(n)])
    vals = torch.rand(n, k, generator=g) + 0.5
    return torch.zeros(n, n_true).scatter_(1, idx, vals) @ true_atoms


def test_architecture_has_no_biases_and_tied_init():
    sae = TopKSAE(16, 64, 4, seed=3)
    names = {n for n, _ in sae.named_parameters()}
    assert names == {"dictionary", "encoder"}
    assert torch.equal(sae.encoder, sae.dictionary)
    assert torch.allclose(sae.dictionary.norm(dim=1), torch.ones(64), atol=1e-6)


def test_sparse_decode_equals_dense_decode_and_code_is_relu_topk():
    torch.manual_seed(0)
    sae = TopKSAE(24, 100, 7)
    with torch.no_grad():
        sae.dictionary.mul_(torch.rand(100, 1) * 3)  # decode must normalise the atoms
    x = torch.randn(50, 24)
    z = sae.encode_dense(x)
    pre = x @ sae.encoder.T
    kth = pre.topk(7, dim=1).values[:, -1:]
    expected = torch.where(pre >= kth, pre, torch.zeros_like(pre)).clamp_min(0)
    assert torch.allclose(z, expected, atol=1e-6)
    assert ((z > 0).sum(1) <= 7).all()
    dense = z @ F.normalize(sae.dictionary, dim=1)
    assert torch.allclose(sae(x), dense, atol=1e-5)


def test_training_learns_sparse_structure_and_keeps_unit_atoms():
    x = sparse_data()
    cfg = SAEConfig(n_atoms=128, k=4, epochs=30, batch_images=1, lr=3e-3, dead_after_tokens=10**9)
    batches = lambda epoch: x[torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))].split(256)
    before = reconstruction_stats(TopKSAE(32, 128, 4), x.split(512))
    sae, history = train_sae(batches, 32, cfg, progress=False)
    after = reconstruction_stats(sae, x.split(512))
    assert history[-1]["mse"] < 0.3 * history[0]["mse"]
    assert after["explained_variance"] > 0.8 > before["explained_variance"]
    assert after["l0"] <= 4
    assert torch.allclose(sae.dictionary.norm(dim=1), torch.ones(128), atol=1e-5)


def test_auxk_loss_matches_formula_on_dead_latents():
    torch.manual_seed(1)
    sae = TopKSAE(8, 20, 2)
    cfg = SAEConfig(n_atoms=20, k=2, aux_k=3, dead_after_tokens=5)
    trainer = SAETrainer(sae, cfg)
    dead = torch.tensor([2, 5, 11, 17])
    trainer.tokens_since_fired[dead] = 10
    x = torch.randn(6, 8)
    pre = sae.preactivations(x)
    residual = torch.randn(6, 8)
    loss = trainer.auxk_loss(pre, residual, sae.atoms())
    # independent: keep only dead columns, top-3 per row, relu, dense decode
    masked = torch.full_like(pre, -torch.inf)
    masked[:, dead] = pre[:, dead]
    v, i = masked.topk(3, dim=1)
    z = torch.zeros_like(pre).scatter_(1, i, v.clamp_min(0))
    expected = ((z @ sae.atoms()) - residual).pow(2).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    trainer.tokens_since_fired.zero_()
    assert float(trainer.auxk_loss(pre, residual, sae.atoms())) == 0.0


def test_dead_latent_tracking_counts_tokens_since_last_fire():
    torch.manual_seed(0)
    sae = TopKSAE(8, 16, 1)
    cfg = SAEConfig(n_atoms=16, k=1, dead_after_tokens=30)
    trainer = SAETrainer(sae, cfg)
    x = sae.dictionary.detach()[:1].repeat(10, 1) * 5  # every token fires latent 0 only
    for _ in range(3):
        stats = trainer.step(x)
    assert trainer.tokens_since_fired[0] == 0
    assert stats.n_dead == 15  # all others unseen for 30 tokens


def test_firing_counts_and_save_load_roundtrip(tmp_path):
    x = sparse_data(n=512)
    cfg = SAEConfig(n_atoms=64, k=4, epochs=2)
    sae, _ = train_sae(lambda e: x.split(128), 32, cfg, progress=False)
    counts = firing_counts(sae, x.split(128), cfg.fire_threshold)
    assert int(counts.sum()) <= 512 * 4
    sae.alive.copy_(counts > 0)
    save_sae(sae, cfg, tmp_path, extra={"note": "x"})
    loaded, loaded_cfg = load_sae(tmp_path)
    assert loaded_cfg == cfg
    assert torch.equal(loaded.alive, sae.alive)
    assert torch.allclose(loaded(x[:10]), sae(x[:10]), atol=1e-6)
    meta = json.loads((tmp_path / "sae.json").read_text())
    meta["schema_version"] = 999
    (tmp_path / "sae.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="schema version 999"):
        load_sae(tmp_path)


def test_same_seed_same_sae():
    x = sparse_data(n=256)
    cfg = SAEConfig(n_atoms=32, k=4, epochs=2)
    a, _ = train_sae(lambda e: x.split(64), 32, cfg, progress=False)
    b, _ = train_sae(lambda e: x.split(64), 32, cfg, progress=False)
    assert torch.equal(a.dictionary, b.dictionary)
    assert np.isfinite(reconstruction_stats(a, x.split(64))["mse"])
