"""The MAFS node (thermal + RGB in, fused image and semantic labels out), optionally with rviz2.

    ros2 launch mafs_ros mafs.launch.py rgb_topic:=/camera/color/image_raw thermal_topic:=/thermal/image_raw
    ros2 launch mafs_ros mafs.launch.py namespace:=front device:=cuda rviz:=true
    ros2 launch mafs_ros mafs.launch.py lifecycle:=true    # a managed node, configured and activated at launch
    ros2 launch mafs_ros mafs.launch.py lifecycle:=true autostart:=false   # left to a lifecycle manager

`ros2 launch mafs_ros mafs.launch.py --show-args` lists the arguments; launch/README.md explains them.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from rclpy.expand_topic_name import expand_topic_name

PACKAGE = 'mafs_ros'
NODE_NAME = 'mafs'


def _large_image_env(share: str) -> dict:
    # config/fastdds_large_images.xml unless the user chose Fast DDS settings: with Fast DDS's defaults, images
    # larger than its shared-memory segment go over fragmented UDP and are often lost (README, transport section).
    chosen = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_BUILTIN_TRANSPORTS')
    if any(os.environ.get(name) for name in chosen):
        return {}
    profile = os.path.join(share, 'config', 'fastdds_large_images.xml')
    # Fast DDS 2 (Humble, Iron, Jazzy) reads FASTRTPS_...; Fast DDS 3 reads FASTDDS_... and warns about the other.
    old = os.environ.get('ROS_DISTRO', '').strip().lower() in ('humble', 'iron', 'jazzy')
    return {'FASTRTPS_DEFAULT_PROFILES_FILE' if old else 'FASTDDS_DEFAULT_PROFILES_FILE': profile}


def _nodes(context, rviz_config: str) -> list:
    # An empty argument means "not given": the parameter is then left out so that the params file's value stands.
    overrides = {
        'checkpoint': LaunchConfiguration('checkpoint').perform(context),
        'device': LaunchConfiguration('device').perform(context),
    }
    # value_type=str: launch would otherwise read the text as YAML (" #" starts a comment, "2024" is an integer).
    given = {name: ParameterValue(value, value_type=str) for name, value in overrides.items() if value}
    # A managed node is a LifecycleNode, so that launch can see and drive its transitions; it configures and
    # activates itself when `autostart` is true (on every ROS 2 release, unlike launch_ros's own autostart).
    node_type = LifecycleNode if LaunchConfiguration('lifecycle').perform(context) == 'true' else Node
    mafs = node_type(
        package=PACKAGE,
        executable='mafs_node',
        name=NODE_NAME,
        namespace=LaunchConfiguration('namespace'),
        parameters=[
            LaunchConfiguration('params_file'),
            {'use_sim_time': LaunchConfiguration('use_sim_time'), 'lifecycle': LaunchConfiguration('lifecycle'),
             'autostart': LaunchConfiguration('autostart'), **given},
        ],
        remappings=[
            ('rgb/image', LaunchConfiguration('rgb_topic')),
            ('thermal/image', LaunchConfiguration('thermal_topic')),
            ('rgb/camera_info', LaunchConfiguration('camera_info_topic')),
        ],
        additional_env=_large_image_env(get_package_share_directory(PACKAGE)),
        output='screen',
    )

    # config/mafs.rviz names the node's topics in the root namespace with the default input names; rviz2 runs
    # there, so its subscriptions are remapped to wherever namespace and the topic arguments put them.
    namespace = '/' + LaunchConfiguration('namespace').perform(context).strip('/')
    rgb_topic = LaunchConfiguration('rgb_topic').perform(context)
    thermal_topic = LaunchConfiguration('thermal_topic').perform(context)
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        arguments=['-d', rviz_config],
        parameters=[{'use_sim_time': LaunchConfiguration('use_sim_time')}],
        remappings=[
            ('/rgb/image', expand_topic_name(rgb_topic, NODE_NAME, namespace)),
            ('/thermal/image', expand_topic_name(thermal_topic, NODE_NAME, namespace)),
            ('/fused/image', expand_topic_name('fused/image', NODE_NAME, namespace)),
            ('/segmentation/overlay', expand_topic_name('segmentation/overlay', NODE_NAME, namespace)),
            ('/segmentation/labels', expand_topic_name('segmentation/labels', NODE_NAME, namespace)),
        ],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='screen',
    )
    return [mafs, rviz]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument(
            'rgb_topic', default_value='rgb/image',
            description='RGB sensor_msgs/Image topic (a relative name resolves in the namespace)'),
        DeclareLaunchArgument(
            'thermal_topic', default_value='thermal/image',
            description='Thermal sensor_msgs/Image topic (mono8, mono16, 16UC1, 32FC1, ...)'),
        DeclareLaunchArgument(
            'camera_info_topic', default_value='rgb/camera_info',
            description='CameraInfo of the RGB camera, republished on fused/camera_info (optional)'),
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'mafs.yaml'),
            description='Parameters file of the node'),
        DeclareLaunchArgument(
            'checkpoint', default_value='',
            description='Checkpoint (.safetensors); empty: the params file decides'),
        DeclareLaunchArgument(
            'device', default_value='',
            description='auto | cpu | cuda | cuda:N; empty: the params file decides'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false', choices=['true', 'false'],
            description='Follow /clock (bag replay, simulation)'),
        DeclareLaunchArgument(
            'lifecycle', default_value='false', choices=['true', 'false'],
            description='Managed node (LifecycleNode): driven by ros2 lifecycle set or a lifecycle manager'),
        DeclareLaunchArgument(
            'autostart', default_value='true', choices=['true', 'false'],
            description='With lifecycle:=true, configure and activate at launch; false: wait for a manager'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and of its relative topics'),
        DeclareLaunchArgument(
            'rviz', default_value='false', choices=['true', 'false'],
            description='Also start rviz2 with config/mafs.rviz'),
        OpaqueFunction(function=_nodes, kwargs={'rviz_config': os.path.join(share, 'config', 'mafs.rviz')}),
    ])
