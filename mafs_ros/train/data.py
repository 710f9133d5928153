"""Training data: dataset folder layouts, label-derived maps, joint augmentation and Stage-I masking.

MAFS_SPEC §4.1 (augmentation, masking) and §4.3 (datasets, derived maps).

Folder layouts (`discover_pairs`); folder names match case-insensitively, files are paired by stem:

    msrs    ROOT/{train,test}/{vi, ir, Segmentation_labels | label}/STEM.png
    mfnet   ROOT/images/STEM.png (4 channels: R, G, B, thermal), ROOT/labels/STEM.png,
            ROOT/{train,val,test}.txt (the official split lists: one stem per line)
    fmb     ROOT/{train,test}/{Visible | vi, Infrared | ir, Label | label}/STEM.png
    pst900  ROOT/{train,test}/{rgb, thermal, labels}/STEM.png
    pairs   ROOT/{ir, vi}/STEM.* plus optionally ROOT/label/STEM.png (no split; labels may be missing)

The dataset layouts require a label for every pair; `pairs` is for fusion-only (unlabelled) training.

Randomness: every item draws from its own numpy Generator seeded with (seed, epoch, index), so a sample depends
on these three numbers only: not on the number of DataLoader workers, on which worker loads it, on the DDP
rank, or on whether the run was resumed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..class_sets import IGNORE_LABEL, ClassSet, get_class_set
from ..cli import _image_files, read_thermal, read_visible
from ..imaging import ThermalNormalization

LAYOUTS = ("msrs", "mfnet", "fmb", "pst900", "pairs")

# Per split-folder layout: accepted names of the (visible, infrared, label) folders, preferred first. Layout
# detection uses only the first name, because fmb also accepts msrs's lowercase names.
_SPLIT_FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "msrs": (("vi",), ("ir",), ("Segmentation_labels", "label")),
    "fmb": (("Visible", "vi"), ("Infrared", "ir"), ("Label", "label")),
    "pst900": (("rgb",), ("thermal",), ("labels",)),
}

# Thermally salient classes (spec §4.3 [design]), by name, so that the ids follow each class list:
# MFNet/MSRS {person, car, bike}; FMB {person, car, truck, bus, motorcycle, bicycle}; PST900 all 4 objects.
SALIENT_CLASS_NAMES = frozenset(
    {"person", "car", "bike", "truck", "bus", "motorcycle", "bicycle"}
    | {"fire_extinguisher", "backpack", "hand_drill", "survivor"}
)

# Official Stage-I masking: an 8x8 grid over the 256x256 crop, i.e. 32x32-pixel cells.
MASK_GRID = 8
MASK_CELL = 32

# Official augmentation modes, in the order of PSFusion's utils.randfilp / utils.randrot (mode = index).
FLIPS = ("vertical", "horizontal", "none")
AUGMENTATIONS = ("official", "scene", "none")  # FusionSegDataset's `augment`
SCENE_SCALES = (0.7, 1.4)  # scene_augment's scale range around the deployed scale
ROTATIONS = (90, 180, 270, 0)  # degrees counter-clockwise, as numpy.rot90

MAX_LISTED_PROBLEMS = 50


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; `problems` lists every problem found (one line each).

    The message shows the first `MAX_LISTED_PROBLEMS` and counts the rest.
    """

    def __init__(self, context: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        lines = [f"{context}: {len(self.problems)} problem(s)"] + [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class PairFiles:
    """The files of one sample: `ir` and `vi`, or (MFNet) a single 4-channel RGBT PNG `rgbt`.

    label: the class-id PNG, or None for an unlabelled pair.
    """

    stem: str
    ir: Path | None = None
    vi: Path | None = None
    label: Path | None = None
    rgbt: Path | None = None

    def __post_init__(self) -> None:
        separate = self.ir is not None and self.vi is not None and self.rgbt is None
        single = self.rgbt is not None and self.ir is None and self.vi is None
        if not (separate or single):
            raise ValueError(f"pair {self.stem!r} needs either ir and vi, or rgbt alone")

    @property
    def has_label(self) -> bool:
        """Whether the pair has a label file."""
        return self.label is not None

    @property
    def image_files(self) -> tuple[Path, ...]:
        """The image files (not the label), for messages."""
        return (self.rgbt,) if self.rgbt is not None else (self.vi, self.ir)


# ---------------------------------------------------------------------------------------------------------
# Discovery


def discover_pairs(root: str | Path, layout: str = "auto", split: str = "train") -> list[PairFiles]:
    """All pairs of one split of a dataset folder, sorted by stem (MFNet: in split-list order).

    layout: one of `LAYOUTS`, or "auto" (`detect_layout`). split: a split folder name (msrs, fmb, pst900),
    the name of a split list ROOT/<split>.txt (mfnet, e.g. "train", "val", "test"), ignored for "pairs".
    Raises DatasetError listing every missing or unpaired file (or missing folder), ValueError for an unknown
    layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset {root}", [f"no such folder: {root}"])
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; known: {LAYOUTS} or 'auto'")
    if layout == "pairs":
        pairs, problems = _discover_plain(root)
    elif layout == "mfnet":
        pairs, problems = _discover_mfnet(root, split)
    else:
        pairs, problems = _discover_split_folders(root, layout, split)
    if not pairs and not problems:
        problems = ["no image pairs found"]
    if problems:
        raise DatasetError(f"{layout} dataset {root} (split {split!r})", problems)
    return pairs


def select_stems(pairs: Sequence[PairFiles], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[PairFiles]:
    """The pairs whose stem matches one of the fnmatch patterns `include` (all when empty) and none of
    `exclude`."""

    def matches(stem: str, patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(stem, pattern) for pattern in patterns)

    return [p for p in pairs if (not include or matches(p.stem, include)) and not matches(p.stem, exclude)]


def detect_layout(root: str | Path) -> str:
    """The layout of a dataset folder (see the module docstring). Raises DatasetError when none matches."""
    root = Path(root)
    if _child_dir(root, ("images",)) and _child_dir(root, ("labels",)):
        return "mfnet"
    if _child_dir(root, ("ir",)) and _child_dir(root, ("vi",)):
        return "pairs"
    for split in ("train", "test", "val"):
        split_dir = _child_dir(root, (split,))
        if split_dir is None:
            continue
        for layout, (vi_names, ir_names, _) in _SPLIT_FOLDERS.items():
            if _child_dir(split_dir, vi_names[:1]) and _child_dir(split_dir, ir_names[:1]):
                return layout
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise DatasetError(
        f"cannot detect the layout of {root}",
        [
            f"found folders {found}; expected images/ + labels/ (mfnet), ir/ + vi/ (pairs), or a train/test "
            "folder holding vi/ + ir/ (msrs), Visible/ + Infrared/ (fmb) or rgb/ + thermal/ (pst900)"
        ],
    )


def _child_dir(parent: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of `parent` named like the first of `names` that exists (case-insensitive)."""
    if not parent.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in sorted(parent.iterdir()) if p.is_dir()}
    for name in names:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


def _match_folders(
    vi_dir: Path, ir_dir: Path, label_dir: Path | None, labels_required: bool
) -> tuple[list[PairFiles], list[str]]:
    """Pair the image files of three folders by stem; a problem line for each file without its partners."""
    vi_files, problems = _image_files(vi_dir)
    ir_files, ir_problems = _image_files(ir_dir)
    problems += ir_problems
    label_files: dict[str, Path] = {}
    if label_dir is not None:
        label_files, label_problems = _image_files(label_dir)
        problems += label_problems
    problems += [f"{vi_files[s]}: no infrared image {s}.* in {ir_dir}" for s in sorted(vi_files.keys() - ir_files)]
    problems += [f"{ir_files[s]}: no visible image {s}.* in {vi_dir}" for s in sorted(ir_files.keys() - vi_files)]
    images = vi_files.keys() | ir_files.keys()
    problems += [f"{label_files[s]}: label without images" for s in sorted(label_files.keys() - images)]
    stems = sorted(vi_files.keys() & ir_files.keys())
    if labels_required:
        problems += [f"{vi_files[s]}: no label {s}.* in {label_dir}" for s in stems if s not in label_files]
    pairs = [PairFiles(s, ir=ir_files[s], vi=vi_files[s], label=label_files.get(s)) for s in stems]
    return pairs, problems


def _discover_plain(root: Path) -> tuple[list[PairFiles], list[str]]:
    """The `pairs` layout: ir/ and vi/ (required), label/ (optional, may cover only some pairs)."""
    vi_dir, ir_dir = _child_dir(root, ("vi",)), _child_dir(root, ("ir",))
    missing = [f"no {name}/ folder in {root}" for name, d in (("vi", vi_dir), ("ir", ir_dir)) if d is None]
    if missing:
        return [], missing
    return _match_folders(vi_dir, ir_dir, _child_dir(root, ("label",)), labels_required=False)


def _discover_split_folders(root: Path, layout: str, split: str) -> tuple[list[PairFiles], list[str]]:
    """msrs, fmb and pst900: ROOT/<split>/{visible, infrared, label folders}."""
    split_dir = _child_dir(root, (split,))
    if split_dir is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        return [], [f"no split folder {split!r} in {root} (found {found})"]
    names = _SPLIT_FOLDERS[layout]
    dirs = [_child_dir(split_dir, n) for n in names]
    missing = [f"no {' or '.join(n)} folder in {split_dir}" for n, d in zip(names, dirs) if d is None]
    if missing:
        return [], missing
    return _match_folders(dirs[0], dirs[1], dirs[2], labels_required=True)


def _discover_mfnet(root: Path, split: str) -> tuple[list[PairFiles], list[str]]:
    """mfnet: the stems of ROOT/<split>.txt, each with images/<stem>.png (RGBT) and labels/<stem>.png."""
    images, labels = _child_dir(root, ("images",)), _child_dir(root, ("labels",))
    list_file = root / f"{split}.txt"
    folders = (("images", images), ("labels", labels))
    problems = [f"no {name}/ folder in {root}" for name, d in folders if d is None]
    if not list_file.is_file():
        problems.append(f"no split list {list_file}")
    if problems:
        return [], problems
    pairs: list[PairFiles] = []
    seen: set[str] = set()
    for line_no, stem in _read_split_list(list_file):
        if stem in seen:
            problems.append(f"{list_file}:{line_no}: {stem} is listed twice")
            continue
        seen.add(stem)
        rgbt, label = images / f"{stem}.png", labels / f"{stem}.png"
        missing = [str(p) for p in (rgbt, label) if not p.is_file()]
        if missing:
            problems.append(f"{list_file}:{line_no}: {stem}: missing {' and '.join(missing)}")
        else:
            pairs.append(PairFiles(stem, rgbt=rgbt, label=label))
    return pairs, problems


def _read_split_list(path: Path) -> list[tuple[int, str]]:
    """(line number, stem) of a split list; blank lines and '#' comments skipped, a '.png' suffix dropped."""
    entries = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append((line_no, entry[:-4] if entry.lower().endswith(".png") else entry))
    return entries


# ---------------------------------------------------------------------------------------------------------
# Reading


def read_rgbt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An MFNet 4-channel PNG (channels R, G, B, thermal) as ((H, W, 3) uint8 RGB, (H, W) thermal).

    The thermal keeps its depth (uint8 or uint16); 16-bit colour is reduced to 8 bits as `read_visible` does.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image file {path}")
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"{path}: expected a 4-channel RGBT image, got shape {image.shape}")
    rgb = image[:, :, 2::-1]  # OpenCV stores B, G, R, A: file channels 2, 1, 0 are R, G, B
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(image[:, :, 3])


