"""Replay a bag through the MAFS node on the bag's clock; optionally record what the node received and published.

    ros2 launch mafs_ros replay.launch.py bag:=BAG rgb_topic:=/camera/color/image_raw thermal_topic:=/thermal/raw
    ros2 launch mafs_ros replay.launch.py bag:=BAG record:=true record_path:=run1
    mafs replay --from-recording run1 --out run1_report

(`mafs replay --from-recording` reads the default topics; with topic arguments or a namespace give it the
recorded names: --rgb-topic, --thermal-topic, --result-topic.)

The arguments of mafs.launch.py (topics, params_file, checkpoint, device, lifecycle, namespace, rviz) apply here
too: an included launch file shares the launch configurations of the file including it. use_sim_time is always
true. With lifecycle:=true the node fuses only once it is configured and activated (`delay` gives time for that).
The launch ends a few seconds after the bag (unless loop:=true), which also closes the recording.
"""

import os

from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    OpaqueFunction,
    Shutdown,
    TimerAction,
)
from launch.conditions import evaluate_condition_expression
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions
from rclpy.expand_topic_name import expand_topic_name

# The node's inputs as it received them, the outputs `mafs replay --from-recording` scores (fused/image,
# segmentation/labels, mafs/result) or reads (segmentation/info: class names; /diagnostics: drops, latency), and
# the bag's ground truth if it has any (the default of `mafs replay --labels-topic`; recording a topic that never
# appears is harmless). Relative names resolve in the node's namespace.
RECORDED_TOPICS = (
    LaunchConfiguration('rgb_topic'),
    LaunchConfiguration('thermal_topic'),
    LaunchConfiguration('camera_info_topic'),
    'fused/image',
    'segmentation/labels',
    'mafs/result',
    'segmentation/info',
    '/diagnostics',
    '/segmentation/ground_truth',
)

# After the last message of the bag: time for the node to fuse the pair it holds before everything stops.
FINISH_GRACE_S = 5.0


def _large_image_env() -> dict:
    # The player publishes the images, so its Fast DDS settings decide whether they arrive (README, transport
    # section): config/fastdds_large_images.xml unless the user chose Fast DDS settings.
    from ament_index_python.packages import get_package_share_directory

    chosen = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_BUILTIN_TRANSPORTS')
    if any(os.environ.get(name) for name in chosen):
        return {}
    profile = os.path.join(get_package_share_directory('mafs_ros'), 'config', 'fastdds_large_images.xml')
    # Fast DDS 2 (Humble, Iron, Jazzy) reads FASTRTPS_...; Fast DDS 3 reads FASTDDS_... and warns about the other.
    old = os.environ.get('ROS_DISTRO', '').strip().lower() in ('humble', 'iron', 'jazzy')
    return {'FASTRTPS_DEFAULT_PROFILES_FILE' if old else 'FASTDDS_DEFAULT_PROFILES_FILE': profile}


def _bag_processes(context) -> list:
    loop = evaluate_condition_expression(context, [LaunchConfiguration('loop')])
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', LaunchConfiguration('bag'), '--clock', '--rate', LaunchConfiguration('rate')]
        + (['--loop'] if loop else []),
        additional_env=_large_image_env(),
        output='screen',
        on_exit=None if loop else [TimerAction(period=FINISH_GRACE_S, actions=[Shutdown(reason='bag played')])],
    )
    # The delay is a timer here rather than `ros2 bag play --delay`, whose /clock during the delay differs
    # between rosbag2 versions. The recorder is not delayed; with --use-sim-time it stamps messages with the
    # bag's clock (so receive times and header stamps compare) and writes nothing before the first /clock.
    processes = [TimerAction(period=float(LaunchConfiguration('delay').perform(context)), actions=[play])]
    if evaluate_condition_expression(context, [LaunchConfiguration('record')]):
        # ros2 bag record runs in the root namespace: give it the names the node's topics have in its own.
        namespace = '/' + LaunchConfiguration('namespace').perform(context).strip('/')
        output = LaunchConfiguration('record_path').perform(context)
        record = ['ros2', 'bag', 'record', '--use-sim-time'] + (['--output', output] if output else [])
        for topic in RECORDED_TOPICS:
            name = perform_substitutions(context, normalize_to_list_of_substitutions(topic))
            record.append(expand_topic_name(name, 'mafs', namespace))
        processes.append(ExecuteProcess(cmd=record, output='screen'))
    return processes


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument('bag', description='Bag to replay (folder with metadata.yaml, or a .mcap/.db3 file)'),
        DeclareLaunchArgument('rate', default_value='1.0', description='Playback rate (1.0: real time)'),
        DeclareLaunchArgument(
            'loop', default_value='false', choices=['true', 'false'], description='Play the bag again and again'),
        DeclareLaunchArgument(
            'delay', default_value='5.0',
            description='Seconds before playing, so that the node has loaded its model when the first frame comes'),
        DeclareLaunchArgument(
            'record', default_value='false', choices=['true', 'false'],
            description="Record the node's inputs and outputs with ros2 bag record --use-sim-time"),
        DeclareLaunchArgument(
            'record_path', default_value='',
            description='Output bag of the recording (must not exist); empty: rosbag2_<date>_<time>'),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mafs.launch.py')),
            launch_arguments={'use_sim_time': 'true'}.items(),
        ),
        # After the include: the node's topic and namespace arguments are declared there.
        OpaqueFunction(function=_bag_processes),
    ])
