"""The PyTorch backend: a mafs_ros checkpoint (.safetensors, or a loaded `Checkpoint`) or a built model, run
eagerly or compiled with torch.compile."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint, InputConventions, build_model_from_checkpoint, load_checkpoint
from ..class_sets import default_class_set
from ..errors import ConfigurationError
from ..model import MafsConfig
from ..model.inference import prepare_for_inference
from .base import LoadedNet


class TorchBackend:
    """`source`: a checkpoint path (None: the packaged default), a loaded `Checkpoint`, or a built model whose
    `model.config` is its MafsConfig. A checkpoint's network is optimised for inference unless `optimize` is
    False; a given model (which the caller may go on training) only when `optimize` is True, and then a copy."""

    name = "torch"
    suffixes = (".safetensors",)

    def load(
        self,
        source: "str | Path | Checkpoint | nn.Module | None",
        device: torch.device,
        *,
        precision: str,
        optimize: bool | None,
        compile_mode: str,
    ) -> LoadedNet:
        if isinstance(source, nn.Module):
            loaded = self._from_model(source, optimized=bool(optimize))
        else:
            loaded = self._from_checkpoint(source, optimized=optimize is not False)
        net = prepare_for_inference(loaded.net, device) if loaded.optimized else loaded.net.to(device).eval()
        if compile_mode != "none":
            net = torch.compile(net, mode=compile_mode, dynamic=False)
        return dataclasses.replace(loaded, net=net)

    def _from_model(self, model: nn.Module, *, optimized: bool) -> LoadedNet:
        config = getattr(model, "config", None)
        if not isinstance(config, MafsConfig):
            raise ConfigurationError("the model needs its MafsConfig as `model.config` (use build_model())")
        defaults = default_class_set(config.num_classes)
        return LoadedNet(
            net=copy.deepcopy(model) if optimized else model, backend=self.name, config=config,
            class_names=defaults.class_names, palette=np.asarray(defaults.palette, dtype=np.uint8),
            inputs=InputConventions(), trained=None, path=None, optimized=optimized,
        )

    def _from_checkpoint(self, source: "str | Path | Checkpoint | None", *, optimized: bool) -> LoadedNet:
        ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
        return LoadedNet(
            net=build_model_from_checkpoint(ckpt), backend=self.name, config=ckpt.config,
            class_names=ckpt.class_names, palette=ckpt.palette, inputs=ckpt.inputs, trained=ckpt.trained,
            path=ckpt.path, optimized=optimized,
        )
