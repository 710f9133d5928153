"""Fusion and segmentation metrics: reference values of CDDFuse's evaluator, and hand-computed known answers.

The reference data are copies in test/fixtures:
- fusion_metrics/: the published evaluators' values and the fused images; see SOURCE.md there.
- msrs_sample/: the 24 MSRS ir/vi pairs.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from mafs_ros import metrics as M

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE = FIXTURES / "msrs_sample"
REFERENCE = FIXTURES / "fusion_metrics"
FUSED_SOURCES = ("avg", "max", "ir_weighted")

# Relative tolerances against reference_cddfuse.csv (fixtures/fusion_metrics/SOURCE.md, section 6,
# suggests 1e-5 except for SSIM):
# - EN and MI are exact in both implementations. SD, SF, AG, SCD and Qabf are float32 in the evaluator and
#   float64 here, which differ by <= 4e-7 on this sample.
TIGHT_RTOL = 1e-6
# - The evaluator reads vi with OpenCV's float BT.601 gray conversion. We use Pillow's integer luma (`luma_u8`,
#   the B of the fused images). The two differ in 45 pixels over 14 of the 24 frames. On those frames the
#   two-source metrics move by up to 4e-5 (MI).
LUMA_RTOL = 1e-4
# - SSIM: the evaluator's float32 rounding in E[x²] - μ² is comparable to C2 in flat windows: up to 3.3e-5.
SSIM_RTOL = 1e-4
SOURCE_FREE = ("EN", "SD", "SF", "AG")  # metrics of F alone


def _reference() -> dict[tuple[str, str], dict[str, float]]:
    table: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    with open(REFERENCE / "reference_cddfuse.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            table[row["image"], row["fused_source"]][row["metric"]] = float(row["value"])
    return table


REFERENCE_VALUES = _reference()
STEMS = sorted({stem for stem, _ in REFERENCE_VALUES})


def _read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 2 and img.dtype == np.uint8, path
    return img


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[..., ::-1])


def _evaluator_luma(rgb: np.ndarray) -> np.ndarray:
    """The vi luma CDDFuse's `image_read_cv2(path, 'GRAY')` computes: float BT.601, rounded half-to-even."""
    return np.round(cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2GRAY))


def test_fixture_set_is_complete() -> None:
    assert len(STEMS) == 24
    assert STEMS == sorted(p.stem for p in (SAMPLE / "ir").glob("*.png"))
    for key, values in REFERENCE_VALUES.items():
        assert set(M.FUSION_METRIC_NAMES) <= set(values), key
    assert len(REFERENCE_VALUES) == 24 * len(FUSED_SOURCES)


@pytest.mark.parametrize("stem", STEMS)
def test_fusion_metrics_match_cddfuse_reference(stem: str) -> None:
    ir = _read_gray(SAMPLE / "ir" / f"{stem}.png")
    rgb = _read_rgb(SAMPLE / "vi" / f"{stem}.png")
    vi_y = M.luma_u8(rgb)
    same_luma = np.array_equal(vi_y, _evaluator_luma(rgb))
    failures = []
    for source in FUSED_SOURCES:
        fused = _read_gray(REFERENCE / "fused" / source / f"{stem}.png")
        ours = M.fusion_metrics(ir, vi_y, fused)
        assert tuple(ours) == M.FUSION_METRIC_NAMES
        for name, value in ours.items():
            if name == "SSIM":
                rtol = SSIM_RTOL
            elif name in SOURCE_FREE or same_luma:
                rtol = TIGHT_RTOL
            else:
                rtol = LUMA_RTOL
            expected = REFERENCE_VALUES[stem, source][name]
            if not abs(value - expected) <= rtol * abs(expected):
                failures.append(f"{source} {name}: {value!r} vs {expected!r} (rtol {rtol})")
    assert not failures, failures


@pytest.mark.parametrize("stem", STEMS)
def test_luma_u8_regenerates_reference_fused_images(stem: str) -> None:
    """The fused fixtures were built from Pillow's luma with exact rules (fixtures/fusion_metrics/SOURCE.md,
    section 2)."""
    a = _read_gray(SAMPLE / "ir" / f"{stem}.png").astype(np.int64)
    y = M.luma_u8(_read_rgb(SAMPLE / "vi" / f"{stem}.png")).astype(np.int64)
    fused = {s: _read_gray(REFERENCE / "fused" / s / f"{stem}.png") for s in FUSED_SOURCES}
    # Integer numerators over 2 and 10: the float quotients are exact at every tie (k + 0.5), and np.round
    # rounds ties to even, which is the stated rule.
    np.testing.assert_array_equal(fused["avg"], np.round((a + y) / 2))
    np.testing.assert_array_equal(fused["max"], np.maximum(a, y))
    np.testing.assert_array_equal(fused["ir_weighted"], np.round((7 * a + 3 * y) / 10))


