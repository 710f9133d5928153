"""`mafs train`: train MAFS from a YAML recipe."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__package__)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="training recipe (YAML), e.g. config/train/mafs_lite.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt exactly")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set stage2.epochs=3 (YAML value syntax)")


def run_train(args: argparse.Namespace) -> int:
    # Before torch starts OpenMP: with spinning (active) waits, a training step on a CPU shared with any other
    # busy process runs several times slower, because each parallel region waits for a descheduled thread.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..train.config import load_train_config, parse_overrides
    from ..train.trainer import train

    try:
        cfg = load_train_config(args.config, parse_overrides(args.overrides))
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
