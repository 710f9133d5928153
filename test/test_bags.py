"""mafs_ros.bags: type store with our messages, reading (both storages, bare files, rosbag2 metadata versions 4 to 9,
truncated MCAP), writing, and `write_pairs_bag` (stamps, receive order, pixels)."""

import json
import os
import shutil
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bag_helpers import read_topics, small_pairs

from mafs_ros import bags
from mafs_ros.constants import (
    CAMERA_INFO_TOPIC,
    GROUND_TRUTH_TOPIC,
    IMAGE_TYPE,
    RESULT_TYPE,
    RGB_TOPIC,
    THERMAL_TOPIC,
    absolute_topic,
)
from mafs_ros.stream.conversions import image_to_numpy
from mafs_ros.stamps import stamp_ns

ROOT = Path(__file__).resolve().parents[1]
RGB, THERMAL, TRUTH = absolute_topic(RGB_TOPIC), absolute_topic(THERMAL_TOPIC), absolute_topic(GROUND_TRUTH_TOPIC)


def _msg_fields(name: str) -> list[str]:
    fields = []
    for line in (ROOT / "msg" / f"{name}.msg").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            fields.append(line.split()[1])
    return fields


# ---------------------------------------------------------------------------------------------------------
# Type store


def test_typestore_registers_our_messages_from_msg_files():
    assert bags.message_definitions_dir() == ROOT / "msg"  # source checkout: the one source of truth
    store = bags.typestore()
    for msgtype in bags.CUSTOM_TYPES:
        name = msgtype.rsplit("/", 1)[1]
        assert [field[0] for field in store.fielddefs[msgtype][1]] == _msg_fields(name)


def test_typestore_hashes_equal_rosidl():
    """`ros2 bag play` checks the type hash: ours must equal what rosidl generated from the same msg files."""
    share = ROOT / "install" / "share" / "mafs_ros" / "msg"
    if not share.is_dir():
        pytest.skip("messages not built (make setup builds them into install/)")
    for msgtype in bags.CUSTOM_TYPES:
        description = json.loads((share / f"{msgtype.rsplit('/', 1)[1]}.json").read_text())
        expected = next(h["hash_string"] for h in description["type_hashes"] if h["type_name"] == msgtype)
        assert bags.typestore().hash_rihs01(msgtype) == expected


