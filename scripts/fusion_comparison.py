#!/usr/bin/env python3
"""A side-by-side picture of fused images: infrared, visible, then each method's fused luminance, one row per
pair, with the same crop of every image (to see halos, noise and kept texture at full resolution).

    .venv/bin/python scripts/fusion_comparison.py --pairs ../shared/data/msrs_sample --stems 00298D 01020N \
        --method "max(ir, Y)=eval_shipped/msrs_sample/max" --method "SeAFusion=../shared/reference/peers/seafusion_msrs_sample" \
        --method "mafs-lite=eval_shipped/msrs_sample/fused" --crop 80 160 240 320 --out docs/images/fusion_comparison.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

LABEL_HEIGHT = 22


def _grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _find(folder: Path, stem: str) -> Path:
    matches = sorted(folder.glob(f"{stem}.*"))
    if not matches:
        raise SystemExit(f"no image {stem}.* in {folder}")
    return matches[0]


def _labelled(tile: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((LABEL_HEIGHT, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, LABEL_HEIGHT - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, tile])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, required=True, help="folder with ir/ and vi/")
    parser.add_argument("--stems", nargs="+", required=True)
    parser.add_argument("--method", action="append", required=True, metavar="NAME=FOLDER",
                        help="a method's fused images (grey or RGB; luma is shown), by stem")
    parser.add_argument("--crop", type=int, nargs=4, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"),
                        help="the same crop of every image (default: whole images)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    methods = [tuple(item.split("=", 1)) for item in args.method]
    rows = []
    for stem in args.stems:
        columns = [("infrared", _find(args.pairs / "ir", stem)), ("visible (luma)", _find(args.pairs / "vi", stem))]
        columns += [(name, _find(Path(folder), stem)) for name, folder in methods]
        tiles = []
        for name, path in columns:
            image = _grey(path)
            if args.crop:
                top, left, height, width = args.crop
                image = image[top : top + height, left : left + width]
            tiles.append(_labelled(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), f"{stem} {name}"))
        rows.append(np.hstack(tiles))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), np.vstack(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
