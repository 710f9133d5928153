"""Reliability and safety under load, faults and bad input: fuzzed images over real DDS, a soak, a vanishing
publisher, sim time jumping back, SIGTERM during inference, DataLoader workers and SIGTERM, untrusted checkpoints.

Bags cut short or corrupted are in test_reliability_replay.py. The 10-minute soak is `scripts/soak.py`; the 60 s
one here runs the same code (`run_soak`), and the frame accounting checks use its `accounting` and `balanced`.
"""

from __future__ import annotations

import array
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from mafs_ros.msg import FusedSegmentation, SegmentationInfo
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from ros_harness import DOMAIN_ID, RosHarness, image_msg
from script_modules import load_script
from sensor_msgs.msg import Image
from stand_in_net import KnownNet

from mafs_ros.engine import MafsEngine
from mafs_ros.ros.diagnostics import PAIR_REJECTIONS
from mafs_ros.ros.node import MafsNode

soak = load_script("soak")
MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture
def one_torch_thread():
    # Two torch threads on a 2-core machine that runs anything else spin against each other (~30x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ros():
    harness = RosHarness()
    harness.subscribe(DiagnosticArray, "/diagnostics")
    harness.subscribe(SegmentationInfo, "segmentation/info", latched=True)
    yield harness
    harness.close()


def start_node(ros: RosHarness, engine, **parameters) -> MafsNode:
    overrides = [Parameter(name, value=value) for name, value in parameters.items()]
    node = MafsNode(engine=engine, context=ros.context, parameter_overrides=overrides)
    ros.add_node(node)
    ros.wait_for_subscribers(["rgb/image", "thermal/image"])
    return node


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def digest(data) -> bytes:
    return hashlib.sha1(memoryview(data).cast("B")).digest()


class FlakyEngine:
    """A MafsEngine whose every `fail_every`-th inference raises like a GPU out of memory."""

    def __init__(self, engine: MafsEngine, fail_every: int) -> None:
        self._engine, self._fail_every = engine, fail_every
        self.calls = self.failures = 0

    def __getattr__(self, name: str):  # device, config, class names, ... of the real engine
        return getattr(self._engine, name)

    def infer(self, *args, **kwargs):
        self.calls += 1
        if self.calls % self._fail_every == 0:
            self.failures += 1
            raise RuntimeError("CUDA out of memory (simulated)")
        return self._engine.infer(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Fuzzing the message path


def wire_image(pixels: np.ndarray, encoding: str, stamp: int, *, big_endian: bool = False, pad: int = 0,
               extra: int = 0) -> Image:
    """An Image as a driver may send it: `pixels` in either byte order, `pad` bytes after each row and `extra`
    bytes after the last one (built here, not with numpy_to_image, so the node's decoder is checked)."""
    height, width = pixels.shape[:2]
    wire = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder(">" if big_endian else "<"))
    wire = wire.reshape(height, -1).view(np.uint8)
    rows = np.full((height, wire.shape[1] + pad), 0xAB, np.uint8)
    rows[:, : wire.shape[1]] = wire
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(big_endian), step=rows.shape[1])
    msg.data = array.array("B", rows.tobytes() + b"\xcd" * extra)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.header.frame_id = "fuzz"
    return msg


