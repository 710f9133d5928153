"""Encoder-side modules (SFE, DEM, CAM, AFM, PHF, DSRM, ResNet trunk) against the official parity fixtures."""

from __future__ import annotations

import json
import re

import pytest
import torch
from parity_utils import FIXTURES, PARITY_ATOL, load_fixture, max_abs_error

from mafs_ros.model.afm import AFM, FusionModule
from mafs_ros.model.cam import CAM
from mafs_ros.model.dem import DEM
from mafs_ros.model.dsrm import DSRM
from mafs_ros.model.official import to_official_key
from mafs_ros.model.phf import PHF
from mafs_ros.model.resnet import ResNetTrunk
from mafs_ros.model.sfe import SFE

MANIFEST = FIXTURES.parent / "mafs_official_state_dict_keys.json"


def _run_fixture(module: torch.nn.Module, name: str, expected_key: str = "outputs") -> float:
    fixture = load_fixture(name)
    module.load_state_dict(fixture["state_dict"], strict=True)
    module.eval()
    with torch.no_grad():
        out = module(*fixture["inputs"])
    return max_abs_error(out, fixture[expected_key])


PARITY_CASES = {
    "sfe_rgb": lambda c: SFE(c["in_channels"], out_channels=c["out_channels"]),
    "sfe_thermal": lambda c: SFE(c["in_channels"], out_channels=c["out_channels"]),
    "eaef2": lambda c: DEM(c["dim"], gate="official_b1"),
    "cam_low_fuse3": lambda c: CAM(c["in_channel"], c["out_channel"]),
    "sdfm_low_fuse1": lambda c: AFM(c["in_C"], c["out_C"]),
    "fusion_module_low_fuse1": lambda c: FusionModule(c["channels"], reduction=c["r"]),
    "sim1": lambda c: PHF(c["norm_nc"], c["label_nc"], c["nhidden"]),
    "dsrm": lambda c: DSRM(c["in_channel"], c["out_channel"]),
}


@pytest.mark.parametrize("name", sorted(PARITY_CASES))
def test_module_matches_official(name: str) -> None:
    module = PARITY_CASES[name](load_fixture(name)["constructor"])
    assert _run_fixture(module, name) <= PARITY_ATOL


def test_dem_intended_gate_matches_reference() -> None:
    assert _run_fixture(DEM(64, gate="intended"), "eaef2", "outputs_intended_gate") <= PARITY_ATOL


def test_dem_gate_modes_differ() -> None:
    fixture = load_fixture("eaef2")
    assert max_abs_error(fixture["outputs"], fixture["outputs_intended_gate"]) > 1e-2


def test_dem_rejects_unknown_gate() -> None:
    with pytest.raises(ValueError):
        DEM(8, gate="diagonal")


@pytest.mark.parametrize("gate", ["intended", "official_b1"])
def test_dem_batch_does_not_mix_samples(gate: str) -> None:
    module = DEM(64, gate=gate)
    module.load_state_dict(load_fixture("eaef2")["state_dict"], strict=True)
    module.eval()
    x = torch.relu(torch.randn(2, 128, 15, 19, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        batched = module(x)
        separate = torch.cat([module(x[:1]), module(x[1:])])
    assert max_abs_error(batched, separate) <= PARITY_ATOL


SHAPE_CASES = {
    "sfe": (lambda: SFE(3, 8, 16), [(2, 3, 30, 38)], [(2, 8, 30, 38), (2, 16, 15, 19)]),
    "dem": (lambda: DEM(8), [(2, 16, 30, 38)], (2, 16, 30, 38)),
    "dem_official_b1": (lambda: DEM(4, gate="official_b1"), [(2, 8, 30, 38)], (2, 8, 30, 38)),
    "cam": (lambda: CAM(12, 8), [(2, 12, 30, 38), (2, 12, 30, 38)], (2, 8, 30, 38)),
    "afm": (lambda: AFM(6, 8), [(2, 6, 30, 38), (2, 6, 30, 38)], (2, 8, 30, 38)),
    "afm_tiny": (lambda: AFM(2, 2), [(2, 2, 30, 38), (2, 2, 30, 38)], (2, 2, 30, 38)),
    "phf": (lambda: PHF(8, 12, 8), [(2, 8, 30, 38), (2, 12, 15, 19)], (2, 8, 30, 38)),
    "dsrm": (lambda: DSRM(8, 6), [(2, 8, 30, 38)], (2, 6, 30, 38)),
}


@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
@pytest.mark.parametrize("training", [False, True])
def test_module_shapes_batch2_odd_size(name: str, training: bool) -> None:
    build, input_shapes, expected = SHAPE_CASES[name]
    module = build().train(training)
    with torch.no_grad():
        out = module(*(torch.randn(shape) for shape in input_shapes))
    shapes = [tuple(o.shape) for o in out] if isinstance(out, tuple) else tuple(out.shape)
    assert shapes == expected


def test_small_widths_keep_hidden_layers() -> None:
    assert DEM(4).cse.down.out_features == 1
    assert FusionModule(2).local_att[0].out_channels == 1
    assert DEM(64).cse.down.out_features == 8
    assert FusionModule(32).Recalibrate[1].out_channels == 16


def _official_trunk_keys(stream: str) -> list[tuple[str, list[int]]]:
    keys = json.loads(MANIFEST.read_text())["keys"]
    pattern = re.compile(rf"encoder\.encoder_{stream}_(bn1|layer[3-6])\.")
    return [(key, shape) for key, shape in keys.items() if pattern.match(key)]


def test_resnet_trunk_keys_match_official_manifest() -> None:
    with torch.device("meta"):
        trunk = ResNetTrunk()
    ours = [(to_official_key(f"encoder.trunk_rgb.{k}"), list(v.shape)) for k, v in trunk.state_dict().items()]
    assert ours == _official_trunk_keys("rgb")
    assert [(k.replace("rgb", "thermal"), s) for k, s in ours] == _official_trunk_keys("thermal")


def test_resnet_bottleneck_is_v15() -> None:
    block = ResNetTrunk(layers=(1, 1, 1, 1)).layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize(
    ("block", "layers", "widths", "in_channels", "expected_channels"),
    [
        ("bottleneck", (1, 2, 1, 1), (64, 128, 256, 512), 64, (256, 512, 1024, 2048)),
        ("basic", (1, 1, 1, 1), (32, 64, 128, 256), 32, (32, 64, 128, 256)),
        ("basic", (2, 1, 1, 1), (8, 16, 32, 64), 16, (8, 16, 32, 64)),
    ],
)
def test_resnet_trunk_shapes(
    block: str, layers: tuple[int, ...], widths: tuple[int, ...], in_channels: int, expected_channels: tuple[int, ...]
) -> None:
    trunk = ResNetTrunk(block, layers, widths, in_channels).eval()
    assert trunk.out_channels == expected_channels
    # The SFE output of a 96x128 image (48x64) at batch 1 and of a 94x126 image (47x63) at batch 2.
    for batch, height, width in [(1, 48, 64), (2, 47, 63)]:
        x = torch.randn(batch, in_channels, height, width)
        with torch.no_grad():
            assert trunk.stem(x).shape == x.shape
            features = trunk(x)
        sizes = [(24, 32), (12, 16), (6, 8), (3, 4)]
        assert [tuple(f.shape) for f in features] == [(batch, c, *hw) for c, hw in zip(expected_channels, sizes)]


def test_resnet_trunk_rejects_unknown_block() -> None:
    with pytest.raises(ValueError):
        ResNetTrunk(block="resnext")
