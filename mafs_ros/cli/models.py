"""`mafs import-official`, `mafs model-info` and `mafs export`: checkpoints and model files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..constants import ONNX_DEFAULT_OPSET, ONNX_MAX_OPSET, ONNX_MIN_OPSET

logger = logging.getLogger(__package__)


# ---------------------------------------------------------------------------------------------------------
# mafs import-official


def add_import_official_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("official", type=Path, metavar="CKPT",
                        help="checkpoint released with the paper ({'MTAN': state_dict} or a bare state dict)")
    parser.add_argument("--classes", type=int, required=True,
                        help="classes of its seg head: 9 (MFNet/MSRS), 15 (FMB) or 5 (PST900)")
    parser.add_argument("--out", type=Path, required=True, help="our checkpoint to write (.safetensors)")


def run_import_official(args: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint
    from ..class_sets import default_class_set
    from ..model import build_model
    from ..model.official import OfficialCheckpointError, load_official_checkpoint

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
    from ..model import build_model, get_config
    from ..model.complexity import count_macs, count_parameters

    net = build_model(get_config(args.config, num_classes=args.classes))
    params = count_parameters(net)
    macs = count_macs(net, args.height, args.width)
    print(f"{args.config}: {params / 1e6:.3f} M parameters, {macs / 1e9:.2f} GMACs at {args.height}x{args.width}")
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
    parser.add_argument("--opset", type=int, default=ONNX_DEFAULT_OPSET,
                        help=f"ONNX opset, {ONNX_MIN_OPSET}..{ONNX_MAX_OPSET} (default {ONNX_DEFAULT_OPSET})")
    parser.add_argument("--static-batch", action="store_true", help="batch size fixed to 1 (default: dynamic)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check of onnxruntime against PyTorch on the bundled sample pairs")


def run_export(args: argparse.Namespace) -> int:
    from ..errors import MafsError
    from ..export import OnnxVerificationError, export_onnx, verify_onnx
    from ..io.samples import sample_count, sample_pairs

    try:
        path = export_onnx(args.checkpoint, args.onnx, height=args.height, width=args.width, opset=args.opset,
                           dynamic_batch=not args.static_batch)
    except (MafsError, OSError) as exc:  # bad checkpoint or arguments, no onnx package, a file not written
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
        pairs = sample_pairs(size, sample_count() or 1)
    except FileNotFoundError as exc:  # an installed package has no data/sample
        logger.error("cannot verify (%s); run from a source checkout or give --no-verify", exc)
        return 2
    try:
        report = verify_onnx(path, args.checkpoint, pairs)
    except OnnxVerificationError as exc:
        logger.error("%s; the file is kept for inspection, do not deploy it", exc)
        return 1
    except MafsError as exc:  # e.g. onnxruntime not installed
        logger.error("cannot verify: %s", exc)
        return 2
    errors, tolerance = report["max_abs_error"], report["tolerance"]
    print(f"verified on {report['pairs']} sample pair(s) at {size[0]}x{size[1]}, onnxruntime vs PyTorch fp32: "
          + ", ".join(f"{name} max abs error {errors[name]:.2e} (tolerance {tolerance[name]:.1e})" for name in errors))
    print(f"one forward (fastest of {report['pairs']}): PyTorch {report['torch_ms']:.0f} ms, onnxruntime "
          f"{report['onnxruntime_ms']:.0f} ms ({report['torch_ms'] / report['onnxruntime_ms']:.2f}x)")
    return 0
