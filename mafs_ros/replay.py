"""Offline evaluation on rosbags (`mafs replay`), without ROS: read a bag with `rosbags`, pair RGB and thermal
frames exactly like the live node, run the engine, write the node's outputs into a new bag and a report.

Two modes:

- `replay(bag, out_dir, engine=...)`: the input bag's RGB and thermal frames are fed to the node's pairing class
  (`ros.pairing.ApproximateTimePairer`, same parameters) in bag receive-time order, so the pairs are the ones the
  live node would make. With a homography (the node's registration.homography) thermal is warped into the RGB
  image first, as the node does. Each pair goes through the engine; DIR/bag gets /fused/image,
  /segmentation/labels, /segmentation/overlay, /mafs/result, /segmentation/info (once, transient local) and
  /fused/camera_info (when the bag has camera info), each stamped with the RGB input's header and recorded when
  the pair was complete (the later receive time of its RGB and thermal frame), plus a copy of the input topics:
  `ros2 bag play DIR/bag` shows it like a live run, and `report_from_recording(DIR/bag)` reproduces the fusion
  numbers.
- `report_from_recording(bag, out_dir)`: a recorded live run (input topics + the node's /mafs/result). The pairs
  are the node's (rgb_stamp, thermal_stamp of each result), matched to the recorded input frames by stamp; the
  metrics use the recorded fused images; latency comes from the result's timings, and separately end to end
  (result receive time - RGB stamp).

Fusion metrics per pair (A, B, F as in `evaluate`): A = the thermal frame through the thermal normalisation
(`evaluate.thermal_u8`), B = `metrics.luma_u8` of the RGB frame, F = `luma_u8` of the fused rgb8 image as
published (what `mafs metrics` takes from an RGB fused file), so both modes score the same pixels.
With a homography, A is the warped thermal frame (what the network fused).
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
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import bags
from .bags import (
    CAMERA_INFO_TOPIC,
    FUSED_CAMERA_INFO_TOPIC,
    FUSED_TOPIC,
    GROUND_TRUTH_TOPIC,
    INFO_TOPIC,
    LABELS_TOPIC,
    OVERLAY_TOPIC,
    RESULT_TOPIC,
    RGB_TOPIC,
    THERMAL_TOPIC,
    BagError,
    BagMessage,
    BagReader,
    BagReadError,
    BagWriter,
    deserialize,
    stamp_ns,
    time_ns,
)
from .class_sets import IGNORE_LABEL, default_class_set
from .evaluate import (
    SheetRow,
    format_metrics,
    format_table,
    json_ready,
    segmentation_markdown,
    segmentation_summary,
    thermal_u8,
    write_contact_sheet,
    write_json,
)
from .imaging import ThermalNormalization, overlay
from .metrics import FUSION_METRIC_NAMES, ConfusionMatrix, fusion_metrics, luma_u8, mean_metrics
from .ros.conversions import ImageConversionError, image_to_numpy, thermal_from_image, visible_from_image
from .ros import pairing
from .ros.pairing import ApproximateTimePairer, Pair
from .ros.registration import IDENTITY_HOMOGRAPHY, parse_homography, warp_thermal_to_rgb

if TYPE_CHECKING:
    from .engine import MafsEngine

logger = logging.getLogger(__name__)

# The node's sync.* defaults (cli.add_replay_arguments repeats them to keep `mafs --help` free of torch).
DEFAULT_SLOP_S = 0.05
DEFAULT_QUEUE_SIZE = 10
DEFAULT_THERMAL_OFFSET_S = 0.0
DEFAULT_MAX_WAIT_S = pairing.DEFAULT_MAX_WAIT_S


class ReplayError(Exception):
    """Nothing could be evaluated: the bag cannot be opened, a required topic is missing, the output exists."""


# ---------------------------------------------------------------------------------------------------------
# What both modes accumulate

_LOGGED_PER_REASON = 3  # a bag can repeat one problem thousands of times: log the first few, count them all


@dataclass
class _PairRecord:
    """The numbers of one evaluated pair."""

    rgb_stamp_ns: int
    thermal_stamp_ns: int
    skew_ns: int
    timings: dict[str, float]
    metrics: dict[str, float]
    end_to_end_ms: float | None = None

    @property
    def latency_ms(self) -> float:
        return sum(self.timings.values())


class _Evaluation:
    """Per-pair records, ground-truth matching, skip counts and contact-sheet samples of one run.

    Ground truth and predictions of a stamp may come in either order: a prediction is kept only for the stamps
    that have ground truth (`ground_truth_stamps`, read beforehand), a ground-truth image until its pair comes.
    Pairs are numbered in the order they are added (the pair index): a looped bag repeats RGB stamps.
    """

    def __init__(self, normalization: ThermalNormalization, class_names: Sequence[str], palette: np.ndarray,
                 ground_truth_stamps: set[int], sample_indices: set[int]) -> None:
        self.normalization = normalization
        self.class_names = tuple(class_names)
        self.palette = palette
        self.ground_truth_stamps = ground_truth_stamps
        self.sample_indices = sample_indices
        self.records: list[_PairRecord] = []
        self.skipped: Counter = Counter()
        self.samples: dict[int, SheetRow] = {}  # pair index -> contact-sheet row
        self.labels_read = 0
        self.labels_scored = 0
        self._matrix = ConfusionMatrix(len(self.class_names), ignore_index=IGNORE_LABEL)
        self._pending_truth: dict[int, np.ndarray] = {}
        self._pending_predictions: dict[int, tuple[np.ndarray, int]] = {}  # RGB stamp -> (labels, pair index)

    def skip(self, reason: str, message: str) -> None:
        """Count a frame or pair left out under `reason`; log the first few of each reason."""
        self.skipped[reason] += 1
        if self.skipped[reason] < _LOGGED_PER_REASON:
            logger.error("%s", message)
        elif self.skipped[reason] == _LOGGED_PER_REASON:
            logger.error("%s (further %s cases are only counted)", message, reason)

    def add_pair(
        self,
        pair_stamps: tuple[int, int, int],
        rgb: np.ndarray,
        thermal: np.ndarray,
        fused_rgb: np.ndarray,
        labels: np.ndarray,
        timings: dict[str, float],
        end_to_end_ms: float | None = None,
    ) -> None:
        """Score one fused pair. pair_stamps: (RGB stamp, thermal stamp, skew) in ns; images at the RGB size."""
        rgb_stamp, thermal_stamp, skew = pair_stamps
        ir = thermal_u8(self.normalization, thermal)
        values = fusion_metrics(ir, luma_u8(rgb), luma_u8(fused_rgb))
        self.records.append(_PairRecord(rgb_stamp, thermal_stamp, skew, dict(timings), values, end_to_end_ms))
        index = len(self.records) - 1
        if index in self.sample_indices:
            self.samples[index] = SheetRow(
                stem=_stamp_text(rgb_stamp), ir=ir, vi=np.asarray(rgb), fused=fused_rgb,
                prediction=overlay(fused_rgb, labels, self.palette), ground_truth=None,
            )
        truth = self._pending_truth.pop(rgb_stamp, None)
        if truth is not None:
            self._score(rgb_stamp, labels, index, truth)
        elif rgb_stamp in self.ground_truth_stamps:
            self._pending_predictions[rgb_stamp] = (np.array(labels), index)

    def add_ground_truth(self, stamp: int, msg: Any) -> None:
        """A ground-truth label image (mono8/8UC1/mono16/16UC1 class ids) for the RGB frame stamped `stamp`."""
        self.labels_read += 1
        try:
            truth = image_to_numpy(msg)
            if truth.ndim != 2 or truth.dtype.kind != "u":
                raise ImageConversionError("unsupported_encoding", f"{msg.encoding!r} is not a class-id encoding")
        except ImageConversionError as exc:
            self.skip(f"ground_truth_{exc.reason}", f"ground truth at {_stamp_text(stamp)}: {exc}")
            return
        pending = self._pending_predictions.pop(stamp, None)
        if pending is None:
            self._pending_truth[stamp] = np.array(truth)
        else:
            prediction, index = pending
            self._score(stamp, prediction, index, truth)

    def _score(self, stamp: int, prediction: np.ndarray, index: int, truth: np.ndarray) -> None:
        try:
            self._matrix.update(prediction, truth)
        except ValueError as exc:  # another size, or class ids outside the model's classes
            self.skip("bad_ground_truth", f"ground truth at {_stamp_text(stamp)}: {exc}")
            return
        self.labels_scored += 1
        if index in self.samples:
            self.samples[index].ground_truth = overlay(self.samples[index].vi, truth, self.palette)

    def segmentation(self) -> dict[str, Any] | None:
        """The report's "segmentation" entry, or None without any ground truth."""
        if not self.labels_read:
            return None
        return {
            **segmentation_summary(self._matrix, self.class_names, self.labels_scored),
            "labels_read": self.labels_read,
            "labels_unmatched": len(self._pending_truth),
        }


