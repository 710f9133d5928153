#!/usr/bin/env bash
# The numbers of the README's "Shipped checkpoint" section, from one command (needs ../shared/data and
# ../shared/reference/peers, i.e. the project's data folder next to the repository):
#
#   bash scripts/evaluate_shipped.sh [CHECKPOINT] [OUT_DIR]      (defaults: the shipped mafs-lite, eval_shipped/)
#
# 1. fusion on msrs_sample (24 MSRS test pairs): ours, SeAFusion, max(ir, Y), (ir + Y) / 2, all scored by
#    `mafs metrics`;
# 2. fusion on the 20 roadscene pairs held out of training (FLIR camera): ours, max, average;
# 3. segmentation on the validation frames of the labelled MFNet frames (frames xx21-xx35 of every sequence,
#    see config/train/mafs_lite.yaml): one confusion matrix over the set, then day and night apart.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MAFS=.venv/bin/mafs
PY=.venv/bin/python
CKPT="${1:-mafs_ros/checkpoints/mafs-lite.safetensors}"
OUT="${2:-eval_shipped}"
DATA=../shared/data
PEERS=../shared/reference/peers
mkdir -p "$OUT"

# max(ir, Y) and (ir + Y) / 2 of the pairs of ROOT whose stem matches a pattern, 8-bit grey (Y = BT.601 luma
# of the visible image), and links to those pairs in OUT/pairs/{ir,vi} for `mafs metrics`
baselines() {  # ROOT OUT STEM_PATTERN...
  "$PY" - "$@" <<'EOF'
import fnmatch, sys
from pathlib import Path
import cv2, numpy as np
root, out, patterns = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
for name in ("max", "average", "pairs/ir", "pairs/vi"):
    (out / name).mkdir(parents=True, exist_ok=True)
for ir_path in sorted((root / "ir").iterdir()):
    if not any(fnmatch.fnmatchcase(ir_path.stem, p) for p in patterns):
        continue
    vi_path = next((root / "vi").glob(ir_path.stem + ".*"))
    for source, sub in ((ir_path, "ir"), (vi_path, "vi")):
        link = out / "pairs" / sub / source.name
        if not link.exists():
            link.symlink_to(source.resolve())
    ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    vi = cv2.imread(str(vi_path), cv2.IMREAD_COLOR).astype(np.float64)
    y = 0.299 * vi[..., 2] + 0.587 * vi[..., 1] + 0.114 * vi[..., 0]
    for name, fused in (("max", np.maximum(ir, y)), ("average", (ir + y) / 2)):
        cv2.imwrite(str(out / name / f"{ir_path.stem}.png"), np.clip(np.round(fused), 0, 255).astype(np.uint8))
EOF
}

score() {  # TITLE ROOT FUSED_DIR
  echo "### $1"
  "$MAFS" metrics --ir "$2/ir" --vi "$2/vi" --fused "$3" --out "$3.metrics.json" | grep -E "^(set|mean|day|night)"
}

echo "## Fusion, msrs_sample (24 pairs)"
"$MAFS" eval --checkpoint "$CKPT" --data "$DATA/msrs_sample" --out "$OUT/msrs_sample" --save-fused > /dev/null
baselines "$DATA/msrs_sample" "$OUT/msrs_sample" "*"
PAIRS="$OUT/msrs_sample/pairs"
score "mafs-lite" "$PAIRS" "$OUT/msrs_sample/fused"
score "SeAFusion" "$PAIRS" "$PEERS/seafusion_msrs_sample"
score "max(ir, Y)" "$PAIRS" "$OUT/msrs_sample/max"
score "(ir + Y) / 2" "$PAIRS" "$OUT/msrs_sample/average"

echo "## Fusion, roadscene held out (20 pairs)"
HELD_OUT=("FLIR_09*" "FLIR_video_04215")
"$MAFS" eval --checkpoint "$CKPT" --data "$DATA/roadscene" --include "${HELD_OUT[@]}" --out "$OUT/roadscene" \
  --save-fused > /dev/null
baselines "$DATA/roadscene" "$OUT/roadscene" "${HELD_OUT[@]}"
PAIRS="$OUT/roadscene/pairs"
score "mafs-lite" "$PAIRS" "$OUT/roadscene/fused"
score "max(ir, Y)" "$PAIRS" "$OUT/roadscene/max"
score "(ir + Y) / 2" "$PAIRS" "$OUT/roadscene/average"

echo "## Segmentation, MFNet validation frames"
PYTHONPATH=scripts "$PY" - "$CKPT" <<'EOF'
import sys
from mafs_ros.checkpoint import load_checkpoint
from ship_checkpoint import held_out_validation
run = load_checkpoint(sys.argv[1]).extra.get("run_config")
if run and not held_out_validation(run):
    print("NOTE: this checkpoint trained on these frames, so the numbers below are no validation; the validation "
          "of its recipe is in its metadata (segmentation_validation)")
EOF
set -f  # the stem patterns below are for mafs eval, not for the shell
for part in "all ???2[1-9]? ???3[0-5]?" "day ???2[1-9]D ???3[0-5]D" "night ???2[1-9]N ???3[0-5]N"; do
  set -- $part
  name=$1; shift
  "$MAFS" eval --checkpoint "$CKPT" --data "$DATA/mfnet_sample" "$DATA/mfnet_extra" --include "$@" \
    --out "$OUT/segmentation_$name" --contact-sheet 6 > /dev/null
  "$PY" -c "
import json, sys
seg = json.load(open('$OUT/segmentation_$name/report.json'))['segmentation']
ious = ', '.join(f'{k} {v:.3f}' if v is not None else f'{k} -' for k, v in seg['per_class_iou'].items())
print(f'$name: {seg[\"num_images\"]} frames, mIoU {seg[\"mIoU\"]:.3f} ({ious})')"
done
