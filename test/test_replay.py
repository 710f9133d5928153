"""`mafs replay` (mafs_ros.replay): pairs like the live node, output bag, report numbers, ground truth by stamp,
broken bags, the CLI, and reports of recorded live runs. A stand-in network on 120x160 sample pairs keeps it fast.
"""

import json
import math
import os
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from bag_helpers import read_topics, small_pairs

import mafs_ros.cli as cli
from mafs_ros import bags
from mafs_ros.cli import engine_options
from mafs_ros.constants import (
    CAMERA_INFO_TOPIC,
    FUSED_CAMERA_INFO_TOPIC,
    FUSED_TOPIC,
    GROUND_TRUTH_TOPIC,
    INFO_TOPIC,
    INFO_TYPE,
    LABELS_TOPIC,
    OVERLAY_TOPIC,
    RESULT_TOPIC,
    RESULT_TYPE,
    RGB_TOPIC,
    THERMAL_TOPIC,
    absolute_topic,
)
from mafs_ros.imaging import thermal_u8
from mafs_ros.metrics import ConfusionMatrix, fusion_metrics, luma_u8
from mafs_ros.replay import ReplayError, replay, report_from_recording
from mafs_ros.stream.conversions import image_to_numpy
from mafs_ros.stream.pairing import ApproximateTimePairer
from mafs_ros.stream.processing import process_pair
from mafs_ros.stream.registration import SizeMismatchError, warp_thermal_to_rgb
from mafs_ros.stamps import stamp_ns, time_ns

RGB, THERMAL, TRUTH, INFO = absolute_topic(RGB_TOPIC), absolute_topic(THERMAL_TOPIC), absolute_topic(GROUND_TRUTH_TOPIC), absolute_topic(INFO_TOPIC)
FUSED, LABELS, OVERLAY, RESULT = absolute_topic(FUSED_TOPIC), absolute_topic(LABELS_TOPIC), absolute_topic(OVERLAY_TOPIC), absolute_topic(RESULT_TOPIC)
PLOTS = ["metrics_over_time.png", "latency_hist.png", "skew_hist.png", "contact_sheet.png"]
DELAY_NS = 5_000_000  # write_pairs_bag's default transport delay


@pytest.fixture
def stand_in_cli(monkeypatch, engine):
    """cli.main with the stand-in engine; returns the argparse namespaces engine_from_args was called with."""
    calls = []
    monkeypatch.setattr(engine_options, "engine_from_args", lambda args: calls.append(args) or engine)
    return calls


def _live_pairs(bag: Path, thermal_offset_s: float) -> list[tuple[int, int]]:
    """The pairs the node's pairer makes from the bag's stamps fed in receive order (what the live node sees)."""
    pairer = ApproximateTimePairer(slop_s=0.05, queue_size=10, thermal_offset_s=thermal_offset_s)
    pairs = []
    with bags.BagReader(bag) as reader:
        for message in reader.messages([RGB, THERMAL]):
            stamp = stamp_ns(bags.deserialize(message).header)
            pairs += pairer.add_rgb(stamp, None) if message.topic == RGB else pairer.add_thermal(stamp, None)
    pairs += pairer.flush()
    return [(p.rgb_stamp_ns, p.thermal_stamp_ns) for p in pairs]


def _frame_pairs(report: dict) -> list[tuple[int, int]]:
    return [(f["rgb_stamp_ns"], f["thermal_stamp_ns"]) for f in report["frames"]]