class _Reading:
    """Reads a bag's topics in receive order with a progress bar; counts messages per topic and the time span."""

    def __init__(self, reader: BagReader, topics: Sequence[str]) -> None:
        self.reader = reader
        self.topics = list(topics)
        self.frames_read: dict[str, int] = {topic: 0 for topic in self.topics}
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.error: str | None = None

    def run(self, handle: Callable[[BagMessage, int], None], desc: str) -> None:
        """Call handle(message, its 1-based index on its topic) for every message. A bag that breaks partway ends
        the reading: `error` says where (also logged)."""
        from tqdm import tqdm

        total = sum(self.reader.topics[topic].count for topic in self.topics)
        try:
            for message in tqdm(self.reader.messages(self.topics), total=total, desc=desc, unit="msg",
                                file=sys.stderr, disable=None):
                self.frames_read[message.topic] += 1
                self.first_ns = message.receive_ns if self.first_ns is None else self.first_ns
                self.last_ns = message.receive_ns
                handle(message, self.frames_read[message.topic])
        except BagReadError as exc:
            counts = ", ".join(f"{topic} {n}" for topic, n in self.frames_read.items())
            self.error = f"{exc} (frames read per topic: {counts}); the report covers the frames before that point"
            logger.error("%s", self.error)

    @property
    def duration_s(self) -> float:
        return 0.0 if self.first_ns is None else (self.last_ns - self.first_ns) / 1e9


