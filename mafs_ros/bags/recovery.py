"""Reading a storage file that rosbags refuses, front to back up to its last complete message.

A recorder that was killed leaves an MCAP file without a valid summary or footer, or a sqlite3 file shorter than
its header says; both still hold every message written before the end. These parsers read them in storage order
(= recording order) and stop at the first broken record, saying where in `error`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from rosbags.rosbag2.storage_mcap import decompress

from .base import BagError, BagMessage, TopicInfo, describe_error

_MCAP_MAGIC = b"\x89MCAP0\r\n"


class Sqlite3Scan:
    """Reads a rosbag2 sqlite3 file row by row in storage (= recording) order, for a file cut short.

    SQLite refuses a file shorter than its header's page count unless writable_schema is on; with it, the
    pages that are there can be read. The connection is read-only and immutable, so nothing is ever written.
    The scan stops at the first row on a missing or broken page; `error` says where. Raises BagError
    (`refused`: what rosbags said) if not even the topics table or the first message is readable.
    """

    def __init__(self, path: Path, refused: str) -> None:
        self.path = path
        self.error: str | None = None
        try:
            with _closing_sqlite(path) as db:
                self._topics = {row[0]: (row[1], row[2]) for row in db.execute("SELECT id, name, type FROM topics")}
        except sqlite3.Error as exc:
            raise BagError(f"{refused} (its topics table is unreadable too: {describe_error(exc)})") from None
        counts = {topic_id: 0 for topic_id in self._topics}
        for topic_id, _, _ in self._rows():
            counts[topic_id] += 1
        if self.error is not None and not any(counts.values()):
            raise BagError(f"{refused} (no complete message: {self.error})")
        self.topics = {name: TopicInfo(msgtype, counts[topic_id]) for topic_id, (name, msgtype) in self._topics.items()}

    def messages(self, topics: set[str]) -> Iterator[BagMessage]:
        """The complete messages of `topics`; raises ValueError at the first broken row."""
        for topic_id, receive_ns, data in self._rows():
            topic, msgtype = self._topics[topic_id]
            if topic in topics:
                yield BagMessage(topic, msgtype, receive_ns, data)
        if self.error is not None:
            raise ValueError(self.error)

    def _rows(self) -> Iterator[tuple[int, int, bytes]]:
        """(topic id, receive ns, data) of every readable row, in id order."""
        row_id = 0
        with _closing_sqlite(self.path) as db:
            try:
                for row_id, topic_id, receive_ns, data in db.execute(
                    "SELECT id, topic_id, timestamp, data FROM messages ORDER BY id"
                ):
                    if topic_id not in self._topics:
                        raise ValueError(f"message {row_id} on unknown topic id {topic_id}")
                    yield topic_id, receive_ns, data
            except (sqlite3.Error, ValueError) as exc:
                self.error = f"broken sqlite3 page after message id {row_id}: {describe_error(exc)}"


@contextlib.contextmanager
def _closing_sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        db.execute("PRAGMA writable_schema = ON")  # read a file shorter than its header says (see Sqlite3Scan)
        yield db
    finally:
        db.close()


class McapScan:
    """Reads an MCAP file record by record from its start, without the summary section.

    Used when the file has no valid footer or summary, as left by a recorder that was killed. The scan stops at
    the first incomplete or invalid record; `error` says where. Messages inside one chunk are yielded sorted by
    log time (writers may append them out of order); chunks follow in file order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.topics: dict[str, TopicInfo] = {}
        self.error: str | None = None
        counts: dict[str, int] = {}
        channels: dict[int, tuple[str, str]] = {}
        for channel_id, _, _ in self._records(channels):
            topic = channels[channel_id][0]
            counts[topic] = counts.get(topic, 0) + 1
        self.topics = {topic: TopicInfo(msgtype, counts.get(topic, 0)) for topic, msgtype in channels.values()}

    def messages(self, topics: set[str]) -> Iterator[BagMessage]:
        """The complete messages of `topics`; raises ValueError at the first broken record."""
        channels: dict[int, tuple[str, str]] = {}
        for channel_id, log_time, data in self._records(channels):
            topic, msgtype = channels[channel_id]
            if topic in topics:
                yield BagMessage(topic, msgtype, log_time, data)
        if self.error is not None:
            raise ValueError(self.error)

    def _records(self, channels: dict[int, tuple[str, str]]) -> Iterator[tuple[int, int, bytes]]:
        """(channel id, log time, data) of every complete message; fills `channels` as channel records appear."""
        schemas: dict[int, str] = {}
        with self.path.open("rb") as stream:
            if stream.read(8) != _MCAP_MAGIC:
                raise BagError(f"{self.path} is not an MCAP file")
            while True:
                offset = stream.tell()
                try:
                    record = _read_record(stream)
                    if record is None:
                        return
                    opcode, body = record
                    if opcode == 0x06:  # chunk
                        inner = _chunk_records(body)
                        yield from sorted(_messages_of(inner, schemas, channels), key=lambda m: m[1])
                    else:
                        yield from _messages_of([(opcode, body)], schemas, channels)
                except Exception as exc:  # struct/decode/KeyError for broken records, zstd/lz4 their own types
                    self.error = f"broken MCAP record at byte {offset}: {describe_error(exc)}"
                    return


