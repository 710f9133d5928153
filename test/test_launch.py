"""The launch files and the rviz config agree with the node: topics, parameters, launch arguments, recordings.

Everywhere, launch/*.launch.py are read with `ast` (ROS `launch` need not be installed), so renaming a topic or
a parameter in the node, or an argument in one launch file, fails here. Where `launch` and `launch_ros` are
installed, the launch descriptions are also built and their OpaqueFunctions run (without starting processes).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from mafs_ros import bags, constants
from mafs_ros.cli import build_parser
from mafs_ros.constants import absolute_topic
from mafs_ros.ros.parameters import PARAMETERS

REPO = Path(__file__).resolve().parent.parent
LAUNCH_DIR = REPO / "launch"
MAFS_LAUNCH = "mafs.launch.py"
REPLAY_LAUNCH = "replay.launch.py"
LAUNCH_FILES = (MAFS_LAUNCH, REPLAY_LAUNCH)
RVIZ_CONFIG = REPO / "config" / "mafs.rviz"

NODE_TOPICS = set(constants.INPUT_TOPICS + constants.OUTPUT_TOPICS)
ARGUMENTS = {
    MAFS_LAUNCH: {
        "rgb_topic", "thermal_topic", "camera_info_topic", "params_file", "checkpoint", "device", "use_sim_time",
        "namespace", "rviz", "lifecycle", "autostart",
    },
    REPLAY_LAUNCH: {"bag", "rate", "loop", "delay", "record", "record_path"},
}
INPUT_ARGUMENTS = {
    constants.RGB_TOPIC: "rgb_topic",
    constants.THERMAL_TOPIC: "thermal_topic",
    constants.CAMERA_INFO_TOPIC: "camera_info_topic",
}
# What `mafs replay --from-recording` scores.
SCORED_OUTPUTS = {constants.FUSED_TOPIC, constants.LABELS_TOPIC, constants.RESULT_TOPIC}
RVIZ_TOPICS = {
    constants.FUSED_TOPIC, constants.OVERLAY_TOPIC, constants.LABELS_TOPIC,
    constants.THERMAL_TOPIC, constants.RGB_TOPIC,
}


# ---------------------------------------------------------------------------------------------------------
# Reading launch files with ast


def parse(name: str) -> ast.Module:
    return ast.parse((LAUNCH_DIR / name).read_text(encoding="utf-8"), filename=name)


def calls(tree: ast.AST, function: str) -> list[ast.Call]:
    """Calls of `function`, plain (`f(...)`) or as an attribute (`m.f(...)`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == function) or (
                isinstance(func, ast.Attribute) and func.attr == function
            ):
                found.append(node)
    return found


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def constant_str(tree: ast.Module, expr: ast.expr | None) -> str:
    """A string literal, or a module-level NAME = 'literal' constant."""
    if isinstance(expr, ast.Name):
        expr = next(
            (node.value for node in tree.body if isinstance(node, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == expr.id for t in node.targets)),
            None,
        )
    assert isinstance(expr, ast.Constant) and isinstance(expr.value, str), f"not a string literal: {expr!r}"
    return expr.value


def first_argument(tree: ast.Module, call: ast.Call) -> str:
    return constant_str(tree, call.args[0] if call.args else keyword(call, "name"))


def launch_configurations(tree: ast.Module) -> set[str]:
    return {first_argument(tree, call) for call in calls(tree, "LaunchConfiguration")}


def declared_arguments(tree: ast.Module) -> set[str]:
    return {first_argument(tree, call) for call in calls(tree, "DeclareLaunchArgument")}


def included_files(tree: ast.Module) -> list[str]:
    """Launch files named in IncludeLaunchDescription(...) calls."""
    return [
        node.value for call in calls(tree, "IncludeLaunchDescription") for node in ast.walk(call)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".launch.py")
    ]


