"""Tests for spg.metrics: hand-computed AUPRO cases, independent slow references, sklearn parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import measure
from sklearn import metrics as skm

from spg import metrics as M

EIGHT = np.ones((3, 3), dtype=int)
FOUR = ndimage.generate_binary_structure(2, 1)


# ------------------------------------------------------------------------------------------
# Independent slow references (written from the definitions; share nothing with spg.metrics)
# ------------------------------------------------------------------------------------------
def reference_aupro_mvtec(masks, maps, fpr_limit=0.3, structure=EIGHT):
    """MVTec AD style: loop over every distinct threshold, binarise, per-region overlap."""
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    regions = []
    for i, m in enumerate(masks):
        labelled, n = ndimage.label(m, structure=structure)
        regions += [(i, labelled == r) for r in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        binary = maps >= t
        fprs.append((binary & normal).sum() / normal.sum())
        pros.append(np.mean([(binary[i] & r).sum() / r.sum() for i, r in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / fpr_limit


def reference_aupro_sampled(masks, maps, fpr_limit=0.3, steps=200):
    """AnomalyCLIP style: evenly spaced thresholds, regionprops, rescaled FPR axis, sklearn auc."""
    masks = np.asarray(masks).astype(int)
    maps = np.asarray(maps).astype(np.float64)
    lo, hi = maps.min(), maps.max()
    delta = (hi - lo) / steps
    pros, fprs = [], []
    for i in range(steps):
        binary = maps > lo + delta * i
        overlaps = []
        for b, m in zip(binary, masks):
            for region in measure.regionprops(measure.label(m, connectivity=2)):
                rows, cols = region.coords[:, 0], region.coords[:, 1]
                overlaps.append(b[rows, cols].sum() / region.area)
        pros.append(np.mean(overlaps))
        fprs.append(np.logical_and(masks == 0, binary).sum() / (masks == 0).sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < fpr_limit
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return skm.auc(f, pros[keep])


def area(x, y):
    """Trapezoid area under the polyline (x, y)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def f1max_sklearn(labels, scores):
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    denom = precision + recall
    return np.max(np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0))


