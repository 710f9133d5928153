"""Report writing shared by `mafs eval`, `mafs metrics`, `mafs replay` and the demo (no torch).

- `jsonfile`: strict JSON (NaN/inf as null, numpy scalars as numbers);
- `tables`: plain-text and Markdown tables of fusion and segmentation metrics;
- `contact_sheet`: rows of infrared | visible | fused | prediction [| ground truth] panels as one PNG;
- `plots`: per-pair metric curves and histograms as PNGs.

matplotlib is imported only by the functions that draw, so importing this package stays cheap.
"""

from .contact_sheet import SheetRow, write_contact_sheet
from .jsonfile import json_ready, write_json
from .plots import write_histograms, write_metric_curves
from .tables import format_metrics, format_table, fusion_table, segmentation_markdown, segmentation_summary

__all__ = [
    "SheetRow",
    "format_metrics",
    "format_table",
    "fusion_table",
    "json_ready",
    "segmentation_markdown",
    "segmentation_summary",
    "write_contact_sheet",
    "write_histograms",
    "write_json",
    "write_metric_curves",
]