class Fuzzer:
    """Seeded generator of valid and malformed RGB/thermal messages, with the outcome each one must have."""

    SIZE = (64, 80)
    RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
    THERMAL_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1", "32FC1")
    WRONG_ENCODINGS = {"rgb": ("yuv422", "bayer_rggb8", "rgb16", "mono16", "32FC1", "", "RGB8"),
                       "thermal": ("rgb8", "bgra8", "yuv422", "16SC1", "64FC1", "", "mono 8")}

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def rgb(self, stamp: int, size: tuple[int, int] | None = None) -> tuple[Image, np.ndarray]:
        """A valid RGB message in a random encoding and layout, and the RGB image the node must decode."""
        rgb = self.rng.integers(0, 256, (*(size or self.SIZE), 3), dtype=np.uint8)
        encoding = self.rng.choice(self.RGB_ENCODINGS)
        alpha = self.rng.integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)
        pixels = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.concatenate([rgb, alpha], axis=2),
                  "bgra8": np.concatenate([rgb[..., ::-1], alpha], axis=2), "mono8": rgb[..., 0]}[encoding]
        if encoding == "mono8":
            rgb = np.repeat(rgb[..., :1], 3, axis=2)
        return self._layout(pixels, encoding, stamp), rgb

    def thermal(self, stamp: int, size: tuple[int, int] | None = None) -> tuple[Image, np.ndarray, bool]:
        """A valid thermal message (either byte order; 32FC1 maybe with NaN/inf pixels), the thermal image the node
        must fuse (NaN/inf replaced by the finite minimum), and whether pixels were replaced."""
        shape = size or self.SIZE
        encoding = self.rng.choice(self.THERMAL_ENCODINGS)
        if encoding in ("mono8", "8UC1"):
            pixels = self.rng.integers(0, 256, shape, dtype=np.uint8)
        elif encoding in ("mono16", "16UC1"):
            pixels = self.rng.integers(0, 65536, shape, dtype=np.uint16)
        else:
            pixels = self.rng.uniform(-20.0, 60.0, shape).astype(np.float32)
        expected, repaired = pixels, False
        if encoding == "32FC1" and self.rng.random() < 0.5:
            pixels = pixels.copy()
            dead = self.rng.random(shape) < 0.05
            pixels[dead] = self.rng.choice([np.nan, np.inf, -np.inf], size=int(dead.sum()))
            expected, repaired = np.where(dead, pixels[~dead].min(), pixels), bool(dead.any())
        return self._layout(pixels, encoding, stamp), expected, repaired

    def _layout(self, pixels: np.ndarray, encoding: str, stamp: int) -> Image:
        wide = pixels.dtype.itemsize > 1
        return wire_image(pixels, encoding, stamp, big_endian=wide and self.rng.random() < 0.5,
                          pad=int(self.rng.choice([0, 0, 3, 64])), extra=int(self.rng.choice([0, 0, 1, 4096])))

    def malformed(self, stream: str, stamp: int) -> tuple[Image, str]:
        """A message the node must refuse, and the reason it must count."""
        reasons = ["unsupported_encoding", "empty_image", "too_large", "step_too_small", "data_too_short"]
        reason = self.rng.choice(reasons + (["non_finite"] if stream == "thermal" else []))
        if reason == "non_finite":
            pixels = np.full(self.SIZE, self.rng.choice([np.nan, np.inf, -np.inf]), np.float32)
            return wire_image(pixels, "32FC1", stamp, big_endian=bool(self.rng.random() < 0.5)), reason
        msg = self.rgb(stamp)[0] if stream == "rgb" else self.thermal(stamp)[0]
        if reason == "unsupported_encoding":
            msg.encoding = str(self.rng.choice(self.WRONG_ENCODINGS[stream]))
        elif reason == "empty_image":
            if self.rng.random() < 0.5:
                msg.height = 0
            else:
                msg.width = 0
        elif reason == "too_large":
            msg.height, msg.width = int(self.rng.integers(8193, 100_000)), int(self.rng.integers(8193, 100_000))
        elif reason == "step_too_small":
            msg.step = int(self.rng.integers(0, msg.width))  # smaller than any row of >= 1 byte per pixel
        else:
            msg.data = msg.data[: int(self.rng.integers(0, msg.step * msg.height))]
        return msg, reason


