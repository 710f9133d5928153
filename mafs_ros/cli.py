"""The `mafs` command line: one argparse sub-command per task, all registered in `COMMANDS`.

To add a sub-command, write `add_<name>_arguments(parser)` and `run_<name>(args) -> exit code` (import
heavy modules inside `run_<name>`, so `mafs --help` stays fast) and append a `Command` to `COMMANDS`.
Commands that run the network take the shared engine options with `add_engine_arguments` and build the
engine with `engine_from_args`.

Exit codes: 0 all fine, 1 some inputs failed (the rest were processed), 2 nothing could be done (bad
arguments, unusable checkpoint or device).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__

if TYPE_CHECKING:
    from .engine import MafsEngine

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------------------------
# Shared engine options


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --device, --precision, --thermal-norm, --size-policy (see MafsEngine)."""
    group = parser.add_argument_group("model and device")
    group.add_argument("--checkpoint", type=Path, default=None,
                       help="mafs_ros checkpoint (.safetensors); default: the packaged one")
    group.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    group.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                       help="autocast: fp16 needs CUDA, bf16 runs on CUDA or CPU (default: fp32)")
    group.add_argument("--thermal-norm", default=None, metavar="SPEC",
                       help="override the checkpoint's thermal normalisation: fixed, fixed:LO,HI, minmax, "
                            "percentile or percentile:P_LO,P_HI")
    group.add_argument("--size-policy", default="resize", choices=["resize", "pad"],
                       help="resize to a multiple of 32 (official protocol, default) or reflect-pad")


def engine_from_args(args: argparse.Namespace) -> "MafsEngine":
    """A MafsEngine from the options of `add_engine_arguments` (raises its construction errors)."""
    from .engine import MafsEngine

    return MafsEngine(
        args.checkpoint,
        device=args.device,
        precision=args.precision,
        thermal_normalization=args.thermal_norm,
        size_policy=args.size_policy,
    )


# ---------------------------------------------------------------------------------------------------------
# mafs fuse


def add_fuse_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ir", type=Path, required=True,
                        help="thermal image file or folder (8/16-bit or float TIFF; colour files: red channel)")
    parser.add_argument("--vi", type=Path, required=True,
                        help="visible image file or folder; folders are paired by file stem, two files are "
                             "paired as given and the outputs take the visible file's stem")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: fused/, labels/ (class ids, mono8) and overlay/ PNGs")
    add_engine_arguments(parser)


