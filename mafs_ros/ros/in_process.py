"""Nodes run inside this process: an rclpy context of its own, a helper node, and an executor spinning them in a
thread, as mafs_node spins (a SingleThreadedExecutor; see node.py). `mafs bench` (node records), `mafs demo`
(player and recorder), scripts/soak.py and the node tests all run their nodes in one of these.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class InProcessRos:
    """A context (`domain_id`: a DDS domain of its own, None: ROS_DOMAIN_ID as usual), the helper node `node`
    named `node_name` (publishers and subscriptions of the caller), and the executor thread. Nodes added with
    `add_node` are spun too and destroyed by `close` (also on leaving a `with` block)."""

    def __init__(self, node_name: str, domain_id: int | None = None) -> None:
        self.context = Context()
        rclpy.init(context=self.context, **({} if domain_id is None else {"domain_id": domain_id}))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.node = Node(node_name, context=self.context)
        self._nodes: list[Node] = []
        self.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - ends when the context is shut down
            pass

    def add_node(self, node: Node) -> None:
        self.executor.add_node(node)
        self._nodes.append(node)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
        """Whether `condition()` became true within `timeout_s` (polled every `poll_s`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(poll_s)
        return condition()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        # Destroyed explicitly: a participant left to the garbage collector can linger in discovery and be
        # matched by the next run's publishers.
        for node in reversed(self._nodes):
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5.0)

    def __enter__(self) -> InProcessRos:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
