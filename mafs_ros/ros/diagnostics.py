"""The node's frame accounting and its /diagnostics status: counters, rates, frame loss, QoS problems.

`FrameAccounting` holds the numbers of one configuration; the subscription callbacks, the inference worker and
the diagnostics timer update and read it from their threads. The functions below turn a snapshot of it into
the status a diagnostics message carries.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import QoSCompatibility, QoSProfile, qos_check_compatible

from ..constants import RGB_TOPIC, THERMAL_TOPIC
from ..stats import percentile
from ..stream.degraded import other_camera
from ..stream.frame_loss import FrameLossEstimator

# An input losing more than this share of its recent frames (estimated from stamp gaps) turns the status WARN.
LOSS_WARN_PERCENT = 3.0
LOSS_MIN_FRAMES = 20  # recent frames needed before a loss percentage counts
TRANSPORT_HINT = "see 'Large images over Fast DDS' in the README (the publisher's transport settings decide)"
# Rejection reasons counted per pair (both frames were accepted and paired); every other reason counts one frame.
PAIR_REJECTIONS = ("size_mismatch", "inference_error")
TIMING_WINDOW = 300  # recent published pairs the timing percentiles cover
# The normalised thermal input spanning less than this share of [0, 1] (median of recent pairs) turns the status
# WARN: the thermal normalisation does not suit the camera (raw 16-bit counts under "fixed").
THERMAL_SPAN_WARN = 0.05


class RateCounter:
    """Counts events in total and between diagnostics reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self._since_report = 0

    def tick(self) -> None:
        with self._lock:
            self.total += 1
            self._since_report += 1

    def take(self) -> int:
        """The events since the last call."""
        with self._lock:
            count, self._since_report = self._since_report, 0
            return count


@dataclass
class Report:
    """What happened since the previous diagnostics report, and the recent timings."""

    input_rates_hz: dict[str, float]
    output_rate_hz: float
    errors: int  # inference errors
    last_error: str
    timings_ms: dict[str, float]  # inference_ms_p50, ..., node_overhead_ms_p50
    thermal_span_p50: float | None = None  # median share of [0, 1] the normalised thermal spans (engine)


