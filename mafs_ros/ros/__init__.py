"""ROS 2 side of mafs_ros: message conversions, frame pairing, registration and the node (only node.py imports
rclpy)."""