def test_fuzzed_messages_are_counted_and_valid_pairs_keep_fusing(ros, one_torch_thread):
    """2000+ messages, a third malformed, through reliable DDS: the node stays up, counts every refused frame with
    its reason, fuses the valid pairs in between exactly (decoded like the inputs), never publishes NaN, and
    every frame received is accounted for; memory stays flat."""
    engine = FlakyEngine(MafsEngine(model=KnownNet(), device="cpu", thermal_normalization="minmax"), fail_every=40)
    reference = MafsEngine(model=KnownNet(), device="cpu", thermal_normalization="minmax")
    # Reliable both ways, so that "every frame sent is received and counted" is exact (the harness keeps these).
    pubs = {"rgb": ros.publisher(Image, "rgb/image", reliable=True),
            "thermal": ros.publisher(Image, "thermal/image", reliable=True)}
    # sync.max_wait_s 0: a thermal frame never waits for a nearer RGB frame, so which pairs a bag loop cuts off
    # does not depend on timing.
    node = start_node(ros, engine, publish_confidence=True, diagnostics_period_s=0.5,
                      **{"qos.input.reliability": "reliable", "qos.input.depth": 50, "sync.max_wait_s": 0.0})
    expected: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # (RGB stamp, thermal stamp) -> digests fused, labels
    wrong: list[str] = []
    published_ok = 0

    def on_result(msg) -> None:
        nonlocal published_ok
        key = (stamp_ns(msg.rgb_stamp), stamp_ns(msg.thermal_stamp))
        confidence = np.frombuffer(memoryview(msg.confidence.data).cast("B"), np.float32)
        if key not in expected:
            wrong.append(f"pair {key} was never sent as a valid pair")
        elif (digest(msg.fused.data), digest(msg.labels.data)) != expected[key]:
            wrong.append(f"pair {key}: fused or labels differ from the engine's on the sent images")
        elif confidence.size != Fuzzer.SIZE[0] * Fuzzer.SIZE[1] or not np.isfinite(confidence).all():
            wrong.append(f"pair {key}: confidence missing or not finite")
        else:
            published_ok += 1

    ros.node.create_subscription(FusedSegmentation, "mafs/result", on_result, RELIABLE)
    ros.wait_for(lambda: ros.node.count_publishers("mafs/result") > 0)

    fuzz = Fuzzer(seed=7)
    rng = fuzz.rng
    sent = {"rgb": 0, "thermal": 0}
    refused: dict[str, int] = {}
    stamp_drops = {"stamp_backwards_rgb": 0, "stamp_backwards_thermal": 0, "duplicates_rgb": 0,
                   "duplicates_thermal": 0}
    pairs_made = mismatched = repaired = unpaired = resets = 0
    last = {"rgb": 0, "thermal": 0}  # the newest stamp the pairer accepted per stream
    # Whether the last pair is still waiting for a later RGB frame when a bag loop comes (it would drop both frames):
    # never with sync.max_wait_s 0 (kept so that the model says what a wait would cost).
    waiting = False

    def send(stream: str, msg: Image) -> None:
        pubs[stream].publish(msg)
        sent[stream] += 1

    def delivered() -> None:
        # A reliable KEEP_LAST writer overwrites what the reader has not taken yet: keep the backlog small.
        deadline = time.monotonic() + 10
        while (node.counters()["received_rgb"], node.counters()["received_thermal"]) != (sent["rgb"], sent["thermal"]):
            assert time.monotonic() < deadline, (sent, node.counters())
            time.sleep(0.002)

    def thermal_frame(stamp: int, size: tuple[int, int] | None = None) -> tuple[Image, np.ndarray]:
        nonlocal repaired
        msg, thermal, was_repaired = fuzz.thermal(stamp, size)
        repaired += was_repaired  # decoded, so counted, whatever pairing then makes of it
        return msg, thermal

    def valid_pair(t: int, thermal_size: tuple[int, int] | None = None) -> None:
        nonlocal pairs_made, waiting
        skew = int(rng.integers(-10, 11)) * MS
        rgb_msg, rgb = fuzz.rgb(t)
        thermal_msg, thermal = thermal_frame(t + skew, thermal_size)
        if thermal_size is None:
            result = reference.infer(rgb, thermal, want_confidence=False)
            expected[(t, t + skew)] = (digest(result.fused_rgb), digest(result.labels))
        pairs_made += 1
        last.update(rgb=t, thermal=t + skew)
        waiting = False
        for stream, msg in (("rgb", rgb_msg), ("thermal", thermal_msg))[:: rng.choice([1, -1])]:
            send(stream, msg)

    k, epoch, step = 0, 0, 0
    rss_warm = None
    start = time.monotonic()
    while sum(sent.values()) < 2000:
        step += 1
        k += 1
        t = T0 + k * 100 * MS + epoch * 1000  # distinct stamps on every timeline
        kind = rng.choice(["valid", "bad_rgb", "bad_thermal", "bad_both", "mismatch", "backwards", "duplicate",
                           "jump"], p=[0.42, 0.15, 0.15, 0.1, 0.05, 0.05, 0.05, 0.03])
        if kind == "valid":
            valid_pair(t)
        elif kind == "mismatch":  # each frame is fine, the pair is not (no homography set)
            valid_pair(t, thermal_size=(96, 128))
            mismatched += 1
        elif kind == "jump" and last["rgb"]:  # a bag loop: both streams 10 s back
            delivered()
            if waiting:
                pairs_made -= 1
                unpaired += 2
            k -= 100
            epoch += 1
            valid_pair(T0 + k * 100 * MS + epoch * 1000)
            resets += 1
            delivered()
        elif kind in ("backwards", "duplicate") and last["rgb"]:
            stream = str(rng.choice(["rgb", "thermal"]))
            stamp = last[stream] - (200 * MS if kind == "backwards" else 0)
            msg = fuzz.rgb(stamp)[0] if stream == "rgb" else thermal_frame(stamp)[0]
            send(stream, msg)
            stamp_drops[f"{'stamp_backwards' if kind == 'backwards' else 'duplicates'}_{stream}"] += 1
            unpaired += 1
        elif kind.startswith("bad"):
            for stream in ("rgb", "thermal"):
                if kind in ("bad_both", f"bad_{stream}"):
                    msg, reason = fuzz.malformed(stream, t)
                    refused[reason] = refused.get(reason, 0) + 1
                else:  # a valid frame whose partner was refused: never paired
                    msg = fuzz.rgb(t)[0] if stream == "rgb" else thermal_frame(t)[0]
                    last[stream] = t
                    unpaired += 1
                    waiting = waiting and stream != "rgb"
                send(stream, msg)
        if step % 6 == 0:
            delivered()
        if rss_warm is None and sum(sent.values()) >= 500:
            rss_warm = soak.rss_mib()
    send("rgb", fuzz.rgb(T0 + (k + 1) * 100 * MS + epoch * 1000)[0])  # settles a thermal frame still waiting
    unpaired += 1
    delivered()
    assert ros.wait_for(lambda: soak.balanced(node.counters()), 10), soak.accounting(node.counters())
    counters = node.counters()
    elapsed = time.monotonic() - start
    rss_end = soak.rss_mib()

    # Every frame the node received is accounted for, and every outcome is the one expected of what was sent.
    books = soak.accounting(counters)
    assert (counters["received_rgb"], counters["received_thermal"]) == (sent["rgb"], sent["thermal"])
    assert books["received"] == books["counted"] and books["pairs_matched"] == books["pairs_counted"], books
    frame_reasons = {r: n for r, n in counters["rejected"].items() if r not in PAIR_REJECTIONS}
    assert frame_reasons == refused
    pairing = counters["pairing"]
    assert pairing["matched"] == pairs_made
    assert {key: pairing[key] for key in stamp_drops} == stamp_drops
    assert pairing["resets"] == resets and pairing["stale_rgb"] == pairing["stale_thermal"] == 0
    assert books["unmatched"] + books["queued"] == unpaired
    assert counters["rejected"].get("inference_error", 0) == engine.failures > 0
    assert 0 < counters["rejected"].get("size_mismatch", 0) <= mismatched
    assert counters["repaired_non_finite"] == repaired > 0

    # Valid pairs in between were fused, exactly as the engine fuses the images that were sent.
    assert ros.wait_for(lambda: published_ok + len(wrong) == counters["published"], 10)
    assert wrong == []
    assert counters["published"] >= 0.6 * len(expected), (counters["published"], len(expected))

    # The node is still up and says what it refused, by reason, in /diagnostics (ERROR for the inference errors).
    assert node._workers._inference.is_alive()
    final = {f"rejected.{reason}": str(n) for reason, n in counters["rejected"].items()}

    def reported() -> bool:
        values = {kv.key: kv.value for kv in ros.messages("/diagnostics")[-1].status[0].values}
        return all(values.get(key) == value for key, value in final.items())

    assert ros.wait_for(reported, 5), ros.messages("/diagnostics")[-1]
    errors = [s.message for a in ros.messages("/diagnostics") for s in a.status if s.level == DiagnosticStatus.ERROR]
    assert errors and all("out of memory" in message for message in errors), errors
    assert rss_end <= 1.10 * rss_warm, (rss_warm, rss_end)
    print(f"\nfuzz: {sum(sent.values())} messages ({sum(refused.values())} malformed, {pairs_made} pairs, "
          f"{counters['published']} published) in {elapsed:.1f} s; RSS {rss_warm:.1f} -> {rss_end:.1f} MiB; "
          f"counters {counters}")


