"""Real rclpy + DDS plumbing for node tests: an isolated context, an executor thread, a publisher/recorder node.

The soak run and the node's frame accounting are in scripts/soak.py (test_reliability.py runs the soak)."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from mafs_ros.ros.in_process import InProcessRos
from mafs_ros.stamps import set_stamp
from mafs_ros.stream.conversions import numpy_to_image

PAIR_SIZE = (128, 160)  # (H, W): the sample pairs the node tests send (`mafs_ros.io.samples.sample_pairs`)
# One DDS domain per test process, away from the default 0, so parallel runs and other ROS users do not mix.
DOMAIN_ID = 100 + os.getpid() % 100


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    msg = numpy_to_image(array, encoding)
    set_stamp(msg.header, stamp_ns)
    msg.header.frame_id = frame_id
    return msg


class RosHarness(InProcessRos):
    """The package's in-process runner (`mafs_ros.ros.in_process`) in the tests' DDS domain, whose helper node
    publishes inputs and records every message it subscribes to (`received[topic]`)."""

    def __init__(self) -> None:
        super().__init__("mafs_test_harness", DOMAIN_ID)
        self.received: dict[str, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        self._publishers: dict[str, Any] = {}
        self._subscribed: list[str] = []

    def publisher(self, msg_type: type, topic: str, reliable: bool = False) -> Any:
        if topic not in self._publishers:
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=10,
                reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            )
            self._publishers[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self._publishers[topic]

    def subscribe(self, msg_type: type, topic: str, latched: bool = False) -> None:
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        )

        def record(msg: Any, topic: str = topic) -> None:
            with self._lock:
                self.received[topic].append(msg)

        self.node.create_subscription(msg_type, topic, record, qos)
        self._subscribed.append(topic)

    def messages(self, topic: str) -> list[Any]:
        with self._lock:
            return list(self.received[topic])

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
        return super().wait_for(condition, timeout_s)

    def wait_for_subscribers(self, topics: list[str], timeout_s: float = 10.0) -> None:
        ok = self.wait_for(
            lambda: all(self.publisher(Image, t).get_subscription_count() > 0 for t in topics), timeout_s
        )
        assert ok, f"no subscriber appeared on {topics} within {timeout_s} s"
        # The node's output publishers are discovered about as late as its subscriptions; a volatile reader
        # that is not matched yet would miss the first results.
        outputs = [t for t in self._subscribed if t != "/diagnostics"]
        self.wait_for(lambda: all(self.node.count_publishers(t) > 0 for t in outputs), timeout_s)
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------------------
# Diagnostics


def diagnostics_values(ros: RosHarness) -> tuple[int | None, str, dict[str, str]]:
    """Level, message and values of the newest /diagnostics status (None, "", {} before the first one)."""
    if not ros.messages("/diagnostics"):
        return None, "", {}
    status = ros.messages("/diagnostics")[-1].status[0]
    return status.level, status.message, {kv.key: kv.value for kv in status.values}
