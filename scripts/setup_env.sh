#!/usr/bin/env bash
# Create / update the development environment of mafs_ros (called by `make setup`):
#   1. .venv            python3 -m venv (Python 3.11: the ROS 2 Kilted wheels on PyPI are cp311)
#   2. requirements.txt exact pins: torch (CPU), numpy, ..., the ROS 2 wheels (rclpy, Fast DDS, rosidl, ament)
#   3. pip install -e . --no-deps   the repository's mafs_ros package, editable
#   4. msg/ -> mafs_ros.msg         plain cmake (build/ -> install/), MAFS_INSTALL_PYTHON_SOURCES=OFF
#   5. <venv site-packages>/mafs_ros_msgs.pth   puts install/lib/pythonX.Y/site-packages on sys.path,
#      after the editable install's __editable__*.pth, so the repository sources come first and
#      `mafs_ros.msg` is merged in by pkgutil.extend_path (mafs_ros/__init__.py); it also adds install/lib
#      to LD_LIBRARY_PATH before the ROS wheels' bootstrapper re-executes the interpreter (rosidl dlopen()s
#      the generated typesupport libraries by name).
#   6. a check: rclpy (default rmw = Fast DDS), mafs_ros from the repository, mafs_ros.msg usable.
# Afterwards, with no sourcing and no exported variables:
#   .venv/bin/python -c "import rclpy, mafs_ros.msg, mafs_ros.model";  .venv/bin/mafs --help
#
# Idempotent: every step is keyed on a hash of its inputs (stamp files) and skipped when nothing changed,
# so a second run takes about a second. Exits non-zero with a message naming the failed step.
#
# Environment (all optional): MAFS_PYTHON (interpreter used to create the venv; default python3.11 if found,
# else python3), MAFS_SETUP_FORCE=1 (redo every step), MAFS_JOBS (parallel build jobs).

set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

VENV="$ROOT/.venv"
BUILD_DIR="$ROOT/build"
INSTALL_DIR="$ROOT/install"
STAMP_DIR="$VENV/.mafs_setup"          # stamps of steps 1-3 live and die with the venv
MSG_STAMP="$INSTALL_DIR/.mafs_msgs.stamp"  # stamp of step 4 lives and dies with the install tree
PTH_NAME="mafs_ros_msgs.pth"            # must sort after setuptools' __editable__*.pth ('m' > '_')
FORCE="${MAFS_SETUP_FORCE:-0}"
JOBS="${MAFS_JOBS:-$(nproc 2>/dev/null || echo 2)}"

STEP="start"
log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
on_error() {
  local rc=$?
  printf '[setup] ERROR: step "%s" failed (exit code %s); see the output above.\n' "$STEP" "$rc" >&2
  exit "$rc"
}
trap on_error ERR

hash_files() {  # hash of the names and contents of the given files (missing files hash as absent)
  local f
  for f in "$@"; do
    printf '%s\n' "$f"
    if [[ -f "$f" ]]; then sha256sum < "$f"; else echo absent; fi
  done | sha256sum | cut -d' ' -f1
}
stamp_ok() { [[ "$FORCE" != 1 && -f "$1" && "$(cat "$1")" == "$2" ]]; }
have() {  # true if any of the given commands is on PATH
  local c
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 && return 0; done
  return 1
}

# One setup at a time per checkout (make -j, parallel test runs).
if command -v flock >/dev/null 2>&1; then
  LOCK_FILE="${TMPDIR:-/tmp}/mafs_ros_setup_$(printf '%s' "$ROOT" | sha256sum | cut -c1-16).lock"
  exec 9>"$LOCK_FILE"
  flock 9
fi

t_start=$(date +%s.%N)
changed=0