def node_call(tree: ast.Module, executable: str) -> ast.Call:
    # Node(...) or LifecycleNode(...), possibly chosen at launch time: any call with that executable.
    matches = [call for call in ast.walk(tree) if isinstance(call, ast.Call) and keyword(call, "executable")
               and constant_str(tree, keyword(call, "executable")) == executable]
    assert len(matches) == 1, f"expected one node with executable={executable!r}"
    return matches[0]


def remappings(call: ast.Call) -> list[tuple[str, ast.expr]]:
    """A Node's remappings, which must be a literal list of (node topic literal, target) tuples."""
    value = keyword(call, "remappings")
    assert isinstance(value, ast.List), "remappings must be a literal list"
    rules = []
    for item in value.elts:
        assert isinstance(item, ast.Tuple) and len(item.elts) == 2, ast.unparse(item)
        source, target = item.elts
        assert isinstance(source, ast.Constant) and isinstance(source.value, str), ast.unparse(item)
        rules.append((source.value, target))
    return rules


def parameter_names(tree: ast.Module, call: ast.Call) -> set[str]:
    """Keys of the dict literals a Node's `parameters=` holds, following the variables it is built from."""
    assignments = {
        target.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
        for target in node.targets if isinstance(target, ast.Name)
    }
    names: set[str] = set()
    pending = [keyword(call, "parameters")]
    followed: set[str] = set()
    while pending:
        for node in ast.walk(pending.pop()):
            if isinstance(node, ast.Dict):
                for key in node.keys:
                    if key is not None:  # None: `**variable`, followed as a Name below
                        assert isinstance(key, ast.Constant) and isinstance(key.value, str), ast.unparse(node)
                        names.add(key.value)
            elif isinstance(node, ast.Name) and node.id in assignments and node.id not in followed:
                followed.add(node.id)
                pending.append(assignments[node.id])
    return names


def module_constant(tree: ast.Module, name: str) -> ast.expr:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    raise AssertionError(f"no module-level {name}")


def command_lists(tree: ast.Module) -> list[list[str]]:
    """The string literals of every list literal that starts with 'ros2' (commands of ExecuteProcess)."""
    commands = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant) \
                and node.elts[0].value == "ros2":
            commands.append([e.value for e in node.elts if isinstance(e, ast.Constant)])
    return commands


# ---------------------------------------------------------------------------------------------------------
# Static checks (no ROS launch needed)


def test_remapped_topics_are_node_topics():
    checked = 0
    for name in LAUNCH_FILES:
        tree = parse(name)
        nodes = [call for call in ast.walk(tree) if isinstance(call, ast.Call) and keyword(call, "remappings")]
        for call in nodes:
            for topic, _ in remappings(call):
                assert topic.lstrip("/") in NODE_TOPICS, f"{name}: {topic} is not a topic of the node"
                checked += 1
    assert checked >= len(constants.INPUT_TOPICS) + len(RVIZ_TOPICS)


def test_mafs_node_is_the_package_executable_with_its_inputs_on_the_topic_arguments():
    tree = parse(MAFS_LAUNCH)
    call = node_call(tree, "mafs_node")
    assert constant_str(tree, keyword(call, "package")) == "mafs_ros"
    assert constant_str(tree, keyword(call, "name")) == constants.NODE_NAME
    remapped = {}
    for topic, target in remappings(call):
        assert isinstance(target, ast.Call) and ast.unparse(target.func) == "LaunchConfiguration", ast.unparse(target)
        remapped[topic] = first_argument(tree, target)
    assert remapped == INPUT_ARGUMENTS


def test_rviz_subscriptions_follow_namespace_and_topic_arguments():
    tree = parse(MAFS_LAUNCH)
    remapped = {topic for topic, _ in remappings(node_call(tree, "rviz2"))}
    assert remapped == {f"/{topic}" for topic in RVIZ_TOPICS}


