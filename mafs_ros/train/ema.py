"""An exponential moving average of the weights (torchvision's reference scripts' `--model-ema`, timm's ModelEma).

Validation on about 30 frames moves by a few hundredths from one epoch to the next because the last steps' weights
wander; the average over the last few hundred steps is steadier and usually better, for no extra training time.
The average is what validation scores and what the run exports (`TrainConfig.ema_decay`, 0: off).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """`module` holds decay * itself + (1 - decay) * the trained weights after each `update`; integer buffers
    (BatchNorm's step counts) are copied. The decay ramps up as (1 + n) / (10 + n) over the first updates, so that
    the random initial head does not linger in the average of a short run."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (0 turns the average off), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.module.state_dict().values(), net.state_dict().values(), strict=True):
            if average.is_floating_point():
                average.lerp_(current.detach(), 1.0 - decay)
            else:
                average.copy_(current)

    def copy_to(self, net: nn.Module) -> None:
        net.load_state_dict(self.module.state_dict(), strict=True)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["weights"], strict=True)
