"""Training data: label-derived maps, joint augmentation, Stage-I masking and the torch Dataset.

The dataset folder layouts (`discover_pairs`) and the image readers (`load_pair`) are in `mafs_ros.io`, which
does not need torch.

Randomness: every item draws from its own numpy Generator seeded with (seed, epoch, index), so a sample depends
on these three numbers only: not on the number of DataLoader workers, on which worker loads it, on the DDP
rank, or on whether the run was resumed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..class_sets import IGNORE_LABEL, ClassSet, get_class_set
from ..imaging import ThermalNormalization
from ..io.images import load_pair, read_label
from ..io.layouts import DatasetError, PairFiles, discover_pairs, select_stems
from ..io.splits import holdout
from .config import DataConfig, DataSource

# Thermally salient classes (our choice: objects that stand out in a thermal image), by name, so that the ids
# follow each class list:
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


# ---------------------------------------------------------------------------------------------------------
# Which pairs train and which validate


def split_pairs(data: DataConfig) -> tuple[list[PairFiles], list[PairFiles]]:
    """The training and validation pairs of a recipe's data section (repeats included).

    The sources marked `holdout` (in either list) are split together by `data.protocol` (io/splits.py): the
    held-out frames leave data.train and are the only ones data.val keeps; guard frames leave both.
    """
    def folder(s: DataSource) -> tuple[str, str, str]:
        return (s.root, s.layout, s.split)

    # Keyed by folder, so that a folder listed for training and for validation is read once.
    found = {folder(s): discover_pairs(*folder(s)) for s in (*data.train, *data.val)}
    split_stems = {
        p.stem for s in (*data.train, *data.val) if s.holdout for p in found[folder(s)] if p.label is not None
    }
    split = holdout(split_stems, data.protocol)

    def pairs(sources: list[DataSource], validation: bool) -> list[PairFiles]:
        kept_all = []
        for source in sources:
            kept = select_stems(found[folder(source)], source.include, source.exclude)
            if source.holdout:
                kept = [p for p in kept if (p.stem in split.held_out if validation else split.trains(p.stem))]
            # A split source may hold none of the held-out frames: the protocol picks over all of them together.
            if found[folder(source)] and not kept and not source.holdout:
                raise ValueError(f"{source.root}: include {source.include} / exclude {source.exclude} leave no pair")
            if source.repeat < 1:
                raise ValueError(f"{source.root}: repeat must be >= 1, got {source.repeat}")
            kept_all += kept * source.repeat
        return kept_all

    train, val = pairs(data.train, validation=False), pairs(data.val, validation=True)
    if not train:
        raise ValueError("the training config lists no training data (data.train)")
    return train, val


def repeat_rare_frames(pairs: Sequence[PairFiles], num_classes: int, threshold: float) -> list[PairFiles]:
    """Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019) over labelled frames: a class shown in a fraction
    f of the distinct labelled frames asks for max(1, sqrt(threshold / f)) times the frames showing it, and each
    labelled pair of n copies in `pairs` gets round(n * r), r the largest factor its classes ask for.

    Why frames and not pixels: a class seen in a handful of frames (bumps, guardrails) is learnt by one seed and
    missed by the next; more steps on those frames make it steadier, where class weights or crops would only
    reweight pixels of frames that are already drawn. threshold 0 returns `pairs` unchanged.
    """
    if threshold < 0:
        raise ValueError(f"repeat_threshold must be >= 0, got {threshold}")
    labelled = sorted({p.label for p in pairs if p.label is not None})
    if not threshold or not labelled:
        return list(pairs)
    shown, frames = {}, np.zeros(num_classes, dtype=np.int64)
    for label in labelled:
        ids = np.unique(read_label(label, num_classes))
        shown[label] = ids[ids < num_classes]  # the ignore label is no class
        frames[shown[label]] += 1
    factor = {
        label: max([1.0, *(math.sqrt(threshold * len(labelled) / frames[c]) for c in ids)])
        for label, ids in shown.items()
    }
    copies = Counter(pairs)  # in first-seen order
    return [p for p, n in copies.items() for _ in range(round(n * factor[p.label]) if p.label is not None else n)]


# ---------------------------------------------------------------------------------------------------------
# Maps derived from the label: the targets of the binary, boundary and salient-object losses


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
# Stage-I masking (the official complementary grid masks)


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
    """vi_masked = vi m1 + U(0,1) (1 - m1), ir_masked = ir m2 + U(0,1) (1 - m2), the official Stage-I inputs.

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
# Joint augmentation (the official recipe: flip, rotate, then random crop; the same for every map)
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
    """The same random flip, rotation and crop for every map (in the official order).

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
    scale_range: tuple[float, float] = SCENE_SCALES, focus: Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """Upright augmentation for camera scenes: a horizontal flip (1 in 2), a random scale, then a random crop,
    the same for every map (..., H, W). Road scenes are never upside down, so unlike the official flips and
    rotations (`joint_augment`) every sample shows a view the deployed camera can see, which is what a
    segmentation head trained on a hundred frames needs.

    rng draws, in order: the flip, the scale (log-uniform in scale_range), the crop's top and left offsets.
    With `focus` (class ids) present in the label, the crop instead holds a random pixel of those classes at a
    random place (rng: the pixel, then its row and column in the crop). A scaled image smaller than the crop is
    scaled up to fit it. Returns C-contiguous copies.
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
        rows, cols = np.nonzero(np.isin(out["label"], focus)) if len(focus) else ((), ())
        if len(rows):
            pick = int(rng.integers(len(rows)))
            top = int(np.clip(rows[pick] - rng.integers(crop_size), 0, size[0] - crop_size))
            left = int(np.clip(cols[pick] - rng.integers(crop_size), 0, size[1] - crop_size))
        else:
            top = int(rng.integers(size[0] - crop_size + 1))
            left = int(rng.integers(size[1] - crop_size + 1))
        out = {k: a[..., top : top + crop_size, left : left + crop_size] for k, a in out.items()}
    return {k: np.array(a, order="C", copy=True) for k, a in out.items()}