def _copy_with(src: Path, dst: Path, extra: list[tuple[str, int, object]], drop=lambda message: False,
               storage: str = "mcap") -> None:
    """Copy a bag, leaving out messages for which drop(message) is true and adding (topic, receive ns, msg)."""
    with bags.BagReader(src) as reader, bags.BagWriter(dst, storage=storage) as writer:
        messages = reader.messages(list(reader.topics))
        copied = [(m.receive_ns, m.topic, m.msgtype, m.raw) for m in messages if not drop(m)]
        added = [(t, topic, msg.__msgtype__, bags.typestore().serialize_cdr(msg, msg.__msgtype__))
                 for topic, t, msg in extra]
        for receive_ns, topic, msgtype, raw in sorted(copied + added, key=lambda entry: entry[0]):
            writer.write_raw(topic, msgtype, receive_ns, raw)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, engine):
    """A 12-frame MCAP bag (thermal lagging 20 ms with jitter, camera info, one labelled pair twice) and its replay."""
    root = tmp_path_factory.mktemp("replayed")
    written = bags.write_pairs_bag(root / "in", small_pairs(), repeat=2, thermal_offset_s=0.02, jitter_s=0.01,
                                   seed=1, camera_info_topic=absolute_topic(CAMERA_INFO_TOPIC))
    report = replay(root / "in", root / "out", engine=engine, thermal_offset_s=0.02, contact_sheet_count=2)
    return written, root / "out", report


# ---------------------------------------------------------------------------------------------------------
# Replay: pairs, output bag, report numbers


@pytest.mark.parametrize("in_storage, out_storage", [("sqlite3", "mcap"), ("mcap", "sqlite3")])
def test_replay_makes_the_live_pairs_and_an_output_bag_stamped_like_the_inputs(tmp_path, engine, in_storage,
                                                                                out_storage):
    # No thermal offset, 10 ms jitter: the thermal frame of a pair comes sometimes before, sometimes after the RGB one.
    written = bags.write_pairs_bag(tmp_path / "in", small_pairs(), repeat=2, jitter_s=0.01, seed=2,
                                   storage=in_storage, camera_info_topic=absolute_topic(CAMERA_INFO_TOPIC))
    report = replay(tmp_path / "in", tmp_path / "out", engine=engine, storage=out_storage, contact_sheet_count=2)

    expected = list(zip(written.rgb_stamps_ns, written.thermal_stamps_ns))  # jitter 10 ms << 100 ms period
    assert any(t > r for r, t in expected) and any(t < r for r, t in expected)
    assert _live_pairs(tmp_path / "in", 0.0) == expected
    assert _frame_pairs(report) == expected
    assert report["frames_read"] == {RGB: 12, THERMAL: 12, absolute_topic(CAMERA_INFO_TOPIC): 12, TRUTH: 2}
    assert report["pairs_fused"] == report["pairs_made"] == 12
    assert report["unmatched"] == {RGB: 0, THERMAL: 0} and report["skipped"] == {}
    assert report["read_error"] is None
    for name in ["report.json", "report.md", *PLOTS]:
        assert (tmp_path / "out" / name).is_file(), name
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report

    out = tmp_path / "out" / "bag"
    assert f"storage_identifier: {out_storage}" in (out / "metadata.yaml").read_text()
    assert "version: 9" in (out / "metadata.yaml").read_text()
    got = read_topics(out, [FUSED, LABELS, OVERLAY, RESULT, INFO, absolute_topic(FUSED_CAMERA_INFO_TOPIC), RGB, THERMAL])
    rgb_receive = [stamp + DELAY_NS for stamp in written.rgb_stamps_ns]
    pair_complete = [max(rgb, thermal) + DELAY_NS for rgb, thermal in expected]  # when the later frame came
    for topic in (FUSED, LABELS, OVERLAY, RESULT, absolute_topic(FUSED_CAMERA_INFO_TOPIC)):
        assert [stamp_ns(m.header) for _, m in got[topic]] == written.rgb_stamps_ns, topic
        assert [t for t, _ in got[topic]] == pair_complete, topic
    for (_, result), (_, fused), (rgb_stamp, thermal_stamp) in zip(got[RESULT], got[FUSED], expected):
        assert (time_ns(result.rgb_stamp), time_ns(result.thermal_stamp)) == (rgb_stamp, thermal_stamp)
        assert np.array_equal(image_to_numpy(result.fused), image_to_numpy(fused))
        assert result.fused.encoding == "rgb8" and result.labels.encoding == "mono8"
        assert result.inference_ms > 0 and result.confidence.width == 0
    assert [t for t, _ in got[RGB]] == rgb_receive  # inputs copied
    (_, info), = got[INFO]
    assert list(info.class_names) == list(engine.class_names) and info.ignore_id == 255
    assert np.array_equal(np.asarray(info.palette).reshape(-1, 3), engine.palette)


