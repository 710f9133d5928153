"""Class names and RGB palettes of the datasets MAFS is trained on (MFNet/MSRS, FMB, PST900).

A palette is only for visualisation; the network predicts class ids. Label id 255 (`IGNORE_LABEL`) is
reserved: it is never a class, it is skipped by the metrics and left uncoloured by `imaging.overlay`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_LABEL = 255

Color = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """The classes of one dataset: `class_names[i]` is drawn with `palette[i]` (RGB, 0..255)."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[Color, ...]

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"class set {self.name!r}: {len(self.class_names)} names but {len(self.palette)} colours"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette_array(self) -> np.ndarray:
        """The palette as a (num_classes, 3) uint8 array."""
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)


# MFNet (Ha et al., IROS 2017); MSRS reuses its labels. Palette of RTFNet / MSRS visualize.py.
MFNET = ClassSet(
    name="mfnet",
    class_names=("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump"),
    palette=(
        (0, 0, 0),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
        (0, 0, 192),
        (128, 128, 0),
        (64, 64, 128),
        (192, 128, 128),
        (192, 64, 0),
    ),
)

MSRS = ClassSet(name="msrs", class_names=MFNET.class_names, palette=MFNET.palette)

# FMB (Liu et al., SegMiF, ICCV 2023): 14 classes + unlabeled. Cityscapes colours for the shared classes.
FMB = ClassSet(
    name="fmb",
    class_names=(
        "unlabeled",
        "road",
        "sidewalk",
        "building",
        "traffic_light",
        "traffic_sign",
        "vegetation",
        "sky",
        "person",
        "car",
        "truck",
        "bus",
        "motorcycle",
        "bicycle",
        "pole",
    ),
    palette=(
        (0, 0, 0),
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (70, 130, 180),
        (220, 20, 60),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 0, 230),
        (119, 11, 32),
        (153, 153, 153),
    ),
)

# PST900 (Shivakumar et al., ICRA 2020). The dataset defines no palette; these colours are ours.
PST900 = ClassSet(
    name="pst900",
    class_names=("background", "fire_extinguisher", "backpack", "hand_drill", "survivor"),
    palette=((0, 0, 0), (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)),
)

CLASS_SETS: dict[str, ClassSet] = {cs.name: cs for cs in (MFNET, MSRS, FMB, PST900)}

# Which named set a bare class count stands for (MSRS and MFNet share 9 classes; mfnet is the original).
_DEFAULT_FOR_COUNT: dict[int, ClassSet] = {9: MFNET, 15: FMB, 5: PST900}


def get_class_set(name: str) -> ClassSet:
    """The named class set: one of `CLASS_SETS` (mfnet, msrs, fmb, pst900)."""
    if name not in CLASS_SETS:
        raise KeyError(f"unknown class set {name!r}; known: {sorted(CLASS_SETS)}")
    return CLASS_SETS[name]


def generic_palette(num_colors: int) -> tuple[Color, ...]:
    """Distinct colours for any class count: the PASCAL VOC bit-interleaving palette (id 0 is black)."""
    colors = []
    for class_id in range(num_colors):
        r = g = b = 0
        c = class_id
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


def default_class_set(num_classes: int) -> ClassSet:
    """The class set a model with `num_classes` outputs most likely uses.

    9 -> mfnet, 15 -> fmb, 5 -> pst900; any other count gets names `class_0..` and `generic_palette`.
    """
    if num_classes in _DEFAULT_FOR_COUNT:
        return _DEFAULT_FOR_COUNT[num_classes]
    if not 1 <= num_classes < IGNORE_LABEL:
        raise ValueError(f"num_classes must be in 1..{IGNORE_LABEL - 1}, got {num_classes}")
    return ClassSet(
        name=f"generic{num_classes}",
        class_names=tuple(f"class_{i}" for i in range(num_classes)),
        palette=generic_palette(num_classes),
    )
