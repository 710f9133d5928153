"""ROS 2 side of mafs_ros. Without rclpy (also used by replay, calibrate and the CLI): conversions (Image <->
numpy), pairing, registration, frames (decoded inputs), results (the result messages), frame_loss, transport.
With rclpy: node and its parts (parameters, diagnostics, outputs, lifecycle; worker holds its threads) and
bench_node."""
