"""`report_from_recording`: the replay report of a recorded live run, scored from the node's own results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import bags
from ..bags import BagMessage, BagReader, deserialize
from ..class_sets import default_class_set
from ..constants import (
    GROUND_TRUTH_TOPIC,
    IDENTITY_HOMOGRAPHY,
    INFO_TOPIC,
    RESULT_TOPIC,
    RGB_TOPIC,
    THERMAL_OFFSET_S,
    THERMAL_TOPIC,
    absolute_topic,
)
from ..imaging import ThermalNormalization
from ..stream.conversions import ImageConversionError, image_to_numpy, visible_from_image
from ..stream.frames import decode_input
from ..stream.processing import process_pair
from ..stream.registration import SizeMismatchError, parse_homography
from ..stream.results import result_timings
from ..stamps import stamp_ns, stamp_text, time_ns
from .reading import Reading, decode, ground_truth_stamps, messages_until_error, open_bag, sample_indices
from .report import write_outputs
from .scoring import Evaluation, registration_entry, summaries


def report_from_recording(
    bag: str | Path,
    out_dir: str | Path,
    *,
    rgb_topic: str = absolute_topic(RGB_TOPIC),
    thermal_topic: str = absolute_topic(THERMAL_TOPIC),
    labels_topic: str | None = absolute_topic(GROUND_TRUTH_TOPIC),
    result_topic: str = absolute_topic(RESULT_TOPIC),
    info_topic: str = absolute_topic(INFO_TOPIC),
    thermal_normalization: "str | ThermalNormalization | None" = None,
    thermal_offset_s: float = THERMAL_OFFSET_S,
    homography: Sequence[float] = IDENTITY_HOMOGRAPHY,
    contact_sheet_count: int = 4,
) -> dict[str, Any]:
    """The replay report of a recorded live run: a bag with the node's input topics and its /mafs/result.

    Pairs are the node's: each result's (rgb_stamp, thermal_stamp) matched to the recorded input frames by
    header stamp; inputs whose stamp no result names are "unmatched", results whose inputs were not recorded are
    skipped ("input_not_recorded"). Fusion metrics use the result's fused image, A through
    `thermal_normalization` (the node's; None: "fixed", the packaged checkpoint's). latency_ms sums the result's
    preprocess/inference/postprocess times; end_to_end_ms is result receive time - RGB stamp (meaningful when
    the recorder and the node share a clock, e.g. sim time during `ros2 bag play --clock`). Class names come
    from a recorded /segmentation/info, else the 9 MFNet classes. `thermal_offset_s` (the node's
    sync.thermal_offset_s) only enters the skew statistics. `homography` (the node's registration.homography)
    warps the recorded thermal frames into the RGB image as the node did, so that A is what it fused; with the
    identity, results whose thermal input has another size than the RGB one are skipped ("size_mismatch").
    Writes report.json, report.md and the plots into out_dir and returns the report. Raises ReplayError when
    nothing can be done, ValueError for bad parameters. A bag that breaks partway is evaluated up to that point
    ("read_error").
    """
    rgb_topic, thermal_topic = bags.topic_name(rgb_topic), bags.topic_name(thermal_topic)
    result_topic, info_topic = bags.topic_name(result_topic), bags.topic_name(info_topic)
    normalization = ThermalNormalization.from_spec(thermal_normalization or "fixed")
    matrix = parse_homography(homography)
    out_dir = Path(out_dir)

    reader, present = open_bag(bag, {"rgb": rgb_topic, "thermal": thermal_topic, "result": result_topic},
                               {"ground truth": bags.topic_name(labels_topic) if labels_topic else None})
    with reader:
        rgb_topic, thermal_topic = present["rgb"], present["thermal"]
        labels_topic = present.get("ground truth")
        wanted, info = _fused_stamps(reader, result_topic, info_topic)
        class_names, palette = _class_set(info)
        evaluation = Evaluation(normalization, class_names, palette,
                                ground_truth_stamps=ground_truth_stamps(reader, labels_topic),
                                sample_indices=sample_indices(len(wanted), contact_sheet_count))

        topics = [t for t in (rgb_topic, thermal_topic, labels_topic, result_topic) if t is not None]
        reading = Reading(reader, topics)
        run = _RecordingRun(wanted, evaluation, rgb_topic, thermal_topic, labels_topic, result_topic,
                            round(thermal_offset_s * 1e9), matrix)
        reading.run(run.handle, "recording")
        run.finish()

    report: dict[str, Any] = {
        "mode": "recording",
        "bag": str(reader.path),
        "output_bag": None,
        "topics": {"rgb": rgb_topic, "thermal": thermal_topic, "camera_info": None, "labels": labels_topic,
                   "result": result_topic},
        "frames_read": reading.frames_read,
        "pairs_made": reading.frames_read[result_topic],
        "unmatched": run.unmatched,
        "thermal_normalization": str(normalization),
        "registration": registration_entry(matrix),
        "read_error": reading.error,
        **summaries(evaluation, reading.frames_read, reading.duration_s, wall_s=None),
    }
    return write_outputs(report, evaluation, out_dir, slop_ms=None)


def _fused_stamps(reader: BagReader, result_topic: str, info_topic: str) -> tuple[dict[int, int], Any]:
    """A first pass: which input stamps the node fused (RGB stamp -> thermal stamp), and the first
    SegmentationInfo it published (None if not recorded)."""
    wanted: dict[int, int] = {}
    info = None
    for message in messages_until_error(reader, [result_topic, info_topic]):
        try:
            msg = deserialize(message)
        except Exception:  # noqa: BLE001 - reported by the second pass
            continue
        if message.topic == info_topic:
            info = info or msg
        elif not getattr(msg, "missing_input", ""):  # results of one camera alone are counted in the second pass
            wanted[time_ns(msg.rgb_stamp)] = time_ns(msg.thermal_stamp)
    return wanted, info


def _class_set(info: Any) -> tuple[tuple[str, ...], np.ndarray]:
    """Class names and palette from a recorded SegmentationInfo, else the 9-class MFNet set."""
    if info is not None and len(info.class_names) >= 2 and len(info.palette) == 3 * len(info.class_names):
        return tuple(info.class_names), np.asarray(info.palette, dtype=np.uint8).reshape(-1, 3)
    default = default_class_set(9)
    return default.class_names, np.asarray(default.palette, dtype=np.uint8)


class _RecordingRun:
    """The second pass over a recording, in receive order: holds the input frames a result names, and results
    whose inputs have not come yet, until all three of a pair are there."""

    def __init__(self, wanted: dict[int, int], evaluation: Evaluation, rgb_topic: str, thermal_topic: str,
                 labels_topic: str | None, result_topic: str, thermal_offset_ns: int,
                 homography: np.ndarray | None) -> None:
        self.wanted = wanted
        self.wanted_thermal = {thermal: rgb for rgb, thermal in wanted.items()}
        self.evaluation = evaluation
        self.rgb_topic, self.thermal_topic = rgb_topic, thermal_topic
        self.labels_topic, self.result_topic = labels_topic, result_topic
        self.thermal_offset_ns = thermal_offset_ns
        self.homography = homography
        self.unmatched = {rgb_topic: 0, thermal_topic: 0}
        self._rgb: dict[int, Any] = {}
        self._thermal: dict[int, Any] = {}
        self._results: dict[int, tuple[Any, int]] = {}  # RGB stamp -> (result, receive ns)

    def handle(self, message: BagMessage, index: int) -> None:
        msg = decode(message, index, self.evaluation)
        if msg is None:
            return
        if message.topic == self.labels_topic:
            self.evaluation.add_ground_truth(stamp_ns(msg.header), msg)
            return
        if message.topic == self.result_topic:
            if getattr(msg, "missing_input", ""):
                self.evaluation.skip("one_camera", f"result at {stamp_text(stamp_ns(msg.header))}: fused from one "
                                     f"camera, {msg.missing_input} missing (not scored as a pair)")
                return
            rgb_stamp = time_ns(msg.rgb_stamp)
            self._results[rgb_stamp] = (msg, message.receive_ns)
        elif message.topic == self.rgb_topic:
            rgb_stamp = stamp_ns(msg.header)
            if rgb_stamp not in self.wanted:
                self.unmatched[self.rgb_topic] += 1
                return
            self._rgb.setdefault(rgb_stamp, msg)
        else:
            thermal_stamp = stamp_ns(msg.header)
            if thermal_stamp not in self.wanted_thermal:
                self.unmatched[self.thermal_topic] += 1
                return
            self._thermal.setdefault(thermal_stamp, msg)
            rgb_stamp = self.wanted_thermal[thermal_stamp]
        thermal_stamp = self.wanted.get(rgb_stamp)
        if rgb_stamp in self._results and rgb_stamp in self._rgb and thermal_stamp in self._thermal:
            result, receive_ns = self._results.pop(rgb_stamp)
            self._score(result, receive_ns, self._rgb.pop(rgb_stamp), self._thermal.pop(thermal_stamp))

    def finish(self) -> None:
        for rgb_stamp in self._results:
            self.evaluation.skip("input_not_recorded", f"result at {stamp_text(rgb_stamp)}: its RGB or thermal "
                                 "input frame is not in the recording")

    def _score(self, result: Any, receive_ns: int, rgb_msg: Any, thermal_msg: Any) -> None:
        """Score one recorded result against its recorded input frames."""
        rgb_stamp, thermal_stamp = time_ns(result.rgb_stamp), time_ns(result.thermal_stamp)
        where = f"result at {stamp_text(rgb_stamp)}"
        try:
            rgb, _ = decode_input(rgb_msg, visible=True)
            thermal, _ = decode_input(thermal_msg, visible=False)
            fused = visible_from_image(result.fused)
            labels = image_to_numpy(result.labels)
        except ImageConversionError as exc:
            self.evaluation.skip(exc.reason, f"{where}: {exc}")
            return
        try:
            thermal = process_pair(None, rgb, thermal, self.homography).thermal
        except SizeMismatchError as exc:
            self.evaluation.skip(exc.reason, f"{where}: {exc}")
            return
        if labels.ndim != 2 or len({rgb.shape[:2], fused.shape[:2], labels.shape}) != 1:
            self.evaluation.skip("size_mismatch", f"{where}: RGB {rgb.shape}, fused {fused.shape}, labels "
                                 f"{labels.shape}")
            return
        timings = result_timings(result)
        skew = thermal_stamp + self.thermal_offset_ns - rgb_stamp
        self.evaluation.add_pair((rgb_stamp, thermal_stamp, skew), rgb, thermal, fused, labels, timings,
                                 end_to_end_ms=(receive_ns - rgb_stamp) / 1e6)
