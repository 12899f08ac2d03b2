"""Stage (ii) against the formulas of SPG_METHOD.md §4, computed independently in numpy/scipy."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from spg.guides import (
    GuideConfig, SPGHead, anomaly_maps, coefficient_mass, image_scores, load_head, make_head, save_head,
    spg_losses, train_guides,
)

TAU = 0.07


def np_cos(x, g):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)) @ (g / np.linalg.norm(g, axis=-1, keepdims=True)).T


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_bilinear(img, size):
    """Bilinear resize with half-pixel centres (align_corners=False), written from the definition."""
    h, w = img.shape
    def coords(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo
    y0, y1, fy = coords(h, size)
    x0, x1, fx = coords(w, size)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bot = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    C, d, B, g, S = 40, 12, 3, 4, 16
    atoms = rng.normal(size=(C, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    theta = rng.normal(0.1, 0.2, size=(4, C))  # some negative -> relu matters
    alive = rng.random(C) > 0.2
    patches = rng.normal(size=(B, g, g, d))
    glob = rng.normal(size=(B, d))
    masks = np.zeros((B, S, S))
    masks[1, 3:9, 4:12] = 1
    masks[2, 10:15, 0:3] = 1
    labels = np.array([0, 1, 1])
    head = SPGHead(torch.tensor(atoms, dtype=torch.float32), torch.tensor(alive), tau=TAU,
                   theta=torch.tensor(theta, dtype=torch.float32))
    return dict(atoms=atoms, theta=theta, alive=alive, patches=patches, glob=glob, masks=masks, labels=labels, head=head, S=S)


def reference(p, l1_coef=1e-3):
    c = np.maximum(p["theta"], 0) * p["alive"]
    guides = c @ p["atoms"]
    probs = np_softmax(np_cos(p["patches"], guides[2:4]) / TAU)  # [B,g,g,2]
    S = np.stack([[np_bilinear(probs[b, :, :, ch], p["S"]) for ch in range(2)] for b in range(len(probs))])
    cos0 = np_cos(p["glob"], guides[0:2])
    logp = cos0 - np.log(np.exp(cos0).sum(1, keepdims=True))
    detection = -logp[np.arange(len(cos0)), p["labels"]].mean()
    m = p["masks"]
    onehot = np.clip(np.stack([1 - m, m], 1), 1e-5, 1 - 1e-5)
    pt = (onehot * S).sum(1) + 1e-5
    focal = (-(1 - pt) ** 2 * np.log(pt)).mean()
    def dice(pred, t):
        return np.mean([1 - (2 * (a * b).sum() + 1) / (a.sum() + b.sum() + 1) for a, b in zip(pred, t)])
    dice_total = dice(S[:, 1], m) + dice(S[:, 0], 1 - m)
    sparsity = l1_coef * np.abs(c).sum(1).mean()
    return dict(S=S, detection=detection, focal=focal, dice=dice_total, sparsity=sparsity,
                total=detection + focal + dice_total + sparsity, guides=guides)


def test_maps_and_losses_match_the_formulas(problem):
    ref = reference(problem)
    head = problem["head"]
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    assert np.allclose(head.guides().detach().numpy(), ref["guides"], atol=1e-5)
    S = head.maps(t(problem["patches"]), problem["S"]).detach().numpy()
    assert np.allclose(S, ref["S"], atol=1e-5)
    assert np.allclose(head.anomaly_map(t(problem["patches"]), problem["S"]).detach().numpy(), ref["S"][:, 1], atol=1e-5)
    losses = spg_losses(head, t(problem["glob"]), t(problem["patches"]), t(problem["masks"]),
                        torch.tensor(problem["labels"]), GuideConfig())
    for name in ("detection", "focal", "dice", "sparsity", "total"):
        assert losses[name].item() == pytest.approx(ref[name], rel=1e-4, abs=1e-6), name


def test_inference_map_is_blurred_anomaly_probability(problem):
    ref = reference(problem)
    amap = anomaly_maps(problem["head"], torch.tensor(problem["patches"], dtype=torch.float32), problem["S"], 1.5)
    # torch 'reflect' padding is scipy's 'mirror'; radius 4 sigma is scipy's truncate=4
    expected = np.stack([gaussian_filter((s[1] + 1 - s[0]) / 2, 1.5, mode="mirror", truncate=4.0) for s in ref["S"]])
    assert np.allclose(amap.numpy(), expected, atol=1e-5)
    assert np.allclose((ref["S"][:, 1] + 1 - ref["S"][:, 0]) / 2, ref["S"][:, 1], atol=1e-6)


def test_dead_atoms_get_zero_coefficients_and_gradients(problem):
    head = problem["head"]
    dead = ~torch.tensor(problem["alive"])
    assert (head.coefficients()[:, dead] == 0).all()
    head.guides().sum().backward()
    assert (head.theta.grad[:, dead] == 0).all()


def test_topn_straight_through_keeps_n_but_passes_all_gradients(problem):
    head = SPGHead(problem["head"].atoms, problem["head"].alive, sparsity="topn", top_n=5,
                   theta=problem["head"].theta.detach())
    c = head.coefficients()
    assert ((c > 0).sum(1) <= 5).all()
    full = torch.relu(head.theta) * head.alive
    assert torch.allclose(c.max(1).values, full.max(1).values)
    c.sum().backward()
    assert torch.equal(head.theta.grad != 0, (head.theta > 0) & head.alive)  # straight-through


def test_image_scores():
    maps = torch.zeros(2, 10, 10)
    maps[0, 2, 3] = 0.9
    maps[1] = 0.3
    g = torch.tensor([0.2, 0.8])
    s = image_scores(maps, g, lse_temperature=0.01)
    assert torch.allclose(s["max"], torch.tensor([0.9, 0.3]))
    assert torch.allclose(s["global"], g)
    assert torch.allclose(s["hybrid"], torch.tensor([0.55, 0.55]))
    assert torch.allclose(s["top10_mean"], torch.tensor([0.09, 0.3]))
    assert 0.8 * 0.9 < s["lse"][0] < 0.9 and torch.isclose(s["lse"][1], torch.tensor(0.3))


def test_training_separates_defects_and_ema_is_evaluated(tmp_path):
    """Patches carry a 'defect direction' where the mask is on; the guides must find it."""
    rng = np.random.default_rng(0)
    d, C, g, S = 16, 32, 4, 8
    atoms = torch.tensor(np.linalg.qr(rng.normal(size=(d, d)))[0].T, dtype=torch.float32)
    atoms = torch.cat([atoms, -atoms])  # 32 unit atoms incl. both signs
    data = []
    for i in range(32):
        p = rng.normal(size=(g, g, d)) * 0.3 + atoms[0].numpy()
        mask = np.zeros((S, S))
        if i % 2:
            p[1:3, 1:3] += 2.0 * atoms[1].numpy()
            mask[2:6, 2:6] = 1
        data.append((p, mask, i % 2))
    def batches(epoch):
        order = np.random.default_rng(epoch).permutation(len(data))
        for s in range(0, len(order), 8):
            sel = [data[j] for j in order[s:s + 8]]
            yield {"patches": torch.tensor(np.stack([x[0] for x in sel]), dtype=torch.float32),
                   "global": torch.tensor(np.stack([x[0].mean((0, 1)) for x in sel]), dtype=torch.float32),
                   "masks": torch.tensor(np.stack([x[1] for x in sel]), dtype=torch.float32),
                   "labels": torch.tensor([x[2] for x in sel])}
    cfg = GuideConfig(epochs=25, ema_decay=0.9)
    head, history = train_guides(atoms, torch.ones(C, dtype=torch.bool), batches, cfg, progress=False)
    assert history[-1]["total"] < history[0]["total"]
    anomaly_atoms = head.coefficients()[3].topk(3).indices.tolist()
    assert 1 in anomaly_atoms
    b = next(batches(0))
    amap = anomaly_maps(head, b["patches"], S, 0)
    inside = amap[b["masks"] > 0].mean()
    outside = amap[b["masks"] == 0].mean()
    assert inside > outside + 0.2
    save_head(head, cfg, tmp_path)
    loaded, loaded_cfg = load_head(tmp_path)
    assert loaded_cfg == cfg and torch.equal(loaded.theta, head.theta)
    mass = coefficient_mass(loaded)
    assert mass[-1] == pytest.approx(1.0) and np.all(np.diff(mass) >= -1e-7)


def test_init_is_seeded():
    atoms = torch.eye(6)
    a = make_head(atoms, torch.ones(6, dtype=torch.bool), GuideConfig(seed=4))
    b = make_head(atoms, torch.ones(6, dtype=torch.bool), GuideConfig(seed=4))
    assert torch.equal(a.theta, b.theta)
    assert abs(float(a.theta.mean()) - 0.1) < 0.02
