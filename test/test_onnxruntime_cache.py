"""The onnxruntime backend on a checkpoint (`backends/onnxruntime_cache.py`), MafsEngine's default on a CPU:
which backend `auto` picks, the export checked and cached per network size, and cache entries that cannot be
trusted rebuilt. Small sizes: every export of the shipped mafs-lite takes a few seconds."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mafs_ros.backends import default_backend, select_backend
from mafs_ros.backends.onnxruntime_cache import CachedOnnxRuntimeNet
from mafs_ros.engine import MafsEngine
from mafs_ros.io.samples import sample_pairs
from mafs_ros.model import build_model, get_config

SIZE = (64, 96)  # a multiple of 32: the network size is the input size
CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MAFS_ROS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture(scope="module")
def torch_engine() -> MafsEngine:
    return MafsEngine(None, device="cpu", backend="torch")


def test_auto_runs_checkpoints_in_onnxruntime_on_a_cpu_and_pytorch_otherwise():
    assert default_backend(CPU, "fp32", "none") == "onnxruntime"
    assert default_backend(CPU, "bf16", "none") == "torch"  # onnxruntime runs its fp32 graph only
    assert default_backend(CPU, "fp32", "default") == "torch"  # torch.compile is PyTorch's
    assert default_backend(torch.device("cuda"), "fp32", "none") == "torch"
    model = build_model(get_config("mafs-tiny"))
    assert select_backend(model, "auto", CPU, "fp32", "none").name == "torch"  # a model may go on training
    assert select_backend(model, "onnxruntime", CPU, "fp32", "none").name == "onnxruntime"
    assert select_backend("x.onnx", "auto", CPU, "fp32", "none").suffixes == (".onnx",)
    with pytest.raises(ValueError, match="is an ONNX file"):
        select_backend("x.onnx", "torch", CPU, "fp32", "none")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        select_backend(None, "tensorrt", CPU, "fp32", "none")
    with pytest.raises(ValueError, match="fp32 only"):
        MafsEngine(None, device="cpu", precision="bf16", backend="onnxruntime")


def test_the_default_cpu_engine_exports_checks_and_caches_per_size(cache, torch_engine, caplog):
    caplog.set_level(logging.INFO, logger="mafs_ros.backends.onnxruntime_cache")
    engine = MafsEngine(None, device="cpu")
    assert engine.backend == "onnxruntime" and torch_engine.backend == "torch"
    pairs = sample_pairs(SIZE, 2)
    for ours, reference in zip(engine.infer_batch(pairs), torch_engine.infer_batch(pairs)):
        assert (ours.labels == reference.labels).mean() >= 0.999
        assert np.abs(ours.fused_y.astype(int) - reference.fused_y).max() <= 1
    (onnx_file,) = cache.glob("mafs-lite-64x96-*.onnx")
    record = json.loads(onnx_file.with_suffix(".json").read_text())
    assert record["key"]["size"] == list(SIZE) and record["check"]["max_abs_error"]["semantic"] <= 1e-4 * max(
        1.0, record["check"]["max_abs_value"]["semantic"])
    assert "checked it against PyTorch" in caplog.text and str(onnx_file) in caplog.text
    caplog.clear()
    stamp = onnx_file.stat().st_mtime_ns
    again = MafsEngine(None, device="cpu")
    again.infer(*pairs[0])
    assert onnx_file.stat().st_mtime_ns == stamp and "from the cache" in caplog.text
    again.infer(*sample_pairs((96, 128), 1)[0])  # another size: another graph
    assert len(list(cache.glob("mafs-lite-*.onnx"))) == 2


@pytest.mark.parametrize("damage", ["truncated", "edited_record", "other_key", "no_record"])
def test_a_cache_entry_that_cannot_be_trusted_is_rebuilt(cache, damage, caplog):
    engine = MafsEngine(None, device="cpu")
    pair = sample_pairs(SIZE, 1)[0]
    expected = engine.infer(*pair).labels
    (onnx_file,) = cache.glob("*.onnx")
    record_file = onnx_file.with_suffix(".json")
    if damage == "truncated":
        onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    elif damage == "edited_record":
        record_file.write_text("{not json")
    elif damage == "other_key":
        record = json.loads(record_file.read_text())
        record["key"]["onnxruntime"] = "0.0.0"
        record_file.write_text(json.dumps(record))
    else:
        record_file.unlink()
    caplog.set_level(logging.INFO, logger="mafs_ros.backends.onnxruntime_cache")
    rebuilt = MafsEngine(None, device="cpu")
    assert np.array_equal(rebuilt.infer(*pair).labels, expected)
    assert "checked it against PyTorch" in caplog.text
    if damage != "no_record":
        assert "rebuilding the cached ONNX graph" in caplog.text
    assert json.loads(record_file.read_text())["onnx_sha256"]


def test_an_unwritable_cache_falls_back_to_a_temporary_folder(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MAFS_ROS_CACHE", str(blocker))
    caplog.set_level(logging.WARNING)
    engine = MafsEngine(None, device="cpu")
    assert engine.infer(*sample_pairs(SIZE, 1)[0]).labels.shape == SIZE
    assert "cannot write the ONNX cache" in caplog.text and "MAFS_ROS_CACHE" in caplog.text


def test_a_model_in_memory_is_keyed_by_its_weights(cache):
    torch.manual_seed(0)
    model = build_model(get_config("mafs-tiny")).eval()
    engine = MafsEngine(model=model, device="cpu", backend="onnxruntime")
    net = engine.model
    assert isinstance(net, CachedOnnxRuntimeNet)
    first = net.entry(SIZE)[0]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert MafsEngine(model=model, device="cpu", backend="onnxruntime").model.entry(SIZE)[0] != first
