"""Image files of a folder by stem, and pairing two files or two folders by stem (`mafs fuse`, `mafs calibrate`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def images_by_stem(folder: Path) -> dict[str, list[Path]]:
    """The image files of a folder by stem, sorted; a list, since a stem may occur with several suffixes.
    Hidden files are left out."""
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            by_stem.setdefault(path.stem, []).append(path)
    return by_stem


def image_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Image files of a folder by stem, and messages for stems that occur with several suffixes (left out)."""
    by_stem = images_by_stem(folder)
    problems = [
        f"ambiguous stem {stem!r} in {folder}: {', '.join(p.name for p in paths)}"
        for stem, paths in by_stem.items()
        if len(paths) > 1
    ]
    return {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}, problems


def collect_pairs(ir: Path, vi: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(stem, ir file, vi file) pairs from two files or two folders (matched by file stem), and messages
    for what could not be paired. Raises ValueError if the paths are neither two files nor two folders."""
    for path in (ir, vi):
        if not path.exists():
            raise DataError(f"no such file or folder: {path}")
    if ir.is_file() and vi.is_file():
        return [(vi.stem, ir, vi)], []
    if not (ir.is_dir() and vi.is_dir()):
        raise DataError(f"--ir and --vi must be two files or two folders, got {ir} and {vi}")
    ir_files, problems = image_files(ir)
    vi_files, vi_problems = image_files(vi)
    problems += vi_problems
    unmatched = ((ir, vi, ir_files.keys() - vi_files.keys()), (vi, ir, vi_files.keys() - ir_files.keys()))
    for folder, other, only in unmatched:
        if only:
            problems.append(f"no partner in {other} for {len(only)} file(s) of {folder}: {', '.join(sorted(only))}")
    pairs = [(stem, ir_files[stem], vi_files[stem]) for stem in sorted(ir_files.keys() & vi_files.keys())]
    return pairs, problems
