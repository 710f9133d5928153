"""The MAFS training loop: Stage I masked reconstruction, then Stage II joint fusion + segmentation.

Plain torch in the style of torchvision's reference scripts: one process per device, DDP through
torchrun (NCCL on GPUs, gloo on CPU), no framework. `train(cfg)` runs a whole recipe; resuming from
`out_dir/last.pt` continues exactly where the run stopped (same samples, same weights, bit for bit on CPU),
because every random choice of the data pipeline derives from (seed, epoch, index) and the checkpoint holds
the model, optimiser, task-weighting and RNG state plus the position inside the epoch.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..checkpoint import load_checkpoint, save_checkpoint
from ..class_sets import get_class_set
from ..imaging import ThermalNormalization, rgb_to_ycbcr, ycbcr_to_rgb
from ..model import MafsLiteNet, MafsNet, MafsPretrainer, build_model, get_config
from .class_offsets import class_log_probs, fit_class_offsets, fold_into_classifier
from .config import OptimConfig, TrainConfig
from .data import FusionSegDataset, label_pixel_counts, repeat_rare_frames, split_pairs
from .ema import WeightAverage
from .run_log import write_run_logs
from .losses import (
    ChannelWiseDistillation,
    class_balance_weights,
    FusionLoss,
    PixelWiseDistillation,
    SegmentationLoss,
    build_teacher,
    stage1_loss,
)
from .task_weights import FixedWeights, build_task_weighting

logger = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun). ddp: a process group is up (any
    torchrun job, one process included) and the model trains wrapped in DistributedDataParallel."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ddp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Read torchrun's environment; initialise NCCL (CUDA) or gloo (CPU) when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, device, ddp=dist.is_initialized())


def learning_rate(iteration: int, max_iter: int, optim: OptimConfig, time_spent: float = 0.0) -> float:
    """Exponential warm-up from warmup_start_lr to lr, then poly decay to 0 (the official
    schedule, docs/MODEL.md, Training recipe).

    The warm-up is capped at a tenth of the run, so short runs (the shipped lite recipe, tests) still decay.
    `time_spent`: the fraction of a time budget used (stage `minutes`); the decay follows whichever of it and
    the iteration count is further along.
    """
    warmup = min(optim.warmup_iters, max_iter // 10)
    if iteration < warmup:
        return optim.warmup_start_lr * (optim.lr / optim.warmup_start_lr) ** (iteration / warmup)
    progress = max((iteration - warmup) / max(1, max_iter - warmup), time_spent)
    return optim.lr * max(0.0, 1.0 - progress) ** optim.poly_power


def build_optimizer(module: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser over `module`'s trainable parameters; those of the pretrained encoder (`trunk` of a
    MafsLiteNet) form a second group whose learning rate is scaled by `encoder_lr_scale` (`lr_scale` key)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    pretrained = isinstance(module, MafsLiteNet)

    def is_encoder(name: str) -> bool:
        return pretrained and name.split(".")[0] == "trunk"

    encoder = [p for n, p in named if is_encoder(n)]
    rest = [p for n, p in named if not is_encoder(n)]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if encoder:
        groups.append({"params": encoder, "lr_scale": optim.encoder_lr_scale})
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    raise ValueError(f"unknown optimiser {optim.name!r} (sgd or adamw)")


def init_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: one torch thread, and SIGINT and SIGTERM left to the main process.

    A worker only decodes and crops images; with torch's default thread pool it competes with the training
    step's threads, which on a 2-core CPU made each step about ten times slower. (OpenCV's pool is left alone:
    resizing it in a child forked after the parent used it, e.g. after validation, deadlocks.)

    Ctrl-C and `kill -- -PGID` or `pkill -f` signal every process of the group. A worker they kill makes the
    main process fail ("DataLoader worker ... exited unexpectedly") before it can save its state; ignoring them
    here lets the main process stop cleanly, and it ends its workers itself. Items are seeded per item
    (FusionSegDataset.item_rng), so there is no per-worker seeding to keep.
    """
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _set_bn_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Trainer:
    """Holds one run's state; `run()` trains the remaining stages and returns the final checkpoint path."""

    def __init__(self, cfg: TrainConfig, dist_info: Distributed | None = None) -> None:
        self.cfg = cfg
        self.dist = dist_info or setup_distributed()
        self.out_dir = Path(cfg.out_dir)
        self.device = self.dist.device
        torch.manual_seed(cfg.seed)
        self.class_set = get_class_set(cfg.data.class_set)
        model_cfg = get_config(cfg.model.config, num_classes=cfg.model.num_classes, eaef_gate=cfg.model.eaef_gate)
        if len(self.class_set.class_names) != model_cfg.num_classes:
            raise ValueError(
                f"class set {self.class_set.name!r} has {len(self.class_set.class_names)} classes but the model "
                f"has num_classes={model_cfg.num_classes}"
            )
        self.net: MafsNet | MafsLiteNet = build_model(model_cfg)
        if cfg.model.pretrained not in ("", "imagenet"):
            raise ValueError(f"model.pretrained must be '' or 'imagenet', got {cfg.model.pretrained!r}")
        if cfg.model.pretrained == "imagenet":
            if not isinstance(self.net, MafsLiteNet):
                raise ValueError(f"model.pretrained: imagenet needs an EfficientNet-Lite0 model ({model_cfg.name} "
                                 f"has encoder {model_cfg.encoder!r})")
            self.net.load_imagenet_encoders()
        if cfg.model.init:
            self.net.load_state_dict(load_checkpoint(cfg.model.init).state_dict, strict=True)
        if cfg.stage1.epochs > 0 and not isinstance(self.net, MafsNet):
            raise ValueError(f"Stage I (masked reconstruction) needs the paper's MafsNet; {model_cfg.name} starts "
                             "from ImageNet encoders instead: set stage1.epochs to 0")
        self.pretrainer = MafsPretrainer(self.net, shared_head=cfg.stage1_shared_head)
        self.pretrainer.to(self.device)
        if self.dist.ddp and self.device.type == "cuda":
            self.pretrainer = nn.SyncBatchNorm.convert_sync_batchnorm(self.pretrainer)
            self.net = self.pretrainer.net
        self.ema = WeightAverage(self.net, cfg.ema_decay) if cfg.ema_decay else None  # Stage II's steps only

        if not 0.0 < cfg.loss.seg_loss_scale <= 1.0:
            raise ValueError(f"loss.seg_loss_scale must be in (0, 1], got {cfg.loss.seg_loss_scale}")
        self.train_pairs, self.val_pairs = split_pairs(cfg.data)
        self.train_pairs = repeat_rare_frames(self.train_pairs, model_cfg.num_classes, cfg.data.repeat_threshold)
        if cfg.data.val_limit:
            self.val_pairs = self.val_pairs[: cfg.data.val_limit]
        self.has_labels = any(p.label is not None for p in self.train_pairs)

        self.fusion_loss = FusionLoss(
            cfg.loss.fusion_grad_weight, cfg.loss.fusion_int_weight, cfg.loss.fusion_intensity
        )
        self.seg_loss = SegmentationLoss(
            model_cfg.num_classes, aux_weight=cfg.loss.seg_aux_weight, scale=cfg.loss.seg_scale,
            ohem_thresh=cfg.loss.ohem_thresh, class_weights=self._class_weights(model_cfg.num_classes),
        )
        if cfg.loss.fusion_every < 1:
            raise ValueError(f"loss.fusion_every must be >= 1, got {cfg.loss.fusion_every}")
        if cfg.loss.fusion_every > 1 and not isinstance(self.net, MafsLiteNet):
            raise ValueError("loss.fusion_every > 1 needs a model whose fusion path has weights of its own "
                             f"(mafs-lite); {model_cfg.name} fuses from its shared encoder")
        if cfg.loss.fusion_every > 1 and cfg.loss.distillation != "none":
            raise ValueError("distillation reads the fused image of every step: it needs loss.fusion_every 1")
        self.teacher = build_teacher(
            cfg.loss.distillation, num_classes=model_cfg.num_classes, map_location=self.device
        )
        if self.teacher is not None:
            self.distill = (
                ChannelWiseDistillation() if cfg.loss.distillation_kind == "cwd" else PixelWiseDistillation()
            )
        # Without labels only the fusion task exists, so there is nothing to balance.
        self.task_weights = (
            build_task_weighting(cfg.loss.task_weighting) if self.has_labels else FixedWeights(fus=1.0, seg=0.0)
        )
        self.amp_dtype = torch.bfloat16 if (cfg.amp and self.device.type == "cuda") else None

        self.stage = STAGES[0]
        self.epoch = 0
        self.step = 0  # batches done in the current epoch
        self.epoch_sums: dict[str, list] = {}  # [loss sum, steps] of those batches (task weights need epoch means)
        self.iteration = 0  # optimiser steps done in the current stage
        self.history: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._stop_requested = False

    def _class_weights(self, num_classes: int) -> list[float] | None:
        weighting = self.cfg.loss.seg_class_weighting
        if weighting == "none" or not self.has_labels:
            return None
        if weighting != "balanced":
            raise ValueError(f"loss.seg_class_weighting must be 'none' or 'balanced', got {weighting!r}")
        weights = class_balance_weights(label_pixel_counts(self.train_pairs, num_classes))
        logger.info("class weights: %s", ", ".join(f"{n} {w:.2f}" for n, w in zip(self.class_set.class_names, weights)))
        return weights

    # ---- state --------------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.out_dir / "last.pt"

    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "stage": self.stage,
            "epoch": self.epoch,
            "step": self.step,
            "iteration": self.iteration,
            "epoch_sums": json.dumps(self.epoch_sums),
            "pretrainer": self.pretrainer.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "task_weights": self.task_weights.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "torch_rng": torch.get_rng_state(),
            "history": json.dumps(self.history),
            "config": json.dumps(self.cfg.to_dict()),
        }
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.state_path)

    def load_state(self) -> None:
        """Restore `out_dir/last.pt` (weights-only load: no pickled code runs)."""
        if not self.state_path.is_file():
            raise FileNotFoundError(f"--resume: no training state at {self.state_path}")
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        self.pretrainer.load_state_dict(state["pretrainer"], strict=True)
        self.stage, self.epoch, self.step = state["stage"], state["epoch"], state["step"]
        self.iteration = state["iteration"]
        self.epoch_sums = json.loads(state["epoch_sums"])
        self.task_weights.load_state_dict(state["task_weights"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.history = json.loads(state["history"])
        self._resume_optimizer = state["optimizer"]
        logger.info("resuming %s epoch %d step %d from %s", self.stage, self.epoch, self.step, self.state_path)

    # ---- loop ---------------------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> Path:
        self._resume_optimizer = None
        if resume:
            self.load_state()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "run_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        try:
            for stage in STAGES[STAGES.index(self.stage):]:
                if stage != self.stage:
                    self.stage, self.epoch, self.step, self.iteration, self.epoch_sums = stage, 0, 0, 0, {}
                    self._resume_optimizer = None
                self._run_stage()
                if self._stop_requested:
                    break
        except KeyboardInterrupt:
            self._request_stop()
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
        if self._stop_requested:
            self.save_state()
            raise KeyboardInterrupt(f"training interrupted; state saved to {self.state_path} (use --resume)")
        if self.ema is not None:
            self.ema.copy_to(self.net)
        if self.cfg.class_offsets and self.dist.is_main:
            self._fit_class_offsets()
        return self._export()

    def _request_stop(self, *_: object) -> None:
        self._stop_requested = True

    def _stage_epochs(self) -> int:
        return (self.cfg.stage1 if self.stage == "stage1" else self.cfg.stage2).epochs

    def _stage_budget_s(self) -> float:
        """The stage's time budget in seconds (0: none)."""
        return 60.0 * (self.cfg.stage1 if self.stage == "stage1" else self.cfg.stage2).minutes

    def _stage_seconds(self) -> float:
        """Training seconds of the stage's finished epochs (from the history, so that a resumed run counts them)."""
        return sum(row["seconds"] for row in self.history if row["stage"] == self.stage)

    def _run_stage(self) -> None:
        epochs = self._stage_epochs()
        budget = self._stage_budget_s()
        if self.epoch >= epochs or (budget and self._stage_seconds() >= budget):
            return
        if budget and self.dist.world_size > 1:
            raise ValueError("a stage time budget (minutes) needs one process: DDP ranks would stop at other steps")
        stage1 = self.stage == "stage1"
        dataset = FusionSegDataset(
            self.train_pairs, crop_size=self.cfg.data.crop_size, augment=self.cfg.data.augment, stage1_masking=stage1,
            thermal_normalization=self.cfg.data.thermal_normalization, class_set=self.class_set,
            seed=self.cfg.seed, thermal_augment=self.cfg.data.thermal_augment,
            upscale_small=self.cfg.data.upscale_small, copy_paste=self.cfg.data.copy_paste,
            rare_classes=self.cfg.data.rare_classes, rare_crop=self.cfg.data.rare_crop,
            modality_dropout=self.cfg.data.modality_dropout,
        )
        per_process_batch = self.cfg.batch_size // self.dist.world_size
        if per_process_batch < 1 or per_process_batch * self.dist.world_size != self.cfg.batch_size:
            raise ValueError(f"batch_size {self.cfg.batch_size} must be a multiple of {self.dist.world_size} processes")
        sampler = DistributedSampler(
            dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=self.cfg.seed,
            drop_last=True,
        )
        loader = DataLoader(
            dataset, batch_size=per_process_batch, sampler=sampler, num_workers=self.cfg.data.workers,
            drop_last=True, pin_memory=self.device.type == "cuda", worker_init_fn=init_worker,
        )
        if len(loader) == 0:
            raise ValueError(f"{len(dataset)} training pairs are fewer than one batch of {self.cfg.batch_size}")
        module: nn.Module = self.pretrainer if stage1 else self.net
        # Stage I never runs the segmentation decoder, whose parameters then get no gradient.
        model = (
            DistributedDataParallel(module, find_unused_parameters=stage1) if self.dist.ddp else module
        )
        self.optimizer = build_optimizer(module, self.cfg.optim)
        if self._resume_optimizer is not None:
            self.optimizer.load_state_dict(self._resume_optimizer)
            self._resume_optimizer = None
        try:
            self._train_epochs(model, module, loader, sampler, dataset, epochs * len(loader), stage1)
        finally:
            # A DDP wrapper's gradient hooks stay on the parameters until it is collected, and Stage II wraps
            # the same parameters again: the Stage I wrapper must be gone first or it keeps reducing them.
            del model
            gc.collect()

    def _train_epochs(
        self, model: nn.Module, module: nn.Module, loader: DataLoader, sampler: DistributedSampler,
        dataset: FusionSegDataset, max_iter: int, stage1: bool,
    ) -> None:
        epochs, budget = self._stage_epochs(), self._stage_budget_s()
        out_of_time = False
        while self.epoch < epochs and not out_of_time:
            sampler.set_epoch(self.epoch)
            dataset.set_epoch(self.epoch)
            module.train()
            if self.cfg.freeze_bn:
                _set_bn_eval(module)
            spent = self._stage_seconds()
            started = time.perf_counter()
            batches = itertools.islice(iter(loader), self.step, None)
            progress = self._progress(len(loader), self.step)
            for batch in batches:
                time_spent = (spent + time.perf_counter() - started) / budget if budget else 0.0
                lr = learning_rate(self.iteration, max_iter, self.cfg.optim, time_spent)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                losses = self._train_step(model, batch, stage1)
                if self.ema is not None and not stage1:
                    self.ema.update(module)
                for name, value in losses.items():  # [sum, steps]: a loss may skip steps (loss.fusion_every)
                    total, count = self.epoch_sums.get(name, (0.0, 0))
                    self.epoch_sums[name] = [total + value, count + 1]
                self.step += 1
                self.iteration += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix({k: f"{v:.3g}" for k, v in losses.items()} | self._weights_postfix())
                if self._stop_requested:
                    break
                if budget and spent + time.perf_counter() - started >= budget:
                    out_of_time = True
                    break
            if progress is not None:
                progress.close()
            if self._stop_requested:
                return
            self._end_epoch(lr, time.perf_counter() - started, stage1, last=out_of_time)

    def _weights_postfix(self) -> dict[str, str]:
        if self.stage == "stage1":
            return {}
        return {f"w_{k}": f"{v:.2f}" for k, v in self.task_weights.weights().items()}

    def _progress(self, total: int, initial: int):
        if not self.dist.is_main:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=f"{self.stage} epoch {self.epoch + 1}/{self._stage_epochs()}",
                    leave=False, dynamic_ncols=True)

    def _train_step(self, model: nn.Module, batch: dict[str, Any], stage1: bool) -> dict[str, float]:
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        vi_y, cb, cr = rgb_to_ycbcr(batch["vi"])
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        with autocast:
            if stage1:
                rec_vi, rec_ir = model(batch["vi_masked"], batch["ir_masked"])
                total = stage1_loss(rec_vi.float(), rec_ir.float(), vi_y, batch["ir"])
                parts = {"rec": total}
            else:
                seg_size, targets = self._seg_targets(batch)
                with_fusion = self.iteration % self.cfg.loss.fusion_every == 0
                # Only MafsLiteNet takes with_fusion (the recipe check in __init__ keeps fusion_every 1 otherwise).
                out = model(batch["vi"], batch["ir"], seg_size=seg_size, **({} if with_fusion else {"with_fusion": False}))
                fused = out.fused.float() if with_fusion else None
                l_seg, _ = self.seg_loss(
                    type(out)(out.semantic.float(), tuple(a.float() for a in out.aux), fused),
                    *targets, batch["has_label"],
                )
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(ycbcr_to_rgb(fused.detach(), cb, cr))
                    l_kd = self.distill(out.semantic.float(), teacher_logits)
                    l_seg = l_seg + self.cfg.loss.distillation_weight * l_kd
                w = self.task_weights.weights()
                total, parts = w["seg"] * l_seg, {"seg": l_seg}
                if with_fusion:
                    l_fus, _ = self.fusion_loss(batch["ir"], vi_y, fused, batch["mask"])
                    total, parts["fus"] = total + w["fus"] * l_fus, l_fus
        if not torch.isfinite(total):
            raise FloatingPointError(f"{self.stage} epoch {self.epoch} step {self.step}: loss is {total.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        return {"loss": total.item(), **{k: v.item() for k, v in parts.items()}}

    def _seg_targets(self, batch: dict[str, Any]) -> tuple[tuple[int, int] | None, list[torch.Tensor]]:
        """The size of the segmentation maps (None: the input's) and label, bi, bd resized to it (nearest)."""
        targets = [batch["label"], batch["bi"], batch["bd"]]
        scale = self.cfg.loss.seg_loss_scale
        if scale == 1.0:
            return None, targets
        h, w = batch["label"].shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        resized = [F.interpolate(t[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(t.dtype)
                   for t in targets]
        return size, resized

    def _end_epoch(self, lr: float, seconds: float, stage1: bool, last: bool = False) -> None:
        """Log the epoch's mean losses (and validation every eval_every epochs and at the `last` one), save."""
        names = sorted(self.epoch_sums)
        means = torch.tensor([total / count for total, count in (self.epoch_sums[n] for n in names)],
                             dtype=torch.float64, device=self.device)
        if self.dist.ddp:
            dist.all_reduce(means)
            means /= self.dist.world_size
        mean_losses = dict(zip(names, means.tolist()))
        weights = self.task_weights.weights() if not stage1 else {}
        # A time budget can end an epoch after a few steps, none of them with fusion losses (loss.fusion_every):
        # the task weights then keep what they have.
        if not stage1 and {"fus", "seg"} <= mean_losses.keys():
            self.task_weights.end_epoch({"fus": mean_losses["fus"], "seg": mean_losses["seg"]})
        self.epoch += 1
        self.step = 0
        self.epoch_sums = {}
        row: dict[str, Any] = {"stage": self.stage, "epoch": self.epoch, "lr": lr, "seconds": round(seconds, 2)}
        row |= {f"loss_{k}": v for k, v in mean_losses.items()}
        row |= {f"weight_{k}": v for k, v in weights.items()}
        last = last or self.epoch == self._stage_epochs()
        if self.dist.is_main and not stage1 and self.val_pairs and (self.epoch % self.cfg.eval_every == 0 or last):
            scored = self.ema.module if self.ema is not None else self.net
            row |= {f"val_{k}": v for k, v in self.validate(scored).items()}
        self.history.append(row)
        if self.dist.is_main:
            logger.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            self._write_logs()
        if self.epoch % self.cfg.checkpoint_every == 0 or last:
            self.save_state()

    # ---- validation, logs, export -------------------------------------------------------------------------

    def validate(self, net: MafsNet | MafsLiteNet) -> dict[str, float]:
        """Fusion metrics (mean) and mIoU of `net` (the trained weights or their average) on the validation pairs,
        at full size."""
        from ..engine import MafsEngine
        from ..imaging import thermal_u8
        from ..io.images import load_pair
        from ..metrics import ConfusionMatrix, day_night, fusion_metrics, luma_u8

        engine = MafsEngine(
            model=net, class_names=self.class_set.class_names, palette=self.class_set.palette,
            device=str(self.device), thermal_normalization=self.cfg.data.thermal_normalization,
        )
        confusion = ConfusionMatrix(self.net.config.num_classes)
        by_time: dict[str, ConfusionMatrix] = {}  # day and night apart, for MFNet/MSRS stems
        totals: dict[str, float] = {}
        for pair in self.val_pairs:
            rgb, thermal, label = load_pair(pair, num_classes=self.net.config.num_classes)
            result = engine.infer(rgb, thermal, want_confidence=False)
            for name, value in fusion_metrics(thermal_u8(engine, thermal), luma_u8(rgb), result.fused_y).items():
                totals[name] = totals.get(name, 0.0) + value
            if label is not None:
                confusion.update(result.labels, label)
                time_of_day = day_night(pair.stem)
                if time_of_day:
                    by_time.setdefault(time_of_day, ConfusionMatrix(self.net.config.num_classes))
                    by_time[time_of_day].update(result.labels, label)
        self.net.train()
        values = {name: total / len(self.val_pairs) for name, total in totals.items()}
        if confusion.matrix.sum() > 0:
            values["mIoU"] = confusion.miou()
            values |= {f"mIoU_{name}": matrix.miou() for name, matrix in sorted(by_time.items())}
            # Per class too: with a few validation frames, the mean hides which classes the model has learnt.
            for name, iou in zip(self.class_set.class_names, confusion.per_class_iou()):
                if not math.isnan(iou):
                    values[f"IoU_{name}"] = float(iou)
        return values

    def _fit_class_offsets(self) -> None:
        """Fit and fold the class offsets (after the last state was saved, so a resume fits them again from the
        trained weights), then validate again: the history's last row carries them and the final validation.
        Fitted on every second labelled training frame (the scores barely change with more; the time does)."""
        start = time.perf_counter()
        labelled = sorted({p for p in self.train_pairs if p.label is not None}, key=lambda p: str(p.label))[::2]
        logp, labels = class_log_probs(self.net, labelled, ThermalNormalization.from_spec(
            self.cfg.data.thermal_normalization), self.net.config.num_classes)
        offsets = fit_class_offsets(logp, labels)
        fold_into_classifier(self.net, offsets)
        row = {"stage": "class_offsets", "epoch": self.epoch, "seconds": round(time.perf_counter() - start, 2),
               "offsets": dict(zip(self.class_set.class_names, offsets.tolist()))}
        logger.info("class offsets fitted on %d training frames: %s", len(labelled), row["offsets"])
        if self.val_pairs:
            row |= {f"val_{k}": v for k, v in self.validate(self.net).items()}
        self.history.append(row)
        self._write_logs()

    def _write_logs(self) -> None:
        write_run_logs(self.history, self.out_dir)

    def _export(self) -> Path:
        path = self.out_dir / "model.safetensors"
        if self.dist.is_main:
            self.net.eval()
            last_val = next((r for r in reversed(self.history) if any(k.startswith("val_") for k in r)), {})
            save_checkpoint(
                path, self.net, self.class_set.class_names, self.class_set.palette,
                thermal_normalization=self.cfg.data.thermal_normalization, trained=True,
                description=f"{self.net.config.name} trained by mafs train ({self.cfg.stage1.epochs} Stage I + "
                            f"{self.cfg.stage2.epochs} Stage II epochs)",
                extra={"run_config": self.cfg.to_dict(), "final_validation": last_val},
            )
            logger.info("wrote %s", path)
        return path


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run (or resume) a recipe; returns the exported checkpoint path (written by rank 0)."""
    trainer = Trainer(cfg)
    try:
        return trainer.run(resume=resume)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

