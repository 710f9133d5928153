"""ROS time stamps as integer nanoseconds (pure Python: works on rclpy and rosbags messages alike).

A builtin_interfaces/Time has `sec` and `nanosec`; everything in mafs_ros that compares or stores stamps uses
integer nanoseconds, which are exact where float seconds are not.
"""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def time_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time in integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_ns(header: Any) -> int:
    """A std_msgs/Header's stamp in integer nanoseconds."""
    return time_ns(header.stamp)


def split_ns(ns: int) -> tuple[int, int]:
    """Integer nanoseconds as the (sec, nanosec) fields of a builtin_interfaces/Time."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec


def set_stamp(header: Any, ns: int) -> None:
    """Set a header's stamp (its `sec` and `nanosec` fields) to `ns` nanoseconds."""
    header.stamp.sec, header.stamp.nanosec = split_ns(ns)


def stamp_text(ns: int) -> str:
    """A stamp in nanoseconds as "sec.nanosec" (exact, for logs and reports)."""
    sec, nanosec = split_ns(ns)
    return f"{sec}.{nanosec:09d}"
