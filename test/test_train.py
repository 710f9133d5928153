"""The training loop on real sample pairs: loss goes down, resume is exact, 2-process DDP equals 1 process."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from safetensors.torch import load_file

from mafs_ros.cli import main
from mafs_ros.model import build_model, get_config
from mafs_ros.train.config import DataSource, TrainConfig, load_train_config
from mafs_ros.train.data import label_pixel_counts
from mafs_ros.train.losses import class_balance_weights
from mafs_ros.train.data import split_pairs
from mafs_ros.train.trainer import Trainer, learning_rate, train

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
STEMS = ("00587D", "00702N", "01000N", "01409D")
THREADS = torch.get_num_threads()


def _tiles(root: Path, size: int = 64, with_labels: bool = True) -> Path:
    """A `pairs` folder of size x size tiles of real sample pairs (the labelled 00702N keeps its label)."""
    for sub in ("ir", "vi", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        for sub in ("ir", "vi"):
            image = cv2.imread(str(SAMPLE / sub / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(root / sub / f"{stem}.png"), image[200 : 200 + size, 300 : 300 + size])
        label = SAMPLE / "label" / f"{stem}.png"
        if with_labels and label.exists():
            tile = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)[200 : 200 + size, 300 : 300 + size]
            cv2.imwrite(str(root / "label" / f"{stem}.png"), tile)
    return root


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    cfg = TrainConfig(out_dir=str(out), batch_size=2, checkpoint_every=1, eval_every=1)
    cfg.model.config = "mafs-tiny"  # Stage I needs the ResNet topology
    cfg.stage1.epochs, cfg.stage2.epochs = 1, 2
    cfg.data.train = [DataSource(str(data), layout="pairs")]
    cfg.data.crop_size = 64
    cfg.data.workers = 0
    cfg.optim.lr = 0.01
    cfg.optim.warmup_iters = 0
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        setattr(getattr(cfg, section) if section else cfg, name, value)
    return cfg


def test_learning_rate_warms_up_then_decays() -> None:
    cfg = TrainConfig()
    lrs = [learning_rate(i, 20000, cfg.optim) for i in (0, 500, 1000, 10000, 19999)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[1] < lrs[2] == pytest.approx(1e-3)
    assert lrs[2] > lrs[3] > lrs[4] > 0


def test_a_few_iterations_lower_the_loss(tmp_path: Path) -> None:
    data = _tiles(tmp_path / "data")
    cfg = _config(data, tmp_path / "run", data__augment="none", eval_every=6)
    cfg.data.val = [DataSource(str(data), layout="pairs")]
    cfg.stage1.epochs, cfg.stage2.epochs = 0, 12
    path = train(cfg)
    history = json.loads((tmp_path / "run" / "log.json").read_text())
    losses = [row["loss_loss"] for row in history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert path.exists() and (tmp_path / "run" / "curves.png").exists()
    assert {"loss_fus", "loss_seg", "weight_fus", "weight_seg"} <= set(history[-1])
    assert {"val_SD", "val_Qabf", "val_mIoU", "val_IoU_unlabeled"} <= set(history[5]) and "val_SD" not in history[4]
    ious = [v for k, v in history[5].items() if k.startswith("val_IoU_")]
    assert all(0.0 <= v <= 1.0 for v in ious) and min(ious) <= history[5]["val_mIoU"] <= max(ious)


# Stage I has 2 steps: stop in the middle of Stage I, and in the middle of Stage II's first epoch.
@pytest.mark.parametrize("stop_after, position", [(1, ("stage1", 0, 1)), (3, ("stage2", 0, 1))])
def test_sigterm_then_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, monkeypatch, stop_after: int, position: tuple
) -> None:
    data = _tiles(tmp_path / "data")
    reference = train(_config(data, tmp_path / "full"))

    calls = {"n": 0}
    original = Trainer._train_step

    def stop_after_some_steps(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a launcher's shutdown sends
        return result

    monkeypatch.setattr(Trainer, "_train_step", stop_after_some_steps)
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, tmp_path / "resumed"))
    monkeypatch.setattr(Trainer, "_train_step", original)
    state = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert (state["stage"], state["epoch"], state["step"]) == position
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = train(_config(data, tmp_path / "resumed"), resume=True)

    expected, actual = load_file(reference), load_file(resumed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, cfg: TrainConfig) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(THREADS)
    train(cfg)


@pytest.mark.parametrize("stage1_epochs, stage2_epochs", [(1, 0), (0, 1)])
def test_two_process_ddp_equals_one_process(tmp_path: Path, stage1_epochs: int, stage2_epochs: int) -> None:
    # Fusion only and frozen BatchNorm statistics: then the global loss is the mean of the per-process losses,
    # and DDP's averaged gradients equal the one-process gradients at the same global batch. Both sides use the
    # same thread count, and each stage is compared from identical weights. What is left is rounding: the two
    # sides convolve batches of 2 and 4, for which oneDNN may pick other kernels (other ones again on AVX2 and
    # AVX-512 CPUs), and the intensity loss picks a source per pixel by comparing local variances, so a
    # rounding-level difference can flip a near-tie and move a weight by far more than rounding (4e-5 on an AMD
    # EPYC, 0.1 % of the update). So the runs are compared relative to the update: a DDP that did not average
    # gradients, or averaged them twice, would be off by about the whole update.
    data = _tiles(tmp_path / "data", with_labels=False)
    changes = dict(batch_size=4, freeze_bn=True, data__augment="none")
    runs = {}
    for name, epochs in {"init": (0, 0), "single": (stage1_epochs, stage2_epochs)}.items():
        cfg = _config(data, tmp_path / name, **changes)
        cfg.stage1.epochs, cfg.stage2.epochs = epochs
        runs[name] = load_file(train(cfg))
    double = _config(data, tmp_path / "ddp", **changes)
    double.stage1.epochs, double.stage2.epochs = stage1_epochs, stage2_epochs
    mp.spawn(_ddp_worker, args=(2, _free_port(), double), nprocs=2, join=True)
    ddp, single, init = load_file(tmp_path / "ddp" / "model.safetensors"), runs["single"], runs["init"]

    def norm(a: dict, b: dict) -> float:
        return sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a) ** 0.5

    update = norm(single, init)
    assert update > 1e-3  # the stage trained at all
    assert norm(ddp, single) < 0.01 * update


def test_train_command_reads_a_recipe(tmp_path: Path) -> None:
    data = _tiles(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"out_dir: {tmp_path / 'cli'}\nbatch_size: 2\n"
        f"data: {{train: [{{root: {data}, layout: pairs}}], crop_size: 64, workers: 0, copy_paste: 1.0, "
        "rare_classes: [bump]}\n"
        "model: {config: mafs-tiny}\nstage1: {epochs: 1}\nstage2: {epochs: 1}\nloss: {seg_class_weighting: balanced}\n"
    )
    assert load_train_config(recipe).data.train[0].root == str(data)
    assert main(["train", str(recipe), "--set", "optim.lr=0.005"]) == 0
    assert (tmp_path / "cli" / "model.safetensors").exists()
    assert (tmp_path / "cli" / "run_config.json").read_text().count("0.005") == 1
    # The final checkpoint trains on every labelled frame: list entries are addressed by their index.
    everything = load_train_config(recipe, {"data.train.0.exclude": ["x*"], "data.val": []})
    assert everything.data.train[0].exclude == ["x*"] and everything.data.val == []
    with pytest.raises(ValueError, match="'data.train.1.repeat'"):
        load_train_config(recipe, {"data.train.1.repeat": 2})
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage3: {epochs: 1}\n")
    assert main(["train", str(bad)]) == 2


def test_balanced_class_weights_come_from_the_training_labels(tmp_path: Path) -> None:
    data = _tiles(tmp_path / "data")
    trainer = Trainer(_config(data, tmp_path / "run", loss__seg_class_weighting="balanced"))
    counts = label_pixel_counts(trainer.train_pairs, 9)
    assert counts[0] > 0 and sum(counts) == 64 * 64  # one labelled tile
    assert trainer.seg_loss.ohem.class_weights.tolist() == pytest.approx(class_balance_weights(counts))
    assert Trainer(_config(data, tmp_path / "plain")).seg_loss.ohem.class_weights is None
    with pytest.raises(ValueError, match="'none' or 'balanced'"):
        Trainer(_config(data, tmp_path / "bad", loss__seg_class_weighting="inverse"))


def test_the_trainer_draws_frames_of_rare_classes_more_often(tmp_path: Path) -> None:
    data = _tiles(tmp_path / "data")
    trainer = Trainer(_config(data, tmp_path / "run", data__repeat_threshold=4.0))
    stems = [p.stem for p in trainer.train_pairs]  # the one labelled tile shows its classes in 1 of 1 frames
    assert stems.count("00702N") == 2 and len(stems) == len(STEMS) + 1  # sqrt(4 / 1); unlabelled pairs once
    with pytest.raises(ValueError, match="repeat_threshold must be >= 0"):
        Trainer(_config(data, tmp_path / "bad", data__repeat_threshold=-0.5))


def test_segmentation_losses_at_a_lower_resolution(tmp_path: Path) -> None:
    data = _tiles(tmp_path / "data")
    trainer = Trainer(_config(data, tmp_path / "run", loss__seg_loss_scale=0.5))
    label = torch.arange(64, dtype=torch.int64).repeat(64, 1)[None] % 9  # column id mod 9, (1, 64, 64)
    batch = {"label": label, "bi": (label > 0).float(), "bd": torch.zeros(1, 64, 64)}
    size, (small_label, small_bi, _) = trainer._seg_targets(batch)
    assert size == (32, 32) and small_label.dtype == torch.int64
    assert torch.equal(small_label[0, 0], (torch.arange(32) * 2 + 1) % 9)  # pixel centres, ids exact
    assert torch.equal(small_bi, (small_label > 0).float())
    train(trainer.cfg)  # mafs-tiny's maps come out at half size and the losses take them
    assert (tmp_path / "run" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="seg_loss_scale must be in"):
        Trainer(_config(data, tmp_path / "bad", loss__seg_loss_scale=0.0))


def _mfnet_stems(root: Path, stems: list[str]) -> Path:
    """A `pairs` folder whose pairs carry MFNet frame ids (copies of one labelled 64x64 tile)."""
    tiles = _tiles(root.parent / "tiles")
    for sub in ("ir", "vi", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            (root / sub / f"{stem}.png").write_bytes((tiles / sub / "00702N.png").read_bytes())
    return root


@pytest.mark.parametrize("protocol, held, guard", [
    ("interleaved", {"00103D", "00107D", "00503N"}, set()),
    ("block", {"00121D", "00535D"}, {"00120D", "00536D"}),
    ("none", set(), set()),
])
def test_validation_protocols_split_the_holdout_sources_together(tmp_path: Path, protocol, held, guard) -> None:
    first = ["00101D", "00102D", "00103D", "00104D", "00105D", "00121D", "00120D"]
    second = ["00106D", "00107D", "00501N", "00502N", "00503N", "00535D", "00536D"]
    a, b = _mfnet_stems(tmp_path / "a", first), _mfnet_stems(tmp_path / "b", second)
    cfg = _config(a, tmp_path / "run", data__protocol=protocol)
    cfg.data.train = [DataSource(str(a), layout="pairs", holdout=True, repeat=2),
                      DataSource(str(b), layout="pairs", holdout=True), DataSource(str(_tiles(tmp_path / "u")), "pairs")]
    cfg.data.val = [DataSource(str(a), layout="pairs", holdout=True), DataSource(str(b), layout="pairs", holdout=True)]
    train_pairs, val_pairs = split_pairs(cfg.data)
    assert {p.stem for p in val_pairs} == held
    trained = {p.stem for p in train_pairs}
    assert trained == (set(first) | set(second) | set(STEMS)) - held - guard
    assert sum(p.stem == "00101D" for p in train_pairs) == 2  # the repeat holds
    with pytest.raises(ValueError, match="unknown validation protocol"):
        split_pairs(_config(a, tmp_path / "x", data__protocol="random", data__train=cfg.data.train).data)


def test_a_time_budget_ends_the_stage_validated_and_saved(tmp_path: Path) -> None:
    data = _tiles(tmp_path / "data")
    cfg = _config(data, tmp_path / "run", eval_every=100)
    cfg.data.val = [DataSource(str(data), layout="pairs")]
    cfg.stage1.epochs, cfg.stage2.epochs, cfg.stage2.minutes = 0, 1000, 0.05
    train(cfg)
    history = json.loads((tmp_path / "run" / "log.json").read_text())
    assert 1 <= len(history) < 1000 and "val_mIoU" in history[-1]  # stopped by time, validated at the end
    # The budget is checked after every step: each epoch before the last started inside it. (No wall-clock slack:
    # on a loaded machine one step may take seconds; only the log's rounding of each row to 0.01 s.)
    assert sum(row["seconds"] for row in history[:-1]) < 60 * cfg.stage2.minutes + 0.005 * len(history)
    assert (tmp_path / "run" / "model.safetensors").exists()
    train(cfg, resume=True)  # a finished time budget trains no further
    assert len(json.loads((tmp_path / "run" / "log.json").read_text())) == len(history)
    assert learning_rate(0, 10**6, cfg.optim, time_spent=0.5) == pytest.approx(cfg.optim.lr * 0.5**0.9)


def test_the_early_fusion_trunk_takes_the_encoder_learning_rate(tmp_path: Path) -> None:
    from mafs_ros.train.trainer import build_optimizer

    net = build_model(get_config("mafs-lite"))
    cfg = TrainConfig()
    cfg.optim.encoder_lr_scale = 0.2
    groups = build_optimizer(net, cfg.optim).param_groups
    trunk = {id(p) for p in net.trunk.parameters()}
    assert [g["lr_scale"] for g in groups] == [1.0, 0.2]
    assert {id(p) for p in groups[1]["params"]} == trunk and not trunk & {id(p) for p in groups[0]["params"]}


def test_fusion_losses_every_nth_step_leave_the_others_to_segmentation(tmp_path: Path) -> None:
    data = _tiles(tmp_path / "data")
    cfg = _config(data, tmp_path / "run", loss__fusion_every=3, data__crop_size=64)
    cfg.model.config = "mafs-lite"
    cfg.stage1.epochs, cfg.stage2.epochs = 0, 1
    cfg.data.train = [DataSource(str(data), layout="pairs", repeat=3)]  # 12 pairs: 6 steps, fusion on 2
    trainer = Trainer(cfg)
    calls = []
    original = trainer.fusion_loss.forward
    trainer.fusion_loss.forward = lambda *args: calls.append(1) or original(*args)
    trainer.run()
    history = json.loads((tmp_path / "run" / "log.json").read_text())
    assert len(calls) == 2 and {"loss_fus", "loss_seg"} <= set(history[0])
    with pytest.raises(ValueError, match="fusion path has weights of its own"):
        Trainer(_config(data, tmp_path / "tiny", loss__fusion_every=2))
    with pytest.raises(ValueError, match="must be >= 1"):
        Trainer(_config(data, tmp_path / "zero", loss__fusion_every=0))


def test_class_offsets_let_a_learnt_but_outranked_class_win():
    from mafs_ros.train.class_offsets import fit_class_offsets, confusion_with

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    logits = rng.normal(0.0, 0.1, (3, 3000))
    logits[labels, np.arange(3000)] += 1.0
    logits[2] -= 1.0  # class 2: 0.5 below the background at its own pixels, 1.0 or more below the best elsewhere
    logits[0, labels == 2] += 0.5
    logp = logits - np.log(np.exp(logits).sum(0))
    zero = np.zeros(3, np.float32)
    offsets = fit_class_offsets(logp, labels)
    assert offsets[0] == 0 and 0.5 < offsets[2] < 1.5
    assert confusion_with(logp, labels, offsets).per_class_iou()[2] > 0.9 > 0.1 > confusion_with(logp, labels, zero).per_class_iou()[2]


def test_class_offsets_are_fitted_at_the_end_and_folded_into_the_classifier(tmp_path: Path) -> None:
    from mafs_ros.train.class_offsets import fold_into_classifier

    data = _tiles(tmp_path / "data")
    cfg = _config(data, tmp_path / "run", class_offsets=True, eval_every=100)
    cfg.model.config = "mafs-lite"
    cfg.stage1.epochs, cfg.stage2.epochs = 0, 1
    cfg.data.val = [DataSource(str(data), layout="pairs")]
    trainer = Trainer(cfg)
    trainer.run()
    history = json.loads((tmp_path / "run" / "log.json").read_text())
    assert history[-1]["stage"] == "class_offsets" and "val_mIoU" in history[-1]
    offsets = torch.tensor([history[-1]["offsets"][name] for name in trainer.class_set.class_names])
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["pretrainer"]["net.classifier.bias"]
    shipped = load_file(tmp_path / "run" / "model.safetensors")["classifier.bias"]
    torch.testing.assert_close(shipped, trained + offsets)
    with pytest.raises(ValueError, match="use config mafs-lite"):
        fold_into_classifier(build_model(get_config("mafs-tiny")), np.zeros(9, np.float32))


def test_the_weight_average_follows_the_trained_weights_with_its_decay() -> None:
    from mafs_ros.train.ema import WeightAverage

    net = nn.BatchNorm1d(3)
    average = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(2.0)
    net.num_batches_tracked.fill_(7)
    average.update(net)  # ramp: decay min(0.5, 2/11)
    torch.testing.assert_close(average.module.weight, torch.full((3,), 1.0 * 2 / 11 + 2.0 * 9 / 11))
    for _ in range(50):
        average.update(net)
    torch.testing.assert_close(average.module.weight, torch.full((3,), 2.0))
    assert int(average.module.num_batches_tracked) == 7 and average.updates == 51
    with pytest.raises(ValueError, match="ema_decay must be in"):
        WeightAverage(net, decay=1.0)


def test_a_run_with_a_weight_average_validates_and_exports_the_average(tmp_path: Path) -> None:
    data = _tiles(tmp_path / "data")
    cfg = _config(data, tmp_path / "run", ema_decay=0.9, eval_every=100)
    cfg.stage1.epochs, cfg.stage2.epochs = 0, 2
    path = train(cfg)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    exported, averaged = load_file(path), state["ema"]["weights"]
    raw = {k.removeprefix("net."): v for k, v in state["pretrainer"].items() if k.startswith("net.")}
    assert state["ema"]["updates"] == 4 and exported.keys() <= averaged.keys()
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    assert any(not torch.equal(exported[k], raw[k]) for k in exported if raw[k].is_floating_point())
    assert all(torch.equal(exported[k], v) for k, v in load_file(train(cfg, resume=True)).items())