def test_report_numbers_equal_metrics_on_the_output_images(replayed, engine):
    written, out, report = replayed
    got = read_topics(out / "bag", [FUSED, LABELS, RGB, THERMAL, TRUTH, RESULT])
    rgb_by_stamp = {stamp_ns(m.header): m for _, m in got[RGB]}
    thermal_by_stamp = {stamp_ns(m.header): m for _, m in got[THERMAL]}
    per_frame = report["fusion"]["per_frame"]
    assert len(per_frame) == len(got[FUSED]) == 12
    for index, (entry, (_, fused), (rgb_stamp, thermal_stamp)) in enumerate(
            zip(per_frame, got[FUSED], _frame_pairs(report))):
        rgb = image_to_numpy(rgb_by_stamp[rgb_stamp])
        thermal = image_to_numpy(thermal_by_stamp[thermal_stamp])
        expected = fusion_metrics(thermal_u8(engine, thermal), luma_u8(rgb), luma_u8(image_to_numpy(fused)))
        sec, nanosec = divmod(rgb_stamp, 10**9)
        assert entry == {"index": index, "rgb_stamp": f"{sec}.{nanosec:09d}", "metrics": expected}
    for name, mean in report["fusion"]["mean"].items():
        assert mean == pytest.approx(np.mean([entry["metrics"][name] for entry in per_frame]), rel=1e-12)

    # Segmentation: the published labels against the recorded ground truth (real MSRS labels, which the
    # stand-in network does not reproduce), through the project's confusion matrix.
    labels_by_stamp = {stamp_ns(m.header): image_to_numpy(m) for _, m in got[LABELS]}
    matrix = ConfusionMatrix(len(engine.class_names), ignore_index=255)
    for _, truth in got[TRUTH]:
        matrix.update(labels_by_stamp[stamp_ns(truth.header)], image_to_numpy(truth))
    seg = report["segmentation"]
    assert seg["num_images"] == len(got[TRUTH]) == 2
    assert seg["confusion_matrix"] == matrix.matrix.tolist()
    assert seg["mIoU"] == matrix.miou() and 0 < seg["mIoU"] < 1
    assert seg["per_class_iou"] == {name: None if math.isnan(iou) else iou
                                    for name, iou in zip(engine.class_names, matrix.per_class_iou())}

    totals = [r.preprocess_ms + r.inference_ms + r.postprocess_ms for _, r in got[RESULT]]
    latency = report["latency_ms"]
    assert latency["p50"] == pytest.approx(np.percentile(totals, 50), rel=1e-5)  # results carry float32 times
    assert latency["max"] == pytest.approx(max(totals), rel=1e-5)
    assert latency["p50"] <= latency["p95"] <= latency["max"]
    skews = [abs(t + 20_000_000 - r) / 1e6 for r, t in _frame_pairs(report)]
    assert report["skew_ms"]["max"] == pytest.approx(max(skews)) and 0 < max(skews) <= 10
    assert report["throughput"]["bag_duration_s"] == pytest.approx(1.1, abs=0.02)
    markdown = (out / "report.md").read_text()
    assert "## Fusion metrics" in markdown and "## Segmentation" in markdown and "1700000000.100000000" in markdown


