"""`mafs eval` (a checkpoint on a folder or dataset split) and `mafs metrics` (fused images made by any method)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .engine_options import add_engine_arguments, engine_or_exit_code

logger = logging.getLogger(__package__)


# ---------------------------------------------------------------------------------------------------------
# mafs eval


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, nargs="+",
                        help="a folder with ir/ and vi/ (label/ optional, may cover some pairs), or a dataset "
                             "root (msrs, mfnet, fmb, pst900 layouts; see mafs_ros/io/layouts.py); several "
                             "folders are evaluated as one set (one confusion matrix)")
    parser.add_argument("--include", nargs="+", default=[], metavar="PATTERN",
                        help="only pairs whose stem matches one of these fnmatch patterns (e.g. '005??D')")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                        help="leave out pairs whose stem matches one of these fnmatch patterns")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: report.json, report.md, contact_sheet.png")
    parser.add_argument("--holdout", choices=("block", "interleaved"), default=None, metavar="PROTOCOL",
                        help="only the labelled frames a validation protocol holds out (block or interleaved; "
                             "mafs_ros/io/splits.py), chosen over all the labelled pairs of --data together")
    parser.add_argument("--blank", choices=("rgb", "thermal"), default=None,
                        help="feed black images for this camera (one camera down, or RGB at night)")
    parser.add_argument("--layout", default="auto",
                        help="folder layout: auto (default), pairs, msrs, mfnet, fmb or pst900")
    parser.add_argument("--split", default="test", help="split of a dataset root (default: test)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N pairs (sorted by stem; MFNet: split-list order)")
    parser.add_argument("--contact-sheet", type=int, default=4, metavar="N",
                        help="images shown in contact_sheet.png (default 4; 0: no contact sheet)")
    parser.add_argument("--save-fused", action="store_true",
                        help="also write the fused luminance the metrics use to OUT/fused/<stem>.png")
    add_engine_arguments(parser)


def run_eval(args: argparse.Namespace) -> int:
    from ..errors import MafsError
    from ..evaluate import evaluate
    from ..io.layouts import discover_pairs, select_stems
    from ..io.splits import holdout
    from ..reports import fusion_table

    if args.limit is not None and args.limit < 1:
        logger.error("--limit must be at least 1, got %d", args.limit)
        return 2
    if args.contact_sheet < 0:
        logger.error("--contact-sheet must not be negative, got %d", args.contact_sheet)
        return 2
    try:  # refuses a dataset with any unpaired file or missing folder, listing every problem
        found = [pair for root in args.data for pair in discover_pairs(root, layout=args.layout, split=args.split)]
    except MafsError as exc:
        logger.error("%s", exc)
        return 2
    pairs = select_stems(found, args.include, args.exclude)
    if args.holdout:
        held_out = holdout([p.stem for p in pairs if p.label is not None], args.holdout).held_out
        pairs = [p for p in pairs if p.stem in held_out]
    pairs = pairs[: args.limit]
    if not pairs:
        logger.error("no pair to evaluate: %d found, none left after --include %s --exclude %s --holdout %s",
                     len(found), args.include, args.exclude, args.holdout)
        return 2
    logger.info("%d pair(s) to evaluate, %d with a label", len(pairs), sum(p.label is not None for p in pairs))
    engine = engine_or_exit_code(args)
    if isinstance(engine, int):
        return engine

    try:
        report = evaluate(engine, pairs, args.out, contact_sheet_count=args.contact_sheet,
                          save_fused=args.save_fused, blank=args.blank)
    except MafsError as exc:  # no pair could be evaluated (each one was logged)
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("cannot write the evaluation outputs: %s", exc)
        return 2
    print(f"mafs eval: {report['images']} of {len(pairs)} pair(s) evaluated; report in {args.out / 'report.json'} "
          f"and {args.out / 'report.md'}")
    print(fusion_table(report["fusion"]))
    seg = report.get("segmentation")
    if seg is not None:
        miou = "n/a" if seg["mIoU"] is None else f"{100 * seg['mIoU']:.2f} %"
        print(f"segmentation: mIoU {miou} over {seg['num_images']} labelled image(s)")
    if report["checkpoint"]["trained"] is False:
        print("(the checkpoint is UNTRAINED: these numbers are meaningless)")
    return 1 if report["skipped"] else 0


# ---------------------------------------------------------------------------------------------------------
# mafs metrics


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ir", type=Path, required=True, help="folder of 8-bit infrared images")
    parser.add_argument("--vi", type=Path, required=True, help="folder of visible images (RGB or grey)")
    parser.add_argument("--fused", type=Path, required=True,
                        help="folder of fused images by any method (8-bit grey, or RGB: its luma is used); "
                             "the three folders are paired by file stem")
    parser.add_argument("--out", type=Path, required=True, help="JSON report to write")


def run_metrics(args: argparse.Namespace) -> int:
    from ..errors import MafsError
    from ..evaluate import metrics_report
    from ..reports import fusion_table, write_json

    try:
        report = metrics_report(args.ir, args.vi, args.fused)
    except MafsError as exc:
        logger.error("%s", exc)
        return 2
    try:
        write_json(args.out, report)
    except OSError as exc:
        logger.error("cannot write %s: %s", args.out, exc)
        return 2
    skipped = len(report["skipped"])
    print(f"mafs metrics: {len(report['per_image'])} image(s) evaluated, report in {args.out}"
          + (f"; {skipped} skipped, see the messages above" if skipped else ""))
    print(fusion_table(report))
    return 1 if skipped else 0
