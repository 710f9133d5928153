"""The replay report's files: report.json, report.md (the numbers as Markdown tables), plots and contact sheet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics import FUSION_METRIC_NAMES
from ..reports import (
    format_metrics,
    format_table,
    json_ready,
    segmentation_markdown,
    write_contact_sheet,
    write_histograms,
    write_json,
    write_metric_curves,
)
from .scoring import Evaluation, PairRecord

PLOTS = ("metrics_over_time.png", "latency_hist.png", "skew_hist.png")
_SUMMARY_KEYS = ("p50", "p95", "max", "mean")


def write_outputs(report: dict[str, Any], evaluation: Evaluation, out_dir: Path, slop_ms: float | None) -> dict:
    """Plots, contact sheet, report.md and report.json into out_dir; returns the JSON-ready report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _write_plots(out_dir, evaluation.records, slop_ms)
    rows = [evaluation.samples[index] for index in sorted(evaluation.samples)]
    if rows:
        title = f"MAFS {report['mode']}: {Path(report['bag']).name}, {report['pairs_fused']} pair(s)"
        write_contact_sheet(out_dir / "contact_sheet.png", rows, title)
        files.append("contact_sheet.png")
    report["files"] = ["report.json", "report.md", *files]
    report = json_ready(report)
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    write_json(out_dir / "report.json", report)
    return report


def _write_plots(out_dir: Path, records: Sequence[PairRecord], slop_ms: float | None) -> list[str]:
    """metrics_over_time.png, latency_hist.png and skew_hist.png (nothing without pairs); returns file names."""
    if not records:
        return []
    t0 = records[0].rgb_stamp_ns
    write_metric_curves(out_dir / "metrics_over_time.png", [(r.rgb_stamp_ns - t0) / 1e9 for r in records],
                        [r.metrics for r in records], FUSION_METRIC_NAMES, xlabel="RGB stamp - first stamp (s)",
                        title="Fusion metrics per pair")

    end_to_end = [r.end_to_end_ms for r in records if r.end_to_end_ms is not None]
    panels: list[tuple[str, Sequence[float]]] = [("processing (preprocess + inference + postprocess)",
                                                  [r.latency_ms for r in records])]
    if end_to_end:
        panels.append(("end to end (result receive time - RGB stamp)", end_to_end))
    write_histograms(out_dir / "latency_hist.png", panels, xlabel="ms", ylabel="pairs")

    title = "Pair skew: thermal stamp + offset - RGB stamp" + (" (red: ±slop)" if slop_ms is not None else "")
    write_histograms(out_dir / "skew_hist.png", [(title, [r.skew_ns / 1e6 for r in records])], xlabel="ms",
                     ylabel="pairs", markers=(-slop_ms, slop_ms) if slop_ms is not None else ())
    return list(PLOTS)


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def markdown(report: dict[str, Any]) -> str:
    """report.md: the report's numbers as Markdown tables, with the plots."""
    lines = _setup_lines(report) + _frame_lines(report) + _timing_lines(report) + _fusion_lines(report)
    seg = report.get("segmentation")
    if seg is not None:
        lines += ["", *segmentation_markdown(seg), "",
                  f"Ground-truth images read: {seg['labels_read']}; without a fused pair: {seg['labels_unmatched']}."]
    plots = [name for name in report["files"] if name.endswith(".png")]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def _setup_lines(report: dict[str, Any]) -> list[str]:
    """Title, bag, model, pairing and registration."""
    title = "MAFS rosbag replay" if report["mode"] == "replay" else "MAFS report of a recorded run"
    lines = [f"# {title}", "", f"- Bag: `{report['bag']}`"]
    if report["output_bag"]:
        lines.append(f"- Output bag: `{report['output_bag']}` (`ros2 bag play` it with rviz2)")
    if "engine" in report:
        ckpt, engine = report["checkpoint"], report["engine"]
        lines.append(f"- Model: `{ckpt['path'] or 'model without checkpoint file'}` ({ckpt['config']}); "
                     f"{engine['device']}, {engine['precision']}, thermal normalisation "
                     f"`{engine['thermal_normalization']}`, size policy `{engine['size_policy']}`")
        if ckpt["trained"] is False:
            lines += ["", "**The checkpoint is UNTRAINED (random weights): the metrics are meaningless.**"]
    if "pairing" in report:
        pairing = report["pairing"]
        lines.append(f"- Pairing: slop {pairing['slop_s']} s, queue size {pairing['queue_size']}, thermal offset "
                     f"{pairing['thermal_offset_s']} s (resets {pairing['resets']}, evicted "
                     f"{pairing['evicted_rgb']} RGB / {pairing['evicted_thermal']} thermal)")
    if report["registration"]["homography"] is not None:
        lines.append(f"- Registration: thermal warped into the RGB image with the homography "
                     f"{report['registration']['homography']}")
    if report["read_error"]:
        lines += ["", f"**Reading stopped early:** {report['read_error']}"]
    return lines


