"""The managed node (parameter `lifecycle: true`) over real rclpy + DDS: every transition requested through the
node's `change_state` service and checked through `get_state`, as `ros2 lifecycle set` / `get` do."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import weakref

import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from mafs_ros.msg import FusedSegmentation
from rcl_interfaces.msg import Log
from rclpy.parameter import Parameter
from ros_harness import DOMAIN_ID, PAIR_SIZE, RosHarness, diagnostics_values, image_msg
from sensor_msgs.msg import Image
from stand_in_net import KnownNet

from mafs_ros.engine import MafsEngine
from mafs_ros.io.samples import sample_pairs
from mafs_ros.ros.bench_node import StandInEngine
from mafs_ros.ros.node import MafsNode

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
INFER_S = 0.3  # the stand-in's forward pass: long enough to deactivate the node while one is running


class LifecycleClient:
    """Clients of a node's lifecycle services, on the harness's node."""

    def __init__(self, ros: RosHarness, node: str = "/mafs") -> None:
        self._ros = ros
        self._change = ros.node.create_client(ChangeState, f"{node}/change_state")
        self._get = ros.node.create_client(GetState, f"{node}/get_state")
        assert self._change.wait_for_service(timeout_sec=10) and self._get.wait_for_service(timeout_sec=10)
        # A server seen in the graph may not have matched this client yet (or be a destroyed node of an earlier
        # test still in discovery): a request sent then is lost, so ask until the node answers.
        deadline = time.monotonic() + 10
        while self._call(self._get, GetState.Request(), timeout_s=0.5) is None:
            assert time.monotonic() < deadline, f"{node} does not answer get_state"

    def _call(self, client, request, timeout_s: float = 10.0):
        future = client.call_async(request)
        if not self._ros.wait_for(future.done, timeout_s):
            client.remove_pending_request(future)
            return None
        return future.result()

    def _answer(self, client, request):
        response = self._call(client, request)
        assert response is not None, "no answer from the lifecycle service"
        return response

    def transition(self, label: str) -> bool:
        """Requests the transition by its label (configure, activate, deactivate, cleanup, shutdown)."""
        return self._answer(self._change, ChangeState.Request(transition=Transition(label=label))).success

    def state(self) -> str:
        return self._answer(self._get, GetState.Request()).current_state.label


@pytest.fixture
def ros():
    harness = RosHarness()
    harness.subscribe(FusedSegmentation, "mafs/result")
    harness.subscribe(DiagnosticArray, "/diagnostics")
    yield harness
    harness.close()


def managed_node(ros: RosHarness, engine=None, **parameters) -> MafsNode:
    overrides = [Parameter(name, value=value)
                 for name, value in {"lifecycle": True, "autostart": False, "diagnostics_period_s": 0.2,
                                     **parameters}.items()]
    node = MafsNode(engine=engine, context=ros.context, parameter_overrides=overrides)
    ros.add_node(node)
    return node


def publish_pair(ros: RosHarness, stamp_ns: int) -> None:
    (rgb, thermal), = sample_pairs(PAIR_SIZE, 1)
    ros.publisher(Image, "thermal/image").publish(image_msg(thermal, "mono8", stamp_ns, "camera_thermal"))
    ros.publisher(Image, "rgb/image").publish(image_msg(rgb, "rgb8", stamp_ns, "camera_rgb"))


def input_topics(node: MafsNode) -> set[str]:
    return {subscription.topic_name for subscription in node.subscriptions} & {"/rgb/image", "/thermal/image"}


def test_configure_activate_deactivate_cleanup_shutdown_through_the_services(ros):
    engine = StandInEngine(128, 160, delay_s=INFER_S)
    engine_alive = weakref.ref(engine)
    node = managed_node(ros, engine=engine)
    del engine  # from now on only the node holds it
    lifecycle = LifecycleClient(ros)

    assert lifecycle.state() == "unconfigured"
    assert input_topics(node) == set()
    assert ros.wait_for(lambda: "unconfigured" in diagnostics_values(ros)[1], 5)

    assert lifecycle.transition("configure")
    assert lifecycle.state() == "inactive"
    assert node._engine is not None and input_topics(node) == set()  # loaded, but not listening yet

    assert lifecycle.transition("activate")
    assert lifecycle.state() == "active"
    ros.wait_for_subscribers(["rgb/image", "thermal/image"])
    publish_pair(ros, T0)
    assert ros.wait_for(lambda: len(ros.messages("mafs/result")) == 1, 5)

    # A pair in the forward pass when the node is deactivated is dropped, and counted.
    publish_pair(ros, T0 + 100 * MS)
    assert ros.wait_for(lambda: node.counters()["pairing"]["matched"] == 2, 5)
    assert lifecycle.transition("deactivate")
    assert lifecycle.state() == "inactive"
    assert input_topics(node) == set()
    assert ros.wait_for(lambda: ros.publisher(Image, "rgb/image").get_subscription_count() == 0, 5)
    publish_pair(ros, T0 + 200 * MS)
    time.sleep(2 * INFER_S)  # longer than the forward pass that was running
    assert len(ros.messages("mafs/result")) == 1
    counters = node.counters()
    assert counters["dropped_on_deactivate"] == 1 and counters["published"] == 1
    assert counters["pairing"]["matched"] == counters["published"] + counters["dropped"]
    assert ros.wait_for(lambda: diagnostics_values(ros)[2].get("dropped_on_deactivate") == "1", 5)
    level, message, values = diagnostics_values(ros)
    assert level == DiagnosticStatus.OK and "inactive" in message and values["lifecycle_state"] == "inactive"

    # Active again: it subscribes and fuses again.
    assert lifecycle.transition("activate")
    ros.wait_for_subscribers(["rgb/image", "thermal/image"])
    publish_pair(ros, T0 + 300 * MS)
    assert ros.wait_for(lambda: len(ros.messages("mafs/result")) == 2, 5)
    assert lifecycle.transition("deactivate")

    assert lifecycle.transition("cleanup")
    assert lifecycle.state() == "unconfigured"
    assert node._engine is None
    gc.collect()
    assert engine_alive() is None, "the engine outlived cleanup"
    assert ros.wait_for(lambda: ros.node.count_publishers("mafs/result") == 0, 5)

    assert lifecycle.transition("shutdown")
    assert lifecycle.state() == "finalized"
    assert node.finished.done()


def test_a_failed_configure_says_why_and_leaves_the_node_unconfigured(ros):
    ros.subscribe(Log, "/rosout", latched=True)
    node = managed_node(ros, checkpoint="/nonexistent/model.safetensors", device="cpu")
    lifecycle = LifecycleClient(ros)

    assert not lifecycle.transition("configure")
    assert lifecycle.state() == "unconfigured"
    assert node._engine is None and input_topics(node) == set()
    assert ros.wait_for(lambda: any(
        log.level == Log.ERROR and "configure failed" in log.msg and "/nonexistent/model.safetensors" in log.msg
        for log in ros.messages("/rosout")), 5)
    assert ros.wait_for(lambda: diagnostics_values(ros)[0] == DiagnosticStatus.ERROR
                        and "/nonexistent/model.safetensors" in diagnostics_values(ros)[1], 5)
    # Unconfigured, the parameters read by configure may change; configured, they may not.
    assert node.set_parameters([Parameter("checkpoint", value="/elsewhere/model.safetensors")])[0].successful
    assert not node.set_parameters([Parameter("lifecycle", value=False)])[0].successful


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cleanup_gives_the_gpu_memory_back(ros):
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    managed_node(ros, device="cuda")
    lifecycle = LifecycleClient(ros)
    assert lifecycle.transition("configure")
    assert torch.cuda.memory_allocated() > before
    assert lifecycle.transition("cleanup")
    assert torch.cuda.memory_allocated() == before


def test_configured_parameters_wait_for_cleanup(ros):
    node = managed_node(ros, engine=StandInEngine(128, 160))
    lifecycle = LifecycleClient(ros)
    assert lifecycle.transition("configure")
    refused = node.set_parameters([Parameter("qos.input.depth", value=5)])[0]
    assert not refused.successful and "cleanup" in refused.reason
    assert node.set_parameters([Parameter("sync.slop_s", value=0.02)])[0].successful  # runtime: any time
    assert lifecycle.transition("cleanup")
    assert node.set_parameters([Parameter("qos.input.depth", value=5)])[0].successful


def test_shutdown_from_active_stops_fusing_and_releases_the_engine(ros):
    engine = MafsEngine(model=KnownNet(), device="cpu")  # the real engine class, with a stand-in network
    engine_alive = weakref.ref(engine)
    node = managed_node(ros, engine=engine)
    del engine
    lifecycle = LifecycleClient(ros)
    assert lifecycle.transition("configure") and lifecycle.transition("activate")
    assert input_topics(node) == {"/rgb/image", "/thermal/image"}
    assert lifecycle.transition("shutdown")
    assert lifecycle.state() == "finalized" and node.finished.done()
    assert input_topics(node) == set() and node._engine is None
    gc.collect()
    assert engine_alive() is None


def test_autostart_configures_and_activates_at_once_and_a_manager_can_take_over(ros):
    node = managed_node(ros, engine=StandInEngine(128, 160), autostart=True)
    lifecycle = LifecycleClient(ros)
    assert lifecycle.state() == "active" and input_topics(node) == {"/rgb/image", "/thermal/image"}
    ros.wait_for_subscribers(["rgb/image", "thermal/image"])
    publish_pair(ros, T0)
    assert ros.wait_for(lambda: len(ros.messages("mafs/result")) == 1, 10)
    # What nav2's lifecycle_manager does on shutdown: deactivate, cleanup.
    assert lifecycle.transition("deactivate") and lifecycle.transition("cleanup")
    assert lifecycle.state() == "unconfigured"


def test_a_failed_autostart_leaves_the_node_unconfigured_with_the_reason(ros):
    node = managed_node(ros, autostart=True, checkpoint="/nonexistent/model.safetensors", device="cpu")
    assert LifecycleClient(ros).state() == "unconfigured" and node._engine is None
    assert ros.wait_for(lambda: diagnostics_values(ros)[0] == DiagnosticStatus.ERROR
                        and "/nonexistent/model.safetensors" in diagnostics_values(ros)[1], 5)


def test_without_the_parameter_the_node_fuses_at_once_and_offers_no_lifecycle_services(ros):
    node = MafsNode(engine=StandInEngine(128, 160), context=ros.context)
    ros.add_node(node)
    assert input_topics(node) == {"/rgb/image", "/thermal/image"}
    assert not any(service.srv_name.endswith("/change_state") for service in node.services)


def test_executable_loads_the_packaged_model_at_configure_and_exits_after_shutdown(ros):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mafs_ros.ros.node", "--ros-args",
         "-p", "lifecycle:=true", "-p", "autostart:=false", "-p", "device:=cpu", "-p", "warmup:=0"],
        env={**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lifecycle = LifecycleClient(ros)
        assert lifecycle.state() == "unconfigured"
        assert lifecycle.transition("configure") and lifecycle.transition("activate")
        ros.wait_for_subscribers(["rgb/image", "thermal/image"])
        publish_pair(ros, T0)
        assert ros.wait_for(lambda: len(ros.messages("mafs/result")) == 1, 30)
        assert lifecycle.transition("deactivate") and lifecycle.transition("cleanup")
        assert lifecycle.transition("shutdown")
        output, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, output
        assert "Traceback" not in output and "model released" in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
