"""mafs_ros.bags: type store with our messages, reading (both storages, bare files, Humble-era bags, truncated
MCAP), writing, and `write_pairs_bag` (stamps, receive order, pixels)."""

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from bag_helpers import read_topics, small_pairs

from mafs_ros import bags
from mafs_ros.ros.conversions import image_to_numpy

ROOT = Path(__file__).resolve().parents[1]
RGB, THERMAL, TRUTH = bags.RGB_TOPIC, bags.THERMAL_TOPIC, bags.GROUND_TRUTH_TOPIC


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
    msg = bags.typestore().types[bags.RESULT_TYPE](
        header=header, fused=bags.image_message(fused, "rgb8", header),
        labels=bags.image_message(labels, "mono8", header), confidence=bags.empty_image(header),
        rgb_stamp=header.stamp, thermal_stamp=bags.make_header(1_700_000_000_100_000_000, "").stamp,
        preprocess_ms=1.5, inference_ms=20.25, postprocess_ms=3.0,
    )
    raw = bags.typestore().serialize_cdr(msg, bags.RESULT_TYPE)
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
                                   camera_info_topic=bags.CAMERA_INFO_TOPIC)
    n = 2 * len(pairs)
    start = written.rgb_stamps_ns[0]
    assert written.rgb_stamps_ns == [start + i * 50_000_000 for i in range(n)]
    thermal_error = np.array(written.thermal_stamps_ns) - (np.array(written.rgb_stamps_ns) - 30_000_000)
    assert np.abs(thermal_error).max() <= 4_000_000 and np.abs(thermal_error).max() > 0  # jitter, within bounds
    labelled = [i for i in range(n) if pairs[i % len(pairs)][2] is not None]
    assert written.label_stamps_ns == [written.rgb_stamps_ns[i] for i in labelled]

    with bags.BagReader(tmp_path / "bag") as reader:
        assert {t: i.count for t, i in reader.topics.items()} == {
            RGB: n, THERMAL: n, TRUTH: len(labelled), bags.CAMERA_INFO_TOPIC: n}
        receive = [m.receive_ns for m in reader.messages([RGB, THERMAL, TRUTH, bags.CAMERA_INFO_TOPIC])]
    assert receive == sorted(receive)
    metadata = (tmp_path / "bag" / "metadata.yaml").read_text()
    assert "version: 9" in metadata and f"storage_identifier: {storage}" in metadata

    got = read_topics(tmp_path / "bag", [RGB, THERMAL, TRUTH])
    for i, ((rgb_t, rgb_msg), (thermal_t, thermal_msg)) in enumerate(zip(got[RGB], got[THERMAL])):
        rgb, thermal, _ = pairs[i % len(pairs)]
        assert bags.stamp_ns(rgb_msg.header) == written.rgb_stamps_ns[i]
        assert rgb_t == written.rgb_stamps_ns[i] + 5_000_000  # received 5 ms after the stamp
        assert bags.stamp_ns(thermal_msg.header) == written.thermal_stamps_ns[i]
        assert rgb_msg.encoding == "rgb8" and np.array_equal(image_to_numpy(rgb_msg), rgb)
        assert thermal_msg.encoding == "mono16"
        assert np.array_equal(image_to_numpy(thermal_msg), thermal.astype(np.uint16) * 257)
    (label_t, label_msg), = got[TRUTH][:1]
    assert np.array_equal(image_to_numpy(label_msg), pairs[labelled[0]][2])
    assert bags.stamp_ns(label_msg.header) == written.rgb_stamps_ns[labelled[0]]


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


def test_reads_a_humble_sqlite3_bag(tmp_path):
    """Humble: sqlite schema 3 without message definitions, metadata version 5 with QoS as a YAML string."""
    written = bags.write_pairs_bag(tmp_path / "src", small_pairs()[:3], storage="sqlite3", labels_topic=None)
    humble = tmp_path / "humble"
    humble.mkdir()
    source = sqlite3.connect(tmp_path / "src" / "src.db3")
    target = sqlite3.connect(humble / "humble_0.db3")
    target.executescript("""
        CREATE TABLE schema(schema_version INTEGER PRIMARY KEY, ros_distro TEXT NOT NULL);
        INSERT INTO schema VALUES (3, 'humble');
        CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
                            serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL);
        CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, timestamp INTEGER NOT NULL,
                              data BLOB NOT NULL);
    """)
    # The same QoS text in the topics table and metadata.yaml, as Humble writes it.
    qos = ("- history: 3\n  depth: 0\n  reliability: 2\n  durability: 2\n  deadline:\n    sec: 2147483647\n"
           "    nsec: 4294967295\n  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n  liveliness: 1\n"
           "  liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n"
           "  avoid_ros_namespace_conventions: false")
    target.executemany("INSERT INTO topics VALUES (?, ?, ?, 'cdr', ?)",
                       [(*row, qos) for row in source.execute("SELECT id, name, type FROM topics")])
    target.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                       source.execute("SELECT id, topic_id, timestamp, data FROM messages").fetchall())
    target.commit()
    target.close()
    source.close()
    yaml_qos = json.dumps(qos)  # a double-quoted YAML scalar
    topics = "".join(
        f"""
    - topic_metadata:
        name: {topic}
        type: sensor_msgs/msg/Image
        serialization_format: cdr
        offered_qos_profiles: {yaml_qos}
      message_count: 3"""
        for topic in (RGB, THERMAL)
    )
    start = min(written.rgb_stamps_ns + written.thermal_stamps_ns)
    (humble / "metadata.yaml").write_text(f"""rosbag2_bagfile_information:
  version: 5
  storage_identifier: sqlite3
  duration:
    nanoseconds: 300000000
  starting_time:
    nanoseconds_since_epoch: {start}
  message_count: 6
  topics_with_message_count:{topics}
  compression_format: ""
  compression_mode: ""
  relative_file_paths:
    - humble_0.db3
  files:
    - path: humble_0.db3
      starting_time:
        nanoseconds_since_epoch: {start}
      duration:
        nanoseconds: 300000000
      message_count: 6
""")
    got = read_topics(humble, [RGB, THERMAL])
    assert [bags.stamp_ns(m.header) for _, m in got[RGB]] == written.rgb_stamps_ns
    assert np.array_equal(image_to_numpy(got[THERMAL][2][1]), small_pairs()[2][1])


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
                    stamps.append(bags.stamp_ns(bags.deserialize(message).header))
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
    assert [t for t, _ in got] == [5_000] and bags.stamp_ns(got[0][1].header) == 1_000
