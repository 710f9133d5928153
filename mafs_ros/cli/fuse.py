"""`mafs fuse`: fuse and segment image pairs from files or folders."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .engine_options import add_engine_arguments, engine_or_exit_code

logger = logging.getLogger(__package__)


def add_fuse_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ir", type=Path, required=True,
                        help="thermal image file or folder (8/16-bit or float TIFF; colour files: red channel)")
    parser.add_argument("--vi", type=Path, required=True,
                        help="visible image file or folder; folders are paired by file stem, two files are "
                             "paired as given and the outputs take the visible file's stem")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: fused/, labels/ (class ids, mono8) and overlay/ PNGs")
    add_engine_arguments(parser)


def run_fuse(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from ..errors import MafsError
    from ..io.files import collect_pairs
    from ..io.images import read_thermal, read_visible

    try:
        pairs, problems = collect_pairs(args.ir, args.vi)
    except MafsError as exc:
        logger.error("%s", exc)
        return 2
    for message in problems:
        logger.error("%s", message)
    if not pairs:
        logger.error("no image pairs found (ir: %s, vi: %s)", args.ir, args.vi)
        return 2
    engine = engine_or_exit_code(args)
    if isinstance(engine, int):
        return engine

    folders = {name: args.out / name for name in ("fused", "labels", "overlay")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    failures = len(problems)
    written = 0
    for stem, ir_path, vi_path in tqdm(pairs, desc="fuse", unit="pair", disable=None):
        try:
            result = engine.infer(read_visible(vi_path), read_thermal(ir_path), want_confidence=False,
                                  want_overlay=True)
        except MafsError as exc:
            failures += 1
            logger.error("pair %r (ir %s, vi %s): %s", stem, ir_path, vi_path, exc)
            continue
        outputs = {
            "fused": cv2.cvtColor(result.fused_rgb, cv2.COLOR_RGB2BGR),
            "labels": result.labels,
            "overlay": cv2.cvtColor(result.overlay, cv2.COLOR_RGB2BGR),
        }
        failed = [name for name, image in outputs.items() if not cv2.imwrite(str(folders[name] / f"{stem}.png"), image)]
        if failed:
            failures += 1
            logger.error("pair %r: could not write %s under %s", stem, ", ".join(failed), args.out)
            continue
        written += 1
    summary = f"mafs fuse: {written} of {len(pairs)} pair(s) written to {args.out}"
    print(summary + (f"; {failures} problem(s), see the messages above" if failures else ""))
    return 1 if failures else 0
