"""mafs_ros.train.data: dataset layouts, label-derived maps, Stage-I masks, joint augmentation and the dataset.

Every dataset folder is built in tmp_path from tiles of the repository's real MSRS sample pairs (the MFNet
4-channel RGBT PNGs too), so that nothing here needs data outside the repository.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mafs_ros.class_sets import FMB, MFNET, PST900
from mafs_ros.io.images import load_pair
from mafs_ros.io.layouts import MAX_LISTED_PROBLEMS, DatasetError, PairFiles, detect_layout, discover_pairs
from mafs_ros.train.data import (
    ROTATIONS,
    FusionSegDataset,
    blank_modality,
    apply_masks,
    derive_maps,
    flip,
    grid_masks,
    joint_augment,
    label_pixel_counts,
    paste_classes,
    repeat_rare_frames,
    rotate,
    salient_class_ids,
    scene_augment,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
FIXTURE = REPO / "test" / "fixtures" / "msrs_sample"
STEMS = ("00587D", "00702N", "01000N")  # 00702N is the sample with a real (MFNet) label
TILE = (slice(160, 224), slice(240, 320))  # 64x80 pixels: keeps the written datasets small and fast

ITEM_KEYS = {"vi", "ir", "label", "has_label", "bi", "bd", "mask", "name"}
STAGE1_KEYS = {"vi_masked", "ir_masked", "m1", "m2"}


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(stem, visible RGB uint8, infrared uint8, label uint8) 64x80 tiles of three real pairs. The label is the
    real one for 00702N and a stand-in (infrared quantised to classes 0..2) for the others."""
    out = []
    for stem in STEMS:
        vi = cv2.cvtColor(cv2.imread(str(SAMPLE / "vi" / f"{stem}.png")), cv2.COLOR_BGR2RGB)[TILE]
        ir = cv2.imread(str(SAMPLE / "ir" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)[TILE]
        label_file = SAMPLE / "label" / f"{stem}.png"
        label = cv2.imread(str(label_file), cv2.IMREAD_UNCHANGED)[TILE] if label_file.exists() else ir // 86
        out.append((stem, np.ascontiguousarray(vi), np.ascontiguousarray(ir), np.ascontiguousarray(label)))
    return out


def _write(path: Path, image: np.ndarray) -> None:
    """Write an RGB (H, W, 3), RGBT (H, W, 4) or single-channel image; cv2 wants B, G, R(, A) order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = np.concatenate([image[:, :, 2::-1], image[:, :, 3:]], axis=2)
    assert cv2.imwrite(str(path), image)


def _make_split_layout(root: Path, folders: tuple[str, str, str], samples, splits=("train", "test")) -> None:
    """ROOT/<split>/<visible>/, <infrared>/, <label>/ with every sample."""
    for split in splits:
        for stem, vi, ir, label in samples:
            for folder, image in zip(folders, (vi, ir, label)):
                _write(root / split / folder / f"{stem}.png", image)


def _make_mfnet(root: Path, samples, lists: dict[str, str]) -> None:
    """ROOT/images/ (4-channel R, G, B, thermal), ROOT/labels/ and one split list per entry of `lists`."""
    for stem, vi, ir, label in samples:
        _write(root / "images" / f"{stem}.png", np.dstack([vi, ir]))
        _write(root / "labels" / f"{stem}.png", label)
    for split, text in lists.items():
        (root / f"{split}.txt").write_text(text)


def _make_pairs(root: Path, samples, label_stems=()) -> None:
    """ROOT/ir/, ROOT/vi/ and, for label_stems only, ROOT/label/."""
    for stem, vi, ir, label in samples:
        _write(root / "vi" / f"{stem}.png", vi)
        _write(root / "ir" / f"{stem}.png", ir)
        if stem in label_stems:
            _write(root / "label" / f"{stem}.png", label)


# ---------------------------------------------------------------------------------------------------------
# Discovery


@pytest.mark.parametrize(
    "folders, layout, detected",
    [
        (("vi", "ir", "Segmentation_labels"), "msrs", "msrs"),
        (("vi", "ir", "label"), "msrs", "msrs"),
        (("Visible", "Infrared", "Label"), "fmb", "fmb"),
        # FMB with lowercase folders is indistinguishable from MSRS and reads the same either way.
        (("vi", "ir", "label"), "fmb", "msrs"),
        (("rgb", "thermal", "labels"), "pst900", "pst900"),
    ],
)
def test_discover_split_folder_layouts(tmp_path, samples, folders, layout, detected):
    _make_split_layout(tmp_path, folders, samples)
    assert detect_layout(tmp_path) == detected
    for split in ("train", "test"):
        pairs = discover_pairs(tmp_path, layout, split)
        assert [p.stem for p in pairs] == sorted(STEMS)
        for p in pairs:
            assert p.vi == tmp_path / split / folders[0] / f"{p.stem}.png"
            assert p.ir == tmp_path / split / folders[1] / f"{p.stem}.png"
            assert p.label == tmp_path / split / folders[2] / f"{p.stem}.png"
            assert p.rgbt is None
        assert discover_pairs(tmp_path, "auto", split) == pairs


def test_discover_mfnet_split_lists(tmp_path, samples):
    _make_mfnet(
        tmp_path,
        samples,
        {"train": "01000N\n00587D\n", "val": "# validation\n\n00702N.png\n", "test": "00587D\n"},
    )
    assert detect_layout(tmp_path) == "mfnet"
    train = discover_pairs(tmp_path, "mfnet", "train")
    assert [p.stem for p in train] == ["01000N", "00587D"]  # the list's order
    assert train[0] == PairFiles(
        "01000N", rgbt=tmp_path / "images" / "01000N.png", label=tmp_path / "labels" / "01000N.png"
    )
    assert [p.stem for p in discover_pairs(tmp_path, "auto", "val")] == ["00702N"]
    assert [p.stem for p in discover_pairs(tmp_path, "auto", "test")] == ["00587D"]


def test_mfnet_rgbt_channels_are_read_as_rgb_and_thermal(tmp_path, samples):
    _make_mfnet(tmp_path, samples, {"train": "\n".join(STEMS)})
    dataset = FusionSegDataset(discover_pairs(tmp_path), crop_size=None, augment="none")
    for (stem, vi, ir, label), item in zip(samples, dataset):
        assert item["name"] == stem
        np.testing.assert_allclose(item["vi"].numpy(), vi.transpose(2, 0, 1) / 255.0, atol=1e-7)
        np.testing.assert_allclose(item["ir"][0].numpy(), ir / 255.0, atol=1e-7)
        assert torch.equal(item["label"], torch.from_numpy(label.astype(np.int64)))
        assert bool(item["has_label"])


def test_discover_plain_pairs_with_partial_labels(tmp_path, samples):
    _make_pairs(tmp_path, samples, label_stems={"00702N"})
    assert detect_layout(tmp_path) == "pairs"
    pairs = discover_pairs(tmp_path, split="ignored")
    assert [p.stem for p in pairs] == sorted(STEMS)
    assert {p.stem: p.label is not None for p in pairs} == {"00587D": False, "00702N": True, "01000N": False}


def test_discovery_lists_every_missing_or_unpaired_file(tmp_path, samples):
    _make_split_layout(tmp_path, ("vi", "ir", "label"), samples, splits=("train",))
    split = tmp_path / "train"
    _write(split / "vi" / "only_vi.png", samples[0][1])
    _write(split / "ir" / "only_ir.png", samples[0][2])
    _write(split / "label" / "orphan.png", samples[0][3])
    (split / "label" / "01000N.png").unlink()
    with pytest.raises(DatasetError) as info:
        discover_pairs(tmp_path, "msrs", "train")
    assert len(info.value.problems) == 4
    for name in ("vi/only_vi.png", "ir/only_ir.png", "label/orphan.png", "vi/01000N.png"):
        assert name in str(info.value)


def test_discovery_error_caps_the_listing_with_a_count(tmp_path, samples):
    _make_pairs(tmp_path, samples)
    extra = MAX_LISTED_PROBLEMS + 10
    for i in range(extra):
        (tmp_path / "vi" / f"unpaired{i:03d}.png").write_bytes(b"")  # discovery never reads the files
    with pytest.raises(DatasetError) as info:
        discover_pairs(tmp_path, "pairs")
    assert len(info.value.problems) == extra
    message = str(info.value)
    assert f"{extra} problem(s)" in message and "... and 10 more" in message
    assert "unpaired000.png" in message and "unpaired059.png" not in message


def test_mfnet_errors_name_missing_files_and_duplicates(tmp_path, samples):
    _make_mfnet(tmp_path, samples, {"train": "00587D\nmissing1\n00587D\n"})
    with pytest.raises(DatasetError) as info:
        discover_pairs(tmp_path, "mfnet", "train")
    assert len(info.value.problems) == 2
    assert "missing1.png" in str(info.value) and "listed twice" in str(info.value)
    with pytest.raises(DatasetError, match="no split list"):
        discover_pairs(tmp_path, "mfnet", "val")


def test_discovery_errors_for_bad_roots_splits_and_layouts(tmp_path, samples):
    with pytest.raises(DatasetError, match="no such folder"):
        discover_pairs(tmp_path / "absent")
    with pytest.raises(DatasetError, match="cannot detect"):
        detect_layout(tmp_path)
    _make_split_layout(tmp_path, ("rgb", "thermal", "labels"), samples, splits=("train",))
    with pytest.raises(DatasetError, match="no split folder 'test'"):
        discover_pairs(tmp_path, "pst900", "test")
    with pytest.raises(DatasetError, match="no Visible or vi folder"):
        discover_pairs(tmp_path, "fmb", "train")
    with pytest.raises(ValueError, match="unknown dataset layout"):
        discover_pairs(tmp_path, "kitti")
    with pytest.raises(ValueError, match="ir and vi, or rgbt"):
        PairFiles("x", ir=Path("a.png"))


# ---------------------------------------------------------------------------------------------------------
# Derived maps


def test_salient_classes_follow_the_class_names():
    assert salient_class_ids(MFNET) == (1, 2, 3)  # car, person, bike
    assert [FMB.class_names[i] for i in salient_class_ids(FMB)] == [
        "person", "car", "truck", "bus", "motorcycle", "bicycle"
    ]
    assert salient_class_ids(PST900) == (1, 2, 3, 4)


def test_derive_maps_vertical_edge():
    label = np.array([[0, 0, 0, 3], [0, 0, 0, 3], [0, 0, 0, 3]], dtype=np.uint8)
    bi, bd, mask = derive_maps(label, salient_classes=(3,))
    column3 = np.array([[0, 0, 0, 1]] * 3, dtype=np.float32)
    np.testing.assert_array_equal(bi, column3)
    np.testing.assert_array_equal(bd, np.array([[0, 0, 1, 1]] * 3, dtype=np.float32))  # both sides of the edge
    np.testing.assert_array_equal(mask, column3)
    assert bi.dtype == bd.dtype == mask.dtype == np.float32


def test_derive_maps_single_pixel_boundary_is_dilated_by_one():
    label = np.zeros((5, 5), dtype=np.uint8)
    label[2, 2] = 4
    _, bd, _ = derive_maps(label, salient_classes=())
    expected = np.zeros((5, 5), dtype=np.float32)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(bd, expected)


@pytest.mark.parametrize(
    "row, bi, bd",
    [
        # 255 is never a class: it makes no boundary with a class ...
        ([1, 1, 255, 255, 1, 1], [1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]),
        # ... but an ignore pixel between two classes is on their boundary.
        ([1, 1, 255, 2, 2], [1, 1, 0, 1, 1], [0, 0, 1, 0, 0]),
        ([255, 255, 255], [0, 0, 0], [0, 0, 0]),
        ([0, 2, 2], [0, 1, 1], [1, 1, 0]),
    ],
)
def test_derive_maps_ignore_label(row, bi, bd):
    got_bi, got_bd, got_mask = derive_maps(np.array([row], dtype=np.uint8), salient_classes=(2,))
    np.testing.assert_array_equal(got_bi[0], bi)
    np.testing.assert_array_equal(got_bd[0], bd)
    np.testing.assert_array_equal(got_mask[0], [v == 2 for v in row])


def test_derive_maps_mask_uses_the_salient_set():
    label = np.arange(9, dtype=np.uint8).reshape(3, 3)  # every MFNet class once
    _, _, mask = derive_maps(label, salient_class_ids(MFNET))
    np.testing.assert_array_equal(mask.ravel(), [0, 1, 1, 1, 0, 0, 0, 0, 0])


# ---------------------------------------------------------------------------------------------------------
# Stage-I masks


def test_grid_masks_cover_every_pixel_with_constant_cells():
    for seed in range(100):
        m1, m2 = grid_masks(np.random.default_rng(seed))
        assert m1.shape == m2.shape == (256, 256) and m1.dtype == m2.dtype == np.float32
        assert set(np.unique(m1)) <= {0.0, 1.0} and set(np.unique(m2)) <= {0.0, 1.0}
        assert (m1 + m2 >= 1).all()
        for m in (m1, m2):
            cells = m.reshape(8, 32, 8, 32)
            assert (cells.min(axis=(1, 3)) == cells.max(axis=(1, 3))).all()


def test_grid_masks_keep_rates_match_the_recipe():
    # One pixel per cell (size = grid = 8) gives the cell-level statistics cheaply.
    m1, m2 = map(np.stack, zip(*(grid_masks(np.random.default_rng(s), size=8, grid=8) for s in range(3000))))
    rho = np.linspace(0.1, 0.1 + 1 / 1.12, 100001)
    keep = rho**2
    # Kept by its own product, or handed over where both were hidden (each side half the time after the swap).
    expected_each = np.mean(keep + (1 - keep) ** 2 / 2)
    assert abs(m1.mean() - expected_each) < 0.02 and abs(m2.mean() - expected_each) < 0.02
    assert abs((m1 * m2).mean() - np.mean(keep**2)) < 0.02  # both visible only where both products kept


def test_grid_masks_are_deterministic_and_support_other_sizes():
    a = grid_masks(np.random.default_rng(7))
    b = grid_masks(np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(a[0], grid_masks(np.random.default_rng(s))[0]) for s in range(8, 12))
    m1, m2 = grid_masks(np.random.default_rng(0), size=(480, 640), grid=(15, 20))
    assert m1.shape == (480, 640) and (m1 + m2 >= 1).all()
    cells = m1.reshape(15, 32, 20, 32)
    assert (cells.min(axis=(1, 3)) == cells.max(axis=(1, 3))).all()


def test_apply_masks_keeps_visible_pixels_and_fills_the_rest_with_noise():
    rng = np.random.default_rng(3)
    vi = rng.random((3, 64, 64), dtype=np.float32)
    ir = rng.random((1, 64, 64), dtype=np.float32)
    m1, m2 = grid_masks(np.random.default_rng(4), size=64, grid=8)
    vi_masked, ir_masked = apply_masks(vi, ir, m1, m2, np.random.default_rng(5))
    assert vi_masked.shape == vi.shape and ir_masked.shape == ir.shape and vi_masked.dtype == np.float32
    kept1, kept2 = m1 == 1, m2 == 1
    assert kept1.any() and (~kept1).any()
    np.testing.assert_array_equal(vi_masked[:, kept1], vi[:, kept1])  # the same mask for all RGB channels
    np.testing.assert_array_equal(ir_masked[:, kept2], ir[:, kept2])
    noise = vi_masked[:, ~kept1]
    assert noise.min() >= 0 and noise.max() < 1 and not np.array_equal(noise[0], noise[1])
    assert not np.allclose(noise, vi[:, ~kept1])
    again = apply_masks(vi, ir, m1, m2, np.random.default_rng(5))
    assert np.array_equal(again[0], vi_masked) and np.array_equal(again[1], ir_masked)


# ---------------------------------------------------------------------------------------------------------
# Joint augmentation


def test_flip_and_rotate_known_answers():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # a leading channel axis is carried along
    np.testing.assert_array_equal(flip(x, "vertical"), x[:, ::-1])
    np.testing.assert_array_equal(flip(x, "horizontal"), x[:, :, ::-1])
    np.testing.assert_array_equal(flip(x, "none"), x)
    for degrees in ROTATIONS:
        np.testing.assert_array_equal(rotate(x, degrees), np.rot90(x, degrees // 90, axes=(1, 2)))
    # PSFusion utils.rot, modes 0, 1, 2 (mode 3: unchanged), in torch as written there.
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(rotate(x, 90), t.transpose(-2, -1).flip(-2).numpy())
    np.testing.assert_array_equal(rotate(x, 180), t.flip(-2).flip(-1).numpy())
    np.testing.assert_array_equal(rotate(x, 270), t.flip(-2).transpose(-2, -1).numpy())
    with pytest.raises(ValueError):
        rotate(x, 45)
    with pytest.raises(ValueError):
        flip(x, "diagonal")


def _coordinate_maps(h: int, w: int) -> dict[str, np.ndarray]:
    """Maps of several dtypes and shapes, each an invertible function of the pixel's (row, col)."""
    r, c = np.mgrid[0:h, 0:w]
    return {
        "vi": np.stack([r / h, c / w, (r + c) / (h + w)]).astype(np.float32),
        "ir": (r * w + c)[None].astype(np.float32) / (h * w),
        "label": (r * w + c).astype(np.int64),
        "bi": r.astype(np.float32),
        "bd": c.astype(np.float32),
        "mask": (r * c).astype(np.float32),
    }


def _check_aligned_rigid_window(out: dict[str, np.ndarray], h: int, w: int) -> tuple[tuple[int, int], ...]:
    """Assert that every map shows the same pixels and that they form a flipped/rotated window of the input;
    return the transform as the (row, col) steps along output rows and columns."""
    r, c = np.divmod(out["label"], w)
    np.testing.assert_allclose(out["vi"][0] * h, r, atol=1e-4)
    np.testing.assert_allclose(out["vi"][1] * w, c, atol=1e-4)
    np.testing.assert_allclose(out["vi"][2] * (h + w), r + c, atol=1e-4)
    np.testing.assert_allclose(out["ir"][0] * (h * w), r * w + c, rtol=1e-6)
    np.testing.assert_array_equal(out["bi"], r)
    np.testing.assert_array_equal(out["bd"], c)
    np.testing.assert_array_equal(out["mask"], r * c)
    down = (r[1:] - r[:-1], c[1:] - c[:-1])
    right = (r[:, 1:] - r[:, :-1], c[:, 1:] - c[:, :-1])
    steps = []
    for dr, dc in (down, right):
        assert (dr == dr.flat[0]).all() and (dc == dc.flat[0]).all()  # a rigid grid
        steps.append((int(dr.flat[0]), int(dc.flat[0])))
    assert sorted(abs(v) for v in steps[0] + steps[1]) == [0, 0, 1, 1]
    return tuple(steps)


def test_joint_augment_keeps_every_map_aligned():
    h, w, crop = 24, 40, 16
    maps = _coordinate_maps(h, w)
    transforms = set()
    for seed in range(60):
        out = joint_augment(maps, np.random.default_rng(seed), crop_size=crop)
        assert all(a.shape[-2:] == (crop, crop) and a.flags.c_contiguous for a in out.values())
        assert {k: a.dtype for k, a in out.items()} == {k: a.dtype for k, a in maps.items()}
        transforms.add(_check_aligned_rigid_window(out, h, w))
    assert len(transforms) == 8  # 3 flips x 4 rotations reach all 8 symmetries of the square


def test_joint_augment_without_crop_or_flips():
    h, w = 24, 40
    maps = _coordinate_maps(h, w)
    shapes = {joint_augment(maps, np.random.default_rng(s), crop_size=None)["label"].shape for s in range(30)}
    assert shapes == {(h, w), (w, h)}  # 90/270 transpose the uncropped image
    out = joint_augment(maps, np.random.default_rng(0), crop_size=16, flip_rotate=False)
    assert _check_aligned_rigid_window(out, h, w) == ((1, 0), (0, 1))  # a plain window
    with pytest.raises(ValueError, match="smaller than"):
        joint_augment(maps, np.random.default_rng(0), crop_size=32)
    with pytest.raises(ValueError, match="share"):
        joint_augment({"a": np.zeros((4, 5)), "b": np.zeros((5, 4))}, np.random.default_rng(0), crop_size=None)


def test_scene_augment_keeps_scenes_upright_and_maps_aligned():
    h, w, crop = 48, 64, 32
    maps = _coordinate_maps(h, w)
    mirrored, spans = set(), []
    for seed in range(40):
        out = scene_augment(maps, np.random.default_rng(seed), crop_size=crop, scale_range=(0.7, 1.4))
        assert all(a.shape[-2:] == (crop, crop) and a.flags.c_contiguous for a in out.values())
        assert {k: a.dtype for k, a in out.items()} == {k: a.dtype for k, a in maps.items()}
        r, c = np.divmod(out["label"], w)  # nearest neighbour: every id is a real input pixel
        assert (np.diff(r, axis=0) >= 0).all()  # never upside down
        col_steps = np.diff(c, axis=1)
        assert (col_steps >= 0).all() or (col_steps <= 0).all()
        mirrored.add(bool((col_steps < 0).any()))
        np.testing.assert_allclose(out["vi"][0] * h, r, atol=1.0)  # images and label show the same place
        np.testing.assert_allclose(out["vi"][1] * w, c, atol=1.0)
        np.testing.assert_array_equal(out["bi"], r)
        spans.append(r.max() - r.min())
    assert mirrored == {True, False}
    assert min(spans) < 0.8 * crop < 1.2 * crop < max(spans)  # zoomed in and out
    scaled = scene_augment(maps, np.random.default_rng(0), crop_size=56, scale_range=(0.5, 0.5))
    assert scaled["label"].shape == (56, 56)  # too small after scaling: scaled up to fit the crop


def test_scene_augment_focus_puts_a_rare_class_in_every_crop():
    h, w, crop = 96, 128, 32
    label = np.zeros((h, w), dtype=np.int64)
    label[90:93, 5:20] = 4  # a thin curb in a corner: a plain random crop mostly misses it
    maps = {"label": label, "vi": np.zeros((3, h, w), np.float32)}
    focused = [scene_augment(maps, np.random.default_rng(seed), crop_size=crop, scale_range=(1.0, 1.0), focus=[4])
               for seed in range(30)]
    plain = [scene_augment(maps, np.random.default_rng(seed), crop_size=crop, scale_range=(1.0, 1.0))
             for seed in range(30)]
    assert all((out["label"] == 4).any() for out in focused)
    assert sum((out["label"] == 4).any() for out in plain) < 10
    assert len({out["label"].tobytes() for out in focused}) > 5  # the curb lands at many places in the crop
    absent = scene_augment(maps, np.random.default_rng(0), crop_size=crop, scale_range=(1.0, 1.0), focus=[7])
    np.testing.assert_array_equal(absent["label"], plain[0]["label"])  # a class not in the frame: a plain crop


def test_dataset_rare_crop_needs_scene_augmentation_and_a_probability(tmp_path):
    _, (vi, ir, label) = _two_scenes()  # a cone in rows 4-11, cols 8-19 of 24x32
    _make_pairs(tmp_path, [("a", vi, ir, label)], label_stems={"a"})
    pairs = discover_pairs(tmp_path)
    with pytest.raises(ValueError, match="rare_crop needs augment 'scene'"):
        FusionSegDataset(pairs, crop_size=8, augment="none", rare_crop=0.5, rare_classes=["color_cone"])
    with pytest.raises(ValueError, match="rare_crop must be a probability"):
        FusionSegDataset(pairs, crop_size=8, augment="scene", rare_crop=2.0, rare_classes=["color_cone"])
    focused = FusionSegDataset(pairs, crop_size=8, augment="scene", rare_crop=1.0, rare_classes=["color_cone"])
    seen = []
    for epoch in range(8):
        focused.set_epoch(epoch)
        seen.append(bool((focused[0]["label"] == 7).any()))
    assert all(seen) and focused.rare_ids == [7]


def test_dataset_keeps_images_label_and_derived_maps_aligned(tmp_path):
    # Images and label all functions of the pixel's (row, col), read back through the whole loader.
    h, w = 40, 56
    r, c = np.mgrid[0:h, 0:w]
    label = ((r // 5 + c // 7) % 4).astype(np.uint8)
    vi = np.dstack([r * 6, c * 4, np.full_like(r, 9)]).astype(np.uint8)
    ir = ((r * 5 + c * 3) % 256).astype(np.uint8)
    _make_pairs(tmp_path, [("coords", vi, ir, label)], label_stems={"coords"})
    bi, bd, mask = derive_maps(label, salient_class_ids(MFNET))
    dataset = FusionSegDataset(discover_pairs(tmp_path), crop_size=24)
    for epoch in range(12):
        dataset.set_epoch(epoch)
        item = dataset[0]
        rows = np.rint(item["vi"][0].numpy() * 255 / 6).astype(int)
        cols = np.rint(item["vi"][1].numpy() * 255 / 4).astype(int)
        np.testing.assert_allclose(item["vi"][2].numpy(), 9 / 255, atol=1e-7)
        np.testing.assert_allclose(item["ir"][0].numpy(), ir[rows, cols] / 255.0, atol=1e-7)
        np.testing.assert_array_equal(item["label"].numpy(), label[rows, cols])
        for key, full in (("bi", bi), ("bd", bd), ("mask", mask)):
            np.testing.assert_array_equal(item[key].numpy(), full[rows, cols])


def _two_scenes(h: int = 24, w: int = 32):
    """A receiver (label all background) and a donor whose block of rows 4-11, cols 8-19 is a color_cone (7)."""
    rng = np.random.default_rng(0)
    receiver = (rng.integers(0, 256, (h, w, 3), np.uint8), rng.integers(0, 256, (h, w), np.uint8),
                np.zeros((h, w), np.uint8))
    donor_label = np.zeros((h, w), np.uint8)
    donor_label[4:12, 8:20] = 7
    donor_label[20:, :] = 1  # a car, not pasted
    donor = (rng.integers(0, 256, (h, w, 3), np.uint8), rng.integers(0, 256, (h, w), np.uint8), donor_label)
    return receiver, donor


def test_paste_classes_moves_only_the_chosen_classes_in_place_and_derives_the_maps_again():
    (vi, ir, label), (dvi, dir_, dlabel) = _two_scenes()

    def maps(vi, ir, label):
        bi, bd, mask = derive_maps(label.astype(np.int64), salient_class_ids(MFNET))
        return {"vi": vi.transpose(2, 0, 1) / 255.0, "ir": ir[None] / 255.0, "label": label.astype(np.int64),
                "bi": bi, "bd": bd, "mask": mask}

    receiver, donor = maps(vi, ir, label), maps(dvi, dir_, dlabel)
    out = paste_classes(receiver, donor, [7], salient_class_ids(MFNET))
    cone = dlabel == 7
    np.testing.assert_array_equal(out["label"], np.where(cone, 7, 0))
    np.testing.assert_array_equal(out["vi"], np.where(cone, donor["vi"], receiver["vi"]))
    np.testing.assert_array_equal(out["ir"], np.where(cone, donor["ir"], receiver["ir"]))
    assert out["bd"][4, 10] == 1 and out["bd"][8, 14] == 0 and out["bd"].sum() > 0 == receiver["bd"].sum()
    assert paste_classes(receiver, donor, [3], salient_class_ids(MFNET)) is receiver  # no bike in the donor
    small = {k: np.ascontiguousarray(a[..., ::2, ::2]) for k, a in donor.items()}  # another size: resized first
    np.testing.assert_array_equal(paste_classes(receiver, small, [7], salient_class_ids(MFNET))["label"],
                                  np.where(cone, 7, 0))


def test_dataset_copy_paste_takes_donors_showing_the_classes(tmp_path):
    (vi, ir, label), (dvi, dir_, dlabel) = _two_scenes()
    _make_pairs(tmp_path, [("a", vi, ir, label), ("b", dvi, dir_, dlabel), ("c", vi, ir, label)],
                label_stems={"a", "b"})
    pairs = discover_pairs(tmp_path)
    plain = FusionSegDataset(pairs, crop_size=None, augment="none")
    pasting = FusionSegDataset(pairs, crop_size=None, augment="none", copy_paste=1.0, rare_classes=["color_cone"])
    assert [p.stem for p in pasting.donors] == ["b"] and pasting.rare_ids == [7]
    item = pasting[0]
    np.testing.assert_array_equal(item["label"].numpy(), np.where(dlabel == 7, 7, 0))
    np.testing.assert_allclose(item["vi"].numpy()[:, 5, 9], dvi[5, 9] / 255.0, atol=1e-7)
    assert torch.equal(pasting[2]["label"], plain[2]["label"])  # unlabelled: nothing pasted
    unused = FusionSegDataset(pairs, crop_size=8, copy_paste=0.0, rare_classes=["color_cone"])
    assert torch.equal(unused[0]["vi"], FusionSegDataset(pairs, crop_size=8)[0]["vi"])  # same draws
    assert label_pixel_counts(pairs + pairs, 9) == np.bincount(np.concatenate([label.ravel(), dlabel.ravel()]),
                                                                minlength=9).tolist()
    with pytest.raises(ValueError, match=r"\['cones'\] are not classes"):
        FusionSegDataset(pairs, copy_paste=0.5, rare_classes=["cones"])
    with pytest.raises(ValueError, match="probability"):
        FusionSegDataset(pairs, copy_paste=1.5, rare_classes=["bike"])


# ---------------------------------------------------------------------------------------------------------
# FusionSegDataset


def test_dataset_items_on_the_real_sample_pairs():
    pairs = discover_pairs(FIXTURE)
    assert len(pairs) == 24 and [p.stem for p in pairs if p.label] == ["00702N"]
    dataset = FusionSegDataset(pairs, stage1_masking=True, class_set="msrs")
    float_shapes = {key: (3, 256, 256) for key in ("vi", "vi_masked")}
    float_shapes |= {key: (1, 256, 256) for key in ("ir", "ir_masked")}
    float_shapes |= {key: (256, 256) for key in ("bi", "bd", "mask", "m1", "m2")}
    for item in dataset:
        assert set(item) == ITEM_KEYS | STAGE1_KEYS
        assert {k: (tuple(item[k].shape), item[k].dtype) for k in float_shapes} == {
            k: (shape, torch.float32) for k, shape in float_shapes.items()
        }
        assert item["label"].shape == (256, 256) and item["label"].dtype == torch.int64
        assert item["has_label"].shape == () and item["has_label"].dtype == torch.bool
        # The checks in numpy: small torch reductions are slow on a busy machine (thread oversubscription).
        a = {k: v.numpy() for k, v in item.items() if isinstance(v, torch.Tensor)}
        for key in float_shapes:
            assert 0 <= a[key].min() and a[key].max() <= 1, key
        assert (a["m1"] + a["m2"] >= 1).all()
        kept = a["m1"] == 1
        np.testing.assert_array_equal(a["vi_masked"][:, kept], a["vi"][:, kept])
        if item["name"] == "00702N":
            assert a["has_label"] and a["label"].max() <= 8
        else:
            assert not a["has_label"] and (a["label"] == 255).all()
            assert not (a["bi"].any() or a["bd"].any() or a["mask"].any())


def test_items_depend_only_on_seed_epoch_and_index(tmp_path, samples):
    _make_pairs(tmp_path, samples, label_stems=STEMS)
    pairs = discover_pairs(tmp_path)

    def items(dataset: FusionSegDataset) -> list[dict]:
        return [dataset[i] for i in range(len(dataset))]

    def same(a: dict, b: dict) -> bool:
        return a["name"] == b["name"] and all(torch.equal(a[k], b[k]) for k in a if k != "name")

    make = dict(crop_size=32, stage1_masking=True)
    reference = items(FusionSegDataset(pairs, **make))
    assert all(same(a, b) for a, b in zip(reference, items(FusionSegDataset(pairs, **make))))
    assert same(FusionSegDataset(pairs, **make)[-1], reference[-1])
    other_seed = items(FusionSegDataset(pairs, seed=1, **make))
    assert not any(same(a, b) for a, b in zip(reference, other_seed))
    dataset = FusionSegDataset(pairs, **make)
    dataset.set_epoch(1)
    epoch1 = items(dataset)
    assert not any(same(a, b) for a, b in zip(reference, epoch1))

    # A persistent DataLoader worker holds its own copy of the dataset, yet follows set_epoch.
    dataset.set_epoch(0)
    loader = DataLoader(dataset, batch_size=None, num_workers=1, persistent_workers=True)
    assert all(same(a, b) for a, b in zip(reference, loader))
    dataset.set_epoch(1)
    assert all(same(a, b) for a, b in zip(epoch1, loader))
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["vi"].shape == (2, 3, 32, 32) and batch["name"] == [p.stem for p in pairs[:2]]


def test_sixteen_bit_thermal(tmp_path, samples):
    stem, vi, ir, _ = samples[0]
    _write(tmp_path / "vi" / f"{stem}.png", vi)
    _write(tmp_path / "ir" / f"{stem}.png", ir.astype(np.uint16) * 257)  # 8-bit values on the 16-bit scale
    pairs = discover_pairs(tmp_path)
    rgb, thermal, label = load_pair(pairs[0])
    assert thermal.dtype == np.uint16 and np.array_equal(rgb, vi) and label is None  # raw, not yet normalised
    item = FusionSegDataset(pairs, crop_size=None, augment="none")[0]
    np.testing.assert_allclose(item["ir"][0].numpy(), ir / 255.0, atol=1e-6)
    stretched = FusionSegDataset(pairs, crop_size=None, augment="none", thermal_normalization="minmax")[0]
    assert float(stretched["ir"].min()) == 0.0 and float(stretched["ir"].max()) == pytest.approx(1.0)


def test_dataset_errors_name_the_files(tmp_path, samples):
    stem, vi, ir, label = samples[1]
    _make_pairs(tmp_path, [samples[1]], label_stems={stem})
    pairs = discover_pairs(tmp_path)
    with pytest.raises(DatasetError, match="smaller than the 256x256 crop") as info:
        FusionSegDataset(pairs)[0]
    assert str(tmp_path / "vi" / f"{stem}.png") in str(info.value)

    _write(tmp_path / "label" / f"{stem}.png", np.full_like(label, 9))  # not an MFNet class id
    with pytest.raises(DatasetError, match=r"class ids \[9\]") as info:
        FusionSegDataset(pairs, crop_size=None)[0]
    assert str(tmp_path / "label" / f"{stem}.png") in str(info.value)
    assert FusionSegDataset(pairs, crop_size=None, class_set="fmb")[0]["has_label"]  # 9 is an FMB class

    _write(tmp_path / "ir" / f"{stem}.png", ir[:32])
    with pytest.raises(DatasetError, match="differ in size"):
        FusionSegDataset(pairs, crop_size=None)[0]


def test_modality_dropout_blanks_one_camera_of_some_items(tmp_path, samples):
    _make_pairs(tmp_path, samples, label_stems=STEMS)
    pairs = discover_pairs(tmp_path) * 10
    items = [FusionSegDataset(pairs, crop_size=32, modality_dropout=0.5)[i] for i in range(len(pairs))]
    blank_vi = sum(not item["vi"].any() for item in items)
    blank_ir = sum(not item["ir"].any() for item in items)
    assert blank_vi > 0 and blank_ir > 0 and blank_vi + blank_ir < len(items)
    assert not any(not item["vi"].any() and not item["ir"].any() for item in items)
    assert all(item["vi"].any() and item["ir"].any() for item in
               (FusionSegDataset(pairs[:4], crop_size=32)[i] for i in range(4)))
    with pytest.raises(ValueError, match="modality_dropout"):
        FusionSegDataset(pairs, modality_dropout=1.5)
    with pytest.raises(ValueError, match="can blank"):
        blank_modality({"vi": np.ones(2)}, "label")


def test_repeat_factor_sampling_repeats_the_frames_of_classes_seen_in_few_frames(tmp_path: Path) -> None:
    def pair(stem: str, classes: list[int] | None) -> PairFiles:
        label = None
        if classes is not None:
            label = tmp_path / f"{stem}.png"
            cv2.imwrite(str(label), np.array([classes + [255]], dtype=np.uint8))  # ignore pixels count for nothing
        return PairFiles(stem, ir=tmp_path / "ir.png", vi=tmp_path / "vi.png", label=label)

    common = [pair(f"c{i}", [0, 1]) for i in range(9)]
    rare, unlabelled = pair("rare", [0, 1, 2]), pair("u", None)  # class 2: in 1 of 10 frames
    pairs = [*common, rare, unlabelled] * 3  # a source's repeat
    repeated = repeat_rare_frames(pairs, num_classes=9, threshold=0.4)  # sqrt(0.4 / 0.1) = 2
    assert repeated.count(rare) == 6
    assert repeated.count(common[0]) == 3 and repeated.count(unlabelled) == 3
    assert len(repeated) == len(pairs) + 3
    assert repeat_rare_frames(pairs, num_classes=9, threshold=0.0) == pairs
    with pytest.raises(ValueError, match="repeat_threshold must be >= 0"):
        repeat_rare_frames(pairs, num_classes=9, threshold=-0.1)
