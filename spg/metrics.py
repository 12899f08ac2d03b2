"""Evaluation metrics for zero-shot anomaly detection and segmentation (SPG_METHOD.md §6).

Image level: AUROC, average precision (scikit-learn's definition) and max-F1 from one score per
image. Pixel level: AUROC and average precision over all pixels, and AUPRO.

Every metric is computed from one "tie-grouped" summary of the scores (:class:`_Groups`): the
distinct scores of the positive samples in descending order, how much positive mass sits at each
of them, and how many negatives score strictly above / at-or-above each of them. That summary is
exact under ties (equal scores form ONE threshold step), and it only needs the negatives sorted
once (in parallel chunks, no argsort and no float64 copy of the pixel array), so 200 million pixels
fit in a few GB. Curves built from it are the exact step curves with collinear points removed.

AUPRO comes in two flavours that can differ by several points on noisy maps:

* ``num_thresholds=None`` (default): the exact MVTec AD definition -- every distinct score is a
  threshold, PRO is the mean over all ground-truth regions (8-connected, per image) of the covered
  fraction, FPR is over all normal pixels, the area under PRO(FPR) up to ``fpr_limit`` (linear
  interpolation at the limit) is divided by ``fpr_limit``.
* ``num_thresholds=K``: the AnomalyCLIP-style variant many zero-shot papers use -- K evenly spaced
  thresholds ``min + i * (max - min) / K`` (i = 0..K-1), a pixel counts when ``score > threshold``,
  points with ``FPR < fpr_limit`` are kept, their FPR axis is rescaled to [0, 1], and the
  trapezoid area is returned (no division by ``fpr_limit``).

A metric that is undefined (e.g. one class only) is NaN, never 0, and never raises.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

METRIC_NAMES = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "aupro")

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_MIN_CHUNK = 1 << 22  # below this many negatives, sorting is not split across threads


# --------------------------------------------------------------------------------------------
# Input conversion
# --------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to CPU once)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _as_binary(x: np.ndarray) -> np.ndarray:
    """Boolean view of labels/masks: bool stays, anything else is ``> 0.5`` (0/1 or 0/255)."""
    return x if x.dtype == np.bool_ else x > 0.5


def _as_scores(x: np.ndarray) -> np.ndarray:
    """float32/float64 stay as they are; float16 becomes float32; ints and bools become float64."""
    if x.dtype in (np.float32, np.float64):
        return x
    return x.astype(np.float32 if x.dtype == np.float16 else np.float64)


def _pixel_arrays(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Binary masks and raw maps, both shaped [N, H, W] ([H, W] and [N, 1, H, W] are accepted)."""
    arrays = []
    for a in (_to_numpy(masks), _to_numpy(maps)):
        if a.ndim == 2:
            a = a[None]
        elif a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 3:
            raise ValueError(f"expected [N, H, W] arrays, got shape {a.shape}")
        arrays.append(a)
    mask, amap = arrays
    if mask.shape != amap.shape:
        raise ValueError(f"masks {mask.shape} and maps {amap.shape} differ in shape")
    return _as_binary(mask), amap


# --------------------------------------------------------------------------------------------
# Core: sorted negatives and tie-grouped positives
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Negatives:
    """Negative scores as independently sorted chunks (counts add up across chunks)."""

    chunks: tuple[np.ndarray, ...]
    size: int

    def count_above(self, values: np.ndarray, inclusive: bool) -> np.ndarray:
        """Number of negatives ``>= values`` (inclusive) or ``> values`` (strict), as int64."""
        side = "left" if inclusive else "right"
        out = np.zeros(len(values), dtype=np.int64)
        for chunk in self.chunks:
            out += len(chunk) - np.searchsorted(chunk, values, side=side)
        return out

    def extreme(self, largest: bool) -> float:
        """Largest or smallest negative score (NaN when there are none)."""
        ends = [c[-1] if largest else c[0] for c in self.chunks if len(c)]
        if not ends:
            return float("nan")
        return float(max(ends) if largest else min(ends))


def _available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks in containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on every platform
        return os.cpu_count() or 1


