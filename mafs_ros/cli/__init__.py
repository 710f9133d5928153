"""The `mafs` command line: one argparse sub-command per task, all registered in `COMMANDS`.

Each sub-command lives in a module of this package as `add_<name>_arguments(parser)` and `run_<name>(args) ->
exit code`. `mafs --help` builds every parser, so these modules import only the standard library and
`mafs_ros.constants` at the top; everything else (torch, OpenCV, the workflows) is imported inside `run_<name>`.
Commands that run the network take the shared engine options of `engine_options`. Every module logs to the
"mafs_ros.cli" logger, so messages name the command line whichever module wrote them.

To add a sub-command, write its two functions in a module here and append a `Command` to `COMMANDS`.

Exit codes: 0 all fine, 1 some inputs failed (the rest were processed), 2 nothing could be done (bad
arguments, unusable checkpoint or device).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__
from .bench import add_bench_arguments, run_bench
from .calibrate import add_calibrate_arguments, run_calibrate
from .evaluation import add_eval_arguments, add_metrics_arguments, run_eval, run_metrics
from .fuse import add_fuse_arguments, run_fuse
from .models import (
    add_export_arguments,
    add_import_official_arguments,
    add_model_info_arguments,
    run_export,
    run_import_official,
    run_model_info,
)
from .replay import add_demo_arguments, add_replay_arguments, run_demo, run_replay
from .training import add_train_arguments, run_train


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


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
