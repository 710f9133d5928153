"""checkpoint: round trip, strict loading, and a clear CheckpointError for every kind of bad file."""

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import mafs_ros.checkpoint as checkpoint_module
from mafs_ros.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    build_model_from_checkpoint,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
    weights_sha256,
)
from mafs_ros.class_sets import MFNET
from mafs_ros.imaging import ThermalNormalization
from mafs_ros.model import build_model, get_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(get_config("mafs-lite")).eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "lite.safetensors"
    save_checkpoint(
        path,
        model,
        MFNET.class_names,
        MFNET.palette,
        thermal_normalization="percentile:2,98",
        trained=True,
        description="test checkpoint",
        extra={"dataset": "msrs_sample", "epochs": 0},
    )
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _rewrite(src: Path, dst: Path, *, metadata: dict | None = None, drop: tuple = (), tensors=None) -> Path:
    """Copy a checkpoint with changed metadata fields (values JSON-encoded here) and/or tensors."""
    old_tensors, old_meta = _read(src)
    tensors = old_tensors if tensors is None else tensors
    meta = {k: v for k, v in old_meta.items() if k not in drop}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_round_trip(model, saved):
    ckpt = load_checkpoint(saved)
    assert ckpt.path == saved
    assert ckpt.config == model.config
    assert ckpt.class_names == MFNET.class_names
    np.testing.assert_array_equal(ckpt.palette, MFNET.palette_array())
    assert ckpt.palette.dtype == np.uint8
    assert ckpt.thermal_normalization == ThermalNormalization("percentile", p_lo=2, p_hi=98)
    assert ckpt.inputs.ignore_label == 255 and ckpt.inputs.size_multiple == 32
    assert ckpt.trained is True and ckpt.description == "test checkpoint"
    assert ckpt.extra == {"dataset": "msrs_sample", "epochs": 0}
    reference = model.state_dict()
    assert ckpt.state_dict.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ckpt.state_dict[name], tensor), name
    rebuilt = build_model_from_checkpoint(ckpt)
    assert not rebuilt.training
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_metadata_is_json_strings(saved):
    _, meta = _read(saved)
    assert json.loads(meta["mafs_format"]) == "mafs_ros.checkpoint"
    assert json.loads(meta["mafs_format_version"]) == 1
    assert json.loads(meta["input_conventions"])["visible"] == {
        "channels": "RGB", "range": [0.0, 1.0], "mean": None, "std": None
    }


def test_untrained_warns(model, tmp_path, caplog):
    path = save_checkpoint(
        tmp_path / "u.safetensors", model, MFNET.class_names, MFNET.palette,
        thermal_normalization="fixed", trained=False, description="UNTRAINED",
    )
    with caplog.at_level(logging.WARNING, logger="mafs_ros.checkpoint"):
        assert load_checkpoint(path).trained is False
    assert "UNTRAINED" in caplog.text


def test_strict_mismatch_names_keys(saved):
    ckpt = load_checkpoint(saved)
    names = sorted(ckpt.state_dict)
    state = dict(ckpt.state_dict)
    del state[names[0]]
    state["extra.weight"] = torch.zeros(1)
    state[names[1]] = torch.zeros(3, 3, 3)
    with pytest.raises(CheckpointError) as err:
        build_model_from_checkpoint(dataclasses.replace(ckpt, state_dict=state))
    message = str(err.value)
    assert f"1 missing keys: {names[0]}" in message
    assert "1 unexpected keys: extra.weight" in message
    assert f"1 shape mismatches: {names[1]} (3, 3, 3)" in message