# ---------------------------------------------------------------------------------------------------------
# Soak (60 s here; `scripts/soak.py --duration-s 600` for the 10-minute one)


def test_soak_60_s_memory_and_latency_stay_flat_and_every_frame_is_counted():
    result = soak.run_soak(60.0)
    print("\n" + result.summary())
    assert result.problems() == []
    # 9 Hz thermal next to 30 Hz RGB: most thermal frames find a partner and most pairs are fused. Not "all":
    # on a loaded 2-core machine DDS itself drops best-effort frames before the node sees them (seen: half the
    # RGB frames, leaving 89 % of thermal frames matched), and those the node cannot count.
    assert result.books["pairs_matched"] >= 0.75 * result.counters["received_thermal"]
    assert result.counters["published"] >= 0.8 * result.books["pairs_matched"]


# ---------------------------------------------------------------------------------------------------------
# Faults: a camera that goes away, a bag loop under sim time, SIGTERM while the model runs


def uniform_pair(thermal_value: int, size: tuple[int, int] = (64, 80)) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and a constant thermal image: KnownNet labels every pixel floor(value * 9 / 255)."""
    rgb = np.random.default_rng(thermal_value).integers(0, 256, (*size, 3), dtype=np.uint8)
    return rgb, np.full(size, thermal_value, np.uint8)


def result_labels(msg) -> set[int]:
    return set(np.unique(np.frombuffer(memoryview(msg.labels.data).cast("B"), np.uint8)).tolist())


def fused_one_by_one(ros: RosHarness, count: int) -> None:
    """Wait for the `count`-th result (pairs are sent one at a time: these tests are about pairing, not drops)."""
    assert ros.wait_for(lambda: len(ros.messages("mafs/result")) == count), len(ros.messages("mafs/result"))


def test_a_camera_that_disappears_and_comes_back_is_paired_again(ros, one_torch_thread):
    ros.subscribe(FusedSegmentation, "mafs/result")
    rgb_pub = ros.publisher(Image, "rgb/image", reliable=True)
    ros.publisher(Image, "thermal/image", reliable=True)  # the harness's own, idle; reliable inputs count exactly
    node = start_node(ros, MafsEngine(model=KnownNet(), device="cpu"),
                      **{"qos.input.reliability": "reliable", "qos.input.depth": 10})
    camera = ros.node.create_publisher(Image, "thermal/image", RELIABLE)  # the thermal camera driver
    assert ros.wait_for(lambda: camera.get_subscription_count() > 0)
    rgb, thermal = uniform_pair(100)

    def frames(first: int, count: int, with_thermal: bool) -> None:
        for i in range(first, first + count):
            fused = len(ros.messages("mafs/result"))
            if with_thermal:
                camera.publish(image_msg(thermal, "mono8", T0 + i * 100 * MS - 3 * MS, "thermal"))
            rgb_pub.publish(image_msg(rgb, "rgb8", T0 + i * 100 * MS, "rgb"))
            if with_thermal:  # thermal stamped first: the RGB frame completes the pair
                fused_one_by_one(ros, fused + 1)
            else:
                time.sleep(0.02)

    frames(0, 5, with_thermal=True)
    ros.node.destroy_publisher(camera)  # the driver dies; the RGB camera goes on
    assert ros.wait_for(lambda: node.count_publishers("thermal/image") == 1)  # the harness's idle one is left
    frames(5, 20, with_thermal=False)
    camera = ros.node.create_publisher(Image, "thermal/image", RELIABLE)  # restarted
    assert ros.wait_for(lambda: camera.get_subscription_count() > 0)
    frames(25, 5, with_thermal=True)

    assert ros.wait_for(lambda: len(ros.messages("mafs/result")) == 10)
    assert ros.wait_for(lambda: soak.balanced(node.counters()))
    stamps = [(stamp_ns(r.rgb_stamp), stamp_ns(r.thermal_stamp)) for r in ros.messages("mafs/result")]
    assert stamps == [(T0 + i * 100 * MS, T0 + i * 100 * MS - 3 * MS) for i in [*range(5), *range(25, 30)]]
    pairing = node.counters()["pairing"]
    assert pairing["unmatched_rgb"] == 20 and pairing["unmatched_thermal"] == 0 and pairing["resets"] == 0


def test_sim_time_jumping_back_resets_pairing_and_never_pairs_across_the_loop(ros, one_torch_thread):
    """A bag played in a loop with --clock: stamps and /clock jump back 2 s. The pairer resets, a thermal frame of
    the old pass arriving late is dropped as stale, and every pair of the second pass is made of its own frames."""
    from rosgraph_msgs.msg import Clock

    ros.subscribe(FusedSegmentation, "mafs/result")
    rgb_pub, thermal_pub = ros.publisher(Image, "rgb/image", reliable=True), ros.publisher(
        Image, "thermal/image", reliable=True)
    clock_pub = ros.node.create_publisher(Clock, "/clock", RELIABLE)
    # Reliable and deep enough that no frame is lost before the node counts it.
    node = start_node(ros, MafsEngine(model=KnownNet(), device="cpu"), use_sim_time=True, diagnostics_period_s=0.5,
                      **{"qos.input.reliability": "reliable", "qos.input.depth": 10})
    assert ros.wait_for(lambda: clock_pub.get_subscription_count() > 0)
    passes = {"first": uniform_pair(60), "second": uniform_pair(220)}  # labels 2 and 7 tell the passes apart

    def play(name: str, frames: range, late_thermal_of: str | None = None) -> None:
        rgb, thermal = passes[name]
        for i in frames:
            fused = len(ros.messages("mafs/result"))
            stamp = T0 + i * 100 * MS
            clock_pub.publish(Clock(clock=Time(nanoseconds=stamp).to_msg()))
            received_rgb = node.counters()["received_rgb"]
            rgb_pub.publish(image_msg(rgb, "rgb8", stamp, name))
            if late_thermal_of is not None and i == frames[0]:  # the thermal camera is a frame behind at the loop
                assert ros.wait_for(lambda: node.counters()["received_rgb"] > received_rgb)  # topics have no order
                thermal_pub.publish(image_msg(passes[late_thermal_of][1], "mono8", T0 + 1905 * MS, late_thermal_of))
            thermal_pub.publish(image_msg(thermal, "mono8", stamp + 5 * MS, name))
            # thermal stamped after RGB: final once the RGB stamps show the next frame is farther, or after
            # sync.max_wait_s (right after the loop, when the pairer knows no RGB step yet)
            fused_one_by_one(ros, fused + 1)

    play("first", range(19))  # frame 19's thermal frame is "still in flight" when the bag loops
    diagnostics_before = len(ros.messages("/diagnostics"))
    play("second", range(15), late_thermal_of="first")
    assert ros.wait_for(lambda: soak.balanced(node.counters()))

    results = ros.messages("mafs/result")
    for result, (name, i) in zip(results, [("first", i) for i in range(19)] + [("second", i) for i in range(15)]):
        stamp = T0 + i * 100 * MS
        assert (result.header.frame_id, stamp_ns(result.rgb_stamp), stamp_ns(result.thermal_stamp)) == (
            name, stamp, stamp + 5 * MS)
        assert result_labels(result) == ({2} if name == "first" else {7})  # the thermal frame of the same pass
    pairing = node.counters()["pairing"]
    assert pairing["resets"] == 1 and pairing["stale_thermal"] == 1
    # The diagnostics timer (sim time) goes on after the clock jumped back.
    assert ros.wait_for(lambda: len(ros.messages("/diagnostics")) > diagnostics_before + 1, 5)


def node_env() -> dict[str, str]:
    return {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID), "PYTHONUNBUFFERED": "1"}


def test_sigterm_while_the_model_runs_exits_cleanly_within_5_s(ros):
    """The real executable, the packaged mafs-lite on CPU at 1080x1440 (seconds per pair): SIGTERM arrives while
    the forward pass runs; the node must not wait for it."""
    ros.subscribe(FusedSegmentation, "mafs/result")
    rgb_pub, thermal_pub = ros.publisher(Image, "rgb/image", reliable=True), ros.publisher(
        Image, "thermal/image", reliable=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mafs_ros.ros.node", "--ros-args", "-p", "warmup:=0", "-p", "device:=cpu",
         "-p", "qos.input.reliability:=reliable", "-p", "diagnostics_period_s:=0.2"],
        env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert ros.wait_for(lambda: len(ros.messages("segmentation/info")) == 1, 60), "the node did not come up"
        ros.wait_for_subscribers(["rgb/image", "thermal/image"], timeout_s=60)
        rgb, thermal = uniform_pair(128, size=(1080, 1440))
        thermal_pub.publish(image_msg(thermal, "mono8", T0, "thermal"))
        rgb_pub.publish(image_msg(rgb, "rgb8", T0, "rgb"))

        def values() -> dict[str, str]:
            return {kv.key: kv.value for a in ros.messages("/diagnostics")[-1:] for s in a.status for kv in s.values}

        # Paired and handed to the model, nothing published yet: the forward pass is running.
        assert ros.wait_for(lambda: values().get("pairs_matched") == "1", 60), proc.poll()
        assert values()["published"] == "0" and ros.messages("mafs/result") == []
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
        assert proc.returncode == 0 and "Traceback" not in output, output
        assert elapsed < 5.0, f"exit took {elapsed:.1f} s\n{output}"
        print(f"\nSIGTERM during inference: exit code 0 after {elapsed:.2f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ---------------------------------------------------------------------------------------------------------
# Training: DataLoader workers and the signals meant for the trainer


def test_dataloader_workers_leave_sigint_and_sigterm_to_the_trainer(tmp_path, monkeypatch, one_torch_thread):
    """Ctrl-C or `pkill -f "mafs train"` signal the DataLoader workers too. A worker must survive them so that the
    trainer's own stop works (finish the step, save last.pt, KeyboardInterrupt); a dead worker fails the run."""
    from test_train import _config, _tiles

    from mafs_ros.train.data import FusionSegDataset
    from mafs_ros.train.trainer import Trainer, train

    survived = tmp_path / "survivors"
    survived.mkdir()
    load_item = FusionSegDataset.__getitem__

    def signalled_item(self, index):
        if torch.utils.data.get_worker_info() is not None:  # in a worker: the group's signals reach it too
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            (survived / str(os.getpid())).touch()
        return load_item(self, index)

    train_step = Trainer._train_step

    def step_then_sigterm(self, *args, **kwargs):
        losses = train_step(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the main process's share of the group signal
        return losses

    monkeypatch.setattr(FusionSegDataset, "__getitem__", signalled_item)  # workers are forked: they inherit it
    monkeypatch.setattr(Trainer, "_train_step", step_then_sigterm)
    with pytest.raises(KeyboardInterrupt, match="state saved"):
        train(_config(_tiles(tmp_path / "data"), tmp_path / "run", data__workers=1))
    assert list(survived.iterdir()), "no DataLoader worker loaded an item"
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (state["stage"], state["epoch"], state["step"]) == ("stage1", 0, 1)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints are untrusted input


class _Payload:
    """Pickles as a call that creates `marker`: what a malicious .pt/.pth file runs on a plain torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path, capsys):
    from mafs_ros.checkpoint import CheckpointError, load_checkpoint
    from mafs_ros.cli import main
    from mafs_ros.model.official import OfficialCheckpointError, load_official_checkpoint

    marker = tmp_path / "pwned"
    evil = tmp_path / "official.pth"
    torch.save({"MTAN": {"encoder.weight": torch.zeros(1)}, "extra": _Payload(marker)}, evil)

    with pytest.raises(OfficialCheckpointError, match="weights-only"):
        load_official_checkpoint(evil, 9)
    assert main(["import-official", str(evil), "--classes", "9", "--out", str(tmp_path / "ours.safetensors")]) == 2
    assert "weights-only" in capsys.readouterr().err and not (tmp_path / "ours.safetensors").exists()
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_checkpoint_with_consistent_metadata_for_another_class_count_is_refused(tmp_path):
    """Metadata (config, names, palette, checksum) all say 5 classes, the weights have 9: refused, naming why."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from mafs_ros.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint

    with safe_open(str(DEFAULT_CHECKPOINT), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    config = json.loads(metadata["model_config"])
    config["num_classes"] = 5
    metadata.update(model_config=json.dumps(config), class_names=json.dumps([f"c{i}" for i in range(5)]),
                    palette=json.dumps([[i, i, i] for i in range(5)]))
    path = tmp_path / "five.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    assert load_checkpoint(path).config.num_classes == 5  # the file itself is consistent
    with pytest.raises(CheckpointError, match=r"does not match the model: .*shape mismatches: .* \(9, "):
        MafsEngine(path, device="cpu", warmup=0)
