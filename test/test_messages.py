"""The package's ROS messages (msg/) and manifest (package.xml).

(a) the generated `mafs_ros.msg` types have the fields and types of msg/*.msg and live in the same
    `mafs_ros` package as the Python sources;
(b) a FusedSegmentation with real Image payloads crosses real rclpy / DDS between two nodes unchanged;
(c) package.xml is valid for catkin_pkg and declares what CMakeLists.txt and msg/ use.
"""

import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# rosidl's parser (lark 0.12) imports the deprecated sre_* modules when rclpy loads type descriptions.
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")


# ---------------------------------------------------------------------------------------------------------
# (a) generated types
# ---------------------------------------------------------------------------------------------------------

FUSED_FIELDS = {
    'header': 'std_msgs/Header',
    'fused': 'sensor_msgs/Image',
    'labels': 'sensor_msgs/Image',
    'confidence': 'sensor_msgs/Image',
    'rgb_stamp': 'builtin_interfaces/Time',
    'thermal_stamp': 'builtin_interfaces/Time',
    'preprocess_ms': 'float',
    'inference_ms': 'float',
    'postprocess_ms': 'float',
    'missing_input': 'string',
}

INFO_FIELDS = {
    'header': 'std_msgs/Header',
    'model_id': 'string',
    'model_config': 'string',
    'class_names': 'sequence<string>',
    'palette': 'sequence<uint8>',
    'ignore_id': 'uint8',
}


def test_generated_types_have_the_msg_fields():
    from mafs_ros.msg import FusedSegmentation, SegmentationInfo

    assert FusedSegmentation.get_fields_and_field_types() == FUSED_FIELDS
    assert SegmentationInfo.get_fields_and_field_types() == INFO_FIELDS

    info = SegmentationInfo()
    assert info.ignore_id == 255  # default value from the .msg
    assert list(info.class_names) == [] and len(info.palette) == 0

    fused = FusedSegmentation()
    assert fused.preprocess_ms == 0.0 and fused.confidence.width == 0
    assert fused.confidence.encoding == '' and len(fused.confidence.data) == 0


def test_msg_files_match_generated_fields():
    """Every field declared in msg/*.msg is in the generated type (no stale build)."""
    from mafs_ros import msg as generated

    for name, fields in (('FusedSegmentation', FUSED_FIELDS), ('SegmentationInfo', INFO_FIELDS)):
        declared = []
        for line in (ROOT / 'msg' / f'{name}.msg').read_text().splitlines():
            line = line.split('#', 1)[0].strip()
            if line:
                declared.append(line.split()[1])
        assert declared == list(fields), name
        assert list(getattr(generated, name).get_fields_and_field_types()) == declared


def test_messages_merge_into_the_source_package():
    import mafs_ros.msg

    import mafs_ros

    # Our __init__.py (not the generated empty one) is the package's, and msg/ is merged into its __path__.
    assert hasattr(mafs_ros, '__version__')
    msg_parent = str(Path(mafs_ros.msg.__file__).resolve().parent.parent)
    assert msg_parent in [str(Path(p).resolve()) for p in mafs_ros.__path__]


# ---------------------------------------------------------------------------------------------------------
# (b) real DDS round trip
# ---------------------------------------------------------------------------------------------------------

def _image(np_array, encoding, stamp, frame_id):
    from sensor_msgs.msg import Image

    img = Image()
    img.header.stamp = stamp
    img.header.frame_id = frame_id
    img.height, img.width = np_array.shape[:2]
    img.encoding = encoding
    img.is_bigendian = 0
    img.step = np_array.strides[0]
    img.data = np_array.tobytes()
    return img


def _make_fused_segmentation():
    from builtin_interfaces.msg import Time
    from mafs_ros.msg import FusedSegmentation

    rng = np.random.default_rng(7)
    h, w = 12, 16
    rgb_stamp = Time(sec=1_700_000_000, nanosec=123_456_789)
    thermal_stamp = Time(sec=1_700_000_000, nanosec=98_765_432)
    frame = 'rgb_camera_optical'

    msg = FusedSegmentation()
    msg.header.stamp = rgb_stamp
    msg.header.frame_id = frame
    msg.fused = _image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 'rgb8', rgb_stamp, frame)
    labels = rng.integers(0, 9, (h, w), dtype=np.uint8)
    labels[0, :4] = 255  # ignore
    msg.labels = _image(labels, 'mono8', rgb_stamp, frame)
    msg.confidence = _image(rng.random((h, w), dtype=np.float32), '32FC1', rgb_stamp, frame)
    msg.rgb_stamp = rgb_stamp
    msg.thermal_stamp = thermal_stamp
    msg.preprocess_ms = 1.25
    msg.inference_ms = 42.5
    msg.postprocess_ms = 3.0
    return msg


