"""The training run configuration: one YAML recipe -> nested dataclasses, recorded next to the checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataSource:
    """One dataset folder. layout: auto, msrs, mfnet, fmb, pst900 or pairs (plain ir/ vi/ [label/])."""

    root: str
    layout: str = "auto"
    split: str = "train"
    # Stem patterns (fnmatch, e.g. "011??N"): keep only pairs matching one of `include` (empty: all), then drop
    # those matching one of `exclude`. Splits MFNet-style sequences by blocks of frame numbers.
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    repeat: int = 1  # each pair this many times per epoch (oversamples a small labelled set among unlabelled pairs)
    holdout: bool = False  # split by data.protocol: in data.train the held-out frames are left out, in data.val kept


@dataclass
class DataConfig:
    train: list[DataSource] = field(default_factory=list)
    val: list[DataSource] = field(default_factory=list)
    crop_size: int = 256
    # "official": random flips and 90-degree rotations (the paper); "scene": horizontal flips and random
    # scale, upright; "none". The random crop applies whenever cropping.
    augment: str = "official"
    # Random thermal contrast, gamma and local-contrast stretching, so that raw camera thermal (MFNet) and
    # contrast-enhanced infrared (MSRS, AGC cameras) both look familiar (train/data.py thermal_appearance).
    thermal_augment: bool = False
    upscale_small: bool = False  # scale pairs smaller than crop_size up to it instead of refusing them
    # Probability that a labelled sample gets the pixels of rare_classes (class names) pasted in from
    # another labelled frame, at the same place (train/data.py paste_classes): more scenes with rare classes.
    copy_paste: float = 0.0
    rare_classes: list[str] = field(default_factory=list)
    # Probability that a labelled sample's crop is placed around a pixel of rare_classes (augment "scene").
    rare_crop: float = 0.0
    # Repeat-factor sampling of labelled training frames (train/data.py repeat_rare_frames): a class shown in
    # fewer than this fraction of the frames has its frames repeated by sqrt(repeat_threshold / fraction); 0: off.
    repeat_threshold: float = 0.0
    thermal_normalization: str = "fixed"
    class_set: str = "msrs"
    workers: int = 2
    val_limit: int = 0  # evaluate on at most this many validation pairs (0: all)
    protocol: str = "block"  # validation protocol of the `holdout` sources: block, interleaved or none (io/splits.py)
    modality_dropout: float = 0.0  # probability that a sample's RGB or (as often) thermal image is blanked


@dataclass
class ModelConfig:
    config: str = "mafs-lite"
    num_classes: int = 9
    eaef_gate: str = "intended"
    init: str = ""  # optional checkpoint (ours) to start from
    pretrained: str = ""  # "imagenet": start the EfficientNet-Lite0 encoders from their ImageNet weights


@dataclass
class OptimConfig:
    """SGD with exponential warm-up then poly decay (the paper's schedule), or AdamW."""

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 1000
    warmup_start_lr: float = 1e-5
    poly_power: float = 0.9
    grad_clip: float = 10.0  # max global grad norm; 0 disables
    # Learning rate of pretrained encoder weights relative to `lr` (fine-tuning keeps ImageNet features).
    encoder_lr_scale: float = 1.0


@dataclass
class LossConfig:
    """Loss weights and choices; the defaults are ours where the paper leaves them open."""

    fusion_grad_weight: float = 10.0
    fusion_int_weight: float = 10.0
    fusion_intensity: str = "local_variance"  # local_variance (Fusion_loss) | max (the alternative Fusionloss)
    seg_aux_weight: float = 0.5
    seg_scale: float = 10.0
    ohem_thresh: float = 0.7
    # "balanced": CE weights sqrt(n_max / n_c), capped at 10, from the training labels' pixel counts (losses.py
    # class_balance_weights); "none": every class 1.
    seg_class_weighting: str = "none"
    # The segmentation losses run at this fraction of the crop: the maps come out of the model at that size and
    # the labels are resized to it (nearest). mafs-lite segments a half-size image, so 0.5 loses nothing it can
    # resolve and saves the full-size upsampling and cross-entropy of seven maps (a good part of a CPU step).
    seg_loss_scale: float = 1.0
    # Fusion losses on every Nth step only. mafs-lite's fusion path has weights of its own, so the other steps
    # skip it and segmentation gets more steps in the same time; the paper's network needs 1.
    fusion_every: int = 1
    task_weighting: str = "maxmin"  # fixed | dwa | maxmin
    distillation: str = "none"  # none | torchscript:PATH (a frozen teacher on the fused colour image)
    distillation_kind: str = "cwd"  # cwd (channel-wise, tau 4) | kd (pixel-wise, tau 1)
    distillation_weight: float = 1.0


@dataclass
class StageConfig:
    epochs: int = 0
    # A wall-clock budget for the stage's steps (0: none), for comparisons at equal training time: the stage ends
    # when it is spent (validated and saved as after its last epoch) and the learning rate decays over it.
    minutes: float = 0.0


@dataclass
class TrainConfig:
    """A whole run: Stage I (masked reconstruction) then Stage II (joint fusion + segmentation)."""

    out_dir: str = "runs/mafs"
    seed: int = 0
    batch_size: int = 4  # global batch, split over DDP processes
    amp: bool = True  # autocast (bf16) + no scaler; used on CUDA only
    freeze_bn: bool = False  # BatchNorm in eval mode (fine-tuning; makes DDP equal 1 process exactly)
    checkpoint_every: int = 10
    eval_every: int = 5
    log_every: int = 10
    stage1_shared_head: bool = False
    # At the end, fit per-class logit offsets on the labelled training frames and fold them into the classifier's
    # bias (train/class_offsets.py; mafs-lite): rare thin classes then win the arg-max where they are learnt.
    class_offsets: bool = False
    # Validate and export an exponential moving average of Stage II's weights with this decay per step (0: the
    # last step's weights; train/ema.py).
    ema_decay: float = 0.0
    stage1: StageConfig = field(default_factory=lambda: StageConfig(epochs=20))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(epochs=100))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Which keys hold nested sections or lists of data sources (names are unique across levels).
_SECTIONS = {
    "stage1": StageConfig,
    "stage2": StageConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "loss": LossConfig,
}
_SOURCE_LISTS = ("train", "val")


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        if name in _SECTIONS:
            kwargs[name] = _build(_SECTIONS[name], value, f"{where}.{name}")
        elif name in _SOURCE_LISTS:
            kwargs[name] = [_build(DataSource, v, f"{where}.{name}[{i}]") for i, v in enumerate(value or [])]
        else:
            kwargs[name] = value
    return cls(**kwargs)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` arguments as load_train_config's overrides (VALUE in YAML syntax)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML recipe; `overrides` are dotted keys applied on top, a number indexing a list: {"stage2.epochs":
    3}, {"data.train.0.exclude": []}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[_index(node, key, dotted)] if isinstance(node, list) else node.setdefault(key, {})
        node[_index(node, leaf, dotted) if isinstance(node, list) else leaf] = value
    return _build(TrainConfig, values, str(path))


def _index(items: list, key: str, dotted: str) -> int:
    """`key` of an override path as an index of `items`; a ValueError naming the override when it is none."""
    if not key.isdigit() or int(key) >= len(items):
        raise ValueError(f"override {dotted!r}: {key!r} is not an index of a list of {len(items)} entries")
    return int(key)