def label_pixel_counts(pairs: Iterable[PairFiles], num_classes: int) -> list[int]:
    """Pixels per class id (0..num_classes-1) over the labels of the distinct labelled pairs."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for label_file in sorted({p.label for p in pairs if p.label is not None}):
        label = read_label(label_file, num_classes)
        counts += np.bincount(label[label != IGNORE_LABEL].ravel(), minlength=num_classes)[:num_classes]
    return counts.tolist()


def paste_classes(maps: dict[str, np.ndarray], donor: dict[str, np.ndarray], class_ids: Sequence[int],
                  salient_classes: Iterable[int]) -> dict[str, np.ndarray]:
    """Copy-paste (Ghiasi et al., CVPR 2021) without moving anything: the donor's pixels of `class_ids` (image
    and label) replace the receiver's at the same place, and the label-derived maps are derived again. Both are
    full-size maps of one camera, so a bike or a cone lands where that camera saw one, at a plausible size.
    A donor of another size is resized to the receiver's first."""
    size = maps["label"].shape
    if donor["label"].shape != size:
        donor = resize_maps(donor, size)
    where = np.isin(donor["label"], class_ids)
    if not where.any():
        return maps
    out = dict(maps)
    for key in ("vi", "ir", "label"):
        out[key] = np.where(where, donor[key], maps[key])
    out["bi"], out["bd"], out["mask"] = derive_maps(out["label"], salient_classes)
    return out


def blank_modality(maps: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    """The maps with image `key` ("vi" or "ir") all zeros: a camera that delivers black frames (night for RGB)
    or none. The fusion target then follows the other image (the fused image of one source is that source)."""
    if key not in ("vi", "ir"):
        raise ValueError(f"can blank 'vi' or 'ir', not {key!r}")
    return {**maps, key: np.zeros_like(maps[key])}


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

    crop_size: random square crop (the paper's: 256); None keeps the whole image. An image smaller than the crop is
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
    copy_paste: probability that a labelled item first receives the pixels of `rare_classes` (names in
        class_set) from another labelled pair of the set that shows them (`paste_classes`): rare classes then
        appear in more scenes and next to more backgrounds.
    rare_crop: probability that a labelled item's crop is placed around a random pixel of `rare_classes`
        (scene augmentation only; `scene_augment`'s focus): thin classes a random crop often misses (a curb
        along the bottom edge) are seen in more steps without changing the frames.
    modality_dropout: probability that an item's RGB or (as often) thermal image is blanked (`blank_modality`),
        drawn last: the model learns to segment and fuse from one camera when the other is dark or down.
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
        copy_paste: float = 0.0,
        rare_classes: Sequence[str] = (),
        rare_crop: float = 0.0,
        modality_dropout: float = 0.0,
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
        for name, probability in (("copy_paste", copy_paste), ("rare_crop", rare_crop),
                                  ("modality_dropout", modality_dropout)):
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {probability}")
        if rare_crop and augment != "scene":
            raise ValueError(f"rare_crop needs augment 'scene', got {augment!r}")
        self.copy_paste = copy_paste
        self.rare_crop = rare_crop
        self.modality_dropout = modality_dropout
        self.rare_ids = self._rare_ids(rare_classes)
        self.donors = self._paste_donors() if copy_paste else []
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
            if has_label and self.donors and rng.random() < self.copy_paste:
                donor = self.donors[int(rng.integers(len(self.donors)))]
                maps = paste_classes(maps, self._load(donor)[0], self.rare_ids, self.salient_classes)
            if self.upscale_small and self.crop_size is not None:
                maps = upscale_to_fit(maps, self.crop_size)
            if self.augment == "scene":
                focus = self.rare_ids if has_label and self.rare_crop and rng.random() < self.rare_crop else ()
                maps = scene_augment(maps, rng, crop_size=self.crop_size, focus=focus)
            else:
                maps = joint_augment(maps, rng, crop_size=self.crop_size, flip_rotate=self.augment == "official")
            if self.thermal_augment:
                maps["ir"] = thermal_appearance(maps["ir"], rng)
            if self.modality_dropout and rng.random() < self.modality_dropout:
                maps = blank_modality(maps, "vi" if rng.random() < 0.5 else "ir")
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

    def _rare_ids(self, class_names: Sequence[str]) -> list[int]:
        unknown = sorted(set(class_names) - set(self.class_set.class_names))
        if unknown:
            raise ValueError(f"rare_classes {unknown} are not classes of {self.class_set.name!r}: "
                             f"{list(self.class_set.class_names)}")
        return [self.class_set.class_names.index(name) for name in class_names]

    def _paste_donors(self) -> list[PairFiles]:
        """The distinct labelled pairs that show one of the rare classes."""
        labelled = sorted({p for p in self.pairs if p.label is not None}, key=lambda p: str(p.label))
        return [p for p in labelled if np.isin(read_label(p.label, self.class_set.num_classes), self.rare_ids).any()]

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
