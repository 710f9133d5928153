"""How many large images reach another process over Fast DDS: a publisher and a subscriber, each its own process.

    .venv/bin/python scripts/image_delivery.py [--width 640 --height 480] [--rate-hz 10] [--frames 40]
        [--publisher default|profile|large_data] [--subscriber default|profile|large_data]

The publisher sends `--frames` rgb8 images best effort (like a camera driver) once the subscriber is matched;
the subscriber (best effort, depth 2, like the MAFS node's inputs) counts them. Each side's transport setting:
default (Fast DDS's builtin transports), profile (config/fastdds_large_images.xml), large_data
(FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA). Prints "received R of S" and exits 0. The README's delivery table and
test_transport.py use this.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ("default", "profile", "large_data")
TOPIC = "delivery/image"


def environment(setting: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process with the given transport setting (user choices in `base` removed)."""
    from mafs_ros.ros.transport import PROFILE_VARIABLES, TRANSPORT_VARIABLE, large_image_profile_path

    env = dict(os.environ if base is None else base)
    for name in (*PROFILE_VARIABLES, TRANSPORT_VARIABLE):
        env.pop(name, None)
    env["MAFS_FASTDDS_PROFILE"] = "off"  # this script decides, not mafs_ros's automatic choice
    if setting == "profile":
        env.update({name: str(large_image_profile_path()) for name in PROFILE_VARIABLES})
    elif setting == "large_data":
        env[TRANSPORT_VARIABLE] = "LARGE_DATA"
    elif setting != "default":
        raise ValueError(f"transport setting must be one of {SETTINGS}, got {setting!r}")
    return env


def measure(width: int, height: int, rate_hz: float, frames: int, publisher: str, subscriber: str,
            timeout_s: float = 60.0) -> tuple[int, int]:
    """Runs both processes; returns (received, sent)."""
    script = [sys.executable, str(Path(__file__).resolve())]
    stop_file = Path(tempfile.mkdtemp(prefix="image_delivery_")) / "stop"
    sub = subprocess.Popen([*script, "--role", "subscribe", "--stop-file", str(stop_file)],
                           env=environment(subscriber), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pub = subprocess.run(
            [*script, "--role", "publish", "--width", str(width), "--height", str(height), "--rate-hz", str(rate_hz),
             "--frames", str(frames)],
            env=environment(publisher), capture_output=True, text=True, timeout=timeout_s,
        )
        if pub.returncode != 0:
            raise RuntimeError(f"publisher failed ({pub.returncode}):\n{pub.stdout}{pub.stderr}")
        sent = int(pub.stdout.split("sent")[-1].split()[0])
        time.sleep(1.0)  # the last frames may still be in flight
        stop_file.touch()
        output, _ = sub.communicate(timeout=20)
    finally:
        if sub.poll() is None:
            sub.kill()
    if "received" not in output:
        raise RuntimeError(f"subscriber printed no count:\n{output}")
    return int(output.split("received")[-1].split()[0]), sent


def _publish(width: int, height: int, rate_hz: float, frames: int) -> int:
    import numpy as np
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("delivery_publisher")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.BEST_EFFORT)
    pub = node.create_publisher(Image, TOPIC, qos)
    deadline = time.monotonic() + 30.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if pub.get_subscription_count() == 0:
        print("no subscriber matched within 30 s", file=sys.stderr)
        return 1
    time.sleep(0.5)  # discovery of the subscriber's data locators completes after the match
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width)
    msg.data = np.random.default_rng(0).integers(0, 256, height * width * 3, np.uint8).tobytes()
    start = time.monotonic()
    for i in range(frames):
        time.sleep(max(0.0, start + i / rate_hz - time.monotonic()))
        msg.header.frame_id = str(i)
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
    print(f"sent {frames}", flush=True)
    time.sleep(0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _subscribe(stop_file: Path) -> int:
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("delivery_subscriber")
    seen: set[str] = set()
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(Image, TOPIC, lambda msg: seen.add(msg.header.frame_id), qos)
    # A stop file rather than a signal: a signal can land while Fast DDS is mid-callback and its teardown then
    # never returns, which left the measuring process waiting on a subscriber that had its count.
    while not stop_file.exists():
        rclpy.spin_once(node, timeout_sec=0.1)
    print(f"received {len(seen)}", flush=True)
    os._exit(0)  # the count is out; nothing to clean up that the OS does not


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("measure", "publish", "subscribe"), default="measure",
                        help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--rate-hz", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--publisher", choices=SETTINGS, default="profile")
    parser.add_argument("--subscriber", choices=SETTINGS, default="default")
    parser.add_argument("--stop-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "publish":
        return _publish(args.width, args.height, args.rate_hz, args.frames)
    if args.role == "subscribe":
        return _subscribe(args.stop_file)
    received, sent = measure(args.width, args.height, args.rate_hz, args.frames, args.publisher, args.subscriber)
    print(f"{args.width}x{args.height} rgb8 at {args.rate_hz:g} Hz, publisher {args.publisher}, subscriber "
          f"{args.subscriber}: received {received} of {sent} ({100 * received / sent:.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