# rosidl's parser (lark 0.12) imports the deprecated sre_* modules when rclpy loads type descriptions.
@pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")
def test_result_message_cdr_decodes_with_rclpy():
    """A FusedSegmentation serialized by rosbags is the same CDR rclpy reads (what `ros2 bag play` publishes)."""
    generated = pytest.importorskip("mafs_ros.msg")
    from rclpy.serialization import deserialize_message

    header = bags.make_header(1_700_000_000_123_456_789, "rgb_camera")
    fused = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    labels = (np.arange(20, dtype=np.uint8) % 9).reshape(4, 5)
    msg = bags.typestore().types[RESULT_TYPE](
        header=header, fused=bags.image_message(fused, "rgb8", header),
        labels=bags.image_message(labels, "mono8", header), confidence=bags.empty_image(header),
        rgb_stamp=header.stamp, thermal_stamp=bags.make_header(1_700_000_000_100_000_000, "").stamp,
        preprocess_ms=1.5, inference_ms=20.25, postprocess_ms=3.0, missing_input="",
    )
    raw = bags.typestore().serialize_cdr(msg, RESULT_TYPE)
    native = deserialize_message(bytes(raw), generated.FusedSegmentation)
    assert (native.header.stamp.sec, native.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert native.header.frame_id == "rgb_camera"
    assert (native.fused.height, native.fused.width, native.fused.encoding) == (4, 5, "rgb8")
    assert bytes(native.fused.data) == fused.tobytes() and bytes(native.labels.data) == labels.tobytes()
    assert native.thermal_stamp.nanosec == 100_000_000 and native.inference_ms == pytest.approx(20.25)
    assert native.confidence.width == 0


def test_topic_name_accepts_relative_names():
    assert bags.topic_name("rgb/image") == bags.topic_name("/rgb/image") == "/rgb/image"
    with pytest.raises(ValueError):
        bags.topic_name(" / ")


# ---------------------------------------------------------------------------------------------------------
# write_pairs_bag and reading


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_write_pairs_bag_stamps_order_and_pixels(tmp_path, storage):
    pairs = small_pairs()
    written = bags.write_pairs_bag(tmp_path / "bag", pairs, rate_hz=20.0, thermal_offset_s=0.03, jitter_s=0.004,
                                   seed=3, storage=storage, thermal_encoding="mono16", repeat=2,
                                   camera_info_topic=absolute_topic(CAMERA_INFO_TOPIC))
    n = 2 * len(pairs)
    start = written.rgb_stamps_ns[0]
    assert written.rgb_stamps_ns == [start + i * 50_000_000 for i in range(n)]
    thermal_error = np.array(written.thermal_stamps_ns) - (np.array(written.rgb_stamps_ns) - 30_000_000)
    assert np.abs(thermal_error).max() <= 4_000_000 and np.abs(thermal_error).max() > 0  # jitter, within bounds
    labelled = [i for i in range(n) if pairs[i % len(pairs)][2] is not None]
    assert written.label_stamps_ns == [written.rgb_stamps_ns[i] for i in labelled]

    with bags.BagReader(tmp_path / "bag") as reader:
        assert {t: i.count for t, i in reader.topics.items()} == {
            RGB: n, THERMAL: n, TRUTH: len(labelled), absolute_topic(CAMERA_INFO_TOPIC): n}
        receive = [m.receive_ns for m in reader.messages([RGB, THERMAL, TRUTH, absolute_topic(CAMERA_INFO_TOPIC)])]
    assert receive == sorted(receive)
    metadata = (tmp_path / "bag" / "metadata.yaml").read_text()
    assert "version: 9" in metadata and f"storage_identifier: {storage}" in metadata

    got = read_topics(tmp_path / "bag", [RGB, THERMAL, TRUTH])
    for i, ((rgb_t, rgb_msg), (thermal_t, thermal_msg)) in enumerate(zip(got[RGB], got[THERMAL])):
        rgb, thermal, _ = pairs[i % len(pairs)]
        assert stamp_ns(rgb_msg.header) == written.rgb_stamps_ns[i]
        assert rgb_t == written.rgb_stamps_ns[i] + 5_000_000  # received 5 ms after the stamp
        assert stamp_ns(thermal_msg.header) == written.thermal_stamps_ns[i]
        assert rgb_msg.encoding == "rgb8" and np.array_equal(image_to_numpy(rgb_msg), rgb)
        assert thermal_msg.encoding == "mono16"
        assert np.array_equal(image_to_numpy(thermal_msg), thermal.astype(np.uint16) * 257)
    (label_t, label_msg), = got[TRUTH][:1]
    assert np.array_equal(image_to_numpy(label_msg), pairs[labelled[0]][2])
    assert stamp_ns(label_msg.header) == written.rgb_stamps_ns[labelled[0]]


def test_write_pairs_bag_from_a_folder(tmp_path):
    written = bags.write_pairs_bag(tmp_path / "bag", ROOT / "data" / "sample", labels_topic=None)
    topics = bags.list_topics(tmp_path / "bag")
    assert set(topics) == {RGB, THERMAL} and topics[RGB].count == len(written.rgb_stamps_ns) == 6
    with pytest.raises(bags.BagError, match="exists"):
        bags.write_pairs_bag(tmp_path / "bag", small_pairs())
    with pytest.raises(ValueError, match="thermal_encoding"):
        bags.write_pairs_bag(tmp_path / "other", small_pairs(), thermal_encoding="bgr8")


@pytest.mark.parametrize("storage, suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_bare_storage_file_reads_like_its_directory(tmp_path, storage, suffix):
    bags.write_pairs_bag(tmp_path / "bag", small_pairs()[:2], storage=storage)
    bare = tmp_path / f"copy{suffix}"
    shutil.copy(tmp_path / "bag" / f"bag{suffix}", bare)
    assert bags.list_topics(bare) == bags.list_topics(tmp_path / "bag")
    from_dir, from_file = read_topics(tmp_path / "bag", [RGB]), read_topics(bare, [RGB])
    assert [t for t, _ in from_dir[RGB]] == [t for t, _ in from_file[RGB]]


# The QoS write_pairs_bag gives the camera topics (best effort, depth 5, durations unset) as rosbag2 serializes it:
# a YAML string with enum numbers up to metadata version 8, a YAML list with enum names from version 9 (Jazzy) on.
QOS_NUMBERS = ("- history: 1\n  depth: 5\n  reliability: 2\n  durability: 2\n  deadline:\n    sec: 0\n    nsec: 0\n"
               "  lifespan:\n    sec: 0\n    nsec: 0\n  liveliness: 1\n  liveliness_lease_duration:\n    sec: 0\n"
               "    nsec: 0\n  avoid_ros_namespace_conventions: false")
QOS_NAMES = (QOS_NUMBERS.replace("history: 1", "history: keep_last")
             .replace("reliability: 2", "reliability: best_effort").replace("durability: 2", "durability: volatile")
             .replace("liveliness: 1", "liveliness: automatic"))


def rosbag2_metadata(version: int, storage: str, file_name: str, written: bags.WrittenBag) -> str:
    """metadata.yaml as rosbag2 writes it in metadata `version` (the fields each version has: rosbag2_storage's
    yaml.hpp): 4 relative_file_paths and QoS, 5 files, 6 custom_data, 7 type_description_hash, 8 ros_distro, 9 QoS
    as a YAML list with enum names."""
    qos = "\n" + textwrap.indent(QOS_NAMES, " " * 10) if version >= 9 else " " + json.dumps(QOS_NUMBERS)
    type_hash = f"\n        type_description_hash: {bags.typestore().hash_rihs01(IMAGE_TYPE)}"
    topics = "".join(
        f"""
    - topic_metadata:
        name: {topic}
        type: {IMAGE_TYPE}
        serialization_format: cdr
        offered_qos_profiles:{qos}{type_hash if version >= 7 else ""}
      message_count: {len(stamps)}"""
        for topic, stamps in ((RGB, written.rgb_stamps_ns), (THERMAL, written.thermal_stamps_ns))
    )
    start = min(written.rgb_stamps_ns + written.thermal_stamps_ns)
    duration = max(written.rgb_stamps_ns + written.thermal_stamps_ns) - start
    count = len(written.rgb_stamps_ns) + len(written.thermal_stamps_ns)
    text = f"""rosbag2_bagfile_information:
  version: {version}
  storage_identifier: {storage}
  duration:
    nanoseconds: {duration}
  starting_time:
    nanoseconds_since_epoch: {start}
  message_count: {count}
  topics_with_message_count:{topics}
  compression_format: ""
  compression_mode: ""
  relative_file_paths:
    - {file_name}
"""
    if version >= 5:
        text += f"""  files:
    - path: {file_name}
      starting_time:
        nanoseconds_since_epoch: {start}
      duration:
        nanoseconds: {duration}
      message_count: {count}
"""
    if version >= 6:
        text += "  custom_data: ~\n"
    if version >= 8:
        text += f"  ros_distro: {'jazzy' if version >= 9 else 'iron'}\n"
    return text


def pre_iron_db3(source: Path, target: Path, distro: str | None) -> None:
    """The messages of a rosbags-written db3 in the layout of rosbag2 before Iron: no message definitions, no type
    hashes, QoS as a YAML string; a schema table of version 3 naming `distro`, or none at all (None: Foxy and
    Galactic)."""
    db = sqlite3.connect(target)
    if distro is not None:
        db.executescript(f"""
            CREATE TABLE schema(schema_version INTEGER PRIMARY KEY, ros_distro TEXT NOT NULL);
            INSERT INTO schema VALUES (3, '{distro}');
        """)
    db.executescript("""
        CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
                            serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL);
        CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, timestamp INTEGER NOT NULL,
                              data BLOB NOT NULL);
    """)
    src = sqlite3.connect(source)
    db.executemany("INSERT INTO topics VALUES (?, ?, ?, 'cdr', ?)",
                   [(*row, QOS_NUMBERS) for row in src.execute("SELECT id, name, type FROM topics")])
    db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                   src.execute("SELECT id, topic_id, timestamp, data FROM messages").fetchall())
    db.commit()
    db.close()
    src.close()


# 4: Foxy, Galactic; 5: Humble; 6, 7: Rolling between Humble and Iron; 8: Iron; 9: Jazzy, Kilted.
@pytest.mark.parametrize("version, storage", [*((v, "sqlite3") for v in range(4, 10)), (8, "mcap")])
def test_reads_every_rosbag2_metadata_version(tmp_path, version, storage):
    written = bags.write_pairs_bag(tmp_path / "src", small_pairs()[:2], storage=storage, labels_topic=None)
    bag = tmp_path / f"v{version}"
    bag.mkdir()
    suffix = ".db3" if storage == "sqlite3" else ".mcap"
    source, file_name = tmp_path / "src" / f"src{suffix}", f"v{version}_0{suffix}"
    if storage == "sqlite3" and version < 7:
        pre_iron_db3(source, bag / file_name, distro={4: None, 5: "humble", 6: "rolling"}[version])
    else:
        shutil.copy(source, bag / file_name)
        if storage == "sqlite3":  # the topics table holds the QoS text that metadata.yaml has
            db = sqlite3.connect(bag / file_name)
            db.execute("UPDATE topics SET offered_qos_profiles = ?", (QOS_NAMES if version >= 9 else QOS_NUMBERS,))
            db.commit()
            db.close()
    (bag / "metadata.yaml").write_text(rosbag2_metadata(version, storage, file_name, written))

    with bags.BagReader(bag) as reader:
        assert not reader.recovered  # opened through metadata.yaml, not by the front-to-back scan
        assert reader.topics == {RGB: bags.TopicInfo(IMAGE_TYPE, 2), THERMAL: bags.TopicInfo(IMAGE_TYPE, 2)}
        assert reader.offered_qos(RGB) == [bags.qos_profile(reliable=False, depth=5)]
    got = read_topics(bag, [RGB, THERMAL])
    assert [stamp_ns(m.header) for _, m in got[RGB]] == written.rgb_stamps_ns
    assert np.array_equal(image_to_numpy(got[THERMAL][1][1]), small_pairs()[1][1])


def test_truncated_mcap_is_read_up_to_the_last_complete_record(tmp_path):
    # 120x160 frames: ~75 kB per pair, rosbags cuts MCAP chunks at 1 MiB: 36 pairs give 3 chunks.
    written = bags.write_pairs_bag(tmp_path / "bag", small_pairs(), repeat=6, labels_topic=None)
    mcap = tmp_path / "bag" / "bag.mcap"
    os.truncate(mcap, int(mcap.stat().st_size * 0.7))

    with bags.BagReader(tmp_path / "bag") as reader:
        assert reader.recovered
        counts = {topic: info.count for topic, info in reader.topics.items()}
        assert 0 < counts[RGB] < len(written.rgb_stamps_ns)
        stamps = []
        with pytest.raises(bags.BagReadError, match="broken MCAP record at byte") as failure:
            for message in reader.messages([RGB, THERMAL]):
                if message.topic == RGB:
                    stamps.append(stamp_ns(bags.deserialize(message).header))
    assert failure.value.messages_read == counts[RGB] + counts[THERMAL]
    assert stamps == written.rgb_stamps_ns[: len(stamps)] and len(stamps) == counts[RGB]  # a clean prefix


def test_unreadable_bags_raise_bag_error(tmp_path):
    with pytest.raises(bags.BagError, match="does not exist"):
        bags.BagReader(tmp_path / "missing")
    bags.write_pairs_bag(tmp_path / "bag", small_pairs()[:2], storage="sqlite3")
    db3 = tmp_path / "bag" / "bag.db3"
    os.truncate(db3, db3.stat().st_size // 2)
    with pytest.raises(bags.BagError, match="cannot open bag"):
        bags.BagReader(tmp_path / "bag")
    bags.write_pairs_bag(tmp_path / "ok", small_pairs()[:1], labels_topic=None)
    with bags.BagReader(tmp_path / "ok") as reader, pytest.raises(bags.BagError, match="it has: /rgb/image"):
        reader.require_topics(["/nope"])


def test_writer_keeps_what_was_written_when_the_block_fails(tmp_path):
    header = bags.make_header(1_000, "f")
    with pytest.raises(RuntimeError):
        with bags.BagWriter(tmp_path / "out", storage="sqlite3") as writer:
            writer.write("/x", 5_000, bags.image_message(np.zeros((2, 3), np.uint8), "mono8", header))
            raise RuntimeError("boom")
    got = read_topics(tmp_path / "out", ["/x"])["/x"]
    assert [t for t, _ in got] == [5_000] and stamp_ns(got[0][1].header) == 1_000
