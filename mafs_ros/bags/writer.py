"""Writing rosbag2 bags with `rosbags`: a new bag (MCAP or sqlite3, metadata version 9) from type-store
messages or raw CDR bytes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from .base import BagError
from .message_types import typestore

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
BAG_VERSION = 9  # Jazzy/Kilted metadata; rosbags writes versions 8 and 9 only


def qos_profile(*, reliable: bool = True, transient_local: bool = False, depth: int = 2) -> Qos:
    """An offered QoS profile for a written topic (`ros2 bag play` offers it again)."""
    unspecified = QosTime(0, 0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=unspecified,
        lifespan=unspecified,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=unspecified,
        avoid_ros_namespace_conventions=False,
    )


class BagWriter:
    """A new rosbag2 (metadata version 9) in MCAP (default) or sqlite3 storage; use as a context manager.

    Topics are added on their first message, with the type store's definition and `qos` (or a reliable,
    volatile depth-2 profile). The bag is closed (metadata written) also when the block raises, so whatever
    was written stays readable. Raises BagError if `path` exists.
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap") -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {tuple(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"output bag {self.path} exists already")
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] | None = None) -> None:
        """Declare a topic before its first message (only needed for a non-default QoS)."""
        if topic in self._connections:
            raise BagError(f"topic {topic} added twice")
        profiles = list(qos) if qos is not None else [qos_profile()]
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=profiles
        )
        self.counts[topic] = 0

    def write(self, topic: str, receive_ns: int, msg: Any) -> None:
        """Serialize a typestore message (type from its __msgtype__) and store it at `receive_ns`."""
        self.write_raw(topic, msg.__msgtype__, receive_ns, typestore().serialize_cdr(msg, msg.__msgtype__))

    def write_raw(self, topic: str, msgtype: str, receive_ns: int, raw: bytes | memoryview) -> None:
        """Store already serialized CDR bytes (e.g. copied from another bag) at `receive_ns`."""
        if topic not in self._connections:
            self.add_topic(topic, msgtype)
        self._writer.write(self._connections[topic], int(receive_ns), raw)
        self.counts[topic] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