def test_parameters_set_by_the_launch_files_are_node_parameters():
    tree = parse(MAFS_LAUNCH)
    names = set()
    names |= parameter_names(tree, node_call(tree, "mafs_node"))
    for call in calls(tree, "Node"):
        names |= parameter_names(tree, call)
    assert {"checkpoint", "device", "use_sim_time", "lifecycle", "autostart"} <= names
    assert names <= set(PARAMETERS) | {"use_sim_time"}
    assert not calls(parse(REPLAY_LAUNCH), "Node"), "replay.launch.py starts the node through mafs.launch.py"


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_configurations_are_declared_and_arguments_used(name):
    tree = parse(name)
    declared = declared_arguments(tree)
    assert declared == ARGUMENTS[name]
    # An included launch file shares its launch configurations with the includer.
    visible = declared.union(*(declared_arguments(parse(included)) for included in included_files(tree)))
    used = launch_configurations(tree)
    assert used <= visible, f"{name}: LaunchConfiguration without DeclareLaunchArgument: {used - visible}"
    assert declared <= used, f"{name}: arguments never used: {declared - used}"


def test_replay_includes_the_node_launch_with_sim_time():
    tree = parse(REPLAY_LAUNCH)
    assert included_files(tree) == [MAFS_LAUNCH]
    (include,) = calls(tree, "IncludeLaunchDescription")
    arguments = keyword(include, "launch_arguments")
    passed = {
        constant_str(tree, key): constant_str(tree, value)
        for node in ast.walk(arguments) if isinstance(node, ast.Dict)
        for key, value in zip(node.keys, node.values)
    }
    assert passed == {"use_sim_time": "true"}
    assert set(passed) <= ARGUMENTS[MAFS_LAUNCH]


def test_replay_plays_with_clock_and_records_inputs_and_scored_outputs_in_sim_time():
    tree = parse(REPLAY_LAUNCH)
    commands = command_lists(tree)
    assert any(command[:3] == ["ros2", "bag", "play"] and "--clock" in command for command in commands)
    assert any(command[:4] == ["ros2", "bag", "record", "--use-sim-time"] for command in commands)

    recorded = module_constant(tree, "RECORDED_TOPICS")
    assert isinstance(recorded, (ast.Tuple, ast.List))
    topics = {e.value for e in recorded.elts if isinstance(e, ast.Constant)}
    arguments = {first_argument(tree, e) for e in recorded.elts if isinstance(e, ast.Call)}
    assert len(topics) + len(arguments) == len(recorded.elts), "only literals and LaunchConfigurations"
    assert SCORED_OUTPUTS <= {topic.lstrip("/") for topic in topics}
    # The bag's ground truth, under the name `mafs replay --from-recording` reads by default: mIoU of a live run.
    assert absolute_topic(constants.GROUND_TRUTH_TOPIC) in topics
    assert topics <= NODE_TOPICS | {constants.DIAGNOSTICS_TOPIC, absolute_topic(constants.GROUND_TRUTH_TOPIC)}
    # The inputs are recorded under the names the node subscribes to: its input topic arguments.
    assert arguments == set(INPUT_ARGUMENTS.values())
    assert calls(tree, "expand_topic_name"), "relative names must be resolved in the node's namespace"


def test_rviz_config_shows_node_topics_as_images():
    config = yaml.safe_load(RVIZ_CONFIG.read_text(encoding="utf-8"))
    manager = config["Visualization Manager"]
    displays = {}
    for display in manager["Displays"]:
        assert display["Class"] == "rviz_default_plugins/Image", display["Name"]
        topic = display["Topic"]["Value"]
        assert topic.startswith("/") and topic[1:] in NODE_TOPICS, f"{display['Name']}: {topic}"
        displays[topic[1:]] = display
    assert set(displays) == RVIZ_TOPICS
    for topic, display in displays.items():
        expected = "Best Effort" if topic in constants.INPUT_TOPICS else "Reliable"
        assert display["Topic"]["Reliability Policy"] == expected, topic
    assert displays[constants.LABELS_TOPIC]["Normalize Range"] is True
    assert manager["Global Options"]["Fixed Frame"]


