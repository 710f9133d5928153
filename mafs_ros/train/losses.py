"""Training losses of MAFS (docs/MODEL.md, Losses): fusion, Stage-I reconstruction, segmentation and distillation.

The official repository ships only loss building blocks (`losses.py`, plus PSFusion's `Fusion_losses.py`);
this module re-implements them device-agnostically (no `.cuda()`) and without kornia (official defects #4
and #3, docs/MODEL.md): every fixed kernel is built on the input's device and dtype.

Conventions: images are (B, C, H, W) float; the fusion and reconstruction targets are single-channel
luminance maps (B, 1, H, W) in [0, 1]; labels are (B, H, W) int64 class ids with 255 = ignore.
Composite losses return `(total, parts)` where `parts` holds detached, unweighted terms for logging.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..class_sets import IGNORE_LABEL

if TYPE_CHECKING:
    from ..model.mafs import MafsOutput

# ---------------------------------------------------------------------------------------------------------
# Fixed kernels, cached per device and dtype. They are built outside inference mode: a kernel first built
# under `torch.inference_mode()` (e.g. by a validation pass) would be an inference tensor, which a later
# training conv could not save for backward.


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
def _sobel_kernels(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2, 1, 3, 3): the official `Sobelxy` kernels, x (right minus left) then y (top minus bottom)."""
    kx = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
    ky = [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]
    return torch.tensor([kx, ky], device=device, dtype=dtype).unsqueeze(1)


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
def _second_order_kernels(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(3, 1, 5, 5): kornia's 5x5 second-order Sobel kernels xx, xy, yy, each divided by its L1 norm.

    This is `kornia.filters.spatial_gradient(x, mode="sobel", order=2, normalized=True)`, the operator of
    the official `Re_loss`.
    """
    gxx = torch.tensor(
        [
            [-1.0, 0.0, 2.0, 0.0, -1.0],
            [-4.0, 0.0, 8.0, 0.0, -4.0],
            [-6.0, 0.0, 12.0, 0.0, -6.0],
            [-4.0, 0.0, 8.0, 0.0, -4.0],
            [-1.0, 0.0, 2.0, 0.0, -1.0],
        ],
        dtype=torch.float64,
    )
    gxy = torch.tensor(
        [
            [-1.0, -2.0, 0.0, 2.0, 1.0],
            [-2.0, -4.0, 0.0, 4.0, 2.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [2.0, 4.0, 0.0, -4.0, -2.0],
            [1.0, 2.0, 0.0, -2.0, -1.0],
        ],
        dtype=torch.float64,
    )
    kernels = torch.stack([gxx, gxy, gxx.t()])
    kernels = kernels / kernels.abs().sum(dim=(-2, -1), keepdim=True)
    return kernels.unsqueeze(1).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, size, size) normalised Gaussian, PSFusion's `create_window` (outer product of a 1-D window)."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(device=device, dtype=dtype)[None, None]


def _per_channel_conv(x: torch.Tensor, kernels: torch.Tensor, padding: int) -> torch.Tensor:
    """Apply K single-channel kernels (K, 1, k, k) to every channel: (B, C, H, W) -> (B, C, K, H, W)."""
    b, c, h, w = x.shape
    out = F.conv2d(x.reshape(b * c, 1, h, w), kernels, padding=padding)
    return out.reshape(b, c, kernels.shape[0], out.shape[-2], out.shape[-1])


# ---------------------------------------------------------------------------------------------------------
# Fusion loss


def sobel_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed 3x3 Sobel derivatives with zero padding 1 (official `Sobelxy`, before its `abs`).

    x: (B, C, H, W). Returns gx, gy, each (B, C, H, W), computed per channel.
    """
    grads = _per_channel_conv(x, _sobel_kernels(x.device, x.dtype), padding=1)
    return grads[:, :, 0], grads[:, :, 1]


def gradient_loss(ir: torch.Tensor, vi_y: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """L_grad = ‖max(|S_x Y_vi|, |S_x IR|) − |S_x F|‖₁ + the same for S_y, ‖·‖₁ = mean |·|.

    ir, vi_y, fused: (B, 1, H, W). Returns a scalar.
    """
    ir_x, ir_y = sobel_gradient(ir)
    vi_x, vi_y_grad = sobel_gradient(vi_y)
    fu_x, fu_y = sobel_gradient(fused)
    joint_x = torch.maximum(vi_x.abs(), ir_x.abs())
    joint_y = torch.maximum(vi_y_grad.abs(), ir_y.abs())
    return F.l1_loss(fu_x.abs(), joint_x) + F.l1_loss(fu_y.abs(), joint_y)


def _local_mse(a: torch.Tensor, b: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of (a − b)² over a window×window neighbourhood, zero padding (PSFusion `mse`, unfold / window²).

    Zero padding pads both images, so padded positions add 0 but still count in the divisor, exactly as
    the unfold-and-sum of the original: that is avg_pool with count_include_pad=True.
    """
    return F.avg_pool2d((a - b) ** 2, window, stride=1, padding=window // 2, count_include_pad=True)


def _local_variance(x: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    """σ² = G*(x²) − (G*x)² with a window×window Gaussian G and zero padding (PSFusion `std`)."""
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    pad = window // 2
    mean = _per_channel_conv(x, g, pad)[:, :, 0]
    mean_sq = _per_channel_conv(x * x, g, pad)[:, :, 0]
    return mean_sq - mean**2


def local_variance_intensity_loss(
    ir: torch.Tensor,
    vi_y: torch.Tensor,
    fused: torch.Tensor,
    mask: torch.Tensor | None = None,
    window: int = 9,
    sigma: float = 1.5,
) -> torch.Tensor:
    """L_int = PSFusion `final_mse1` (the official `Fusion_loss` intensity term).

    Per pixel, the 9×9 local MSE of F against IR where σ²_IR > σ²_VI (9×9 Gaussian, σ = 1.5) or where the
    salient-target mask is positive, against Y_vi elsewhere; averaged over all pixels.

    ir, vi_y, fused: (B, 1, H, W); mask: (B, 1, H, W) binary salient map or None (no salient pixels).
    Returns a scalar.
    """
    mse_ir = _local_mse(ir, fused, window)
    mse_vi = _local_mse(vi_y, fused, window)
    choose_ir = _local_variance(ir, window, sigma) > _local_variance(vi_y, window, sigma)
    if mask is not None:
        choose_ir = choose_ir | (mask > 0)
    return torch.where(choose_ir, mse_ir, mse_vi).mean()


def max_intensity_loss(
    ir: torch.Tensor, vi_y: torch.Tensor, fused: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L_int of the official alternative `Fusionloss`, without its factor 5:
    ‖max(IR, Y_vi)·(1−m) − F·(1−m)‖₁ + ‖IR·m − F·m‖₁, ‖·‖₁ = mean |·|.

    ir, vi_y, fused: (B, 1, H, W); mask: (B, 1, H, W) binary salient map or None (no salient pixels).
    Returns a scalar.
    """
    if mask is None:
        mask = torch.zeros_like(fused)
    background = 1.0 - mask
    return F.l1_loss(torch.maximum(ir, vi_y) * background, fused * background) + F.l1_loss(ir * mask, fused * mask)


_INTENSITY_LOSSES = {"local_variance": local_variance_intensity_loss, "max": max_intensity_loss}


class FusionLoss(nn.Module):
    """L_fus = w_grad·L_grad + w_int·L_int (docs/MODEL.md, Losses).

    intensity="local_variance" is the official `Fusion_loss` (weights [1, 10, 10]: w_grad = w_int = 10);
    intensity="max" takes L_int from the official alternative `Fusionloss` (there: w_grad = 1, w_int = 5).
    forward(ir, vi_y, fused, mask=None) with (B, 1, H, W) maps -> (total, {"grad": L_grad, "int": L_int}).
    The SSIM and correlation terms of PSFusion are disabled in MAFS and therefore absent here.
    """

    def __init__(self, w_grad: float = 10.0, w_int: float = 10.0, intensity: str = "local_variance") -> None:
        super().__init__()
        if intensity not in _INTENSITY_LOSSES:
            raise ValueError(f"unknown fusion intensity loss {intensity!r}; choose one of {sorted(_INTENSITY_LOSSES)}")
        self.w_grad = w_grad
        self.w_int = w_int
        self.intensity_loss = _INTENSITY_LOSSES[intensity]

    def forward(
        self, ir: torch.Tensor, vi_y: torch.Tensor, fused: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        grad = gradient_loss(ir, vi_y, fused)
        intensity = self.intensity_loss(ir, vi_y, fused, mask)
        total = self.w_grad * grad + self.w_int * intensity
        return total, {"grad": grad.detach(), "int": intensity.detach()}


# ---------------------------------------------------------------------------------------------------------
# Stage-I reconstruction


def _second_order_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|∇²x| summed over the xx/xy/yy directions and over channels: (B, C, H, W) -> (B, 1, H, W).

    Replicate padding 2, as kornia's `spatial_gradient` (so a constant image has zero response everywhere).
    """
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    grads = _per_channel_conv(padded, _second_order_kernels(x.device, x.dtype), padding=0)
    return grads.abs().sum(dim=(1, 2)).unsqueeze(1)


def reconstruction_loss(
    rec: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    w_int: float = 5.0,
    w_grad: float = 5.0,
) -> torch.Tensor:
    """Official `Re_loss`: 5·‖R − T‖₁ + 5·‖|∇²R| − |∇²T|‖₁, ‖·‖₁ = mean |·|.

    rec, target: (B, C, H, W); mask: (B, 1, H, W) or None, multiplying both terms as in the official code
    (the mean still runs over all pixels). Returns a scalar.
    """
    grad_rec = _second_order_magnitude(rec)
    grad_target = _second_order_magnitude(target)
    if mask is not None:
        rec, target = rec * mask, target * mask
        grad_rec, grad_target = grad_rec * mask, grad_target * mask
    return w_int * F.l1_loss(rec, target) + w_grad * F.l1_loss(grad_rec, grad_target)


def stage1_loss(rec_vi: torch.Tensor, rec_ir: torch.Tensor, vi_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """L_rec = Re(R_vi, Y_vi) + Re(R_ir, IR) against the unmasked sources ([design]; the
    official Stage I reconstructs both from one head, official defect #9, docs/MODEL.md).

    All inputs (B, 1, H, W). Returns a scalar.
    """
    return reconstruction_loss(rec_vi, vi_y) + reconstruction_loss(rec_ir, ir)


# ---------------------------------------------------------------------------------------------------------
# Segmentation


def _index_map(t: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) -> (B, H, W); loaders often keep a singleton channel."""
    return t.squeeze(1) if t.dim() == 4 and t.shape[1] == 1 else t


def _masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy (class-weighted if `weight`) summed over non-ignored pixels and divided by their number; 0
    (keeping the graph) when every pixel is ignored.

    `F.cross_entropy(reduction="mean")` would return NaN on a fully ignored batch.
    """
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)


def class_balance_weights(pixel_counts: Sequence[int], cap: float = 10.0) -> list[float]:
    """Per-class CE weights sqrt(n_max / n_c), capped: the most frequent class (background) keeps 1, a class
    a hundred times rarer gets 10. The square root and the cap keep a class seen in a handful of frames from
    dominating the loss; a class absent from the counts gets the cap."""
    if not pixel_counts or max(pixel_counts) <= 0:
        raise ValueError(f"class_balance_weights needs pixel counts with a positive one, got {list(pixel_counts)}")
    most = max(pixel_counts)
    return [min(cap, math.sqrt(most / n)) if n > 0 else cap for n in pixel_counts]


def _weights_tensor(class_weights: Sequence[float] | None) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.tensor(list(class_weights), dtype=torch.float32)
    if weights.dim() != 1 or not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
        raise ValueError(f"class weights must be finite and positive, got {list(class_weights)}")
    return weights


def _weights_for(weights: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    if weights is None:
        return None
    if weights.numel() != logits.shape[1]:
        raise ValueError(f"{weights.numel()} class weights for logits of {logits.shape[1]} classes")
    return weights.to(device=logits.device, dtype=logits.dtype)


class OhemCrossEntropy(nn.Module):
    """Online hard example mining cross-entropy (official `OhemCELoss`).

    Keeps the pixels whose CE exceeds −ln(score_thresh), but at least the n_min hardest ones, with
    n_min = max(1, ⌊min_kept_fraction · #valid pixels⌋); returns the mean over the kept pixels.
    Differences from the official code: n_min counts valid pixels only (the official B·H·W/16 includes
    ignored ones, whose zero loss could then be "kept"), and a fully ignored batch gives 0 instead of NaN.
    Computed without host synchronisation (no `.item()`). With class_weights, a pixel's CE is scaled by its
    class's weight before the selection (`class_balance_weights`).

    forward(logits (B, C, H, W), target (B, H, W) int64) -> scalar.
    """

    def __init__(
        self, score_thresh: float = 0.7, min_kept_fraction: float = 1.0 / 16, ignore_index: int = IGNORE_LABEL,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < score_thresh < 1.0:
            raise ValueError(f"score_thresh must be in (0, 1), got {score_thresh}")
        if not 0.0 < min_kept_fraction <= 1.0:
            raise ValueError(f"min_kept_fraction must be in (0, 1], got {min_kept_fraction}")
        self.loss_thresh = -math.log(score_thresh)
        self.min_kept_fraction = min_kept_fraction
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", _weights_tensor(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _index_map(target)
        weight = _weights_for(self.class_weights, logits)
        pixel_loss = F.cross_entropy(
            logits, target, weight=weight, ignore_index=self.ignore_index, reduction="none"
        ).flatten()
        valid = (target != self.ignore_index).flatten()
        # Ignored pixels get a key below any CE (>= 0) so that they sort last and never enter the top n_min.
        sorted_loss, order = torch.sort(torch.where(valid, pixel_loss, -1.0), descending=True)
        sorted_valid = valid[order]
        n_min = (valid.sum() * self.min_kept_fraction).floor().clamp(min=1)
        rank = torch.arange(sorted_loss.numel(), device=logits.device)
        keep = sorted_valid & ((sorted_loss > self.loss_thresh) | (rank < n_min))
        return (sorted_loss * keep).sum() / keep.sum().clamp(min=1)


def _one_hot_bce(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None, sample_weight: torch.Tensor
) -> torch.Tensor:
    """BCE-with-logits of a 2-channel map against the one-hot of a binary map (PSFusion bi/bd losses).

    logits: (B, 2, H, W); target: (B, H, W) binary (0/1, or 0/255 as read from disk); pos_weight:
    (1, 2, 1, 1) or None; sample_weight: (B,) 1 for labelled samples, 0 otherwise. The mean runs over the
    elements of the labelled samples, which equals the official mean when every sample is labelled.
    """
    one_hot = F.one_hot((target > 0).long(), num_classes=2).permute(0, 3, 1, 2).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, one_hot, pos_weight=pos_weight, reduction="none")
    per_sample = loss.mean(dim=(1, 2, 3))
    return (per_sample * sample_weight).sum() / sample_weight.sum().clamp(min=1)


class SegmentationLoss(nn.Module):
    """L_seg, our [design] combination (docs/MODEL.md, Losses), times `scale` (PSFusion's 10):

        L_seg = scale · [ L_ohem(semantic) + aux_weight · Σ_{i∈{2,4,6}} CE(out_i, label)
                          + aux_weight · (BCE(out1, bi) + BCE(out3, bi) + BCE(out5, bd)) ]

    A model without deep supervision (empty `.aux`) is trained on the OHEM term alone. BCE is with logits on
    one-hot 2-channel targets; the `bi` terms use pos_weight (MSRS statistics from
    PSFusion). class_weights (one per class, e.g. `class_balance_weights`) weight both CE terms. Samples with has_label False contribute nothing; a batch without any labelled sample gives
    a zero loss that still has a grad_fn, so the caller can add it unconditionally.

    forward(output, label (B, H, W) int64, bi (B, H, W), bd (B, H, W), has_label (B,) bool or None = all
    labelled) -> (total, {"ohem", "aux_ce", "bi", "bd"}) with the parts unscaled and detached. `output` is a
    `MafsOutput` (only .semantic (B, C, H, W) and .aux, the six maps out1..out6, are used).
    """

    def __init__(
        self,
        num_classes: int,
        aux_weight: float = 0.5,
        bi_pos_weight: Sequence[float] = (1.4548, 19.8962),
        scale: float = 10.0,
        ohem_thresh: float = 0.7,
        ohem_min_kept_fraction: float = 1.0 / 16,
        ignore_index: int = IGNORE_LABEL,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(bi_pos_weight) != 2:
            raise ValueError(f"bi_pos_weight needs 2 values (bg, fg), got {bi_pos_weight}")
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self.scale = scale
        self.ignore_index = ignore_index
        self.ohem = OhemCrossEntropy(ohem_thresh, ohem_min_kept_fraction, ignore_index, class_weights)
        # Not persistent: a constant of the recipe, not a learned or resumable state.
        self.register_buffer(
            "bi_pos_weight", torch.tensor(bi_pos_weight, dtype=torch.float32).view(1, 2, 1, 1), persistent=False
        )

    def forward(
        self,
        output: MafsOutput,
        label: torch.Tensor,
        bi: torch.Tensor,
        bd: torch.Tensor,
        has_label: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        semantic, aux = output.semantic, output.aux
        if len(aux) not in (0, 6):
            raise ValueError(f"expected the 6 auxiliary maps out1..out6 (or none), got {len(aux)}")
        if semantic.shape[1] != self.num_classes:
            raise ValueError(f"semantic has {semantic.shape[1]} classes, the loss expects {self.num_classes}")
        label, bi, bd = _index_map(label), _index_map(bi), _index_map(bd)
        if has_label is None:
            sample_weight = semantic.new_ones(semantic.shape[0])
        else:
            has_label = has_label.to(device=semantic.device, dtype=torch.bool)
            # Unlabelled samples become all-ignore for the CE terms and weight 0 for the BCE terms.
            label = torch.where(has_label[:, None, None], label, self.ignore_index)
            sample_weight = has_label.to(semantic.dtype)
        ohem = self.ohem(semantic, label)
        if not aux:
            return self.scale * ohem, {"ohem": ohem.detach()}
        out1, out2, out3, out4, out5, out6 = aux
        pos_weight = self.bi_pos_weight.to(device=semantic.device, dtype=semantic.dtype)
        weight = _weights_for(self.ohem.class_weights, semantic)
        aux_ce = sum(_masked_cross_entropy(out, label, self.ignore_index, weight) for out in (out2, out4, out6))
        bi_loss = sum(_one_hot_bce(out, bi, pos_weight, sample_weight) for out in (out1, out3))
        bd_loss = _one_hot_bce(out5, bd, None, sample_weight)
        total = self.scale * (ohem + self.aux_weight * (aux_ce + bi_loss + bd_loss))
        parts = {"ohem": ohem.detach(), "aux_ce": aux_ce.detach(), "bi": bi_loss.detach(), "bd": bd_loss.detach()}
        return total, parts


# ---------------------------------------------------------------------------------------------------------
# Knowledge distillation


def _check_logit_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher logits must both be (B, C, H, W) of the same shape, "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


class ChannelWiseDistillation(nn.Module):
    """Channel-wise distillation (official `CriterionCWD`, norm 'channel', KL; the default).

    Per channel, softmax over the H·W positions at temperature tau; KL(teacher ‖ student) summed over
    everything, divided by N·C, times tau². The teacher is detached. Log-probabilities come from
    log_softmax (the official takes log of softmax, which underflows to -inf on confident maps).

    forward(student (N, C, H, W), teacher (N, C, H, W)) -> scalar.
    """

    def __init__(self, tau: float = 4.0) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_logit_pair(student, teacher)
        n, c = student.shape[:2]
        log_s = F.log_softmax(student.flatten(2) / self.tau, dim=-1)
        log_t = F.log_softmax(teacher.detach().flatten(2) / self.tau, dim=-1)
        kl = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
        return kl / (n * c) * self.tau**2


class PixelWiseDistillation(nn.Module):
    """Pixel-wise distillation (official `CriterionKD`).

    KL(softmax(z_T/tau) ‖ softmax(z_S/tau)) over the classes of each pixel, averaged over the N·H·W pixels
    ('batchmean' of the flattened maps), times tau². The teacher is detached.

    forward(student (N, C, H, W), teacher (N, C, H, W)) -> scalar.
    """

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_logit_pair(student, teacher)
        n, _, h, w = student.shape
        log_s = F.log_softmax(student / self.tau, dim=1)
        log_t = F.log_softmax(teacher.detach() / self.tau, dim=1)
        kl = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
        return kl / (n * h * w) * self.tau**2


@runtime_checkable
class Teacher(Protocol):
    """A frozen segmentation teacher run on the fused colour image (the paper's: SegNeXt).

    __call__(fused_rgb (B, 3, H, W) in [0, 1]) -> logits (B, C, H, W) over the student's class set.
    """

    def __call__(self, fused_rgb: torch.Tensor) -> torch.Tensor: ...


class TorchScriptTeacher(nn.Module):
    """Wraps a TorchScript segmentation model as a frozen `Teacher`.

    The scripted model receives RGB in [0, 1] and must apply its own input normalisation (mmseg keeps
    mean/std in its data preprocessor, outside the network, so bake it in when exporting). Its logits are
    checked once for the expected class count and resized (bilinear) to the input size when the model
    predicts at a lower resolution, as SegNeXt's decode head does (1/8). The teacher stays in eval mode
    and never builds a graph.
    """

    def __init__(self, module: torch.jit.ScriptModule, num_classes: int | None = None) -> None:
        super().__init__()
        self.module = module
        self.num_classes = num_classes
        self._checked = False
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> TorchScriptTeacher:
        """Always eval: the trainer's `model.train()` must not unfreeze BN statistics or dropout."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, fused_rgb: torch.Tensor) -> torch.Tensor:
        logits = self.module(fused_rgb)
        if not self._checked:
            is_map = isinstance(logits, torch.Tensor) and logits.dim() == 4
            if not is_map or (self.num_classes is not None and logits.shape[1] != self.num_classes):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                classes = "C" if self.num_classes is None else self.num_classes
                raise ValueError(
                    f"teacher must return (B, {classes}, H, W) logits for the student's class set, got {shape}"
                )
            self._checked = True
        if logits.shape[-2:] != fused_rgb.shape[-2:]:
            logits = F.interpolate(logits, size=fused_rgb.shape[-2:], mode="bilinear", align_corners=False)
        return logits


TORCHSCRIPT_PREFIX = "torchscript:"


def build_teacher(
    spec: str | None, num_classes: int | None = None, map_location: str | torch.device = "cpu"
) -> TorchScriptTeacher | None:
    """Build the distillation teacher from a config string.

    spec: "none" (or None / "") -> no teacher, L_kd disabled; "torchscript:PATH" -> `TorchScriptTeacher`
    loading PATH with torch.jit.load. Anything else (e.g. "segnext") raises NotImplementedError: the
    SegNeXt teacher (mmseg/mmcv) is not bundled and must be exported to TorchScript first.
    num_classes: the student's class count, checked on the teacher's first output (None: only the
    (B, C, H, W) layout is checked; the distillation losses still reject a shape mismatch).
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    if spec.startswith(TORCHSCRIPT_PREFIX):
        path = Path(spec[len(TORCHSCRIPT_PREFIX) :]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"teacher TorchScript file not found: {path}")
        return TorchScriptTeacher(torch.jit.load(str(path), map_location=map_location), num_classes)
    raise NotImplementedError(
        f"teacher {spec!r} is not available: the SegNeXt teacher (docs/MODEL.md, Losses) needs mmseg/mmcv, which this "
        "package does not depend on. Export the trained teacher (RGB in [0, 1] -> (B, C, H, W) logits, "
        f"normalisation included) with torch.jit.trace/script and pass '{TORCHSCRIPT_PREFIX}PATH', or 'none' "
        "to train without distillation."
    )
