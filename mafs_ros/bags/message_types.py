"""The type store: ROS 2 Kilted's message types plus mafs_ros/msg/FusedSegmentation and SegmentationInfo, and
builders of the messages the bag writers store.

Our two messages are registered from msg/*.msg, the one source of their definitions (also compiled by rosidl);
their RIHS01 hashes equal rosidl's, so `ros2 bag play` accepts bags written with them. Kilted's types are
identical to Jazzy's for every type used here.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from ..constants import CAMERA_INFO_TYPE, COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, INFO_TYPE, RESULT_TYPE, absolute_topic
from ..stream.conversions import numpy_to_image
from ..stamps import split_ns

CUSTOM_TYPES = (RESULT_TYPE, INFO_TYPE)


def message_definitions_dir() -> Path:
    """The folder with FusedSegmentation.msg and SegmentationInfo.msg.

    An installed package has copies of msg/*.msg in mafs_ros/msg_definitions (setup.py and CMakeLists.txt copy
    them); a source checkout or editable install reads the repository's msg/ folder.
    """
    package = Path(__file__).resolve().parents[1]
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
    return absolute_topic(name.lstrip("/"))


def make_header(stamp: int, frame_id: str) -> Any:
    """A std_msgs/Header with `stamp` (ns)."""
    types = typestore().types
    sec, nanosec = split_ns(stamp)
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                        frame_id=frame_id)


def image_message(array: np.ndarray, encoding: str, header: Any) -> Any:
    """A sensor_msgs/Image with `array`'s pixels (see conversions.numpy_to_image for encodings and shapes)."""
    return numpy_to_image(array, encoding, header=header, msg=empty_image(header))


def compressed_image_message(fmt: str, data: bytes, header: Any) -> Any:
    """A sensor_msgs/CompressedImage with `format` `fmt` and the encoded bytes `data`."""
    return typestore().types[COMPRESSED_IMAGE_TYPE](header=header, format=fmt,
                                                    data=np.frombuffer(data, dtype=np.uint8).copy())


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
