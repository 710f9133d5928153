"""INN fusion decoder: invertible blocks (Glow 1x1 conv + affine coupling) and the fused-image head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InvertibleConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution, LU-parametrised (official `InvertibleConv1x1`, LU_decomposed=True).

    W = p @ (L @ U) with L = strict_lower(lower) + I and U = strict_upper(upper) + diag(sign_s * exp(log_s)).
    `p` and `sign_s` are fixed buffers; `lower`, `upper`, `log_s` are learnt.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]
        p, lower, upper = torch.linalg.lu(rotation)
        s = torch.diagonal(upper)
        self.lower = nn.Parameter(lower)
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        # Only the strict triangles of `lower`/`upper` are parameters of W; official checkpoints (and the
        # parity fixtures) carry arbitrary values elsewhere, so they are masked out, never trusted.
        self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1), persistent=False)
        self.register_buffer("eye", torch.eye(num_channels), persistent=False)

    def weight_matrix(self) -> torch.Tensor:
        """The (C, C) matrix W, in the official operation order p @ (L @ U)."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.transpose(0, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ (lower @ upper)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_matrix()
        return F.conv2d(x, w.view(*w.shape, 1, 1))


class UNetConvBlock(nn.Module):
    """HINet block with half-instance normalisation (official `UNetConvBlock`, use_HIN=True).

    conv3x3 -> affine InstanceNorm on the first out//2 channels -> LeakyReLU(0.1) -> conv3x3 -> LeakyReLU(0.1),
    plus a 1x1 projection of the input.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, relu_slope: float = 0.1) -> None:
        super().__init__()
        self.identity = nn.Conv2d(in_channels, out_channels, 1)
        self.conv_1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm = nn.InstanceNorm2d(out_channels // 2, affine=True)
        self.relu_slope = relu_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self._half_instance_norm(self.conv_1(x)), self.relu_slope)
        out = F.leaky_relu(self.conv_2(out), self.relu_slope)
        return out + self.identity(x)

    def _half_instance_norm(self, out: torch.Tensor) -> torch.Tensor:
        """`self.norm` on the first half of the channels, the rest unchanged, as one per-channel multiply-add:
        slicing, normalising and concatenating back cost three full-resolution copies, which dominate the thin
        (3- to 32-channel) full-resolution maps of the fusion path."""
        half = self.norm.num_features
        normed = out[:, :half]
        # Two passes, mean then centred squares (stable); torch.var_mean is several times slower on CPU here.
        mean = normed.mean(dim=(2, 3), keepdim=True)
        var = (normed - mean).square().mean(dim=(2, 3))
        scale = self.norm.weight * torch.rsqrt(var + self.norm.eps)  # (B, half)
        shift = self.norm.bias - mean.flatten(1) * scale
        keep = out.new_ones(out.shape[0], out.shape[1] - half)
        scale = torch.cat([scale, keep], dim=1)[:, :, None, None]
        shift = torch.cat([shift, torch.zeros_like(keep)], dim=1)[:, :, None, None]
        return torch.addcmul(shift, out, scale)


class DenseBlock(nn.Module):
    """Coupling sub-network F/G/H of the INN (official `DenseBlock`, subnet "DBNet").

    Two UNetConvBlocks, each followed by LeakyReLU(0.2).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = UNetConvBlock(in_channels, out_channels)
        self.conv2 = UNetConvBlock(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(x), 0.2)
        return F.leaky_relu(self.conv2(x), 0.2)


class InvBlock(nn.Module):
    """Invertible block of the INN fusion decoder (official `InvBlock`, forward direction).

    z = invconv(x); [x1, x2] = split(z); y1 = x1 + F(x2); s = clamp * (2 sigmoid(H(y1)) - 1);
    y2 = x2 * exp(s) + G(y1); out = [y1, y2].

    Shapes: (B, channels, H, W) -> (B, channels, H, W); `split` channels go to x1.
    """

    def __init__(self, channels: int, split: int, clamp: float = 0.8) -> None:
        super().__init__()
        self.split = split
        self.clamp = clamp
        # Registration order F, G, H, invconv keeps state_dict() in the official key order.
        self.F = DenseBlock(channels - split, split)
        self.G = DenseBlock(split, channels - split)
        self.H = DenseBlock(split, channels - split)
        self.invconv = InvertibleConv1x1(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.invconv(x)
        x1, x2 = z[:, : self.split], z[:, self.split :]
        y1 = x1 + self.F(x2)
        s = self.clamp * (torch.sigmoid(self.H(y1)) * 2 - 1)
        y2 = x2 * torch.exp(s) + self.G(y1)
        return torch.cat([y1, y2], dim=1)


class FeatureExtract(nn.Module):
    """INN trunk of the fusion decoder (official `FeatureExtract`).

    A chain of InvBlocks; the output is a 1x1 conv of cat([input, outputs of the last three blocks]).

    Shapes: (B, channels, H, W) -> (B, channels, H, W).
    """

    def __init__(self, channels: int, num_blocks: int) -> None:
        super().__init__()
        if num_blocks < 3:
            raise ValueError(f"the INN trunk fuses its last three blocks: num_blocks must be >= 3, got {num_blocks}")
        self.operations = nn.ModuleList(InvBlock(channels, channels // 2) for _ in range(num_blocks))
        self.fuse = nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        first_kept = len(self.operations) - 3
        for i, block in enumerate(self.operations):
            x = block(x)
            if i >= first_kept:
                skips.append(x)
        return self.fuse(torch.cat(skips, dim=1))


class FusionDecoder(nn.Module):
    """INN fusion decoder of MAFS (official `FusionDecoder`): INN trunk + conv3x3 -> tanh -> (t+1)/2 head.

    Keys: `fuse_decoder.*` (the trunk) and `conv_block.0` (the head conv).

    Shapes: (B, channels, H, W) -> fused image (B, 1, H, W) in [0, 1].
    """

    def __init__(self, channels: int = 32, num_blocks: int = 5) -> None:
        super().__init__()
        self.fuse_decoder = FeatureExtract(channels, num_blocks)
        self.conv_block = nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1))
        self._init_weights()

    def _init_weights(self) -> None:
        # The official model re-initialises every conv of the fusion path with xavier-normal.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk output (B, channels, H, W) before the head."""
        return self.fuse_decoder(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Fused image (B, 1, H, W) in [0, 1] from trunk features."""
        return (torch.tanh(self.conv_block(features)) + 1) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