def read_label(path: Path, num_classes: int) -> np.ndarray:
    """A class-id label file as (H, W) int64; ids must be < num_classes or IGNORE_LABEL (255).

    A 3-channel file is accepted only if its channels are equal (a grey image saved as colour); a colour-coded
    label is refused rather than misread.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read label file {path}")
    if image.ndim == 3:
        if not all(np.array_equal(image[:, :, 0], image[:, :, c]) for c in range(1, image.shape[2])):
            raise ValueError(f"{path}: a colour label; expected single-channel class ids")
        image = image[:, :, 0]
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: label dtype must be uint8 or uint16, got {image.dtype}")
    bad = (image >= num_classes) & (image != IGNORE_LABEL)
    if bad.any():
        values = sorted(np.unique(image[bad]).tolist())[:10]
        raise ValueError(f"{path}: class ids {values} outside 0..{num_classes - 1} (and not {IGNORE_LABEL})")
    return image.astype(np.int64)


def load_pair(
    pair: PairFiles, num_classes: int = IGNORE_LABEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The raw images and label of a pair, checked to share one size.

    Returns rgb (H, W, 3) uint8, thermal (H, W) in its file's depth (uint8, uint16 or float; not normalised),
    and label (H, W) int64 (`read_label`, ids < num_classes or 255; the default bounds nothing) or None.
    Raises ValueError for an unreadable file or differing sizes.
    """
    if pair.rgbt is not None:
        rgb, thermal = read_rgbt(pair.rgbt)
    else:
        rgb, thermal = read_visible(pair.vi), read_thermal(pair.ir)
    if thermal.shape != rgb.shape[:2]:
        raise ValueError(f"infrared {thermal.shape} and visible {rgb.shape[:2]} images differ in size")
    label = None if pair.label is None else read_label(pair.label, num_classes)
    if label is not None and label.shape != rgb.shape[:2]:
        raise ValueError(f"label {label.shape} and images {rgb.shape[:2]} differ in size")
    return rgb, thermal, label


