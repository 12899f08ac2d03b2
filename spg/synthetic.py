"""A synthetic, MVTec-layout anomaly dataset, deterministic from a seed and written to disk as PNG.

Categories mix textures (photographic textures bundled with scikit-image, procedural wood and
woven fabric) and procedural objects on a plain background (pill, hex nut, bottle cap). Normal
images vary (crop, rotation, position, lighting, noise). Each defect is composited onto a normal
rendering with an alpha map ``a``; the mask is ``a > 0.5`` and the image is changed *only* inside
the mask (``a`` is zeroed outside), so masks are exact. :func:`render_sample` returns the
defect-free rendering next to the defective one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from spg.data import AnomalyDataset, DatasetError, mvtec_dataset

__all__ = [
    "GENERATOR_VERSION", "AUX_CATEGORIES", "TARGET_CATEGORIES", "DEFECT_KINDS", "AREA_BOUNDS", "SyntheticConfig",
    "SyntheticSample", "render_sample", "generate_synthetic", "is_complete", "synthetic_dataset",
]  # fmt: skip

GENERATOR_VERSION: int = 1
"""Bumped whenever rendering changes, so that cached generations are not reused."""
AUX_CATEGORIES: tuple[str, ...] = ("brick", "wood", "pill", "hex_nut")
TARGET_CATEGORIES: tuple[str, ...] = ("gravel", "fabric", "bottle_cap")
DEFECT_KINDS: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "missing", "cut_paste")
AREA_BOUNDS: tuple[float, float] = (0.003, 0.08)
"""Allowed defect area, as a fraction of the image."""
MARKER_NAME = "spg_synthetic.json"
_MIN_CHANGE = 0.05  # mean |change| inside a defect mask, in [0, 1] intensity units


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    Attributes:
        seed: master seed; every image is a pure function of (seed, category, kind, index).
        image_size: side of the square PNGs, in pixels.
        n_good: normal images per category.
        n_defect_per_kind: anomalous images per category and defect kind.
        categories: categories to generate; ``None`` means all aux and target categories.
    """

    seed: int = 0
    image_size: int = 256
    n_good: int = 12
    n_defect_per_kind: int = 3
    categories: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SyntheticSample:
    """One rendering: ``image`` and ``clean`` are uint8 ``[H, W, 3]``, ``mask`` bool ``[H, W]``."""

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray


@dataclass
class _Scene:
    """A float RGB rendering, the object coverage ``fg`` and what shows where material is missing."""

    image: np.ndarray
    fg: np.ndarray
    backdrop: np.ndarray


# ----------------------------------------------------------------------------- noise helpers


def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    return x, y


def _noise(rng: np.random.Generator, s: int, cell: float | tuple[float, float]) -> np.ndarray:
    """Smooth unit-variance value noise of feature size ``cell`` (``(cell_y, cell_x)`` if anisotropic)."""
    cy, cx = (cell, cell) if np.isscalar(cell) else cell
    cy, cx = max(float(cy), 1.0), max(float(cx), 1.0)
    ny, nx = int(np.ceil(s / cy)) + 2, int(np.ceil(s / cx)) + 2
    low = rng.standard_normal((ny, nx)).astype(np.float32)
    size = (max(s, int(round(nx * cx))), max(s, int(round(ny * cy))))
    up = np.asarray(Image.fromarray(low, "F").resize(size, Image.BICUBIC))[:s, :s]
    return (up - up.mean()) / (up.std() + 1e-6)


def _resize2d(a: np.ndarray, s: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((s, s), Image.BILINEAR))


def _plain_background(rng: np.random.Generator, s: int, colour: tuple[float, float, float]) -> np.ndarray:
    c = np.asarray(colour, np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return c * (1.0 + 0.025 * _noise(rng, s, s / 3))[..., None]


def _compose(bg: np.ndarray, obj: np.ndarray, fg: np.ndarray) -> _Scene:
    return _Scene(bg * (1 - fg[..., None]) + obj * fg[..., None], fg, bg)


def _texture_scene(rgb: np.ndarray, rng: np.random.Generator) -> _Scene:
    """A texture fills the frame; missing material reveals a dark backing."""
    s = rgb.shape[0]
    backing = _plain_background(rng, s, tuple(rng.uniform(0.05, 0.12) * np.array([1.0, 0.95, 0.9])))
    return _Scene(rgb, np.ones((s, s), np.float32), backing)


# ----------------------------------------------------------------------------- textures


@lru_cache(maxsize=None)
def _bundled_texture(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), np.float32) / 255.0
    return img.mean(axis=2) if img.ndim == 3 else img