def _open(
    bag: str | Path, required: Sequence[str], optional: dict[str, str | None]
) -> tuple[BagReader, dict[str, str]]:
    """The open bag, checked for the required topics, and the optional ones (what -> topic) that it has; a
    warning names the bag's topics for the others. Raises ReplayError."""
    try:
        reader = BagReader(bag)
    except BagError as exc:
        raise ReplayError(str(exc)) from None
    try:
        reader.require_topics(required)
    except BagError as exc:
        reader.close()
        raise ReplayError(str(exc)) from None
    present = {}
    for what, topic in optional.items():
        if topic is None:
            continue
        if topic in reader.topics:
            present[what] = topic
        else:
            logger.warning("no %s: topic %s is not in %s (topics: %s)", what, topic, reader.path,
                           ", ".join(reader.topics) or "none")
    return reader, present


def _ground_truth_stamps(reader: BagReader, labels_topic: str | None) -> set[int]:
    """Header stamps of the ground-truth messages (a first pass over that topic only)."""
    stamps: set[int] = set()
    if labels_topic is None:
        return stamps
    for message in _messages_until_error(reader, [labels_topic]):
        try:
            stamps.add(stamp_ns(deserialize(message).header))
        except Exception:  # noqa: BLE001 - a corrupt message is reported by the main pass
            continue
    return stamps


def _messages_until_error(reader: BagReader, topics: Sequence[str]) -> Iterator[BagMessage]:
    """reader.messages(topics), ending quietly where the bag breaks (the main pass reports it)."""
    try:
        yield from reader.messages(topics)
    except BagReadError:
        return


def _decode(message: BagMessage, index: int, evaluation: _Evaluation) -> Any:
    """The message object, or None (counted as "corrupt_message") if its bytes do not deserialize."""
    try:
        return deserialize(message)
    except Exception as exc:  # noqa: BLE001 - the CDR decoder raises several types on corrupt bytes
        evaluation.skip("corrupt_message", f"{message.topic} frame {index} (received at "
                        f"{_stamp_text(message.receive_ns)}): cannot decode {message.msgtype}: {exc}")
        return None


def _sample_indices(expected_pairs: int, count: int) -> set[int]:
    """`count` evenly spaced pair indices out of about `expected_pairs` (the contact sheet's rows)."""
    if count <= 0 or expected_pairs <= 0:
        return set()
    return {int(i) for i in np.linspace(0, expected_pairs - 1, min(count, expected_pairs)).round()}


# ---------------------------------------------------------------------------------------------------------
# Replay


@dataclass
class _Frame:
    """An input frame waiting in the pairer, decoded as the node decodes it (RGB (H, W, 3) uint8, thermal (H, W))."""

    msg: Any
    image: np.ndarray
    receive_ns: int


