"""What a backend is: something that loads a model file (or takes a built model) and hands the engine a network
to call, with what the engine must know about it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from ..checkpoint import InputConventions
    from ..model import MafsConfig, MafsOutput


@dataclass(frozen=True)
class LoadedNet:
    """A network ready to run on the engine's device.

    net: `net(vi (B,3,h,w), ir (B,1,h,w))` -> MafsOutput, float32 in [0, 1] at the network size.
    backend: the backend's name (`MafsEngine.backend`). optimized: the network takes channels-last inputs
    (BatchNorm folded by `prepare_for_inference`). The rest comes from the checkpoint or, for a given model,
    from its config and the default class set.
    """

    net: Callable[[torch.Tensor, torch.Tensor], "MafsOutput"]
    backend: str
    config: "MafsConfig"
    class_names: tuple[str, ...]
    palette: np.ndarray
    inputs: "InputConventions"
    trained: bool | None
    path: Path | None
    optimized: bool


class Backend(Protocol):
    """Loads one kind of model file for MafsEngine. The engine checks device, precision and compile mode
    names; a backend refuses what it cannot do with them (ValueError) and raises CheckpointError for a file it
    cannot use."""

    name: str
    suffixes: tuple[str, ...]  # model files this backend runs, by suffix (lower case)

    def load(
        self,
        source: Any,
        device: torch.device,
        *,
        precision: str,
        optimize: bool | None,
        compile_mode: str,
    ) -> LoadedNet:
        """`source`: a model file path, a loaded checkpoint or a built model, as the backend takes them."""
        ...
