"""What differs on a CUDA GPU (marker `cuda`; skipped without one): placement, reduced precision and CUDA graphs
against fp32 eager, GPU memory given back, DDP over NCCL. `scripts/gpu_check.sh` runs them on a lent GPU; the
tolerances are `mafs bench --check-precision`'s (mafs_ros.bench.MIN_PSNR_DB, MIN_LABEL_AGREEMENT)."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mafs_ros.bench import check_precision
from mafs_ros.engine import MafsEngine
from mafs_ros.io.samples import sample_pairs

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SIZE = (480, 640)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    return sample_pairs(SIZE, 3)


@pytest.fixture(scope="module")
def fp32_cuda() -> MafsEngine:
    return MafsEngine(None, device="cuda")


def test_the_engine_runs_on_the_gpu_and_agrees_with_the_cpu(fp32_cuda, pairs):
    assert fp32_cuda.backend == "torch" and fp32_cuda.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in fp32_cuda.model.parameters())
    cpu = MafsEngine(None, device="cpu", backend="torch")
    row = check_precision(cpu, fp32_cuda, pairs)
    assert row["ok"], row
    result = fp32_cuda.infer(*pairs[0])
    assert isinstance(result.labels, np.ndarray) and result.labels.shape == SIZE  # back on the host


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_stays_within_the_bench_bounds(fp32_cuda, pairs, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    row = check_precision(fp32_cuda, MafsEngine(None, device="cuda", precision=precision), pairs)
    assert row["ok"], row


def test_cuda_graphs_match_eager(fp32_cuda, pairs):
    compiled = MafsEngine(None, device="cuda", compile_mode="reduce-overhead", warmup=2, warmup_size=SIZE)
    row = check_precision(fp32_cuda, compiled, pairs)
    assert row["ok"], row


def test_gpu_memory_is_given_back_when_the_engine_goes(pairs):
    # What the node's cleanup transition does with its engine (ros/node.py: drop, collect, empty the cache);
    # test_lifecycle.py checks the node itself where rclpy is installed.
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    engine = MafsEngine(None, device="cuda", warmup=1)
    engine.infer(*pairs[0])
    assert torch.cuda.memory_allocated() > before
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() == before


def _nccl_worker(rank: int, port: int, cfg, out: Path) -> None:
    import os

    import torch.distributed as dist

    from mafs_ros.train.trainer import Trainer, setup_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    info = setup_distributed()
    assert info.ddp and dist.get_backend() == "nccl"
    Trainer(cfg, info).run()
    dist.destroy_process_group()


def test_ddp_over_nccl_on_one_gpu_trains_as_one_process(tmp_path):
    from test_train import _config, _free_port, _tiles

    from mafs_ros.train.trainer import train

    data = _tiles(tmp_path / "data", with_labels=False)
    changes = dict(batch_size=2, freeze_bn=True, data__augment="none", amp=False)
    runs = {}
    for name, epochs in {"init": (0, 0), "single": (0, 1)}.items():
        cfg = _config(data, tmp_path / name, **changes)
        cfg.stage1.epochs, cfg.stage2.epochs = epochs
        runs[name] = load_file(train(cfg))
    ddp_cfg = _config(data, tmp_path / "ddp", **changes)
    ddp_cfg.stage1.epochs, ddp_cfg.stage2.epochs = 0, 1
    mp.spawn(_nccl_worker, args=(_free_port(), ddp_cfg, tmp_path), nprocs=1, join=True)
    ddp, single, init = load_file(tmp_path / "ddp" / "model.safetensors"), runs["single"], runs["init"]

    def norm(a: dict, b: dict) -> float:
        return sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a) ** 0.5

    update = norm(single, init)
    assert update > 1e-3 and norm(ddp, single) < 0.01 * update