def test_luma_u8_known_values() -> None:
    rgb = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0],
          # Pillow's fixed point rounds these up, whereas rounding the decimal formula gives 98 and 174.
          [83, 123, 13], [92, 224, 136]]],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(M.luma_u8(rgb), [[76, 150, 29, 255, 0, 99, 175]])
    with pytest.raises(ValueError):
        M.luma_u8(rgb.astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed fusion metrics on tiny arrays
# ---------------------------------------------------------------------------------------------------------------

# 2x3 image used for SF and AG: rows [0, 1, 3] and [2, 2, 2].
TINY = np.array([[0, 1, 3], [2, 2, 2]], dtype=np.uint8)


def test_en_known_values() -> None:
    # Levels 0,0,0,0,1,1,2,3: p = 1/2, 1/4, 1/8, 1/8 -> 0.5·1 + 0.25·2 + 2·0.125·3 = 1.75 bits.
    img = np.array([[0, 0, 0, 0], [1, 1, 2, 3]], dtype=np.uint8)
    assert M.en(img) == pytest.approx(1.75, rel=1e-12)
    assert M.en(np.full((4, 4), 7, dtype=np.uint8)) == 0.0
    # Half black, half white: exactly 1 bit; float input with integer values gives the same.
    assert M.en(np.array([[0.0, 255.0]])) == pytest.approx(1.0, rel=1e-12)


def test_sd_known_value() -> None:
    # Mean 3, squared deviations 9, 1, 1, 9 -> population variance 5 (a sample variance would be 20/3).
    assert M.sd(np.array([[0, 2], [4, 6]], dtype=np.uint8)) == pytest.approx(math.sqrt(5), rel=1e-12)


def test_sf_known_value() -> None:
    # Vertical neighbours: 2, 1, -1 -> RF² = 6/3 = 2. Horizontal: 1, 2, 0, 0 -> CF² = 5/4. No padding terms.
    assert M.sf(TINY) == pytest.approx(math.sqrt(2 + 5 / 4), rel=1e-12)


def test_ag_known_value() -> None:
    # ∂x per row: [1, (3-0)/2, 3-1] = [1, 1.5, 2] and [0, 0, 0] (one-sided at the ends, central inside).
    # ∂y with two rows is one-sided everywhere: [2, 1, -1] on both rows.
    # √((∂x² + ∂y²)/2): row 0 √2.5, √1.625, √2.5; row 1 √2, √0.5, √0.5; AG is the mean of the 6.
    expected = (2 * math.sqrt(2.5) + math.sqrt(1.625) + math.sqrt(2) + 2 * math.sqrt(0.5)) / 6
    assert M.ag(TINY) == pytest.approx(expected, rel=1e-12)
    assert M.ag(TINY.astype(np.float32)) == M.ag(TINY)


def test_mi_is_in_nats() -> None:
    # F copies A, which is half 0 and half 255: MI(A, F) = H(A) = ln 2. A constant B shares nothing with F.
    a = np.repeat(np.array([[0, 255]], dtype=np.uint8), 4, axis=0)
    b = np.full_like(a, 9)
    assert M.mi(a, b, a) == pytest.approx(math.log(2), rel=1e-12)


def test_vif_and_ssim_of_identical_images() -> None:
    # With F = A = B, each term is 1 (VIF: g = 1 and no distortion noise; SSIM: identical windows), so the sum is 2.
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 80)).astype(np.uint8)
    assert M.vif(img, img, img) == pytest.approx(2.0, rel=1e-9)
    # A constant reference makes VIF 0/0, which the evaluator scores 1.0.
    assert M.vif(np.full_like(img, 7), img, img) == pytest.approx(2.0, rel=1e-9)
    assert M.ssim(img, img, img) == pytest.approx(2.0, rel=1e-12)


