"""Training losses (fusion, Stage-I reconstruction, segmentation, distillation) and task weighting: known answers on
tiny CPU tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mafs_ros.model.mafs import MafsOutput
from mafs_ros.train import losses as L
from mafs_ros.train.task_weights import (
    DynamicWeightAverage,
    FixedWeights,
    MaxMinFairness,
    build_task_weighting,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _window_counts(n: int, window: int = 9) -> torch.Tensor:
    """Number of positions of a centred 1-D window that fall inside a signal of length n."""
    r = window // 2
    return torch.tensor([min(i + r, n - 1) - max(i - r, 0) + 1 for i in range(n)], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# Fusion (docs/MODEL.md, Losses)


def test_sobel_gradient_of_a_ramp() -> None:
    ramp = torch.arange(6.0).expand(1, 1, 6, 6)  # x-ramp, slope 1
    gx, gy = L.sobel_gradient(ramp)
    assert torch.equal(gx[..., 1:-1, 1:-1], torch.full((1, 1, 4, 4), 8.0))  # (1 + 2 + 1) * 2
    assert torch.equal(gy[..., 1:-1, 1:-1], torch.zeros(1, 1, 4, 4))


def test_gradient_loss_zero_when_fused_is_the_stronger_source() -> None:
    vi = torch.rand(2, 1, 12, 12)
    ir = 2.0 * vi  # |S ir| = 2 |S vi| >= |S vi| at every pixel and in both directions
    assert L.gradient_loss(ir, vi, ir).item() == 0.0
    assert L.gradient_loss(ir, vi, vi).item() > 0.0


def test_intensity_loss_zero_when_fused_is_the_chosen_source() -> None:
    textured = 0.2 + 0.8 * torch.rand(2, 1, 12, 12)
    flat = torch.zeros(2, 1, 12, 12)  # zero local variance everywhere, even at the zero-padded border
    # IR has the larger local variance -> IR is chosen everywhere.
    assert L.local_variance_intensity_loss(textured, flat, textured).item() == 0.0
    assert L.local_variance_intensity_loss(textured, flat, flat).item() > 0.0
    # VI has the larger variance -> VI is chosen, unless the salient mask forces IR.
    assert L.local_variance_intensity_loss(flat, textured, textured).item() == 0.0
    ones = torch.ones_like(flat)
    assert L.local_variance_intensity_loss(flat, textured, flat, ones).item() == 0.0
    assert L.local_variance_intensity_loss(flat, textured, textured, ones).item() > 0.0


def test_intensity_loss_known_value_for_a_constant_offset() -> None:
    ir = 0.2 + 0.6 * torch.rand(1, 1, 10, 12, dtype=torch.float64)
    vi = torch.zeros_like(ir)
    c = 0.1
    # Local MSE = c² · (window positions inside the image) / 81, the zero-padded ones adding 0.
    expected = c**2 / 81.0 * _window_counts(10).mean() * _window_counts(12).mean()
    got = L.local_variance_intensity_loss(ir, vi, ir + c)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_max_intensity_loss_targets_the_brighter_source_and_ir_on_salient_pixels() -> None:
    ir, vi = torch.rand(2, 2, 1, 12, 12, dtype=torch.float64).unbind(0)
    brighter = torch.maximum(ir, vi)
    assert L.max_intensity_loss(ir, vi, brighter).item() == 0.0
    assert L.max_intensity_loss(ir, vi, brighter + 0.1).item() == pytest.approx(0.1, rel=1e-12)
    salient = torch.zeros_like(ir)
    salient[..., :6, :] = 1.0  # top half: the target is IR, bottom half: the brighter source
    target = torch.where(salient > 0, ir, brighter)
    assert L.max_intensity_loss(ir, vi, target, salient).item() == pytest.approx(0.0, abs=1e-15)
    assert L.max_intensity_loss(ir, vi, brighter, salient).item() > 0.0  # brighter != ir where vi > ir


def test_fusion_loss_intensity_choice() -> None:
    ir, vi, fused = torch.rand(3, 2, 1, 16, 16).unbind(0)
    _, parts = L.FusionLoss(intensity="max")(ir, vi, fused)
    assert parts["int"].item() == pytest.approx(L.max_intensity_loss(ir, vi, fused).item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown fusion intensity loss 'mean'"):
        L.FusionLoss(intensity="mean")


def test_fusion_loss_weights_and_positivity() -> None:
    ir, vi, fused = torch.rand(3, 2, 1, 16, 16).unbind(0)
    mask = (torch.rand(2, 1, 16, 16) > 0.8).float()
    total, parts = L.FusionLoss()(ir, vi, fused, mask)
    assert set(parts) == {"grad", "int"}
    assert total.item() > 0.0 and parts["grad"].item() > 0.0 and parts["int"].item() > 0.0
    assert total.item() == pytest.approx(10 * parts["grad"].item() + 10 * parts["int"].item(), rel=1e-6)


def test_fixed_kernels_built_under_inference_mode_still_train() -> None:
    # A first call under inference_mode must not cache inference tensors that training convs cannot save.
    for cached in (L._sobel_kernels, L._second_order_kernels, L._gaussian_window):
        cached.cache_clear()
    ir, vi = torch.rand(2, 1, 1, 10, 10).unbind(0)
    with torch.inference_mode():
        L.FusionLoss()(ir, vi, vi)
        L.reconstruction_loss(vi, ir)
    fused = torch.rand(1, 1, 10, 10, requires_grad=True)
    (L.FusionLoss()(ir, vi, fused)[0] + L.reconstruction_loss(fused, ir)).backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all()


# ---------------------------------------------------------------------------------------------------------
# Reconstruction (docs/MODEL.md, Losses)


def test_reconstruction_loss_zero_for_identical_inputs() -> None:
    x = torch.rand(2, 1, 10, 10)
    assert L.reconstruction_loss(x, x.clone()).item() == 0.0


def test_reconstruction_loss_known_values() -> None:
    # Constant offset: the L1 term is c; with replicate padding the 2nd-order responses are equal -> 5·c.
    target = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    assert L.reconstruction_loss(target + 0.3, target).item() == pytest.approx(1.5, rel=1e-12)
    # Unit impulse away from the border: each of the 3 kernels is L1-normalised, so Σ|∇²| = 3 over the
    # image -> 5·(1/81) + 5·(3/81).
    impulse = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    impulse[..., 4, 4] = 1.0
    zeros = torch.zeros_like(impulse)
    assert L.reconstruction_loss(impulse, zeros).item() == pytest.approx(20.0 / 81.0, rel=1e-12)
    assert L.reconstruction_loss(impulse, zeros, mask=torch.zeros_like(impulse)).item() == 0.0


def test_stage1_loss_sums_both_reconstructions() -> None:
    rec_vi, rec_ir, vi, ir = torch.rand(4, 1, 1, 8, 8).unbind(0)
    expected = L.reconstruction_loss(rec_vi, vi) + L.reconstruction_loss(rec_ir, ir)
    assert L.stage1_loss(rec_vi, rec_ir, vi, ir).item() == pytest.approx(expected.item())


# ---------------------------------------------------------------------------------------------------------
# Segmentation (docs/MODEL.md, Losses)


def _easy_with_hard_pixels(hard: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 2, 8, 8) logits and all-zero targets: CE ≈ 4.5e-5 everywhere except ≈ 5 at `hard` pixels."""
    logits = torch.zeros(1, 2, 64)
    logits[:, 0] = 10.0
    logits[:, :, hard] = torch.tensor([[0.0], [5.0]])
    return logits.view(1, 2, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long)


