"""What the node, `mafs replay` and `mafs calibrate` share about camera streams, without ROS or torch:
conversions (sensor_msgs/Image <-> numpy, for rclpy and rosbags messages alike), pairing (approximate-time
pairing of the two cameras), registration (the thermal -> RGB homography), frames (decoded inputs), results (the
result messages' fields) and frame_loss (lost-frame estimates from stamps)."""