def test_replay_output_scores_the_same_as_a_recording(replayed, tmp_path):
    """The output bag holds inputs and outputs like a recorded live run: --from-recording gives the same numbers."""
    _, out, report = replayed
    recorded = report_from_recording(out / "bag", tmp_path, thermal_offset_s=0.02)
    assert recorded["mode"] == "recording"
    assert _frame_pairs(recorded) == _frame_pairs(report)
    assert recorded["fusion"] == report["fusion"]
    assert recorded["segmentation"]["confusion_matrix"] == report["segmentation"]["confusion_matrix"]
    assert recorded["skew_ms"] == pytest.approx(report["skew_ms"])
    assert recorded["unmatched"] == {RGB: 0, THERMAL: 0}
    # Thermal comes first here, so outputs are recorded at the RGB receive time: end to end is the transport delay.
    assert recorded["end_to_end_ms"]["p50"] == recorded["end_to_end_ms"]["max"] == pytest.approx(DELAY_NS / 1e6)


def test_ground_truth_is_matched_by_stamp_in_any_order(tmp_path, engine):
    pairs = small_pairs()
    written = bags.write_pairs_bag(tmp_path / "cams", pairs, labels_topic=None)
    # Ground truth = the stand-in's own prediction of that pair, so a correct match scores 100 %.
    truth = [engine.infer(rgb, thermal).labels for rgb, thermal, _ in pairs]
    stamps = written.rgb_stamps_ns

    def gt(i, stamp=None):
        stamp = stamps[i] if stamp is None else stamp
        return bags.image_message(truth[i], "mono8", bags.make_header(stamp, "rgb_camera"))

    extra = [
        (TRUTH, stamps[0] + DELAY_NS, gt(3)),     # frame 3's label arrives before frame 0's
        (TRUTH, stamps[0] + DELAY_NS + 1, gt(0)),
        (TRUTH, stamps[5] + 10**9, gt(4)),        # arrives a second after its pair was fused
        (TRUTH, stamps[5] + 10**9, gt(2, stamps[2] + 1)),   # no RGB frame has this stamp
    ]
    _copy_with(tmp_path / "cams", tmp_path / "in", extra)
    report = replay(tmp_path / "in", tmp_path / "out", engine=engine, contact_sheet_count=0)
    seg = report["segmentation"]
    assert seg["num_images"] == 3 and seg["labels_read"] == 4 and seg["labels_unmatched"] == 1
    assert seg["mIoU"] == 1.0 and seg["pixel_accuracy"] == 1.0
    assert sum(map(sum, seg["confusion_matrix"])) == 3 * truth[0].size
    assert not (tmp_path / "out" / "contact_sheet.png").exists()


def test_thermal_offset_reaches_the_pairer(tmp_path, engine):
    # Thermal stamps lag by half the 100 ms frame period: 50 ms from both neighbours, not within the 50 ms slop.
    bags.write_pairs_bag(tmp_path / "in", small_pairs(), thermal_offset_s=0.05, labels_topic=None)
    report = replay(tmp_path / "in", tmp_path / "out0", engine=engine)
    assert report["pairs_fused"] == 0 and report["fusion"] == {"mean": None, "per_frame": []}
    assert report["unmatched"] == {RGB: 6, THERMAL: 6}
    assert report["latency_ms"]["p50"] is None and (tmp_path / "out0" / "report.md").is_file()
    report = replay(tmp_path / "in", tmp_path / "out1", engine=engine, thermal_offset_s=0.05, contact_sheet_count=0)
    assert report["pairs_fused"] == 6 and report["skew_ms"]["max"] == 0.0
    assert report["pairing"]["thermal_offset_s"] == 0.05


