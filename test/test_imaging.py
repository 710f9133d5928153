"""imaging (YCbCr, thermal normalisation, label colouring) and class_sets."""

import numpy as np
import pytest
import torch

from mafs_ros.class_sets import CLASS_SETS, IGNORE_LABEL, default_class_set, get_class_set
from mafs_ros.imaging import ThermalAgc, ThermalNormalization, colorize, overlay, rgb_to_ycbcr, to_uint8, ycbcr_to_rgb


def _pixel(r: float, g: float, b: float) -> torch.Tensor:
    return torch.tensor([r, g, b], dtype=torch.float32).reshape(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------------------
# YCbCr


@pytest.mark.parametrize(
    "rgb, expected",
    [
        # Hand-computed from the official formulas: Y = .299R+.587G+.114B, Cb = .564(B-Y)+.5, Cr = .713(R-Y)+.5
        ((1.0, 0.0, 0.0), (0.299, 0.5 - 0.564 * 0.299, 0.5 + 0.713 * 0.701)),
        ((0.0, 0.0, 1.0), (0.114, 0.5 + 0.564 * 0.886, 0.5 - 0.713 * 0.114)),
        ((0.2, 0.4, 0.6), (0.363, 0.5 + 0.564 * 0.237, 0.5 - 0.713 * 0.163)),
        ((1.0, 1.0, 1.0), (1.0, 0.5, 0.5)),
    ],
)
def test_rgb_to_ycbcr_spec_values(rgb, expected):
    y, cb, cr = rgb_to_ycbcr(_pixel(*rgb))
    assert y.shape == cb.shape == cr.shape == (1, 1, 1, 1)
    np.testing.assert_allclose([y.item(), cb.item(), cr.item()], expected, atol=1e-6)


@pytest.mark.parametrize(
    "ycbcr, expected",
    [
        # R = Y + 1.403(Cr-.5), G = Y - .714(Cr-.5) - .344(Cb-.5), B = Y + 1.773(Cb-.5)
        ((0.5, 0.25, 0.75), (0.5 + 1.403 * 0.25, 0.5 - 0.714 * 0.25 + 0.344 * 0.25, 0.5 - 1.773 * 0.25)),
        ((1.0, 1.0, 1.0), (1.0, 1.0 - 0.714 * 0.5 - 0.344 * 0.5, 1.0)),  # R and B clamped to 1
        ((0.0, 0.5, 0.5), (0.0, 0.0, 0.0)),
    ],
)
def test_ycbcr_to_rgb_spec_values(ycbcr, expected):
    y, cb, cr = (torch.full((1, 1, 1, 1), v) for v in ycbcr)
    rgb = ycbcr_to_rgb(y, cb, cr)
    assert rgb.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(rgb.flatten().tolist(), expected, atol=1e-6)


def test_ycbcr_round_trip_in_gamut():
    rgb = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    back = ycbcr_to_rgb(*rgb_to_ycbcr(rgb))
    assert (back - rgb).abs().max().item() < 1e-2


def test_ycbcr_unbatched_and_detached_chroma():
    rgb = torch.rand(3, 8, 8, requires_grad=True)
    y, cb, cr = rgb_to_ycbcr(rgb)
    assert y.shape == (1, 8, 8) and y.requires_grad
    assert not cb.requires_grad and not cr.requires_grad
    with pytest.raises(ValueError, match="3, H, W"):
        rgb_to_ycbcr(torch.rand(1, 4, 8, 8))


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0 / 255 * 0.6, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 1, 255, 255]


# ---------------------------------------------------------------------------------------------------------
# Thermal normalisation


def _norm(spec, thermal) -> np.ndarray:
    return ThermalNormalization.from_spec(spec).apply(thermal).numpy()