def test_ohem_keeps_at_least_n_min_hardest_pixels() -> None:
    logits, target = _easy_with_hard_pixels([3, 40])  # 2 hard pixels < n_min = 64 / 16 = 4
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten()
    expected = per_pixel.sort(descending=True).values[:4].mean()
    got = L.OhemCrossEntropy(score_thresh=0.7)(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ohem_keeps_all_hard_pixels_beyond_n_min() -> None:
    hard = [0, 5, 9, 17, 22, 33, 41, 50, 63]  # 9 hard pixels > n_min = 4: only they are kept
    logits, target = _easy_with_hard_pixels(hard)
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten()
    got = L.OhemCrossEntropy()(logits, target)
    assert got.item() == pytest.approx(per_pixel[hard].mean().item(), rel=1e-6)


def _all_hard(b: int = 2, c: int = 3, h: int = 6, w: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets on each pixel's least likely class: CE >= ln C > −ln 0.7, so every pixel is hard."""
    logits = torch.randn(b, c, h, w, requires_grad=True)
    return logits, logits.detach().argmin(dim=1)


def test_ohem_equals_cross_entropy_when_all_pixels_are_hard() -> None:
    logits, target = _all_hard()
    expected = F.cross_entropy(logits, target)
    assert L.OhemCrossEntropy()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ohem_respects_ignore_index() -> None:
    logits, target = _all_hard()
    target[0, :3] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert L.OhemCrossEntropy()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # n_min counts valid pixels only: 32 valid -> n_min = 2 (1 hard + the hardest easy pixel); the ignored
    # pixels are very wrong but never kept.
    logits, target = _easy_with_hard_pixels([3])
    logits[:, :, 4:] = torch.tensor([-10.0, 10.0])[:, None, None]
    target[:, 4:] = 255
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none").flatten()[:32]
    expected = per_pixel.sort(descending=True).values[:2].mean()
    assert L.OhemCrossEntropy()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ohem_all_ignored_is_zero_with_grad() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    loss = L.OhemCrossEntropy()(logits, target)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_class_weights_scale_each_pixel_loss_by_its_class() -> None:
    logits, target = _all_hard()
    weights = [1.0, 4.0, 0.5]
    per_pixel = F.cross_entropy(logits, target, reduction="none") * torch.tensor(weights)[target]
    weighted = L.OhemCrossEntropy(class_weights=weights)(logits, target)
    assert weighted.item() == pytest.approx(per_pixel.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="2 class weights for logits of 3 classes"):
        L.OhemCrossEntropy(class_weights=[1.0, 2.0])(logits, target)
    with pytest.raises(ValueError, match="finite and positive"):
        L.OhemCrossEntropy(class_weights=[1.0, 0.0, 1.0])


def test_class_balance_weights_are_capped_square_roots() -> None:
    assert L.class_balance_weights([10_000, 100, 1, 0]) == [1.0, 10.0, 10.0, 10.0]
    assert L.class_balance_weights([400, 100, 25]) == [1.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="positive"):
        L.class_balance_weights([0, 0])


def _seg_batch(b: int = 2, c: int = 3, h: int = 8, w: int = 8):
    """A MafsOutput (aux: 2-channel maps out1/out3/out5, C-channel out2/out4/out6) and label, bi, bd."""
    semantic = torch.randn(b, c, h, w, requires_grad=True)
    aux = tuple(torch.randn(b, 2 if i % 2 == 0 else c, h, w, requires_grad=True) for i in range(6))
    label = torch.randint(0, c, (b, h, w))
    label[:, 0] = 255
    bi = (label > 0) & (label != 255)
    bd = torch.rand(b, h, w) > 0.8
    return MafsOutput(semantic, aux, torch.rand(b, 1, h, w)), label, bi.long(), bd.float()


def test_segmentation_loss_combination() -> None:
    out, label, bi, bd = _seg_batch()
    aux = out.aux
    total, parts = L.SegmentationLoss(num_classes=3)(out, label, bi, bd)
    pos_weight = torch.tensor([1.4548, 19.8962]).view(1, 2, 1, 1)

    def bce(out: torch.Tensor, t: torch.Tensor, pw: torch.Tensor | None) -> torch.Tensor:
        one_hot = F.one_hot(t.long(), 2).permute(0, 3, 1, 2).float()
        return F.binary_cross_entropy_with_logits(out, one_hot, pos_weight=pw)

    aux_ce = sum(F.cross_entropy(aux[i], label, ignore_index=255) for i in (1, 3, 5))
    bi_loss = bce(aux[0], bi, pos_weight) + bce(aux[2], bi, pos_weight)
    bd_loss = bce(aux[4], bd, None)
    assert parts["aux_ce"].item() == pytest.approx(aux_ce.item(), rel=1e-6)
    assert parts["bi"].item() == pytest.approx(bi_loss.item(), rel=1e-6)
    assert parts["bd"].item() == pytest.approx(bd_loss.item(), rel=1e-6)
    expected = 10 * (parts["ohem"] + 0.5 * (aux_ce + bi_loss + bd_loss))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)

    # A model without deep supervision (the early-fusion mafs-lite) trains on the OHEM term alone.
    total, parts = L.SegmentationLoss(num_classes=3)(MafsOutput(out.semantic, (), out.fused), label, bi, bd)
    assert set(parts) == {"ohem"} and total.item() == pytest.approx(10 * parts["ohem"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="6 auxiliary maps"):
        L.SegmentationLoss(num_classes=3)(MafsOutput(out.semantic, aux[:2], out.fused), label, bi, bd)


def test_segmentation_loss_class_weights_reach_the_auxiliary_ce() -> None:
    out, label, bi, bd = _seg_batch()
    weights = torch.tensor([0.5, 2.0, 3.0])
    _, parts = L.SegmentationLoss(num_classes=3, class_weights=weights.tolist())(out, label, bi, bd)
    valid = (label != 255).sum()
    aux_ce = sum(F.cross_entropy(out.aux[i], label, weight=weights, ignore_index=255, reduction="sum") / valid
                 for i in (1, 3, 5))
    assert parts["aux_ce"].item() == pytest.approx(aux_ce.item(), rel=1e-6)


def test_segmentation_loss_masks_unlabelled_samples() -> None:
    out, label, bi, bd = _seg_batch()
    loss_fn = L.SegmentationLoss(num_classes=3)
    none_labelled, _ = loss_fn(out, label, bi, bd, torch.tensor([False, False]))
    assert none_labelled.item() == 0.0 and none_labelled.grad_fn is not None
    none_labelled.backward()
    assert torch.equal(out.semantic.grad, torch.zeros_like(out.semantic))
    # A labelled + unlabelled batch equals the labelled sample alone.
    mixed, _ = loss_fn(out, label, bi, bd, torch.tensor([True, False]))
    first = MafsOutput(out.semantic[:1], tuple(a[:1] for a in out.aux), out.fused[:1])
    alone, _ = loss_fn(first, label[:1], bi[:1], bd[:1])
    assert mixed.item() == pytest.approx(alone.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Distillation (docs/MODEL.md, Losses)


@pytest.mark.parametrize("loss_cls", [L.ChannelWiseDistillation, L.PixelWiseDistillation])
def test_distillation_zero_positive_and_teacher_detached(loss_cls: type[nn.Module]) -> None:
    student = torch.randn(2, 3, 5, 5, requires_grad=True)
    loss_fn = loss_cls()
    assert abs(loss_fn(student, student.detach().clone()).item()) < 1e-6
    teacher = torch.randn(2, 3, 5, 5, requires_grad=True)
    loss = loss_fn(student, teacher)
    assert loss.item() > 0.0
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_distillation_matches_official_formulas() -> None:
    s, t = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64).unbind(0)
    # CriterionCWD: KLDivLoss(sum)(log softmax_HW(s/4), softmax_HW(t/4)) / (N·C) · 4².
    ps, pt = (x.flatten(2).div(4.0).softmax(-1) for x in (s, t))
    cwd = (pt * (pt.log() - ps.log())).sum() / (2 * 3) * 16.0
    assert L.ChannelWiseDistillation()(s, t).item() == pytest.approx(cwd.item(), rel=1e-10)
    # CriterionKD: KL per pixel over classes, 'batchmean' over the N·H·W pixels, T = 1.
    ps, pt = s.softmax(1), t.softmax(1)
    kd = (pt * (pt.log() - ps.log())).sum() / (2 * 4 * 4)
    assert L.PixelWiseDistillation()(s, t).item() == pytest.approx(kd.item(), rel=1e-10)


class _TinySegmenter(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.bn = nn.BatchNorm2d(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.avg_pool2d(x, 2)))  # half-resolution logits, like a decode head


def test_build_teacher_specs() -> None:
    assert L.build_teacher("none") is None
    with pytest.raises(NotImplementedError, match="torchscript:PATH"):
        L.build_teacher("segnext", num_classes=3)
    with pytest.raises(FileNotFoundError):
        L.build_teacher("torchscript:/nonexistent/teacher.pt", num_classes=3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in recent torch
def test_torchscript_teacher(tmp_path) -> None:
    path = tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.script(_TinySegmenter(3)), str(path))
    teacher = L.build_teacher(f"torchscript:{path}", num_classes=3)
    assert isinstance(teacher, L.Teacher)
    teacher.train()
    assert not teacher.training and not teacher.module.training
    logits = teacher(torch.rand(2, 3, 8, 8))
    assert logits.shape == (2, 3, 8, 8) and not logits.requires_grad
    with pytest.raises(ValueError, match="class set"):
        L.build_teacher(f"torchscript:{path}", num_classes=4)(torch.rand(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------------
# Task weighting (docs/MODEL.md, Losses)


def _run_epochs(weighting, epochs: list[dict[str, float]]) -> None:
    for mean_losses in epochs:
        weighting.end_epoch(mean_losses)


def test_maxmin_first_two_epochs_are_equal() -> None:
    w = MaxMinFairness()
    assert w.weights() == {"fus": 1.0, "seg": 1.0}
    w.end_epoch({"fus": 3.0, "seg": 1.0})
    assert w.weights() == {"fus": 1.0, "seg": 1.0}


def test_maxmin_lagging_task_gets_the_larger_weight() -> None:
    w = MaxMinFairness()
    # fus halves (r = 0.5), seg barely moves (r = 0.9): seg is lagging.
    _run_epochs(w, [{"fus": 2.0, "seg": 1.0, "kd": 7.0}, {"fus": 1.0, "seg": 0.9, "kd": 7.0}])
    weights = w.weights()
    assert sum(weights.values()) == pytest.approx(2.0)
    assert all(0.2 <= v <= 1.8 for v in weights.values())
    expected_seg = 2 * math.exp(0.5) / (math.exp(0.5) + 1.0)  # r̂ = (0, ~1), τ = 2
    assert weights["seg"] == pytest.approx(expected_seg, rel=1e-7)
    assert weights["seg"] == pytest.approx(1.245, abs=1e-3) and weights["fus"] == pytest.approx(0.755, abs=1e-3)


def test_maxmin_equal_rates_give_equal_weights() -> None:
    w = MaxMinFairness()
    _run_epochs(w, [{"fus": 4.0, "seg": 2.0}, {"fus": 3.0, "seg": 1.5}])
    assert w.weights() == pytest.approx({"fus": 1.0, "seg": 1.0})


def test_maxmin_clip_then_renormalise() -> None:
    w = MaxMinFairness(temperature=0.05)  # softmax ≈ one-hot -> (≈0, ≈2) clipped to (0.2, 1.8)
    _run_epochs(w, [{"fus": 1.0, "seg": 1.0}, {"fus": 0.5, "seg": 1.0}])
    assert w.weights() == pytest.approx({"fus": 0.2, "seg": 1.8})


def test_maxmin_state_dict_round_trip() -> None:
    epochs = [{"fus": 2.0, "seg": 1.0}, {"fus": 1.5, "seg": 0.9}, {"fus": 1.2, "seg": 0.85}]
    w = MaxMinFairness()
    _run_epochs(w, epochs)
    resumed = MaxMinFairness()
    resumed.load_state_dict(w.state_dict())
    assert resumed.weights() == w.weights()
    for weighting in (w, resumed):
        weighting.end_epoch({"fus": 1.1, "seg": 0.5})
    assert resumed.weights() == w.weights()
    with pytest.raises(ValueError):
        DynamicWeightAverage().load_state_dict(w.state_dict())


def test_dwa_sums_to_k() -> None:
    w = DynamicWeightAverage()
    _run_epochs(w, [{"fus": 2.0, "seg": 1.0}])
    assert w.weights() == {"fus": 1.0, "seg": 1.0}
    w.end_epoch({"fus": 1.0, "seg": 0.9})
    weights = w.weights()
    assert sum(weights.values()) == pytest.approx(2.0)
    expected_seg = 2 * math.exp(0.45) / (math.exp(0.45) + math.exp(0.25))  # r = (0.5, 0.9), T = 2
    assert weights["seg"] == pytest.approx(expected_seg, rel=1e-12)


def test_build_task_weighting_and_fixed() -> None:
    assert build_task_weighting("fixed").weights() == {"fus": 1.0, "seg": 1.0}
    fixed = build_task_weighting("fixed", fus=2.0, seg=0.5)
    fixed.end_epoch({"fus": 1.0, "seg": 1.0})
    assert fixed.weights() == {"fus": 2.0, "seg": 0.5}
    restored = FixedWeights()
    restored.load_state_dict(fixed.state_dict())
    assert restored.weights() == fixed.weights()
    assert isinstance(build_task_weighting("dwa"), DynamicWeightAverage)
    assert isinstance(build_task_weighting("maxmin", temperature=1.0), MaxMinFairness)
    with pytest.raises(ValueError):
        build_task_weighting("gradnorm")
