"""`mafs calibrate` (mafs_ros.calibrate): known homographies recovered from real sample pairs, manual points,
failure on a pair without common structure, the CLI (folders and a bag), and the registration.yaml it writes as
read by the node (rclpy's params-file parser) and by `mafs replay --homography-file`.

Each automatic calibration takes seconds (ECC at full resolution dominates), so every one of them runs once, in
the module fixture `calibrations`, and the tests assert on its results: the in-process ones in worker threads
(OpenCV releases the GIL) while the CLI runs in the main thread, where its output can be captured."""

import contextlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

import mafs_ros.cli as cli
from mafs_ros import bags
from mafs_ros.calibrate import (
    CalibrationInputError,
    CalibrationResult,
    ImagePair,
    calibrate,
    homography_from_points,
    read_points,
)
from mafs_ros.cli import engine_options
from mafs_ros.edge_alignment import grid_error, map_points
from mafs_ros.stream.registration import read_homography_file, registration_params_yaml

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
# Three sample pairs with structure all over the image; one homography for all of them, as for a rig.
STEMS = ("01599D", "01409D", "01364N")
CENTRE = (319.5, 239.5)
MAX_ERROR_PX = 2.0
OWN_REGISTRATION_MAX_PX = 5.0  # the method puts the sample pairs 2.5-3.6 px from the identity


