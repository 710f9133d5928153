"""Interface constants shared by the node, replay, bags, the CLI, export and the engine (no torch, no ROS).

Everything a user can see from outside the package (topic names, parameter defaults, file-format names) is
defined here once; the launch files and YAML parameter files are checked against it by the tests.
"""

from __future__ import annotations

from pathlib import Path

# --- ROS interface --------------------------------------------------------------------------------------
NODE_NAME = "mafs"
# Relative names: the node resolves them in its namespace (remap them like any ROS topic). A bag stores
# absolute names: see `absolute_topic`.
RGB_TOPIC = "rgb/image"
THERMAL_TOPIC = "thermal/image"
CAMERA_INFO_TOPIC = "rgb/camera_info"
FUSED_TOPIC = "fused/image"
FUSED_CAMERA_INFO_TOPIC = "fused/camera_info"
LABELS_TOPIC = "segmentation/labels"
OVERLAY_TOPIC = "segmentation/overlay"
CONFIDENCE_TOPIC = "segmentation/confidence"
INFO_TOPIC = "segmentation/info"
RESULT_TOPIC = "mafs/result"
GROUND_TRUTH_TOPIC = "segmentation/ground_truth"  # bags only: the label a replay scores against
DIAGNOSTICS_TOPIC = "/diagnostics"
# image_transport's `compressed` plugin publishes and subscribes `<base topic>/compressed` (CompressedImage).
COMPRESSED_SUFFIX = "compressed"
def compressed_topic(base_topic: str) -> str:
    """The topic image_transport's compressed plugin uses for `base_topic`: "rgb/image" -> "rgb/image/compressed"."""
    return f"{base_topic.rstrip('/')}/{COMPRESSED_SUFFIX}"


# The node's subscriptions (the cameras also as `compressed_topic`) and its publishers besides /diagnostics (the
# launch files and rviz config are checked against them).
INPUT_TOPICS = (RGB_TOPIC, THERMAL_TOPIC, CAMERA_INFO_TOPIC)
OUTPUT_TOPICS = (FUSED_TOPIC, LABELS_TOPIC, OVERLAY_TOPIC, CONFIDENCE_TOPIC, RESULT_TOPIC, INFO_TOPIC,
                 FUSED_CAMERA_INFO_TOPIC, compressed_topic(FUSED_TOPIC), compressed_topic(OVERLAY_TOPIC))

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
RESULT_TYPE = "mafs_ros/msg/FusedSegmentation"
INFO_TYPE = "mafs_ros/msg/SegmentationInfo"


def absolute_topic(name: str) -> str:
    """A topic as rosbag2 stores it for a node in the root namespace: "rgb/image" -> "/rgb/image"."""
    return name if name.startswith("/") else "/" + name


# --- Pairing (node parameters sync.*, replay and calibrate options) ----------------------------------------
SLOP_S = 0.05  # largest |thermal stamp + offset - RGB stamp| of a pair
QUEUE_SIZE = 10  # frames held per stream while waiting for a partner
THERMAL_OFFSET_S = 0.0  # added to thermal stamps before pairing
# Longest wait for a nearer partner once one within slop is there: half a frame period at 10 Hz, so 10-30 Hz
# cameras pair without waiting for the next frame in the common case.
MAX_WAIT_S = 0.05

# --- Registration ---------------------------------------------------------------------------------------
IDENTITY_HOMOGRAPHY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# --- Images ---------------------------------------------------------------------------------------------
# ITU-R BT.601 luma weights of R, G, B: the Y of the official YCbCr, of mafs-lite's fusion and of the metrics.
LUMA_BT601 = (0.299, 0.587, 0.114)

# --- Engine ---------------------------------------------------------------------------------------------
PRECISION_NAMES = ("fp32", "fp16", "bf16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
SIZE_POLICIES = ("resize", "pad")
# What runs the network (MafsEngine backend): auto = onnxruntime for fp32 on a CPU, PyTorch otherwise.
BACKEND_NAMES = ("auto", "torch", "onnxruntime")

# --- ONNX export format (written by backends/onnx_export.py, read by the onnxruntime backends) ---------------------
ONNX_FORMAT_VERSION = 1
ONNX_INPUT_NAMES = ("visible", "thermal")
ONNX_OUTPUT_NAMES = ("fused", "semantic")
ONNX_METADATA_FIELDS = ("model_config", "class_names", "palette", "input_conventions", "trained", "description")

# --- Bundled data ---------------------------------------------------------------------------------------
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"

# --- Choices the CLI offers (it builds every parser without importing torch) ------------------------------
# ONNX opsets `mafs export` writes. 17: the first with LayerNormalization, and what TensorRT 8.5+ (JetPack 5
# and 6) parses. 20: the newest the TorchScript exporter writes.
ONNX_MIN_OPSET, ONNX_MAX_OPSET = 17, 20
ONNX_DEFAULT_OPSET = 17
BENCH_CONFIGS = ("mafs", "mafs-lite")  # the model configs `mafs bench` times
ONNX_VERSION_FIELD = "mafs_ros_onnx_version"  # the metadata field holding ONNX_FORMAT_VERSION