def test_files_named_by_the_launch_files_exist_and_are_installed():
    named = set()
    for name in LAUNCH_FILES:
        for node in ast.walk(parse(name)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.fullmatch(r"[\w.-]+\.(yaml|rviz)", node.value):
                    named.add(Path("config") / node.value)
                elif re.fullmatch(r"[\w.-]+\.launch\.py", node.value):
                    named.add(Path("launch") / node.value)
    assert {Path("config/mafs.yaml"), Path("config/mafs.rviz"), Path("launch/mafs.launch.py")} <= named
    cmake, setup = (REPO / "CMakeLists.txt").read_text(), (REPO / "setup.py").read_text()
    patterns = ("launch/*.launch.py", "config/*.yaml", "config/*.rviz")
    for pattern in patterns:
        assert pattern in cmake and pattern in setup, f"{pattern} must be installed by CMakeLists.txt and setup.py"
    installed = {path.relative_to(REPO) for pattern in patterns for path in REPO.glob(pattern)}
    assert named | {Path("launch") / name for name in LAUNCH_FILES} <= installed


def shell_commands(text: str) -> list[list[str]]:
    """The words of every line of `text` that starts with `ros2` or `mafs`, continuation lines (ending in a
    backslash) joined and comments dropped."""
    commands, pending = [], ""
    for line in text.splitlines():
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1]
        elif line.startswith(("ros2 ", "mafs ")):
            commands.append(shlex.split(line, comments=True))
    return commands


@pytest.mark.parametrize("text", [
    (LAUNCH_DIR / "README.md").read_text(encoding="utf-8"),
    ast.get_docstring(parse(REPLAY_LAUNCH)),
], ids=["launch/README.md", REPLAY_LAUNCH])
def test_documented_reports_of_recordings_read_what_was_recorded(text):
    """Each documented `mafs replay --from-recording` parses, has --out, and names the topics the replay launch
    before it recorded (the node's default inputs unless remapped)."""
    checked = 0
    record: dict[str, str] = {}
    for words in shell_commands(text):
        if words[:4] == ["ros2", "launch", "mafs_ros", REPLAY_LAUNCH] and "record:=true" in words:
            record = dict(word.split(":=", 1) for word in words[4:])
        elif words[:3] == ["mafs", "replay", "--from-recording"]:
            args = build_parser().parse_args(words[1:])
            assert args.out is not None, " ".join(words)
            assert args.from_recording == Path(record["record_path"]), " ".join(words)
            for argument, default in (("rgb_topic", constants.RGB_TOPIC),
                                      ("thermal_topic", constants.THERMAL_TOPIC)):
                assert bags.topic_name(getattr(args, argument)) == bags.topic_name(record.get(argument, default))
            checked += 1
    assert checked >= 1


def test_readme_documents_every_launch_argument():
    readme = (LAUNCH_DIR / "README.md").read_text(encoding="utf-8")
    for name, arguments in ARGUMENTS.items():
        for argument in arguments:
            assert f"| `{argument}` |" in readme, f"launch/README.md lacks {argument} of {name}"


def test_parameter_file_pairing_and_registration_defaults_are_the_constants():
    """config/mafs.yaml holds the same sync.* and registration defaults as the node, `mafs replay` and
    `mafs calibrate` take from mafs_ros.constants."""
    parameters = yaml.safe_load((REPO / "config" / "mafs.yaml").read_text(encoding="utf-8"))["/**"]["ros__parameters"]
    sync = parameters["sync"]
    assert (sync["slop_s"], sync["queue_size"], sync["thermal_offset_s"], sync["max_wait_s"]) == (
        constants.SLOP_S, constants.QUEUE_SIZE, constants.THERMAL_OFFSET_S, constants.MAX_WAIT_S)
    assert tuple(parameters["registration"]["homography"]) == constants.IDENTITY_HOMOGRAPHY
    replay = build_parser().parse_args(["replay", "BAG", "--out", "OUT"])
    calibrate = build_parser().parse_args(["calibrate", "BAG", "--out", "OUT"])
    for args in (replay, calibrate):
        assert (args.slop_s, args.queue_size, args.thermal_offset_s) == (sync["slop_s"], sync["queue_size"],
                                                                         sync["thermal_offset_s"])
        assert (args.rgb_topic, args.thermal_topic) == (absolute_topic(constants.RGB_TOPIC),
                                                        absolute_topic(constants.THERMAL_TOPIC))
    assert replay.max_wait_s == sync["max_wait_s"]
    assert tuple(replay.homography) == tuple(parameters["registration"]["homography"])


