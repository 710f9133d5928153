"""Offline evaluation on rosbags (`mafs replay`), without ROS: read a bag with `rosbags`, pair RGB and thermal
frames exactly like the live node, run the engine, write the node's outputs into a new bag and a report.

Two modes:

- `replay(bag, out_dir, engine=...)` (module `run`): the input bag's RGB and thermal frames are fed to the
  node's pairing class (`stream.pairing.ApproximateTimePairer`, same parameters) in bag receive-time order, so the
  pairs are the ones the live node would make. With a homography (the node's registration.homography) thermal
  is warped into the RGB image first, as the node does. Each pair goes through the engine; DIR/bag gets
  /fused/image, /segmentation/labels, /segmentation/overlay, /mafs/result, /segmentation/info (once, transient
  local) and /fused/camera_info (when the bag has camera info), each stamped with the RGB input's header and
  recorded when the pair was complete (the later receive time of its RGB and thermal frame), plus a copy of the
  input topics: `ros2 bag play DIR/bag` shows it like a live run, and `report_from_recording(DIR/bag)`
  reproduces the fusion numbers.
- `report_from_recording(bag, out_dir)` (module `recording`): a recorded live run (input topics + the node's
  /mafs/result). The pairs are the node's (rgb_stamp, thermal_stamp of each result), matched to the recorded
  input frames by stamp; the metrics use the recorded fused images; latency comes from the result's timings, and
  separately end to end (result receive time - RGB stamp).

Fusion metrics per pair: see `scoring`. With a homography, A is the warped thermal frame (what the network
fused).
Ground-truth label images (mono8/16 class ids, 255 = ignore) are matched to fused pairs by header stamp.

Report (report.json; report.md has the same as tables)::

    {"mode": "replay" | "recording", "bag": str, "output_bag": str | null,
     "topics": {"rgb", "thermal", "camera_info", "labels"[, "result"]},
     "frames_read": {topic: n},                 # messages read per topic
     "pairs_made": n, "pairs_fused": n,         # pairs the pairer (or node) made; pairs with fusion metrics
     "unmatched": {rgb topic: n, thermal topic: n},   # input frames never fused (skipped frames not included)
     "skipped": {reason: n},                    # frames or pairs left out: corrupt_message, unsupported_encoding,
                                                # size_mismatch, inference_error, input_not_recorded, ... (see log)
     "skew_ms": {"mean" (signed), "p50", "p95", "max" (of |skew|)},   # thermal stamp + offset - RGB stamp
     "latency_ms": {"p50", "p95", "max", "mean", "stages": {preprocess_ms|inference_ms|postprocess_ms: {...}}},
     "end_to_end_ms": {...},                    # recording only: result receive time - RGB stamp
     "throughput": {"bag_duration_s", "pairs_per_s" (per bag second), "rates_hz": {topic: Hz},
                    ["wall_s", "pairs_per_s_wall", "realtime_factor"] (replay only)},
     "fusion": {"mean": {metric: value} | null,
                "per_frame": [{"index": n, "rgb_stamp": "<sec>.<nanosec>", "metrics": {metric: value}}]},
                                                # one entry per fused pair, in the order of "frames" (a looped
                                                # bag repeats stamps: "index" tells the pairs apart)
     "frames": [{"rgb_stamp_ns", "thermal_stamp_ns", "skew_ms", "latency_ms"[, "end_to_end_ms"]}],
     "segmentation": {... as `mafs eval`, "labels_read", "labels_unmatched"},   # only with ground truth
     "pairing": {"slop_s", "queue_size", "thermal_offset_s", ...PairingStats},  # replay only
     "registration": {"homography": [9 numbers, row-major, H[2][2] = 1] | null (identity: no warp)},
     "checkpoint": {...}, "engine": {...},      # replay only, as `mafs eval`
     "thermal_normalization": str,              # recording only: the one A was computed with
     "read_error": str | null,                  # where reading stopped in a truncated / corrupt bag
     "files": [file names written into out_dir]}

Plots: metrics_over_time.png, latency_hist.png, skew_hist.png, contact_sheet.png (ir | vi | fused | overlay
[| ground truth] of evenly spaced sample pairs).

Modules: `reading` (opening the bag, the passes over it), `scoring` (metrics, ground truth, report entries),
`run` and `recording` (the two modes), `report` (report.json, report.md, plots, contact sheet).
"""

from .reading import ReplayError
from .recording import report_from_recording
from .run import replay

__all__ = ["ReplayError", "replay", "report_from_recording"]
