"""`mafs replay` on bags cut short or corrupted, and frames the node would refuse: a report of what was read and a
clear error, never a traceback only; pairs as the live node makes them. (test_replay.py has the truncated MCAP
file and a db3 message cut short.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from bag_helpers import small_pairs
from test_replay import _copy_with, _error_lines, _frame_pairs, assert_replayed_up_to_the_cut

import mafs_ros.cli as cli
from mafs_ros import bags
from mafs_ros.cli import engine_options
from mafs_ros.constants import FUSED_TOPIC, RGB_TOPIC, THERMAL_TOPIC, absolute_topic
from mafs_ros.stamps import stamp_ns

RGB, THERMAL, FUSED = absolute_topic(RGB_TOPIC), absolute_topic(THERMAL_TOPIC), absolute_topic(FUSED_TOPIC)


@pytest.fixture
def replay_cli(monkeypatch, engine, tmp_path, capsys):
    """Runs `mafs replay BAG --out tmp/out` with the stand-in engine; returns (exit code, stderr, report or None)."""
    monkeypatch.setattr(engine_options, "engine_from_args", lambda args: engine)

    def run(bag) -> tuple[int, str, dict | None]:
        code = cli.main(["replay", str(bag), "--out", str(tmp_path / "out"), "--contact-sheet", "0"])
        report = tmp_path / "out" / "report.json"
        return code, capsys.readouterr().err, json.loads(report.read_text()) if report.exists() else None

    return run


def test_sqlite3_bag_cut_short_is_replayed_up_to_the_cut(tmp_path, replay_cli):
    written = bags.write_pairs_bag(tmp_path / "in", small_pairs(), repeat=6, storage="sqlite3", labels_topic=None)
    db3 = tmp_path / "in" / "in.db3"
    os.truncate(db3, int(db3.stat().st_size * 0.6))  # a recorder killed mid-write, a copy that stopped

    code, stderr, report = replay_cli(tmp_path / "in")
    assert code == 1 and "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "reading failed after" in errors[0] and "broken sqlite3 page" in errors[0]
    assert "received at 17" in errors[0]  # the last message read, by receive time (stamps from 2023)
    assert_replayed_up_to_the_cut(report, written, tmp_path / "out")


def test_sqlite3_bag_cut_before_its_first_message_is_refused_with_the_reason(tmp_path, replay_cli):
    bags.write_pairs_bag(tmp_path / "in", small_pairs(), storage="sqlite3", labels_topic=None)
    os.truncate(tmp_path / "in" / "in.db3", 20_000)  # the tables, no complete message
    code, stderr, report = replay_cli(tmp_path / "in")
    assert code == 2 and "Traceback" not in stderr and report is None
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "cannot open bag" in errors[0] and "no complete message" in errors[0]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_garbage_cdr_bytes_in_one_message_are_skipped_and_named(tmp_path, replay_cli, storage):
    bags.write_pairs_bag(tmp_path / "cams", small_pairs(), labels_topic=None)
    rng = np.random.default_rng(3)
    with bags.BagReader(tmp_path / "cams") as reader, bags.BagWriter(tmp_path / "in", storage=storage) as writer:
        for i, message in enumerate(reader.messages(list(reader.topics))):
            raw = bytes(message.raw)
            if i == 5:  # thermal frame 3: random bytes after the CDR header, as a flipped storage block leaves them
                assert message.topic == THERMAL
                raw = raw[:4] + rng.bytes(len(raw) - 4)
            writer.write_raw(message.topic, message.msgtype, message.receive_ns, raw)

    code, stderr, report = replay_cli(tmp_path / "in")
    assert code == 1 and "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and f"{THERMAL} frame 3" in errors[0] and "cannot decode" in errors[0]
    assert report["skipped"] == {"corrupt_message": 1} and report["read_error"] is None
    assert report["frames_read"] == {RGB: 6, THERMAL: 6}
    assert report["pairs_fused"] == 5 and report["unmatched"] == {RGB: 1, THERMAL: 0}


def test_frames_the_node_refuses_are_never_paired(tmp_path, engine):
    """The node decodes every frame before pairing: an all-NaN thermal frame or a 16-bit image on the RGB topic is
    refused and its partner stays unmatched. The replay must make the same pairs (it used to pair them first)."""
    from mafs_ros.replay import replay

    written = bags.write_pairs_bag(tmp_path / "cams", small_pairs(), labels_topic=None)
    with bags.BagReader(tmp_path / "cams") as reader:
        frames = {(m.topic, stamp_ns(bags.deserialize(m).header)): m.receive_ns
                  for m in reader.messages([RGB, THERMAL])}
    nan_thermal, wide_rgb = written.thermal_stamps_ns[1], written.rgb_stamps_ns[4]
    shape = small_pairs()[0][1].shape
    replaced = [
        (THERMAL, frames[(THERMAL, nan_thermal)],
         bags.image_message(np.full(shape, np.nan, np.float32), "32FC1", bags.make_header(nan_thermal, "t"))),
        (RGB, frames[(RGB, wide_rgb)],
         bags.image_message(np.zeros(shape, np.uint16), "mono16", bags.make_header(wide_rgb, "c"))),
    ]
    gone = {(topic, t) for topic, t, _ in replaced}
    _copy_with(tmp_path / "cams", tmp_path / "in", replaced, drop=lambda m: (m.topic, m.receive_ns) in gone)

    report = replay(tmp_path / "in", tmp_path / "out", engine=engine, contact_sheet_count=0)
    kept = [i for i in range(6) if i not in (1, 4)]
    assert _frame_pairs(report) == [(written.rgb_stamps_ns[i], written.thermal_stamps_ns[i]) for i in kept]
    assert report["pairs_made"] == report["pairs_fused"] == 4
    assert report["skipped"] == {"non_finite": 1, "unsupported_encoding": 1}
    assert report["unmatched"] == {RGB: 1, THERMAL: 1}


def test_an_inference_failure_is_counted_and_the_replay_goes_on(tmp_path, replay_cli, engine, monkeypatch):
    bags.write_pairs_bag(tmp_path / "in", small_pairs(), labels_topic=None)
    infer, calls = engine.infer, []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return infer(*args, **kwargs)

    monkeypatch.setattr(engine, "infer", out_of_memory_once)
    code, stderr, report = replay_cli(tmp_path / "in")
    assert code == 1 and "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "out of memory" in errors[0]
    assert report["skipped"] == {"inference_error": 1} and report["pairs_made"] == 6 and report["pairs_fused"] == 5
