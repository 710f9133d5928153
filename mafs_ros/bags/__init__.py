"""Rosbag2 input and output with `rosbags` (pure Python: no ROS installation, no torch).

- `message_types`: the type store (ROS 2 Kilted plus our FusedSegmentation and SegmentationInfo from msg/*.msg)
  and builders of headers, images and camera info;
- `reader`: `BagReader` for rosbag2 directories and bare .mcap / .db3 files, `list_topics`, `deserialize`;
- `recovery`: front-to-back parsers for MCAP and sqlite3 files that a killed recorder left behind;
- `writer`: `BagWriter` for new bags (MCAP or sqlite3, metadata version 9);
- `synthetic`: `write_pairs_bag`, a camera-like bag from real image pairs.

Messages are rosbags dataclasses: `header.stamp.sec/nanosec`, primitive arrays (Image.data) as numpy arrays.
Topic names in a bag are absolute: the node's topics are `constants.absolute_topic(constants.RGB_TOPIC)` etc.
"""

from .base import BagError, BagMessage, BagReadError, TopicInfo
from .message_types import (
    CUSTOM_TYPES,
    camera_info_message,
    compressed_image_message,
    empty_image,
    image_message,
    make_header,
    message_definitions_dir,
    topic_name,
    typestore,
)
from .reader import BagReader, deserialize, format_topics, list_topics
from .synthetic import THERMAL_BAG_ENCODINGS, WrittenBag, write_pairs_bag
from .writer import BAG_VERSION, STORAGES, BagWriter, qos_profile

__all__ = [
    "BAG_VERSION",
    "CUSTOM_TYPES",
    "STORAGES",
    "THERMAL_BAG_ENCODINGS",
    "BagError",
    "BagMessage",
    "BagReadError",
    "BagReader",
    "BagWriter",
    "TopicInfo",
    "WrittenBag",
    "camera_info_message",
    "compressed_image_message",
    "deserialize",
    "empty_image",
    "format_topics",
    "image_message",
    "list_topics",
    "make_header",
    "message_definitions_dir",
    "qos_profile",
    "topic_name",
    "typestore",
    "write_pairs_bag",
]
