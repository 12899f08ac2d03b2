"""Datasets: MVTec-layout and VisA-layout loaders, dataset specs, concatenation.

Every dataset is an :class:`AnomalyDataset` over a list of :class:`Record` s. Items are
dictionaries with an RGB image tensor ``[3, S, S]`` in ``[0, 1]`` and a binary mask ``[S, S]``
(the ground-truth mask resized bilinearly to ``S x S`` and binarised at 0.5, SPG_METHOD.md §4).

Problems with the user's files raise :class:`DatasetError`, whose message names the file or
folder, the problem and the fix. Nothing here ever writes to or deletes a user's file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from spg.synthetic import SyntheticConfig

__all__ = [
    "DatasetError", "Record", "AnomalyDataset", "IMAGE_EXTENSIONS", "mvtec_dataset", "visa_dataset",
    "dataset_from_spec", "concat_datasets",
]  # fmt: skip

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""File extensions (lower case) recognised as images."""

_MVTEC_LAYOUT = (
    "<root>/<category>/test/good/<name>.png and <root>/<category>/test/<defect>/<name>.png "
    "with masks <root>/<category>/ground_truth/<defect>/<name>_mask.png"
)
_SPEC_FORMS = (
    "'synthetic', 'synthetic:cat1,cat2', 'mvtec:ROOT', 'mvtec:ROOT:cat1,cat2', "
    "'visa:ROOT', 'visa:ROOT:cat1,cat2'"
)
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


class DatasetError(ValueError):
    """A dataset folder, file or spec is unusable; the message says which one, why, and the fix."""


@dataclass(frozen=True)
class Record:
    """One image of a dataset.

    Attributes:
        image_path: path of the image file.
        mask_path: path of the binary ground-truth mask, ``None`` for normal images.
        label: 0 for normal, 1 for anomalous.
        category: object/texture category, e.g. ``"bottle"``.
        defect: defect type; ``"good"`` for normal images.
    """

    image_path: Path
    mask_path: Path | None
    label: int
    category: str
    defect: str


