"""Reading rosbag2 bags with `rosbags` (pure Python: no ROS installation, no torch).

Rosbag2 directories (metadata versions 4 to 9: Foxy to Kilted) and bare .mcap / .db3 files, sqlite3 and MCAP
storage. Messages come in receive-time order. An MCAP file without a valid summary or a sqlite3 file cut short
(a recorder that was killed, a copy that stopped) is read front to back up to its last complete message
(`recovery`) instead of being refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos
from rosbags.rosbag2 import Reader

from ..constants import compressed_topic
from ..stamps import stamp_text
from .base import BagError, BagMessage, BagReadError, TopicInfo, describe_error
from .message_types import typestore
from .recovery import McapScan, Sqlite3Scan

logger = logging.getLogger(__name__)


class BagReader:
    """An open rosbag2 for reading: a directory with metadata.yaml, or a bare .mcap / .db3 file.

    Use as a context manager. `topics` maps topic -> TopicInfo. Raises BagError if the bag cannot be opened.
    A single MCAP or sqlite3 file that rosbags refuses (an MCAP summary or footer missing or broken, a sqlite3
    file shorter than its header says: a truncated recording) is opened in recovery mode (`recovered` is True):
    complete messages are read front to back, in storage order, until the first broken one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        self.recovered = False
        self._reader: Reader | None = None
        self._scan: McapScan | Sqlite3Scan | None = None
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # rosbags raises ReaderError, but also KeyError/OSError/apsw errors for bad files
            self._reader = None
            refused = f"cannot open bag {self.path}: {describe_error(exc)}"
            if (mcap_file := _single_file(self.path, ".mcap")) is not None:
                storage_file, self._scan = mcap_file, McapScan(mcap_file)
            elif (db3_file := _single_file(self.path, ".db3")) is not None:
                storage_file, self._scan = db3_file, Sqlite3Scan(db3_file, refused)
            else:
                raise BagError(refused) from None
            self.recovered = True
            logger.warning("%s: %s; reading its complete records front to back (%d message(s))",
                           storage_file, describe_error(exc), sum(info.count for info in self._scan.topics.values()))

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Topic -> (message type, message count), sorted by topic."""
        if self._scan is not None:
            return dict(sorted(self._scan.topics.items()))
        assert self._reader is not None
        topics = sorted(self._reader.topics.items())
        return {topic: TopicInfo(info.msgtype or "?", info.msgcount) for topic, info in topics}

    def offered_qos(self, topic: str) -> list[Qos]:
        """The QoS profiles the topic's publishers offered while it was recorded (empty if unknown)."""
        if self._reader is None:
            return []
        return [qos for c in self._reader.connections if c.topic == topic
                for qos in getattr(c.ext, "offered_qos_profiles", [])]

    def image_topic(self, topic: str) -> str:
        """`topic` if the bag has it, else image_transport's `<topic>/compressed` if the bag has that (robots
        record cameras compressed), else `topic` (for `require_topics` to name)."""
        if topic not in self.topics and compressed_topic(topic) in self.topics:
            return compressed_topic(topic)
        return topic

    def require_topics(self, topics: Sequence[str]) -> None:
        """Raise BagError naming the bag's topics if any of `topics` is not in the bag."""
        missing = [topic for topic in topics if topic not in self.topics]
        if missing:
            present = ", ".join(f"{topic} ({info.msgtype}, {info.count})" for topic, info in self.topics.items())
            raise BagError(f"topic(s) {', '.join(missing)} not in bag {self.path}; it has: {present or 'no topics'}")

    def messages(self, topics: Sequence[str]) -> Iterator[BagMessage]:
        """The messages of `topics` in receive-time order. Raises BagReadError where the storage cannot be read,
        naming the last message read (count, topic, receive time) so the break can be found in the bag."""
        count, last = 0, None
        try:
            if self._scan is not None:
                for last in self._scan.messages(set(topics)):
                    count += 1
                    yield last
                return
            assert self._reader is not None
            connections = [c for c in self._reader.connections if c.topic in topics]
            if not connections:
                return
            for connection, receive_ns, raw in self._reader.messages(connections=connections):
                count += 1
                last = BagMessage(connection.topic, connection.msgtype, receive_ns, raw)
                yield last
        except Exception as exc:  # any storage failure (ReaderError, apsw.Error, struct.error, ...) ends the read
            where = "" if last is None else (f" (the last one on {last.topic}, received at "
                                             f"{stamp_text(last.receive_ns)})")
            raise BagReadError(f"{self.path}: reading failed after {count} message(s){where}: {describe_error(exc)}",
                               count) from None


def deserialize(message: BagMessage) -> Any:
    """The message object of a BagMessage (raises on corrupt bytes; the caller decides what to skip)."""
    return typestore().deserialize_cdr(message.raw, message.msgtype)


def list_topics(path: str | Path) -> dict[str, TopicInfo]:
    """Topic -> (message type, count) of a bag (raises BagError if it cannot be opened)."""
    with BagReader(path) as reader:
        return reader.topics


def format_topics(topics: dict[str, TopicInfo]) -> str:
    """Topics as aligned text lines under a header: topic, message type, message count."""
    rows = [("topic", "type", "messages")] + [(topic, info.msgtype, str(info.count)) for topic, info in topics.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows)


def _single_file(path: Path, suffix: str) -> Path | None:
    """The storage file of a bag that is one `suffix` file, or a directory holding exactly one; else None."""
    if path.is_file():
        return path if path.suffix == suffix else None
    files = sorted(path.glob(f"*{suffix}"))
    return files[0] if len(files) == 1 else None
