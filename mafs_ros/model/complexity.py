"""Parameter and multiply-accumulate counts of a network, for the README and `mafs model-info`."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(net: nn.Module, height: int = 480, width: int = 640) -> int:
    """MACs of one eval-mode forward of a (1,3,H,W) visible + (1,1,H,W) infrared pair.

    Counted by torch's FlopCounterMode (convolutions, matmuls, attention: the operations that dominate;
    element-wise ops, norms and resizes are not counted), halved because it counts FLOPs = 2 * MACs.
    """
    net = net.eval()
    device = next(net.parameters()).device
    vi, ir = torch.zeros(1, 3, height, width, device=device), torch.zeros(1, 1, height, width, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(vi, ir)
    return counter.get_total_flops() // 2
