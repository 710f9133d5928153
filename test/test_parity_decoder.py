"""Decoder-side MAFS modules: parity with the official code (fixtures) and shapes at generic sizes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from parity_utils import PARITY_ATOL, load_fixture, max_abs_error
from torch import nn

from mafs_ros.model.arm import ARM, DeepSupervisionClassifier, MultiDilationFusion, upsample_to
from mafs_ros.model.aspp import ASPP
from mafs_ros.model.fusion_decoder import FusionDecoder, InvBlock, InvertibleConv1x1
from mafs_ros.model.pixel_decoder import PixelDecoder, group_norm_groups
from mafs_ros.model.seg_head import PreliminaryDecoder, SegHead
from mafs_ros.model.transformer_decoder import MultiStageTransformerDecoder, TransformerBlock, UpEmbed

# Strides 1/4, 1/8, 1/16, 1/32 of a 600x800 (FMB) image: none of them halves exactly.
ODD_SIZES = [(150, 200), (75, 100), (38, 50), (19, 25)]
# The same for a 300x400 image (cheaper for the transformer decoder): 19x25 -> 38x50 is exact, 38x50 -> 75x100 not.
ODD_SIZES_SMALL = [(75, 100), (38, 50), (19, 25), (10, 13)]

# fixture -> (our module built from the fixture's constructor, inputs -> our call args, outputs -> compared part)
PARITY_CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[list], list], Callable[[Any], Any]]] = {
    "inn_invblock0": (lambda: InvBlock(32, 16), list, lambda out: out),
    "fusion_decoder": (lambda: FusionDecoder(32, 5), list, lambda out: out),
    # The official returns (mask_features, None, [4 maps]); MAFS only uses the 4 maps.
    "pixel_decoder": (lambda: PixelDecoder([64] * 4, 64, keep_official_unused=True), list, lambda out: out[2]),
    "arm_i_arm3": (lambda: ARM(64, 64, 64, 64), list, lambda out: out),
    "arm_ii_arm2": (lambda: ARM(64, 64, 64, 64), list, lambda out: out),
    "arm2_fuse": (lambda: MultiDilationFusion(96, 64), list, lambda out: out),
    "classifier_z1": (lambda: DeepSupervisionClassifier(64, 15, 2, 2), list, lambda out: out),
    "aspp": (lambda: ASPP(64), list, lambda out: out),
    # The official decoder is handed all four ASPP'd maps [1/32, 1/16, 1/8, 1/4] but reads only the last two.
    "invpt": (
        lambda: MultiStageTransformerDecoder(64, 2, 3, keep_official_unused=True),
        lambda inputs: [inputs[0], inputs[1][2:]],
        lambda out: out,
    ),
    # The official block also takes a `messages` dict, which it ignores.
    "invpt_block_stage0": (lambda: TransformerBlock(64, 2), lambda inputs: inputs[:1], lambda out: out),
    "invpt_upembed_stage1": (lambda: UpEmbed(64, 64), list, lambda out: out),
    "seg_head": (lambda: SegHead(64, 15, keep_official_unused=True), list, lambda out: out),
    "preliminary_decoder": (lambda: PreliminaryDecoder(64), list, lambda out: out),
}


def _loaded(name: str, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    build, _, _ = PARITY_CASES[name]
    module = build()
    module.load_state_dict(state_dict if state_dict is not None else load_fixture(name)["state_dict"], strict=True)
    return module.eval()


@pytest.mark.parametrize("name", sorted(PARITY_CASES))
def test_parity_with_official(name: str) -> None:
    fixture = load_fixture(name)
    _, adapt_inputs, expected_part = PARITY_CASES[name]
    module = _loaded(name)
    assert list(module.state_dict()) == list(fixture["state_dict"]), "state_dict order differs from the official"
    cases = [fixture] + list(fixture.get("extra_cases") or [])
    with torch.no_grad():
        for case in cases:
            out = module(*adapt_inputs(case["inputs"]))
            assert max_abs_error(out, expected_part(case["outputs"])) <= PARITY_ATOL


@pytest.mark.parametrize(
    "name, build",
    [
        ("pixel_decoder", lambda: PixelDecoder([64] * 4, 64)),
        ("invpt", lambda: MultiStageTransformerDecoder(64, 2, 3)),
        ("seg_head", lambda: SegHead(64, 15)),
    ],
)
def test_official_dead_keys_are_optional(name: str, build: Callable[[], nn.Module]) -> None:
    fixture = load_fixture(name)
    # The fixture lists dead keys without their BN counters, and not mask_features (it feeds the official
    # first output, which MAFS never uses): drop whole dead submodules.
    dead = {k.rsplit(".", 1)[0] for k in fixture["state_dict_keys_without_effect_on_outputs"]} | {"mask_features"}
    live = {k: v for k, v in fixture["state_dict"].items() if k.rsplit(".", 1)[0] not in dead}
    module = build()
    module.load_state_dict(live, strict=True)
    module.eval()
    _, adapt_inputs, expected_part = PARITY_CASES[name]
    with torch.no_grad():
        out = module(*adapt_inputs(fixture["inputs"]))
    assert max_abs_error(out, expected_part(fixture["outputs"])) <= PARITY_ATOL


def _check_batch_independent(module: nn.Module, *inputs: Any) -> Any:
    """Run a batch-2 input and check that sample 0 gives what it gives alone (no mixing across the batch)."""
    module.eval()

    def first(x: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return type(x)(first(t) for t in x)
        return x[:1]

    with torch.no_grad():
        out = module(*inputs)
        alone = module(*[first(x) for x in inputs])
    assert max_abs_error(first(out), alone) <= 1e-5
    return out


# ---- INN fusion decoder ----------------------------------------------------------------------------------


def test_invertible_conv_ignores_entries_outside_triangles() -> None:
    conv = _loaded("inn_invblock0").invconv
    w = conv.weight_matrix()
    with torch.no_grad():
        conv.lower.add_(torch.triu(torch.randn_like(conv.lower)))
        conv.upper.add_(torch.tril(torch.randn_like(conv.upper)))
    assert torch.equal(conv.weight_matrix(), w)


def test_invertible_conv_fresh_init_is_a_rotation() -> None:
    torch.manual_seed(0)
    conv = InvertibleConv1x1(8)
    w = conv.weight_matrix()
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)
    assert set(conv.state_dict()) == {"lower", "upper", "log_s", "p", "sign_s"}
    assert {name for name, _ in conv.named_buffers(recurse=False)} >= {"p", "sign_s"}


@pytest.mark.parametrize("channels, num_blocks", [(32, 5), (8, 3)])
def test_fusion_decoder_shapes(channels: int, num_blocks: int) -> None:
    torch.manual_seed(0)
    decoder = FusionDecoder(channels, num_blocks)
    x = torch.rand(2, channels, 11, 13)
    fused = _check_batch_independent(decoder, x)
    assert fused.shape == (2, 1, 11, 13)
    assert fused.min() >= 0 and fused.max() <= 1
    with torch.no_grad():
        features = decoder.features(x)
        assert features.shape == x.shape
        assert torch.equal(decoder.head(features), decoder(x))


def test_fusion_decoder_needs_three_blocks() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        FusionDecoder(8, 2)


# ---- FPN pixel decoder ------------------------------------------------------------------------------------


def test_group_norm_groups() -> None:
    assert [group_norm_groups(c) for c in (64, 32, 48, 8, 256)] == [32, 32, 16, 8, 32]


@pytest.mark.parametrize("dim", [48, 32])
def test_pixel_decoder_odd_sizes(dim: int) -> None:
    torch.manual_seed(0)
    in_channels = [16, 24, 40, 48]
    features = [torch.randn(2, c, *size) for c, size in zip(in_channels, ODD_SIZES, strict=True)]
    outputs = _check_batch_independent(PixelDecoder(in_channels, dim), features)
    assert [tuple(y.shape) for y in outputs] == [(2, dim, *size) for size in reversed(ODD_SIZES)]


def test_pixel_decoder_mask_features_only_with_official_unused() -> None:
    assert not any(k.startswith("mask_features") for k in PixelDecoder([32] * 4, 32).state_dict())
    assert "mask_features.bias" in PixelDecoder([32] * 4, 32, keep_official_unused=True).state_dict()


# ---- ARM cascade, ARM2, classifiers -----------------------------------------------------------------------


def test_upsample_to_exact_double_matches_official_upsampling() -> None:
    x = torch.randn(1, 3, 5, 7)
    reference = torch.empty(1, 3, 10, 14)
    official = nn.UpsamplingBilinear2d(scale_factor=2)(x)
    assert torch.equal(upsample_to(x, reference), official)
    assert upsample_to(x, torch.empty(1, 3, 9, 13)).shape[-2:] == (9, 13)


def test_arm_cascade_odd_sizes() -> None:
    torch.manual_seed(0)
    dim = 32
    f3, f4, f5, f6 = (torch.randn(2, 24, *size) for size in ODD_SIZES)
    ms0 = torch.rand(2, dim, *ODD_SIZES[3])
    arm_16, arm_8, arm_4 = ARM(24, 24, dim, dim), ARM(24, dim, dim, dim), ARM(24, dim, dim, dim)
    # 19x25 -> 38x50 is an exact x2; 38x50 -> 75x100 and 75x100 -> 150x200 are not.
    product, total = _check_batch_independent(arm_16, f5, f6, ms0)
    assert product.shape == total.shape == (2, dim, *ODD_SIZES[2])
    product, total = _check_batch_independent(arm_8, f4, product, total)
    assert product.shape == total.shape == (2, dim, *ODD_SIZES[1])
    product, total = _check_batch_independent(arm_4, f3, product, total)
    assert product.shape == total.shape == (2, dim, *ODD_SIZES[0])


def test_arm_outputs_are_product_and_sum() -> None:
    arm = _loaded("arm_ii_arm2")
    low, prev, high = load_fixture("arm_ii_arm2")["inputs"]
    with torch.no_grad():
        product, total = arm(low, prev, high)
        h = arm.high_out(upsample_to(high, low))
    assert torch.allclose(total, product + h)


@pytest.mark.parametrize("dim, num_classes", [(32, 9), (16, 5)])
def test_multi_dilation_fusion_and_classifiers(dim: int, num_classes: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, dim + 8, 19, 25)
    assert _check_batch_independent(MultiDilationFusion(dim + 8, dim), x).shape == (2, dim, 19, 25)
    assert MultiDilationFusion(dim, dim, dilations=(1, 3)).conv1.conv.in_channels == 2 * dim
    feature = torch.rand(2, dim, 19, 25)
    for outputs, up_first, up_second in [(num_classes, 4, 4), (2, 4, 2), (num_classes, 2, 2)]:
        classifier = DeepSupervisionClassifier(dim, outputs, up_first, up_second)
        scale = up_first * up_second
        assert _check_batch_independent(classifier, feature).shape == (2, outputs, 19 * scale, 25 * scale)


# ---- ASPP -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [64, 32])
def test_aspp_odd_size(dim: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, dim, *ODD_SIZES[3])
    assert _check_batch_independent(ASPP(dim), x).shape == x.shape


# ---- multi-stage transformer decoder ----------------------------------------------------------------------


def test_transformer_decoder_odd_sizes() -> None:
    torch.manual_seed(0)
    dim = 32
    skips = [torch.rand(2, dim, *size) for size in reversed(ODD_SIZES_SMALL[:2])]
    x = torch.randn(2, dim, *ODD_SIZES_SMALL[2])
    decoder = MultiStageTransformerDecoder(dim, heads=2)
    out = _check_batch_independent(decoder, x, skips)
    assert out.shape == (2, dim, 8 * ODD_SIZES_SMALL[2][0], 8 * ODD_SIZES_SMALL[2][1])


def test_transformer_decoder_official_unused_never_computed() -> None:
    decoder = _loaded("invpt")
    fixture = load_fixture("invpt")
    with torch.no_grad():
        for name in ("redu_chan", "norm_mt"):
            for p in getattr(decoder, name).parameters():
                p.fill_(float("nan"))
        x, back_fea = fixture["inputs"]
        out = decoder(x, back_fea[2:])
    assert max_abs_error(out, fixture["outputs"]) <= PARITY_ATOL


def test_transformer_decoder_config_variants() -> None:
    decoder = MultiStageTransformerDecoder(32, heads=4, num_stages=2)
    x = torch.randn(1, 32, 5, 7)
    skips = [torch.rand(1, 32, 10, 14)]
    assert decoder.eval()(x, skips).shape == (1, 32, 40, 56)
    with pytest.raises(ValueError, match="skip maps"):
        decoder(x, skips * 2)
    with pytest.raises(ValueError, match="divisible"):
        MultiStageTransformerDecoder(30, heads=4)


def test_layer_norm_matches_torch_layer_norm() -> None:
    block = _loaded("invpt_block_stage0")
    x = torch.randn(2, 64, 5, 7)
    ln = block.norm1
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (64,), ln.body.weight, ln.body.bias).permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), expected, atol=1e-5)


# ---- preliminary decoder and seg head ---------------------------------------------------------------------


@pytest.mark.parametrize("dim, num_classes", [(64, 9), (32, 9), (32, 5)])
def test_seg_head_and_preliminary_decoder(dim: int, num_classes: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, dim, *ODD_SIZES[3])
    assert _check_batch_independent(PreliminaryDecoder(dim), x).shape == x.shape
    head = SegHead(dim, num_classes)
    assert not any(k.startswith("boundary") for k in head.state_dict())
    logits = _check_batch_independent(head, x)
    assert logits.shape == (2, num_classes, 2 * ODD_SIZES[3][0], 2 * ODD_SIZES[3][1])