def test_strict_lists_first_ten_and_counts(model):
    state = {k: v for i, (k, v) in enumerate(model.state_dict().items()) if i >= 25}
    with pytest.raises(CheckpointError, match=r"25 missing keys: .*\.\.\. \(25 in all\)"):
        load_state_dict_strict(build_model(model.config), state)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_not_safetensors(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_truncated(saved, tmp_path):
    data = saved.read_bytes()
    for size in (len(data) // 2, 100, 4):
        path = tmp_path / f"cut{size}.safetensors"
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            load_checkpoint(path)


def test_flipped_weight_bytes(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    for offset in (len(data) - 1000, len(data) // 2):
        data[offset] ^= 0x01  # a low mantissa bit: the weight stays finite, only the checksum can tell
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_flipped_header_bytes(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[20] = ord("}")  # inside the JSON header
    path = tmp_path / "header.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_nan_weight(model, saved, tmp_path):
    tensors, _ = _read(saved)
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[3]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    # A consistent checksum, so that the NaN check itself must catch it.
    path = _rewrite(saved, tmp_path / "nan.safetensors", tensors=tensors,
                    metadata={"weights_sha256": weights_sha256(tensors)})
    with pytest.raises(CheckpointError, match=f"{name}.*non-finite"):
        load_checkpoint(path)


def test_save_refuses_nan(tmp_path):
    net = build_model(get_config("mafs-lite"))
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "x.safetensors", net, MFNET.class_names, MFNET.palette,
                        thermal_normalization="fixed", trained=False, description="")
    assert not list(tmp_path.iterdir())


def test_bad_metadata(saved, tmp_path):
    cases = [
        ({"drop": ("palette", "trained")}, r"missing metadata field\(s\) \['palette', 'trained'\]"),
        ({"metadata": {"mafs_format_version": 2}}, "unsupported checkpoint format version 2"),
        ({"metadata": {"class_names": list(MFNET.class_names[:8])}}, "9 strings .* got 8"),
        ({"metadata": {"palette": [[0, 0, 0]] * 9 + [[1, 1, 1]]}}, "palette"),
        ({"metadata": {"trained": "yes"}}, "trained"),
        ({"metadata": {"model_config": {"name": "x", "widths": 3}}}, "model_config"),
        ({"drop": ("mafs_format",)}, "not a mafs_ros checkpoint.*import-official"),
    ]
    for i, (change, pattern) in enumerate(cases):
        path = _rewrite(saved, tmp_path / f"bad{i}.safetensors", **change)
        with pytest.raises(CheckpointError, match=pattern):
            load_checkpoint(path)


def test_foreign_metadata_keys_are_ignored(saved, tmp_path):
    tensors, meta = _read(saved)
    save_file(tensors, str(tmp_path / "pt.safetensors"), metadata={**meta, "format": "pt"})
    assert load_checkpoint(tmp_path / "pt.safetensors").description == "test checkpoint"


def test_save_validates_classes(model, tmp_path):
    with pytest.raises(CheckpointError, match="class_names"):
        save_checkpoint(tmp_path / "x.safetensors", model, MFNET.class_names[:5], MFNET.palette,
                        thermal_normalization="fixed", trained=False, description="")


def test_default_checkpoint(monkeypatch, tmp_path):
    assert DEFAULT_CHECKPOINT.parent.name == "checkpoints" and DEFAULT_CHECKPOINT.parent.parent.name == "mafs_ros"
    monkeypatch.setattr(checkpoint_module, "DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="packaged default checkpoint not found"):
        load_checkpoint(None)


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="the packaged default checkpoint is not generated yet")
def test_packaged_default_loads(caplog):
    with caplog.at_level(logging.WARNING, logger="mafs_ros.checkpoint"):
        ckpt = load_checkpoint()
    build_model_from_checkpoint(ckpt)
    if not ckpt.trained:
        assert "UNTRAINED" in caplog.text and "UNTRAINED" in ckpt.description
    else:  # a shipped trained checkpoint says how it was made and what it scored
        assert "UNTRAINED" not in caplog.text
        assert {"recipe", "data", "msrs_sample_fusion_mean", "validation", "class_offsets"} <= set(ckpt.extra)
        # Trained on every labelled frame, so validated by runs of the same recipe under both protocols, each
        # next to the FPN baseline trained for the same time on the same frames.
        assert ckpt.extra["run_config"]["data"]["protocol"] == "none"
        for protocol in ("block", "interleaved"):
            validation = ckpt.extra["validation"][protocol]
            assert validation["run_config"]["data"]["protocol"] == protocol
            assert 0.0 < validation["both"]["mIoU"] < 1.0 and 0.0 < validation["fpn_baseline"]["val"]["all"]["mIoU"] < 1.0
            assert {"blank_rgb", "blank_thermal"} <= set(validation)