@pytest.fixture
def ros_context():
    """A private rclpy context: does not touch the global default context other tests may use."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.shutdown(context=context)


def _spin_until(executor, predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=0.05)
    return True


def test_fused_segmentation_crosses_dds(ros_context):
    from mafs_ros.msg import FusedSegmentation
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    # A unique topic: other processes on the same ROS domain cannot interfere.
    topic = f'/mafs_test_{os.getpid()}_{uuid.uuid4().hex[:8]}/fused_segmentation'
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)

    sent = _make_fused_segmentation()
    received = []
    pub_node = Node('mafs_test_publisher', context=ros_context)
    sub_node = Node('mafs_test_subscriber', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    try:
        publisher = pub_node.create_publisher(FusedSegmentation, topic, qos)
        sub_node.create_subscription(FusedSegmentation, topic, received.append, qos)
        executor.add_node(pub_node)
        executor.add_node(sub_node)

        assert _spin_until(executor, lambda: publisher.get_subscription_count() > 0, 10.0), \
            'subscription was never matched (DDS discovery)'
        # Publish until the first message arrives (a sample sent right after matching may race discovery).
        deadline = time.monotonic() + 10.0
        while not received and time.monotonic() < deadline:
            publisher.publish(sent)
            _spin_until(executor, lambda: bool(received), 0.5)
        assert received, 'no FusedSegmentation received within 10 s'
    finally:
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()

    got = received[0]
    assert got == sent  # generated __eq__ compares every field, payloads included
    assert got.header.frame_id == 'rgb_camera_optical'
    assert (got.rgb_stamp.sec, got.rgb_stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert (got.thermal_stamp.sec, got.thermal_stamp.nanosec) == (1_700_000_000, 98_765_432)
    assert got.inference_ms == pytest.approx(42.5)
    fused = np.frombuffer(bytes(got.fused.data), np.uint8).reshape(got.fused.height, got.fused.width, 3)
    assert np.array_equal(fused, np.frombuffer(bytes(sent.fused.data), np.uint8).reshape(fused.shape))
    confidence = np.frombuffer(bytes(got.confidence.data), np.float32).reshape(12, 16)
    assert got.confidence.encoding == '32FC1' and np.all((confidence >= 0) & (confidence < 1))
    labels = np.frombuffer(bytes(got.labels.data), np.uint8).reshape(12, 16)
    assert got.labels.encoding == 'mono8' and labels[0, 0] == 255


def test_segmentation_info_serialization_roundtrip():
    from mafs_ros.msg import SegmentationInfo
    from rclpy.serialization import deserialize_message, serialize_message

    info = SegmentationInfo()
    info.model_id = 'mafs-lite@0123abcd'
    info.model_config = 'mafs-lite'
    info.class_names = ['unlabeled', 'car', 'person']
    info.palette = [0, 0, 0, 64, 0, 128, 64, 64, 0]
    data = serialize_message(info)
    back = deserialize_message(data, SegmentationInfo)
    assert back == info and back.ignore_id == 255
    assert len(back.palette) == 3 * len(back.class_names)


# ---------------------------------------------------------------------------------------------------------
# (c) package.xml
# ---------------------------------------------------------------------------------------------------------

def _cmake_without_comments():
    return '\n'.join(line.split('#', 1)[0] for line in (ROOT / 'CMakeLists.txt').read_text().splitlines())


def test_package_xml_is_valid_and_complete():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT / 'package.xml'))
    pkg.validate()  # raises InvalidPackage (e.g. on a maintainer e-mail catkin_pkg rejects)
    pkg.evaluate_conditions({})

    assert pkg.name == 'mafs_ros' and pkg.package_format == 3
    assert pkg.get_build_type() == 'ament_cmake'
    assert pkg.licenses == ['Apache-2.0']

    import mafs_ros
    assert pkg.version == mafs_ros.__version__

    names = lambda deps: {d.name for d in deps}  # noqa: E731
    buildtool = names(pkg.buildtool_depends)
    build = names(pkg.build_depends)
    exec_ = names(pkg.exec_depends)
    test = names(pkg.test_depends)

    assert 'ament_cmake' in buildtool
    assert 'rosidl_default_generators' in build | buildtool
    assert 'rosidl_default_runtime' in exec_
    assert 'rosidl_interface_packages' in {g.name for g in pkg.member_of_groups}
    for dep in ('rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'builtin_interfaces',
                'python3-numpy', 'python3-opencv', 'python3-yaml'):
        assert dep in exec_, dep
    assert 'python3-pytest' in test
    # What launch/ starts: the node's launch, rviz2, and ros2 bag play/record (MCAP by default) for replays.
    for dep in ('launch', 'launch_ros', 'rviz2', 'ros2bag', 'rosbag2_storage_mcap'):
        assert dep in exec_, dep

    # Every package CMakeLists.txt finds is declared (Python3 and other CMake modules are not ROS packages).
    cmake = _cmake_without_comments()
    found = set(re.findall(r'find_package\(\s*(\w+)', cmake)) - {'Python3'}
    assert found, 'no find_package() found in CMakeLists.txt'
    for dep in found:
        assert dep in buildtool | build, f'CMakeLists.txt finds {dep} but package.xml does not depend on it'

    # The message dependencies are needed at build and at run time.
    m = re.search(r'rosidl_generate_interfaces\((.*?)\)', cmake, re.S)
    assert m, 'rosidl_generate_interfaces() not found'
    msg_deps = m.group(1).split('DEPENDENCIES', 1)[1].split()
    assert set(msg_deps) == {'std_msgs', 'sensor_msgs', 'builtin_interfaces'}
    for dep in msg_deps:
        assert dep in build and dep in exec_, dep

    # ... and they cover every package the .msg files reference.
    for path in (ROOT / 'msg').glob('*.msg'):
        for pkg_name in re.findall(r'^\s*(\w+)/\w+', path.read_text(), re.M):
            assert pkg_name in msg_deps, f'{path.name} uses {pkg_name} but it is not a message dependency'
    # ... and every .msg file is generated.
    generated = set(re.findall(r'"msg/(\w+)\.msg"', m.group(1)))
    assert generated == {p.stem for p in (ROOT / 'msg').glob('*.msg')}
