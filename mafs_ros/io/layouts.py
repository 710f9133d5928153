"""Dataset folder layouts: which files of a dataset folder form the pairs of a split (`discover_pairs`).

Folder names match case-insensitively, files are paired by stem:

    msrs    ROOT/{train,test}/{vi, ir, Segmentation_labels | label}/STEM.png
    mfnet   ROOT/images/STEM.png (4 channels: R, G, B, thermal), ROOT/labels/STEM.png,
            ROOT/{train,val,test}.txt (the official split lists: one stem per line)
    fmb     ROOT/{train,test}/{Visible | vi, Infrared | ir, Label | label}/STEM.png
    pst900  ROOT/{train,test}/{rgb, thermal, labels}/STEM.png
    pairs   ROOT/{ir, vi}/STEM.* plus optionally ROOT/label/STEM.png (no split; labels may be missing)

The dataset layouts require a label for every pair; `pairs` is for fusion-only (unlabelled) data.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .files import image_files
from ..errors import ConfigurationError, MafsError

LAYOUTS = ("msrs", "mfnet", "fmb", "pst900", "pairs")

# Per split-folder layout: accepted names of the (visible, infrared, label) folders, preferred first. Layout
# detection uses only the first name, because fmb also accepts msrs's lowercase names.
_SPLIT_FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "msrs": (("vi",), ("ir",), ("Segmentation_labels", "label")),
    "fmb": (("Visible", "vi"), ("Infrared", "ir"), ("Label", "label")),
    "pst900": (("rgb",), ("thermal",), ("labels",)),
}

MAX_LISTED_PROBLEMS = 50


class DatasetError(MafsError, ValueError):
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
        raise ConfigurationError(f"unknown dataset layout {layout!r}; known: {LAYOUTS} or 'auto'")
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


def select_stems(
    pairs: Sequence[PairFiles], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[PairFiles]:
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
    vi_files, problems = image_files(vi_dir)
    ir_files, ir_problems = image_files(ir_dir)
    problems += ir_problems
    label_files: dict[str, Path] = {}
    if label_dir is not None:
        label_files, label_problems = image_files(label_dir)
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