def _read_record(stream: BinaryIO) -> tuple[int, bytes] | None:
    """The next (opcode, body) of an MCAP stream; None at the end (footer or clean end of file)."""
    head = stream.read(9)
    if not head:
        return None
    if len(head) < 9:
        raise ValueError(f"file ends inside a record header ({len(head)} of 9 bytes)")
    opcode, length = struct.unpack("<BQ", head)
    if opcode in (0x02, 0x0F):  # footer or data end: no messages follow
        return None
    body = stream.read(length)
    if len(body) < length:
        raise ValueError(f"file ends inside a record of {length} bytes ({len(body)} present)")
    return opcode, body


def _chunk_records(body: bytes) -> list[tuple[int, bytes]]:
    """The records inside an MCAP chunk record body."""
    _, _, size, crc = struct.unpack_from("<QQQI", body, 0)
    (name_length,) = struct.unpack_from("<I", body, 28)
    compression = body[32 : 32 + name_length].decode()
    (data_length,) = struct.unpack_from("<Q", body, 32 + name_length)
    start = 40 + name_length
    data = decompress(body[start : start + data_length], compression, size, crc)
    stream = BytesIO(data)
    records = []
    while (record := _read_record(stream)) is not None:
        records.append(record)
    return records


def _messages_of(
    records: Sequence[tuple[int, bytes]], schemas: dict[int, str], channels: dict[int, tuple[str, str]]
) -> Iterator[tuple[int, int, bytes]]:
    """(channel id, log time, data) of the message records; schema and channel records update the maps."""
    for opcode, body in records:
        if opcode == 0x03:  # schema: id, name, ...
            (schema_id,) = struct.unpack_from("<H", body, 0)
            schemas[schema_id] = _mcap_string(body, 2)
        elif opcode == 0x04:  # channel: id, schema id, topic, ...
            channel_id, schema_id = struct.unpack_from("<HH", body, 0)
            channels[channel_id] = (_mcap_string(body, 4), schemas[schema_id])
        elif opcode == 0x05:  # message: channel id, sequence, log time, publish time, data
            channel_id, _, log_time, _ = struct.unpack_from("<HIQQ", body, 0)
            if channel_id not in channels:
                raise ValueError(f"message on unknown channel {channel_id}")
            yield channel_id, log_time, body[22:]


def _mcap_string(body: bytes, offset: int) -> str:
    (length,) = struct.unpack_from("<I", body, offset)
    if offset + 4 + length > len(body):
        raise ValueError("string runs past its record")
    return body[offset + 4 : offset + 4 + length].decode()
