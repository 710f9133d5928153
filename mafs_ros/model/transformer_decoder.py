"""Multi-stage transformer decoder (InvPT-style, with Restormer MDTA attention and a conv LeFF)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import resize_to


class _WithBiasLayerNorm(nn.Module):
    """Channels-last layer norm, written out by hand like the official "WithBias" LayerNorm body."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        # (x - mu) / sqrt(var + eps) rather than F.layer_norm: the fused kernel moves InvPT outputs by ~2.5e-6.
        return (x - mu) / torch.sqrt(var + 1e-5) * self.weight + self.bias


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class LayerNorm(nn.Module):
    """Layer norm over the channels of every pixel (official Restormer `LayerNorm`, type "WithBias").

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = _WithBiasLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return _to_map(self.body(_to_tokens(x)), height, width)


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention (Restormer; official `Attention`), attention across channels.

    qkv = dw3x3(1x1(x)) without bias; per head, q and k are L2-normalised over pixels, attention =
    softmax(q k^T * temperature) (C/heads x C/heads), out = project_out(attention @ v).

    Shapes: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int, heads: int, bias: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(batch, self.heads, channels // self.heads, height * width) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        out = (attn @ v).reshape(batch, channels, height, width)
        return self.project_out(out)


class LeFF(nn.Module):
    """Locally-enhanced feed-forward with its own residual (official `LeFF` of the repo's Fusion_block.py).

    out = GELU(1x1(GELU(dw3x3(GELU(1x1(x)))))) + x, all convs with bias, GELU in its exact (erf) form.

    Shapes: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.linear1 = nn.Sequential(nn.Conv2d(dim, hidden_dim, 1), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim), nn.GELU())
        self.linear2 = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dwconv(self.linear1(x))) + x


class TransformerBlock(nn.Module):
    """Transformer block of the decoder (official `InvPTBlock`): x + MDTA(LN(x)), then + LeFF(LN(x)).

    LeFF carries its own residual, so the second step adds LN(x) as well (out = x + n + f(n)), as in the
    official code.

    Shapes: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.attn = MDTA(dim, heads)
        self.ffn = LeFF(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class UpEmbed(nn.Module):
    """Up-embedding between decoder stages (official `UpEmbed`; keys `proj.1/2/4/5`).

    bilinear x2 (align_corners=False) -> 2 x [conv3x3 dilation 2 (no bias) -> BN -> ReLU].

    Shapes: (B, in_channels, H, W) -> (B, dim, 2H, 2W).
    """

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, dim, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class TransformerStage(nn.Module):
    """One decoder stage (an entry of the official `invpt_stages`).

    Stage 0 is a single block; later stages first up-embed x2 and add the skip map (resized to the
    up-embedded map when their sizes differ, e.g. 38x50 -> 76x100 against a 75x100 skip).

    Shapes: (B, dim, h, w) [+ skip (B, dim, ~2h, ~2w)] -> (B, dim, h, w) at stage 0, (B, dim, 2h, 2w) after.
    """

    def __init__(self, dim: int, heads: int, upsample: bool) -> None:
        super().__init__()
        self.patch_embed = nn.Sequential(UpEmbed(dim, dim)) if upsample else None
        self.blocks = nn.Sequential(TransformerBlock(dim, heads))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.patch_embed is not None:
            if skip is None:
                raise ValueError("an up-embedding stage needs a skip map")
            x = self.patch_embed(x)
            x = x + resize_to(skip, x)
        return self.blocks(x)


class MultiStageTransformerDecoder(nn.Module):
    """Multi-stage transformer decoder of MAFS (official `InvPT`).

    Stage 0 runs one block on x; stage i > 0 up-embeds the previous stage x2, adds skips[i - 1] (resized to
    it if the sizes differ) and runs one block. After every stage the map is token-LayerNormed
    (`norm_mts[i]`); that normalised map feeds the next stage and is also resized (bilinear,
    align_corners=False) to 8x stage 0's size and summed; `mt_proj` (conv3x3 -> BN -> ReLU) finishes.
    The official code is handed all four ASPP'd FPN maps but reads only the 1/8 and 1/4 ones; taking just
    those lets the caller skip the ASPP of the other two.

    Args:
        dim: width of x, of every skip map and of the output.
        heads: MDTA heads.
        num_stages: number of stages (official 3); needs num_stages - 1 skip maps.
        keep_official_unused: also register the official `redu_chan` and `norm_mt` (never computed).

    forward(x (B, dim, h, w) at 1/16, skips [1/8, 1/4] maps (B, dim, ., .)) -> (B, dim, 8h, 8w), i.e. 1/2 of
    the image.
    """

    def __init__(self, dim: int = 64, heads: int = 2, num_stages: int = 3, keep_official_unused: bool = False) -> None:
        super().__init__()
        self.norm_mts = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_stages))
        if keep_official_unused:
            self.redu_chan = nn.Conv2d(dim, dim, 1)
        self.invpt_stages = nn.ModuleList(TransformerStage(dim, heads, upsample=i > 0) for i in range(num_stages))
        if keep_official_unused:
            self.norm_mt = nn.LayerNorm(dim)
        self.mt_proj = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(skips) != len(self.invpt_stages) - 1:
            raise ValueError(f"need {len(self.invpt_stages) - 1} skip maps, got {len(skips)}")
        target = (8 * x.shape[-2], 8 * x.shape[-1])
        total = None
        for i, (stage, norm) in enumerate(zip(self.invpt_stages, self.norm_mts, strict=True)):
            x = stage(x, skips[i - 1] if i > 0 else None)
            x = _to_map(norm(_to_tokens(x)), *x.shape[-2:])
            term = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            total = term if total is None else total + term
        return self.mt_proj(total)