def random_case(seed, n=3, size=12, levels=None, dtype=np.float64):
    """Blobby random masks (several regions of varied size) and a correlated noisy map."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), sigma=(0, 1.2, 1.2))
    masks = noise > np.quantile(noise, 0.8)
    masks[0, 0, 0] = True  # a 1-pixel region
    maps = masks * 0.8 + rng.standard_normal(masks.shape)
    if levels is not None:  # quantise to create many ties
        maps = np.round((maps - maps.min()) / np.ptp(maps) * levels) / levels
    return masks, maps.astype(dtype)


# ------------------------------------------------------------------------------------------
# Hand-computed AUPRO
# ------------------------------------------------------------------------------------------
def test_aupro_hand_single_region_with_ties():
    # region = top-left 2x2 (scores 3, 3, 1, 1); 12 normal pixels: one at 2, one at 1 (tie), rest 0
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True
    amap = np.zeros((1, 4, 4))
    amap[0, 0, :2], amap[0, 1, :2] = 3, 1
    amap[0, 3, 3], amap[0, 3, 2] = 2, 1
    # thresholds 3,2,1,0 -> (fpr, pro) = (0,.5), (1/12,.5), (2/12,1), (1,1); tie step is diagonal
    expected = (0.5 * (1 / 12) + (1 / 12) * 0.75 + (0.3 - 2 / 12) * 1.0) / 0.3
    assert M.aupro(mask, amap) == pytest.approx(expected, abs=1e-12)
    fpr, pro = M.pro_curve(mask, amap)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 12, 2 / 12, 0.3])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1, 1])
    assert M.aupro(mask, amap, fpr_limit=1.0) == pytest.approx(
        0.5 / 12 + 0.75 / 12 + 10 / 12, abs=1e-12)


def test_aupro_averages_over_regions_not_pixels():
    # region A: 1 pixel fully hit; region B: 4 pixels, 1 hit -> PRO = (1 + 1/4)/2, not 2/5
    mask = np.zeros((1, 4, 6), bool)
    mask[0, 0, 0] = True
    mask[0, 2:4, 3:5] = True
    amap = np.zeros((1, 4, 6))
    amap[0, 0, 0] = amap[0, 2, 3] = 2.0
    y_cut = 0.625 + 0.375 * 0.3
    assert M.aupro(mask, amap) == pytest.approx((0.625 + y_cut) / 2, abs=1e-12)


def test_aupro_uses_8_connectivity():
    # (0,0) touches (1,1) only diagonally: 8-conn -> one region of 3 px; 4-conn -> sizes 1 and 2
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 1] = True
    amap = np.zeros((1, 5, 5))
    amap[0, 0, 0] = 1.0
    expected_8 = (1 / 3 + (1 / 3 + 2 / 3 * 0.3)) / 2
    assert M.aupro(mask, amap) == pytest.approx(expected_8, abs=1e-12)
    assert reference_aupro_mvtec(mask, amap) == pytest.approx(expected_8, abs=1e-12)
    assert abs(reference_aupro_mvtec(mask, amap, structure=FOUR) - expected_8) > 0.1


def test_regions_do_not_connect_across_images():
    masks = np.zeros((2, 3, 3), bool)
    masks[:, 0, 0] = True
    masks[1, 0, 1] = True  # image 1 has a 2-pixel region at the same place
    maps = np.zeros((2, 3, 3))
    maps[0, 0, 0] = 1.0  # hits image 0's region fully -> PRO 1/2 (3D labelling would give 1/3)
    assert M.pro_curve(masks, maps)[1][1] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------
# Exact AUPRO vs MVTec-style reference; sampled variant vs AnomalyCLIP-style reference
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,levels", [(0, None), (1, None), (2, 12), (3, 5), (4, 40)])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_exact_aupro_matches_mvtec_reference(seed, levels, fpr_limit):
    masks, maps = random_case(seed, levels=levels)
    assert M.aupro(masks, maps, fpr_limit) == pytest.approx(
        reference_aupro_mvtec(masks, maps, fpr_limit), abs=1e-6)


def test_exact_aupro_float32_and_chunked_sort(monkeypatch):
    monkeypatch.setattr(M, "_MIN_CHUNK", 7)  # force the multi-chunk (threaded) sort path
    masks, maps = random_case(5, n=4, levels=30, dtype=np.float32)
    assert M.aupro(masks, maps) == pytest.approx(reference_aupro_mvtec(masks, maps), abs=1e-6)


@pytest.mark.parametrize("seed,levels,dtype", [(0, None, np.float64), (6, 15, np.float64),
                                               (7, None, np.float32)])
def test_sampled_aupro_matches_anomalyclip_reference(seed, levels, dtype):
    masks, maps = random_case(seed, levels=levels, dtype=dtype)
    assert M.aupro(masks, maps, num_thresholds=200) == pytest.approx(
        reference_aupro_sampled(masks, maps), abs=1e-6)


def test_sampled_and_exact_aupro_differ_on_noisy_maps():
    masks, maps = random_case(8, n=4, size=16)
    exact, sampled = M.aupro(masks, maps), M.aupro(masks, maps, num_thresholds=200)
    assert abs(exact - sampled) > 1e-3, (exact, sampled)
    # A heavy-tailed (but order-preserving) rescoring leaves the exact value unchanged while the
    # evenly spaced thresholds crowd into the tail: the sampled variant drops by > 10 points.
    heavy = np.exp(2 * maps)
    assert M.aupro(masks, heavy) == pytest.approx(exact, abs=1e-12)
    sampled_heavy = M.aupro(masks, heavy, num_thresholds=200)
    assert sampled_heavy == pytest.approx(reference_aupro_sampled(masks, heavy), abs=1e-6)
    assert exact - sampled_heavy > 0.1, (exact, sampled_heavy)


def test_exact_aupro_invariant_to_increasing_transform():
    masks, maps = random_case(9, levels=25)
    base = M.aupro(masks, maps)
    assert M.aupro(masks, np.exp(3 * maps) - 5) == pytest.approx(base, abs=1e-12)
    assert M.aupro(masks, 100 * maps ** 3 + 1) == pytest.approx(base, abs=1e-12)


# ------------------------------------------------------------------------------------------
# AUROC / AP / F1max vs sklearn
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_image_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]
    scores = labels * rng.uniform(0, 2) + rng.standard_normal(n)
    if seed % 2:  # heavy ties, including ties across classes
        scores = np.round(scores * 2) / 2
    assert M.image_auroc(labels, scores) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-9)
    assert M.image_ap(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-9)
    assert M.image_f1max(labels, scores) == pytest.approx(f1max_sklearn(labels, scores), abs=1e-9)


@pytest.mark.parametrize("levels", [None, 8])
def test_pixel_metrics_match_sklearn(levels, monkeypatch):
    monkeypatch.setattr(M, "_MIN_CHUNK", 100)
    masks, maps = random_case(10, n=5, size=20, levels=levels, dtype=np.float32)
    y, s = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(masks, maps) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-9)
    assert M.pixel_ap(masks, maps) == pytest.approx(skm.average_precision_score(y, s), abs=1e-9)


def test_curves_are_consistent_with_sklearn():
    rng = np.random.default_rng(11)
    labels = rng.random(200) < 0.3
    scores = np.round(labels + rng.standard_normal(200), 1)
    fpr, tpr = M.roc_curve_points(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert area(fpr, tpr) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    recall, precision = M.pr_curve_points(labels, scores)
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12)
    masks, maps = random_case(12)
    fpr, pro = M.pro_curve(masks, maps, fpr_limit=None)
    assert (fpr[-1], pro[-1]) == (1.0, 1.0)
    assert area(fpr, pro) == pytest.approx(M.aupro(masks, maps, fpr_limit=1.0), abs=1e-12)


# ------------------------------------------------------------------------------------------
# Undefined cases, input types, tables
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [np.zeros(6, int), np.ones(6, int)])
def test_image_metrics_nan_for_single_class(labels):
    scores = np.linspace(0, 1, 6)
    assert math.isnan(M.image_auroc(labels, scores))
    if labels.sum() == 0:
        assert math.isnan(M.image_ap(labels, scores))
        assert math.isnan(M.image_f1max(labels, scores))
    else:
        assert M.image_ap(labels, scores) == 1.0 and M.image_f1max(labels, scores) == 1.0


@pytest.mark.parametrize("fill", [False, True])
def test_pixel_metrics_nan_for_single_class(fill):
    masks = np.full((2, 5, 5), fill)
    maps = np.random.default_rng(0).random((2, 5, 5))
    assert math.isnan(M.pixel_auroc(masks, maps))
    assert math.isnan(M.aupro(masks, maps))
    assert math.isnan(M.aupro(masks, maps, num_thresholds=200))
    assert M.pro_curve(masks, maps)[0].size == 0
    if not fill:
        assert math.isnan(M.pixel_ap(masks, maps))
    out = M.compute_metrics([0, 0], [0.1, 0.2], masks, maps)
    assert list(out) == list(M.METRIC_NAMES)
    assert math.isnan(out["image_auroc"]) and math.isnan(out["aupro"])


def test_compute_metrics_and_torch_inputs_agree_with_numpy():
    masks, maps = random_case(13, n=4, dtype=np.float32)
    labels = masks.reshape(4, -1).any(1).astype(int)
    labels[0] = 0
    scores = maps.reshape(4, -1).max(1)
    ref = M.compute_metrics(labels, scores, masks, maps)
    got = M.compute_metrics(torch.tensor(labels), torch.tensor(scores), torch.tensor(masks),
                            torch.tensor(maps), aupro_thresholds=None)
    assert got == ref
    assert ref["aupro"] == pytest.approx(M.aupro(masks, maps), abs=1e-15)
    assert ref["pixel_auroc"] == pytest.approx(M.pixel_auroc(masks, maps), abs=1e-15)
    half = torch.tensor(maps).half()  # float16 maps: same as the float32 of the rounded values
    assert M.aupro(torch.tensor(masks), half) == pytest.approx(
        M.aupro(masks, half.float().numpy()), abs=1e-12)
    sampled = M.compute_metrics(labels, scores, masks, maps, aupro_thresholds=200)["aupro"]
    assert sampled == pytest.approx(M.aupro(masks, maps, num_thresholds=200), abs=1e-15)


def test_nan_scores_raise():
    with pytest.raises(ValueError):
        M.image_auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError):
        M.pixel_auroc(np.eye(3)[None], np.full((1, 3, 3), np.nan))


def test_metrics_table_mean_ignores_nan():
    nan = float("nan")
    per_cat = {
        "zipper": dict.fromkeys(M.METRIC_NAMES, 0.5) | {"image_auroc": nan, "aupro": nan},
        "bottle": dict.fromkeys(M.METRIC_NAMES, 0.9) | {"aupro": nan},
    }
    table = M.metrics_table(per_cat)
    assert list(table.index) == ["bottle", "zipper", "mean"]
    assert list(table.columns) == list(M.METRIC_NAMES)
    assert table.loc["mean", "image_auroc"] == pytest.approx(0.9)  # not (0.9 + 0) / 2
    assert table.loc["mean", "image_ap"] == pytest.approx(0.7)
    assert math.isnan(table.loc["mean", "aupro"])
