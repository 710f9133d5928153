"""`mafs metrics` and `mafs eval` (mafs_ros.evaluate), run in-process on real MSRS pairs.

The numbers are checked against `mafs_ros.metrics`, the only metric implementation: these tests check the
plumbing (pairing, 8-bit reduction, averaging, report files), not the metric formulas (test_metrics.py).
The real packaged mafs-lite runs on two pairs; the other `eval` tests use a stand-in network with known
outputs, which is fast and makes the segmentation numbers predictable.
"""

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from stand_in_net import KnownNet

import mafs_ros.cli as cli
from mafs_ros.cli import engine_options
from mafs_ros.class_sets import MFNET
from mafs_ros.engine import MafsEngine
from mafs_ros.evaluate import evaluate, fusion_report, thermal_u8
from mafs_ros.metrics import FUSION_METRIC_NAMES, ConfusionMatrix, fusion_metrics, luma_u8
from mafs_ros.io.layouts import PairFiles

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
MSRS = ROOT / "test" / "fixtures" / "msrs_sample"
AVG_FUSED = ROOT / "test" / "fixtures" / "fusion_metrics" / "fused" / "avg"


def _stand_in_engine() -> MafsEngine:
    return MafsEngine(model=KnownNet(fused="mean"), device="cpu")


def _grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.ndim == 2, path
    return image


def _visible_luma(path: Path) -> np.ndarray:
    return luma_u8(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))


def _copy(stems: list[str], source: Path, target: Path, folders=("ir", "vi")) -> Path:
    for folder in folders:
        (target / folder).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            shutil.copy(source / folder / f"{stem}.png", target / folder / f"{stem}.png")
    return target