def test_launch_topic_arguments_default_to_the_node_topics():
    tree = parse(MAFS_LAUNCH)
    defaults = {first_argument(tree, call): keyword(call, "default_value")
                for call in calls(tree, "DeclareLaunchArgument")}
    for topic, argument in INPUT_ARGUMENTS.items():
        assert constant_str(tree, defaults[argument]) == topic, argument
    # rviz2's subscriptions are remapped to where the node's own outputs are: named by their relative names.
    named = [call.args[0] for call in calls(tree, "expand_topic_name")]
    literals = {node.value for node in named if isinstance(node, ast.Constant)}
    assert literals and literals <= set(constants.OUTPUT_TOPICS), literals


# ---------------------------------------------------------------------------------------------------------
# With ROS launch installed: build the launch descriptions


@pytest.fixture
def share(tmp_path, monkeypatch) -> Path:
    """An ament prefix registering mafs_ros, so get_package_share_directory works without an install."""
    pytest.importorskip("launch_ros.actions")
    # `import launch` alone would succeed anywhere: `python -m pytest` puts the repository on sys.path, where
    # launch/ is a namespace package.
    pytest.importorskip("launch.actions")
    prefix = tmp_path / "prefix"
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "mafs_ros"
    marker.parent.mkdir(parents=True)
    marker.touch()
    search_path = filter(None, (str(prefix), os.environ.get("AMENT_PREFIX_PATH")))
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join(search_path))
    return prefix / "share" / "mafs_ros"


def load_launch_description(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def configured_context(descriptions, **values: str):
    """A LaunchContext holding the arguments' defaults (as DeclareLaunchArgument sets them) and `values`."""
    from launch.launch_context import LaunchContext

    context = LaunchContext()
    context.launch_configurations.update(values)
    for description in descriptions:
        for argument in description.get_launch_arguments():
            argument.execute(context)
    return context


def opaque_function_actions(description, context) -> list:
    from launch.actions import OpaqueFunction

    (opaque,) = [entity for entity in description.entities if isinstance(entity, OpaqueFunction)]
    return list(opaque.execute(context))


def test_mafs_launch_description_builds_the_node_and_optional_rviz(share):
    from launch_ros.actions import Node

    description = load_launch_description(MAFS_LAUNCH)
    assert {argument.name for argument in description.get_launch_arguments()} == ARGUMENTS[MAFS_LAUNCH]
    context = configured_context([description])
    assert context.launch_configurations["params_file"] == str(share / "config" / "mafs.yaml")

    nodes = opaque_function_actions(description, context)
    assert len(nodes) == 2 and all(isinstance(node, Node) for node in nodes)
    started = [node.condition is None or node.condition.evaluate(context) for node in nodes]
    assert started == [True, False]
    context.launch_configurations["rviz"] = "true"
    assert all(node.condition is None or node.condition.evaluate(context) for node in nodes)


@pytest.mark.usefixtures("share")
@pytest.mark.parametrize("record, processes", [("false", 0), ("true", 1)])
def test_replay_launch_description_plays_and_optionally_records(record, processes):
    from launch.actions import ExecuteProcess, TimerAction

    description = load_launch_description(REPLAY_LAUNCH)
    names = {argument.name for argument in description.get_launch_arguments()}
    assert ARGUMENTS[REPLAY_LAUNCH] <= names <= ARGUMENTS[REPLAY_LAUNCH] | ARGUMENTS[MAFS_LAUNCH]
    context = configured_context(
        [description, load_launch_description(MAFS_LAUNCH)], bag="some_bag", record=record, namespace="front"
    )
    actions = opaque_function_actions(description, context)
    assert sum(isinstance(action, TimerAction) for action in actions) == 1  # the delayed player
    assert sum(isinstance(action, ExecuteProcess) for action in actions) == processes
