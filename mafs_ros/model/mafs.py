"""The MAFS network: two-stream encoder, fusion decoder and segmentation decoder.

Data flow (strides relative to the input, widths from `MafsConfig`):

    visible (B,3,H,W), infrared (B,1,H,W), both in [0, 1]
      -> SFE per modality: x1 @1/1 (sfe_width), x2 @1/2 (stem_width)
      -> ResNet trunk per modality, DEM cross-modal gating after stem, layer1, layer2, layer3
      -> CAM per level: F3 @1/4, F4 @1/8, F5 @1/16, F6 @1/32 (decoder_width)
      -> AFM on (x1_rgb, x1_ir) and on the post-DEM stems; PHF modulates them with F3 (the heterogeneous
         feature fusion); DSRM -> rec_f @1/1 (fusion_width)
    fusion:       INN fusion decoder(rec_f) -> fused luminance Y in [0, 1]
    segmentation: FPN pixel decoder -> ARM cascade (six auxiliary outputs) -> ASPP -> multi-stage
                  transformer decoder -> preliminary decoder + ARM2 with rec_f1 -> gated seg head

Every concat or add first resizes the incoming tensor to its partner's size (`resize_to`), which is a
no-op at sizes divisible by 32 and makes any input size and batch size work (the official code has
size-specific hacks instead: official defect #8, docs/MODEL.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .afm import AFM
from .arm import ARM, DeepSupervisionClassifier, MultiDilationFusion
from .aspp import ASPP
from .cam import CAM
from .config import MafsConfig
from .dem import DEM
from .dsrm import DSRM
from .encoders import get_encoder
from .fusion_decoder import FusionDecoder
from .layers import infrared_channel, resize_to
from .official_unused import OfficialUnusedDecoderParams, OfficialUnusedEncoderParams
from .phf import PHF
from .pixel_decoder import PixelDecoder
from .resnet import ResNetTrunk
from .seg_head import PreliminaryDecoder, SegHead
from .sfe import SFE
from .transformer_decoder import MultiStageTransformerDecoder


class MafsOutput(NamedTuple):
    """Stage II outputs, all at the input resolution.

    semantic: (B, num_classes, H, W) segmentation logits.
    aux:      the six deep-supervision maps, in the official order out1..out6:
              (B,2,H,W) binary/boundary logits at 1/16, (B,C,H,W) semantic at 1/16, then the same pair at
              1/8 and at 1/4 (each upsampled to H, W); empty when not computed (inference).
    fused:    (B, 1, H, W) fused luminance Y in [0, 1]; None from a mafs-lite training step without fusion.
    """

    semantic: torch.Tensor
    aux: tuple[torch.Tensor, ...]
    fused: torch.Tensor | None


class EncoderFeatures(NamedTuple):
    """What the encoder hands to the two decoders.

    cam: [F3 @1/4, F4 @1/8, F5 @1/16, F6 @1/32], decoder_width channels each.
    rec_f1: PHF output @1/2 (fusion_width), also used by the segmentation decoder.
    rec_f: DSRM output @1/1 (fusion_width), the input of the fusion decoder.
    """

    cam: list[torch.Tensor]
    rec_f1: torch.Tensor
    rec_f: torch.Tensor


def _trunk_layers(trunk: ResNetTrunk) -> list[nn.Module]:
    return [trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4]


def _split_streams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rgb, thermal = torch.chunk(x, 2, dim=1)
    return rgb, thermal


class Encoder(nn.Module):
    """Two-stream encoder (official `Encoder`): SFE, ResNet trunks with DEM, CAM, AFM, PHF and DSRM."""

    def __init__(self, cfg: MafsConfig) -> None:
        super().__init__()
        self.sfe_rgb = SFE(3, cfg.sfe_width, cfg.stem_width)
        self.sfe_thermal = SFE(1, cfg.sfe_width, cfg.stem_width)
        trunk = dict(block=cfg.trunk_block, layers=cfg.trunk_layers, widths=cfg.trunk_widths, in_channels=cfg.stem_width)
        self.trunk_rgb: ResNetTrunk = get_encoder(cfg.encoder, **trunk)
        self.trunk_thermal: ResNetTrunk = get_encoder(cfg.encoder, **trunk)
        # DEM after the stem and after layer1..layer3 (not after layer4, as in the official code).
        dem_channels = (cfg.stem_width, *cfg.trunk_channels[:3])
        self.dem = nn.ModuleList(DEM(c, gate=cfg.eaef_gate) for c in dem_channels)
        self.cam = nn.ModuleList(CAM(c, cfg.decoder_width) for c in cfg.trunk_channels)
        self.afm_full = AFM(cfg.sfe_width, cfg.fusion_width)
        self.afm_half = AFM(cfg.stem_width, cfg.fusion_width)
        self.phf_half = PHF(cfg.fusion_width, cfg.decoder_width, cfg.fusion_width)
        self.phf_full = PHF(cfg.fusion_width, cfg.fusion_width, cfg.fusion_width)
        self.dsrm = DSRM(cfg.fusion_width, cfg.fusion_width)
        if cfg.keep_official_unused:
            self.official_unused = OfficialUnusedEncoderParams(cfg)

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> EncoderFeatures:
        rgb_full, rgb = self.sfe_rgb(vi)
        thermal_full, thermal = self.sfe_thermal(ir)
        rgb, thermal = self.trunk_rgb.stem(rgb), self.trunk_thermal.stem(thermal)
        rgb, thermal = _split_streams(self.dem[0](torch.cat([rgb, thermal], 1)))
        low_fuse2 = self.afm_half(rgb, thermal)

        rgb, thermal = self.trunk_rgb.maxpool(rgb), self.trunk_thermal.maxpool(thermal)
        stages = zip(_trunk_layers(self.trunk_rgb), _trunk_layers(self.trunk_thermal))
        cam_features = []
        for level, (rgb_layer, thermal_layer) in enumerate(stages):
            rgb, thermal = rgb_layer(rgb), thermal_layer(thermal)
            if level < len(self.dem) - 1:
                rgb, thermal = _split_streams(self.dem[level + 1](torch.cat([rgb, thermal], 1)))
            cam_features.append(self.cam[level](rgb, thermal))

        low_fuse1 = self.afm_full(rgb_full, thermal_full)
        rec_f1 = self.phf_half(low_fuse2, cam_features[0])
        rec_f = self.dsrm(self.phf_full(low_fuse1, rec_f1))
        return EncoderFeatures(cam_features, rec_f1, rec_f)


class SegmentationDecoder(nn.Module):
    """Official `SegmentationDecoder`: FPN, ARM cascade with deep supervision, ASPP, transformer decoder,
    preliminary decoder + ARM2 and the gated seg head."""

    def __init__(self, cfg: MafsConfig) -> None:
        super().__init__()
        dim, classes = cfg.decoder_width, cfg.num_classes
        unused = cfg.keep_official_unused
        self.pixel_decoder = PixelDecoder([dim] * 4, dim, keep_official_unused=unused)
        self.arm_16 = ARM(dim, dim, dim, dim)
        self.arm_8 = ARM(dim, dim, dim, dim)
        self.arm_4 = ARM(dim, dim, dim, dim)
        # In output order out1..out6: (binary, semantic) pairs at 1/16, 1/8, 1/4, each upsampled in two
        # steps whose product is the stride (official classifier_Z6, Z3, Z5, Z2, Z4, Z1).
        self.aux_heads = nn.ModuleList(
            [
                DeepSupervisionClassifier(dim, 2, 4, 4),
                DeepSupervisionClassifier(dim, classes, 4, 4),
                DeepSupervisionClassifier(dim, 2, 4, 2),
                DeepSupervisionClassifier(dim, classes, 4, 2),
                DeepSupervisionClassifier(dim, 2, 2, 2),
                DeepSupervisionClassifier(dim, classes, 2, 2),
            ]
        )
        self.transformer_level = cfg.transformer_level
        self.aspp = ASPP(dim)
        self.transformer_decoder = MultiStageTransformerDecoder(
            dim, cfg.transformer_heads, keep_official_unused=unused
        )
        self.preliminary_decoder = PreliminaryDecoder(dim)
        self.arm_fuse = MultiDilationFusion(cfg.fusion_width + dim, dim)
        self.seg_head = SegHead(dim, classes, keep_official_unused=unused)
        if unused:
            self.official_unused = OfficialUnusedDecoderParams(cfg)

    def forward(
        self, rec_f1: torch.Tensor, cam: list[torch.Tensor], size: tuple[int, int], with_aux: bool = True
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        f3, f4, f5, f6 = cam
        ms = self.pixel_decoder([f3, f4, f5, f6])
        # The ARM cascade takes the raw FPN map ms[0]; the ASPP'd 1/8 and 1/4 maps feed the transformer
        # decoder (the official code also runs ASPP on the 1/32 and 1/16 maps, then never reads them).
        product_16, sum_16 = self.arm_16(f5, f6, ms[0])
        product_8, sum_8 = self.arm_8(f4, product_16, sum_16)
        product_4, sum_4 = self.arm_4(f3, product_8, sum_8)
        aux_inputs = (product_16, sum_16, product_8, sum_8, product_4, sum_4)
        aux = tuple(_resize_to_size(head(x), size) for head, x in zip(self.aux_heads, aux_inputs)) if with_aux else ()

        # The transformer starts at CAM level L (F5 in the paper) with the ASPP'd FPN maps of the two finer
        # levels as skips (ms runs coarse to fine), and ends at 8x the size of its start.
        level = self.transformer_level
        x = self.transformer_decoder(cam[level], [self.aspp(ms[4 - level]), self.aspp(ms[5 - level])])
        x = self.preliminary_decoder(x)
        x = self.arm_fuse(torch.cat([rec_f1, resize_to(x, rec_f1)], 1))
        semantic = _resize_to_size(self.seg_head(x), size)
        return semantic, aux


def _resize_to_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MafsNet(nn.Module):
    """MAFS (official `NetworkStage2`): infrared-visible fusion and semantic segmentation in one network.

    forward(vi (B,3,H,W) RGB in [0,1], ir (B,1,H,W) in [0,1]) -> MafsOutput. Only the first infrared
    channel is used, like the official model. No ImageNet normalisation, as in the official code. The deep-supervision
    maps (`aux`, six full-resolution upsamplings) only feed training losses: they are computed in train mode
    or with `with_aux=True`, and skipped otherwise. `seg_size` (H', W') gives the semantic and aux maps another
    size than the input's (training losses at a lower resolution: `loss.seg_loss_scale`).
    """

    def __init__(self, cfg: MafsConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.fusion_decoder = FusionDecoder(cfg.fusion_width, cfg.inn_blocks)
        self.seg_decoder = SegmentationDecoder(cfg)

    def forward(
        self, vi: torch.Tensor, ir: torch.Tensor, with_aux: bool | None = None, seg_size: tuple[int, int] | None = None
    ) -> MafsOutput:
        ir = infrared_channel(vi, ir)
        features = self.encoder(vi, ir)
        fused = self.fusion_decoder(features.rec_f)
        with_aux = self.training if with_aux is None else with_aux
        size = tuple(vi.shape[-2:]) if seg_size is None else tuple(seg_size)
        semantic, aux = self.seg_decoder(features.rec_f1, features.cam, size, with_aux)
        return MafsOutput(semantic, aux, fused)


class MafsPretrainer(nn.Module):
    """Stage I masked-autoencoder wrapper: the encoder and fusion trunk reconstruct both sources.

    The official Stage I applies the same head twice (rec_vi == rec_ir, official defect #9, docs/MODEL.md);
    by default a second head reconstructs the infrared image from the same trunk features. `shared_head=True`
    reproduces the official behaviour. The segmentation decoder is not run. The extra head is not part of
    `MafsNet`, so a Stage I checkpoint initialises Stage II by loading `net`.

    forward(vi_masked, ir_masked) -> (rec_vi (B,1,H,W), rec_ir (B,1,H,W)), both in [0, 1].
    """

    def __init__(self, net: MafsNet, shared_head: bool = False) -> None:
        super().__init__()
        self.net = net
        self.shared_head = shared_head
        if not shared_head:
            self.ir_head = nn.Conv2d(net.config.fusion_width, 1, 3, padding=1)

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.encoder(vi, ir[:, :1])
        trunk = self.net.fusion_decoder.features(features.rec_f)
        rec_vi = self.net.fusion_decoder.head(trunk)
        if self.shared_head:
            return rec_vi, rec_vi
        return rec_vi, (torch.tanh(self.ir_head(trunk)) + 1) / 2