def test_unsupported_encodings_are_counted_and_skipped(tmp_path, engine):
    bags.write_pairs_bag(tmp_path / "cams", small_pairs(), labels_topic=None)
    with bags.BagReader(tmp_path / "cams") as reader:
        thermal = [(m.receive_ns, bags.deserialize(m)) for m in reader.messages([THERMAL])]
    bayer = []
    for t, msg in thermal[1:3]:  # frames 1 and 2 as raw Bayer, which the node does not decode
        msg.encoding = "bayer_rggb8"
        bayer.append((THERMAL, t, msg))
    bayer_stamps = {t for _, t, _ in bayer}
    _copy_with(tmp_path / "cams", tmp_path / "in", bayer,
               drop=lambda m: m.topic == THERMAL and m.receive_ns in bayer_stamps)
    report = replay(tmp_path / "in", tmp_path / "out", engine=engine, contact_sheet_count=0)
    assert report["skipped"] == {"unsupported_encoding": 2}
    assert report["pairs_fused"] == 4 and report["unmatched"] == {RGB: 2, THERMAL: 0}
    assert report["frames_read"][THERMAL] == 6


def test_a_looped_bag_keeps_every_pair(tmp_path, engine):
    """The same three frames twice (as `ros2 bag play --loop` plays them: same stamps, later receive times): the
    pairer resets, and each fused pair has its own per-frame entry, part of the mean, and contact-sheet row."""
    bags.write_pairs_bag(tmp_path / "once", small_pairs()[:3], rate_hz=1.0, labels_topic=None)
    with bags.BagReader(tmp_path / "once") as reader:
        again = [(m.topic, m.receive_ns + 3 * 10**9, bags.deserialize(m)) for m in reader.messages([RGB, THERMAL])]
    _copy_with(tmp_path / "once", tmp_path / "in", again)
    once = replay(tmp_path / "once", tmp_path / "out_once", engine=engine, contact_sheet_count=6)
    report = replay(tmp_path / "in", tmp_path / "out", engine=engine, contact_sheet_count=6)

    assert report["pairing"]["resets"] == 1
    per_frame = report["fusion"]["per_frame"]
    assert report["pairs_fused"] == len(per_frame) == 6
    assert [entry["index"] for entry in per_frame] == list(range(6))
    stamps_once = [entry["rgb_stamp"] for entry in once["fusion"]["per_frame"]]
    assert len(stamps_once) == 3 and [entry["rgb_stamp"] for entry in per_frame] == 2 * stamps_once
    for name, mean in report["fusion"]["mean"].items():
        assert mean == pytest.approx(np.mean([entry["metrics"][name] for entry in per_frame]), rel=1e-12)
    # Six rows are taller than the three of the bag played once.
    heights = [cv2.imread(str(tmp_path / out / "contact_sheet.png")).shape[0] for out in ("out_once", "out")]
    assert heights[1] > heights[0]