# ---------------------------------------------------------------------------------------------------------
# Maps derived from the label (spec §4.3 [design])


def salient_class_ids(class_set: ClassSet) -> tuple[int, ...]:
    """Ids of the thermally salient classes of `class_set` (names in SALIENT_CLASS_NAMES), ascending."""
    return tuple(i for i, name in enumerate(class_set.class_names) if name in SALIENT_CLASS_NAMES)


def derive_maps(label: np.ndarray, salient_classes: Iterable[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The binary (bi), boundary (bd) and salient (mask) maps of a label, each (H, W) float32 in {0, 1}.

    label: (H, W) integer class ids, IGNORE_LABEL (255) = ignore.
    bi: 1 where the label is neither 0 nor 255.
    bd: 1 where the 3x3 neighbourhood (clipped at the image border) holds two different class ids, ignoring
        255: an edge between two classes is marked on both sides (a 2-pixel band, i.e. the edge dilated by
        1 pixel); an ignore pixel between two classes is marked; a class next to ignore pixels only is not.
    mask: 1 where the label is one of `salient_classes`.
    """
    if label.ndim != 2 or label.dtype.kind not in "iu":
        raise ValueError(f"label must be an (H, W) integer array, got {label.dtype} with shape {label.shape}")
    lab = label.astype(np.int64)
    ignore = lab == IGNORE_LABEL
    bi = (lab != 0) & ~ignore
    # Ignore pixels take no part in the range: they are the neutral element of the max and of the min.
    high = _filter3(np.where(ignore, np.iinfo(np.int64).min, lab), np.maximum)
    low = _filter3(np.where(ignore, np.iinfo(np.int64).max, lab), np.minimum)
    bd = high > low  # false where the window holds one class only, or ignore pixels only
    mask = np.isin(lab, np.asarray(list(salient_classes), dtype=np.int64))
    return bi.astype(np.float32), bd.astype(np.float32), mask.astype(np.float32)


def _filter3(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """3x3 max or min filter (`op` = np.maximum or np.minimum) of an (H, W) array; the window is clipped at
    the border (edge padding repeats values already in the window)."""
    h, w = a.shape
    padded = np.pad(a, 1, mode="edge")
    out = a.copy()
    for dy in range(3):
        for dx in range(3):
            op(out, padded[dy : dy + h, dx : dx + w], out=out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Stage-I masking (spec §4.1)


def grid_masks(
    rng: np.random.Generator, size: int | tuple[int, int] = 256, grid: int | tuple[int, int] = MASK_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """The official Stage-I keep-masks (m1 for the visible image, m2 for the infrared one).

    rng: the sample's generator; draws, in order: rho, six (gh, gw) uniform grids, the swap.
    size: output (H, W) (or H = W); grid: cells per axis (gh, gw) (or gh = gw). Official: 256 and 8.
    Returns m1, m2: (H, W) float32 in {0, 1}, constant on each cell, with m1 + m2 >= 1 everywhere:
      rho = 0.1 + U(0, 1) / 1.12; m1 and m2 are each the product of two Bernoulli(rho) grids; where both are 0,
      a third product gives the cell to m1 (1) or m2 (0); then m1 and m2 are swapped with probability 1/2.
      The grids are upsampled nearest (as F.interpolate), so 8 cells over 256 pixels are 32x32 each.
    """
    h, w = _as_hw(size)
    gh, gw = _as_hw(grid)
    if min(h, w, gh, gw) < 1:
        raise ValueError(f"size and grid must be positive, got size {size} and grid {grid}")
    rho = 0.1 + rng.random() / 1.12

    def keep() -> np.ndarray:
        return (rng.random((gh, gw)) < rho) & (rng.random((gh, gw)) < rho)

    m1, m2, owner = keep(), keep(), keep()
    hidden = ~m1 & ~m2
    m1, m2 = m1 | (hidden & owner), m2 | (hidden & ~owner)
    if rng.random() < 0.5:
        m1, m2 = m2, m1
    cells = np.ix_(np.arange(h) * gh // h, np.arange(w) * gw // w)  # nearest upsampling
    return m1[cells].astype(np.float32), m2[cells].astype(np.float32)


def apply_masks(
    vi: np.ndarray, ir: np.ndarray, m1: np.ndarray, m2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """vi_masked = vi m1 + U(0,1) (1 - m1), ir_masked = ir m2 + U(0,1) (1 - m2) (spec §4.1 step 6).

    vi: (3, H, W) and ir: (1, H, W) float32; m1, m2: (H, W), one mask for all channels of an image.
    The noise is drawn from `rng` (visible first), independently per channel. Returns float32 arrays shaped
    like vi and ir.
    """
    noise_vi = rng.random(vi.shape, dtype=np.float32)
    noise_ir = rng.random(ir.shape, dtype=np.float32)
    return vi * m1 + noise_vi * (1.0 - m1), ir * m2 + noise_ir * (1.0 - m2)


def _as_hw(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


# ---------------------------------------------------------------------------------------------------------
# Joint augmentation (spec §4.1: flip, rotate, then random crop; the same for every map)
#
# On numpy arrays, because there flips, transposes and crops are views: only the final crop is copied, where
# torch would copy every full-size map at every step.


def flip(x: np.ndarray, mode: str) -> np.ndarray:
    """Flip the last two axes of x (..., H, W): "vertical" (rows), "horizontal" (columns) or "none". A view."""
    if mode == "vertical":
        return np.flip(x, -2)
    if mode == "horizontal":
        return np.flip(x, -1)
    if mode == "none":
        return x
    raise ValueError(f"unknown flip {mode!r}; known: {FLIPS}")


def rotate(x: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate the last two axes of x (..., H, W) counter-clockwise by 0, 90, 180 or 270 degrees (as
    numpy.rot90), with the official transpose/flip sequence; 90 and 270 give (..., W, H). A view."""
    if degrees == 90:
        return np.flip(x.swapaxes(-2, -1), -2)
    if degrees == 180:
        return np.flip(np.flip(x, -2), -1)
    if degrees == 270:
        return np.flip(x, -2).swapaxes(-2, -1)
    if degrees == 0:
        return x
    raise ValueError(f"unsupported rotation {degrees}; known: {ROTATIONS}")


def joint_augment(
    maps: dict[str, np.ndarray], rng: np.random.Generator, *, crop_size: int | None, flip_rotate: bool = True
) -> dict[str, np.ndarray]:
    """The same random flip, rotation and crop for every map (spec §4.1 steps 2-4, in the official order).

    maps: arrays (..., H, W) sharing H and W (any dtype, any leading axes).
    rng draws, in order: the flip index into FLIPS and the rotation index into ROTATIONS (only if flip_rotate),
    then the crop's top and left offsets (only if crop_size is set).
    crop_size: side of the square crop, taken after the rotation (so 90/270 cannot make it fail), or None to
    keep the whole (possibly transposed) image. Returns C-contiguous copies (..., crop_size, crop_size).
    Raises ValueError when the image is smaller than the crop.
    """
    sizes = {tuple(a.shape[-2:]) for a in maps.values()}
    if len(sizes) != 1:
        raise ValueError(f"maps must share their (H, W), got {sorted(sizes)}")
    h, w = sizes.pop()
    if crop_size is not None and min(h, w) < crop_size:
        raise ValueError(f"image {h}x{w} is smaller than the {crop_size}x{crop_size} crop")
    out = dict(maps)
    if flip_rotate:
        flip_mode = FLIPS[int(rng.integers(len(FLIPS)))]
        degrees = ROTATIONS[int(rng.integers(len(ROTATIONS)))]
        out = {k: rotate(flip(a, flip_mode), degrees) for k, a in out.items()}
        if degrees in (90, 270):
            h, w = w, h
    if crop_size is not None:
        top = int(rng.integers(h - crop_size + 1))
        left = int(rng.integers(w - crop_size + 1))
        out = {k: a[..., top : top + crop_size, left : left + crop_size] for k, a in out.items()}
    return {k: np.array(a, order="C", copy=True) for k, a in out.items()}


def thermal_appearance(ir: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random thermal look for (1, H, W) float32 in [0, 1]: raw camera thermal is low-contrast, while
    automatic-gain cameras and contrast-enhanced datasets (MSRS) stretch it, globally and locally.

    rng draws, in order: whether to change it at all (4 in 5), the percentile stretch limits, whether to add
    local contrast (CLAHE, 1 in 3) and its clip limit, then the gamma.
    """
    if rng.random() >= 0.8:
        return ir
    low, high = np.percentile(ir, [rng.uniform(0.0, 5.0), rng.uniform(95.0, 100.0)])
    out = np.clip((ir - low) / max(high - low, 1e-3), 0.0, 1.0)
    if rng.random() < 1 / 3:
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.5, 4.0)), tileGridSize=(8, 8))
        out = clahe.apply(np.round(out[0] * 255).astype(np.uint8))[None].astype(np.float32) / np.float32(255.0)
    gamma = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    return np.power(out, gamma, dtype=np.float32)


def resize_maps(maps: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Every map (..., H, W) resized to size (H', W'): images ("vi", "ir") bilinearly, the label and the
    label-derived maps by nearest neighbour (their ids stay exact)."""
    h, w = maps["label"].shape
    out = {}
    for key, a in maps.items():
        mode = cv2.INTER_LINEAR if key in ("vi", "ir") else cv2.INTER_NEAREST_EXACT  # pixel centres, as bilinear
        planes = a.reshape(-1, h, w)
        # float32 for every map: cv2 cannot resize int64 labels
        resized = [cv2.resize(p.astype(np.float32), (size[1], size[0]), interpolation=mode) for p in planes]
        out[key] = np.stack(resized).reshape(*a.shape[:-2], *size).astype(a.dtype)
    return out


def upscale_to_fit(maps: dict[str, np.ndarray], side: int) -> dict[str, np.ndarray]:
    """Scale every map up (`resize_maps`) so that its shorter side is at least `side` (a pair smaller than
    the training crop). Maps are (..., H, W)."""
    h, w = maps["label"].shape
    if min(h, w) >= side:
        return maps
    scale = side / min(h, w)
    return resize_maps(maps, (max(side, round(h * scale)), max(side, round(w * scale))))


def scene_augment(
    maps: dict[str, np.ndarray], rng: np.random.Generator, *, crop_size: int | None,
    scale_range: tuple[float, float] = SCENE_SCALES,
) -> dict[str, np.ndarray]:
    """Upright augmentation for camera scenes: a horizontal flip (1 in 2), a random scale, then a random crop,
    the same for every map (..., H, W). Road scenes are never upside down, so unlike the official flips and
    rotations (`joint_augment`) every sample shows a view the deployed camera can see, which is what a
    segmentation head trained on a hundred frames needs.

    rng draws, in order: the flip, the scale (log-uniform in scale_range), the crop's top and left offsets.
    A scaled image smaller than the crop is scaled up to fit it. Returns C-contiguous copies.
    """
    h, w = maps["label"].shape
    out = {k: np.flip(a, -1) for k, a in maps.items()} if rng.random() < 0.5 else dict(maps)
    scale = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    if crop_size is not None:
        scale = max(scale, crop_size / min(h, w))
    size = (round(h * scale), round(w * scale))
    if size != (h, w):
        out = resize_maps({k: np.ascontiguousarray(a) for k, a in out.items()}, size)
    if crop_size is not None:
        top = int(rng.integers(size[0] - crop_size + 1))
        left = int(rng.integers(size[1] - crop_size + 1))
        out = {k: a[..., top : top + crop_size, left : left + crop_size] for k, a in out.items()}
    return {k: np.array(a, order="C", copy=True) for k, a in out.items()}


# ---------------------------------------------------------------------------------------------------------
# Dataset


class FusionSegDataset(Dataset):
    """Training samples of MAFS from a list of `PairFiles` (see `discover_pairs`).

    An item is a dict (H = W = crop_size, or the image size when crop_size is None):
        vi        (3, H, W) float32 in [0, 1], RGB
        ir        (1, H, W) float32 in [0, 1], thermal after `thermal_normalization`
        label     (H, W) int64 class ids, 255 = ignore (255 everywhere for an unlabelled pair)
        has_label () bool
        bi, bd, mask  (H, W) float32 in {0, 1}, derived from the full-size label (`derive_maps`); zeros when
                  unlabelled
        name      str, the pair's stem
      and with stage1_masking:
        m1, m2    (H, W) float32 keep-masks of vi and ir (`grid_masks`)
        vi_masked (3, H, W), ir_masked (1, H, W) float32 (`apply_masks`)

    crop_size: random square crop (spec: 256); None keeps the whole image. An image smaller than the crop is
        an error naming its files, or with `upscale_small` scaled up to fit it (`upscale_to_fit`).
    augment: "official": random flip and rotation (`joint_augment`, the paper's recipe); with crop_size None,
        a 90/270 rotation transposes the image, so non-square images then give items of two shapes (use batch
        size 1). "scene": horizontal flip and random scale, upright (`scene_augment`). "none": crop only.
    stage1_masking: add the Stage-I masked inputs. The mask grid has cells of MASK_CELL (32) pixels: exactly
        the official 8x8 grid on a 256 crop, about 32 pixels per cell on other sizes.
    thermal_normalization: anything `ThermalNormalization.from_spec` takes ("fixed": uint8 / 255, uint16 /
        65535).
    class_set: the label's classes (a ClassSet or a name in class_sets.CLASS_SETS): bounds the label ids and
        names the salient classes of `mask`.
    seed: with the epoch (`set_epoch`) and the index, seeds the item's generator.
    thermal_augment: a random thermal look per item (`thermal_appearance`), drawn after the crop.
    """

    def __init__(
        self,
        pairs: Sequence[PairFiles],
        *,
        crop_size: int | None = 256,
        augment: str = "official",
        stage1_masking: bool = False,
        thermal_normalization: str | dict[str, Any] | ThermalNormalization | None = "fixed",
        class_set: str | ClassSet = "mfnet",
        seed: int = 0,
        thermal_augment: bool = False,
        upscale_small: bool = False,
    ) -> None:
        if not pairs:
            raise ValueError("FusionSegDataset needs at least one pair")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be positive or None, got {crop_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}; known: {AUGMENTATIONS}")
        self.pairs = list(pairs)
        self.crop_size = crop_size
        self.augment = augment
        self.stage1_masking = stage1_masking
        self.thermal_normalization = ThermalNormalization.from_spec(thermal_normalization)
        self.class_set = get_class_set(class_set) if isinstance(class_set, str) else class_set
        self.salient_classes = salient_class_ids(self.class_set)
        self.seed = seed
        self.thermal_augment = thermal_augment
        self.upscale_small = upscale_small
        # In shared memory, so that persistent DataLoader workers (which hold copies of the dataset) see the
        # epoch set in the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the items use; call it before iterating each epoch."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def item_rng(self, index: int) -> np.random.Generator:
        """The generator of item `index` in the current epoch: a function of (seed, epoch, index) only."""
        return np.random.default_rng((self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]  # negative indices count from the end; the seed needs the real one
        pair = self.pairs[index]
        rng = self.item_rng(index)
        try:
            maps, has_label = self._load(pair)
            if self.upscale_small and self.crop_size is not None:
                maps = upscale_to_fit(maps, self.crop_size)
            if self.augment == "scene":
                maps = scene_augment(maps, rng, crop_size=self.crop_size)
            else:
                maps = joint_augment(maps, rng, crop_size=self.crop_size, flip_rotate=self.augment == "official")
            if self.thermal_augment:
                maps["ir"] = thermal_appearance(maps["ir"], rng)
        except ValueError as err:
            files = ", ".join(str(p) for p in (*pair.image_files, pair.label) if p is not None)
            raise DatasetError(f"pair {pair.stem} ({files})", [str(err)]) from err
        if self.stage1_masking:
            h, w = maps["label"].shape
            grid = (max(1, round(h / MASK_CELL)), max(1, round(w / MASK_CELL)))
            maps["m1"], maps["m2"] = grid_masks(rng, (h, w), grid)
            maps["vi_masked"], maps["ir_masked"] = apply_masks(maps["vi"], maps["ir"], maps["m1"], maps["m2"], rng)
        item: dict[str, Any] = {k: torch.from_numpy(a) for k, a in maps.items()}
        item["has_label"] = torch.tensor(has_label)
        item["name"] = pair.stem
        return item

    def _load(self, pair: PairFiles) -> tuple[dict[str, np.ndarray], bool]:
        """The full-size maps of a pair (vi, ir, label, bi, bd, mask as in the item, as numpy arrays) and
        whether it has a label."""
        rgb, thermal, label = load_pair(pair, self.class_set.num_classes)
        h, w = thermal.shape
        if label is not None:
            bi, bd, mask = derive_maps(label, self.salient_classes)
        else:
            label = np.full((h, w), IGNORE_LABEL, dtype=np.int64)
            bi, bd, mask = (np.zeros((h, w), dtype=np.float32) for _ in range(3))
        maps = {
            "vi": rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0),
            "ir": self.thermal_normalization.apply(thermal).numpy()[None],
            "label": label,
            "bi": bi,
            "bd": bd,
            "mask": mask,
        }
        return maps, pair.has_label