class FrameAccounting:
    """Counters and recent timings of one configuration of the node (thread-safe)."""

    def __init__(self) -> None:
        self.input_rates = {RGB_TOPIC: RateCounter(), THERMAL_TOPIC: RateCounter()}
        self.loss = {RGB_TOPIC: FrameLossEstimator(), THERMAL_TOPIC: FrameLossEstimator()}
        self.output_rate = RateCounter()
        self._lock = threading.Lock()
        self._rejected: Counter[str] = Counter()  # reason -> frames (or pairs: PAIR_REJECTIONS) refused
        self._repaired_non_finite = 0  # 32FC1 thermal frames fused after replacing NaN/inf pixels
        self._dropped_on_deactivate = 0  # pairs never published because the node was deactivated
        self._alone: Counter[str] = Counter()  # camera -> frames fused alone, the other camera silent
        self._incompatible_qos: dict[str, str] = {}  # input topic -> the last incompatibility, while it lasts
        self._incompatible_qos_events = 0
        self._errors_since_report = 0
        self._last_inference_error = ""
        self._inference_ms: deque[float] = deque(maxlen=TIMING_WINDOW)
        self._latency_ms: deque[float] = deque(maxlen=TIMING_WINDOW)
        self._overhead_ms: deque[float] = deque(maxlen=TIMING_WINDOW)
        self._thermal_span: deque[float] = deque(maxlen=TIMING_WINDOW)
        self._last_report = time.monotonic()

    def frame_received(self, topic: str, stamp_ns: int) -> None:
        self.input_rates[topic].tick()
        self.loss[topic].add(stamp_ns)

    def rejected(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def repaired(self) -> None:
        with self._lock:
            self._repaired_non_finite += 1

    def alone(self, camera: str) -> None:
        with self._lock:
            self._alone[camera] += 1

    def dropped_inactive(self, pairs: int) -> None:
        if pairs:
            with self._lock:
                self._dropped_on_deactivate += pairs

    def inference_failed(self, message: str) -> None:
        with self._lock:
            self._errors_since_report += 1
            # Its own slot: the ERROR status must name this failure, not a bad input frame since.
            self._last_inference_error = message

    def qos_incompatible(self, topic: str, problem: str) -> None:
        with self._lock:
            self._incompatible_qos_events += 1
            self._incompatible_qos[topic] = problem

    def incompatible_qos(self) -> dict[str, str]:
        """Input topic -> the last QoS incompatibility reported for it, until `qos_resolved`."""
        with self._lock:
            return dict(self._incompatible_qos)

    def qos_resolved(self, topic: str) -> None:
        with self._lock:
            self._incompatible_qos.pop(topic, None)

    def published(self, inference_ms: float, latency_ms: float, overhead_ms: float,
                  thermal_span: float | None = None) -> None:
        self.output_rate.tick()
        with self._lock:
            self._inference_ms.append(inference_ms)
            self._latency_ms.append(latency_ms)
            self._overhead_ms.append(overhead_ms)
            if thermal_span is not None:
                self._thermal_span.append(thermal_span)

    def thermal_changed(self) -> None:
        """The thermal normalisation changed: the spans measured under the old one no longer say anything."""
        with self._lock:
            self._thermal_span.clear()

    def overhead_ms(self) -> list[float]:
        with self._lock:
            return list(self._overhead_ms)

    def counters(self, pairing: dict[str, Any], queued: int, mailbox_drops: int) -> dict[str, Any]:
        """The frame accounting as `MafsNode.counters` returns it (see there)."""
        with self._lock:
            rejected = dict(self._rejected)
            repaired = self._repaired_non_finite
            qos_events = self._incompatible_qos_events
            dropped_on_deactivate = self._dropped_on_deactivate
            alone = dict(self._alone)
        return {
            "received_rgb": self.input_rates[RGB_TOPIC].total,
            "received_thermal": self.input_rates[THERMAL_TOPIC].total,
            "rgb_frames_missed": self.loss[RGB_TOPIC].missed,
            "thermal_frames_missed": self.loss[THERMAL_TOPIC].missed,
            "incompatible_qos_events": qos_events,
            "published": self.output_rate.total,
            "dropped": mailbox_drops + dropped_on_deactivate,
            "dropped_on_deactivate": dropped_on_deactivate,
            "rejected": rejected,
            "repaired_non_finite": repaired,
            "alone_rgb": alone.get("rgb", 0),
            "alone_thermal": alone.get("thermal", 0),
            "queued": queued,
            "pairing": pairing,
        }

    def take_report(self) -> Report:
        """Rates since the previous call, inference errors since then (reset here) and the recent timings."""
        now = time.monotonic()
        elapsed = max(now - self._last_report, 1e-6)
        self._last_report = now
        with self._lock:
            inference, latency, overhead = list(self._inference_ms), list(self._latency_ms), list(self._overhead_ms)
            spans = list(self._thermal_span)
            errors, self._errors_since_report = self._errors_since_report, 0
            last_error = self._last_inference_error
        return Report(
            input_rates_hz={topic: counter.take() / elapsed for topic, counter in self.input_rates.items()},
            output_rate_hz=self.output_rate.take() / elapsed,
            errors=errors,
            last_error=last_error,
            timings_ms={
                "inference_ms_p50": percentile(inference, 50),
                "inference_ms_p95": percentile(inference, 95),
                "latency_ms_p50": percentile(latency, 50),
                "latency_ms_p95": percentile(latency, 95),
                "node_overhead_ms_p50": percentile(overhead, 50),
            },
            thermal_span_p50=percentile(spans, 50) if spans else None,
        )

    def lossy_inputs(self) -> dict[str, float]:
        """Input topic -> loss percentage, for the inputs losing more than LOSS_WARN_PERCENT of recent frames."""
        return {topic: loss.loss_percent() for topic, loss in self.loss.items()
                if loss.recent_frames() >= LOSS_MIN_FRAMES and loss.loss_percent() > LOSS_WARN_PERCENT}


def fusion_status(report: Report, *, fusing: str | None, incompatible: Mapping[str, str],
                  lossy: Mapping[str, float], resolve: Callable[[str], str],
                  silent: tuple[str, float] | None = None) -> tuple[int, str]:
    """Level and message of the fusing node's status, the most serious problem first. `fusing`: None while
    fusing, else why not (e.g. "inactive: model loaded, not fusing"); `resolve`: a topic's full name; `silent`:
    the camera ("rgb" or "thermal") silent past sync.degraded_after_s (the second item), if any."""
    if fusing is not None:
        return DiagnosticStatus.OK, fusing
    if report.errors:
        return DiagnosticStatus.ERROR, f"{report.errors} inference error(s): {report.last_error}"
    if incompatible:
        return DiagnosticStatus.WARN, "; ".join(incompatible.values())
    if silent is not None:
        camera, after_s = silent
        other = other_camera(camera)
        topic = resolve(RGB_TOPIC if camera == "rgb" else THERMAL_TOPIC)
        return DiagnosticStatus.WARN, (f"{camera} camera down: nothing on {topic} for over {after_s:g} s; fusing "
                                       f"{other} alone (the {camera} image blank) until it delivers again")
    if lossy:
        return DiagnosticStatus.WARN, "frames lost before the node: " + ", ".join(
            f"{resolve(t)} {p:.0f} %" for t, p in lossy.items()
        ) + f" of the recent frames (gaps in the header stamps); {TRANSPORT_HINT}"
    if report.thermal_span_p50 is not None and report.thermal_span_p50 < THERMAL_SPAN_WARN:
        return DiagnosticStatus.WARN, (
            f"the normalised thermal image spans only {report.thermal_span_p50:.1%} of the network's input range: "
            "parameter thermal_normalization does not suit the camera (raw 16-bit counts under 'fixed'?); "
            "use auto or percentile")
    if min(report.input_rates_hz.values()) == 0.0:
        return DiagnosticStatus.WARN, "waiting for input on " + ", ".join(
            resolve(t) for t, r in report.input_rates_hz.items() if r == 0.0
        )
    if report.output_rate_hz == 0.0:
        return DiagnosticStatus.WARN, "inputs arrive but no pair is fused (check sync.slop_s, " \
            "sync.thermal_offset_s and the rejected counters)"
    return DiagnosticStatus.OK, "fusing"


def status_values(report: Report, counters: Mapping[str, Any], accounting: FrameAccounting,
                  engine: Any) -> dict[str, Any]:
    """The key-value pairs of the fusing node's status."""
    pairing = counters["pairing"]
    return {
        "rgb_rate_hz": report.input_rates_hz[RGB_TOPIC],
        "thermal_rate_hz": report.input_rates_hz[THERMAL_TOPIC],
        "output_rate_hz": report.output_rate_hz,
        **report.timings_ms,
        "thermal_span_p50": report.thermal_span_p50 if report.thermal_span_p50 is not None else float("nan"),
        "pair_skew_ms_signed_mean": pairing.get("skew_ms_signed_mean", float("nan")),
        "pair_skew_ms_p50": pairing.get("skew_ms_p50", float("nan")),
        "pair_skew_ms_max": pairing.get("skew_ms_max", float("nan")),
        "received_rgb": counters["received_rgb"],
        "received_thermal": counters["received_thermal"],
        "rgb_frames_missed": counters["rgb_frames_missed"],
        "thermal_frames_missed": counters["thermal_frames_missed"],
        "rgb_loss_percent": accounting.loss[RGB_TOPIC].loss_percent(),
        "thermal_loss_percent": accounting.loss[THERMAL_TOPIC].loss_percent(),
        "incompatible_qos_events": counters["incompatible_qos_events"],
        "pairs_matched": pairing.get("matched", 0),
        "unmatched_rgb": pairing.get("unmatched_rgb", 0),
        "unmatched_thermal": pairing.get("unmatched_thermal", 0),
        "queued": counters["queued"],
        "published": counters["published"],
        "dropped": counters["dropped"],
        "repaired_non_finite": counters["repaired_non_finite"],
        "alone_rgb": counters["alone_rgb"],
        "alone_thermal": counters["alone_thermal"],
        "rejected_total": sum(counters["rejected"].values()),
        **{f"rejected.{reason}": n for reason, n in sorted(counters["rejected"].items())},
        "device": str(engine.device),
        "precision": str(engine.precision),
        "backend": str(getattr(engine, "backend", "torch")),
        "model": engine.config.name,
    }


def diagnostic_array(stamp: Any, name: str, level: int, message: str, values: Mapping[str, Any],
                     hardware_id: str = "") -> DiagnosticArray:
    """A /diagnostics message with one status."""
    status = DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=key, value=_format(value)) for key, value in values.items()],
    )
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def qos_mismatch(node: Any, topic: str, policy: str, requested: QoSProfile) -> str:
    """Names the topic and both sides of an incompatible policy (the publisher's from the graph)."""
    resolved = node.resolve_topic_name(topic)
    offered = "unknown"
    for publisher in node.get_publishers_info_by_topic(resolved):
        compatibility, _ = qos_check_compatible(publisher.qos_profile, requested)
        if compatibility == QoSCompatibility.ERROR:
            offered = _policy_text(publisher.qos_profile, policy)
            break
    return (f"incompatible QoS on {resolved}: a publisher offers {policy} {offered}, this node requests "
            f"{policy} {_policy_text(requested, policy)}; no frame of it will arrive (qos.input.* parameters)")


def incompatible_publishers(node: Any, accounting: FrameAccounting, requested: QoSProfile) -> dict[str, str]:
    """The input topics with an incompatible publisher still there, and what is wrong; forgets the others."""
    reported = accounting.incompatible_qos()
    for topic in list(reported):
        resolved = node.resolve_topic_name(topic)
        if not any(qos_check_compatible(p.qos_profile, requested)[0] == QoSCompatibility.ERROR
                   for p in node.get_publishers_info_by_topic(resolved)):
            accounting.qos_resolved(topic)
            del reported[topic]
    return reported


def _policy_text(qos: QoSProfile, policy: str) -> str:
    value = getattr(qos, policy, None)
    return value.name if hasattr(value, "name") else str(value)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "nan"
    return str(value)
