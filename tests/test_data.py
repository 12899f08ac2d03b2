"""Tests of spg.data: MVTec/VisA loaders, items, errors, specs, concatenation, real data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spg.data import (
    AnomalyDataset,
    DatasetError,
    Record,
    concat_datasets,
    dataset_from_spec,
    mvtec_dataset,
    visa_dataset,
)
from spg.synthetic import AUX_CATEGORIES, TARGET_CATEGORIES, SyntheticConfig

S = 16


def _item(ds: AnomalyDataset, tail: str) -> dict:
    """The item whose image path ends with ``tail`` (e.g. ``"widget/test/good/000.png"``)."""
    i = next(i for i, r in enumerate(ds.records) if r.image_path.as_posix().endswith(tail))
    return ds[i]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ----------------------------------------------------------------------------- MVTec loader


def test_mvtec_records_labels_and_describe(tiny_mvtec_root: Path) -> None:
    ds = mvtec_dataset(tiny_mvtec_root, image_size=S)
    assert ds.categories == ["tile", "widget"]
    assert len(ds) == 6  # .DS_Store and LICENSE are ignored
    assert ds.labels.dtype == np.int64 and ds.labels.tolist().count(1) == 3
    for r in ds.records:
        assert (r.label == 0) == (r.defect == "good") == (r.mask_path is None)
    d = ds.describe()
    assert d["n_images"] == 6 and d["n_anomalous"] == 3
    assert d["categories"]["widget"] == {"good": 2, "anomalous": 2, "defects": {"good": 2, "scratch": 2}}
    assert d["categories"]["tile"]["defects"] == {"good": 1, "crack": 1}


def test_items_shapes_ranges_and_modes(tiny_mvtec_root: Path) -> None:
    ds = mvtec_dataset(tiny_mvtec_root, image_size=S)
    for i in range(len(ds)):
        it = ds[i]
        assert it["image"].shape == (3, S, S) and it["image"].dtype == torch.float32
        assert 0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0
        assert it["mask"].shape == (S, S) and it["mask"].dtype == torch.float32
        assert set(it["mask"].unique().tolist()) <= {0.0, 1.0}
        assert it["index"] == i and it["path"] == str(ds.records[i].image_path)
        assert it["label"] == ds.records[i].label and it["category"] == ds.records[i].category
        if it["label"] == 0:
            assert it["mask"].sum() == 0
        else:
            assert it["mask"].sum() > 0
    grey = _item(ds, "widget/test/good/001.jpg")["image"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    rgba = _item(ds, "widget/test/scratch/000.png")["image"]  # alpha dropped, colour kept
    expected = torch.tensor([200, 100, 50], dtype=torch.float32) / 255
    assert torch.allclose(rgba.mean((1, 2)), expected, atol=1e-4)
    assert torch.allclose(_item(ds, "widget/test/scratch/001.png")["image"], torch.tensor(32768 / 65535), atol=1e-4)


def test_mask_is_bilinear_resize_then_threshold(tiny_mvtec_root: Path) -> None:
    ds = mvtec_dataset(tiny_mvtec_root, image_size=S)
    rec = next(r for r in ds.records if r.image_path.as_posix().endswith("scratch/000.png"))
    src = (np.asarray(Image.open(rec.mask_path)) > 0).astype(np.float32)
    ref = np.asarray(Image.fromarray(src, "F").resize((S, S), Image.BILINEAR)) > 0.5
    nearest = np.asarray(Image.fromarray(src, "F").resize((S, S), Image.NEAREST)) > 0.5
    assert (ref != nearest).any()  # the check below can tell bilinear from nearest
    assert np.abs(np.asarray(Image.fromarray(src, "F").resize((S, S), Image.BILINEAR)) - 0.5).min() > 1e-3  # no ties
    got = _item(ds, "widget/test/scratch/000.png")["mask"].numpy() > 0.5
    assert (got != ref).sum() == 0


def test_dataloader_collates_mixed_sources(tiny_mvtec_root: Path) -> None:
    ds = mvtec_dataset(tiny_mvtec_root, image_size=S)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert batch["image"].shape == (6, 3, S, S) and batch["mask"].shape == (6, S, S)
    assert batch["label"].tolist() == ds.labels.tolist()


def test_subset_and_category_selection(tiny_mvtec_root: Path) -> None:
    ds = mvtec_dataset(tiny_mvtec_root, image_size=S)
    sub = ds.subset(["tile"])
    assert sub.categories == ["tile"] and len(sub) == 2
    assert [r.image_path for r in mvtec_dataset(tiny_mvtec_root, ["tile"], S).records] == [
        r.image_path for r in sub.records
    ]
    with pytest.raises(DatasetError, match="available: tile, widget"):
        ds.subset(["nope"])


def test_fingerprint_stable_and_changes_with_files(tiny_mvtec_copy: Path) -> None:
    ds = mvtec_dataset(tiny_mvtec_copy, image_size=S)
    fp = ds.fingerprint()
    assert len(fp) == 64 and fp == mvtec_dataset(tiny_mvtec_copy, image_size=S).fingerprint()
    assert fp != mvtec_dataset(tiny_mvtec_copy, image_size=S + 1).fingerprint()
    assert fp != ds.subset(["widget"]).fingerprint()
    mask = tiny_mvtec_copy / "tile/ground_truth/crack/b_mask.png"
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert ds.fingerprint() != fp


def test_loading_never_writes(tiny_mvtec_root: Path) -> None:
    before = _tree(tiny_mvtec_root)
    ds = mvtec_dataset(tiny_mvtec_root, image_size=S)
    [ds[i] for i in range(len(ds))]
    ds.fingerprint()
    assert _tree(tiny_mvtec_root) == before


# ----------------------------------------------------------------------------- errors


def test_error_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as e:
        mvtec_dataset(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(e.value)


def test_error_single_category_folder_hint(tiny_mvtec_root: Path) -> None:
    with pytest.raises(DatasetError, match="looks like one category folder"):
        mvtec_dataset(tiny_mvtec_root / "widget")


def test_error_unknown_category_lists_found(tiny_mvtec_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"bottle not found; available: tile, widget"):
        mvtec_dataset(tiny_mvtec_root, ["bottle"])


def test_error_empty_category(tiny_mvtec_copy: Path) -> None:
    (tiny_mvtec_copy / "empty/test/good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no images") as e:
        mvtec_dataset(tiny_mvtec_copy)
    assert str(tiny_mvtec_copy / "empty" / "test") in str(e.value)


def test_error_anomaly_without_mask(tiny_mvtec_copy: Path) -> None:
    (tiny_mvtec_copy / "tile/ground_truth/crack/b_mask.png").unlink()
    with pytest.raises(DatasetError, match="without a mask") as e:
        mvtec_dataset(tiny_mvtec_copy)
    assert str(tiny_mvtec_copy / "tile/test/crack/b.tif") in str(e.value)


def test_error_mask_size_mismatch(tiny_mvtec_copy: Path) -> None:
    mask = tiny_mvtec_copy / "tile/ground_truth/crack/b_mask.png"
    Image.fromarray(np.zeros((31, 30), np.uint8)).save(mask)
    ds = mvtec_dataset(tiny_mvtec_copy, ["tile"], S)
    with pytest.raises(DatasetError, match="differs from its image") as e:
        _item(ds, "tile/test/crack/b.tif")
    assert str(mask) in str(e.value)


@pytest.mark.parametrize("victim", ["tile/test/good/a.bmp", "tile/ground_truth/crack/b_mask.png"])
def test_error_corrupt_file(tiny_mvtec_copy: Path, victim: str) -> None:
    path = tiny_mvtec_copy / victim
    path.write_bytes(b"this is not an image")
    ds = mvtec_dataset(tiny_mvtec_copy, ["tile"], S)
    with pytest.raises(DatasetError, match="corrupt") as e:
        [ds[i] for i in range(len(ds))]
    assert str(path) in str(e.value)


def test_error_file_removed_after_build(tiny_mvtec_copy: Path) -> None:
    ds = mvtec_dataset(tiny_mvtec_copy, ["tile"], S)
    (tiny_mvtec_copy / "tile/test/good/a.bmp").unlink()
    with pytest.raises(DatasetError, match="a.bmp: image file not found"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(DatasetError, match="a.bmp"):
        ds.fingerprint()


def test_error_record_validation() -> None:
    with pytest.raises(DatasetError, match="without a mask"):
        AnomalyDataset([Record(Path("x.png"), None, 1, "c", "d")], 8, "n")
    with pytest.raises(DatasetError, match="no images"):
        AnomalyDataset([], 8, "n")


# ----------------------------------------------------------------------------- VisA


def _tiny_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        base = root / obj / "Data"
        for sub in ("Images/Normal", "Images/Anomaly", "Masks/Anomaly"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for i, split in enumerate(("train", "test")):
            Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(base / f"Images/Normal/{i}.JPG")
            rows.append(f"{obj},{split},normal,{obj}/Data/Images/Normal/{i}.JPG,")
        Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(base / "Images/Anomaly/5.JPG")
        Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), ((4, 4), (6, 6)))).save(base / "Masks/Anomaly/5.png")
        rows.append(f"{obj},test,anomaly,{obj}/Data/Images/Anomaly/5.JPG,{obj}/Data/Masks/Anomaly/5.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_loader(tmp_path: Path) -> None:
    root = _tiny_visa(tmp_path / "visa")
    ds = visa_dataset(root, image_size=S)
    assert ds.categories == ["candle", "pcb1"] and len(ds) == 4
    assert sorted({r.defect for r in ds.records}) == ["anomaly", "good"]
    it = ds[[r.label for r in ds.records].index(1)]
    assert it["mask"].sum() > 0 and it["image"].shape == (3, S, S)
    assert len(visa_dataset(root, ["pcb1"], S)) == 2
    assert len(visa_dataset(root, image_size=S, split="train")) == 2


def test_visa_errors(tmp_path: Path) -> None:
    root = _tiny_visa(tmp_path / "visa")
    with pytest.raises(DatasetError, match="split csv not found"):
        visa_dataset(root, split_csv="split_csv/2cls.csv")
    (root / "split_csv/1cls.csv").write_text("object,split,label,image\ncandle,test,normal,x.JPG\n")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) mask") as e:
        visa_dataset(root)
    assert "1cls.csv" in str(e.value)


# ----------------------------------------------------------------------------- specs


SMALL_SYN = SyntheticConfig(n_good=1, n_defect_per_kind=1)


def test_spec_mvtec_and_visa_forms(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    kw = {"role": "aux", "image_size": S, "cache_dir": tmp_path / "cache"}
    assert dataset_from_spec(f"mvtec:{tiny_mvtec_root}", **kw).categories == ["tile", "widget"]
    assert dataset_from_spec(f"mvtec:{tiny_mvtec_root}:widget", **kw).categories == ["widget"]
    assert dataset_from_spec(f"mvtec:{tiny_mvtec_root}:widget,tile", **kw).categories == ["tile", "widget"]
    visa = _tiny_visa(tmp_path / "visa")
    assert dataset_from_spec(f"visa:{visa}", **kw).categories == ["candle", "pcb1"]
    assert dataset_from_spec(f"visa:{visa}:pcb1", **kw).categories == ["pcb1"]


def test_spec_root_with_colon(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    odd = Path(shutil.copytree(tiny_mvtec_root, tmp_path / "data:v2"))
    kw = {"role": "target", "image_size": S, "cache_dir": tmp_path / "cache"}
    assert dataset_from_spec(f"mvtec:{odd}", **kw).categories == ["tile", "widget"]
    assert dataset_from_spec(f"mvtec:{odd}:tile", **kw).categories == ["tile"]


def test_spec_synthetic_forms(tmp_path: Path) -> None:
    kw = {"image_size": S, "cache_dir": tmp_path, "synthetic": SMALL_SYN}
    assert dataset_from_spec("synthetic", role="aux", **kw).categories == sorted(AUX_CATEGORIES)
    assert dataset_from_spec("synthetic", role="target", **kw).categories == sorted(TARGET_CATEGORIES)
    both = dataset_from_spec(f"synthetic:{AUX_CATEGORIES[0]},{TARGET_CATEGORIES[0]}", role="target", **kw)
    assert both.categories == sorted([AUX_CATEGORIES[0], TARGET_CATEGORIES[0]])
    assert len(list((tmp_path / "synthetic").iterdir())) == 1  # one generation, shared by all three


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "accepted forms"),
        ("imagenet:/x", "accepted forms"),
        ("mvtec", "accepted forms"),
        ("mvtec:", "accepted forms"),
        ("synthetic:", "empty category list"),
        ("synthetic:nope", "not available"),
        ("mvtec:/definitely/absent", "does not exist"),
    ],
)
def test_spec_errors(spec: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=match):
        dataset_from_spec(spec, role="aux", image_size=S, cache_dir=tmp_path, synthetic=SMALL_SYN)


def test_spec_errors_trailing_colon_and_role(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="ends with ':'"):
        dataset_from_spec(f"mvtec:{tiny_mvtec_root}:", role="aux", image_size=S, cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="role"):
        dataset_from_spec(f"mvtec:{tiny_mvtec_root}", role="train", image_size=S, cache_dir=tmp_path)


def test_concat(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    a = mvtec_dataset(tiny_mvtec_root, ["widget"], S)
    b = mvtec_dataset(tiny_mvtec_root, ["tile"], S)
    ab = concat_datasets([a, b])
    assert ab.categories == ["tile", "widget"] and len(ab) == len(a) + len(b)
    with pytest.raises(DatasetError, match="'widget' comes from both"):
        concat_datasets([a, mvtec_dataset(tiny_mvtec_root, image_size=S)])
    with pytest.raises(DatasetError, match="image sizes differ"):
        concat_datasets([a, mvtec_dataset(tiny_mvtec_root, ["tile"], S + 1)])


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_metal_plate_counts(real_data_root: Path) -> None:
    ds = mvtec_dataset(real_data_root, ["metal_plate"], image_size=32)
    assert (len(ds) - int(ds.labels.sum()), int(ds.labels.sum())) == (80, 81)
    it = ds[int(np.argmax(ds.labels))]
    assert it["mask"].sum() > 0


@pytest.mark.realdata
def test_real_magnetic_tile_grey_to_rgb(real_data_root: Path) -> None:
    ds = mvtec_dataset(real_data_root, ["magnetic_tile"], image_size=32)
    it = ds[0]
    assert it["image"].shape == (3, 32, 32)
    assert torch.equal(it["image"][0], it["image"][2])


@pytest.mark.realdata
def test_real_every_anomaly_has_matching_mask(real_data_root: Path) -> None:
    ds = mvtec_dataset(real_data_root, image_size=32)
    assert {"ball_screw", "magnetic_tile", "metal_plate"} <= set(ds.categories)
    for r in ds.records:
        if r.label == 1:
            with Image.open(r.image_path) as im, Image.open(r.mask_path) as m:
                assert im.size == m.size, r.mask_path