def replay(
    bag: str | Path,
    out_dir: str | Path,
    *,
    engine: "MafsEngine | None" = None,
    rgb_topic: str = RGB_TOPIC,
    thermal_topic: str = THERMAL_TOPIC,
    camera_info_topic: str | None = CAMERA_INFO_TOPIC,
    labels_topic: str | None = GROUND_TRUTH_TOPIC,
    slop_s: float = DEFAULT_SLOP_S,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    thermal_offset_s: float = DEFAULT_THERMAL_OFFSET_S,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    homography: Sequence[float] = IDENTITY_HOMOGRAPHY,
    storage: str = "mcap",
    copy_inputs: bool = True,
    overwrite: bool = False,
    contact_sheet_count: int = 4,
) -> dict[str, Any]:
    """Replay `bag` through `engine` (None: the packaged checkpoint on 'auto') like the live node; write
    out_dir/bag (`storage`: mcap or sqlite3), report.json, report.md and the plots; return the report.

    Topic names may be given with or without the leading slash. The RGB and thermal topics must be in the bag;
    camera info and ground truth are used when present (a warning otherwise). `homography` (the node's
    registration.homography: 9 numbers, row-major, thermal pixels -> RGB pixels) warps thermal into the RGB
    image before fusion; with the identity, pairs whose sizes differ are skipped ("size_mismatch"). `copy_inputs`
    also stores the input topics in the output bag. `overwrite` replaces an existing out_dir/bag.
    A bag that breaks partway (truncated, corrupt storage) is evaluated up to that point and the report's
    "read_error" says where reading stopped; single undecodable messages are skipped and counted.
    Raises ReplayError when nothing can be done, ValueError for bad parameters.
    """
    rgb_topic, thermal_topic = bags.topic_name(rgb_topic), bags.topic_name(thermal_topic)
    optional = {"camera info": bags.topic_name(camera_info_topic) if camera_info_topic else None,
                "ground truth": bags.topic_name(labels_topic) if labels_topic else None}
    pairer = ApproximateTimePairer(slop_s=slop_s, queue_size=queue_size, thermal_offset_s=thermal_offset_s,
                                   max_wait_s=max_wait_s)
    matrix = parse_homography(homography)
    if storage not in bags.STORAGES:
        raise ValueError(f"storage must be one of {tuple(bags.STORAGES)}, got {storage!r}")
    out_dir = Path(out_dir)
    output_bag = out_dir / "bag"

    reader, present = _open(bag, [rgb_topic, thermal_topic], optional)
    with reader:
        camera_info_topic, labels_topic = present.get("camera info"), present.get("ground truth")
        if output_bag.exists() and not overwrite:
            raise ReplayError(f"output bag {output_bag} exists already; remove it or use --overwrite")
        if engine is None:
            from .engine import MafsEngine

            engine = MafsEngine()
        out_dir.mkdir(parents=True, exist_ok=True)
        if output_bag.exists():
            shutil.rmtree(output_bag)

        evaluation = _Evaluation(
            engine.thermal_normalization, engine.class_names, engine.palette,
            ground_truth_stamps=_ground_truth_stamps(reader, labels_topic),
            sample_indices=_sample_indices(
                min(reader.topics[rgb_topic].count, reader.topics[thermal_topic].count), contact_sheet_count
            ),
        )
        topics = [t for t in (rgb_topic, thermal_topic, camera_info_topic, labels_topic) if t is not None]
        reading = _Reading(reader, topics)
        start = time.perf_counter()
        with BagWriter(output_bag, storage=storage) as writer:
            _declare_outputs(writer, reader, topics if copy_inputs else [])
            run = _ReplayRun(engine, writer, pairer, evaluation, rgb_topic, camera_info_topic, labels_topic,
                             copy_inputs, matrix)
            reading.run(run.handle, "replay")
            run.process(pairer.flush())
        wall_s = time.perf_counter() - start

    stats = pairer.stats
    report: dict[str, Any] = {
        "mode": "replay",
        "bag": str(reader.path),
        "output_bag": str(output_bag),
        "topics": {"rgb": rgb_topic, "thermal": thermal_topic, "camera_info": camera_info_topic,
                   "labels": labels_topic},
        "frames_read": reading.frames_read,
        "pairs_made": run.pairs_made,
        "unmatched": {rgb_topic: stats.unmatched_rgb, thermal_topic: stats.unmatched_thermal},
        "pairing": {"slop_s": slop_s, "queue_size": queue_size, "thermal_offset_s": thermal_offset_s,
                    "max_wait_s": max_wait_s, **stats.as_dict()},
        "registration": _registration(matrix),
        "checkpoint": {
            "path": str(engine.checkpoint_path) if engine.checkpoint_path is not None else None,
            "trained": engine.checkpoint_trained,
            "config": engine.config.name,
        },
        "engine": {"device": str(engine.device), "precision": engine.precision,
                   "thermal_normalization": str(engine.thermal_normalization), "size_policy": engine.size_policy},
        "read_error": reading.error,
    }
    report.update(_summaries(evaluation, reading, wall_s))
    return _write_outputs(report, evaluation, out_dir, slop_ms=slop_s * 1e3)


def _registration(homography: np.ndarray | None) -> dict[str, list[float] | None]:
    """The report's "registration" entry: the homography applied (None: identity, no warp)."""
    return {"homography": None if homography is None else homography.ravel().tolist()}


def _declare_outputs(writer: BagWriter, reader: BagReader, input_topics: Sequence[str]) -> None:
    """Topics of the output bag with the node's QoS (reliable; segmentation/info transient local) and, for copied
    inputs, the QoS they were recorded with."""
    for topic in input_topics:
        writer.add_topic(topic, reader.topics[topic].msgtype, reader.offered_qos(topic) or None)
    writer.add_topic(INFO_TOPIC, bags.INFO_TYPE, [bags.qos_profile(transient_local=True, depth=1)])
    for topic, msgtype in ((FUSED_TOPIC, bags.IMAGE_TYPE), (LABELS_TOPIC, bags.IMAGE_TYPE),
                           (OVERLAY_TOPIC, bags.IMAGE_TYPE), (RESULT_TOPIC, bags.RESULT_TYPE)):
        writer.add_topic(topic, msgtype)


