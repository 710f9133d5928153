"""Session set-up and fixtures shared by every test module."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mafs_ros.ros.transport import use_large_image_profile

# Fast DDS reads its profile once per process, when the first participant is created. Tests create
# participants in this process (nodes, players, recorders) in whatever order pytest runs them, so the transport
# users are told to configure for images is set here, before any of them: otherwise the first test to create one
# decides for all the others (the demo's player then sent 640x480 frames over fragmented UDP and lost them).
use_large_image_profile(os.environ)
# The onnxruntime backend (the default on a CPU) caches the graphs it exports per user; the tests keep theirs in
# a folder of their own, shared by the processes they start, so that the user's cache is never touched.
os.environ["MAFS_ROS_CACHE"] = tempfile.mkdtemp(prefix="mafs_ros_test_cache_")
atexit.register(shutil.rmtree, os.environ["MAFS_ROS_CACHE"], ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; scripts/gpu_check.sh runs them)")


@pytest.fixture
def tiny_bag(tmp_path) -> Path:
    """An MCAP bag of two 32x32 RGB/thermal pairs on the node's default topics (plain grey images)."""
    from mafs_ros.bags import write_pairs_bag

    pairs = [(np.full((32, 32, 3), 100 + i, np.uint8), np.full((32, 32), 50 + i, np.uint8)) for i in range(2)]
    path = tmp_path / "tiny_bag"
    write_pairs_bag(path, pairs)
    return path


@pytest.fixture(scope="module")
def engine():
    """The replay tests' engine: the stand-in network (fused image = mean of the inputs) on the CPU."""
    from stand_in_net import KnownNet

    from mafs_ros.engine import MafsEngine

    return MafsEngine(model=KnownNet(fused="mean"), device="cpu")