def _photo_texture(rng: np.random.Generator, s: int, name: str, tint: tuple[float, float, float]) -> _Scene:
    """A random crop of a scikit-image texture, flipped/rotated by 180 degrees, colourised."""
    src = _bundled_texture(name)
    c = int(rng.uniform(0.42, 0.6) * src.shape[0])
    y0, x0 = rng.integers(0, src.shape[0] - c + 1, size=2)
    crop = np.rot90(src[y0 : y0 + c, x0 : x0 + c], 2 * int(rng.integers(2)))
    crop = crop[:, ::-1] if rng.random() < 0.5 else crop
    g = _resize2d(np.ascontiguousarray(crop), s)
    g = (g - g.mean()) * rng.uniform(0.9, 1.15) + 0.5
    tint_rgb = np.asarray(tint, np.float32) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    return _texture_scene(g[..., None] * tint_rgb, rng)


def _wood(rng: np.random.Generator, s: int) -> _Scene:
    """Growth rings of a log cut far from its centre, with warped rings and fine fibres."""
    x, y = _grid(s)
    cx, cy = -rng.uniform(1.0, 3.0) * s, rng.uniform(-1.0, 2.0) * s
    r = np.hypot(x - cx, (y - cy) * 0.12) + 7.0 * _noise(rng, s, s / 3)
    t = r / (rng.uniform(10, 17) * s / 256)
    late = np.abs(np.sin(np.pi * t)) ** 8
    tone = 0.62 - 0.3 * late + 0.05 * _noise(rng, s, (20, 1.3)) + 0.05 * _noise(rng, s, s / 5)
    dark, light = np.array([0.36, 0.2, 0.1], np.float32), np.array([0.82, 0.62, 0.4], np.float32)
    rgb = dark + (light - dark) * np.clip(tone, 0, 1)[..., None]
    rgb = np.rot90(rgb, int(rng.integers(4)))
    return _texture_scene(np.ascontiguousarray(rgb), rng)