def _with_small_thermal(src: Path, dst: Path) -> np.ndarray:
    """Copy of a bag with every thermal frame shrunk to half the RGB size; returns the scaling homography from
    those thermal pixels to RGB pixels."""
    with bags.BagReader(src) as reader:
        small = []
        for message in reader.messages([THERMAL]):
            msg = bags.deserialize(message)
            half = cv2.resize(image_to_numpy(msg), (msg.width // 2, msg.height // 2), interpolation=cv2.INTER_AREA)
            small.append((THERMAL, message.receive_ns, bags.image_message(half, msg.encoding, msg.header)))
    _copy_with(src, dst, small, drop=lambda m: m.topic == THERMAL)
    return np.diag([2.0, 2.0, 1.0])


def test_homography_registers_thermal_of_another_size(tmp_path, capsys, stand_in_cli, engine):
    """As the node's registration.homography: thermal at half the RGB size is skipped without a homography and
    fused after warping with the scaling one; the recording is scored the same with the same homography."""
    bags.write_pairs_bag(tmp_path / "cams", small_pairs()[:3], labels_topic=None)
    homography = _with_small_thermal(tmp_path / "cams", tmp_path / "in")
    argv = ["replay", str(tmp_path / "in"), "--contact-sheet", "0"]
    assert cli.main([*argv, "--out", str(tmp_path / "plain")]) == 1
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert plain["skipped"] == {"size_mismatch": 3} and plain["pairs_fused"] == 0
    with pytest.raises(SizeMismatchError, match="thermal 320x240 and RGB 640x480 differ; give the homography"):
        process_pair(engine, np.zeros((480, 640, 3), np.uint8), np.zeros((240, 320), np.uint8), None)
    assert plain["registration"] == {"homography": None}

    values = [str(v) for v in homography.ravel()]
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--homography", *values]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"] == {} and report["pairs_fused"] == 3
    assert report["registration"] == {"homography": homography.ravel().tolist()}
    got = read_topics(tmp_path / "out" / "bag", [RGB, THERMAL, FUSED])
    for (_, rgb_msg), (_, thermal_msg), (_, fused_msg), entry in zip(
            got[RGB], got[THERMAL], got[FUSED], report["fusion"]["per_frame"]):
        rgb = image_to_numpy(rgb_msg)
        # The node's per-pair step (test_node.py checks the node against the same function).
        processed = process_pair(engine, rgb, image_to_numpy(thermal_msg), homography)
        thermal = warp_thermal_to_rgb(image_to_numpy(thermal_msg), homography, (rgb.shape[1], rgb.shape[0]))
        assert np.array_equal(processed.thermal, thermal)
        fused = image_to_numpy(fused_msg)
        assert np.array_equal(fused, processed.result.fused_rgb)
        assert entry["metrics"] == fusion_metrics(thermal_u8(engine, thermal), luma_u8(rgb), luma_u8(fused))
    recorded = report_from_recording(tmp_path / "out" / "bag", tmp_path / "rec", homography=homography.ravel())
    assert recorded["fusion"] == report["fusion"] and recorded["skipped"] == {}

    capsys.readouterr()
    singular = ["1", "0", "0", "0", "0", "0", "0", "0", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "bad"), "--homography", *singular]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "--homography must be finite and invertible" in errors[0]
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------------------
# Broken input and the command line


def assert_replayed_up_to_the_cut(report: dict, written, out_dir) -> None:
    """A bag cut short was replayed up to the cut: the report says where reading failed, the frames read before
    it were paired in order (the last one may lack its partner), and every fused pair is in the output bag."""
    assert report["read_error"] and "frames read per topic" in report["read_error"]
    read = report["frames_read"][RGB]
    assert 0 < read < 36 and report["pairs_fused"] >= read - 1
    expected = list(zip(written.rgb_stamps_ns, written.thermal_stamps_ns))
    assert _frame_pairs(report) == expected[: report["pairs_fused"]]
    assert len(read_topics(out_dir / "bag", [FUSED])[FUSED]) == report["pairs_fused"]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ERROR")]