def _sort_negatives(neg: np.ndarray) -> _Negatives:
    """Sort ``neg`` (a private copy) in place as one chunk per CPU, in parallel threads."""
    workers = max(1, min(_available_cpus(), 16, len(neg) // _MIN_CHUNK))
    bounds = np.linspace(0, len(neg), workers + 1).astype(np.int64)
    chunks = tuple(neg[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    if workers == 1:
        neg.sort()
    else:
        with ThreadPoolExecutor(workers) as pool:  # np.sort releases the GIL
            list(pool.map(np.ndarray.sort, chunks))
    if any(len(c) and np.isnan(c[-1]) for c in chunks):  # NaN sorts to the end
        raise ValueError("scores contain NaN")
    return _Negatives(chunks, len(neg))


@dataclass(frozen=True)
class _Groups:
    """Distinct positive scores (descending) with their positive mass and negatives above them."""

    values: np.ndarray  # distinct positive scores, descending
    counts: np.ndarray  # number of positives at each value (int64)
    weights: np.ndarray | None  # summed per-pixel region weights at each value (for PRO)
    neg_gt: np.ndarray  # negatives scoring strictly above each value
    neg_ge: np.ndarray  # negatives scoring at or above each value
    negatives: _Negatives

    @property
    def n_pos(self) -> int:
        return int(self.counts.sum())

    @property
    def n_neg(self) -> int:
        return self.negatives.size


def _group(pos: np.ndarray, negatives: _Negatives, weights: np.ndarray | None = None) -> _Groups:
    """Tie-group the positive scores ``pos`` (optionally carrying per-sample ``weights``)."""
    if np.isnan(pos).any():
        raise ValueError("scores contain NaN")
    if weights is None:
        pos = np.sort(pos)[::-1]
    else:
        order = np.argsort(pos)[::-1]
        pos, weights = pos[order], weights[order]
    starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]]) if len(pos) else np.zeros(0, int)
    values = np.ascontiguousarray(pos[starts])
    counts = np.diff(np.r_[starts, len(pos)]).astype(np.int64)
    wsum = np.add.reduceat(weights, starts) if weights is not None and len(pos) else None
    neg_gt = negatives.count_above(values, inclusive=False)
    neg_ge = negatives.count_above(values, inclusive=True)
    return _Groups(values, counts, wsum, neg_gt, neg_ge, negatives)


def _groups_from_labels(labels: Any, scores: Any) -> _Groups:
    """Tie-grouped summary of flat (any-shape) binary labels and scores."""
    lab = _as_binary(_to_numpy(labels)).ravel()
    sco = _as_scores(_to_numpy(scores)).ravel()
    if lab.shape != sco.shape:
        raise ValueError(f"labels ({lab.size}) and scores ({sco.size}) differ in size")
    return _group(sco[lab], _sort_negatives(sco[~lab]))


def _region_weights(mask: np.ndarray) -> np.ndarray:
    """Per anomalous pixel (C order), ``1 / (n_regions * size of its 8-connected region)``."""
    parts, n_regions = [], 0
    for m in mask:
        if not m.any():
            continue
        labelled, k = ndimage.label(m, structure=_EIGHT_CONNECTED)
        region_of_pixel = labelled[m]
        sizes = np.bincount(region_of_pixel, minlength=k + 1)
        parts.append(1.0 / sizes[region_of_pixel])
        n_regions += k
    return np.concatenate(parts) / n_regions if parts else np.zeros(0)


def _pixel_groups(masks: Any, maps: Any, regions: bool) -> _Groups:
    """Tie-grouped pixel summary; with ``regions`` it also carries the PRO weights."""
    mask, amap = _pixel_arrays(masks, maps)
    pos = _as_scores(amap[mask])
    neg = _as_scores(amap[~mask])
    weights = _region_weights(mask) if regions else None
    return _group(pos, _sort_negatives(neg), weights)


# --------------------------------------------------------------------------------------------
# Metrics from a _Groups summary
# --------------------------------------------------------------------------------------------
def _auroc(g: _Groups) -> float:
    """P(pos > neg) + 0.5 P(pos == neg); NaN unless both classes are present."""
    if g.n_pos == 0 or g.n_neg == 0:
        return float("nan")
    beaten = g.n_neg - 0.5 * (g.neg_gt + g.neg_ge)  # negatives below + half of the ties
    return float(np.dot(g.counts, beaten) / (g.n_pos * g.n_neg))


def _precision_recall(g: _Groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, precision and recall at each distinct positive score (descending)."""
    tp = np.cumsum(g.counts).astype(np.float64)
    return tp, tp / (tp + g.neg_ge), tp / g.n_pos


def _average_precision(g: _Groups) -> float:
    """sum_k (R_k - R_{k-1}) P_k, as ``sklearn.metrics.average_precision_score``."""
    if g.n_pos == 0:
        return float("nan")
    _, precision, _ = _precision_recall(g)
    return float(np.dot(g.counts, precision) / g.n_pos)


def _f1max(g: _Groups) -> float:
    """Max over thresholds of F1 = 2 TP / (TP + FP + P) (only positive steps can be maxima)."""
    if g.n_pos == 0:
        return float("nan")
    tp = np.cumsum(g.counts).astype(np.float64)
    return float(np.max(2.0 * tp / (tp + g.neg_ge + g.n_pos)))


def _step_curve(g: _Groups, heights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact curve (FPR, height) from (0, 0) to (1, last height) over all thresholds.

    ``heights`` is the cumulative positive measure after each group. Negatives strictly above a
    group move the curve horizontally, the group itself (with its tied negatives) diagonally.
    """
    before = np.r_[0.0, heights[:-1]]
    x = np.empty(2 * len(heights) + 2)
    y = np.empty_like(x)
    x[0], y[0], x[-1], y[-1] = 0.0, 0.0, 1.0, heights[-1]
    x[1:-1:2], y[1:-1:2] = g.neg_gt / g.n_neg, before
    x[2:-1:2], y[2:-1:2] = g.neg_ge / g.n_neg, heights
    keep = np.r_[True, (np.diff(x) != 0) | (np.diff(y) != 0)]
    return x[keep], y[keep]


def _truncate(x: np.ndarray, y: np.ndarray, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Curve restricted to ``x <= x_max``, ending with a linearly interpolated point at x_max."""
    end = int(np.searchsorted(x, x_max, side="right"))
    if end == len(x) or x[end - 1] == x_max:
        return x[:end], y[:end]
    t = (x_max - x[end - 1]) / (x[end] - x[end - 1])
    return np.r_[x[:end], x_max], np.r_[y[:end], y[end - 1] + t * (y[end] - y[end - 1])]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule area under the polyline (x, y)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _exact_pro_curve(g: _Groups, fpr_limit: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact MVTec PRO curve, optionally cut at ``fpr_limit``; empty when undefined."""
    if g.weights is None or g.n_pos == 0 or g.n_neg == 0:
        return np.zeros(0), np.zeros(0)
    fpr, pro = _step_curve(g, np.minimum(np.cumsum(g.weights), 1.0))
    return (fpr, pro) if fpr_limit is None else _truncate(fpr, pro, fpr_limit)


def _cast_down(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Largest ``dtype`` values <= thresholds, so ``x > t`` is unchanged for ``dtype`` scores."""
    cast = thresholds.astype(dtype)
    too_big = cast > thresholds
    cast[too_big] = np.nextafter(cast[too_big], dtype.type(-np.inf))
    return cast


def _sampled_aupro(g: _Groups, fpr_limit: float, num_thresholds: int) -> float:
    """AnomalyCLIP-style AUPRO on ``num_thresholds`` evenly spaced thresholds (see module doc)."""
    low = min(g.negatives.extreme(largest=False), float(g.values[-1]))
    high = max(g.negatives.extreme(largest=True), float(g.values[0]))
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("the sampled AUPRO needs finite scores")
    if high <= low:
        return float("nan")
    thresholds = _cast_down(low + (high - low) / num_thresholds * np.arange(num_thresholds),
                            g.values.dtype)
    n_above = len(g.values) - np.searchsorted(g.values[::-1], thresholds, side="right")
    pro = np.r_[0.0, np.cumsum(g.weights)][n_above]
    fpr = g.negatives.count_above(thresholds, inclusive=False) / g.n_neg
    keep = fpr < fpr_limit
    fpr, pro = fpr[keep][::-1], pro[keep][::-1]  # ascending FPR
    if len(fpr) < 2 or fpr[-1] == fpr[0]:
        return float("nan")
    return _trapezoid(pro, (fpr - fpr[0]) / (fpr[-1] - fpr[0]))


def _aupro(g: _Groups, fpr_limit: float, num_thresholds: int | None) -> float:
    """AUPRO from a region-weighted summary (NaN without regions or without normal pixels)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    if g.weights is None or g.n_pos == 0 or g.n_neg == 0:
        return float("nan")
    if num_thresholds is not None:
        if num_thresholds < 2:
            raise ValueError("num_thresholds must be at least 2")
        return _sampled_aupro(g, fpr_limit, int(num_thresholds))
    fpr, pro = _exact_pro_curve(g, fpr_limit)
    return _trapezoid(pro, fpr) / fpr_limit


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def image_auroc(labels: Any, scores: Any) -> float:
    """Image-level AUROC; NaN when only one class is present."""
    return _auroc(_groups_from_labels(labels, scores))


def image_ap(labels: Any, scores: Any) -> float:
    """Image-level average precision (scikit-learn's definition); NaN without positives."""
    return _average_precision(_groups_from_labels(labels, scores))


def image_f1max(labels: Any, scores: Any) -> float:
    """Maximum F1 over all thresholds of the precision-recall curve; NaN without positives."""
    return _f1max(_groups_from_labels(labels, scores))


def pixel_auroc(masks: Any, maps: Any) -> float:
    """AUROC over all pixels of masks/maps [N, H, W]; NaN when only one class is present."""
    return _auroc(_pixel_groups(masks, maps, regions=False))


def pixel_ap(masks: Any, maps: Any) -> float:
    """Average precision over all pixels of masks/maps [N, H, W]; NaN without anomalous pixels."""
    return _average_precision(_pixel_groups(masks, maps, regions=False))


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3,
          num_thresholds: int | None = None) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``.

    ``num_thresholds=None`` gives the exact MVTec AD value (normalised by ``fpr_limit``);
    an integer gives the AnomalyCLIP-style sampled, FPR-rescaled variant. The two differ on
    noisy maps, so always state which one a number uses (see the module docstring).
    NaN when there are no anomalous regions or no normal pixels.
    """
    return _aupro(_pixel_groups(masks, maps, regions=True), fpr_limit, num_thresholds)


def compute_metrics(labels: Any, image_scores: Any, masks: Any, maps: Any, *,
                    aupro_thresholds: int | None = None,
                    fpr_limit: float = 0.3) -> dict[str, float]:
    """All six :data:`METRIC_NAMES` for one category (pixels are sorted only once)."""
    img = _groups_from_labels(labels, image_scores)
    pix = _pixel_groups(masks, maps, regions=True)
    values = (_auroc(img), _average_precision(img), _f1max(img),
              _auroc(pix), _average_precision(pix), _aupro(pix, fpr_limit, aupro_thresholds))
    return dict(zip(METRIC_NAMES, values))


def metrics_table(per_category: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Categories (sorted) as rows plus a final ``mean`` row; columns in METRIC_NAMES order.

    The mean skips NaN entries (an undefined metric is left out, never counted as 0); a column
    that is NaN for every category has a NaN mean. Missing metrics are NaN.
    """
    if "mean" in per_category:
        raise ValueError("'mean' is reserved for the summary row")
    names = sorted(per_category)
    table = pd.DataFrame([per_category[n] for n in names], index=names,
                         columns=list(METRIC_NAMES), dtype=float)
    table.loc["mean"] = table.mean(axis=0, skipna=True)
    return table


def roc_curve_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC curve (fpr, tpr) from (0, 0) to (1, 1) for labels/scores of any (equal) shape.

    Works for pixels too (pass masks and maps). Empty arrays when only one class is present.
    """
    g = _groups_from_labels(labels, scores)
    if g.n_pos == 0 or g.n_neg == 0:
        return np.zeros(0), np.zeros(0)
    return _step_curve(g, np.cumsum(g.counts) / g.n_pos)


def pr_curve_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall points (recall, precision), recall increasing, starting at (0, 1).

    One point per distinct positive score, as scikit-learn's curve without its negative-only
    steps. Empty arrays when there are no positives.
    """
    g = _groups_from_labels(labels, scores)
    if g.n_pos == 0:
        return np.zeros(0), np.zeros(0)
    _, precision, recall = _precision_recall(g)
    return np.r_[0.0, recall], np.r_[1.0, precision]


def pro_curve(masks: Any, maps: Any,
              fpr_limit: float | None = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Exact MVTec PRO curve (fpr, pro) from (0, 0), cut at ``fpr_limit`` (None: up to FPR 1).

    ``aupro`` integrates exactly this curve. Empty arrays when AUPRO is undefined.
    """
    return _exact_pro_curve(_pixel_groups(masks, maps, regions=True), fpr_limit)