class _ReplayRun:
    """One replay in progress: input messages in receive order in, the node's outputs into the writer."""

    def __init__(self, engine: "MafsEngine", writer: BagWriter, pairer: ApproximateTimePairer,
                 evaluation: _Evaluation, rgb_topic: str, camera_info_topic: str | None, labels_topic: str | None,
                 copy_inputs: bool, homography: np.ndarray | None) -> None:
        self.engine = engine
        self.writer = writer
        self.pairer = pairer
        self.evaluation = evaluation
        self.rgb_topic = rgb_topic
        self.camera_info_topic = camera_info_topic
        self.labels_topic = labels_topic
        self.copy_inputs = copy_inputs
        self.homography = homography
        self.pairs_made = 0
        self._camera_info: Any = None
        self._info_written = False

    def handle(self, message: BagMessage, index: int) -> None:
        """One input message (index: 1-based on its topic)."""
        if not self._info_written:  # the node publishes it once at start-up
            self.writer.write(INFO_TOPIC, message.receive_ns, self._info_message(message.receive_ns))
            self._info_written = True
        if self.copy_inputs:
            self.writer.write_raw(message.topic, message.msgtype, message.receive_ns, message.raw)
        msg = _decode(message, index, self.evaluation)
        if msg is None:
            return
        if message.topic == self.camera_info_topic:
            self._camera_info = msg
        elif message.topic == self.labels_topic:
            self.evaluation.add_ground_truth(stamp_ns(msg.header), msg)
        else:
            is_rgb = message.topic == self.rgb_topic
            try:
                # The node decodes each frame before pairing and never pairs one it refuses: same here.
                image = visible_from_image(msg) if is_rgb else thermal_from_image(msg)
            except ImageConversionError as exc:
                self.evaluation.skip(exc.reason, f"{message.topic} frame {index}: {exc}")
                return
            add = self.pairer.add_rgb if is_rgb else self.pairer.add_thermal
            # Receive times drive sync.max_wait_s as the node's clock does live.
            self.process(add(stamp_ns(msg.header), _Frame(msg, image, message.receive_ns), message.receive_ns))

    def process(self, pairs: Iterable[Pair]) -> None:
        for pair in pairs:
            self.pairs_made += 1
            self._process_pair(pair)

    def _process_pair(self, pair: Pair) -> None:
        """Run one pair through the engine as the node's _process does, write its outputs and score it."""
        rgb_msg, thermal_msg = pair.rgb.msg, pair.thermal.msg
        rgb, thermal = pair.rgb.image, pair.thermal.image
        where = f"pair at {_stamp_text(pair.rgb_stamp_ns)}"
        thermal = warp_thermal_to_rgb(thermal, self.homography, (rgb.shape[1], rgb.shape[0]))
        if thermal.shape[:2] != rgb.shape[:2]:
            self.evaluation.skip("size_mismatch", f"{where}: thermal {thermal.shape[1]}x{thermal.shape[0]} and RGB "
                                 f"{rgb.shape[1]}x{rgb.shape[0]} differ; give the homography (thermal -> RGB "
                                 "pixels) to register them")
            return
        try:
            result = self.engine.infer(rgb, thermal, want_confidence=False, want_overlay=True)
        except (ValueError, RuntimeError) as exc:  # RuntimeError: e.g. CUDA out of memory on one large frame
            self.evaluation.skip("inference_error", f"{where}: {type(exc).__name__}: {exc}")
            return

        # The node cannot publish before the later frame of the pair has arrived.
        header, t = rgb_msg.header, max(pair.rgb.receive_ns, pair.thermal.receive_ns)
        fused = bags.image_message(result.fused_rgb, "rgb8", header)
        labels = bags.image_message(result.labels, "mono8", header)
        self.writer.write(FUSED_TOPIC, t, fused)
        self.writer.write(LABELS_TOPIC, t, labels)
        self.writer.write(OVERLAY_TOPIC, t, bags.image_message(result.overlay, "rgb8", header))
        self.writer.write(RESULT_TOPIC, t, bags.typestore().types[bags.RESULT_TYPE](
            header=header, fused=fused, labels=labels, confidence=bags.empty_image(header),
            rgb_stamp=header.stamp, thermal_stamp=thermal_msg.header.stamp,
            preprocess_ms=float(result.timings.get("preprocess_ms", 0.0)),
            inference_ms=float(result.timings.get("inference_ms", 0.0)),
            postprocess_ms=float(result.timings.get("postprocess_ms", 0.0)),
        ))
        if self._camera_info is not None:  # the node republishes the latest RGB camera info with the fused header
            self.writer.write(FUSED_CAMERA_INFO_TOPIC, t, dataclasses.replace(self._camera_info, header=header))
        self.evaluation.add_pair((pair.rgb_stamp_ns, pair.thermal_stamp_ns, pair.skew_ns), rgb, thermal,
                                 result.fused_rgb, result.labels, result.timings)

    def _info_message(self, stamp: int) -> Any:
        """segmentation/info as the node publishes it (model id = checkpoint file name)."""
        path = self.engine.checkpoint_path
        return bags.typestore().types[bags.INFO_TYPE](
            header=bags.make_header(stamp, ""),
            model_id=path.name if path is not None else "in-memory model",
            model_config=self.engine.config.name,
            class_names=list(self.engine.class_names),
            palette=np.asarray(self.engine.palette, dtype=np.uint8).reshape(-1),
            ignore_id=IGNORE_LABEL,
        )


# ---------------------------------------------------------------------------------------------------------
# Report from a recorded live run


