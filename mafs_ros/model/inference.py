"""Inference-only rewrites of a trained MafsNet: BatchNorm folded into the preceding convolution, and the
channels-last memory format. Both keep the outputs (to float rounding) and are applied by the engine to the
model it owns; a model being trained must never go through them (the folded BatchNorms are gone).
"""

from __future__ import annotations

import torch
from torch import nn


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode `bn` that directly follows `conv` into conv's weight and bias (in place).

    conv(x) -> bn(.) equals conv'(x) with w' = w * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(
        bn.running_var + bn.eps
    )
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into it and replace it by nn.Identity.

    Three places define "directly follows": adjacent children of an nn.Sequential, the (conv, bn) attribute
    pairs a module lists in `conv_bn_pairs` (modules whose forward is `bn(conv(x))` with nothing reading the
    conv output in between), and a Sequential child after a module that names in `output_conv` the conv of such
    a pair whose bn is folded already (DSRM's conv -> BN -> BN). Returns the number of folded BatchNorms. The
    model must be in eval mode.
    """
    if model.training:
        raise ValueError("fuse_conv_bn needs a model in eval mode (running statistics are folded)")
    total = 0
    while True:  # a fold can make the conv of an `output_conv` module foldable into the next BatchNorm
        folded = _fold_pass(model)
        if not folded:
            return total
        total += folded


def _fold_pass(model: nn.Module) -> int:
    folded = 0
    for module in list(model.modules()):
        pairs: list[tuple[nn.Module | None, nn.Module, str]] = []  # (conv, parent of the bn, bn's name)
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            pairs += [(_output_conv(getattr(module, a)), module, b) for a, b in zip(names, names[1:])]
        pairs += [(getattr(module, a), module, b) for a, b in getattr(module, "conv_bn_pairs", ())]
        for conv, parent, bn_name in pairs:
            bn = getattr(parent, bn_name)
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.num_features == conv.out_channels:
                fold_batchnorm(conv, bn)
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def _output_conv(module: nn.Module) -> nn.Module | None:
    """The Conv2d whose output `module` returns: the module itself, or the `output_conv` of a module whose
    (output_conv, bn) pair is folded already; None otherwise."""
    if type(module) is nn.Conv2d:
        return module
    name = getattr(module, "output_conv", None)
    bn_names = [bn for conv, bn in getattr(module, "conv_bn_pairs", ()) if conv == name]
    if name is None or not all(isinstance(getattr(module, bn), nn.Identity) for bn in bn_names):
        return None
    return getattr(module, name)


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """eval mode, BatchNorm folded, on `device`, channels-last (the layout oneDNN and cuDNN convolutions run
    natively, so no layout conversion happens around each convolution). Modifies and returns `model`."""
    model.eval()
    fuse_conv_bn(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device=device, memory_format=torch.channels_last)