def _fabric(rng: np.random.Generator, s: int) -> _Scene:
    """Plain weave: warp threads over weft threads in a checkerboard, slightly rotated."""
    x, y = _grid(s)
    a = rng.uniform(-0.08, 0.08)
    p = rng.uniform(7.0, 9.0) * s / 256
    u = (x * np.cos(a) + y * np.sin(a)) / p + rng.uniform(0, 2)
    v = (-x * np.sin(a) + y * np.cos(a)) / p + rng.uniform(0, 2)
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    pu, pv = np.sin(np.pi * (u % 1)) ** 0.6, np.sin(np.pi * (v % 1)) ** 0.6
    tone = np.where(over, pu * (0.7 + 0.3 * pv), pv * (0.7 + 0.3 * pu)) + 0.06 * _noise(rng, s, (1.0, 6.0))
    warp = np.array([0.22, 0.3, 0.55], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    weft = np.array([0.55, 0.58, 0.66], np.float32) * rng.uniform(0.95, 1.05)
    colour = np.where(over[..., None], warp, weft)
    return _texture_scene(colour * (0.35 + 0.75 * tone[..., None]), rng)


# ----------------------------------------------------------------------------- objects


def _centred(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from a jittered object centre."""
    x, y = _grid(s)
    cx, cy = s / 2 + rng.uniform(-0.07, 0.07, 2) * s
    return x - cx, y - cy


def _pill(rng: np.random.Generator, s: int) -> _Scene:
    """A two-colour capsule seen from above, with a bulge shading and a specular streak."""
    dx, dy = _centred(rng, s)
    a = rng.uniform(0, np.pi)
    half, rad = rng.uniform(0.19, 0.23) * s, rng.uniform(0.12, 0.14) * s
    along, across = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    dist = np.hypot(along - np.clip(along, -half, half), across)
    fg = np.clip(rad - dist + 0.5, 0, 1)
    height = np.sqrt(np.clip(1 - (dist / rad) ** 2, 0, 1))
    c1 = np.array([0.85, 0.22, 0.18], np.float32) * rng.uniform(0.95, 1.05)
    c2 = np.array([0.95, 0.93, 0.87], np.float32) * rng.uniform(0.97, 1.03)
    side = np.clip(along / 1.5 + 0.5, 0, 1)[..., None]
    shade = (0.5 + 0.5 * height) * (1 - 0.25 * np.exp(-(along**2) / 2.0))
    spec = 0.35 * np.exp(-((across + 0.4 * rad) ** 2) / (2 * (0.1 * rad) ** 2)) * (np.abs(along) < half)
    obj = (c1 * (1 - side) + c2 * side) * shade[..., None] + spec[..., None]
    return _compose(_plain_background(rng, s, (0.18, 0.2, 0.24)), obj, fg)


def _hex_nut(rng: np.random.Generator, s: int) -> _Scene:
    """A chamfered hexagonal nut with a threaded bore, metallic with machining rings."""
    dx, dy = _centred(rng, s)
    inr, rot = rng.uniform(0.25, 0.29) * s, rng.uniform(0, np.pi / 3)
    angles = rot + np.pi / 3 * np.arange(3)
    hexd = np.max([np.abs(dx * np.cos(b) + dy * np.sin(b)) for b in angles], 0)
    r = np.hypot(dx, dy)
    bore = rng.uniform(0.45, 0.52) * inr
    fg = np.clip(0.5 - np.maximum(hexd - inr, r - 1.12 * inr), 0, 1) * np.clip(r - bore + 0.5, 0, 1)
    tone = 0.58 + 0.03 * np.sin(2 * np.pi * r / rng.uniform(3, 5)) + 0.03 * _noise(rng, s, 3)
    tone += 0.12 * (dx * np.cos(rot * 2) + dy * np.sin(rot * 2)) / inr
    tone = np.where(r < 1.2 * bore, 0.3 + 0.1 * np.sin(2 * np.pi * r / 2.5), tone)
    tone = np.where(r > 1.0 * inr, tone + 0.15, tone)
    obj = np.clip(tone, 0, 1)[..., None] * np.array([0.95, 0.96, 1.0], np.float32)
    return _compose(_plain_background(rng, s, (0.78, 0.74, 0.66)), obj, fg)


def _bottle_cap(rng: np.random.Generator, s: int) -> _Scene:
    """A coloured crown cap from above: knurled rim, groove, dome shading and a printed star."""
    dx, dy = _centred(rng, s)
    rad, th0 = rng.uniform(0.31, 0.35) * s, rng.uniform(0, 2 * np.pi)
    r, th = np.hypot(dx, dy), np.arctan2(dy, dx) - th0
    fg = np.clip(rad * (1 + 0.02 * np.sin(21 * th)) - r + 0.5, 0, 1)
    q = r / rad
    tone = 0.75 + 0.25 * (1 - q**2) - 0.2 * (np.exp(-((q - 0.8) ** 2) / 0.0008))
    tone = np.where(q > 0.88, 0.55 + 0.25 * np.sin(21 * th), tone)
    base = np.array([0.15, 0.35, 0.75], np.float32) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    star = (q < 0.3 * (1 + 0.35 * np.cos(5 * th))) | ((q > 0.42) & (q < 0.47))
    colour = np.where(star[..., None], np.array([0.95, 0.92, 0.6], np.float32), base)
    spec = 0.2 * np.exp(-((dx + 0.3 * rad) ** 2 + (dy + 0.3 * rad) ** 2) / (2 * (0.2 * rad) ** 2))
    obj = colour * tone[..., None] + spec[..., None]
    return _compose(_plain_background(rng, s, (0.85, 0.85, 0.86)), obj, fg)


_RENDERERS = {
    "brick": lambda rng, s: _photo_texture(rng, s, "brick", (1.1, 0.62, 0.5)),
    "gravel": lambda rng, s: _photo_texture(rng, s, "gravel", (1.0, 0.95, 0.85)),
    "wood": _wood,
    "fabric": _fabric,
    "pill": _pill,
    "hex_nut": _hex_nut,
    "bottle_cap": _bottle_cap,
}


def _render_normal(category: str, rng: np.random.Generator, s: int) -> _Scene:
    """A normal scene with random global lighting (gain, gradient) and sensor noise."""
    sc = _RENDERERS[category](rng, s)
    x, y = _grid(s)
    a = rng.uniform(0, 2 * np.pi)
    ramp = ((x - s / 2) * np.cos(a) + (y - s / 2) * np.sin(a)) / s
    gain = rng.uniform(0.88, 1.12) * (1 + rng.uniform(0, 0.15) * ramp)
    noise = 0.008 * rng.standard_normal((s, s, 3), dtype=np.float32)
    light = lambda im: np.clip(im * gain[..., None] + noise, 0, 1).astype(np.float32)  # noqa: E731
    return _Scene(light(sc.image), sc.fg.astype(np.float32), light(sc.backdrop))


# ----------------------------------------------------------------------------- defects

_Defect = tuple[np.ndarray, np.ndarray]  # (alpha [H, W] in [0, 1], layer [H, W, 3])


def _pick(rng: np.random.Generator, weights: np.ndarray, margin: int) -> np.ndarray:
    """A random ``(x, y)`` where ``weights`` is set, at least ``margin`` pixels from the border."""
    margin = max(1, margin)
    w = np.zeros_like(weights, dtype=bool)
    w[margin:-margin, margin:-margin] = weights[margin:-margin, margin:-margin]
    idx = np.flatnonzero(w) if w.any() else np.flatnonzero(np.ones_like(w))
    yy, xx = np.unravel_index(rng.choice(idx), w.shape)
    return np.array([xx, yy], np.float32)


def _line_alpha(s: int, pts: np.ndarray, width: float) -> np.ndarray:
    """Alpha of a polyline of ``width`` pixels through the points ``pts`` (``[n, 2]`` x, y)."""
    line = np.zeros((s, s), bool)
    p = np.clip(np.round(pts).astype(int), 0, s - 1)
    line[p[:, 1], p[:, 0]] = True
    return np.clip(width / 2 + 0.5 - ndimage.distance_transform_edt(~line), 0, 1).astype(np.float32)


def _walk(rng: np.random.Generator, start: np.ndarray, angle: float, n: int, wobble: float) -> np.ndarray:
    ang = angle + np.cumsum(rng.normal(0, wobble, n))
    return start + np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1), 0)


def _scratch(rng: np.random.Generator, sc: _Scene, other: _Scene) -> _Defect:
    """A thin bright or dark curved line (quadratic curve)."""
    s = sc.fg.shape[0]
    mid, a, length = _pick(rng, sc.fg > 0.95, 8), rng.uniform(0, np.pi), rng.uniform(0.2, 0.4) * s
    d, nrm = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    t = np.linspace(-0.5, 0.5, int(3 * length))[:, None]
    pts = mid + t * length * d + (1 - 4 * t**2) * rng.uniform(-0.2, 0.2) * length * nrm
    alpha = _line_alpha(s, pts, max(1.2, rng.uniform(2.0, 3.5) * s / 256)) * sc.fg
    bright = rng.random() < 0.6
    layer = sc.image * 0.35 + rng.uniform(0.55, 0.65) if bright else sc.image * rng.uniform(0.2, 0.4)
    return alpha, layer


def _crack(rng: np.random.Generator, sc: _Scene, other: _Scene) -> _Defect:
    """A dark, branching random walk."""
    s = sc.fg.shape[0]
    n = int(rng.uniform(0.2, 0.35) * s)
    main = _walk(rng, _pick(rng, sc.fg > 0.95, 8), rng.uniform(0, 2 * np.pi), n, 0.25)
    parts = [main]
    for i in rng.choice(n, size=int(rng.integers(1, 4)), replace=False):
        tangent = main[min(i + 1, n - 1)] - main[max(i - 1, 0)]
        a = np.arctan2(tangent[1], tangent[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        parts.append(_walk(rng, main[i], a, int(n * rng.uniform(0.2, 0.5)), 0.3))
    alpha = _line_alpha(s, np.concatenate(parts), max(1.2, rng.uniform(1.6, 2.8) * s / 256)) * sc.fg
    return alpha, sc.image * rng.uniform(0.1, 0.3)


def _hole(rng: np.random.Generator, sc: _Scene, other: _Scene) -> _Defect:
    """A dark ellipse with its far wall lit and a bright rim."""
    s = sc.fg.shape[0]
    x, y = _grid(s)
    c, a = _pick(rng, sc.fg > 0.95, int(0.1 * s)), rng.uniform(0, np.pi)
    rx = rng.uniform(0.025, 0.06) * s
    ry = rx * rng.uniform(0.6, 1.0)
    u = ((x - c[0]) * np.cos(a) + (y - c[1]) * np.sin(a)) / rx
    v = (-(x - c[0]) * np.sin(a) + (y - c[1]) * np.cos(a)) / ry
    q = np.hypot(u, v)
    alpha = np.clip(0.5 - (q - 1) * ry, 0, 1) * sc.fg
    lit = np.clip(-(u * 0.6 + v * 0.8), 0, 1)
    tone = 0.04 + 0.3 * lit**2 * q**2 + 0.25 * ((q > 0.85) & (u * 0.6 + v * 0.8 > 0))
    return alpha, tone[..., None] * (0.7 + 0.3 * sc.image.mean((0, 1)))


_STAIN_COLOURS = np.array([[0.55, 0.3, 0.1], [0.08, 0.08, 0.06], [0.45, 0.5, 0.2], [0.92, 0.9, 0.84]], np.float32)


def _stain(rng: np.random.Generator, sc: _Scene, other: _Scene) -> _Defect:
    """A soft-edged blotch of rust, oil, mould or powder, modulated by the surface."""
    s = sc.fg.shape[0]
    x, y = _grid(s)
    c, rad = _pick(rng, sc.fg > 0.95, 8), rng.uniform(0.04, 0.1) * s
    f = 1 - np.hypot(x - c[0], y - c[1]) / rad + 0.35 * _noise(rng, s, max(2.0, rad / 3))
    alpha = np.clip((f - 0.2) / 0.25, 0, 1) * sc.fg
    lum = sc.image.mean(2, keepdims=True)
    k = rng.uniform(0.6, 0.85)
    colour = _STAIN_COLOURS[rng.integers(len(_STAIN_COLOURS))] * (0.8 + 0.8 * (lum - lum.mean()))
    return alpha, sc.image * (1 - k) + k * colour


def _missing(rng: np.random.Generator, sc: _Scene, other: _Scene) -> _Defect:
    """A chunk of the object (or of the texture) replaced by what lies behind it."""
    s = sc.fg.shape[0]
    x, y = _grid(s)
    is_object = sc.fg.min() < 0.5
    c = _pick(rng, (sc.fg > 0.3) & (sc.fg < 0.7), 8) if is_object else _pick(rng, sc.fg > 0.5, 8)
    rad = rng.uniform(0.06, 0.11 if is_object else 0.08) * s
    region = np.clip(0.5 + rad * (1 - np.hypot(x - c[0], y - c[1]) / rad - 0.25 * _noise(rng, s, rad / 2)), 0, 1)
    return region * sc.fg, sc.backdrop


def _cut_paste(rng: np.random.Generator, sc: _Scene, other: _Scene) -> _Defect:
    """A rotated, re-lit patch of this or another normal image pasted elsewhere."""
    s = sc.fg.shape[0]
    src = other if rng.random() < 0.5 else sc
    h, w = (rng.uniform(0.08, 0.18, 2) * s).astype(int)
    m = max(h, w) // 2 + 1
    sx, sy = _pick(rng, src.fg > 0.95, m).astype(int)
    patch = src.image[sy - h // 2 : sy - h // 2 + h, sx - w // 2 : sx - w // 2 + w]
    patch = np.rot90(patch, int(rng.integers(1, 4)))
    patch = np.clip(patch * rng.uniform(0.85, 1.15), 0, 1)
    ph, pw = patch.shape[:2]
    dx, dy = _pick(rng, sc.fg > 0.95, m).astype(int)
    layer, alpha = sc.image.copy(), np.zeros((s, s), np.float32)
    layer[dy - ph // 2 : dy - ph // 2 + ph, dx - pw // 2 : dx - pw // 2 + pw] = patch
    alpha[dy - ph // 2 : dy - ph // 2 + ph, dx - pw // 2 : dx - pw // 2 + pw] = 1.0
    return alpha, layer


_DEFECTS = {
    "scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain, "missing": _missing, "cut_paste": _cut_paste,
}  # fmt: skip


def _apply_defect(rng: np.random.Generator, kind: str, sc: _Scene, other: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Composite a defect; retry until its area is in :data:`AREA_BOUNDS` and it is visible."""
    s = sc.fg.shape[0]
    for _ in range(100):
        alpha, layer = _DEFECTS[kind](rng, sc, other)
        mask = alpha > 0.5
        frac = mask.mean()
        if not AREA_BOUNDS[0] <= frac <= AREA_BOUNDS[1]:
            continue
        a = alpha[..., None]
        blend = np.clip(sc.image * (1 - a) + layer * a, 0, 1).astype(sc.image.dtype)
        image = np.where(mask[..., None], blend, sc.image)  # bit-identical outside the mask
        if np.abs(image - sc.image)[mask].mean() >= _MIN_CHANGE:
            return image, mask
    raise RuntimeError(f"synthetic generator: could not place a {kind} defect on a {s}px image; report this bug")


# ----------------------------------------------------------------------------- public API


def _all_categories() -> tuple[str, ...]:
    return AUX_CATEGORIES + TARGET_CATEGORIES


def _rng(seed: int, category: str, kind: str, index: int) -> np.random.Generator:
    kind_id = 0 if kind == "good" else 1 + DEFECT_KINDS.index(kind)
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(category.encode()), kind_id, index]))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def render_sample(
    category: str, kind: str | None, *, seed: int, index: int, image_size: int = 256
) -> SyntheticSample:
    """Render one image (``kind`` ``None``/``"good"`` for a normal one), its clean version and its mask."""
    if category not in _RENDERERS:
        raise DatasetError(f"unknown synthetic category {category!r}; available: {', '.join(_all_categories())}")
    kind = "good" if kind is None else kind
    if kind != "good" and kind not in _DEFECTS:
        raise DatasetError(f"unknown defect kind {kind!r}; available: good, {', '.join(DEFECT_KINDS)}")
    rng = _rng(seed, category, kind, index)
    scene = _render_normal(category, rng, image_size)
    clean = _to_uint8(scene.image)
    if kind == "good":
        return SyntheticSample(clean, clean.copy(), np.zeros(clean.shape[:2], bool))
    other = _render_normal(category, rng, image_size) if kind == "cut_paste" else scene
    image, mask = _apply_defect(rng, kind, scene, other)
    return SyntheticSample(_to_uint8(image), clean, mask)


