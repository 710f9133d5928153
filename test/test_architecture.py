"""The package's shape, as docs/ARCHITECTURE.md describes it: imports flow one way (no import cycle among mafs_ros
modules, counting imports inside functions), the base layer and the command line load without torch, and no
module or function grows past the size a reader can hold.

The import graph is read with `ast` from the sources, so an import that only runs on some path (inside a
function, under TYPE_CHECKING) counts like any other.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "mafs_ros"
SCRIPTS = REPO / "scripts"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# The layers of docs/ARCHITECTURE.md, lowest first, by module or package: a module may import modules of its own
# layer and of the layers below, never above. The package's own __init__ counts as base; a new module must be
# placed here (a module in no layer fails the test).
LAYERS: dict[str, tuple[str, ...]] = {
    "base": (
        "mafs_ros", "mafs_ros.constants", "mafs_ros.errors", "mafs_ros.stamps", "mafs_ros.stats",
        "mafs_ros.class_sets", "mafs_ros.metrics", "mafs_ros.io", "mafs_ros.reports", "mafs_ros.bags",
        "mafs_ros.stream", "mafs_ros.ros", "mafs_ros.ros.transport", "mafs_ros.ros.worker",
    ),
    "core": ("mafs_ros.imaging", "mafs_ros.model", "mafs_ros.checkpoint", "mafs_ros.backends", "mafs_ros.engine"),
    "workflows": (
        "mafs_ros.train", "mafs_ros.evaluate", "mafs_ros.export", "mafs_ros.bench", "mafs_ros.calibrate",
        "mafs_ros.edge_alignment", "mafs_ros.replay", "mafs_ros.demo", "mafs_ros.ros.node",
        "mafs_ros.ros.parameters", "mafs_ros.ros.lifecycle", "mafs_ros.ros.outputs", "mafs_ros.ros.diagnostics",
        "mafs_ros.ros.bench_node", "mafs_ros.ros.in_process",
    ),
    "shells": ("mafs_ros.cli", "mafs_ros.__main__", "mafs_ros.train.__main__"),
}
# Also without torch, each in a fresh interpreter: the command line, which imports the rest only when a command
# runs (so `mafs --help` and `mafs replay BAG --list` start fast).
TORCH_FREE_SHELLS = ("mafs_ros.cli",)


# ---------------------------------------------------------------------------------------------------------
# The import graph


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of mafs_ros by dotted name (packages by their __init__.py)."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in path.parts}


def imported_names(path: Path, name: str) -> Iterator[str]:
    """The absolute dotted names a module imports anywhere in its source (relative imports resolved): for
    `from X import y`, X.y, which is a module or a name in X."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            yield from (f"{source}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """module -> the mafs_ros modules it imports. A dotted name resolves to its longest prefix that is a module
    (`from .a import f` -> a; `from . import b` -> the module b), so a package's __init__ counts only where it
    is named itself."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(path, name):
            parts = imported.split(".")
            prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
            target = next((prefix for prefix in prefixes if prefix in modules), None)
            if target is not None and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per strongly connected component of more
    than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(component)) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first within the component)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_the_graph_reader_resolves_relative_and_function_level_imports():
    graph = import_graph()
    # `from ..constants import ...` in a subpackage, and `from .engine import MafsEngine` inside a function.
    assert "mafs_ros.constants" in graph["mafs_ros.cli.replay"]
    assert "mafs_ros.engine" in graph["mafs_ros.cli.engine_options"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_mafs_ros_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def layer_of(module: str) -> str | None:
    """The layer of the most specific LAYERS entry naming `module` or a package above it (the package root
    `mafs_ros` only names itself)."""
    best = None
    for layer, entries in LAYERS.items():
        for entry in entries:
            matches = module == entry or (entry != "mafs_ros" and module.startswith(entry + "."))
            if matches and (best is None or len(entry) > len(best[1])):
                best = (layer, entry)
    return None if best is None else best[0]


def test_every_module_is_in_a_layer_and_imports_only_its_own_layer_and_below():
    rank = {layer: index for index, layer in enumerate(LAYERS)}
    graph = import_graph()
    unplaced = sorted(name for name in graph if layer_of(name) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/ARCHITECTURE.md): {unplaced}"
    upward = sorted(f"{name} ({layer_of(name)}) -> {target} ({layer_of(target)})" for name, targets in graph.items()
                    for target in targets if rank[layer_of(target)] > rank[layer_of(name)])
    assert not upward, "imports that point up:\n" + "\n".join(upward)


# ---------------------------------------------------------------------------------------------------------
# What loads torch


def imports_torch(*python_args: str, package: str = "torch") -> tuple[bool, subprocess.CompletedProcess]:
    """Run `python -X importtime *python_args` in a fresh interpreter; whether it imported `package` (or any of
    its submodules), judged from the import-time log on stderr, and the finished process."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.run([sys.executable, "-X", "importtime", *python_args], capture_output=True, text=True,
                             cwd=REPO, env=environment, timeout=120)
    imported = [line.rsplit("|", 1)[-1].strip() for line in process.stderr.splitlines()
                if line.startswith("import time:")]
    return any(name == package or name.startswith(package + ".") for name in imported), process


