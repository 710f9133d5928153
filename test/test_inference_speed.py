"""Inference rewrites (BatchNorm folding, channels-last, no deep-supervision maps) and `mafs bench`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ros_harness import DOMAIN_ID
from stand_in_net import KnownNet
from torch import nn

from mafs_ros.bench import BenchPlan, check_precision, interleaved_runs, run_bench, timed_runs
from mafs_ros.cli import main
from mafs_ros.engine import MafsEngine
from mafs_ros.io.samples import sample_pairs
from mafs_ros.model import build_model, get_config
from mafs_ros.model.inference import fuse_conv_bn


def _randomize_batchnorm(net: nn.Module) -> None:
    # Fresh BatchNorms are identities (mean 0, var 1, weight 1, bias 0): folding them would prove nothing.
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)


def test_fold_batchnorm_keeps_outputs_and_removes_every_foldable_norm() -> None:
    torch.manual_seed(0)
    net = build_model(get_config("mafs-lite", num_classes=9)).eval()
    _randomize_batchnorm(net)
    vi, ir = torch.rand(1, 3, 64, 96), torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        expected = net(vi, ir)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    folded = fuse_conv_bn(net)
    after = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    # Left: norms that do not follow a conv directly (trunk stems after the SFE, PHF after instance norm).
    # DSRM's conv -> BN -> BN folds twice (`output_conv`).
    assert folded > 0.8 * before and after == before - folded
    left = [name for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert left and not [name for name in left if name.startswith("encoder.dsrm.")], left
    with torch.no_grad():
        actual = net(vi, ir)
    assert torch.allclose(actual.fused, expected.fused, atol=1e-4)
    assert torch.allclose(actual.semantic, expected.semantic, atol=1e-4)


def test_fold_refuses_a_training_model() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_bn(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))


def test_eval_forward_skips_the_deep_supervision_maps_and_training_keeps_them() -> None:
    net = build_model(get_config("mafs-tiny", num_classes=9))
    vi, ir = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    assert len(net(vi, ir).aux) == 6
    with torch.no_grad():
        assert net.eval()(vi, ir).aux == ()


def test_optimized_engine_matches_the_plain_one_and_leaves_the_callers_model_alone() -> None:
    torch.manual_seed(0)
    net = build_model(get_config("mafs-lite", num_classes=9)).eval()
    _randomize_batchnorm(net)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    plain = MafsEngine(model=net, device="cpu")
    optimized = MafsEngine(model=net, device="cpu", optimize=True)
    assert not plain.optimized and optimized.optimized
    assert optimized.model is not net and net.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    for rgb, thermal in sample_pairs((64, 96), 2):
        a = plain.infer(rgb, thermal, want_confidence=False)
        b = optimized.infer(rgb, thermal, want_confidence=False)
        assert np.abs(a.fused_rgb.astype(int) - b.fused_rgb.astype(int)).max() <= 1
        assert (a.labels == b.labels).mean() >= 0.999


def test_engine_from_a_checkpoint_is_optimized_channels_last() -> None:
    engine = MafsEngine(device="cpu", backend="torch")  # the default on a CPU is onnxruntime (test_onnxruntime_cache.py)
    assert engine.optimized
    conv = next(m for m in engine.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in engine.model.parameters())
    assert MafsEngine(device="cpu", backend="torch", optimize=False).optimized is False


def test_network_inputs_are_what_the_model_sees() -> None:
    net = KnownNet()
    engine = MafsEngine(model=net, device="cpu")
    pairs = sample_pairs((70, 100), 2)  # resized to 64x96 for the network
    vi, ir = engine.network_inputs(pairs)
    assert vi.shape == (2, 3, 64, 96) and ir.shape == (2, 1, 64, 96)
    engine.infer_batch(pairs)
    assert net.input_sizes[-1] == tuple(vi.shape)
    with pytest.raises(ValueError, match="one size"):
        engine.network_inputs([pairs[0], sample_pairs((64, 64), 1)[0]])


def test_timed_runs_respects_count_and_time_cap() -> None:
    calls = []
    times = timed_runs(lambda: calls.append(1), torch.device("cpu"), runs=7, warmup=2, max_seconds=60)
    assert len(times) == 7 and len(calls) == 9 and all(t >= 0 for t in times)
    slow = timed_runs(lambda: __import__("time").sleep(0.05), torch.device("cpu"), runs=50, warmup=0, max_seconds=0.1)
    assert 3 <= len(slow) < 50 and min(slow) >= 50


def test_interleaved_runs_take_turns_after_each_ones_warmup() -> None:
    calls = []
    a, b = interleaved_runs([lambda: calls.append("a"), lambda: calls.append("b")], torch.device("cpu"), runs=3,
                            warmup=1, max_seconds=60)
    assert len(a) == len(b) == 3
    assert "".join(calls) == "ab" + "ab" * 3


def test_check_precision_of_identical_and_of_different_engines() -> None:
    pairs = sample_pairs((64, 96), 2)
    engine = MafsEngine(model=KnownNet(), device="cpu")
    same = check_precision(engine, engine, pairs)
    assert same == {"min_psnr_db": float("inf"), "label_agreement": 1.0, "ok": True}
    other = check_precision(engine, MafsEngine(model=KnownNet(fused="mean"), device="cpu"), pairs)
    assert other["min_psnr_db"] < 40 and other["label_agreement"] == 1.0 and other["ok"] is False


def test_run_bench_records_engine_and_eager_side_by_side() -> None:
    plan = BenchPlan(configs=("mafs-lite",), sizes=((64, 96),), batches=(1, 2), devices=("cpu",), runs=3,
                     max_seconds=5.0, node=False)
    records = run_bench(plan)
    assert [(r.what, r.batch) for r in records] == [
        ("eager_reference", 1), ("engine", 1), ("eager_reference", 2), ("engine", 2)
    ]
    for eager, engine in zip(records[::2], records[1::2]):
        assert engine.speedup_vs_eager == pytest.approx(eager.median_ms / engine.median_ms)
        assert engine.pairs_per_s == pytest.approx(engine.batch / engine.median_ms * 1e3)
        assert set(engine.stages_ms) == {"preprocess_ms", "inference_ms", "postprocess_ms"}
        assert engine.p95_ms >= engine.median_ms > 0 and engine.runs == 3 and engine.threads >= 1


def test_cli_bench_writes_json_records_and_a_table_with_the_node(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MAFS_BENCH_DOMAIN_ID", str(DOMAIN_ID + 2))  # off the other tests' DDS traffic
    code = main(["bench", "--configs", "mafs-lite", "--sizes", "64x96", "--batches", "1", "--runs", "3",
                 "--max-seconds", "5", "--out", str(tmp_path)])
    assert code == 0
    records = json.loads((tmp_path / "bench.json").read_text())
    required = {"config", "device", "precision", "batch", "height", "width", "what", "median_ms", "p95_ms",
                "pairs_per_s", "speedup_vs_eager"}
    assert all(required <= set(r) for r in records)
    assert {r["what"] for r in records} == {"engine", "eager_reference", "node_end_to_end", "node_overhead"}
    overhead = next(r for r in records if r["what"] == "node_overhead")
    assert overhead["runs"] >= 50 and 0 < overhead["median_ms"] < 50
    engine = next(r for r in records if r["what"] == "engine")
    assert engine["backend"] == "onnxruntime" and engine["compute_floor_ms"] > 0  # the default CPU engine
    assert "| engine | mafs-lite | onnxruntime | cpu | fp32 | 1 | 64x96 |" in (tmp_path / "bench.md").read_text()
    assert "pairs/s" in capsys.readouterr().out
    assert main(["bench", "--sizes", "64"]) == 2


def test_compile_mode_is_checked() -> None:
    assert MafsEngine(model=KnownNet(), device="cpu").compile_mode == "none"
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        MafsEngine(model=KnownNet(), device="cpu", compile_mode="fast")