class AnomalyDataset(torch.utils.data.Dataset):
    """Images with labels and pixel masks, resized to ``image_size x image_size``.

    Args:
        records: the images, in a fixed order (item ``i`` is ``records[i]``).
        image_size: side ``S`` of the square output images and masks.
        name: a short human-readable name (used in reports and in :meth:`fingerprint`).
    """

    def __init__(self, records: list[Record], image_size: int, name: str) -> None:
        if not isinstance(image_size, int) or image_size < 1:
            raise DatasetError(f"dataset {name!r}: image_size must be a positive int, got {image_size!r}")
        if not records:
            raise DatasetError(f"dataset {name!r} has no images; point it at a folder that holds images")
        for rec in records:
            if rec.label not in (0, 1):
                raise DatasetError(f"{rec.image_path}: label must be 0 or 1, got {rec.label!r}")
            if rec.label == 1 and rec.mask_path is None:
                raise DatasetError(f"{rec.image_path}: anomalous image without a mask; add its mask")
        self.records: list[Record] = list(records)
        self.image_size: int = image_size
        self.name: str = name

    @property
    def categories(self) -> list[str]:
        """Sorted unique category names."""
        return sorted({r.category for r in self.records})

    @property
    def labels(self) -> np.ndarray:
        """Image labels, int64 ``[N]`` (0 normal, 1 anomalous)."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        """Load item ``i``: image ``[3,S,S]``, mask ``[S,S]``, label, category, defect, path, index."""
        rec = self.records[i]
        image, size = _read_image(rec.image_path)
        if rec.mask_path is not None:
            mask = _read_mask(rec.mask_path, size, rec.image_path)
        else:
            mask = np.zeros((size[1], size[0]), dtype=np.float32)
        s = self.image_size
        img_t = _resize(torch.from_numpy(image).permute(2, 0, 1), s).clamp_(0.0, 1.0)
        mask_t = (_resize(torch.from_numpy(mask)[None], s)[0] > 0.5).float()
        return {
            "image": img_t.contiguous(),
            "mask": mask_t,
            "label": int(rec.label),
            "category": rec.category,
            "defect": rec.defect,
            "path": str(rec.image_path),
            "index": int(i) % len(self.records),
        }

    def subset(self, categories: list[str]) -> "AnomalyDataset":
        """A dataset with only the records of ``categories`` (order of records is kept)."""
        wanted = _as_list(categories)
        _check_categories(wanted, self.categories, f"dataset {self.name!r}")
        keep = set(wanted)
        return AnomalyDataset([r for r in self.records if r.category in keep], self.image_size, self.name)

    def sample(self, per_category: int, seed: int = 0) -> "AnomalyDataset":
        """At most ``per_category`` images of each category, drawn at random (``seed``) with the
        category's share of anomalous images kept (rounded); record order is kept. The name gains
        ``@per_category`` so the sample is never mistaken for the whole dataset."""
        if not isinstance(per_category, int) or per_category < 2:
            raise DatasetError(f"per_category must be an int >= 2 (one good, one anomalous image), got {per_category!r}")
        rng = np.random.default_rng(seed)
        keep: set[int] = set()
        for cat in self.categories:
            idx = np.array([i for i, r in enumerate(self.records) if r.category == cat])
            if len(idx) <= per_category:
                keep.update(idx.tolist())
                continue
            anomalous = idx[self.labels[idx] == 1]
            n_anom = int(round(per_category * len(anomalous) / len(idx)))
            for group, n in ((anomalous, n_anom), (idx[self.labels[idx] == 0], per_category - n_anom)):
                keep.update(rng.choice(group, size=min(n, len(group)), replace=False).tolist())
        records = [r for i, r in enumerate(self.records) if i in keep]
        return AnomalyDataset(records, self.image_size, f"{self.name}@{per_category}")

    def fingerprint(self) -> str:
        """SHA-256 over name, size and each file's relative path, size and mtime (no full reads)."""
        paths = [p for r in self.records for p in (r.image_path, r.mask_path) if p is not None]
        base = Path(os.path.commonpath([str(Path(p).absolute().parent) for p in paths]))
        h = hashlib.sha256(json.dumps([self.name, self.image_size]).encode())
        for rec in self.records:
            h.update(f"|{rec.label}|{rec.category}|{rec.defect}".encode())
            for p in (rec.image_path, rec.mask_path):
                if p is None:
                    h.update(b"|-")
                    continue
                st = _stat(p)
                rel = os.path.relpath(Path(p).absolute(), base)
                h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        """JSON-able summary: name, size, counts, and per category good/anomalous/defect counts."""
        cats: dict[str, dict] = {}
        for rec in self.records:
            c = cats.setdefault(rec.category, {"good": 0, "anomalous": 0, "defects": {}})
            c["anomalous" if rec.label else "good"] += 1
            c["defects"][rec.defect] = c["defects"].get(rec.defect, 0) + 1
        n_anom = int(self.labels.sum())
        return {
            "name": self.name,
            "image_size": self.image_size,
            "n_images": len(self),
            "n_good": len(self) - n_anom,
            "n_anomalous": n_anom,
            "categories": {k: cats[k] for k in sorted(cats)},
        }

    def __repr__(self) -> str:
        return f"AnomalyDataset(name={self.name!r}, n={len(self)}, categories={self.categories})"


# ----------------------------------------------------------------------------- image reading


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: file not found; it was listed when the dataset was built - restore it or rebuild the dataset"
        ) from None


