"""Small building blocks shared by several MAFS modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU6(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU6, the "CBR6" block of the CAINet-style decoder heads.

    The official code has two copies of this block that differ only in the name of the norm layer
    (`bn` in the ARM modules, `bnop` in SegHead and the deep-supervision classifiers); `norm_name`
    keeps both key layouts loadable.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm_name: str = "bn",
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False
        )
        self.norm_name = norm_name
        self.add_module(norm_name, nn.BatchNorm2d(out_channels))
        self.conv_bn_pairs = (("conv", norm_name),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(getattr(self, self.norm_name)(self.conv(x)))


def resize_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize `x` to the spatial size of `reference` (no-op when they already match).

    This is the generic rule that replaces the official size-specific hacks: before every concat or add,
    the incoming tensor is resized to the target's size, so any input size and batch size work.
    """
    if x.shape[-2:] == reference.shape[-2:]:
        return x
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


def infrared_channel(vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """The first channel of `ir` (B,1,H,W), after checking that it pairs with `vi` (same batch and size).

    Only the first infrared channel is used, like the official model, so a 3-channel thermal image works too.
    """
    if vi.shape[0] != ir.shape[0] or vi.shape[-2:] != ir.shape[-2:]:
        raise ValueError(f"visible {tuple(vi.shape)} and infrared {tuple(ir.shape)} batch/size differ")
    return ir[:, :1]