def test_truncated_mcap_reports_where_reading_stopped(tmp_path, capsys, stand_in_cli):
    written = bags.write_pairs_bag(tmp_path / "in", small_pairs(), repeat=6, labels_topic=None)
    mcap = tmp_path / "in" / "in.mcap"
    os.truncate(mcap, int(mcap.stat().st_size * 0.7))

    code = cli.main(["replay", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--contact-sheet", "0"])
    stderr = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "reading failed after" in errors[0] and "broken MCAP record at byte" in errors[0]
    assert "received at 17" in errors[0]  # the last message read, by receive time (stamps from 2023)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert_replayed_up_to_the_cut(report, written, tmp_path / "out")


def test_corrupt_db3_message_is_skipped_and_named(tmp_path, capsys, stand_in_cli):
    bags.write_pairs_bag(tmp_path / "in", small_pairs(), storage="sqlite3", labels_topic=None)
    db = sqlite3.connect(tmp_path / "in" / "in.db3")
    (rgb_id,) = db.execute("SELECT id FROM topics WHERE name = ?", (RGB,)).fetchone()
    (message_id,) = db.execute("SELECT id FROM messages WHERE topic_id = ? ORDER BY timestamp LIMIT 1 OFFSET 2",
                               (rgb_id,)).fetchone()
    db.execute("UPDATE messages SET data = substr(data, 1, 60) WHERE id = ?", (message_id,))  # cut mid-message
    db.commit()
    db.close()

    code = cli.main(["replay", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--contact-sheet", "0"])
    stderr = capsys.readouterr().err
    assert code == 1 and "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and f"{RGB} frame 3" in errors[0] and "cannot decode" in errors[0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"] == {"corrupt_message": 1} and report["read_error"] is None
    assert report["pairs_fused"] == 5 and report["unmatched"] == {RGB: 0, THERMAL: 1}


def test_missing_topic_and_unreadable_bag_exit_2_with_one_line(tmp_path, capsys, stand_in_cli, engine):
    bags.write_pairs_bag(tmp_path / "in", small_pairs()[:2], labels_topic=None)
    code = cli.main(["replay", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--rgb-topic", "camera/image"])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "/camera/image" in errors[0]
    assert f"{RGB} (sensor_msgs/msg/Image, 2)" in errors[0] and THERMAL in errors[0]
    assert not (tmp_path / "out" / "bag").exists()

    bags.write_pairs_bag(tmp_path / "db", small_pairs()[:2], storage="sqlite3")
    db3 = tmp_path / "db" / "db.db3"
    os.truncate(db3, db3.stat().st_size // 2)
    code = cli.main(["replay", str(db3), "--out", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "cannot open bag" in errors[0] and "db.db3" in errors[0]
    with pytest.raises(ReplayError, match="/camera/image"):
        replay(tmp_path / "in", tmp_path / "out", engine=engine, rgb_topic="/camera/image")


def test_list_prints_topics_types_and_counts(tmp_path, capsys):
    bags.write_pairs_bag(tmp_path / "in", small_pairs(), repeat=2)
    assert cli.main(["replay", str(tmp_path / "in"), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["topic", "type", "messages"]
    assert lines[1:] == [
        f"{RGB:<26}  sensor_msgs/msg/Image  {12:>8}",
        f"{TRUTH:<26}  sensor_msgs/msg/Image  {2:>8}",
        f"{THERMAL:<26}  sensor_msgs/msg/Image  {12:>8}",
    ]


def test_cli_replays_end_to_end(tmp_path, capsys, stand_in_cli):
    bags.write_pairs_bag(tmp_path / "in", small_pairs(), storage="sqlite3")
    argv = ["replay", str(tmp_path / "in" / "in.db3"), "--out", str(tmp_path / "out"), "--rgb-topic", "rgb/image",
            "--thermal-topic", "thermal/image", "--storage", "sqlite3", "--device", "cpu", "--slop-s", "0.03",
            "--queue-size", "4", "--contact-sheet", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "mafs replay: 6 pair(s) fused and scored" in out and "mean" in out and "mIoU" in out
    assert stand_in_cli[-1].device == "cpu"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["pairing"]["slop_s"] == 0.03 and report["pairing"]["queue_size"] == 4
    assert report["topics"]["rgb"] == RGB and report["pairs_fused"] == 6
    assert report["files"] == ["report.json", "report.md", *PLOTS]
    assert (tmp_path / "out" / "bag" / "bag.db3").is_file()

    assert cli.main(argv) == 2  # the output bag exists
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite", "--no-inputs"]) == 0
    assert RGB not in bags.list_topics(tmp_path / "out" / "bag")
    assert cli.main(["replay", "--out", str(tmp_path / "x")]) == 2  # neither BAG nor --from-recording


# ---------------------------------------------------------------------------------------------------------
# Report of a recorded live run


def test_from_recording_of_a_synthetic_live_run(tmp_path, capsys, engine):
    """Inputs plus outputs as the node publishes them; the node dropped frames 2 and 7 and published one result
    whose inputs the recording missed."""
    pairs = small_pairs()
    written = bags.write_pairs_bag(tmp_path / "cams", pairs, repeat=2)
    types = bags.typestore().types
    names = [f"class{i}" for i in range(9)]
    palette = np.arange(27, dtype=np.uint8)
    first = written.rgb_stamps_ns[0]
    extra = [(INFO, first, types[INFO_TYPE](
        header=bags.make_header(first, ""), model_id="m.safetensors", model_config="mafs-lite", class_names=names,
        palette=palette, ignore_id=255))]
    dropped = {2, 7}
    expected = {}
    for i, (rgb_stamp, thermal_stamp) in enumerate(zip(written.rgb_stamps_ns, written.thermal_stamps_ns)):
        if i in dropped:
            continue
        rgb, thermal, label = pairs[i % 6]
        fused = np.roll(rgb, i + 3, axis=1)  # any image: the report must score exactly what was recorded
        labels = label if label is not None else np.full(thermal.shape, i % 9, np.uint8)
        header = bags.make_header(rgb_stamp, "rgb_camera")
        fused_msg = bags.image_message(fused, "rgb8", header)
        labels_msg = bags.image_message(labels, "mono8", header)
        result = types[RESULT_TYPE](
            header=header, fused=fused_msg, labels=labels_msg, confidence=bags.empty_image(header),
            rgb_stamp=header.stamp, thermal_stamp=bags.make_header(thermal_stamp, "").stamp,
            preprocess_ms=1.0, inference_ms=10.0 + i, postprocess_ms=2.0, missing_input="")
        receive = rgb_stamp + 50_000_000 + i * 1_000_000
        extra += [(FUSED, receive, fused_msg), (LABELS, receive, labels_msg), (RESULT, receive, result)]
        expected[rgb_stamp] = (thermal_stamp, fusion_metrics(thermal, luma_u8(rgb), luma_u8(fused)), i)
    orphan = bags.make_header(first - 10**9, "rgb_camera")  # inputs from before the recording started
    extra.append((RESULT, first, types[RESULT_TYPE](
        header=orphan, fused=bags.image_message(pairs[0][0], "rgb8", orphan),
        labels=bags.image_message(pairs[0][1], "mono8", orphan), confidence=bags.empty_image(orphan),
        rgb_stamp=orphan.stamp, thermal_stamp=orphan.stamp, preprocess_ms=1.0, inference_ms=1.0,
        postprocess_ms=1.0, missing_input="")))
    _copy_with(tmp_path / "cams", tmp_path / "rec", extra)

    code = cli.main(["replay", "--from-recording", str(tmp_path / "rec"), "--out", str(tmp_path / "out")])
    assert code == 1  # the orphan result is skipped
    assert "Traceback" not in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["mode"] == "recording" and report["output_bag"] is None
    assert report["pairs_made"] == 11 and report["pairs_fused"] == 10
    assert report["skipped"] == {"input_not_recorded": 1}
    assert report["unmatched"] == {RGB: 2, THERMAL: 2}
    assert _frame_pairs(report) == [(r, t) for r, (t, _, _) in expected.items()]
    per_frame = [entry["metrics"] for entry in report["fusion"]["per_frame"]]
    assert per_frame == [metrics for _, metrics, _ in expected.values()]
    indices = [i for _, _, i in expected.values()]
    assert report["latency_ms"]["p50"] == pytest.approx(np.percentile([13.0 + i for i in indices], 50))
    assert report["latency_ms"]["stages"]["preprocess_ms"]["max"] == 1.0
    assert report["end_to_end_ms"]["max"] == pytest.approx(50.0 + max(indices))
    assert report["end_to_end_ms"]["p50"] == pytest.approx(np.percentile([50.0 + i for i in indices], 50))
    seg = report["segmentation"]
    assert list(seg["per_class_iou"]) == names  # class names from the recorded segmentation/info
    assert seg["labels_read"] == 2 and seg["labels_unmatched"] == 1 and seg["num_images"] == 1  # frame 7 dropped
    assert seg["mIoU"] == 1.0
    for name in ["report.md", *PLOTS]:
        assert (tmp_path / "out" / name).is_file(), name
