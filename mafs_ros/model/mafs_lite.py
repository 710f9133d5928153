"""MafsLiteNet: MAFS fusion with a pretrained early-fusion segmentation trunk, sized for a CPU.

Data flow (s = seg_downsample, 2 for `mafs-lite`; strides relative to the input):

    visible (B,3,H,W), infrared (B,1,H,W), both in [0, 1]
      -> both downsampled to H/s x W/s, ImageNet-normalised, stacked as 4 channels
      -> one EfficientNet-Lite0 (ImageNet weights; the thermal channel's stem filters are the mean of the RGB
         ones): stem @1/2s, F3 @1/4s, F4 @1/8s, F5 @1/16s, F6 @1/32s
    segmentation: an FPN (model/fpn.py) sums F3..F6 at 1/4s and is refined with the stem features at 1/2s,
                  a 1x1 classifier, logits resized to H x W
    fusion:       shallow features of both images @1/2s -> AFM -> PHF (modulated by the FPN map: semantic
                  guidance) -> DSRM -> three maps @1/2s, upsampled to H x W: the infrared weight w, a detail gain
                  g and an offset o. fused = clamp(b + g * (b - blur(b)) + o) with b = w * ir + (1 - w) * Y.

Why one trunk for both cameras: trained on about a hundred labelled frames, two ImageNet streams with the
MAFS exchange (DEM, CAM) and transformer decoder learnt less than a plain early-fusion trunk with an FPN in
the same time, and the MAFS decoder's class map did not read the stride-4 level, so it never predicted curbs
(docs/TRAINING.md). The fusion path keeps the paper's modules (AFM, PHF, DSRM) and reads the segmentation
features as PHF's guide, as in MAFS.

Why the fused image is composed rather than decoded: at full resolution every convolution costs more than
the whole budget of a CPU frame, while the weight maps are smooth and fine at 1/2s. Composing from the
full-size sources keeps every edge of both images; w starts as a near-hard "brighter source wins" choice,
which fusion metrics reward, and the network learns where to depart from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import LUMA_BT601
from .afm import AFM
from .config import MafsConfig
from .dsrm import DSRM
from .efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STEM_CHANNELS,
    EfficientNetLite0,
    imagenet_normalize,
    load_imagenet_weights,
)
from .encoders import get_encoder
from .fpn import FpnDecoder
from .layers import infrared_channel
from .mafs import MafsOutput
from .phf import PHF

# A grey (thermal) image is normalised like ImageNet's mean grey.
THERMAL_MEAN = (sum(IMAGENET_MEAN) / 3,)
THERMAL_STD = (sum(IMAGENET_STD) / 3,)
# Initial sharpness of the "brighter source wins" prior on the infrared weight (logit per unit of ir - Y).
# Steep, so that w is close to a per-pixel choice of one source: a soft blend averages the two images wherever
# their intensities are close, which costs contrast and the information each source carries (EN, MI, VIF).
MAX_PRIOR = 40.0


class _ConvBNReLU(nn.Sequential):
    """conv3x3 (no bias) -> BN -> ReLU. Shapes: (B, in, H, W) -> (B, out, H / stride, W / stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class FusionComposer(nn.Module):
    """Predicts the fusion maps from the fusion features and composes the fused luminance at full size.

    Shapes: features (B, C, h, w), ir (B, 1, H, W), y (B, 1, H, W) -> fused (B, 1, H, W) in [0, 1].
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.maps = nn.Conv2d(channels, 3, 3, padding=1)
        self.max_prior = nn.Parameter(torch.tensor(MAX_PRIOR))
        nn.init.zeros_(self.maps.weight)
        with torch.no_grad():
            self.maps.bias.copy_(torch.tensor([0.0, -1.0, 0.0]))  # w from the prior, g = softplus(-1) ~ 0.31

    def forward(self, features: torch.Tensor, ir: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        maps = F.interpolate(self.maps(features), size=ir.shape[-2:], mode="bilinear", align_corners=False)
        weight = torch.sigmoid(maps[:, 0:1] + self.max_prior * (ir - y))
        gain = F.softplus(maps[:, 1:2])
        offset = 0.1 * torch.tanh(maps[:, 2:3])
        base = weight * ir + (1 - weight) * y
        detail = base - F.avg_pool2d(base, 5, stride=1, padding=2, count_include_pad=False)
        fused = (base + gain * detail + offset).clamp(0.0, 1.0)
        # An explicit single channel: ONNX shape inference cannot tell it through the broadcasts above.
        return fused.reshape(fused.shape[0], 1, fused.shape[2], fused.shape[3])


def _downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x


class MafsLiteNet(nn.Module):
    """MAFS fusion on an early-fusion EfficientNet-Lite0 (see the module docstring). forward(vi, ir) ->
    MafsOutput(semantic, (), fused) with an optional `seg_size`, as `MafsNet`; no deep-supervision maps."""

    def __init__(self, cfg: MafsConfig) -> None:
        super().__init__()
        self.config = cfg
        self.trunk: EfficientNetLite0 = get_encoder(cfg.encoder, in_channels=4)
        self.fpn = FpnDecoder(self.trunk.out_channels, cfg.decoder_width, fine_channels=STEM_CHANNELS)
        self.classifier = nn.Conv2d(self.fpn.out_channels, cfg.num_classes, 1)
        width = cfg.fusion_width
        # The fusion path runs at 1/2s: the maps it predicts only correct the full-size "brighter source"
        # prior of FusionComposer, so they can be coarse, and at 1/s DSRM's concatenations cost a CPU frame.
        self.shallow_rgb = _ConvBNReLU(3, width, stride=2)
        self.shallow_thermal = _ConvBNReLU(1, width, stride=2)
        self.afm = AFM(width, width)
        # The FPN map is narrowed before PHF upsamples it: a decoder_width-wide map at 1/s costs more than the rest.
        self.guide = nn.Conv2d(cfg.decoder_width, width, 1)
        self.phf = PHF(width, width, width)
        self.dsrm = DSRM(width, width)
        self.composer = FusionComposer(width)

    def load_imagenet_encoders(self, path: str | None = None) -> None:
        """Initialise the trunk from the ImageNet weights (the training start; see efficientnet_lite)."""
        load_imagenet_weights(self.trunk, path)

    def _encode(self, vi: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem output (stride 2) and the four feature levels of the one trunk on RGB + thermal."""
        x = torch.cat([imagenet_normalize(vi, IMAGENET_MEAN, IMAGENET_STD),
                       imagenet_normalize(ir, THERMAL_MEAN, THERMAL_STD)], dim=1)
        stem = x = self.trunk.stem(x)
        features = []
        for stage in self.trunk.stages():
            x = stage(x)
            features.append(x)
        return stem, features

    def forward(
        self, vi: torch.Tensor, ir: torch.Tensor, with_aux: bool | None = None, seg_size: tuple[int, int] | None = None,
        with_fusion: bool = True,
    ) -> MafsOutput:
        """`with_fusion` False skips the fusion path (`fused` is None): a training step with segmentation losses
        only, which the fusion path's own weights allow (its semantic guide is detached). `with_aux` is accepted
        for MafsNet's signature; there are no deep-supervision maps."""
        ir = infrared_channel(vi, ir)
        factor = self.config.seg_downsample
        vi_small, ir_small = _downsample(vi, factor), _downsample(ir, factor)
        stem, features = self._encode(vi_small, ir_small)
        guide, head = self.fpn(features, stem)

        fused = None
        if with_fusion:
            fusion = self.afm(self.shallow_rgb(vi_small), self.shallow_thermal(ir_small))
            # The semantic guide is detached: the fusion losses train the fusion path only, and the trunk is
            # shaped by segmentation alone (the fusion weight is the larger one, and it needs no class features).
            fusion = self.dsrm(self.phf(fusion, self.guide(guide.detach())))
            luma = torch.tensor(LUMA_BT601, dtype=vi.dtype, device=vi.device).view(1, 3, 1, 1)
            fused = self.composer(fusion, ir, (vi * luma).sum(dim=1, keepdim=True))

        size = tuple(vi.shape[-2:]) if seg_size is None else tuple(seg_size)
        semantic = F.interpolate(self.classifier(head), size=size, mode="bilinear", align_corners=False)
        # Explicit class count: ONNX shape inference loses it through the final resize.
        semantic = semantic.reshape(semantic.shape[0], self.config.num_classes, *size)
        return MafsOutput(semantic, (), fused)
