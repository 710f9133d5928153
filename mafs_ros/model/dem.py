"""DEM: the cross-modal gating applied between the ResNet stages of the two encoder streams."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EAEF_GATES


class _PooledMLP(nn.Module):
    """Global pool -> Linear(dim, hidden) -> GELU -> Linear(hidden, out_dim) on the channel vector.

    Official classes `Feature_Pool` (average pool) and `Channel_Attention` (max pool).
    Shapes: (B, dim, H, W) -> (B, out_dim).
    """

    def __init__(self, dim: int, hidden: int, out_dim: int, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.pool(x).flatten(1))))


class _SpatialLogit(nn.Module):
    """1x1 conv to one spatial logit map (official class `Spatial_Attention`).

    Shapes: (B, dim, H, W) -> (B, 1, H, W).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)


class DEM(nn.Module):
    """DEM in the paper (official class `EAEF`, from EAEF-Net): cross-modal gating of the two streams.

    Per sample, with R and T the two C-channel halves of the input:
    1. cross gate c from the L2-normalised shared-MLP descriptors of R and T, scaled by the learnable T_c;
    2. R_A = R*c, T_A = T*c; fuse gate f = sigmoid(cse(dwconv([R_A; T_A]))) split into (f_R, f_T);
    3. R' = R*(1-c) + R_A*f_R, T' = T*(1-c) + T_A*f_T;
    4. (w_l, w_r) = softmax over the two 1x1-conv maps of R' and T';
    5. out = [R'*w_l + T'*w_r; T'*w_r] (asymmetric, as in the official code).

    `gate` selects the cross gate:
    - "intended": c_k = sigmoid(T_c * r_k * t_k), the per-channel diagonal that EAEF intends;
    - "official_b1": c_k = sigmoid(T_c * r_0 * t_k). The official `torch.diagonal` over dims (0, 1) of the
      (B, C, C) gate matrix yields row 0 at batch 1, the official test protocol, so this is what an official
      checkpoint expects at inference. It is applied per sample here: the official cross-sample mixing at
      B > 1 is not reproduced.

    Shapes: x (B, 2*channels, H, W) = cat([R, T]) -> (B, 2*channels, H, W), same layout.
    """

    def __init__(self, channels: int, gate: str = "intended") -> None:
        super().__init__()
        if gate not in EAEF_GATES:
            raise ValueError(f"gate must be one of {EAEF_GATES}, got {gate!r}")
        self.channels = channels
        self.gate = gate
        self.T_c = nn.Parameter(torch.tensor(float(channels)))
        self.mlp_pool = _PooledMLP(channels, 2 * channels, channels, pool=nn.AdaptiveAvgPool2d(1))
        # groups=C on 2C channels: each group mixes an adjacent channel pair of [R_A; T_A] (official layout).
        self.dwconv = nn.Conv2d(2 * channels, 2 * channels, 7, padding=3, groups=channels)
        self.cse = _PooledMLP(2 * channels, max(1, 2 * channels // 16), 2 * channels, pool=nn.AdaptiveMaxPool2d(1))
        self.sse_r = _SpatialLogit(channels)
        self.sse_t = _SpatialLogit(channels)

    def _cross_gate(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        r = self.mlp_pool(rgb)
        t = self.mlp_pool(thermal)
        # Kept without eps, as in the official code (parity for both gate modes).
        r = r / r.norm(dim=1, keepdim=True)
        t = t / t.norm(dim=1, keepdim=True)
        r = r if self.gate == "intended" else r[:, :1]
        return torch.sigmoid(self.T_c * r * t)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb, thermal = torch.split(x, self.channels, dim=1)
        cross_gate = self._cross_gate(rgb, thermal)
        rgb_a = rgb * cross_gate
        thermal_a = thermal * cross_gate
        fuse_gate = torch.sigmoid(self.cse(self.dwconv(torch.cat([rgb_a, thermal_a], dim=1))))
        rgb_gate, thermal_gate = torch.split(fuse_gate[:, :, None, None], self.channels, dim=1)
        keep = 1.0 - cross_gate
        rgb = rgb * keep + rgb_a * rgb_gate
        thermal = thermal * keep + thermal_a * thermal_gate
        weights = F.softmax(torch.cat([self.sse_r(rgb), self.sse_t(thermal)], dim=1), dim=1)
        w_l, w_r = weights[:, :1], weights[:, 1:]
        return torch.cat([rgb * w_l + thermal * w_r, thermal * w_r], dim=1)
