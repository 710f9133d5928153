"""`mafs demo` end to end on CPU: sample bag -> real node subprocess over DDS -> recording -> report + PNGs."""

from __future__ import annotations

import json

import pytest
from ros_harness import DOMAIN_ID

from mafs_ros import bags
from mafs_ros.cli import main
from mafs_ros.constants import INFO_TOPIC, RESULT_TOPIC, RGB_TOPIC, THERMAL_TOPIC, absolute_topic, compressed_topic
from mafs_ros.demo import _print_summary
from mafs_ros.stamps import stamp_ns


@pytest.fixture
def isolated_domain(monkeypatch):
    # The demo's player and its node subprocess both read ROS_DOMAIN_ID: keep them off other tests' traffic.
    monkeypatch.setenv("ROS_DOMAIN_ID", str(DOMAIN_ID + 1))


@pytest.mark.parametrize("compressed", [False, True])
def test_demo_runs_the_real_node_and_writes_a_consistent_report(tmp_path, isolated_domain, capsys, compressed):
    out = tmp_path / "demo_out"
    options = ["--compressed"] if compressed else []
    assert main(["demo", "--out", str(out), "--device", "cpu", "--rate-hz", "2", "--max-pairs", "3", *options]) == 0

    report = json.loads((out / "report.json").read_text())
    rgb_topic = absolute_topic(compressed_topic(RGB_TOPIC) if compressed else RGB_TOPIC)
    assert report["topics"]["rgb"] == rgb_topic and report["frames_read"][rgb_topic] == 3
    fused = report["pairs_fused"]
    assert 1 <= fused <= 3
    assert len(report["fusion"]["per_frame"]) == fused
    assert set(report["fusion"]["mean"]) == {"EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"}
    # every fused pair was published once as an image, an overlay PNG exists only when subscribed (the recorder is)
    assert len(list((out / "fused").glob("*.png"))) == fused
    assert len(list((out / "overlay").glob("*.png"))) == fused
    assert report["latency_ms"]["p50"] > 0 and report["end_to_end_ms"]["p50"] >= report["latency_ms"]["p50"]

    with bags.BagReader(out / "recording") as reader:
        topics = reader.topics
        rgb_stamps = {stamp_ns(bags.deserialize(m).header) for m in reader.messages([rgb_topic])}
        result_stamps = [stamp_ns(bags.deserialize(m).header) for m in reader.messages([absolute_topic(RESULT_TOPIC)])]
    assert topics[absolute_topic(RESULT_TOPIC)].count == fused and topics[absolute_topic(INFO_TOPIC)].count == 1
    assert set(result_stamps) <= rgb_stamps  # outputs carry the RGB input's stamp
    for name in ("report.md", "node.log"):
        assert (out / name).is_file()
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in (out / "node.log").read_text()  # Fast DDS 3's deprecation WARN
    printed = capsys.readouterr().out
    assert "pairs fused:" in printed and "mean fusion metrics:" in printed and "latency:" in printed


def test_summary_of_a_run_without_scored_pairs(tmp_path, capsys):
    """Results came, but none could be scored (fusion mean null, no plots, no contact sheet): no crash, and the
    summary names only the files written."""
    report = {
        "fusion": {"mean": None, "per_frame": []}, "latency_ms": {"p50": None, "p95": None},
        "end_to_end_ms": {"p50": None}, "frames_read": {absolute_topic(RGB_TOPIC): 3}, "pairs_fused": 0,
        "unmatched": {absolute_topic(RGB_TOPIC): 1, absolute_topic(THERMAL_TOPIC): 1}, "files": ["report.json", "report.md"],
    }
    _print_summary(report, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (f"wrote {tmp_path}/report.md, report.json, fused/ and overlay/ PNGs, recording/ (rosbag2: "
                        "inputs + node outputs), node.log")
    assert lines[2:] == [
        "pairs fused: 0 of 3 RGB frames (dropped while the model was busy or unmatched: 2 frames)",
        "mean fusion metrics: n/a (no pair scored)",
        "latency: processing (preprocess + inference + postprocess) p50 n/a, p95 n/a; end to end p50 n/a",
    ]


def test_summary_names_the_plots_and_contact_sheet_when_written(tmp_path, capsys):
    report = {
        "fusion": {"mean": {"EN": 6.5, "SSIM": 0.71}}, "latency_ms": {"p50": 410.2, "p95": 480.9},
        "end_to_end_ms": {"p50": 530.0}, "frames_read": {absolute_topic(RGB_TOPIC): 3}, "pairs_fused": 2,
        "unmatched": {absolute_topic(RGB_TOPIC): 1, absolute_topic(THERMAL_TOPIC): 0},
        "files": ["report.json", "report.md", "metrics_over_time.png", "latency_hist.png", "skew_hist.png",
                  "contact_sheet.png"],
    }
    _print_summary(report, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"wrote {tmp_path}/report.md, report.json, plots, contact sheet, fused/")
    assert lines[3] == "mean fusion metrics: EN 6.500  SSIM 0.710"
    assert lines[4] == ("latency: processing (preprocess + inference + postprocess) p50 410 ms, p95 481 ms; "
                        "end to end p50 530 ms")