def _image_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Image files of a folder by stem, and messages for stems that occur with several suffixes."""
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            by_stem.setdefault(path.stem, []).append(path)
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
            raise ValueError(f"no such file or folder: {path}")
    if ir.is_file() and vi.is_file():
        return [(vi.stem, ir, vi)], []
    if not (ir.is_dir() and vi.is_dir()):
        raise ValueError(f"--ir and --vi must be two files or two folders, got {ir} and {vi}")
    ir_files, problems = _image_files(ir)
    vi_files, vi_problems = _image_files(vi)
    problems += vi_problems
    unmatched = ((ir, vi, ir_files.keys() - vi_files.keys()), (vi, ir, vi_files.keys() - ir_files.keys()))
    for folder, other, only in unmatched:
        if only:
            problems.append(f"no partner in {other} for {len(only)} file(s) of {folder}: {', '.join(sorted(only))}")
    pairs = [(stem, ir_files[stem], vi_files[stem]) for stem in sorted(ir_files.keys() & vi_files.keys())]
    return pairs, problems


def read_visible(path: Path) -> np.ndarray:
    """A visible image file as (H, W, 3) uint8 RGB (grey files are expanded, 16-bit reduced to 8)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image file {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_thermal(path: Path) -> np.ndarray:
    """A thermal image file unchanged in depth (8/16-bit, float TIFF) as (H, W); from a colour file the
    first (red) channel is kept, as the official code keeps the first channel of its RGB tensor."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image file {path}")
    if image.ndim == 3:
        image = image[:, :, 2] if image.shape[2] in (3, 4) else image[:, :, 0]  # OpenCV stores BGR(A)
    return image


def run_fuse(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    try:
        pairs, problems = collect_pairs(args.ir, args.vi)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    for message in problems:
        logger.error("%s", message)
    if not pairs:
        logger.error("no image pairs found (ir: %s, vi: %s)", args.ir, args.vi)
        return 2
    from .checkpoint import CheckpointError

    try:
        engine = engine_from_args(args)
    except (CheckpointError, ValueError, RuntimeError) as exc:  # bad checkpoint, device, precision, norm
        logger.error("cannot set up the model: %s", exc)
        return 2

    folders = {name: args.out / name for name in ("fused", "labels", "overlay")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    failures = len(problems)
    written = 0
    for stem, ir_path, vi_path in tqdm(pairs, desc="fuse", unit="pair", disable=None):
        try:
            result = engine.infer(read_visible(vi_path), read_thermal(ir_path), want_confidence=False,
                                  want_overlay=True)
        except ValueError as exc:
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


# ---------------------------------------------------------------------------------------------------------
# mafs import-official


def add_import_official_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("official", type=Path, metavar="CKPT",
                        help="checkpoint released with the paper ({'MTAN': state_dict} or a bare state dict)")
    parser.add_argument("--classes", type=int, required=True,
                        help="classes of its seg head: 9 (MFNet/MSRS), 15 (FMB) or 5 (PST900)")
    parser.add_argument("--out", type=Path, required=True, help="our checkpoint to write (.safetensors)")


def run_import_official(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .class_sets import default_class_set
    from .model import build_model
    from .model.official import OfficialCheckpointError, load_official_checkpoint

    try:
        cfg, state_dict = load_official_checkpoint(args.official, args.classes)
    except (FileNotFoundError, OfficialCheckpointError) as exc:
        logger.error("%s", exc)
        return 2
    net = build_model(cfg)
    net.load_state_dict(state_dict, strict=True)
    class_set = default_class_set(args.classes)
    save_checkpoint(
        args.out, net, class_set.class_names, class_set.palette,
        # The official test code feeds the 8-bit infrared PNGs divided by 255.
        thermal_normalization="fixed", trained=True,
        description=f"official MAFS checkpoint {args.official.name}, converted by mafs import-official",
        extra={"official_source": str(args.official), "class_set": class_set.name},
    )
    print(f"wrote {args.out} ({cfg.name}, {args.classes} classes {class_set.name}, eaef_gate={cfg.eaef_gate})")
    return 0


# ---------------------------------------------------------------------------------------------------------
# mafs model-info


def add_model_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="mafs-lite", help="named model config (mafs, mafs-lite)")
    parser.add_argument("--classes", type=int, default=9, help="number of classes (default 9)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)


def run_model_info(args: argparse.Namespace) -> int:
    from .model import build_model, get_config
    from .model.complexity import count_macs, count_parameters

    net = build_model(get_config(args.config, num_classes=args.classes))
    params = count_parameters(net)
    macs = count_macs(net, args.height, args.width)
    print(f"{args.config}: {params / 1e6:.3f} M parameters, {macs / 1e9:.2f} GMACs at {args.height}x{args.width}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# mafs eval


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, nargs="+",
                        help="a folder with ir/ and vi/ (label/ optional, may cover some pairs), or a dataset "
                             "root (msrs, mfnet, fmb, pst900 layouts; see mafs_ros/train/data.py); several "
                             "folders are evaluated as one set (one confusion matrix)")
    parser.add_argument("--include", nargs="+", default=[], metavar="PATTERN",
                        help="only pairs whose stem matches one of these fnmatch patterns (e.g. '005??D')")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                        help="leave out pairs whose stem matches one of these fnmatch patterns")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: report.json, report.md, contact_sheet.png")
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
    from .checkpoint import CheckpointError
    from .evaluate import evaluate, fusion_table
    from .train.data import discover_pairs, select_stems

    if args.limit is not None and args.limit < 1:
        logger.error("--limit must be at least 1, got %d", args.limit)
        return 2
    if args.contact_sheet < 0:
        logger.error("--contact-sheet must not be negative, got %d", args.contact_sheet)
        return 2
    try:  # refuses a dataset with any unpaired file or missing folder, listing every problem
        found = [pair for root in args.data for pair in discover_pairs(root, layout=args.layout, split=args.split)]
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    pairs = select_stems(found, args.include, args.exclude)[: args.limit]
    if not pairs:
        logger.error("no pair to evaluate: %d found, none left after --include %s --exclude %s",
                     len(found), args.include, args.exclude)
        return 2
    logger.info("%d pair(s) to evaluate, %d with a label", len(pairs), sum(p.label is not None for p in pairs))
    try:
        engine = engine_from_args(args)
    except (CheckpointError, ValueError, RuntimeError) as exc:  # bad checkpoint, device, precision, norm
        logger.error("cannot set up the model: %s", exc)
        return 2

    try:
        report = evaluate(engine, pairs, args.out, contact_sheet_count=args.contact_sheet,
                          save_fused=args.save_fused)
    except ValueError as exc:  # no pair could be evaluated (each one was logged)
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
    from .evaluate import fusion_table, metrics_report, write_json

    try:
        report = metrics_report(args.ir, args.vi, args.fused)
    except ValueError as exc:
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


# ---------------------------------------------------------------------------------------------------------
# mafs replay


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    # From bags, not replay: replay imports torch, and `mafs --help` builds every parser.
    from .bags import CAMERA_INFO_TOPIC, GROUND_TRUTH_TOPIC, RESULT_TOPIC, RGB_TOPIC, THERMAL_TOPIC

    # The node's sync.* and registration.homography defaults (= replay.DEFAULT_*, ros.registration.
    # IDENTITY_HOMOGRAPHY, which would import cv2).
    slop_s, queue_size, thermal_offset_s, max_wait_s = 0.05, 10, 0.0, 0.05
    identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]

    parser.add_argument("bag", type=Path, nargs="?",
                        help="input rosbag2: a folder with metadata.yaml or a .mcap / .db3 file (sqlite3 or MCAP)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder: bag/ (the node's output topics), report.json, report.md, plots")
    parser.add_argument("--list", action="store_true", help="print the bag's topics, types and message counts")
    parser.add_argument("--from-recording", type=Path, metavar="OUTPUT_BAG",
                        help="instead of running the model, report on a recorded live run: a bag with the "
                             "node's input topics and its /mafs/result")
    topics = parser.add_argument_group("topics (with or without the leading slash)")
    topics.add_argument("--rgb-topic", default=RGB_TOPIC, help=f"default {RGB_TOPIC}")
    topics.add_argument("--thermal-topic", default=THERMAL_TOPIC, help=f"default {THERMAL_TOPIC}")
    topics.add_argument("--camera-info-topic", default=CAMERA_INFO_TOPIC,
                        help=f"RGB camera info, republished as /fused/camera_info when present (default "
                             f"{CAMERA_INFO_TOPIC}; '' to ignore)")
    topics.add_argument("--labels-topic", default=GROUND_TRUTH_TOPIC,
                        help=f"ground-truth label images (class ids, mono8), matched to RGB frames by stamp; "
                             f"used when present (default {GROUND_TRUTH_TOPIC}; '' to ignore)")
    topics.add_argument("--result-topic", default=RESULT_TOPIC,
                        help=f"--from-recording: the node's FusedSegmentation topic (default {RESULT_TOPIC})")
    pairing = parser.add_argument_group("pairing (the node's sync.* parameters)")
    pairing.add_argument("--slop-s", type=float, default=slop_s,
                         help=f"largest |thermal stamp + offset - RGB stamp| of a pair (default {slop_s})")
    pairing.add_argument("--queue-size", type=int, default=queue_size,
                         help=f"frames held per stream while waiting for a partner (default {queue_size})")
    pairing.add_argument("--thermal-offset-s", type=float, default=thermal_offset_s,
                         help="added to thermal stamps before pairing (thermal stamped 40 ms later than RGB: -0.04; "
                              f"default {thermal_offset_s})")
    pairing.add_argument("--max-wait-s", type=float, default=max_wait_s,
                         help="longest wait (bag receive time) of a thermal frame for a nearer RGB frame "
                              f"(default {max_wait_s})")
    pairing.add_argument("--homography", type=float, nargs=9, default=identity,
                         metavar=("H11", "H12", "H13", "H21", "H22", "H23", "H31", "H32", "H33"),
                         help="the node's registration.homography: row-major 3x3, thermal pixels -> RGB pixels; "
                              "thermal is warped into the RGB image before fusion (default: identity, no warp)")
    pairing.add_argument("--homography-file", type=Path, default=None, metavar="FILE",
                         help="read registration.homography from a ROS 2 params file instead: the "
                              "registration.yaml of `mafs calibrate`, or the file the node takes with --params-file")
    output = parser.add_argument_group("output")
    output.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"],
                        help="storage of the output bag (default mcap)")
    output.add_argument("--no-inputs", action="store_true",
                        help="do not copy the input topics into the output bag (smaller, but rviz2 then shows "
                             "only the outputs)")
    output.add_argument("--overwrite", action="store_true", help="replace an existing DIR/bag")
    output.add_argument("--contact-sheet", type=int, default=4, metavar="N",
                        help="sample pairs in contact_sheet.png (default 4; 0: none)")
    add_engine_arguments(parser)


def run_replay(args: argparse.Namespace) -> int:
    from .bags import BagError, format_topics, list_topics

    if (args.bag is None) == (args.from_recording is None):
        logger.error("give either a BAG to replay or --from-recording OUTPUT_BAG")
        return 2
    bag = args.bag if args.bag is not None else args.from_recording
    if args.list:
        try:
            print(format_topics(list_topics(bag)))
        except BagError as exc:
            logger.error("%s", exc)
            return 2
        return 0
    from .checkpoint import CheckpointError
    from .evaluate import format_metrics, format_table
    from .metrics import FUSION_METRIC_NAMES
    from .replay import ReplayError, replay, report_from_recording
    from .ros.registration import parse_homography, read_homography_file
    if args.out is None:
        logger.error("--out DIR is required (or --list)")
        return 2
    if args.contact_sheet < 0:
        logger.error("--contact-sheet must not be negative, got %d", args.contact_sheet)
        return 2
    try:  # before the model is loaded
        if args.homography_file is not None:
            if args.homography != [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]:
                raise ValueError("give either --homography or --homography-file, not both")
            args.homography = read_homography_file(args.homography_file)
        parse_homography(args.homography, "--homography")
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    topics = {"rgb_topic": args.rgb_topic, "thermal_topic": args.thermal_topic, "labels_topic": args.labels_topic}
    try:
        if args.from_recording is not None:
            report = report_from_recording(
                bag, args.out, **topics, result_topic=args.result_topic, thermal_normalization=args.thermal_norm,
                thermal_offset_s=args.thermal_offset_s, homography=args.homography,
                contact_sheet_count=args.contact_sheet,
            )
        else:
            try:
                engine = engine_from_args(args)
            except (CheckpointError, ValueError, RuntimeError) as exc:  # bad checkpoint, device, precision, norm
                logger.error("cannot set up the model: %s", exc)
                return 2
            report = replay(
                bag, args.out, engine=engine, **topics, camera_info_topic=args.camera_info_topic,
                slop_s=args.slop_s, queue_size=args.queue_size, thermal_offset_s=args.thermal_offset_s,
                max_wait_s=args.max_wait_s, homography=args.homography, storage=args.storage,
                copy_inputs=not args.no_inputs, overwrite=args.overwrite, contact_sheet_count=args.contact_sheet,
            )
    except (ReplayError, ValueError) as exc:  # unusable bag, missing topic, existing output, bad parameter
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("cannot write the replay outputs: %s", exc)
        return 2

    unmatched = ", ".join(f"{topic} {n}" for topic, n in report["unmatched"].items())
    print(f"mafs replay: {report['pairs_fused']} pair(s) fused and scored from {bag} (unmatched frames: {unmatched}"
          + (f"; skipped: {report['skipped']}" if report["skipped"] else "") + ")")
    if report["fusion"]["mean"] is not None:
        print(format_table(["set", "pairs", *FUSION_METRIC_NAMES],
                           [["mean", str(report["pairs_fused"]), *format_metrics(report["fusion"]["mean"])]],
                           markdown=False))
    seg = report.get("segmentation")
    if seg is not None and seg["mIoU"] is not None:
        print(f"segmentation: mIoU {100 * seg['mIoU']:.2f} % over {seg['num_images']} labelled pair(s)")
    output_bag = f", output bag: {report['output_bag']}" if report["output_bag"] else ""
    print(f"report: {args.out / 'report.md'}{output_bag}")
    if report.get("checkpoint", {}).get("trained") is False:
        print("(the checkpoint is UNTRAINED: these numbers are meaningless)")
    return 1 if report["read_error"] or report["skipped"] else 0


# ---------------------------------------------------------------------------------------------------------
# mafs train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="training recipe (YAML), e.g. config/train/mafs_lite.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt exactly")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set stage2.epochs=3 (YAML value syntax)")


def run_train(args: argparse.Namespace) -> int:
    # Before torch starts OpenMP: with spinning (active) waits, a training step on a CPU shared with any other
    # busy process runs several times slower, because each parallel region waits for a descheduled thread.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import yaml

    from .train.config import load_train_config
    from .train.trainer import train

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            logger.error("--set needs KEY=VALUE, got %r", item)
            return 2
        overrides[key] = yaml.safe_load(value)
    try:
        cfg = load_train_config(args.config, overrides)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    try:
        path = train(cfg, resume=args.resume)
    except KeyboardInterrupt as exc:
        logger.warning("%s", exc)
        return 130
    print(f"trained checkpoint: {path}")
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint for the node (default: the packaged one)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--rate-hz", type=float, default=5.0, help="camera rate of the sample bag (default: 5)")
    parser.add_argument("--repeat", type=int, default=5, help="passes over the 6 sample pairs (default: 5)")
    parser.add_argument("--max-pairs", type=int, default=None, help="stop after this many RGB frames")


def run_demo(args: argparse.Namespace) -> int:
    from mafs_ros.bags import BagError
    from mafs_ros.demo import DemoError, run_demo
    from mafs_ros.replay import ReplayError

    try:
        run_demo(args.out, checkpoint=args.checkpoint, device=args.device, rate_hz=args.rate_hz,
                 repeat=args.repeat, max_pairs=args.max_pairs)
    except (DemoError, ReplayError, BagError) as exc:
        logger.error("demo failed: %s", exc)
        return 1
    return 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    # Literal choices, not bench/engine constants: those modules import torch, and `mafs --help` builds every parser.
    parser.add_argument("--out", default=None, help="write OUT/bench.json and OUT/bench.md")
    parser.add_argument("--quick", action="store_true",
                        help="CPU only, both configs, 480x640, batch 1, at most 25 s per record")
    parser.add_argument("--configs", nargs="+", choices=["mafs", "mafs-lite"], default=None, help="(default: all)")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="HxW", help="(default: 480x640 600x800)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="(default: 1 8)")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="(default: cpu and, where present, cuda)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "bf16"], default=None,
                        help="(default: fp32 on CPU; fp32, fp16 and bf16 where supported on CUDA; fp16 is CUDA only)")
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"],
                        help="time the engine compiled with torch.compile in this mode (default: none)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per record (default: 50)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop a record's runs after this long, at least 3 runs (default: 120)")
    parser.add_argument("--no-node", action="store_true", help="skip the node records (no rclpy needed)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager reference")
    parser.add_argument("--check-precision", action="store_true",
                        help="also compare bf16 (CPU) / fp16, bf16 (CUDA) outputs with fp32 on the sample pairs")


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import BenchPlan, markdown_table, precision_report, run_bench, write_outputs

    plan = BenchPlan.quick() if args.quick else BenchPlan()
    try:
        sizes = tuple(tuple(int(v) for v in text.lower().split("x")) for text in args.sizes) if args.sizes else None
    except ValueError:
        logger.error("--sizes takes HxW values such as 480x640, got %s", args.sizes)
        return 2
    if sizes is not None and any(len(size) != 2 or min(size) < 32 for size in sizes):
        logger.error("--sizes takes HxW values of at least 32x32, got %s", args.sizes)
        return 2
    overrides = {"configs": args.configs, "sizes": sizes, "batches": args.batches, "devices": args.devices,
                 "precisions": args.precisions, "runs": args.runs, "max_seconds": args.max_seconds}
    for name, value in overrides.items():
        if value is not None:
            setattr(plan, name, tuple(value) if isinstance(value, list) else value)
    plan.node, plan.eager, plan.compile_mode = not args.no_node, not args.no_eager, args.compile

    def progress(record) -> None:
        extra = f", {record.speedup_vs_eager:.2f}x eager" if record.speedup_vs_eager else ""
        print(f"{record.what:16s} {record.config:16s} {record.device}/{record.precision} b{record.batch} "
              f"{record.height}x{record.width}: median {record.median_ms:.1f} ms, p95 {record.p95_ms:.1f} ms, "
              f"{record.pairs_per_s:.2f} pairs/s ({record.runs} runs{extra})", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CUDA {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}", flush=True)
    records = run_bench(plan, progress)
    extra = {}
    if args.check_precision:
        extra["precision check (reduced vs fp32, sample pairs 480x640)"] = rows = precision_report(
            plan.devices, plan.configs, plan.compile_mode)
        for row in rows:
            print(f"check {row['config']} {row['device']}/{row['precision']} compile {row['compile']}: min PSNR "
                  f"{row['min_psnr_db']:.1f} dB, label agreement {row['label_agreement'] * 100:.2f} % "
                  f"({'ok' if row['ok'] else 'BELOW the bounds'})")
    print(markdown_table(records))
    if args.out:
        write_outputs(records, Path(args.out), extra)
        print(f"wrote {args.out}/bench.json and bench.md")
    return 0


# ---------------------------------------------------------------------------------------------------------
# mafs export


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, required=True, metavar="OUT.onnx", help="ONNX file to write")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="mafs_ros checkpoint (.safetensors); default: the packaged one")
    parser.add_argument("--height", type=int, default=None,
                        help="fixed network input height, a multiple of 32 (with --width); default: dynamic size")
    parser.add_argument("--width", type=int, default=None, help="fixed network input width, a multiple of 32")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 17..20 (default 17)")
    parser.add_argument("--static-batch", action="store_true", help="batch size fixed to 1 (default: dynamic)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check of onnxruntime against PyTorch on the bundled sample pairs")


def run_export(args: argparse.Namespace) -> int:
    from .bench import SAMPLE_DIR, sample_pairs
    from .checkpoint import CheckpointError
    from .export import OnnxVerificationError, export_onnx, verify_onnx

    try:
        path = export_onnx(args.checkpoint, args.onnx, height=args.height, width=args.width, opset=args.opset,
                           dynamic_batch=not args.static_batch)
    except (CheckpointError, ValueError, RuntimeError, OSError) as exc:  # bad checkpoint/arguments, export failure
        logger.error("cannot export: %s", exc)
        return 2
    size_mode = "dynamic height and width" if args.height is None else f"fixed size {args.height}x{args.width}"
    batch_mode = "batch 1" if args.static_batch else "dynamic batch"
    print(f"mafs export: wrote {path} (opset {args.opset}, {size_mode}, {batch_mode}, "
          f"{path.stat().st_size / 2**20:.1f} MiB)")
    if args.no_verify:
        return 0

    # Dynamic exports are checked at the sample's own 480x640, the usual network size.
    size = (480, 640) if args.height is None else (args.height, args.width)
    try:
        pairs = sample_pairs(size, len(list((SAMPLE_DIR / "vi").glob("*.png"))) or 1)
    except FileNotFoundError as exc:  # an installed package has no data/sample
        logger.error("cannot verify (%s); run from a source checkout or give --no-verify", exc)
        return 2
    try:
        report = verify_onnx(path, args.checkpoint, pairs)
    except OnnxVerificationError as exc:
        logger.error("%s; the file is kept for inspection, do not deploy it", exc)
        return 1
    except (CheckpointError, RuntimeError) as exc:  # e.g. onnxruntime not installed
        logger.error("cannot verify: %s", exc)
        return 2
    errors, tolerance = report["max_abs_error"], report["tolerance"]
    print(f"verified on {report['pairs']} sample pair(s) at {size[0]}x{size[1]}, onnxruntime vs PyTorch fp32: "
          + ", ".join(f"{name} max abs error {errors[name]:.2e} (tolerance {tolerance[name]:.1e})" for name in errors))
    print(f"one forward (fastest of {report['pairs']}): PyTorch {report['torch_ms']:.0f} ms, onnxruntime "
          f"{report['onnxruntime_ms']:.0f} ms ({report['torch_ms'] / report['onnxruntime_ms']:.2f}x)")
    return 0



# ---------------------------------------------------------------------------------------------------------
# mafs calibrate


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    # From bags, not calibrate: calibrate imports cv2, and `mafs --help` builds every parser.
    from .bags import RGB_TOPIC, THERMAL_TOPIC

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
    bag = parser.add_argument_group("bag mode (the node's topics and sync.* parameters)")
    bag.add_argument("--rgb-topic", default=RGB_TOPIC, help=f"default {RGB_TOPIC}")
    bag.add_argument("--thermal-topic", default=THERMAL_TOPIC, help=f"default {THERMAL_TOPIC}")
    bag.add_argument("--slop-s", type=float, default=0.05, help="default 0.05")
    bag.add_argument("--queue-size", type=int, default=10, help="default 10")
    bag.add_argument("--thermal-offset-s", type=float, default=0.0, help="default 0.0")


def run_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import (
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

    matrix = result.homography / result.homography[2, 2]
    print(f"mafs calibrate ({result.mode}, {len(pairs)} pair(s), thermal {result.thermal_size[0]}x"
          f"{result.thermal_size[1]} -> RGB {result.rgb_size[0]}x{result.rgb_size[1]}):")
    for row in matrix:
        print("  [" + ", ".join(f"{v:12.6g}" for v in row) + "]")
    print(f"edge correlation: {result.score_before:.3f} at the start, {result.score_after:.3f} after")
    if result.points is not None:
        print(f"points: {result.points['inliers']} of {result.points['count']} used, reprojection error mean "
              f"{result.points['mean_px']:.2f} px, max {result.points['max_px']:.2f} px")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(str(args.out / name) for name in files)}")
    if not result.ok:
        logger.error("calibration failed: %s; registration.yaml not written", result.reason)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------------
# Registry and entry point


COMMANDS: list[Command] = [
    Command("fuse", "fuse and segment image pairs from files or folders (no ROS needed)",
            add_fuse_arguments, run_fuse),
    Command("import-official", "convert a checkpoint released with the MAFS paper into ours (strict)",
            add_import_official_arguments, run_import_official),
    Command("model-info", "parameters and multiply-accumulates of a model config",
            add_model_info_arguments, run_model_info),
    Command("train", "train MAFS from a YAML recipe (Stage I + Stage II; torchrun for DDP)",
            add_train_arguments, run_train),
    Command("eval", "fusion and segmentation metrics of a checkpoint on a folder or dataset split",
            add_eval_arguments, run_eval),
    Command("metrics", "fusion metrics of fused images made by any method (ir/vi/fused folders)",
            add_metrics_arguments, run_metrics),
    Command("replay", "run a rosbag through the model like the live node: output bag, metrics report, plots",
            add_replay_arguments, run_replay),
    Command("demo", "the real node over a rosbag of the bundled sample pairs; recording, report and PNGs",
            add_demo_arguments, run_demo),
    Command("bench", "time the engine (per stage, against plain eager) and the node, on CPU and CUDA",
            add_bench_arguments, run_bench),
    Command("export", "export a checkpoint to ONNX (onnxruntime, TensorRT) and check it against PyTorch",
            add_export_arguments, run_export),
    Command("calibrate", "measure the thermal -> RGB homography (registration.homography) from image pairs or a bag",
            add_calibrate_arguments, run_calibrate),
]


class _TqdmLogHandler(logging.StreamHandler):
    """Writes log records through tqdm, so messages do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's contract: never raise from a handler
            self.handleError(record)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mafs", description="MAFS infrared-visible image fusion and semantic segmentation."
    )
    parser.add_argument("--version", action="version", version=f"mafs_ros {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="verbosity of the messages on stderr (default: INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the sub-command and return its exit code."""
    args = build_parser().parse_args(argv)
    # Messages of the mafs_ros loggers go to stderr (the stream current now, so tests can capture it).
    handler = _TqdmLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("mafs_ros")
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(args.log_level)
    try:
        return args.run(args)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
