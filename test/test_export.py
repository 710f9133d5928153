"""ONNX export (`mafs export --onnx`, mafs_ros.export) and the onnxruntime backend of MafsEngine.

Two exports of the shipped mafs-lite checkpoint are shared by the module (each takes several seconds): a
dynamic one (batch, height and width; traced at 64x96) made with `export_onnx`, and a fixed 64x96, batch-1
one made through the CLI, which also verifies it on the six sample pairs. Everything runs at small sizes.
"""

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import mafs_ros.cli as cli
import mafs_ros.export as export
from mafs_ros.backends.onnxruntime_backend import OnnxRuntimeNet
from mafs_ros.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from mafs_ros.class_sets import MFNET
from mafs_ros.engine import MafsEngine
from mafs_ros.export import OnnxVerificationError, export_onnx, verify_onnx
from mafs_ros.io.samples import sample_pairs
from mafs_ros.model import build_model, get_config

FIXED_SIZE = (64, 96)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory) -> Path:
    return export_onnx(None, tmp_path_factory.mktemp("dynamic") / "mafs-lite.onnx")


@pytest.fixture(scope="module")
def fixed_export(tmp_path_factory) -> tuple[int, str, Path]:
    """(exit code, stdout, path) of `mafs export` at a fixed size with batch 1 and verification."""
    path = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["export", "--onnx", str(path), "--height", str(FIXED_SIZE[0]), "--width",
                         str(FIXED_SIZE[1]), "--static-batch"])
    return code, stdout.getvalue(), path


@pytest.fixture(scope="module")
def torch_engine() -> MafsEngine:
    return MafsEngine(None, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def torch_net(torch_engine):
    return torch_engine.model


def _random_checkpoint(path: Path) -> Path:
    """A mafs-lite checkpoint with the same config as the shipped one and other (random) weights."""
    torch.manual_seed(0)
    return save_checkpoint(path, build_model(get_config("mafs-lite")), MFNET.class_names, MFNET.palette,
                           thermal_normalization="fixed", trained=False, description="random test weights")


def _network_inputs(engine: MafsEngine, size: tuple[int, int], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return engine.network_inputs(sample_pairs(size, count))


# ---------------------------------------------------------------------------------------------------------
# The exported file


def test_metadata_round_trip(dynamic_onnx):
    ckpt = load_checkpoint(None)
    net = OnnxRuntimeNet(dynamic_onnx, CPU)
    assert net.config == ckpt.config
    assert net.class_names == ckpt.class_names
    np.testing.assert_array_equal(net.palette, ckpt.palette)
    assert net.inputs == ckpt.inputs
    assert net.trained is True and net.input_size is None

    model = onnx.load(str(dynamic_onnx))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["mafs_ros_onnx_version"]) == 1
    assert json.loads(props["source_checkpoint"]) == DEFAULT_CHECKPOINT.name
    assert json.loads(props["source_checkpoint_sha256"]) == hashlib.sha256(DEFAULT_CHECKPOINT.read_bytes()).hexdigest()
    assert json.loads(props["input_conventions"])["size_multiple"] == 32
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


def test_cli_export_fixed_size_verifies(fixed_export):
    code, stdout, path = fixed_export
    assert code == 0, stdout
    assert "fixed size 64x96, batch 1" in stdout
    assert "verified on 6 sample pair(s) at 64x96" in stdout
    net = OnnxRuntimeNet(path, CPU)
    assert net.input_size == FIXED_SIZE
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, *FIXED_SIZE]


# ---------------------------------------------------------------------------------------------------------
# onnxruntime against PyTorch


@pytest.mark.parametrize("size", [(96, 128), (128, 64)])
def test_dynamic_size_matches_torch_at_other_sizes(dynamic_onnx, torch_engine, torch_net, size):
    # Not the traced 64x96: the graph really is size-dynamic.
    vi, ir = _network_inputs(torch_engine, size, 2)
    with torch.inference_mode():
        expected = torch_net(vi, ir)
    actual = OnnxRuntimeNet(dynamic_onnx, CPU)(vi, ir)
    assert actual.fused.shape == (2, 1, *size) and actual.semantic.shape == (2, 9, *size)
    assert (actual.fused - expected.fused).abs().max() <= 1e-4
    assert (actual.semantic - expected.semantic).abs().max() <= 1e-4


def test_dynamic_batch_one_and_three(dynamic_onnx, torch_engine, torch_net):
    net = OnnxRuntimeNet(dynamic_onnx, CPU)
    vi, ir = _network_inputs(torch_engine, FIXED_SIZE, 3)
    batch = net(vi, ir)
    single = net(vi[1:2], ir[1:2])
    with torch.inference_mode():
        expected = torch_net(vi, ir)
    assert batch.semantic.shape == (3, 9, *FIXED_SIZE) and single.semantic.shape == (1, 9, *FIXED_SIZE)
    assert (batch.semantic[1:2] - single.semantic).abs().max() <= 1e-5
    assert (batch.fused[1:2] - single.fused).abs().max() <= 1e-5
    assert (batch.semantic - expected.semantic).abs().max() <= 1e-4
    assert (batch.fused - expected.fused).abs().max() <= 1e-4


def test_verify_onnx_on_sample_pairs(dynamic_onnx):
    report = verify_onnx(dynamic_onnx, None, sample_pairs((96, 128), 2))
    assert report["pairs"] == 2 and report["size"] == (96, 128)
    # At this size the logits stay small, so even the plain absolute bound holds.
    assert 0 < report["max_abs_error"]["fused"] <= 1e-4
    assert 0 < report["max_abs_error"]["semantic"] <= 1e-4
    assert report["torch_ms"] > 0 and report["onnxruntime_ms"] > 0