def _cfg_json(cfg: SyntheticConfig) -> dict:
    return json.loads(json.dumps({"generator_version": GENERATOR_VERSION, "config": asdict(cfg)}, sort_keys=True))


def _check_cfg(cfg: SyntheticConfig) -> tuple[str, ...]:
    if cfg.seed < 0 or cfg.image_size < 32 or cfg.n_good < 1 or cfg.n_defect_per_kind < 0:
        raise DatasetError(
            f"bad SyntheticConfig {cfg}: need seed >= 0, image_size >= 32, n_good >= 1, n_defect_per_kind >= 0"
        )
    cats = tuple(cfg.categories) if cfg.categories is not None else _all_categories()
    unknown = [c for c in cats if c not in _RENDERERS]
    if unknown or not cats:
        raise DatasetError(
            f"SyntheticConfig.categories: unknown {unknown or '(empty)'}; available: {', '.join(_all_categories())}"
        )
    return cats


def is_complete(root: Path, cfg: SyntheticConfig) -> bool:
    """Whether ``root`` holds a finished generation of exactly ``cfg`` and this generator version."""
    try:
        marker = json.loads((Path(root) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return {k: marker.get(k) for k in ("generator_version", "config")} == _cfg_json(cfg)


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)


def _write_category(tmp: Path, category: str, cfg: SyntheticConfig) -> dict[str, int]:
    """Render and save one category's images and masks; returns the image count per folder."""
    s, counts, cat = cfg.image_size, {}, tmp / category
    for i in range(cfg.n_good):
        smp = render_sample(category, "good", seed=cfg.seed, index=i, image_size=s)
        _save_png(smp.image, cat / "test" / "good" / f"{i:03d}.png")
    counts["good"] = cfg.n_good
    for kind in DEFECT_KINDS:
        for i in range(cfg.n_defect_per_kind):
            smp = render_sample(category, kind, seed=cfg.seed, index=i, image_size=s)
            _save_png(smp.image, cat / "test" / kind / f"{i:03d}.png")
            _save_png(smp.mask.astype(np.uint8) * 255, cat / "ground_truth" / kind / f"{i:03d}_mask.png")
        counts[kind] = cfg.n_defect_per_kind
    return counts


def generate_synthetic(root: Path, cfg: SyntheticConfig) -> Path:
    """Write the dataset of ``cfg`` to ``root`` in MVTec layout (``<category>/test``, ``ground_truth``).

    Writing goes to a temporary sibling folder renamed to ``root`` at the end, with a marker file
    ``spg_synthetic.json`` (config + generator version). If ``root`` already holds a complete
    generation of the same config it is returned as is. An existing, non-empty ``root`` holding
    anything else is an error (nothing is deleted).
    """
    root = Path(root).expanduser()
    cats = _check_cfg(cfg)
    if is_complete(root, cfg):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(
            f"{root}: exists and is not a synthetic generation of {cfg}; choose an empty or new folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            counts = dict(zip(cats, pool.map(lambda c: _write_category(tmp, c, cfg), cats)))
        (tmp / MARKER_NAME).write_text(json.dumps({**_cfg_json(cfg), "counts": counts}, indent=1, sort_keys=True))
        if root.is_dir():
            root.rmdir()  # empty (checked above); a concurrent writer may have filled it: rmdir then fails
        os.rename(tmp, root)
    except OSError:
        if not is_complete(root, cfg):
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def synthetic_dataset(
    role: str,
    *,
    image_size: int,
    cache_dir: Path,
    cfg: SyntheticConfig = SyntheticConfig(),
    categories: list[str] | None = None,
) -> AnomalyDataset:
    """Generate (once, under ``cache_dir/synthetic/<hash>``) and load the synthetic categories.

    Args:
        role: ``"aux"`` loads :data:`AUX_CATEGORIES`, ``"target"`` loads :data:`TARGET_CATEGORIES`.
        image_size: side of the loaded images (the PNGs are ``cfg.image_size``).
        cache_dir: folder for generated data.
        cfg: generation config.
        categories: load these categories instead of the role's (must be generated by ``cfg``).
    """
    if role not in ("aux", "target"):
        raise DatasetError(f"synthetic role must be 'aux' or 'target', got {role!r}")
    generated = _check_cfg(cfg)
    role_cats = AUX_CATEGORIES if role == "aux" else TARGET_CATEGORIES
    wanted = list(categories) if categories else [c for c in role_cats if c in generated]
    unknown = [c for c in wanted if c not in generated]
    if unknown or not wanted:
        raise DatasetError(
            f"synthetic categories {unknown or wanted} not available; available: {', '.join(generated)}"
        )
    digest = hashlib.sha256(json.dumps(_cfg_json(cfg), sort_keys=True).encode()).hexdigest()[:16]
    root = generate_synthetic(Path(cache_dir).expanduser() / "synthetic" / digest, cfg)
    ds = mvtec_dataset(root, wanted, image_size)
    name = f"synthetic:{role}" if not categories else "synthetic:" + ",".join(wanted)
    return AnomalyDataset(ds.records, image_size, name)
