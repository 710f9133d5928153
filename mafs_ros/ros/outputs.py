"""The node's output publishers and what it publishes for a fused pair."""

from __future__ import annotations

import array
import copy
from typing import Any

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ..constants import (
    CONFIDENCE_TOPIC,
    FUSED_CAMERA_INFO_TOPIC,
    FUSED_TOPIC,
    INFO_TOPIC,
    LABELS_TOPIC,
    OVERLAY_TOPIC,
    RESULT_TOPIC,
    compressed_topic,
)
from ..stream.compressed import JPEG_FORMAT, encode_jpeg
from ..stream.conversions import numpy_to_image
from ..stream.results import info_message, result_message

# segmentation/info is latched: a subscriber that comes later still gets it.
_LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Outputs:
    """The publishers of one configuration. A managed node's are lifecycle publishers: they publish only while
    the node is active."""

    def __init__(self, node: Any, qos: QoSProfile, managed: bool, jpeg_quality: int) -> None:
        from mafs_ros.msg import FusedSegmentation, SegmentationInfo

        self._node = node
        self._managed = managed
        self.jpeg_quality = jpeg_quality  # of the compressed outputs; the node changes it at run time
        self._result_type, self._info_type = FusedSegmentation, SegmentationInfo
        self._publishers: list[Any] = []
        self.fused = self._create(Image, FUSED_TOPIC, qos)
        self.labels = self._create(Image, LABELS_TOPIC, qos)
        self.overlay = self._create(Image, OVERLAY_TOPIC, qos)
        # image_transport's compressed plugin as a subscriber expects it, for viewers over Wi-Fi and recording.
        self.fused_compressed = self._create(CompressedImage, compressed_topic(FUSED_TOPIC), qos)
        self.overlay_compressed = self._create(CompressedImage, compressed_topic(OVERLAY_TOPIC), qos)
        self.confidence = self._create(Image, CONFIDENCE_TOPIC, qos)
        self.result = self._create(FusedSegmentation, RESULT_TOPIC, qos)
        self.camera_info = self._create(CameraInfo, FUSED_CAMERA_INFO_TOPIC, qos)
        self.info = self._create(SegmentationInfo, INFO_TOPIC, _LATCHED)

    def _create(self, msg_type: type, topic: str, qos: QoSProfile) -> Any:
        create = self._node.create_lifecycle_publisher if self._managed else self._node.create_publisher
        publisher = create(msg_type, topic, qos)
        self._publishers.append(publisher)
        return publisher

    def destroy(self) -> None:
        for publisher in self._publishers:
            if self._managed:
                self._node.destroy_lifecycle_publisher(publisher)
            else:
                self._node.destroy_publisher(publisher)
        self._publishers = []

    def wants_overlay(self) -> bool:
        """Whether anyone subscribes to the overlay, raw or compressed (the engine skips it otherwise)."""
        return self.overlay.get_subscription_count() > 0 or self.overlay_compressed.get_subscription_count() > 0

    def publish_info(self, engine: Any, stamp: Any) -> None:
        self.info.publish(info_message(self._info_type, Header(stamp=stamp), engine))

    @staticmethod
    def encode(result: Any, header: Any) -> tuple[Image, Image]:
        """The fused image and labels of an engine result as messages (built before `publish` is called, outside
        the node's publish lock)."""
        return (numpy_to_image(result.fused_rgb, "rgb8", header=header),
                numpy_to_image(result.labels, "mono8", header=header))

    def publish(self, result: Any, images: tuple[Image, Image], *, thermal_stamp: Any, camera_info: CameraInfo | None,
                want_overlay: bool, rgb_stamp: Any = None, missing_input: str = "") -> None:
        """Every output of a fused pair (`images` from `encode`), stamped with the RGB input's header. The fused
        image, overlay, confidence and camera info only when subscribed (labels and mafs/result always). One camera
        alone: `missing_input` names the silent one, the images carry the other's header, the missing stamp is
        zero (`rgb_stamp`, `thermal_stamp`) and camera info is not republished for thermal alone."""
        fused, labels = images
        header = fused.header
        if self.fused.get_subscription_count() > 0:
            self.fused.publish(fused)
        self.labels.publish(labels)
        if self.fused_compressed.get_subscription_count() > 0:
            self.fused_compressed.publish(self._jpeg(result.fused_rgb, header))
        if want_overlay and self.overlay.get_subscription_count() > 0:
            self.overlay.publish(numpy_to_image(result.overlay, "rgb8", header=header))
        if want_overlay and self.overlay_compressed.get_subscription_count() > 0:
            self.overlay_compressed.publish(self._jpeg(result.overlay, header))
        confidence = Image()
        if result.confidence is not None:
            confidence = numpy_to_image(result.confidence.astype(np.float32, copy=False), "32FC1", header=header)
            if self.confidence.get_subscription_count() > 0:
                self.confidence.publish(confidence)
        self.result.publish(result_message(self._result_type, header, fused=fused, labels=labels,
                                           confidence=confidence, thermal_stamp=thermal_stamp, timings=result.timings,
                                           rgb_stamp=rgb_stamp, missing_input=missing_input))
        if camera_info is not None and self.camera_info.get_subscription_count() > 0:
            info = copy.copy(camera_info)  # the cached message may be replaced concurrently; never edit it
            info.header = header
            self.camera_info.publish(info)

    def _jpeg(self, rgb: Any, header: Header) -> CompressedImage:
        data = array.array("B")  # kept as is by rclpy; bytes would be checked element by element
        data.frombytes(encode_jpeg(rgb, self.jpeg_quality))
        return CompressedImage(header=header, format=JPEG_FORMAT, data=data)
