"""The ROS 2 node: node and its parts (parameters, diagnostics, outputs, lifecycle; worker holds its threads),
bench_node, and transport (the Fast DDS profile for large images; no rclpy, set before the first participant).
What it shares with replay and calibrate without ROS is in mafs_ros.stream."""