def _assert_means(fusion: dict) -> None:
    """"mean" is the average of all per-image values; "day"/"night" of the D/N stems."""
    per_image = fusion["per_image"]
    for group, suffix in (("mean", ""), ("day", "D"), ("night", "N")):
        stems = [s for s in per_image if s.endswith(suffix)]
        for name in FUSION_METRIC_NAMES:
            assert fusion[group][name] == pytest.approx(np.mean([per_image[s][name] for s in stems]), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# mafs metrics


def test_metrics_command_matches_fusion_metrics(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = cli.main(["metrics", "--ir", str(MSRS / "ir"), "--vi", str(MSRS / "vi"), "--fused", str(AVG_FUSED),
                     "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(out.read_text())
    assert set(report) == {"per_image", "mean", "day", "night", "skipped"} and report["skipped"] == {}
    stems = sorted(p.stem for p in (MSRS / "ir").glob("*.png"))
    assert sorted(report["per_image"]) == stems and len(stems) == 24
    for stem in stems:
        expected = fusion_metrics(_grey(MSRS / "ir" / f"{stem}.png"), _visible_luma(MSRS / "vi" / f"{stem}.png"),
                                  _grey(AVG_FUSED / f"{stem}.png"))
        assert report["per_image"][stem] == pytest.approx(expected, rel=1e-12)
        assert list(report["per_image"][stem]) == list(FUSION_METRIC_NAMES)
    _assert_means(report)
    assert "24 image(s) evaluated" in captured.out and "night" in captured.out


def test_metrics_rgb_fused_uses_luma(tmp_path):
    _copy(["00702N"], MSRS, tmp_path)
    (tmp_path / "fused").mkdir()
    # Any same-size colour image stands for an RGB fusion result: its luma is the F of the metrics.
    shutil.copy(MSRS / "vi" / "00213D.png", tmp_path / "fused" / "00702N.png")
    out = tmp_path / "report.json"
    assert cli.main(["metrics", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                     "--fused", str(tmp_path / "fused"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    expected = fusion_metrics(_grey(MSRS / "ir" / "00702N.png"), _visible_luma(MSRS / "vi" / "00702N.png"),
                              _visible_luma(MSRS / "vi" / "00213D.png"))
    assert report["per_image"]["00702N"] == pytest.approx(expected, rel=1e-12)
    assert "day" not in report and set(report["night"]) == set(FUSION_METRIC_NAMES)


def test_metrics_unmatched_and_mismatched_stems_are_named(tmp_path, capsys):
    _copy(["00702N", "01409D", "00213D"], MSRS, tmp_path)
    fused = tmp_path / "fused"
    fused.mkdir()
    shutil.copy(AVG_FUSED / "00702N.png", fused / "00702N.png")  # 01409D has no fused image
    cv2.imwrite(str(fused / "00213D.png"), _grey(AVG_FUSED / "00213D.png")[:-2])  # wrong size
    shutil.copy(AVG_FUSED / "00008N.png", fused / "00008N.png")  # no ir/vi partner
    out = tmp_path / "report.json"
    code = cli.main(["metrics", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"), "--fused", str(fused),
                     "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    report = json.loads(out.read_text())
    assert list(report["per_image"]) == ["00702N"]
    assert sorted(report["skipped"]) == ["00008N", "00213D", "01409D"]
    assert "sizes differ" in report["skipped"]["00213D"]
    for stem in ("00008N", "00213D", "01409D"):
        assert stem in captured.err
    assert "3 skipped" in captured.out


def test_metrics_nothing_to_evaluate_exits_2(tmp_path):
    _copy(["00702N"], MSRS, tmp_path)
    (tmp_path / "fused").mkdir()
    code = cli.main(["metrics", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                     "--fused", str(tmp_path / "fused"), "--out", str(tmp_path / "r.json")])
    assert code == 2 and not (tmp_path / "r.json").exists()


def test_fusion_report_layout():
    values = dict.fromkeys(FUSION_METRIC_NAMES, 1.0)
    report = fusion_report([("a", values), ("b", {**values, "EN": 3.0})])
    assert set(report) == {"per_image", "mean"} and report["mean"]["EN"] == 2.0
    with pytest.raises(ValueError, match="twice"):
        fusion_report([("a", values), ("a", values)])


# ---------------------------------------------------------------------------------------------------------
# mafs eval


def test_eval_real_checkpoint(tmp_path, capsys):
    out = tmp_path / "eval"
    # The first two stems, 00587D (day) and 00702N (night, the labelled one).
    code = cli.main(["eval", "--data", str(SAMPLE), "--out", str(out), "--limit", "2", "--save-fused",
                     "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"]["config"] == "mafs-lite" and report["checkpoint"]["trained"] is True
    assert Path(report["checkpoint"]["path"]).name == "mafs-lite.safetensors"
    assert report["images"] == 2 and report["skipped"] == {}

    fusion = report["fusion"]
    assert sorted(fusion["per_image"]) == ["00587D", "00702N"] and {"day", "night"} <= set(fusion)
    for stem in fusion["per_image"]:
        fused = _grey(out / "fused" / f"{stem}.png")
        expected = fusion_metrics(_grey(SAMPLE / "ir" / f"{stem}.png"), _visible_luma(SAMPLE / "vi" / f"{stem}.png"),
                                  fused)
        assert fusion["per_image"][stem] == pytest.approx(expected, rel=1e-12)
    _assert_means(fusion)

    seg = report["segmentation"]
    assert seg["num_images"] == 1 and list(seg["per_class_iou"]) == list(MFNET.class_names)
    matrix = np.array(seg["confusion_matrix"])
    label = _grey(SAMPLE / "label" / "00702N.png")
    assert matrix.sum() == label.size and np.array_equal(matrix.sum(axis=1), np.bincount(label.ravel(), minlength=9))
    assert 0.0 <= seg["mIoU"] <= 1.0 and 0.0 <= seg["pixel_accuracy"] <= 1.0

    markdown = (out / "report.md").read_text()
    for heading in ("## Fusion metrics", "### Per image", "## Segmentation", "| night | 1 |"):
        assert heading in markdown
    assert ("UNTRAINED" in markdown) == (report["checkpoint"]["trained"] is False)
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 300 and sheet.shape[1] > 1000
    assert "mIoU" in captured.out and "report.json" in captured.out


def test_eval_without_labels_has_no_segmentation(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine_options, "engine_from_args", lambda args: _stand_in_engine())
    data = _copy(["01409D"], SAMPLE, tmp_path / "data")
    out = tmp_path / "eval"
    assert cli.main(["eval", "--data", str(data), "--out", str(out), "--contact-sheet", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "segmentation" not in report and report["images"] == 1
    assert set(report["fusion"]) == {"per_image", "mean", "day"}
    assert "## Segmentation" not in (out / "report.md").read_text()
    assert not (out / "contact_sheet.png").exists() and not (out / "fused").exists()
    assert "mIoU" not in capsys.readouterr().out


def test_eval_bad_data_folder_exits_2(tmp_path):
    assert cli.main(["eval", "--data", str(tmp_path), "--out", str(tmp_path / "eval")]) == 2


def test_evaluate_segmentation_and_skipped_pair(tmp_path):
    """The stand-in predicts floor(ir * 9), so the confusion matrix is known; a pair whose label has another
    size is skipped, and the rest is still reported."""
    bad_label = tmp_path / "small_label.png"
    cv2.imwrite(str(bad_label), np.zeros((32, 32), np.uint8))
    pairs = [
        PairFiles("00702N", ir=SAMPLE / "ir" / "00702N.png", vi=SAMPLE / "vi" / "00702N.png",
                  label=SAMPLE / "label" / "00702N.png"),
        PairFiles("01409D", ir=SAMPLE / "ir" / "01409D.png", vi=SAMPLE / "vi" / "01409D.png", label=bad_label),
    ]
    report = evaluate(_stand_in_engine(), pairs, tmp_path / "eval", contact_sheet_count=1)
    assert report["images"] == 1 and list(report["skipped"]) == ["01409D"]
    assert "differ in size" in report["skipped"]["01409D"]

    thermal = _grey(SAMPLE / "ir" / "00702N.png")
    expected = ConfusionMatrix(9)
    expected.update(np.minimum(thermal.astype(int) * 9 // 255, 8), _grey(SAMPLE / "label" / "00702N.png"))
    seg = report["segmentation"]
    assert seg["confusion_matrix"] == expected.matrix.tolist()
    assert seg["mIoU"] == pytest.approx(expected.miou(), rel=1e-12)
    assert (tmp_path / "eval" / "contact_sheet.png").is_file()
    assert json.loads((tmp_path / "eval" / "report.json").read_text()) == report


def test_thermal_u8_reduces_16_bit_like_the_engine():
    engine = MafsEngine(model=KnownNet(fused="mean"), device="cpu", thermal_normalization="fixed")
    thermal = _grey(SAMPLE / "ir" / "00702N.png")
    np.testing.assert_array_equal(thermal_u8(engine, thermal), thermal)  # 8-bit, "fixed": unchanged
    np.testing.assert_array_equal(thermal_u8(engine, thermal.astype(np.uint16) * 257), thermal)
    counts = 7400 + thermal.astype(np.uint16) * 3  # a 14-bit camera's raw counts
    stretched = thermal_u8(_stand_in_engine(), counts)  # the default, "auto": stretched as the engine sees them
    assert np.ptp(stretched) > 200 and np.ptp(thermal_u8(engine, counts)) < 20


def test_metrics_undefined_value_is_null(tmp_path, capsys):
    """F = B makes SCD's correlation 0/0: NaN is written as null (strict JSON) and shown as n/a."""
    _copy(["00702N"], MSRS, tmp_path)
    (tmp_path / "fused").mkdir()
    cv2.imwrite(str(tmp_path / "fused" / "00702N.png"), _visible_luma(MSRS / "vi" / "00702N.png"))
    out = tmp_path / "report.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined is said plainly, not through numpy's 0/0 warning
        assert cli.main(["metrics", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                         "--fused", str(tmp_path / "fused"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["per_image"]["00702N"]["SCD"] is None and report["mean"]["SCD"] is None
    assert "n/a" in capsys.readouterr().out


def test_eval_holdout_frames_and_a_blanked_camera(tmp_path, monkeypatch):
    """--holdout keeps the frames a validation protocol holds out; --blank feeds black images for one camera
    (the stand-in then sees thermal 0 and predicts class 0 everywhere)."""
    monkeypatch.setattr(engine_options, "engine_from_args", lambda args: _stand_in_engine())
    data = tmp_path / "data"
    stems = ["00101N", "00102N", "00103N", "00104N", "00105N"]
    for folder in ("ir", "vi", "label"):
        (data / folder).mkdir(parents=True)
        for stem in stems:
            shutil.copy(SAMPLE / folder / "00702N.png", data / folder / f"{stem}.png")
    out = tmp_path / "eval"
    args = ["eval", "--data", str(data), "--out", str(out), "--contact-sheet", "0", "--holdout", "interleaved"]
    assert cli.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["fusion"]["per_image"]) == ["00103N"] and report["blank"] is None
    assert set(report["segmentation"]["mIoU_by_time"]) == {"night"}
    assert cli.main([*args, "--blank", "thermal"]) == 0
    report = json.loads((out / "report.json").read_text())
    matrix = np.array(report["segmentation"]["confusion_matrix"])
    assert report["blank"] == "thermal" and matrix[:, 1:].sum() == 0 and matrix[:, 0].sum() > 0
