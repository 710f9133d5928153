"""`mafs demo` end to end on CPU: sample bag -> real node subprocess over DDS -> recording -> report + PNGs."""

from __future__ import annotations

import json

import pytest
from ros_harness import DOMAIN_ID

from mafs_ros import bags
from mafs_ros.cli import main


@pytest.fixture
def isolated_domain(monkeypatch):
    # The demo's player and its node subprocess both read ROS_DOMAIN_ID: keep them off other tests' traffic.
    monkeypatch.setenv("ROS_DOMAIN_ID", str(DOMAIN_ID + 1))


def test_demo_runs_the_real_node_and_writes_a_consistent_report(tmp_path, isolated_domain, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--rate-hz", "2", "--max-pairs", "3"]) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["frames_read"][bags.RGB_TOPIC] == 3
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
        rgb_stamps = {bags.stamp_ns(bags.deserialize(m).header) for m in reader.messages([bags.RGB_TOPIC])}
        result_stamps = [bags.stamp_ns(bags.deserialize(m).header) for m in reader.messages([bags.RESULT_TOPIC])]
    assert topics[bags.RESULT_TOPIC].count == fused and topics[bags.INFO_TOPIC].count == 1
    assert set(result_stamps) <= rgb_stamps  # outputs carry the RGB input's stamp
    for name in ("report.md", "node.log"):
        assert (out / name).is_file()
    printed = capsys.readouterr().out
    assert "pairs fused:" in printed and "mean fusion metrics:" in printed and "latency:" in printed
