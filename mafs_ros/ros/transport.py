"""The Fast DDS large-image profile (config/fastdds_large_images.xml): where it is and when to use it.

Pure Python (no rclpy): the environment must be set before the process's first DDS participant exists, i.e.
before rclpy.init() in the node and before the demo starts its player and node.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, MutableMapping

PROFILE_FILE = "fastdds_large_images.xml"
# Fast DDS 3 (Kilted and later) reads the first, Fast DDS 2 (Humble, Jazzy) the second. Only the one the
# distribution reads is set: Fast DDS 3 warns at every start that the second is deprecated.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")
TRANSPORT_VARIABLE = "FASTDDS_BUILTIN_TRANSPORTS"
# Profile files Fast DDS loads from the working directory by itself.
WORKING_DIRECTORY_PROFILES = ("DEFAULT_FASTDDS_PROFILES.xml", "DEFAULT_FASTRTPS_PROFILES.xml")
# MAFS_FASTDDS_PROFILE=off leaves Fast DDS's settings alone altogether.
SWITCH_VARIABLE = "MAFS_FASTDDS_PROFILE"


def large_image_profile_path() -> Path:
    """The profile file: in the source checkout / editable install, else in the installed share/mafs_ros/config.
    Raises FileNotFoundError naming the places looked at."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / PROFILE_FILE]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("mafs_ros")) / "config" / PROFILE_FILE)
    except (ImportError, LookupError, OSError):  # no ament index, or mafs_ros not in it (pip install, checkout)
        pass
    candidates.append(Path(sys.prefix) / "share" / "mafs_ros" / "config" / PROFILE_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{PROFILE_FILE} not found in {', '.join(str(p.parent) for p in candidates)}")


def user_transport_choice(environ: Mapping[str, str], cwd: Path | None = None) -> str | None:
    """What the user chose for Fast DDS's transports already (a readable reason), or None if nothing."""
    if environ.get(SWITCH_VARIABLE, "").strip().lower() in ("off", "0", "false", "no"):
        return f"{SWITCH_VARIABLE}={environ[SWITCH_VARIABLE]}"
    rmw = environ.get("RMW_IMPLEMENTATION", "")
    if rmw and rmw != "rmw_fastrtps_cpp":
        return f"RMW_IMPLEMENTATION={rmw}"
    for name in (*PROFILE_VARIABLES, TRANSPORT_VARIABLE):
        if environ.get(name):
            return f"{name}={environ[name]}"
    for name in WORKING_DIRECTORY_PROFILES:
        if ((cwd or Path.cwd()) / name).is_file():
            return f"{name} in the working directory"
    return None


def profile_variable(environ: Mapping[str, str]) -> str:
    """The variable this ROS distribution's Fast DDS reads its profile file from (ROS_DISTRO; unset: Kilted or
    later, as the PyPI wheels)."""
    old = environ.get("ROS_DISTRO", "").strip().lower() in FAST_DDS_2_DISTROS
    return PROFILE_VARIABLES[1] if old else PROFILE_VARIABLES[0]


def large_image_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that select the large-image profile, or {} where the user chose transports already or the
    file is missing."""
    if user_transport_choice(environ) is not None:
        return {}
    try:
        path = str(large_image_profile_path())
    except FileNotFoundError:
        return {}
    return {profile_variable(environ): path}


def use_large_image_profile(environ: MutableMapping[str, str] | None = None) -> str:
    """Selects the profile in `environ` (default: os.environ) unless the user chose otherwise; returns a line for
    the log saying which transport settings this process uses."""
    environ = os.environ if environ is None else environ
    choice = user_transport_choice(environ)
    if choice is not None:
        return f"Fast DDS transports as set by the user ({choice})"
    try:
        path = large_image_profile_path()
    except FileNotFoundError as exc:
        return f"Fast DDS default transports: {exc} (large images may be lost; see the README's transport section)"
    environ[profile_variable(environ)] = str(path)
    return f"Fast DDS profile {path} (shared memory for large images)"