def _open(path: Path, what: str) -> Image.Image:
    """Open and decode an image file, mapping every failure to :class:`DatasetError`."""
    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: {what} file not found; restore it, or remove its image from the dataset folder"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"{path}: cannot read this {what} file ({exc}); it is corrupt or not an image - "
            "re-export it as PNG/JPG or remove it from the dataset folder"
        ) from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """float32 ``[H, W, 3]`` in [0, 1]: grey repeated, alpha dropped, 16-bit scaled by 65535."""
    if im.mode.startswith("I"):  # 16/32-bit integer grey (16-bit PNG opens as I;16 or I)
        arr = np.asarray(im, dtype=np.float32) / 65535.0
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        arr = arr if arr.max(initial=0.0) <= 1.0 else arr / 65535.0
    else:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0))


def _read_image(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as float RGB; returns the array and the PIL size ``(W, H)``."""
    im = _open(path, "image")
    try:
        return _to_rgb(im), im.size
    finally:
        im.close()


def _read_mask(path: Path, image_size: tuple[int, int], image_path: Path) -> np.ndarray:
    """Read a mask as float ``{0, 1}`` ``[H, W]`` (any non-zero pixel is defect)."""
    im = _open(path, "mask")
    try:
        if im.size != image_size:
            raise DatasetError(
                f"{path}: mask size {im.size[0]}x{im.size[1]} differs from its image {image_path} "
                f"({image_size[0]}x{image_size[1]}); resize the mask (nearest-neighbour) to the image size"
            )
        if im.mode not in ("1", "L") and not im.mode.startswith("I") and im.mode != "F":
            im = im.convert("L")
        return (np.asarray(im) > 0).astype(np.float32)
    finally:
        im.close()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased, ``align_corners=False``) resize of ``[C, H, W]`` to ``[C, S, S]``."""
    if x.shape[-2:] == (size, size):
        return x.float()
    y = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y[0]


# ----------------------------------------------------------------------------- folder loaders


def _as_list(categories: Iterable[str] | str | None) -> list[str] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        categories = categories.split(",")
    out = [c.strip() for c in categories if c.strip()]
    return out


def _check_categories(wanted: Sequence[str], found: Sequence[str], where: str) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DatasetError(
            f"{where}: categor{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} not found; "
            f"available: {', '.join(found) or '(none)'} - fix the category names"
        )
    if not wanted:
        raise DatasetError(f"{where}: empty category list; give at least one of {', '.join(found)}")


def _check_root(root: str | os.PathLike, kind: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"{path}: {kind} dataset root does not exist or is not a folder; "
            "pass the folder that contains the category folders"
        )
    return path


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _find_mask(gt_dir: Path, image: Path) -> Path | None:
    """The MVTec mask of ``image``: ``<stem>_mask.png`` (or another image extension, or ``<stem>.png``)."""
    names = [f"{image.stem}_mask.png"] + [f"{image.stem}_mask{e}" for e in sorted(IMAGE_EXTENSIONS)]
    names.append(f"{image.stem}.png")
    for name in names:
        if (gt_dir / name).is_file():
            return gt_dir / name
    return None


def _mvtec_category(cat_dir: Path, split: str) -> list[Record]:
    """Records of one MVTec category folder; every anomalous image must have its mask."""
    records: list[Record] = []
    split_dir = cat_dir / split
    for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        defect = defect_dir.name
        for img in _images_in(defect_dir):
            if defect == "good":
                records.append(Record(img, None, 0, cat_dir.name, defect))
                continue
            mask = _find_mask(cat_dir / "ground_truth" / defect, img)
            if mask is None:
                expected = cat_dir / "ground_truth" / defect / f"{img.stem}_mask.png"
                raise DatasetError(
                    f"{img}: anomalous image without a mask (expected {expected}); "
                    "add the mask, or move the image out of the defect folder"
                )
            records.append(Record(img, mask, 1, cat_dir.name, defect))
    if not records:
        raise DatasetError(
            f"{split_dir}: category {cat_dir.name!r} has no images; expected {_MVTEC_LAYOUT} "
            "(extensions: " + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")"
        )
    return records


def mvtec_dataset(
    root: str | os.PathLike,
    categories: list[str] | None = None,
    image_size: int = 448,
    split: str = "test",
) -> AnomalyDataset:
    """Load an MVTec-AD-layout dataset.

    Args:
        root: folder holding ``<category>/<split>/...`` folders.
        categories: category names to load; ``None`` loads every sub-folder that has ``<split>/``.
        image_size: side of the square output images.
        split: ``"test"`` (labelled, with masks; the default) or ``"train"`` (normal only).
    """
    path = _check_root(root, "MVTec")
    found = sorted(d.name for d in path.iterdir() if d.is_dir() and (d / split).is_dir())
    if not found:
        hint = (
            f"; {path} itself looks like one category folder - pass its parent {path.parent} "
            f"and categories=[{path.name!r}]"
            if (path / split).is_dir()
            else ""
        )
        raise DatasetError(f"{path}: no category folder with a '{split}/' sub-folder; expected {_MVTEC_LAYOUT}{hint}")
    wanted = _as_list(categories)
    if wanted is None:
        wanted = found
    _check_categories(wanted, found, f"MVTec root {path}")
    records = [r for c in wanted for r in _mvtec_category(path / c, split)]
    return AnomalyDataset(records, image_size, f"mvtec:{path.name}")


def _read_visa_csv(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise DatasetError(
            f"{csv_path}: VisA split csv not found; VisA ships it as split_csv/1cls.csv under the dataset "
            "root - point ROOT at that folder or pass split_csv=<path relative to root>"
        )
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read the VisA csv ({exc}); restore the file") from None
    missing = [c for c in _VISA_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"{csv_path}: VisA csv lacks column(s) {', '.join(missing)} (has {', '.join(header) or 'none'}); "
            f"it needs the columns {', '.join(_VISA_COLUMNS)} like VisA's split_csv/1cls.csv"
        )
    return rows


def _visa_record(root: Path, csv_path: Path, row: dict[str, str], line: int) -> Record:
    label = {"normal": 0, "anomaly": 1}.get(row["label"].lower())
    if label is None:
        raise DatasetError(f"{csv_path} line {line}: label {row['label']!r} must be 'normal' or 'anomaly'")
    image = root / row["image"]
    if not image.is_file():
        raise DatasetError(f"{image}: image listed in {csv_path} line {line} not found; restore it or fix the csv")
    mask = root / row["mask"] if row["mask"] else None
    if label == 1 and (mask is None or not mask.is_file()):
        raise DatasetError(
            f"{mask or image}: mask of anomalous image {image} ({csv_path} line {line}) not found; "
            "add the mask or fix the csv 'mask' column"
        )
    return Record(image, mask, label, row["object"], "anomaly" if label else "good")


def visa_dataset(
    root: str | os.PathLike,
    categories: list[str] | None = None,
    image_size: int = 448,
    split_csv: str = "split_csv/1cls.csv",
    split: str = "test",
) -> AnomalyDataset:
    """Load a VisA-layout dataset from its split csv (columns ``object,split,label,image,mask``).

    Paths in the csv are relative to ``root``; anomalies get the defect type ``"anomaly"``.
    """
    path = _check_root(root, "VisA")
    csv_path = path / split_csv
    rows = _read_visa_csv(csv_path)
    found = sorted({r["object"] for r in rows if r["split"].lower() == split.lower()})
    if not found:
        raise DatasetError(f"{csv_path}: no rows with split {split!r}; use one of the csv's split values")
    wanted = _as_list(categories)
    wanted = found if wanted is None else wanted
    _check_categories(wanted, found, f"VisA csv {csv_path}")
    keep = set(wanted)
    records = [
        _visa_record(path, csv_path, row, n + 2)
        for n, row in enumerate(rows)
        if row["split"].lower() == split.lower() and row["object"] in keep
    ]
    return AnomalyDataset(records, image_size, f"visa:{path.name}")


# ----------------------------------------------------------------------------- specs


_CATEGORY_LIST = re.compile(r"^[\w.\-]+(,[\w.\-]+)*$")


def _split_root_and_categories(rest: str) -> tuple[str, list[str] | None]:
    """Split ``ROOT[:cat1,cat2]``.

    The text after the LAST ``':'`` is a category list only when it looks like one (names of
    letters, digits, ``_ . -`` separated by commas, no path separators) and the whole text is not
    an existing folder. So ``C:\\data\\mvtec`` and an existing folder ``/data/a:b`` are roots.
    """
    head, sep, tail = rest.rpartition(":")
    if not sep or Path(rest).expanduser().is_dir():
        return rest, None
    if tail == "":
        raise DatasetError(f"dataset spec root {rest!r} ends with ':' but no categories; drop the ':' or list them")
    if head and _CATEGORY_LIST.match(tail):
        return head, tail.split(",")
    return rest, None


def dataset_from_spec(
    spec: str,
    *,
    role: str,
    image_size: int,
    cache_dir: Path,
    seed: int | None = None,
    synthetic: "SyntheticConfig | None" = None,
) -> AnomalyDataset:
    """Build a dataset from a command-line spec.

    Accepted forms: ``synthetic`` (the synthetic categories of ``role``, ``"aux"`` or ``"target"``),
    ``synthetic:cat1,cat2``, ``mvtec:ROOT``, ``mvtec:ROOT:cat1,cat2``, ``visa:ROOT``,
    ``visa:ROOT:cat1,cat2``. A ROOT may contain ``':'``: the text after the last ``':'`` is read
    as a category list only if it looks like one (``[A-Za-z0-9_.-]`` names separated by commas)
    and ``ROOT:tail`` as a whole is not an existing folder.

    Synthetic data is generated (once) under ``cache_dir`` from ``synthetic`` (default
    ``SyntheticConfig()``), whose seed is replaced by ``seed`` when that is given.
    """
    if role not in ("aux", "target"):
        raise DatasetError(f"dataset role must be 'aux' or 'target', got {role!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"empty dataset spec; accepted forms: {_SPEC_FORMS}")
    kind, sep, rest = spec.strip().partition(":")
    if kind == "synthetic":
        from spg.synthetic import SyntheticConfig, synthetic_dataset

        cfg = synthetic if synthetic is not None else SyntheticConfig()
        cfg = cfg if seed is None else replace(cfg, seed=seed)
        cats = _as_list(rest) if sep else None
        if sep and not cats:
            raise DatasetError(f"dataset spec {spec!r}: empty category list; accepted forms: {_SPEC_FORMS}")
        return synthetic_dataset(
            role, image_size=image_size, cache_dir=Path(cache_dir), cfg=cfg, categories=cats
        )
    if kind in ("mvtec", "visa") and rest:
        root, cats = _split_root_and_categories(rest)
        loader = mvtec_dataset if kind == "mvtec" else visa_dataset
        return loader(root, categories=cats, image_size=image_size)
    raise DatasetError(f"bad dataset spec {spec!r}; accepted forms: {_SPEC_FORMS}")


def concat_datasets(datasets: list[AnomalyDataset]) -> AnomalyDataset:
    """Concatenate datasets (e.g. several ``--aux`` specs); category names must not collide."""
    if not datasets:
        raise DatasetError("concat_datasets: no datasets given; pass at least one")
    sizes = {d.image_size for d in datasets}
    if len(sizes) > 1:
        raise DatasetError(f"concat_datasets: image sizes differ ({sorted(sizes)}); build all with one image_size")
    owner: dict[str, str] = {}
    for d in datasets:
        for c in d.categories:
            if c in owner:
                raise DatasetError(
                    f"category {c!r} comes from both {owner[c]!r} and {d.name!r}; "
                    "select disjoint categories (ROOT:cat1,cat2) or rename one folder"
                )
            owner[c] = d.name
    if len(datasets) == 1:
        return datasets[0]
    records = [r for d in datasets for r in d.records]
    return AnomalyDataset(records, datasets[0].image_size, "+".join(d.name for d in datasets))
