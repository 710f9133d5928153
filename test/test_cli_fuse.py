"""`mafs fuse` run in-process on the real sample pairs in data/sample (shipped with the repo).

The real mafs-lite runs on two 480x640 pairs; the error-path and colour-order tests swap in a stand-in
network with known outputs (fused = visible luminance, label = thermal quantised), which is fast and makes
the written files checkable pixel by pixel.
"""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from stand_in_net import KnownNet

import mafs_ros.cli as cli
from mafs_ros.cli import engine_options
from mafs_ros.checkpoint import save_checkpoint
from mafs_ros.class_sets import MFNET
from mafs_ros.engine import MafsEngine
from mafs_ros.imaging import overlay
from mafs_ros.io.images import read_thermal
from mafs_ros.model import build_model, get_config

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture
def known_engine(monkeypatch):
    monkeypatch.setattr(
        engine_options, "engine_from_args",
        lambda args: MafsEngine(model=KnownNet(), device="cpu", thermal_normalization=args.thermal_norm),
    )


def _copy_pairs(stems: list[str], root: Path) -> tuple[Path, Path]:
    for modality in ("ir", "vi"):
        (root / modality).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            shutil.copy(SAMPLE / modality / f"{stem}.png", root / modality / f"{stem}.png")
    return root / "ir", root / "vi"


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def _expected_labels(thermal_u8: np.ndarray) -> np.ndarray:
    return np.minimum(thermal_u8.astype(int) * 9 // 255, 8)


def test_sample_data_is_complete():
    stems = sorted(p.stem for p in (SAMPLE / "ir").glob("*.png"))
    assert len(stems) == 6 and "00702N" in stems
    assert stems == sorted(p.stem for p in (SAMPLE / "vi").glob("*.png"))
    assert (SAMPLE / "label" / "00702N.png").is_file() and (SAMPLE / "README.md").is_file()


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "fuse" in capsys.readouterr().out


def test_fuse_real_model(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "lite.safetensors", build_model(get_config("mafs-lite")), MFNET.class_names, MFNET.palette,
        thermal_normalization="fixed", trained=False, description="UNTRAINED test checkpoint",
    )
    stems = ["00702N", "01409D"]
    ir, vi = _copy_pairs(stems, tmp_path / "in")
    out = tmp_path / "out"
    code = cli.main(["fuse", "--ir", str(ir), "--vi", str(vi), "--out", str(out),
                     "--checkpoint", str(checkpoint), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "2 of 2 pair(s) written" in captured.out
    assert "UNTRAINED" in captured.err
    for stem in stems:
        fused, labels, blended = (_read(out / kind / f"{stem}.png") for kind in ("fused", "labels", "overlay"))
        assert fused.shape == (480, 640, 3) and fused.dtype == np.uint8
        assert labels.shape == (480, 640) and labels.dtype == np.uint8 and labels.max() < 9
        assert blended.shape == (480, 640, 3) and blended.dtype == np.uint8
        # The three files agree: the overlay is the label colours over the fused image.
        np.testing.assert_array_equal(blended, overlay(fused, labels, MFNET.palette, 0.5))


def test_fuse_writes_rgb_and_label_ids(tmp_path, known_engine):
    ir, vi = _copy_pairs(["01409D"], tmp_path / "in")
    out = tmp_path / "out"
    assert cli.main(["fuse", "--ir", str(ir / "01409D.png"), "--vi", str(vi / "01409D.png"), "--out", str(out)]) == 0
    visible = _read(SAMPLE / "vi" / "01409D.png")
    thermal = _read(SAMPLE / "ir" / "01409D.png")
    # Colour order survives reading and writing: the stand-in returns the visible image itself.
    assert np.abs(_read(out / "fused" / "01409D.png").astype(int) - visible).max() <= 3
    np.testing.assert_array_equal(_read(out / "labels" / "01409D.png"), _expected_labels(thermal))


def test_fuse_16bit_and_colour_thermal(tmp_path, known_engine):
    visible = _read(SAMPLE / "vi" / "00702N.png")
    thermal = _read(SAMPLE / "ir" / "00702N.png")
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    for stem in ("deep", "colour"):
        cv2.imwrite(str(tmp_path / "vi" / f"{stem}.png"), cv2.cvtColor(visible, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "ir" / "deep.png"), thermal.astype(np.uint16) * 257)  # 16-bit PNG, same scale
    noise = np.zeros_like(thermal)
    cv2.imwrite(str(tmp_path / "ir" / "colour.png"), np.dstack([noise, noise, thermal]))  # BGR: thermal in red
    out = tmp_path / "out"
    # "fixed": the 16-bit image holds the 8-bit one scaled to the full range (the default, "auto", would stretch it)
    assert cli.main(["fuse", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"), "--out", str(out),
                     "--thermal-norm", "fixed"]) == 0
    assert read_thermal(tmp_path / "ir" / "deep.png").dtype == np.uint16
    for stem in ("deep", "colour"):
        np.testing.assert_array_equal(_read(out / "labels" / f"{stem}.png"), _expected_labels(thermal))


def test_fuse_reports_bad_pairs_and_continues(tmp_path, known_engine, capsys):
    ir, vi = _copy_pairs(["00587D", "01000N"], tmp_path / "in")
    shutil.copy(SAMPLE / "ir" / "01364N.png", ir / "only_ir.png")
    shutil.copy(SAMPLE / "vi" / "01364N.png", vi / "only_vi.png")
    small = cv2.resize(cv2.imread(str(vi / "01000N.png")), (320, 240))
    cv2.imwrite(str(vi / "01000N.png"), small)  # size mismatch with its infrared partner
    (ir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    shutil.copy(SAMPLE / "vi" / "00587D.png", vi / "broken.png")
    out = tmp_path / "out"
    code = cli.main(["fuse", "--ir", str(ir), "--vi", str(vi), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "only_ir" in captured.err and "only_vi" in captured.err
    assert "'01000N'" in captured.err and "differ in size" in captured.err
    assert "broken.png" in captured.err and "cannot read" in captured.err
    assert "1 of 3 pair(s) written" in captured.out
    assert (out / "fused" / "00587D.png").is_file() and (out / "labels" / "00587D.png").is_file()
    assert not (out / "fused" / "01000N.png").exists()


def test_fuse_argument_errors(tmp_path, capsys):
    assert cli.main(["fuse", "--ir", str(tmp_path / "nope"), "--vi", str(SAMPLE / "vi"), "--out", str(tmp_path)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    code = cli.main(["fuse", "--ir", str(SAMPLE / "ir"), "--vi", str(SAMPLE / "vi"), "--out", str(tmp_path),
                     "--checkpoint", str(tmp_path / "missing.safetensors")])
    assert code == 2
    assert "missing.safetensors" in capsys.readouterr().err
