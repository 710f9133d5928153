"""The engine options shared by every sub-command that runs the network, and the engine they describe."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..constants import BACKEND_NAMES, PRECISION_NAMES, SIZE_POLICIES

if TYPE_CHECKING:
    from ..engine import MafsEngine

logger = logging.getLogger(__package__)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --device, --precision, --thermal-norm, --size-policy, --backend (see MafsEngine)."""
    group = parser.add_argument_group("model and device")
    group.add_argument("--checkpoint", type=Path, default=None,
                       help="mafs_ros checkpoint (.safetensors); default: the packaged one")
    group.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    group.add_argument("--precision", default="fp32", choices=list(PRECISION_NAMES),
                       help="autocast: fp16 needs CUDA, bf16 runs on CUDA or CPU (default: fp32)")
    group.add_argument("--thermal-norm", default=None, metavar="SPEC",
                       help="override the checkpoint's thermal normalisation: auto, fixed, fixed:LO,HI, minmax, "
                            "percentile or percentile:P_LO,P_HI (default: the checkpoint's; plain 'fixed' runs as "
                            "'auto': 8-bit as fixed, 16-bit and float stretched)")
    group.add_argument("--size-policy", default="resize", choices=list(SIZE_POLICIES),
                       help="resize to a multiple of 32 (official protocol, default) or reflect-pad")
    group.add_argument("--backend", default="auto", choices=list(BACKEND_NAMES),
                       help="what runs the network: auto (default: onnxruntime for fp32 on a CPU, exported and "
                            "checked at the first frame of each size and cached; PyTorch otherwise), torch or "
                            "onnxruntime")


def engine_from_args(args: argparse.Namespace) -> "MafsEngine":
    """A MafsEngine from the options of `add_engine_arguments` (raises its construction errors)."""
    from ..engine import MafsEngine

    return MafsEngine(
        args.checkpoint,
        device=args.device,
        precision=args.precision,
        thermal_normalization=args.thermal_norm,
        size_policy=args.size_policy,
        backend=args.backend,
    )


def engine_or_exit_code(args: argparse.Namespace) -> "MafsEngine | int":
    """`engine_from_args`, or exit code 2 after logging why the model cannot be set up (a bad checkpoint,
    device, precision or thermal normalisation). Tests replace `engine_from_args` of this module by a stand-in."""
    from ..errors import MafsError

    try:
        return engine_from_args(args)
    except (MafsError, OSError) as exc:
        logger.error("cannot set up the model: %s", exc)
        return 2