def report_from_recording(
    bag: str | Path,
    out_dir: str | Path,
    *,
    rgb_topic: str = RGB_TOPIC,
    thermal_topic: str = THERMAL_TOPIC,
    labels_topic: str | None = GROUND_TRUTH_TOPIC,
    result_topic: str = RESULT_TOPIC,
    info_topic: str = INFO_TOPIC,
    thermal_normalization: "str | ThermalNormalization | None" = None,
    thermal_offset_s: float = DEFAULT_THERMAL_OFFSET_S,
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

    reader, present = _open(bag, [rgb_topic, thermal_topic, result_topic],
                            {"ground truth": bags.topic_name(labels_topic) if labels_topic else None})
    with reader:
        labels_topic = present.get("ground truth")
        # First pass: which input stamps the node fused, and the class names it published.
        wanted: dict[int, int] = {}  # RGB stamp -> thermal stamp
        info = None
        for message in _messages_until_error(reader, [result_topic, info_topic]):
            try:
                msg = deserialize(message)
            except Exception:  # noqa: BLE001 - reported by the second pass
                continue
            if message.topic == info_topic:
                info = info or msg
            else:
                wanted[time_ns(msg.rgb_stamp)] = time_ns(msg.thermal_stamp)
        class_names, palette = _class_set(info)
        evaluation = _Evaluation(normalization, class_names, palette,
                                 ground_truth_stamps=_ground_truth_stamps(reader, labels_topic),
                                 sample_indices=_sample_indices(len(wanted), contact_sheet_count))

        topics = [t for t in (rgb_topic, thermal_topic, labels_topic, result_topic) if t is not None]
        reading = _Reading(reader, topics)
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
        "registration": _registration(matrix),
        "read_error": reading.error,
    }
    report.update(_summaries(evaluation, reading, wall_s=None))
    return _write_outputs(report, evaluation, out_dir, slop_ms=None)


def _class_set(info: Any) -> tuple[tuple[str, ...], np.ndarray]:
    """Class names and palette from a recorded SegmentationInfo, else the 9-class MFNet set."""
    if info is not None and len(info.class_names) >= 2 and len(info.palette) == 3 * len(info.class_names):
        return tuple(info.class_names), np.asarray(info.palette, dtype=np.uint8).reshape(-1, 3)
    default = default_class_set(9)
    return default.class_names, np.asarray(default.palette, dtype=np.uint8)


class _RecordingRun:
    """The second pass over a recording, in receive order: holds the input frames a result names, and results
    whose inputs have not come yet, until all three of a pair are there."""

    def __init__(self, wanted: dict[int, int], evaluation: _Evaluation, rgb_topic: str, thermal_topic: str,
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
        msg = _decode(message, index, self.evaluation)
        if msg is None:
            return
        if message.topic == self.labels_topic:
            self.evaluation.add_ground_truth(stamp_ns(msg.header), msg)
            return
        if message.topic == self.result_topic:
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
            self.evaluation.skip("input_not_recorded", f"result at {_stamp_text(rgb_stamp)}: its RGB or thermal "
                                 "input frame is not in the recording")

    def _score(self, result: Any, receive_ns: int, rgb_msg: Any, thermal_msg: Any) -> None:
        """Score one recorded result against its recorded input frames."""
        rgb_stamp, thermal_stamp = time_ns(result.rgb_stamp), time_ns(result.thermal_stamp)
        where = f"result at {_stamp_text(rgb_stamp)}"
        try:
            rgb = visible_from_image(rgb_msg)
            thermal = thermal_from_image(thermal_msg)
            fused = visible_from_image(result.fused)
            labels = image_to_numpy(result.labels)
        except ImageConversionError as exc:
            self.evaluation.skip(exc.reason, f"{where}: {exc}")
            return
        thermal = warp_thermal_to_rgb(thermal, self.homography, (rgb.shape[1], rgb.shape[0]))
        if labels.ndim != 2 or len({rgb.shape[:2], thermal.shape[:2], fused.shape[:2], labels.shape}) != 1:
            self.evaluation.skip("size_mismatch", f"{where}: RGB {rgb.shape}, thermal {thermal.shape}, fused "
                                 f"{fused.shape}, labels {labels.shape} (registered thermal: give the node's "
                                 "homography)")
            return
        timings = {"preprocess_ms": float(result.preprocess_ms), "inference_ms": float(result.inference_ms),
                   "postprocess_ms": float(result.postprocess_ms)}
        skew = thermal_stamp + self.thermal_offset_ns - rgb_stamp
        self.evaluation.add_pair((rgb_stamp, thermal_stamp, skew), rgb, thermal, fused, labels, timings,
                                 end_to_end_ms=(receive_ns - rgb_stamp) / 1e6)


# ---------------------------------------------------------------------------------------------------------
# Report


def _stamp_text(ns: int) -> str:
    """A stamp in ns as "sec.nanosec" (exact)."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return f"{sec}.{nanosec:09d}"


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, max and mean of `values` (None for each when empty)."""
    if not len(values):
        return {"p50": None, "p95": None, "max": None, "mean": None}
    data = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(data, 50)), "p95": float(np.percentile(data, 95)), "max": float(data.max()),
            "mean": float(data.mean())}


