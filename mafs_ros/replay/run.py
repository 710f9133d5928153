"""`replay`: a bag's frames paired exactly like the live node, run through the engine, the node's outputs written
into a new bag and the pairs scored."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import bags
from ..bags import BagMessage, BagReader, BagWriter
from ..constants import (
    CAMERA_INFO_TOPIC,
    FUSED_CAMERA_INFO_TOPIC,
    FUSED_TOPIC,
    GROUND_TRUTH_TOPIC,
    IDENTITY_HOMOGRAPHY,
    IMAGE_TYPE,
    INFO_TOPIC,
    INFO_TYPE,
    LABELS_TOPIC,
    MAX_WAIT_S,
    OVERLAY_TOPIC,
    QUEUE_SIZE,
    RESULT_TOPIC,
    RESULT_TYPE,
    RGB_TOPIC,
    SLOP_S,
    THERMAL_OFFSET_S,
    THERMAL_TOPIC,
    absolute_topic,
)
from ..errors import MafsError
from ..stream.conversions import ImageConversionError
from ..stream.frames import InputFrame, decode_input
from ..stream.pairing import ApproximateTimePairer, Pair
from ..stream.processing import process_pair
from ..stream.registration import SizeMismatchError, parse_homography
from ..stream.results import info_message, result_message
from ..stamps import stamp_ns, stamp_text
from .reading import Reading, ReplayError, decode, ground_truth_stamps, open_bag, sample_indices
from .report import write_outputs
from .scoring import Evaluation, registration_entry, summaries

if TYPE_CHECKING:
    from ..engine import MafsEngine

# The node's output topics as a bag stores them.
_FUSED, _LABELS, _OVERLAY = absolute_topic(FUSED_TOPIC), absolute_topic(LABELS_TOPIC), absolute_topic(OVERLAY_TOPIC)
_RESULT, _INFO = absolute_topic(RESULT_TOPIC), absolute_topic(INFO_TOPIC)
_FUSED_CAMERA_INFO = absolute_topic(FUSED_CAMERA_INFO_TOPIC)


def replay(
    bag: str | Path,
    out_dir: str | Path,
    *,
    engine: "MafsEngine | None" = None,
    rgb_topic: str = absolute_topic(RGB_TOPIC),
    thermal_topic: str = absolute_topic(THERMAL_TOPIC),
    camera_info_topic: str | None = absolute_topic(CAMERA_INFO_TOPIC),
    labels_topic: str | None = absolute_topic(GROUND_TRUTH_TOPIC),
    slop_s: float = SLOP_S,
    queue_size: int = QUEUE_SIZE,
    thermal_offset_s: float = THERMAL_OFFSET_S,
    max_wait_s: float = MAX_WAIT_S,
    homography: Sequence[float] = IDENTITY_HOMOGRAPHY,
    storage: str = "mcap",
    copy_inputs: bool = True,
    overwrite: bool = False,
    contact_sheet_count: int = 4,
) -> dict[str, Any]:
    """Replay `bag` through `engine` (None: the packaged checkpoint on 'auto') like the live node; write
    out_dir/bag (`storage`: mcap or sqlite3), report.json, report.md and the plots; return the report.

    Topic names may be given with or without the leading slash. The RGB and thermal topics, or their
    image_transport `<topic>/compressed`, must be in the bag; camera info and ground truth are used when present
    (a warning otherwise). `homography` (the node's registration.homography: 9 numbers, row-major, thermal pixels
    -> RGB pixels) warps thermal into the RGB image before fusion; with the identity, pairs whose sizes differ are
    skipped ("size_mismatch"). `copy_inputs` also stores the input topics in the output bag. `overwrite` replaces
    an existing out_dir/bag. A bag that breaks partway is evaluated up to that point ("read_error" says where);
    undecodable messages are counted. Raises ReplayError when nothing can be done, ValueError for bad parameters.
    """
    rgb_topic, thermal_topic = bags.topic_name(rgb_topic), bags.topic_name(thermal_topic)
    optional = {"camera info": bags.topic_name(camera_info_topic) if camera_info_topic else None,
                "ground truth": bags.topic_name(labels_topic) if labels_topic else None}
    sync = {"slop_s": slop_s, "queue_size": queue_size, "thermal_offset_s": thermal_offset_s, "max_wait_s": max_wait_s}
    pairer = ApproximateTimePairer(**sync)
    matrix = parse_homography(homography)
    if storage not in bags.STORAGES:
        raise ValueError(f"storage must be one of {tuple(bags.STORAGES)}, got {storage!r}")
    output_bag = Path(out_dir) / "bag"
    reader, present = open_bag(bag, {"rgb": rgb_topic, "thermal": thermal_topic}, optional)
    with reader:
        rgb_topic, thermal_topic = present["rgb"], present["thermal"]
        camera_info_topic, labels_topic = present.get("camera info"), present.get("ground truth")
        if output_bag.exists() and not overwrite:
            raise ReplayError(f"output bag {output_bag} exists already; remove it or use --overwrite")
        if engine is None:
            from ..engine import MafsEngine

            engine = MafsEngine()
        output_bag.parent.mkdir(parents=True, exist_ok=True)
        if output_bag.exists():
            shutil.rmtree(output_bag)

        expected_pairs = min(reader.topics[rgb_topic].count, reader.topics[thermal_topic].count)
        evaluation = Evaluation(engine.thermal_normalization, engine.class_names, engine.palette,
                                ground_truth_stamps=ground_truth_stamps(reader, labels_topic),
                                sample_indices=sample_indices(expected_pairs, contact_sheet_count))
        topics = [t for t in (rgb_topic, thermal_topic, camera_info_topic, labels_topic) if t is not None]
        reading = Reading(reader, topics)
        start = time.perf_counter()
        with BagWriter(output_bag, storage=storage) as writer:
            _declare_outputs(writer, reader, topics if copy_inputs else [])
            run = _ReplayRun(engine, writer, pairer, evaluation, rgb_topic, camera_info_topic, labels_topic,
                             copy_inputs, matrix)
            reading.run(run.handle, "replay")
            run.process(pairer.flush())
        wall_s = time.perf_counter() - start
    report = {
        "mode": "replay",
        "bag": str(reader.path),
        "output_bag": str(output_bag),
        "topics": {"rgb": rgb_topic, "thermal": thermal_topic, "camera_info": camera_info_topic,
                   "labels": labels_topic},
        "frames_read": reading.frames_read,
        "pairs_made": run.pairs_made,
        **_run_entries(engine, pairer, sync, matrix, rgb_topic, thermal_topic),
        "read_error": reading.error,
        **summaries(evaluation, reading.frames_read, reading.duration_s, wall_s),
    }
    return write_outputs(report, evaluation, output_bag.parent, slop_ms=slop_s * 1e3)


def _run_entries(engine: "MafsEngine", pairer: ApproximateTimePairer, sync: dict[str, float],
                 homography: np.ndarray | None, rgb_topic: str, thermal_topic: str) -> dict[str, Any]:
    """The report entries of a replay about its set-up: unmatched frames, pairing, registration, model."""
    stats = pairer.stats
    return {
        "unmatched": {rgb_topic: stats.unmatched_rgb, thermal_topic: stats.unmatched_thermal},
        "pairing": {**sync, **stats.as_dict()},
        "registration": registration_entry(homography),
        "checkpoint": {
            "path": str(engine.checkpoint_path) if engine.checkpoint_path is not None else None,
            "trained": engine.checkpoint_trained,
            "config": engine.config.name,
        },
        "engine": {"device": str(engine.device), "precision": engine.precision,
                   "thermal_normalization": str(engine.thermal_normalization), "size_policy": engine.size_policy},
    }


def _declare_outputs(writer: BagWriter, reader: BagReader, input_topics: Sequence[str]) -> None:
    """Topics of the output bag with the node's QoS (reliable; segmentation/info transient local) and, for copied
    inputs, the QoS they were recorded with."""
    for topic in input_topics:
        writer.add_topic(topic, reader.topics[topic].msgtype, reader.offered_qos(topic) or None)
    writer.add_topic(_INFO, INFO_TYPE, [bags.qos_profile(transient_local=True, depth=1)])
    for topic, msgtype in ((_FUSED, IMAGE_TYPE), (_LABELS, IMAGE_TYPE), (_OVERLAY, IMAGE_TYPE),
                           (_RESULT, RESULT_TYPE)):
        writer.add_topic(topic, msgtype)


class _ReplayRun:
    """One replay in progress: input messages in receive order in, the node's outputs into the writer."""

    def __init__(self, engine: "MafsEngine", writer: BagWriter, pairer: ApproximateTimePairer,
                 evaluation: Evaluation, rgb_topic: str, camera_info_topic: str | None, labels_topic: str | None,
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
            info_type = bags.typestore().types[INFO_TYPE]
            self.writer.write(_INFO, message.receive_ns,
                              info_message(info_type, bags.make_header(message.receive_ns, ""), self.engine))
            self._info_written = True
        if self.copy_inputs:
            self.writer.write_raw(message.topic, message.msgtype, message.receive_ns, message.raw)
        msg = decode(message, index, self.evaluation)
        if msg is None:
            return
        if message.topic == self.camera_info_topic:
            self._camera_info = msg
        elif message.topic == self.labels_topic:
            self.evaluation.add_ground_truth(stamp_ns(msg.header), msg)
        else:
            is_rgb = message.topic == self.rgb_topic
            try:
                image, _ = decode_input(msg, visible=is_rgb)
            except ImageConversionError as exc:
                self.evaluation.skip(exc.reason, f"{message.topic} frame {index}: {exc}")
                return
            add = self.pairer.add_rgb if is_rgb else self.pairer.add_thermal
            # Receive times drive sync.max_wait_s as the node's clock does live.
            frame = InputFrame(msg, image, message.receive_ns)
            self.process(add(stamp_ns(msg.header), frame, message.receive_ns))

    def process(self, pairs: Iterable[Pair]) -> None:
        for pair in pairs:
            self.pairs_made += 1
            self._process_pair(pair)

    def _process_pair(self, pair: Pair) -> None:
        """Run one pair through the engine as the node does, write its outputs and score it."""
        import torch  # loaded with the engine already; this module stays importable without it

        where = f"pair at {stamp_text(pair.rgb_stamp_ns)}"
        try:
            processed = process_pair(self.engine, pair.rgb.image, pair.thermal.image, self.homography,
                                     want_confidence=False, want_overlay=True)
        except SizeMismatchError as exc:
            self.evaluation.skip(exc.reason, f"{where}: {exc}")
            return
        except (MafsError, torch.OutOfMemoryError) as exc:  # e.g. a frame too large for the GPU
            self.evaluation.skip("inference_error", f"{where}: {type(exc).__name__}: {exc}")
            return

        result = processed.result
        # The node cannot publish before the later frame of the pair has arrived.
        header, t = pair.rgb.msg.header, max(pair.rgb.receive_ns, pair.thermal.receive_ns)
        fused = bags.image_message(result.fused_rgb, "rgb8", header)
        labels = bags.image_message(result.labels, "mono8", header)
        self.writer.write(_FUSED, t, fused)
        self.writer.write(_LABELS, t, labels)
        self.writer.write(_OVERLAY, t, bags.image_message(result.overlay, "rgb8", header))
        self.writer.write(_RESULT, t, result_message(
            bags.typestore().types[RESULT_TYPE], header, fused=fused, labels=labels,
            confidence=bags.empty_image(header), thermal_stamp=pair.thermal.msg.header.stamp, timings=result.timings,
        ))
        if self._camera_info is not None:  # the node republishes the latest RGB camera info with the fused header
            self.writer.write(_FUSED_CAMERA_INFO, t, dataclasses.replace(self._camera_info, header=header))
        self.evaluation.add_pair((pair.rgb_stamp_ns, pair.thermal_stamp_ns, pair.skew_ns), pair.rgb.image,
                                 processed.thermal, result.fused_rgb, result.labels, result.timings)