def test_the_torch_check_sees_torch():
    loaded, process = imports_torch("-c", "import mafs_ros.imaging")
    assert process.returncode == 0, process.stderr[-2000:]
    assert loaded


def torch_free_modules() -> list[str]:
    """The base layer's modules and the torch-free shells."""
    return sorted(name for name in package_modules() if layer_of(name) == "base") + list(TORCH_FREE_SHELLS)


def test_the_bag_reader_metrics_io_conversion_and_pairing_modules_are_checked_for_torch():
    named = {"mafs_ros.cli", "mafs_ros.bags.reader", "mafs_ros.metrics", "mafs_ros.io", "mafs_ros.io.images",
             "mafs_ros.stream.conversions", "mafs_ros.stream.pairing", "mafs_ros.stream.registration",
             "mafs_ros.class_sets"}
    assert named <= set(torch_free_modules())


@pytest.mark.parametrize("module", sorted(name for name in package_modules() if name.startswith("mafs_ros.stream")))
def test_the_stream_logic_runs_without_ros_and_torch(module):
    """mafs_ros.stream holds what the node, replay and calibrate share about image streams (conversions,
    pairing, registration, frames, results): none of it may need rclpy (replay and calibrate run without ROS)."""
    loaded, process = imports_torch("-c", f"import {module}", package="rclpy")
    assert process.returncode == 0, process.stderr[-2000:]
    assert not loaded, f"importing {module} imports rclpy"


@pytest.mark.parametrize("module", torch_free_modules())
def test_module_imports_without_torch(module):
    loaded, process = imports_torch("-c", f"import {module}")
    assert process.returncode == 0, process.stderr[-2000:]
    assert not loaded, f"importing {module} imports torch"


def test_mafs_help_does_not_import_torch():
    loaded, process = imports_torch("-m", "mafs_ros", "--help")
    assert process.returncode == 0, process.stderr[-2000:]
    assert "replay" in process.stdout and not loaded


def test_mafs_replay_list_does_not_import_torch(tiny_bag):
    loaded, process = imports_torch("-m", "mafs_ros", "replay", str(tiny_bag), "--list")
    assert process.returncode == 0, process.stderr[-2000:]
    assert "/rgb/image" in process.stdout and not loaded


# ---------------------------------------------------------------------------------------------------------
# Sizes


def test_no_module_is_too_long():
    long = {name: n for name, path in package_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = {}
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name} (line {node.lineno})"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


# ---------------------------------------------------------------------------------------------------------
# Scripts are tools of the product, not of its tests


def test_scripts_import_nothing_from_test():
    test_modules = {path.stem for path in (REPO / "test").glob("*.py")}
    for path in sorted(SCRIPTS.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        path_edits = [line for line in source.splitlines() if "sys.path" in line and "test" in line]
        assert not path_edits, f"{path.name} puts test/ on the import path: {path_edits}"
        imported = {name.split(".")[0] for name in imported_names(path, module_name(path))}
        assert not imported & test_modules, f"{path.name} imports {sorted(imported & test_modules)} from test/"


# ---------------------------------------------------------------------------------------------------------
# Documentation cites only what the repository holds


def test_no_file_cites_the_out_of_repo_design_document():
    """Comments, docstrings, configs and docs cite docs/MODEL.md, never the design notes outside the repository
    (the strings are built in pieces so that this file does not match itself)."""
    forbidden = ("spec " + "\u00a7", "MAFS" + "_SPEC", "../shared/" + "design")
    files = [REPO / "README.md"]
    for folder in ("mafs_ros", "config", "scripts", "test", "docs"):
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.suffix in (".py", ".yaml", ".md") and p.is_file()]
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            hits += [f"{path.relative_to(REPO)}:{number}: {line.strip()}" for s in forbidden if s in line]
    assert not hits, "citations of a document outside the repository:\n" + "\n".join(hits)