def test_scd_with_a_blanked_camera_is_undefined_without_a_warning() -> None:
    # A blanked visible camera is a constant B; with F = A, corr(F - A, B) correlates two constants: undefined.
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (32, 40)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(M.scd(ir, np.full_like(ir, 16), ir))
        vi = ir[::-1].copy()
        assert not math.isnan(M.scd(ir, vi, ir // 2 + vi // 2))  # two textured inputs: defined


def test_mismatched_shapes_raise() -> None:
    a = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ValueError):
        M.fusion_metrics(a, a, np.zeros((4, 5), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------------

# 3 classes. (gt, pred) pairs after ignoring the 255 pixel: (0,0) (0,1) (1,1) (1,1) (2,0).
GT = np.array([[0, 0, 1], [1, 255, 2]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 7, 0]], dtype=np.int64)  # the 7 sits on the ignored pixel and must not count


def test_confusion_matrix_known_answer() -> None:
    cm = M.ConfusionMatrix(3)
    cm.update(PRED, GT)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    # IoU_0 = 1/(1+1+1), IoU_1 = 2/(2+1+0), IoU_2 = 0/(0+0+1).
    np.testing.assert_allclose(cm.per_class_iou(), [1 / 3, 2 / 3, 0.0], rtol=1e-12)
    assert cm.miou() == pytest.approx(1 / 3, rel=1e-12)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5, rel=1e-12)
    # Accumulating the same image again doubles the counts and leaves the ratios unchanged.
    cm.update(PRED, GT)
    assert cm.matrix.sum() == 10
    assert cm.miou() == pytest.approx(1 / 3, rel=1e-12)


def test_confusion_matrix_absent_class_is_dropped_from_miou() -> None:
    cm = M.ConfusionMatrix(4)
    cm.update(PRED, GT)
    iou = cm.per_class_iou()
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(1 / 3, rel=1e-12)  # mean of classes 0..2, class 0 included
    report = cm.to_dict()
    assert report["per_class_iou"][3] is None
    assert report["miou"] == pytest.approx(1 / 3, rel=1e-12)
    assert report["confusion_matrix"][3] == [0, 0, 0, 0]


def test_confusion_matrix_empty_and_invalid() -> None:
    cm = M.ConfusionMatrix(3)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())
    assert cm.to_dict()["miou"] is None
    with pytest.raises(ValueError):
        cm.update(np.array([[3]]), np.array([[0]]))  # prediction outside 0..2
    with pytest.raises(ValueError):
        cm.update(np.array([[0]]), np.array([[5]]))  # label outside 0..2 and not the ignore value
    with pytest.raises(ValueError):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    assert cm.matrix.sum() == 0


def test_confusion_matrix_on_real_label() -> None:
    # The one MSRS label in the sample (classes 0 and 8 present): a perfect prediction.
    gt = _read_gray(SAMPLE / "label" / "00702N.png")
    cm = M.ConfusionMatrix(9)
    cm.update(gt, gt)
    iou = cm.per_class_iou()
    assert iou[0] == 1.0 and iou[8] == 1.0 and np.isnan(iou[1:8]).all()
    assert cm.miou() == 1.0 and cm.pixel_accuracy() == 1.0
    assert cm.matrix.sum() == gt.size


# ---------------------------------------------------------------------------------------------------------------
# Report helpers
# ---------------------------------------------------------------------------------------------------------------


def test_day_night() -> None:
    assert M.day_night("00213D") == "day"
    assert M.day_night("00008N") == "night"
    for stem in ("ROAD", "00213", "00213d", "frame_001", ""):
        assert M.day_night(stem) is None


def test_mean_metrics() -> None:
    per_image = {
        "00001D": {"EN": 1.0, "MI": 2.0},
        "00002D": {"EN": 3.0, "MI": 4.0},
        "00003N": {"EN": 5.0, "MI": 6.0},
    }
    out = M.mean_metrics(per_image)
    assert out == {
        "mean": {"EN": 3.0, "MI": 4.0},
        "day": {"EN": 2.0, "MI": 3.0},
        "night": {"EN": 5.0, "MI": 6.0},
    }
    assert M.mean_metrics({"a": {"EN": 1.0}, "b": {"EN": 2.0}}) == {"mean": {"EN": 1.5}}
    with pytest.raises(ValueError):
        M.mean_metrics({"a": {"EN": 1.0}, "b": {"MI": 2.0}})
    with pytest.raises(ValueError):
        M.mean_metrics({})