def _frame_lines(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Frames", "", format_table(
        ["topic", "read", "unmatched"],
        [[topic, str(n), str(report["unmatched"].get(topic, "-"))] for topic, n in report["frames_read"].items()],
        markdown=True,
    ), "", f"- Pairs made: {report['pairs_made']}; fused and scored: {report['pairs_fused']}"]
    if report["skipped"]:
        lines.append("- Skipped: " + ", ".join(f"{reason} {n}" for reason, n in report["skipped"].items()))
    return lines


def _timing_lines(report: dict[str, Any]) -> list[str]:
    throughput = report["throughput"]
    timing_rows = [["processing", *(_fmt(report["latency_ms"][k]) for k in _SUMMARY_KEYS)]]
    timing_rows += [[f"  {name}", *(_fmt(values[k]) for k in _SUMMARY_KEYS)]
                    for name, values in report["latency_ms"]["stages"].items()]
    if "end_to_end_ms" in report:
        timing_rows.append(["end to end", *(_fmt(report["end_to_end_ms"][k]) for k in _SUMMARY_KEYS)])
    skew = report["skew_ms"]
    timing_rows.append(["abs(skew)", _fmt(skew["p50"]), _fmt(skew["p95"]), _fmt(skew["max"]), "-"])
    lines = ["", "## Timing (ms)", "", format_table(["", *_SUMMARY_KEYS], timing_rows, markdown=True),
             "", f"- Mean signed skew: {_fmt(skew['mean'])} ms",
             f"- Bag duration {_fmt(throughput['bag_duration_s'])} s; fused pairs per bag second "
             f"{_fmt(throughput['pairs_per_s'])}"]
    if "wall_s" in throughput:
        lines.append(f"- Replay wall time {_fmt(throughput['wall_s'])} s ({_fmt(throughput['pairs_per_s_wall'])} "
                     f"pairs/s, {_fmt(throughput['realtime_factor'])} x real time)")
    return lines


def _fusion_lines(report: dict[str, Any]) -> list[str]:
    fusion = report["fusion"]
    lines = ["", "## Fusion metrics", "",
             "A = infrared (thermal normalisation x 255), B = visible luma, F = luma of the fused rgb8 image; "
             "definitions in `mafs_ros.metrics`.", ""]
    if fusion["mean"] is None:
        return lines + ["No pair was fused."]
    return lines + [
        format_table(["set", "pairs", *FUSION_METRIC_NAMES],
                     [["mean", str(len(fusion["per_frame"])), *format_metrics(fusion["mean"])]], markdown=True),
        "", "### Per pair", "",
        format_table(["pair", "RGB stamp", *FUSION_METRIC_NAMES],
                     [[str(entry["index"]), entry["rgb_stamp"], *format_metrics(entry["metrics"])]
                      for entry in fusion["per_frame"]],
                     markdown=True),
    ]