def _summaries(evaluation: _Evaluation, reading: _Reading, wall_s: float | None) -> dict[str, Any]:
    """The report entries computed from the evaluated pairs (shared by both modes; wall_s None: a recording)."""
    records = evaluation.records
    per_frame = [{"index": i, "rgb_stamp": _stamp_text(r.rgb_stamp_ns), "metrics": r.metrics}
                 for i, r in enumerate(records)]
    # Keyed by pair index, not stamp: a looped bag repeats stamps, and every pair counts in the mean.
    mean = mean_metrics({str(i): r.metrics for i, r in enumerate(records)})["mean"] if records else None
    skews_ms = [r.skew_ns / 1e6 for r in records]
    abs_skew = _stats([abs(s) for s in skews_ms])
    duration_s = reading.duration_s
    throughput: dict[str, Any] = {
        "bag_duration_s": duration_s,
        "pairs_per_s": len(records) / duration_s if duration_s > 0 else None,
        "rates_hz": {topic: n / duration_s if duration_s > 0 else None for topic, n in reading.frames_read.items()},
    }
    if wall_s is not None:
        throughput["wall_s"] = wall_s
        throughput["pairs_per_s_wall"] = len(records) / wall_s if wall_s > 0 else None
        throughput["realtime_factor"] = duration_s / wall_s if wall_s > 0 else None
    out: dict[str, Any] = {
        "pairs_fused": len(records),
        "skipped": dict(sorted(evaluation.skipped.items())),
        "skew_ms": {"mean": float(np.mean(skews_ms)) if skews_ms else None,
                    "p50": abs_skew["p50"], "p95": abs_skew["p95"], "max": abs_skew["max"]},
        "latency_ms": {
            **_stats([r.latency_ms for r in records]),
            "stages": {name: _stats([r.timings.get(name, 0.0) for r in records])
                       for name in ("preprocess_ms", "inference_ms", "postprocess_ms")},
        },
        "throughput": throughput,
        "fusion": {"mean": mean, "per_frame": per_frame},
        "frames": [
            {"rgb_stamp_ns": r.rgb_stamp_ns, "thermal_stamp_ns": r.thermal_stamp_ns, "skew_ms": r.skew_ns / 1e6,
             "latency_ms": r.latency_ms, **({"end_to_end_ms": r.end_to_end_ms} if r.end_to_end_ms is not None else {})}
            for r in records
        ],
    }
    if wall_s is None:  # a recording: the node's results were received at a time of their own
        out["end_to_end_ms"] = _stats([r.end_to_end_ms for r in records if r.end_to_end_ms is not None])
    segmentation = evaluation.segmentation()
    if segmentation is not None:
        out["segmentation"] = segmentation
    return out


