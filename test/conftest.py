"""Session set-up shared by every test module."""

import os

from mafs_ros.ros.transport import use_large_image_profile

# Fast DDS reads its profile once per process, when the first participant is created. Tests create
# participants in this process (nodes, players, recorders) in whatever order pytest runs them, so the transport
# users are told to configure for images is set here, before any of them: otherwise the first test to create one
# decides for all the others (the demo's player then sent 640x480 frames over fragmented UDP and lost them).
use_large_image_profile(os.environ)
