"""The whole MAFS network: official key manifest, whole-model parity, shapes, Stage I, official import."""

from __future__ import annotations

import pytest
import torch
from parity_utils import (
    PARITY_ATOL,
    load_fixture,
    max_abs_error,
    official_key_shapes,
    official_random_weights,
    tensor_sha256,
    whole_network_tolerance,
)

from mafs_ros.model import MafsPretrainer, build_model, get_config
from mafs_ros.model.official import (
    OfficialCheckpointError,
    convert_official_state_dict,
    from_official_key,
    load_official_checkpoint,
    to_official_key,
)


@pytest.fixture(scope="module")
def official_weights() -> dict[str, torch.Tensor]:
    fixture = load_fixture("whole_model")
    weights = official_random_weights(official_key_shapes(), fixture["weights_seed"])
    for key, digest in fixture["weights_key_checksums"].items():
        assert tensor_sha256(weights[key]) == digest, f"regenerated weight {key} differs from the fixture's"
    return weights


def test_state_dict_maps_onto_official_key_manifest() -> None:
    net = build_model(get_config("mafs", num_classes=15, keep_official_unused=True))
    ours = {to_official_key(k): tuple(v.shape) for k, v in net.state_dict().items()}
    official = official_key_shapes()
    assert sorted(set(ours) - set(official)) == []
    assert sorted(set(official) - set(ours)) == []
    assert {k: ours[k] for k in official} == official
    assert all(from_official_key(to_official_key(k)) == k for k in net.state_dict())


