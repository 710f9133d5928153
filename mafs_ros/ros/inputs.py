"""The node's camera subscriptions: each input raw (sensor_msgs/Image on its topic) or compressed (image_transport's
`compressed` plugin: sensor_msgs/CompressedImage on `<topic>/compressed`), as parameters rgb_transport and
thermal_transport say, and the publishers on those topics whose message type clashes with the subscription.

"auto" follows the publishers: raw where the topic has an Image publisher, compressed where only `<topic>/compressed`
has a CompressedImage one. While neither has a publisher the input listens raw and looks again at every
`refresh` (the diagnostics timer), so that a camera driver started after the node is still found. Remapping the
input topic (rgb/image:=/camera/image_raw) moves both, as image_transport does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sensor_msgs.msg import CompressedImage, Image

from ..constants import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, compressed_topic

_TYPES = {"raw": (Image, IMAGE_TYPE), "compressed": (CompressedImage, COMPRESSED_IMAGE_TYPE)}


def choose_transport(setting: str, base_types: list[str], compressed_types: list[str]) -> tuple[str, bool]:
    """The transport an input uses, and whether that is settled. `setting`: raw, compressed or auto;
    `base_types` / `compressed_types`: the message types published on the input topic and on `<topic>/compressed`.
    auto: raw if the topic has an Image publisher, compressed if `<topic>/compressed` has a CompressedImage one,
    else raw for now (unsettled)."""
    if setting != "auto":
        return setting, True
    if IMAGE_TYPE in base_types:
        return "raw", True
    if COMPRESSED_IMAGE_TYPE in compressed_types:
        return "compressed", True
    return "raw", False


@dataclass
class _Input:
    logical: str  # the node's topic name (rgb/image), the key of its counters
    setting: str
    transport: str = ""
    topic: str = ""  # the resolved topic subscribed to
    subscription: Any = None
    settled: bool = False  # auto: no publisher found yet, the choice is looked at again


class InputSubscriptions:
    """The two camera subscriptions of an active node (see the module docstring).

    subscribe(msg_type, topic, callback): creates one subscription (the node adds QoS, callback group and event
    handlers) and returns it; destroy(subscription) removes it; publisher_types(topic): the message types
    of the topic's publishers.
    """

    def __init__(self, settings: dict[str, str], callbacks: dict[str, Callable[[Any], None]],
                 subscribe: Callable[[type, str, Callable[[Any], None]], Any], destroy: Callable[[Any], None],
                 publisher_types: Callable[[str], list[str]], resolve: Callable[[str], str]) -> None:
        self._inputs = {logical: _Input(logical, setting) for logical, setting in settings.items()}
        self._callbacks = callbacks
        self._subscribe, self._destroy = subscribe, destroy
        self._publisher_types, self._resolve = publisher_types, resolve
        for entry in self._inputs.values():
            self._update(entry)

    def refresh(self) -> list[str]:
        """Looks again at the publishers of the unsettled auto inputs; returns a line for each one that changed
        transport (for the log)."""
        changed = []
        for entry in self._inputs.values():
            if not entry.settled:
                before = entry.transport
                self._update(entry)
                if entry.transport != before:
                    changed.append(f"{entry.topic}: {self.describe(entry.logical)}")
        return changed

    def describe(self, logical: str) -> str:
        entry = self._inputs[logical]
        return f"{entry.transport} ({entry.setting})" if entry.setting == "auto" else entry.transport

    def topic(self, logical: str) -> str:
        """The topic an input subscribes to now."""
        return self._inputs[logical].topic

    def type_clashes(self) -> dict[str, str]:
        """Input topic -> a line naming the topic and both types, for each subscription with a publisher of
        another message type on its topic (it will never deliver a frame)."""
        clashes = {}
        for entry in self._inputs.values():
            wanted = _TYPES[entry.transport][1]
            others = sorted({t for t in self._publisher_types(entry.topic) if t != wanted})
            if others:
                hint = ("set {0}_transport to compressed and remap {1} to the base topic (without /compressed)"
                        if COMPRESSED_IMAGE_TYPE in others else "publish {2} there")
                name = entry.logical.split("/")[0]
                clashes[entry.logical] = (
                    f"message type clash on {entry.topic}: a publisher offers {', '.join(others)}, this node "
                    f"subscribes {wanted}; no frame of it will arrive ({hint.format(name, entry.topic, wanted)})")
        return clashes

    def close(self) -> None:
        for entry in self._inputs.values():
            if entry.subscription is not None:
                self._destroy(entry.subscription)
                entry.subscription = None

    def _update(self, entry: _Input) -> None:
        base = self._resolve(entry.logical)
        transport, entry.settled = choose_transport(
            entry.setting, self._publisher_types(base), self._publisher_types(compressed_topic(base)))
        if transport == entry.transport and entry.subscription is not None:
            return
        if entry.subscription is not None:
            self._destroy(entry.subscription)
        entry.transport = transport
        entry.topic = base if transport == "raw" else compressed_topic(base)
        entry.subscription = self._subscribe(_TYPES[transport][0], entry.topic, self._callbacks[entry.logical])
