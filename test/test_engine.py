"""MafsEngine: pre/post-processing, size policies, batching, input validation, device/precision errors.

Most tests use small stand-in networks with MAFS's call/return structure, whose outputs are known
(fused = the visible luminance, labels = the thermal value quantised), so the engine's plumbing is checked
exactly; one test runs the real mafs-lite from a checkpoint file.
"""

import logging

import numpy as np
import pytest
import torch
from stand_in_net import NUM_CLASSES, KnownNet

from mafs_ros.checkpoint import save_checkpoint
from mafs_ros.class_sets import MFNET
from mafs_ros.engine import FusionResult, MafsEngine, resolve_device
from mafs_ros.model import build_model, get_config


def _pair(height: int, width: int, seed: int = 0, thermal_dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    top = 255 if thermal_dtype == np.uint8 else 65535
    thermal = rng.integers(0, top + 1, (height, width)).astype(thermal_dtype)
    return rgb, thermal


def _smooth_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Gradients, so that resizing changes little."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, 128 + 0 * xx], axis=-1).astype(np.uint8)
    return rgb, (xx * 255 // width).astype(np.uint8)


def _engine(**kwargs) -> MafsEngine:
    kwargs.setdefault("device", "cpu")
    return MafsEngine(model=KnownNet(), **kwargs)


def _check_result(result: FusionResult, height: int, width: int) -> None:
    assert result.fused_rgb.shape == (height, width, 3) and result.fused_rgb.dtype == np.uint8
    assert result.fused_y.shape == (height, width) and result.fused_y.dtype == np.uint8
    assert result.labels.shape == (height, width) and result.labels.dtype == np.uint8
    assert result.labels.max() < NUM_CLASSES
    assert result.confidence.shape == (height, width) and result.confidence.dtype == np.float32
    assert 0.0 <= result.confidence.min() and result.confidence.max() <= 1.0
    assert set(result.timings) == {"preprocess_ms", "inference_ms", "postprocess_ms"}


@pytest.mark.parametrize("policy", ["resize", "pad"])
@pytest.mark.parametrize("size", [(96, 128), (100, 130)])
def test_shapes_and_network_size(policy, size):
    engine = _engine(size_policy=policy)
    result = engine.infer(*_pair(*size), want_overlay=True)
    _check_result(result, *size)
    assert result.overlay.shape == (*size, 3) and result.overlay.dtype == np.uint8
    expected = {"resize": {(96, 128): (96, 128), (100, 130): (96, 128)},
                "pad": {(96, 128): (96, 128), (100, 130): (128, 160)}}[policy][size]
    assert engine.model.input_sizes == [(1, 3, *expected)]


def test_known_outputs_at_multiple_of_32():
    engine = _engine()
    rgb, thermal = _pair(96, 128, seed=1)
    result = engine.infer(rgb, thermal, want_confidence=False)
    assert result.confidence is None and result.overlay is None
    # fused Y = visible Y, restored with the visible Cb/Cr: the visible image comes back (YCbCr round trip).
    assert np.abs(result.fused_rgb.astype(int) - rgb).max() <= 3
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.abs(result.fused_y - y).max() <= 1.0
    np.testing.assert_array_equal(result.labels, np.minimum(thermal.astype(int) * NUM_CLASSES // 255, 8))


def test_pad_crops_back_exactly():
    rgb, thermal = _pair(100, 130, seed=2)
    result = _engine(size_policy="pad").infer(rgb, thermal)
    assert np.abs(result.fused_rgb.astype(int) - rgb).max() <= 3
    np.testing.assert_array_equal(result.labels, np.minimum(thermal.astype(int) * NUM_CLASSES // 255, 8))


def test_resize_restores_input_resolution():
    rgb, thermal = _smooth_pair(100, 130)
    result = _engine(size_policy="resize").infer(rgb, thermal)
    assert np.abs(result.fused_rgb.astype(int) - rgb).mean() < 2.0
    assert (result.labels == np.minimum(thermal.astype(int) * NUM_CLASSES // 255, 8)).mean() > 0.9


def test_warmup_runs_blank_frames():
    engine = _engine(warmup=2, warmup_size=(64, 96))
    assert engine.model.input_sizes == [(1, 3, 64, 96)] * 2


def test_thermal_normalization_override():
    rgb, _ = _pair(64, 64)
    thermal = np.full((64, 64), 30000, dtype=np.uint16)
    thermal[:, 32:] = 31000
    engine = _engine(thermal_normalization="minmax")
    assert str(engine.thermal_normalization) == "minmax"
    labels = engine.infer(rgb, thermal).labels
    assert (labels[:, :32] == 0).all() and (labels[:, 32:] == NUM_CLASSES - 1).all()


def test_batch_groups_sizes_and_keeps_order():
    engine = _engine()
    pairs = [_pair(64, 96, seed=0), _pair(96, 64, seed=1), _pair(64, 96, seed=2)]
    batch = engine.infer_batch(pairs)
    assert sorted(engine.model.input_sizes) == [(1, 3, 96, 64), (2, 3, 64, 96)]
    for (rgb, thermal), result in zip(pairs, batch):
        single = engine.infer(rgb, thermal)
        np.testing.assert_array_equal(result.fused_rgb, single.fused_rgb)
        np.testing.assert_array_equal(result.labels, single.labels)
    engine.model.input_sizes.clear()
    engine.infer_batch(pairs, max_batch_size=1)
    assert len(engine.model.input_sizes) == 3


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda rgb, th: (rgb[:90], th), "differ in size"),
        (lambda rgb, th: (rgb.astype(np.float32), th), "visible image must be uint8"),
        (lambda rgb, th: (rgb[..., :2], th), r"\(H, W, 3\)"),
        (lambda rgb, th: (np.dstack([rgb, rgb[..., :1]]), th), r"\(H, W, 3\)"),
        (lambda rgb, th: (rgb, np.dstack([th, th])), "thermal image must be"),
        (lambda rgb, th: (rgb, th.astype(np.int32)), "thermal image must be uint8, uint16"),
        (lambda rgb, th: (rgb[:0], th[:0]), "empty"),
        (lambda rgb, th: (rgb[:20], th[:20]), "too small"),
        (lambda rgb, th: (rgb.tolist(), th), "numpy array"),
    ],
)
def test_invalid_inputs(make, message):
    engine = _engine()
    with pytest.raises(ValueError, match=message):
        engine.infer(*make(*_pair(96, 128)))


def test_float_thermal_needs_a_range_under_fixed_and_is_stretched_by_default():
    rgb, thermal = _pair(96, 128)
    with pytest.raises(ValueError, match="explicit range"):
        _engine(thermal_normalization="fixed").infer(rgb, thermal.astype(np.float32))
    engine = _engine()  # the checkpoint says "fixed", which runs as "auto": 8-bit as fixed, the rest stretched
    assert str(engine.thermal_normalization) == "auto"
    assert engine.infer(rgb, thermal.astype(np.float32) * 0.1 + 20.0).thermal_span > 0.9


def test_non_finite_thermal_and_batch_index():
    engine = _engine(thermal_normalization="fixed:-20,60")
    rgb, _ = _pair(64, 64)
    good = np.zeros((64, 64), dtype=np.float32)
    bad = good.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        engine.infer(rgb, bad)
    with pytest.raises(ValueError, match="pair 1: thermal 64x32"):
        engine.infer_batch([(rgb, good), (rgb, good[:, :32])])


def test_three_channel_thermal_uses_first_channel():
    engine = _engine()
    rgb, thermal = _pair(64, 64)
    three = np.dstack([thermal, np.zeros_like(thermal), np.zeros_like(thermal)])
    np.testing.assert_array_equal(engine.infer(rgb, three).labels, engine.infer(rgb, thermal).labels)


def test_device_and_precision_errors(caplog):
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            _engine(device="cuda:0")
        with caplog.at_level(logging.INFO, logger="mafs_ros.engine"):
            assert resolve_device("auto") == torch.device("cpu")
        assert "device auto -> cpu" in caplog.text
    else:
        with pytest.raises(RuntimeError, match="only"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ValueError, match="bad device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
            _engine(device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be"):
        _engine(precision="int8")
    with pytest.raises(ValueError, match="size_policy"):
        _engine(size_policy="crop")
    with pytest.raises(ValueError, match="either a checkpoint or a model"):
        MafsEngine("x.safetensors", model=KnownNet(), device="cpu")


def test_real_model_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_config("mafs-lite"))
    path = save_checkpoint(tmp_path / "lite.safetensors", model, MFNET.class_names, MFNET.palette,
                           thermal_normalization="percentile", trained=False, description="UNTRAINED test")
    engine = MafsEngine(path, device="cpu", backend="torch")
    assert engine.checkpoint_trained is False and engine.checkpoint_path == path
    assert engine.class_names == MFNET.class_names and engine.palette.shape == (9, 3)
    assert str(engine.thermal_normalization) == "percentile:1,99"
    assert engine.config.name == "mafs-lite" and engine.device == torch.device("cpu") and engine.precision == "fp32"
    assert not engine.model.training
    rgb, thermal = _pair(70, 100, thermal_dtype=np.uint16)
    result = engine.infer(rgb, thermal, want_overlay=True)
    _check_result(result, 70, 100)