def test_fixed_default_ranges():
    u16 = np.array([[0, 32768, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(_norm("fixed", u16), [[0.0, 32768 / 65535, 1.0]], rtol=1e-6)
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    # Equals the official loader's to_tensor (x / 255) for 8-bit infrared.
    np.testing.assert_allclose(_norm("fixed", u8), u8 / 255.0, rtol=1e-6)


def test_fixed_explicit_range_clips():
    u16 = np.array([[500, 1000, 1500, 2000, 3000]], dtype=np.uint16)
    np.testing.assert_allclose(_norm("fixed:1000,2000", u16), [[0.0, 0.0, 0.5, 1.0, 1.0]])
    celsius = np.array([[-30.0, -20.0, 20.0, 60.0, 80.0]], dtype=np.float32)
    np.testing.assert_allclose(_norm({"name": "fixed", "lo": -20, "hi": 60}, celsius), [[0, 0, 0.5, 1, 1]])


def test_fixed_float_needs_range():
    with pytest.raises(ValueError, match="explicit range"):
        _norm("fixed", np.zeros((4, 4), dtype=np.float32))


def test_minmax_uint16():
    u16 = np.array([[1000, 1500], [3000, 2000]], dtype=np.uint16)
    np.testing.assert_allclose(_norm("minmax", u16), [[0.0, 0.25], [1.0, 0.5]])
    assert not _norm("minmax", np.full((3, 3), 7, dtype=np.uint16)).any()  # constant frame -> zeros


def test_percentile_uint16():
    u16 = (np.arange(101) * 100).astype(np.uint16).reshape(1, 101)  # p1 = 100, p99 = 9900
    out = _norm("percentile", u16)
    assert out[0, 0] == 0.0 and out[0, 100] == 1.0
    np.testing.assert_allclose(out[0, 50], (5000 - 100) / 9800, rtol=1e-6)
    lo, hi = np.percentile(u16, [2, 98])
    np.testing.assert_allclose(_norm("percentile:2,98", u16), np.clip((u16 - lo) / (hi - lo), 0, 1), rtol=1e-5)


def test_percentile_ignores_a_hot_pixel():
    u16 = np.tile(np.linspace(1000, 2000, 100), (100, 1)).astype(np.uint16)
    u16[0, 0] = 65535
    out = _norm("percentile", u16)
    assert out[0, 0] == 1.0
    assert out[50, 50] == pytest.approx(0.5, abs=0.02)  # not squashed towards 0 by the hot pixel


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_thermal_rejected(bad):
    thermal = np.zeros((4, 4), dtype=np.float32)
    thermal[1, 2] = bad
    with pytest.raises(ValueError, match="non-finite"):
        _norm("minmax", thermal)


def test_thermal_tensor_input_and_bad_inputs():
    t = torch.tensor([[0, 255]], dtype=torch.uint8)
    assert ThermalNormalization().apply(t).tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="dtype"):
        _norm("fixed", np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        _norm("fixed", np.zeros((4, 4, 2), dtype=np.uint8))


def test_thermal_spec_parsing():
    for text in ("fixed", "fixed:-20,60", "minmax", "percentile:1,99", "percentile:2.5,97.5"):
        norm = ThermalNormalization.from_spec(text)
        assert ThermalNormalization.from_spec(str(norm)) == norm
        assert ThermalNormalization.from_spec(norm.to_dict()) == norm
    assert ThermalNormalization.from_spec(None) == ThermalNormalization("fixed")
    for bad in ("gamma", "fixed:1", "fixed:5,1", "minmax:0,1", "percentile:50,10", "fixed:a,b"):
        with pytest.raises(ValueError):
            ThermalNormalization.from_spec(bad)
    with pytest.raises(ValueError, match="unknown thermal normalisation fields"):
        ThermalNormalization.from_spec({"name": "fixed", "gain": 2})


# ---------------------------------------------------------------------------------------------------------
# Label colouring and class sets


def test_overlay_blends_and_leaves_ignore_untouched():
    rgb = np.full((4, 5, 3), 100, dtype=np.uint8)
    rgb[0, 0] = (7, 8, 9)
    labels = np.zeros((4, 5), dtype=np.uint8)
    labels[:, 2:] = 1
    labels[0, 0] = IGNORE_LABEL
    labels[3, 4] = IGNORE_LABEL
    palette = [(0, 0, 0), (200, 0, 0)]
    out = overlay(rgb, labels, palette, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert out[0, 0].tolist() == [7, 8, 9] and out[3, 4].tolist() == [100, 100, 100]
    assert out[1, 0].tolist() == [50, 50, 50]
    assert out[1, 3].tolist() == [150, 50, 50]
    np.testing.assert_array_equal(overlay(rgb, labels, palette, alpha=0.0), rgb)


def test_colorize_and_unknown_ids():
    labels = np.array([[0, 1, IGNORE_LABEL]], dtype=np.uint8)
    out = colorize(labels, get_class_set("mfnet").palette)
    assert out.tolist() == [[[0, 0, 0], [64, 0, 128], [255, 255, 255]]]
    with pytest.raises(ValueError, match=r"\[9\]"):
        colorize(np.array([[9]], dtype=np.uint8), get_class_set("mfnet").palette)
    with pytest.raises(ValueError, match="uint8"):
        overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.int64), [(0, 0, 0)])


def test_class_sets():
    assert {name: cs.num_classes for name, cs in CLASS_SETS.items()} == {"mfnet": 9, "msrs": 9, "fmb": 15, "pst900": 5}
    mfnet = get_class_set("mfnet")
    assert mfnet.class_names[8] == "bump" and mfnet.palette[8] == (192, 64, 0)
    assert mfnet.palette_array().shape == (9, 3)
    assert default_class_set(9) is mfnet
    assert default_class_set(15).name == "fmb" and default_class_set(5).name == "pst900"
    generic = default_class_set(7)
    assert generic.num_classes == 7 and len(set(generic.palette)) == 7
    with pytest.raises(KeyError):
        get_class_set("cityscapes")


def test_minmax_and_percentile_of_extreme_finite_floats_stay_finite():
    # (x - lo) and (hi - lo) overflow float32 near ±3e38: the range is computed in float64.
    x = np.array([[-3e38, 0.0], [1.0, 3e38]], dtype=np.float32)
    for spec in ("minmax", "percentile:0,100"):
        y = ThermalNormalization.from_spec(spec).apply(x)
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
        assert y[0, 0] == 0.0 and y[1, 1] == 1.0 and abs(y[0, 1].item() - 0.5) < 1e-6


def test_auto_keeps_8_bit_thermal_and_spreads_raw_16_bit_counts():
    auto = ThermalNormalization.from_spec("auto")
    assert str(auto) == "auto" and auto.to_dict() == {"name": "auto"}
    x8 = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    assert torch.equal(auto.apply(x8), ThermalNormalization().apply(x8))  # what the model was trained on
    raw = (7400 + x8.astype(np.uint16) * 3).astype(np.uint16)  # a 14-bit camera's counts in a street scene
    fixed = ThermalNormalization().apply(raw)
    assert float(fixed.max() - fixed.min()) < 0.02  # /65535: the thermal image all but vanishes
    spread = auto.apply(raw)
    assert float(spread.max() - spread.min()) == 1.0


def test_the_agc_smooths_the_auto_range_over_frames():
    auto = ThermalNormalization.from_spec("auto")
    base = (7400 + np.random.default_rng(0).integers(0, 256, (48, 64)) * 3).astype(np.uint16)
    agc = ThermalAgc(auto, weight=0.2)
    first = float(agc.apply(base).mean())
    warmer = base + np.uint16(300)  # the whole scene warms up (or the camera's offset drifts)
    means = [float(agc.apply(warmer).mean()) for _ in range(40)]
    # Per frame, an offset would change nothing; smoothed, the image brightens and then settles back.
    assert first < means[0] < 1.0 and means[0] > means[5] > means[-1]
    assert abs(means[-1] - first) < 0.01
    assert abs(float(agc.apply(base[:32]).mean()) - float(auto.apply(base[:32]).mean())) < 1e-6  # new size: anew
    x8 = base.astype(np.uint8)
    assert torch.equal(agc.apply(x8), auto.apply(x8))
    with pytest.raises(ValueError, match="weight"):
        ThermalAgc(auto, weight=0.0)