# ---------------------------------------------------------------------------------------------------------
# 1. venv
# ---------------------------------------------------------------------------------------------------------
STEP="create the virtualenv $VENV"
if [[ -z "${MAFS_PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then MAFS_PYTHON=python3.11; else MAFS_PYTHON=python3; fi
fi
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -S -c 'pass' >/dev/null 2>&1; then
  command -v "$MAFS_PYTHON" >/dev/null 2>&1 || die "no Python interpreter '$MAFS_PYTHON' (set MAFS_PYTHON)"
  "$MAFS_PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)' \
    || die "$MAFS_PYTHON is older than Python 3.10"
  log "creating $VENV with $("$MAFS_PYTHON" --version 2>&1)"
  rm -rf "$VENV"
  "$MAFS_PYTHON" -m venv "$VENV"
  changed=1
fi
mkdir -p "$STAMP_DIR"
PY="$VENV/bin/python"
# -S: no site import, so this is cheap (the ROS wheels' .pth re-executes the interpreter on every start).
PYVER="$("$PY" -S -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
SITE_PACKAGES="$VENV/lib/python$PYVER/site-packages"
[[ -d "$SITE_PACKAGES" ]] || die "venv site-packages not found: $SITE_PACKAGES"
[[ "$PYVER" == "3.11" ]] || log "WARNING: Python $PYVER; the pinned ROS 2 Kilted wheels are built for Python 3.11"

# ---------------------------------------------------------------------------------------------------------
# 2. pinned requirements
# ---------------------------------------------------------------------------------------------------------
STEP="pip install -r requirements.txt"
req_key="$(hash_files requirements.txt)|$PYVER"
if ! stamp_ok "$STAMP_DIR/requirements" "$req_key"; then
  log "installing requirements.txt into $VENV (pip; several minutes on a fresh venv)"
  rm -f "$STAMP_DIR/requirements"
  "$PY" -m pip install --disable-pip-version-check --no-input -r requirements.txt
  echo "$req_key" > "$STAMP_DIR/requirements"
  changed=1
fi

# ---------------------------------------------------------------------------------------------------------
# 3. editable install of the repository's package (console scripts mafs, mafs_node)
# ---------------------------------------------------------------------------------------------------------
STEP="pip install -e . --no-deps"
edit_key="$(hash_files setup.py setup.cfg pyproject.toml)|$ROOT"
if ! stamp_ok "$STAMP_DIR/editable" "$edit_key" \
    || ! compgen -G "$SITE_PACKAGES/__editable__*mafs_ros*.pth" >/dev/null \
    || [[ ! -x "$VENV/bin/mafs" || ! -x "$VENV/bin/mafs_node" ]]; then
  log "installing mafs_ros (editable) from $ROOT"
  rm -f "$STAMP_DIR/editable"
  # --no-build-isolation: use the pinned setuptools of the venv (offline, fast).
  "$PY" -m pip install --disable-pip-version-check --no-input --no-deps --no-build-isolation -e .
  changed=1
fi
editable_pth() { compgen -G "$SITE_PACKAGES/__editable__*mafs_ros*.pth" | head -n1 || true; }
# The editable install must put the repository itself on sys.path (a static .pth; setup.py's
# package_dir={'': '.'} makes setuptools choose that), so that the repository's mafs_ros/ is a normal
# sys.path package found before the install tree's mafs_ros/ folder. An import-hook editable install would
# lose against the install tree's folder. Fallback: setuptools' (deprecated) compat mode.
if [[ -z "$(editable_pth)" ]] || ! grep -qxF "$ROOT" "$(editable_pth)"; then
  log "editable install is not a static .pth on $ROOT; retrying with editable_mode=compat"
  "$PY" -m pip install --disable-pip-version-check --no-input --no-deps --no-build-isolation -e . \
    --config-settings editable_mode=compat
  changed=1
fi
editable_pth="$(editable_pth)"
[[ -n "$editable_pth" ]] || die "the editable install left no __editable__*mafs_ros*.pth in $SITE_PACKAGES"
grep -qxF "$ROOT" "$editable_pth" || die "$editable_pth does not put $ROOT on sys.path"
[[ -f "$STAMP_DIR/editable" ]] || echo "$edit_key" > "$STAMP_DIR/editable"

# ---------------------------------------------------------------------------------------------------------
# 4. messages: msg/ -> install/ (plain cmake, ament prefix = the venv)
# ---------------------------------------------------------------------------------------------------------
STEP="build the ROS messages (cmake, $BUILD_DIR -> $INSTALL_DIR)"
# Anything that changes the generated code or the paths baked into build/ and install/.
env_key="$ROOT|$PYVER|$(cat "$STAMP_DIR/requirements")"
src_key="$(hash_files CMakeLists.txt package.xml cmake/*.cmake msg/*.msg)"
PY_INSTALL_REL="lib/python$PYVER/site-packages"
ENV_STAMP="$BUILD_DIR/.mafs_env.stamp"
msg_ok=1
stamp_ok "$MSG_STAMP" "$env_key|$src_key" || msg_ok=0
[[ -f "$INSTALL_DIR/$PY_INSTALL_REL/mafs_ros/msg/__init__.py" ]] || msg_ok=0
if [[ "$msg_ok" == 0 ]]; then
  # project() in CMakeLists.txt needs a C and a C++ compiler besides cmake; name everything missing at once.
  missing=()
  have cmake || missing+=("cmake")
  have cc gcc clang || missing+=("a C compiler")
  have c++ g++ clang++ || missing+=("a C++ compiler")
  if (( ${#missing[@]} )); then
    missing_list="$(printf '%s, ' "${missing[@]}")"
    die "building the ROS messages needs cmake and a C/C++ compiler; not found: ${missing_list%, }. Install them" \
        "(Debian/Ubuntu: sudo apt-get install cmake g++), then run make setup again"
  fi
  if ! stamp_ok "$ENV_STAMP" "$env_key"; then
    # New environment (or first build): start from scratch, the CMake cache holds absolute venv paths.
    rm -rf "$BUILD_DIR" "$INSTALL_DIR"
  fi
  rm -f "$MSG_STAMP"
  log "building the messages (msg/*.msg) into $INSTALL_DIR"
  # Only for the cmake processes: the ament prefix is the venv.
  export CMAKE_PREFIX_PATH="$VENV"
  export AMENT_PREFIX_PATH="$VENV"
  mkdir -p "$BUILD_DIR"
  cmake -S "$ROOT" -B "$BUILD_DIR" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$INSTALL_DIR" \
    -DPython3_EXECUTABLE="$PY" \
    -DPYTHON_INSTALL_DIR="$PY_INSTALL_REL" \
    -DMAFS_INSTALL_PYTHON_SOURCES=OFF \
    -DMAFS_PYPI_ROS=ON \
    -DBUILD_TESTING=OFF \
    > "$BUILD_DIR/configure.log" 2>&1 \
    || { tail -n 60 "$BUILD_DIR/configure.log" >&2; die "cmake configure failed (last lines above, full log: $BUILD_DIR/configure.log)"; }
  echo "$env_key" > "$ENV_STAMP"
  cmake --build "$BUILD_DIR" -j "$JOBS" > "$BUILD_DIR/build.log" 2>&1 \
    || { tail -n 60 "$BUILD_DIR/build.log" >&2; die "message build failed (last lines above, full log: $BUILD_DIR/build.log)"; }
  cmake --install "$BUILD_DIR" > "$BUILD_DIR/install.log" 2>&1 \
    || { tail -n 40 "$BUILD_DIR/install.log" >&2; die "message install failed (log: $BUILD_DIR/install.log)"; }
  unset CMAKE_PREFIX_PATH AMENT_PREFIX_PATH
  changed=1
fi
MSG_SITE="$INSTALL_DIR/$PY_INSTALL_REL"
[[ -f "$MSG_SITE/mafs_ros/msg/__init__.py" ]] || die "no generated mafs_ros/msg in $MSG_SITE"
# The generated mafs_ros/__init__.py is empty: it must never shadow the repository's (the CMake install
# with MAFS_INSTALL_PYTHON_SOURCES=OFF already removes it; pkgutil.extend_path does not need it).
rm -f "$MSG_SITE/mafs_ros/__init__.py"
rm -rf "$MSG_SITE"/mafs_ros-*.egg-info

# ---------------------------------------------------------------------------------------------------------
# 5. .pth: install tree on sys.path (after the editable install) and install/lib on LD_LIBRARY_PATH
# ---------------------------------------------------------------------------------------------------------
# rosidl's typesupport dispatch (in the wheels' librosidl_typesupport_c / _cpp) dlopen()s
# libmafs_ros__rosidl_typesupport_*.so by bare name: only LD_LIBRARY_PATH (as read at process start) can
# make it find them, not our RUNPATHs. The ROS wheels' own ros_wheels_bootstrapper.pth re-executes the
# interpreter once with LD_LIBRARY_PATH extended by the venv's lib dirs, copying os.environ; our .pth sorts
# before it and adds install/lib to os.environ, so the re-executed interpreter has it from the start.
STEP="write $SITE_PACKAGES/$PTH_NAME"
[[ "$(basename "$editable_pth")" < "$PTH_NAME" ]] \
  || die "$PTH_NAME does not sort after $(basename "$editable_pth"); rename it"
if [[ -f "$SITE_PACKAGES/ros_wheels_bootstrapper.pth" ]]; then
  [[ "$PTH_NAME" < "ros_wheels_bootstrapper.pth" ]] || die "$PTH_NAME does not sort before ros_wheels_bootstrapper.pth"
fi
MSG_LIB="$INSTALL_DIR/lib"
pth_content="$MSG_SITE
import os; _p = '$MSG_LIB'; _v = os.environ.get('LD_LIBRARY_PATH', ''); _p in _v.split(os.pathsep) or os.environ.__setitem__('LD_LIBRARY_PATH', _p + (os.pathsep + _v if _v else ''))"
if [[ ! -f "$SITE_PACKAGES/$PTH_NAME" || "$(cat "$SITE_PACKAGES/$PTH_NAME")" != "$pth_content" ]]; then
  printf '%s\n' "$pth_content" > "$SITE_PACKAGES/$PTH_NAME"
  changed=1
fi
# MSG_STAMP is written only after the .pth, so an interrupted run redoes both.
[[ -f "$MSG_STAMP" ]] || echo "$env_key|$src_key" > "$MSG_STAMP"

# ---------------------------------------------------------------------------------------------------------
# 6. check (only after a change: importing rclpy costs ~0.5 s)
# ---------------------------------------------------------------------------------------------------------
STEP="check the environment"
CHECK_PY='
import os, sys
root = sys.argv[1]
import rclpy
from rclpy.utilities import get_rmw_implementation_identifier
import mafs_ros
import mafs_ros.msg
from mafs_ros.msg import FusedSegmentation, SegmentationInfo
from rclpy.serialization import deserialize_message, serialize_message
# Loads the generated typesupport libraries (dlopen by name through LD_LIBRARY_PATH).
assert deserialize_message(serialize_message(SegmentationInfo()), SegmentationInfo) == SegmentationInfo()
src = os.path.realpath(mafs_ros.__file__)
want = os.path.realpath(os.path.join(root, "mafs_ros", "__init__.py"))
assert src == want, f"mafs_ros resolves to {src}, expected the repository sources {want}"
assert hasattr(mafs_ros, "__version__"), "mafs_ros/__init__.py is the generated empty one"
rmw = get_rmw_implementation_identifier()
assert rmw == "rmw_fastrtps_cpp", f"default rmw is {rmw}"
print(f"[setup] ok: rclpy ({rmw}), mafs_ros {mafs_ros.__version__} from {os.path.dirname(src)}, "
      f"mafs_ros.msg from {os.path.dirname(mafs_ros.msg.__file__)}")
'
if [[ "$changed" == 1 || ! -f "$STAMP_DIR/checked" ]]; then
  rm -f "$STAMP_DIR/checked"
  # From / with a clean environment: proves it works without sourcing, exports or the cwd on sys.path.
  env -C / -u PYTHONPATH -u LD_LIBRARY_PATH -u AMENT_PREFIX_PATH -u RMW_IMPLEMENTATION \
    "$PY" -c "$CHECK_PY" "$ROOT"
  for s in mafs mafs_node; do
    [[ -x "$VENV/bin/$s" ]] || die "console script $VENV/bin/$s missing"
  done
  [[ -f "$ROOT/mafs_ros/cli/__init__.py" ]] || log "note: mafs_ros/cli/ does not exist yet: .venv/bin/mafs will fail until it does"
  touch "$STAMP_DIR/checked"
fi

t_end=$(date +%s.%N)
if [[ "$changed" == 1 ]]; then
  log "environment ready ($(awk "BEGIN { printf \"%.1f\", $t_end - $t_start }") s)"
else
  log "environment up to date"
fi