def test_verify_onnx_detects_other_weights(dynamic_onnx, tmp_path):
    other = _random_checkpoint(tmp_path / "random.safetensors")
    with pytest.raises(OnnxVerificationError, match="differs from PyTorch beyond the tolerance"):
        verify_onnx(dynamic_onnx, other, sample_pairs(FIXED_SIZE, 1))


# ---------------------------------------------------------------------------------------------------------
# MafsEngine with an .onnx checkpoint


def test_engine_onnx_matches_torch_engine(dynamic_onnx, torch_engine):
    engine = MafsEngine(str(dynamic_onnx), device="cpu")
    assert engine.backend == "onnxruntime" and torch_engine.backend == "torch"
    assert engine.checkpoint_path == dynamic_onnx and engine.checkpoint_trained is True
    assert engine.class_names == torch_engine.class_names and not engine.optimized
    # 100x140 is resized to the network's 96x128 and back: the engine's whole pipeline runs.
    pairs = sample_pairs((100, 140), 2)
    for ours, reference in zip(engine.infer_batch(pairs), torch_engine.infer_batch(pairs)):
        assert (ours.labels == reference.labels).mean() >= 0.999
        assert np.abs(ours.fused_rgb.astype(int) - reference.fused_rgb).max() <= 1
        assert np.abs(ours.fused_y.astype(int) - reference.fused_y).max() <= 1


def test_engine_fixed_batch_export_runs_a_batch_per_pair(fixed_export, torch_engine):
    engine = MafsEngine(fixed_export[2], device="cpu")
    pairs = sample_pairs(FIXED_SIZE, 2)
    for ours, reference in zip(engine.infer_batch(pairs), torch_engine.infer_batch(pairs)):
        assert (ours.labels == reference.labels).mean() >= 0.999
        assert np.abs(ours.fused_rgb.astype(int) - reference.fused_rgb).max() <= 1


# ---------------------------------------------------------------------------------------------------------
# Refusals


def test_fixed_size_model_refuses_other_sizes(fixed_export):
    engine = MafsEngine(fixed_export[2], device="cpu")
    with pytest.raises(ValueError, match="exported for 64x96 network inputs, got 96x128"):
        engine.infer(*sample_pairs((96, 128), 1)[0])


def test_dynamic_model_refuses_sizes_off_the_stride(dynamic_onnx):
    net = OnnxRuntimeNet(dynamic_onnx, CPU)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        net(torch.zeros(1, 3, 100, 120), torch.zeros(1, 1, 100, 120))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_engine_refuses_reduced_precision_with_onnx(dynamic_onnx, precision):
    # fp16 on a CPU is refused before the model is looked at; bf16 (allowed on CPUs for PyTorch) by the ONNX branch.
    with pytest.raises(ValueError, match="CUDA|ONNX"):
        MafsEngine(dynamic_onnx, device="cpu", precision=precision)


def test_engine_refuses_optimize_with_onnx(dynamic_onnx):
    with pytest.raises(ValueError, match="optimize does not apply"):
        MafsEngine(dynamic_onnx, device="cpu", optimize=True)


def test_refuses_onnx_without_metadata(dynamic_onnx, tmp_path):
    model = onnx.load(str(dynamic_onnx))
    del model.metadata_props[:]
    path = tmp_path / "plain.onnx"
    onnx.save(model, str(path))
    with pytest.raises(CheckpointError, match=r"plain\.onnx is an ONNX model but not one exported by `mafs export"):
        MafsEngine(path, device="cpu")


def test_refuses_onnx_with_other_input_names(dynamic_onnx, tmp_path):
    model = onnx.load(str(dynamic_onnx))
    for value in model.graph.input:
        value.name = value.name.replace("visible", "rgb")
    for node in model.graph.node:
        node.input[:] = ["rgb" if name == "visible" else name for name in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(CheckpointError, match=r"renamed\.onnx: inputs \['rgb', 'thermal'\]"):
        OnnxRuntimeNet(path, CPU)


def test_refuses_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(CheckpointError, match="ONNX model not found"):
        MafsEngine(tmp_path / "missing.onnx", device="cpu")
    bogus = tmp_path / "bogus.onnx"
    shutil.copy(DEFAULT_CHECKPOINT, bogus)
    with pytest.raises(CheckpointError, match="bogus.onnx is not a usable ONNX model"):
        MafsEngine(bogus, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 64}, "both height and width"),
        ({"height": 64, "width": 100}, "multiples of 32"),
        ({"opset": 16}, "opset must be within 17..20"),
    ],
)
def test_export_refuses_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_onnx(None, tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------------------------------------------------
# CLI exit codes


@pytest.mark.parametrize(
    "arguments",
    [["--height", "64", "--width", "100"], ["--opset", "16"], ["--checkpoint", "missing.safetensors"]],
)
def test_cli_export_unusable_arguments_exit_2(tmp_path, arguments, capsys):
    assert cli.main(["export", "--onnx", str(tmp_path / "x.onnx"), *arguments]) == 2
    assert "cannot export" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_verification_failure_exit_1(fixed_export, tmp_path, monkeypatch, capsys):
    # The export is stubbed with the fixed-size file of the shipped weights; --checkpoint names other
    # weights, so the real verification must fail.
    monkeypatch.setattr(export, "export_onnx", lambda *args, **kwargs: fixed_export[2])
    other = _random_checkpoint(tmp_path / "random.safetensors")
    code = cli.main(["export", "--onnx", str(fixed_export[2]), "--checkpoint", str(other),
                     "--height", str(FIXED_SIZE[0]), "--width", str(FIXED_SIZE[1])])
    assert code == 1
    assert "differs from PyTorch beyond the tolerance" in capsys.readouterr().err