@pytest.fixture(scope="module")
def float64_outputs(official_weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The whole network's outputs in float64 on the fixture's inputs (semantic, out1..out6, fused): the
    reference that measures float32 rounding (whole_network_tolerance)."""
    fixture = load_fixture("whole_model")
    cfg = get_config("mafs", num_classes=15, keep_official_unused=True, eaef_gate="official_b1")
    net = build_model(cfg).eval()
    net.load_state_dict({from_official_key(k): v for k, v in official_weights.items()}, strict=True)
    with torch.no_grad():
        out = net.double()(*(x.double() for x in fixture["inputs"]), with_aux=True)
    return [out.semantic, *out.aux, out.fused]


def test_whole_model_matches_official_outputs(
    official_weights: dict[str, torch.Tensor], float64_outputs: list[torch.Tensor]
) -> None:
    fixture = load_fixture("whole_model")
    cfg = get_config("mafs", num_classes=15, keep_official_unused=True, eaef_gate="official_b1")
    net = build_model(cfg).eval()
    net.load_state_dict({from_official_key(k): v for k, v in official_weights.items()}, strict=True)
    with torch.no_grad():
        out = net(*fixture["inputs"], with_aux=True)
    ours = [out.semantic, *out.aux, out.fused]
    for name, actual, exact, expected in zip(fixture["output_names"], ours, float64_outputs, fixture["outputs"]):
        tolerance = whole_network_tolerance(actual, exact)
        assert tolerance < 10 * PARITY_ATOL, name  # float32 rounding, not a different network
        assert max_abs_error(actual, expected) <= tolerance, name


def test_official_import_drops_dead_parameters_and_keeps_outputs(
    official_weights: dict[str, torch.Tensor], float64_outputs: list[torch.Tensor]
) -> None:
    fixture = load_fixture("whole_model")
    cfg, state = convert_official_state_dict({"module." + k: v for k, v in official_weights.items()}, 15)
    assert not cfg.keep_official_unused and cfg.eaef_gate == "official_b1" and cfg.num_classes == 15
    net = build_model(cfg).eval()
    net.load_state_dict(state, strict=True)
    dead = sum(v.numel() for k, v in official_weights.items() if from_official_key(k) not in state)
    assert 1.2e6 < dead < 1.35e6  # the 1.28 M parameters of the official dead branches
    with torch.no_grad():
        out = net(*fixture["inputs"])
    assert max_abs_error(out.fused, fixture["outputs"][7]) <= whole_network_tolerance(out.fused, float64_outputs[7])


def test_official_import_is_strict(official_weights: dict[str, torch.Tensor], tmp_path) -> None:
    broken = dict(official_weights)
    del broken["encoder.EAEF3.T_c"]
    broken["encoder.extra.weight"] = torch.zeros(1)
    broken["seg_decoder.aspp.conv0.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(OfficialCheckpointError) as err:
        convert_official_state_dict(broken, 15)
    message = str(err.value)
    assert "encoder.EAEF3.T_c" in message and "encoder.extra.weight" in message
    assert "seg_decoder.aspp.conv0.weight" in message
    with pytest.raises(OfficialCheckpointError, match="15 classes"):
        convert_official_state_dict(official_weights, 9)

    path = tmp_path / "official.pth"
    torch.save({"MTAN": official_weights, "epoch": 10}, path)
    cfg, state = load_official_checkpoint(path, 15)
    assert cfg.num_classes == 15 and len(state) > 2000
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match="garbage.pth"):
        load_official_checkpoint(tmp_path / "garbage.pth", 15)


@pytest.mark.parametrize("size", [(480, 640), (600, 800), (720, 1280)])
def test_lite_shapes_at_dataset_sizes_batch2(size: tuple[int, int]) -> None:
    cfg = get_config("mafs-lite", num_classes=9)
    net = build_model(cfg).eval()
    vi, ir = torch.rand(2, 3, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        out = net(vi, ir, with_aux=True)
        without_aux = net(vi, ir)
    assert out.semantic.shape == (2, 9, *size)
    assert out.aux == () and without_aux.aux == () and torch.equal(without_aux.semantic, out.semantic)
    assert out.fused.shape == (2, 1, *size)
    assert 0.0 <= out.fused.min() and out.fused.max() <= 1.0


@pytest.mark.parametrize("num_classes", [5, 9, 15])
def test_paper_config_odd_strides_batch2(num_classes: int) -> None:
    # 152x200 has the same odd stride pattern as FMB's 600x800 (.../38x50/19x25) at a CPU-friendly size.
    net = build_model(get_config("mafs", num_classes=num_classes)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 152, 200), torch.rand(2, 1, 152, 200))
    assert out.semantic.shape == (2, num_classes, 152, 200)
    assert out.fused.shape == (2, 1, 152, 200)


def test_batch_items_are_independent_in_eval() -> None:
    net = build_model(get_config("mafs-lite", num_classes=9)).eval()
    vi, ir = torch.rand(2, 3, 64, 96), torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        both = net(vi, ir)
        second = net(vi[1:], ir[1:])
    assert max_abs_error(both.semantic[1:], second.semantic) < 1e-4
    assert max_abs_error(both.fused[1:], second.fused) < 1e-5


def test_stage1_reconstructions() -> None:
    # Stage I needs the paper's ResNet MafsNet (mafs-lite starts from ImageNet weights instead)
    net = build_model(get_config("mafs-tiny", num_classes=9))
    # Batch 2: AFM's BatchNorms see 1x1 pooled maps and cannot train on a single sample.
    vi, ir = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    rec_vi, rec_ir = MafsPretrainer(net)(vi, ir)
    assert rec_vi.shape == rec_ir.shape == (2, 1, 64, 64)
    assert not torch.equal(rec_vi, rec_ir)
    shared_vi, shared_ir = MafsPretrainer(net, shared_head=True)(vi, ir)
    assert torch.equal(shared_vi, shared_ir)
    (rec_vi.mean() + rec_ir.mean()).backward()
    assert net.encoder.sfe_thermal.SFEB1[0].weight.grad is not None


def test_mismatched_inputs_are_rejected() -> None:
    net = build_model(get_config("mafs-lite", num_classes=9)).eval()
    with pytest.raises(ValueError, match="differ"):
        net(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 32, 64))


def test_import_official_command_writes_a_loadable_checkpoint(
    official_weights: dict[str, torch.Tensor], tmp_path, capsys
) -> None:
    from mafs_ros.checkpoint import build_model_from_checkpoint, load_checkpoint
    from mafs_ros.cli import main

    official = tmp_path / "mafs_fmb.pth"
    torch.save({"MTAN": official_weights}, official)
    ours = tmp_path / "mafs_fmb.safetensors"
    assert main(["import-official", str(official), "--classes", "15", "--out", str(ours)]) == 0
    checkpoint = load_checkpoint(ours)
    assert checkpoint.config.num_classes == 15 and len(checkpoint.class_names) == 15
    net = build_model_from_checkpoint(checkpoint)
    fixture = load_fixture("whole_model")
    with torch.no_grad():
        out = net(*fixture["inputs"])
    assert max_abs_error(out.semantic, fixture["outputs"][0]) <= PARITY_ATOL
    assert main(["import-official", str(official), "--classes", "9", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "15 classes" in capsys.readouterr().err


def test_model_info_reports_lite_budget(capsys) -> None:
    from mafs_ros.cli import main

    assert main(["model-info", "--config", "mafs-lite"]) == 0
    gmacs = float(capsys.readouterr().out.split("M parameters, ")[1].split(" GMACs")[0])
    assert 1.0 < gmacs <= 8.0  # the budget for mafs-lite at 480x640
