"""`mafs calibrate`: measure the thermal -> RGB homography (registration.homography) from image pairs or a bag."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..constants import QUEUE_SIZE, RGB_TOPIC, SLOP_S, THERMAL_OFFSET_S, THERMAL_TOPIC, absolute_topic

if TYPE_CHECKING:
    from ..calibrate import CalibrationResult

logger = logging.getLogger(__package__)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, nargs="?",
                        help="a rosbag2 (folder or .mcap / .db3 file) with both cameras; or give --ir and --vi")
    parser.add_argument("--ir", type=Path, help="thermal image file or folder (folders are paired by file stem)")
    parser.add_argument("--vi", type=Path, help="visible image file or folder")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder: registration.yaml (only for a good result), report.json, overlay.png")
    parser.add_argument("--pairs", type=int, default=8, metavar="N",
                        help="use at most N pairs, spread evenly over the folder or bag (default 8)")
    parser.add_argument("--points", type=Path, metavar="FILE",
                        help="manual mode: lines 'thermal_x thermal_y rgb_x rgb_y' (at least 4) give the homography "
                             "by least squares")
    parser.add_argument("--ransac", type=float, default=None, metavar="PX",
                        help="with --points: RANSAC with this inlier threshold in RGB pixels (default: least squares "
                             "over all points)")
    parser.add_argument("--refine", action="store_true",
                        help="with --points: refine the points' homography on the image content")
    parser.add_argument("--min-score", type=float, default=0.1,
                        help="edge correlation below which the automatic result counts as failed (default 0.1)")
    rgb, thermal = absolute_topic(RGB_TOPIC), absolute_topic(THERMAL_TOPIC)
    bag = parser.add_argument_group("bag mode (the node's topics and sync.* parameters)")
    bag.add_argument("--rgb-topic", default=rgb, help=f"default {rgb}")
    bag.add_argument("--thermal-topic", default=thermal, help=f"default {thermal}")
    bag.add_argument("--slop-s", type=float, default=SLOP_S, help=f"default {SLOP_S}")
    bag.add_argument("--queue-size", type=int, default=QUEUE_SIZE, help=f"default {QUEUE_SIZE}")
    bag.add_argument("--thermal-offset-s", type=float, default=THERMAL_OFFSET_S, help=f"default {THERMAL_OFFSET_S}")


def run_calibrate(args: argparse.Namespace) -> int:
    from ..calibrate import (
        CalibrationInputError,
        calibrate,
        homography_from_points,
        pairs_from_bag,
        pairs_from_paths,
        read_points,
        write_outputs,
    )

    if (args.bag is None) == (args.ir is None and args.vi is None) or (args.ir is None) != (args.vi is None):
        logger.error("give either a BAG or both --ir and --vi")
        return 2
    if args.pairs < 1:
        logger.error("--pairs must be at least 1, got %d", args.pairs)
        return 2
    if (args.refine or args.ransac is not None) and args.points is None:
        logger.error("--refine and --ransac need --points")
        return 2
    try:
        points = None
        if args.points is not None:
            points = homography_from_points(*read_points(args.points), ransac_px=args.ransac)
        if args.bag is not None:
            pairs = pairs_from_bag(args.bag, args.rgb_topic, args.thermal_topic, limit=args.pairs,
                                   slop_s=args.slop_s, queue_size=args.queue_size,
                                   thermal_offset_s=args.thermal_offset_s)
        else:
            pairs = pairs_from_paths(args.ir, args.vi, limit=args.pairs)
        result = calibrate(pairs, points=points, refine_points=args.refine, min_score=args.min_score)
    except CalibrationInputError as exc:
        logger.error("%s", exc)
        return 2
    try:
        files = write_outputs(result, pairs, args.out)
    except OSError as exc:
        logger.error("cannot write the calibration outputs: %s", exc)
        return 2
    _print_result(result, len(pairs), args.out, files)
    if not result.ok:
        logger.error("calibration failed: %s; registration.yaml not written", result.reason)
        return 1
    return 0


def _print_result(result: "CalibrationResult", pair_count: int, out: Path, files: list[str]) -> None:
    matrix = result.homography / result.homography[2, 2]
    print(f"mafs calibrate ({result.mode}, {pair_count} pair(s), thermal {result.thermal_size[0]}x"
          f"{result.thermal_size[1]} -> RGB {result.rgb_size[0]}x{result.rgb_size[1]}):")
    for row in matrix:
        print("  [" + ", ".join(f"{v:12.6g}" for v in row) + "]")
    print(f"edge correlation: {result.score_before:.3f} at the start, {result.score_after:.3f} after")
    if result.points is not None:
        print(f"points: {result.points['inliers']} of {result.points['count']} used, reprojection error mean "
              f"{result.points['mean_px']:.2f} px, max {result.points['max_px']:.2f} px")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(str(out / name) for name in files)}")