def _sample(stem: str) -> tuple[np.ndarray, np.ndarray]:
    thermal = cv2.imread(str(SAMPLE / "ir" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.cvtColor(cv2.imread(str(SAMPLE / "vi" / f"{stem}.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return thermal, rgb


def known(scale: float = 1.0, degrees: float = 0.0, shift: tuple[float, float] = (0.0, 0.0),
          perspective: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A thermal -> RGB homography: perspective about the image centre, then rotation and scale about it, then a
    shift (RGB pixels)."""
    centre = np.array([[1.0, 0.0, -CENTRE[0]], [0.0, 1.0, -CENTRE[1]], [0.0, 0.0, 1.0]])
    tilt = np.eye(3)
    tilt[2, :2] = perspective
    similarity = np.vstack([cv2.getRotationMatrix2D(CENTRE, degrees, scale), [0.0, 0.0, 1.0]])
    similarity[:2, 2] += shift
    return similarity @ np.linalg.inv(centre) @ tilt @ centre


def thermal_seen_through(thermal: np.ndarray, homography: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A thermal camera of `size` (width, height) whose pixel x sees what the sample's (registered) thermal image
    shows at RGB pixel homography(x)."""
    return cv2.warpPerspective(thermal, homography, size, flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)


# Recovered in process, each from the three sample pairs warped by it.
CASES = {
    "scale 0.8": known(scale=0.8, shift=(10.0, 0.0)),
    "scale 1.25": known(scale=1.25, shift=(0.0, 12.0)),
    "rotation 5 degrees": known(degrees=5.0, shift=(-20.0, 0.0)),
    "mild perspective": known(scale=1.05, perspective=(1.5e-4, -1.0e-4), shift=(15.0, 0.0)),
}
# Recovered by the CLI from a bag: the largest shift (10 % of the width) with everything else at once.
ALL_AT_ONCE = known(scale=0.9, degrees=-4.0, shift=(-64.0, -40.0), perspective=(-1.0e-4, 0.0))
# Recovered by the CLI from folders: a 320x240 thermal camera, twice as coarse, turned, scaled and shifted.
HALF = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])  # 320x240 pixels -> 640x480 pixels
LOW_RESOLUTION = known(scale=1.1, degrees=2.0, shift=(30.0, -10.0)) @ HALF


@dataclass
class CliRun:
    code: int
    out: str
    err: str
    dir: Path


@dataclass
class Calibrations:
    reference: CalibrationResult  # the unwarped sample pairs
    cases: dict[str, CalibrationResult]
    folders: CliRun  # LOW_RESOLUTION
    bag: CliRun  # ALL_AT_ONCE


def _run_cli(argv: list[str], out: Path) -> CliRun:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main([*argv, "--out", str(out)])
    return CliRun(code, stdout.getvalue(), stderr.getvalue(), out)


def _cli_folders(root: Path, samples) -> CliRun:
    for stem, thermal, rgb in samples:
        blurred = cv2.GaussianBlur(thermal, (0, 0), 1.0)
        for folder, image in (("ir", thermal_seen_through(blurred, LOW_RESOLUTION, (320, 240))),
                              ("vi", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))):
            (root / folder).mkdir(exist_ok=True)
            cv2.imwrite(str(root / folder / f"{stem}.png"), image)
    return _run_cli(["calibrate", "--ir", str(root / "ir"), "--vi", str(root / "vi")], root / "out")


def _cli_bag(root: Path, samples) -> CliRun:
    pairs = [(rgb, thermal_seen_through(thermal, ALL_AT_ONCE, (640, 480))) for _, thermal, rgb in samples]
    bags.write_pairs_bag(root / "bag", pairs, labels_topic=None, rate_hz=5.0, thermal_offset_s=0.02,
                         jitter_s=0.005)
    return _run_cli(["calibrate", str(root / "bag"), "--thermal-offset-s", "-0.02"], root / "out")


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [(stem, *_sample(stem)) for stem in STEMS]


@pytest.fixture(scope="module")
def calibrations(samples, tmp_path_factory) -> Calibrations:
    """Every automatic calibration of the module, each run once."""
    jobs = {"reference": [ImagePair(stem, thermal, rgb) for stem, thermal, rgb in samples]}
    for name, truth in CASES.items():
        jobs[name] = [ImagePair(stem, thermal_seen_through(thermal, truth, (640, 480)), rgb)
                      for stem, thermal, rgb in samples]
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        futures = {name: pool.submit(calibrate, pairs) for name, pairs in jobs.items()}
        folders = _cli_folders(tmp_path_factory.mktemp("folders"), samples)
        bag = _cli_bag(tmp_path_factory.mktemp("bag"), samples)
        results = {name: future.result() for name, future in futures.items()}
    reference = results.pop("reference")
    return Calibrations(reference, results, folders, bag)


@pytest.fixture(scope="module")
def own_registration(calibrations) -> np.ndarray:
    """The sample pairs' own registration as the method measures it. MSRS pairs are registered to a few pixels
    only (the method puts them about 3 px from the identity, and single pairs disagree by as much), so a known
    homography is recovered on top of this: the test checks the known part, not the dataset's registration."""
    result = calibrations.reference
    assert result.ok, result.reason
    # The reference must itself be a plausible registration of the (nearly registered) pairs, so that a method
    # that drifts cannot pass by drifting the same way on the warped pairs.
    offset = grid_error(result.homography, np.eye(3), result.thermal_size)
    print(f"sample pairs' own registration: {offset:.2f} px from the identity")
    assert offset <= OWN_REGISTRATION_MAX_PX
    return result.homography


@pytest.mark.parametrize("name", list(CASES))
def test_known_homographies_are_recovered(name, calibrations, own_registration):
    truth = CASES[name]
    result = calibrations.cases[name]
    assert result.ok, result.reason
    assert result.score_after > result.score_before
    error = grid_error(result.homography, own_registration @ truth, result.thermal_size)
    print(f"{name}: mean grid error {error:.2f} px (vs the dataset's identity registration: "
          f"{grid_error(result.homography, truth, result.thermal_size):.2f} px)")
    assert error <= MAX_ERROR_PX


def test_cli_folder_mode_with_a_lower_resolution_thermal_camera(calibrations):
    run = calibrations.folders
    assert run.code == 0, run.err
    assert "thermal 320x240 -> RGB 640x480" in run.out
    report = json.loads((run.dir / "report.json").read_text())
    assert report["ok"] and report["thermal_size"] == [320, 240] and report["rgb_size"] == [640, 480]
    assert report["score"]["after"] > report["score"]["before"]
    assert sorted(report["files"]) == ["overlay.png", "registration.yaml", "report.json"]
    homography = np.array(read_homography_file(run.dir / "registration.yaml")).reshape(3, 3)
    assert np.allclose(homography.ravel(), report["homography"])
    overlay = cv2.imread(str(run.dir / "overlay.png"))
    assert overlay is not None and overlay.shape[0] > 100


def test_a_lower_resolution_thermal_camera_is_recovered(calibrations, own_registration):
    homography = np.array(read_homography_file(calibrations.folders.dir / "registration.yaml")).reshape(3, 3)
    # Both homographies map the 320x240 thermal grid into the 640x480 RGB image, so the error is in RGB pixels,
    # where the node fuses (one thermal pixel spans two of them).
    error = grid_error(homography, own_registration @ LOW_RESOLUTION, (320, 240))
    print(f"320x240 thermal: mean grid error {error:.2f} RGB px")
    assert error <= MAX_ERROR_PX


def test_cli_bag_mode_uses_the_nodes_pairing(calibrations, samples, own_registration):
    run = calibrations.bag
    assert run.code == 0, run.err
    report = json.loads((run.dir / "report.json").read_text())
    assert len(report["pairs"]) == len(samples) and all(entry["used"] for entry in report["pairs"])
    assert report["score"]["after"] > report["score"]["before"]
    homography = np.array(read_homography_file(run.dir / "registration.yaml")).reshape(3, 3)
    error = grid_error(homography, own_registration @ ALL_AT_ONCE, (640, 480))
    print(f"bag mode, all at once: mean grid error {error:.2f} px")
    assert error <= MAX_ERROR_PX


def test_noise_image_fails_with_a_reason(tmp_path, capsys, samples):
    # Small images: the verdict does not depend on the size, the runtime does.
    _, _, rgb = samples[0]
    rgb = cv2.resize(rgb, (160, 120), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    (tmp_path / "ir.png").write_bytes(cv2.imencode(".png", noise)[1].tobytes())
    cv2.imwrite(str(tmp_path / "vi.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    argv = ["calibrate", "--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png"), "--out", str(out)]
    assert cli.main(argv) == 1
    assert "calibration failed: no common structure found" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] is False and report["homography"] is None and "no common structure" in report["reason"]
    assert not (out / "registration.yaml").exists()
    assert (out / "overlay.png").exists()  # to see why


# ---------------------------------------------------------------------------------------------------------
# Manual points


def _squared_error(homography: np.ndarray, thermal_points: np.ndarray, rgb_points: np.ndarray) -> float:
    return float(((map_points(homography, thermal_points) - rgb_points) ** 2).sum())


def test_noisy_points_give_the_least_squares_homography():
    rng = np.random.default_rng(1)
    truth = known(scale=1.1, degrees=3.0, shift=(20.0, -15.0), perspective=(1e-4, 5e-5))
    thermal_points = rng.uniform((20, 20), (620, 460), size=(30, 2))
    rgb_points = map_points(truth, thermal_points) + rng.normal(0.0, 1.0, size=(30, 2))
    fit = homography_from_points(thermal_points, rgb_points)
    best = _squared_error(fit.homography, thermal_points, rgb_points)
    assert best < _squared_error(truth, thermal_points, rgb_points)
    # A minimum of the summed squared reprojection error: any small change of any entry makes it larger.
    for index in range(8):
        for step in (-1e-3, 1e-3):
            changed = fit.homography.copy()
            changed.flat[index] += step * max(abs(changed.flat[index]), 1e-4)
            assert _squared_error(changed, thermal_points, rgb_points) > best
    assert grid_error(fit.homography, truth, (640, 480)) < 1.0
    summary = fit.summary()
    assert summary["count"] == summary["inliers"] == 30 and 0.5 < summary["rms_px"] < 1.5

    exact = homography_from_points(thermal_points[:4], map_points(truth, thermal_points[:4]))
    assert grid_error(exact.homography, truth, (640, 480)) < 1e-3


def test_ransac_drops_a_wrong_point():
    truth = known(scale=0.9, shift=(5.0, 5.0))
    thermal_points = np.array([[x, y] for x in (50, 200, 400, 600) for y in (50, 250, 450)], dtype=np.float64)
    rgb_points = map_points(truth, thermal_points)
    rgb_points[3] += (40.0, -30.0)  # a mis-clicked point
    assert grid_error(homography_from_points(thermal_points, rgb_points).homography, truth, (640, 480)) > 2.0
    fit = homography_from_points(thermal_points, rgb_points, ransac_px=3.0)
    assert not fit.inliers[3] and fit.inliers.sum() == 11
    assert grid_error(fit.homography, truth, (640, 480)) < 1e-3


def test_points_file_and_cli_manual_mode(tmp_path, samples):
    truth = known(scale=1.1, degrees=2.0, shift=(12.0, -8.0))
    thermal_points = np.array([[x, y] for x in (40, 320, 600) for y in (40, 240, 440)], dtype=np.float64)
    rgb_points = map_points(truth, thermal_points)
    lines = ["# thermal_x thermal_y rgb_x rgb_y"] + [f"{a:.3f}, {b:.3f}  {c:.3f} {d:.3f}  # point"
                                                     for (a, b), (c, d) in zip(thermal_points, rgb_points)]
    points = tmp_path / "points.txt"
    points.write_text("\n".join(lines) + "\n")
    got_thermal, got_rgb = read_points(points)
    assert np.allclose(got_thermal, thermal_points) and np.allclose(got_rgb, rgb_points, atol=1e-3)

    stem, thermal, rgb = samples[0]
    cv2.imwrite(str(tmp_path / "ir.png"), thermal_seen_through(thermal, truth, (640, 480)))
    cv2.imwrite(str(tmp_path / "vi.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    argv = ["calibrate", "--ir", str(tmp_path / "ir.png"), "--vi", str(tmp_path / "vi.png"), "--points", str(points)]
    assert cli.main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["mode"] == "manual" and report["points"]["max_px"] < 0.01
    assert grid_error(np.array(report["homography"]).reshape(3, 3), truth, (640, 480)) < 0.01

    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 4\n1 2 3\n")
    with pytest.raises(CalibrationInputError, match="line 2"):
        read_points(bad)
    bad.write_text("1 2 3 4\n5 6 7 8\n")
    with pytest.raises(CalibrationInputError, match="at least 4"):
        read_points(bad)
    assert cli.main([*argv[:5], "--out", str(tmp_path / "x"), "--refine"]) == 2  # --refine without --points


# ---------------------------------------------------------------------------------------------------------
# registration.yaml: the node and replay take it as is


def test_registration_yaml_is_a_params_file_of_doubles(tmp_path):
    homography = known(scale=1.1, degrees=2.0, shift=(12.0, -8.0), perspective=(1e-5, -2e-6))
    path = tmp_path / "registration.yaml"
    path.write_text(registration_params_yaml(homography, "a comment"))
    values = read_homography_file(path)
    assert np.allclose(values, (homography / homography[2, 2]).ravel(), rtol=1e-15, atol=0)
    text = path.read_text()
    assert text.startswith("# a comment\n/**:\n  ros__parameters:\n    registration:\n      homography: [")
    assert not re.search(r"(?<![\d.])\d+e", text)  # "1e-05": YAML 1.1 would read a string

    path.write_text("/**:\n  ros__parameters:\n    registration:\n      homography: [1, 0, 0, 0, 1, 0, 0, 0, 1]\n")
    with pytest.raises(ValueError, match="doubles"):
        read_homography_file(path)
    path.write_text("/**:\n  ros__parameters:\n    sync:\n      slop_s: 0.05\n")
    with pytest.raises(ValueError, match="no registration.homography"):
        read_homography_file(path)
    path.write_text("mafs:\n  ros__parameters:\n    registration.homography: [2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0]\n")
    assert read_homography_file(path) == [2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0]


def test_the_node_takes_registration_yaml_with_params_file(tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context

    from mafs_ros.ros.bench_node import StandInEngine
    from mafs_ros.ros.node import MafsNode

    homography = known(scale=1.1, degrees=2.0, shift=(12.0, -8.0), perspective=(1e-5, -2e-6))
    path = tmp_path / "registration.yaml"
    path.write_text(registration_params_yaml(homography, "written by the test"))
    context = Context()
    rclpy.init(context=context)
    try:
        node = MafsNode(engine=StandInEngine(480, 640), context=context,
                        cli_args=["--ros-args", "--params-file", str(path)])
        try:
            value = node.get_parameter("registration.homography").value
            assert np.allclose(value, (homography / homography[2, 2]).ravel(), rtol=1e-15, atol=0)
            assert np.allclose(node._settings.homography, homography / homography[2, 2])
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_replay_reads_the_homography_file(tmp_path, monkeypatch, capsys):
    from bag_helpers import small_pairs
    from stand_in_net import KnownNet

    from mafs_ros.engine import MafsEngine

    engine = MafsEngine(model=KnownNet(fused="mean"), device="cpu")
    monkeypatch.setattr(engine_options, "engine_from_args", lambda args: engine)
    bags.write_pairs_bag(tmp_path / "bag", small_pairs()[:2], labels_topic=None)
    homography = known(scale=1.02, shift=(1.5, -1.0))
    (tmp_path / "registration.yaml").write_text(registration_params_yaml(homography))
    argv = ["replay", str(tmp_path / "bag"), "--contact-sheet", "0", "--homography-file",
            str(tmp_path / "registration.yaml")]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert np.allclose(report["registration"]["homography"], (homography / homography[2, 2]).ravel())

    capsys.readouterr()
    assert cli.main([*argv, "--out", str(tmp_path / "both"), "--homography", "2", "0", "0", "0", "2", "0", "0", "0",
                     "1"]) == 2
    assert "either --homography or --homography-file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("/**:\n  ros__parameters: {}\n")
    assert cli.main([*argv[:-1], str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert "no registration.homography" in capsys.readouterr().err


def test_bag_mode_reads_compressed_cameras(tmp_path, samples):
    """A bag recorded as robots do (image_transport's compressed topics) gives the pairs of its raw twin: thermal
    exactly (PNG), RGB within JPEG's error."""
    from mafs_ros.calibrate import pairs_from_bag

    pairs = [(rgb, thermal) for _, thermal, rgb in samples[:2]]
    bags.write_pairs_bag(tmp_path / "raw", pairs, labels_topic=None)
    bags.write_pairs_bag(tmp_path / "compressed", pairs, labels_topic=None, rgb_compression="jpeg",
                         thermal_compression="png")
    raw = pairs_from_bag(tmp_path / "raw", "/rgb/image", "/thermal/image")
    compressed = pairs_from_bag(tmp_path / "compressed", "/rgb/image", "/thermal/image")
    assert [p.name for p in compressed] == [p.name for p in raw] and len(raw) == 2
    for a, b in zip(raw, compressed):
        np.testing.assert_array_equal(a.thermal, b.thermal)
        assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() < 3