def _write_outputs(report: dict[str, Any], evaluation: _Evaluation, out_dir: Path, slop_ms: float | None) -> dict:
    """Plots, contact sheet, report.md and report.json into out_dir; returns the JSON-ready report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _write_plots(out_dir, evaluation.records, slop_ms)
    rows = [evaluation.samples[index] for index in sorted(evaluation.samples)]
    if rows:
        title = f"MAFS {report['mode']}: {Path(report['bag']).name}, {report['pairs_fused']} pair(s)"
        write_contact_sheet(out_dir / "contact_sheet.png", rows, title)
        files.append("contact_sheet.png")
    report["files"] = ["report.json", "report.md", *files]
    report = json_ready(report)
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    write_json(out_dir / "report.json", report)
    return report


def _write_plots(out_dir: Path, records: Sequence[_PairRecord], slop_ms: float | None) -> list[str]:
    """metrics_over_time.png, latency_hist.png and skew_hist.png (nothing without pairs); returns file names."""
    if not records:
        return []
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    t0 = records[0].rgb_stamp_ns
    seconds = [(r.rgb_stamp_ns - t0) / 1e9 for r in records]
    fig = Figure(figsize=(12, 8), layout="constrained")
    for ax, name in zip(fig.subplots(3, 3).flat, FUSION_METRIC_NAMES):
        ax.plot(seconds, [r.metrics[name] for r in records], marker=".", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("RGB stamp - first stamp (s)")
    fig.suptitle("Fusion metrics per pair")
    fig.savefig(out_dir / "metrics_over_time.png", dpi=90)

    end_to_end = [r.end_to_end_ms for r in records if r.end_to_end_ms is not None]
    panels: list[tuple[str, list[float]]] = [("processing (preprocess + inference + postprocess)",
                                              [r.latency_ms for r in records])]
    if end_to_end:
        panels.append(("end to end (result receive time - RGB stamp)", end_to_end))
    fig = Figure(figsize=(6 * len(panels), 4), layout="constrained")
    for ax, (title, values) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        ax.hist(values, bins=min(50, max(5, len(values) // 2)))
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("pairs")
    fig.savefig(out_dir / "latency_hist.png", dpi=90)

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.hist([r.skew_ns / 1e6 for r in records], bins=min(50, max(5, len(records) // 2)))
    if slop_ms is not None:
        for x in (-slop_ms, slop_ms):
            ax.axvline(x, color="red", linestyle="--")
    ax.set_title("Pair skew: thermal stamp + offset - RGB stamp" + (" (red: ±slop)" if slop_ms is not None else ""))
    ax.set_xlabel("ms")
    ax.set_ylabel("pairs")
    fig.savefig(out_dir / "skew_hist.png", dpi=90)
    return ["metrics_over_time.png", "latency_hist.png", "skew_hist.png"]


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def _markdown(report: dict[str, Any]) -> str:
    """report.md: the report's numbers as Markdown tables, with the plots."""
    title = "MAFS rosbag replay" if report["mode"] == "replay" else "MAFS report of a recorded run"
    lines = [f"# {title}", "", f"- Bag: `{report['bag']}`"]
    if report["output_bag"]:
        lines.append(f"- Output bag: `{report['output_bag']}` (`ros2 bag play` it with rviz2)")
    if "engine" in report:
        ckpt, engine = report["checkpoint"], report["engine"]
        lines.append(f"- Model: `{ckpt['path'] or 'model without checkpoint file'}` ({ckpt['config']}); "
                     f"{engine['device']}, {engine['precision']}, thermal normalisation "
                     f"`{engine['thermal_normalization']}`, size policy `{engine['size_policy']}`")
        if ckpt["trained"] is False:
            lines += ["", "**The checkpoint is UNTRAINED (random weights): the metrics are meaningless.**"]
    if "pairing" in report:
        pairing = report["pairing"]
        lines.append(f"- Pairing: slop {pairing['slop_s']} s, queue size {pairing['queue_size']}, thermal offset "
                     f"{pairing['thermal_offset_s']} s (resets {pairing['resets']}, evicted "
                     f"{pairing['evicted_rgb']} RGB / {pairing['evicted_thermal']} thermal)")
    if report["registration"]["homography"] is not None:
        lines.append(f"- Registration: thermal warped into the RGB image with the homography "
                     f"{report['registration']['homography']}")
    if report["read_error"]:
        lines += ["", f"**Reading stopped early:** {report['read_error']}"]

    lines += ["", "## Frames", "", format_table(
        ["topic", "read", "unmatched"],
        [[topic, str(n), str(report["unmatched"].get(topic, "-"))] for topic, n in report["frames_read"].items()],
        markdown=True,
    ), "", f"- Pairs made: {report['pairs_made']}; fused and scored: {report['pairs_fused']}"]
    if report["skipped"]:
        lines.append("- Skipped: " + ", ".join(f"{reason} {n}" for reason, n in report["skipped"].items()))

    throughput = report["throughput"]
    timing_rows = [["processing", *(_fmt(report["latency_ms"][k]) for k in ("p50", "p95", "max", "mean"))]]
    timing_rows += [[f"  {name}", *(_fmt(values[k]) for k in ("p50", "p95", "max", "mean"))]
                    for name, values in report["latency_ms"]["stages"].items()]
    if "end_to_end_ms" in report:
        timing_rows.append(["end to end", *(_fmt(report["end_to_end_ms"][k]) for k in ("p50", "p95", "max", "mean"))])
    skew = report["skew_ms"]
    timing_rows.append(["abs(skew)", _fmt(skew["p50"]), _fmt(skew["p95"]), _fmt(skew["max"]), "-"])
    lines += ["", "## Timing (ms)", "", format_table(["", "p50", "p95", "max", "mean"], timing_rows, markdown=True),
              "", f"- Mean signed skew: {_fmt(skew['mean'])} ms",
              f"- Bag duration {_fmt(throughput['bag_duration_s'])} s; fused pairs per bag second "
              f"{_fmt(throughput['pairs_per_s'])}"]
    if "wall_s" in throughput:
        lines.append(f"- Replay wall time {_fmt(throughput['wall_s'])} s ({_fmt(throughput['pairs_per_s_wall'])} "
                     f"pairs/s, {_fmt(throughput['realtime_factor'])} x real time)")

    fusion = report["fusion"]
    lines += ["", "## Fusion metrics", "",
              "A = infrared (thermal normalisation x 255), B = visible luma, F = luma of the fused rgb8 image; "
              "definitions in `mafs_ros.metrics`.", ""]
    if fusion["mean"] is None:
        lines.append("No pair was fused.")
    else:
        lines += [
            format_table(["set", "pairs", *FUSION_METRIC_NAMES],
                         [["mean", str(len(fusion["per_frame"])), *format_metrics(fusion["mean"])]], markdown=True),
            "", "### Per pair", "",
            format_table(["pair", "RGB stamp", *FUSION_METRIC_NAMES],
                         [[str(entry["index"]), entry["rgb_stamp"], *format_metrics(entry["metrics"])]
                          for entry in fusion["per_frame"]],
                         markdown=True),
        ]
    seg = report.get("segmentation")
    if seg is not None:
        lines += ["", *segmentation_markdown(seg), "",
                  f"Ground-truth images read: {seg['labels_read']}; without a fused pair: {seg['labels_unmatched']}."]
    plots = [name for name in report["files"] if name.endswith(".png")]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
