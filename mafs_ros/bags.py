"""Rosbag2 input and output with `rosbags` (pure Python: no ROS installation needed).

- `typestore()`: the ROS 2 Kilted type store (identical to Jazzy for every type used here) with our messages
  mafs_ros/msg/FusedSegmentation and SegmentationInfo registered from msg/*.msg, the one source of their
  definitions (also compiled by rosidl). Their RIHS01 hashes equal rosidl's, so `ros2 bag play` accepts them.
- `BagReader`: rosbag2 directories (metadata versions 4 to 9: Foxy to Kilted) and bare .mcap / .db3 files, sqlite3
  and MCAP storage. Messages come in receive-time order. An MCAP file without a valid summary or a sqlite3 file
  cut short (a recorder that was killed, a copy that stopped) is read front to back up to its last complete
  message instead of being refused.
- `BagWriter`: a new rosbag2 (MCAP or sqlite3, metadata version 9) from typestore messages or raw CDR bytes.
- `write_pairs_bag`: a camera-like bag (RGB at a fixed rate, thermal with an offset and jitter, optional ground
  truth and camera info) from real image pairs, for tests and demos.

Messages are rosbags dataclasses: `header.stamp.sec/nanosec`, primitive arrays (Image.data) as numpy arrays.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import decompress
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from .ros.conversions import numpy_to_image

logger = logging.getLogger(__name__)

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
BAG_VERSION = 9  # Jazzy/Kilted metadata; rosbags writes versions 8 and 9 only
IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
RESULT_TYPE = "mafs_ros/msg/FusedSegmentation"
INFO_TYPE = "mafs_ros/msg/SegmentationInfo"
CUSTOM_TYPES = (RESULT_TYPE, INFO_TYPE)

# The node's topics (mafs_ros/ros/node.py, relative names) in the root namespace, the defaults of replay and
# write_pairs_bag. Ground truth is not a node topic: label images recorded along with the camera frames.
RGB_TOPIC = "/rgb/image"
THERMAL_TOPIC = "/thermal/image"
CAMERA_INFO_TOPIC = "/rgb/camera_info"
GROUND_TRUTH_TOPIC = "/segmentation/ground_truth"
FUSED_TOPIC = "/fused/image"
LABELS_TOPIC = "/segmentation/labels"
OVERLAY_TOPIC = "/segmentation/overlay"
RESULT_TOPIC = "/mafs/result"
INFO_TOPIC = "/segmentation/info"
FUSED_CAMERA_INFO_TOPIC = "/fused/camera_info"

_MCAP_MAGIC = b"\x89MCAP0\r\n"


class BagError(Exception):
    """A bag that cannot be opened or used; the message names the bag and the cause."""


class BagReadError(BagError):
    """Reading stopped partway (truncated or corrupt storage); `messages_read` messages came before it."""

    def __init__(self, message: str, messages_read: int) -> None:
        super().__init__(message)
        self.messages_read = messages_read


# ---------------------------------------------------------------------------------------------------------
# Types


def message_definitions_dir() -> Path:
    """The folder with FusedSegmentation.msg and SegmentationInfo.msg.

    An installed package has copies of msg/*.msg in mafs_ros/msg_definitions (setup.py and CMakeLists.txt copy
    them); a source checkout or editable install reads the repository's msg/ folder.
    """
    package = Path(__file__).resolve().parent
    names = [f"{msgtype.rsplit('/', 1)[1]}.msg" for msgtype in CUSTOM_TYPES]
    candidates = (package / "msg_definitions", package.parent / "msg")
    for folder in candidates:
        if all((folder / name).is_file() for name in names):
            return folder
    raise FileNotFoundError(f"message definitions {', '.join(names)} not found in {' or '.join(map(str, candidates))}")


@functools.cache
def typestore() -> Any:
    """The Kilted type store with mafs_ros/msg/FusedSegmentation and SegmentationInfo registered (shared)."""
    store = get_typestore(Stores.ROS2_KILTED)
    folder = message_definitions_dir()
    for msgtype in CUSTOM_TYPES:
        text = (folder / f"{msgtype.rsplit('/', 1)[1]}.msg").read_text(encoding="utf-8")
        store.register(get_types_from_msg(text, msgtype))
    return store


def topic_name(name: str) -> str:
    """A topic as rosbag2 stores it: absolute, so "rgb/image" and "/rgb/image" are the same topic."""
    name = name.strip()
    if not name.strip("/"):
        raise ValueError(f"invalid topic name {name!r}")
    return "/" + name.lstrip("/")


def time_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time in integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_ns(header: Any) -> int:
    """A header's stamp in integer nanoseconds."""
    return time_ns(header.stamp)


def make_header(stamp: int, frame_id: str) -> Any:
    """A std_msgs/Header with `stamp` (ns)."""
    types = typestore().types
    sec, nanosec = divmod(int(stamp), 1_000_000_000)
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                        frame_id=frame_id)


def image_message(array: np.ndarray, encoding: str, header: Any) -> Any:
    """A sensor_msgs/Image with `array`'s pixels (see conversions.numpy_to_image for encodings and shapes)."""
    return numpy_to_image(array, encoding, header=header, msg=empty_image(header))


def empty_image(header: Any) -> Any:
    """An Image without pixels (width = height = 0), e.g. FusedSegmentation.confidence when disabled."""
    return typestore().types[IMAGE_TYPE](header=header, height=0, width=0, encoding="", is_bigendian=0, step=0,
                                         data=np.zeros(0, dtype=np.uint8))


def camera_info_message(height: int, width: int, header: Any) -> Any:
    """A sensor_msgs/CameraInfo that gives only the image size (uncalibrated: all matrices zero)."""
    types = typestore().types
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types[CAMERA_INFO_TYPE](
        header=header, height=height, width=width, distortion_model="", d=np.zeros(0), k=np.zeros(9), r=np.zeros(9),
        p=np.zeros(12), binning_x=0, binning_y=0, roi=roi,
    )


# ---------------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class TopicInfo:
    """A topic of a bag: message type and message count."""

    msgtype: str
    count: int


@dataclass(frozen=True)
class BagMessage:
    """One stored message: topic, type, receive (log) time in ns and the serialized CDR bytes."""

    topic: str
    msgtype: str
    receive_ns: int
    raw: bytes | memoryview


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
        self._scan: _McapScan | _Sqlite3Scan | None = None
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # rosbags raises ReaderError, but also KeyError/OSError/apsw errors for bad files
            self._reader = None
            refused = f"cannot open bag {self.path}: {_describe(exc)}"
            if (mcap_file := _single_file(self.path, ".mcap")) is not None:
                storage_file, self._scan = mcap_file, _McapScan(mcap_file)
            elif (db3_file := _single_file(self.path, ".db3")) is not None:
                storage_file, self._scan = db3_file, _Sqlite3Scan(db3_file, refused)
            else:
                raise BagError(refused) from None
            self.recovered = True
            logger.warning("%s: %s; reading its complete records front to back (%d message(s))",
                           storage_file, _describe(exc), sum(info.count for info in self._scan.topics.values()))

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
                                             f"{last.receive_ns // 1_000_000_000}.{last.receive_ns % 1_000_000_000:09d})")
            raise BagReadError(f"{self.path}: reading failed after {count} message(s){where}: {_describe(exc)}",
                               count) from None


def deserialize(message: BagMessage) -> Any:
    """The message object of a BagMessage (raises on corrupt bytes; the caller decides what to skip)."""
    return typestore().deserialize_cdr(message.raw, message.msgtype)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _single_file(path: Path, suffix: str) -> Path | None:
    """The storage file of a bag that is one `suffix` file, or a directory holding exactly one; else None."""
    if path.is_file():
        return path if path.suffix == suffix else None
    files = sorted(path.glob(f"*{suffix}"))
    return files[0] if len(files) == 1 else None


class _Sqlite3Scan:
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
            raise BagError(f"{refused} (its topics table is unreadable too: {_describe(exc)})") from None
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
                self.error = f"broken sqlite3 page after message id {row_id}: {_describe(exc)}"


@contextlib.contextmanager
def _closing_sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        db.execute("PRAGMA writable_schema = ON")  # read a file shorter than its header says (see _Sqlite3Scan)
        yield db
    finally:
        db.close()


class _McapScan:
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
        self._channels = channels
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
                    self.error = f"broken MCAP record at byte {offset}: {_describe(exc)}"
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


def list_topics(path: str | Path) -> dict[str, TopicInfo]:
    """Topic -> (message type, count) of a bag (raises BagError if it cannot be opened)."""
    with BagReader(path) as reader:
        return reader.topics


def format_topics(topics: dict[str, TopicInfo]) -> str:
    """Topics as aligned text lines under a header: topic, message type, message count."""
    rows = [("topic", "type", "messages")] + [(topic, info.msgtype, str(info.count)) for topic, info in topics.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows)


# ---------------------------------------------------------------------------------------------------------
# Writing


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


# ---------------------------------------------------------------------------------------------------------
# Bags from image pairs


@dataclass(frozen=True)
class WrittenBag:
    """What `write_pairs_bag` wrote: the bag and the header stamps (ns) per stream, in order."""

    path: Path
    rgb_stamps_ns: list[int]
    thermal_stamps_ns: list[int]
    label_stamps_ns: list[int]


THERMAL_BAG_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1")


def write_pairs_bag(
    path: str | Path,
    pairs: str | Path | Sequence[tuple[np.ndarray, ...]],
    *,
    rgb_topic: str = RGB_TOPIC,
    thermal_topic: str = THERMAL_TOPIC,
    labels_topic: str | None = GROUND_TRUTH_TOPIC,
    camera_info_topic: str | None = None,
    rate_hz: float = 10.0,
    thermal_offset_s: float = 0.0,
    jitter_s: float = 0.0,
    seed: int = 0,
    storage: str = "mcap",
    thermal_encoding: str = "mono8",
    repeat: int = 1,
    start_ns: int = 1_700_000_000 * 1_000_000_000,
    transport_delay_s: float = 0.005,
) -> WrittenBag:
    """Write a rosbag2 that looks like a recording of an RGB and a thermal camera, from real image pairs.

    pairs: a folder with ir/ and vi/ (label/ optional) paired by file stem, or a sequence of (rgb, thermal) or
        (rgb, thermal, label or None) arrays: rgb (H, W, 3) uint8 RGB, thermal (H, W) uint8 or uint16, label
        (H, W) integer class ids. Each pair becomes frame i (pairs in order, `repeat` times over).
    Stamps: RGB frame i at start_ns + i / rate_hz. Thermal frame i at that stamp minus `thermal_offset_s` plus
        a uniform jitter in [-jitter_s, jitter_s] (numpy generator `seed`): a thermal camera whose stamps lag by
        `thermal_offset_s`, which the pairer's thermal_offset_s of the same value corrects. Labels and camera
        info carry the RGB stamp. Every message is received (bag time) `transport_delay_s` after its stamp and
        the bag is written in receive order.
    RGB is written as rgb8; thermal as `thermal_encoding` (mono8/8UC1 need 8-bit thermal; mono16/16UC1 scale
    8-bit thermal by 257, i.e. to the full 16-bit range); labels as mono8 on `labels_topic` (only for pairs with
    a label); camera info (size only) on `camera_info_topic` if given.
    Raises ValueError for bad arguments or images, BagError if `path` exists.
    """
    if thermal_encoding not in THERMAL_BAG_ENCODINGS:
        raise ValueError(f"thermal_encoding must be one of {THERMAL_BAG_ENCODINGS}, got {thermal_encoding!r}")
    if not rate_hz > 0 or repeat < 1 or jitter_s < 0:
        raise ValueError(f"need rate_hz > 0, repeat >= 1, jitter_s >= 0 (got {rate_hz}, {repeat}, {jitter_s})")
    frames = _load_pairs(pairs)
    rng = np.random.default_rng(seed)
    delay_ns = round(transport_delay_s * 1e9)
    rgb_topic, thermal_topic = topic_name(rgb_topic), topic_name(thermal_topic)

    # (receive ns, order, topic, message): sorting gives receive order, ties in the order written here.
    queue: list[tuple[int, int, str, Any]] = []
    written = WrittenBag(Path(path), [], [], [])
    for i in range(len(frames) * repeat):
        rgb, thermal, label = frames[i % len(frames)]
        rgb_stamp = start_ns + round(i * 1e9 / rate_hz)
        thermal_stamp = rgb_stamp - round(thermal_offset_s * 1e9) + round(rng.uniform(-jitter_s, jitter_s) * 1e9)
        messages = []
        if camera_info_topic is not None:  # before its image, so that a consumer has it when the image comes
            messages.append((rgb_stamp, topic_name(camera_info_topic),
                             camera_info_message(*rgb.shape[:2], make_header(rgb_stamp, "rgb_camera"))))
        messages += [
            (rgb_stamp, rgb_topic, image_message(rgb, "rgb8", make_header(rgb_stamp, "rgb_camera"))),
            (thermal_stamp, thermal_topic,
             image_message(_thermal_array(thermal, thermal_encoding), thermal_encoding,
                           make_header(thermal_stamp, "thermal_camera"))),
        ]
        written.rgb_stamps_ns.append(rgb_stamp)
        written.thermal_stamps_ns.append(thermal_stamp)
        if label is not None and labels_topic is not None:
            messages.append((rgb_stamp, topic_name(labels_topic),
                             image_message(_label_array(label), "mono8", make_header(rgb_stamp, "rgb_camera"))))
            written.label_stamps_ns.append(rgb_stamp)
        for stamp, topic, msg in messages:
            queue.append((stamp + delay_ns, len(queue), topic, msg))

    with BagWriter(path, storage=storage) as writer:
        # Camera topics are best effort, as camera drivers usually offer them.
        for topic, msgtype in ((rgb_topic, IMAGE_TYPE), (thermal_topic, IMAGE_TYPE)):
            writer.add_topic(topic, msgtype, [qos_profile(reliable=False, depth=5)])
        for receive_ns, _, topic, msg in sorted(queue, key=lambda entry: entry[:2]):
            writer.write(topic, receive_ns, msg)
    return written


def _load_pairs(pairs: str | Path | Sequence[tuple[np.ndarray, ...]]) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """(rgb, thermal, label or None) per pair, checked for types and sizes."""
    if isinstance(pairs, (str, Path)):
        from .train.data import discover_pairs, load_pair

        loaded = [load_pair(pair) for pair in discover_pairs(pairs, layout="pairs")]
    else:
        loaded = [(item[0], item[1], item[2] if len(item) > 2 else None) for item in pairs]
    if not loaded:
        raise ValueError("no image pairs to write")
    for index, (rgb, thermal, label) in enumerate(loaded):
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError(f"pair {index}: rgb must be an (H, W, 3) uint8 array")
        if not (isinstance(thermal, np.ndarray) and thermal.ndim == 2 and thermal.dtype in (np.uint8, np.uint16)):
            raise ValueError(f"pair {index}: thermal must be an (H, W) uint8 or uint16 array")
        shapes = [rgb.shape[:2], thermal.shape] + ([label.shape] if label is not None else [])
        if len(set(shapes)) != 1:
            raise ValueError(f"pair {index}: sizes differ: {shapes}")
    return loaded


def _thermal_array(thermal: np.ndarray, encoding: str) -> np.ndarray:
    if encoding in ("mono8", "8UC1"):
        if thermal.dtype != np.uint8:
            raise ValueError(f"{encoding} needs 8-bit thermal images, got {thermal.dtype}")
        return thermal
    return thermal.astype(np.uint16) * 257 if thermal.dtype == np.uint8 else thermal


def _label_array(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.min() < 0 or label.max() > 255:
        raise ValueError(f"label ids {label.min()}..{label.max()} do not fit mono8")
    return label.astype(np.uint8)
