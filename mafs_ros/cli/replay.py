"""`mafs replay` (a rosbag through the model like the live node, or the report of a recorded live run) and
`mafs demo` (the real node over a bag of the bundled sample pairs)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..constants import (
    BACKEND_NAMES,
    CAMERA_INFO_TOPIC,
    GROUND_TRUTH_TOPIC,
    IDENTITY_HOMOGRAPHY,
    MAX_WAIT_S,
    QUEUE_SIZE,
    RESULT_TOPIC,
    RGB_TOPIC,
    SLOP_S,
    THERMAL_OFFSET_S,
    THERMAL_TOPIC,
    absolute_topic,
)
from .engine_options import add_engine_arguments, engine_or_exit_code

logger = logging.getLogger(__package__)


# ---------------------------------------------------------------------------------------------------------
# mafs replay


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, nargs="?",
                        help="input rosbag2: a folder with metadata.yaml or a .mcap / .db3 file (sqlite3 or MCAP)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder: bag/ (the node's output topics), report.json, report.md, plots")
    parser.add_argument("--list", action="store_true", help="print the bag's topics, types and message counts")
    parser.add_argument("--from-recording", type=Path, metavar="OUTPUT_BAG",
                        help="instead of running the model, report on a recorded live run: a bag with the "
                             "node's input topics and its /mafs/result")
    _add_topic_arguments(parser)
    pairing = parser.add_argument_group("pairing (the node's sync.* parameters)")
    pairing.add_argument("--slop-s", type=float, default=SLOP_S,
                         help=f"largest |thermal stamp + offset - RGB stamp| of a pair (default {SLOP_S})")
    pairing.add_argument("--queue-size", type=int, default=QUEUE_SIZE,
                         help=f"frames held per stream while waiting for a partner (default {QUEUE_SIZE})")
    pairing.add_argument("--thermal-offset-s", type=float, default=THERMAL_OFFSET_S,
                         help="added to thermal stamps before pairing (thermal stamped 40 ms later than RGB: -0.04; "
                              f"default {THERMAL_OFFSET_S})")
    pairing.add_argument("--max-wait-s", type=float, default=MAX_WAIT_S,
                         help="longest wait (bag receive time) of a thermal frame for a nearer RGB frame "
                              f"(default {MAX_WAIT_S})")
    pairing.add_argument("--homography", type=float, nargs=9, default=list(IDENTITY_HOMOGRAPHY),
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


def _add_topic_arguments(parser: argparse.ArgumentParser) -> None:
    rgb, thermal, camera_info, labels, result = (
        absolute_topic(name) for name in (RGB_TOPIC, THERMAL_TOPIC, CAMERA_INFO_TOPIC, GROUND_TRUTH_TOPIC, RESULT_TOPIC)
    )
    topics = parser.add_argument_group("topics (with or without the leading slash)")
    topics.add_argument("--rgb-topic", default=rgb, help=f"default {rgb}")
    topics.add_argument("--thermal-topic", default=thermal, help=f"default {thermal}")
    topics.add_argument("--camera-info-topic", default=camera_info,
                        help=f"RGB camera info, republished as /fused/camera_info when present (default "
                             f"{camera_info}; '' to ignore)")
    topics.add_argument("--labels-topic", default=labels,
                        help=f"ground-truth label images (class ids, mono8), matched to RGB frames by stamp; "
                             f"used when present (default {labels}; '' to ignore)")
    topics.add_argument("--result-topic", default=result,
                        help=f"--from-recording: the node's FusedSegmentation topic (default {result})")


def run_replay(args: argparse.Namespace) -> int:
    if (args.bag is None) == (args.from_recording is None):
        logger.error("give either a BAG to replay or --from-recording OUTPUT_BAG")
        return 2
    bag = args.bag if args.bag is not None else args.from_recording
    if args.list:
        return _list_topics(bag)
    if args.out is None:
        logger.error("--out DIR is required (or --list)")
        return 2
    if args.contact_sheet < 0:
        logger.error("--contact-sheet must not be negative, got %d", args.contact_sheet)
        return 2
    if not _read_homography(args):
        return 2
    report = _run(args, bag)
    if isinstance(report, int):
        return report
    _print_summary(report, bag, args.out)
    return 1 if report["read_error"] or report["skipped"] else 0


def _list_topics(bag: Path) -> int:
    # Only the bag reader: listing a bag must not wait for torch to load.
    from ..bags import BagError, format_topics, list_topics

    try:
        print(format_topics(list_topics(bag)))
    except BagError as exc:
        logger.error("%s", exc)
        return 2
    return 0


def _read_homography(args: argparse.Namespace) -> bool:
    """Check --homography, or replace it by the one of --homography-file, before the model is loaded; False
    (logged) when it is unusable."""
    from ..stream.registration import parse_homography, read_homography_file

    try:
        if args.homography_file is not None:
            if args.homography != list(IDENTITY_HOMOGRAPHY):
                raise ValueError("give either --homography or --homography-file, not both")
            args.homography = read_homography_file(args.homography_file)
        parse_homography(args.homography, "--homography")
    except ValueError as exc:
        logger.error("%s", exc)
        return False
    return True


def _run(args: argparse.Namespace, bag: Path) -> dict | int:
    """The replay's (or the recording's) report, or an exit code after logging why there is none."""
    from ..replay import ReplayError, replay, report_from_recording

    topics = {"rgb_topic": args.rgb_topic, "thermal_topic": args.thermal_topic, "labels_topic": args.labels_topic}
    try:
        if args.from_recording is not None:
            return report_from_recording(
                bag, args.out, **topics, result_topic=args.result_topic, thermal_normalization=args.thermal_norm,
                thermal_offset_s=args.thermal_offset_s, homography=args.homography,
                contact_sheet_count=args.contact_sheet,
            )
        engine = engine_or_exit_code(args)
        if isinstance(engine, int):
            return engine
        return replay(
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


def _print_summary(report: dict, bag: Path, out: Path) -> None:
    from ..metrics import FUSION_METRIC_NAMES
    from ..reports import format_metrics, format_table

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
    print(f"report: {out / 'report.md'}{output_bag}")
    if report.get("checkpoint", {}).get("trained") is False:
        print("(the checkpoint is UNTRAINED: these numbers are meaningless)")


# ---------------------------------------------------------------------------------------------------------
# mafs demo


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint for the node (default: the packaged one)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--backend", default="auto", choices=list(BACKEND_NAMES),
                        help="the node's backend (default auto: onnxruntime for fp32 on a CPU, else PyTorch)")
    parser.add_argument("--rate-hz", type=float, default=5.0, help="camera rate of the sample bag (default: 5)")
    parser.add_argument("--repeat", type=int, default=5, help="passes over the 6 sample pairs (default: 5)")
    parser.add_argument("--max-pairs", type=int, default=None, help="stop after this many RGB frames")
    parser.add_argument("--compressed", action="store_true",
                        help="the cameras as robots record them: image_transport's compressed topics (RGB JPEG, "
                             "thermal PNG), which the node finds by itself")


def run_demo(args: argparse.Namespace) -> int:
    from ..bags import BagError
    from ..demo import DemoError, run_demo
    from ..replay import ReplayError

    try:
        run_demo(args.out, checkpoint=args.checkpoint, device=args.device, backend=args.backend, rate_hz=args.rate_hz,
                 repeat=args.repeat, max_pairs=args.max_pairs, compressed=args.compressed)
    except (DemoError, ReplayError, BagError) as exc:
        logger.error("demo failed: %s", exc)
        return 1
    return 0
