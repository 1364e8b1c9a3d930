"""The package's import graph: no cycles, products above the shared base, command modules used only by the CLI.

Read from the source with ``ast`` (function-level imports count too), so a test run imports nothing it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hub_export"
# Lower layers never import higher ones; a subpackage may import itself and anything below it.
LAYERS = {
    "hub_export.modeling": 0,
    "hub_export.folder": 0,
    "hub_export.data": 0,
    "hub_export.vectors": 0,
    "hub_export.encoding": 0,
    "hub_export.outdir": 0,
    "hub_export.publish": 1,
    "hub_export.quality": 2,
    "hub_export.runtime": 3,
    "hub_export.serve": 4,
    "hub_export.distill": 4,
    "hub_export.select": 4,
    "hub_export.demo": 5,
    "hub_export.cli": 6,
    "hub_export.__main__": 7,
}
# What a CLI command runs. Only the CLI imports these, and the few modules that run one as a step of their own.
COMMANDS = {
    "hub_export.publish.build",
    "hub_export.publish.verify",
    "hub_export.publish.push",
    "hub_export.publish.backends",
    "hub_export.quality.compress",
    "hub_export.quality.calibrate",
    "hub_export.runtime.embed",
    "hub_export.serve.app",
}
EXTENDS = {
    ("hub_export.demo.parts", "hub_export.publish.build"),  # the demo builds its model with build
    ("hub_export.demo.run", "hub_export.publish.build"),
    ("hub_export.serve.ray_engine", "hub_export.serve.app"),  # Ray Serve serves the same app
    ("hub_export.select.report", "hub_export.publish.build"),  # select --build builds the recommendation
    ("hub_export.distill.train", "hub_export.publish.verify"),  # a student is verified like any folder
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The hub_export modules a file imports anywhere in it (``from hub_export.x import y`` counts ``x.y`` when
    ``y`` is a module)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hub_export")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if not base.startswith("hub_export"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return found


FILES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
MODULES = set(FILES)
GRAPH = {
    name: {target for target in imports(path) if target in MODULES and target != name} for name, path in FILES.items()
}


def layer(name: str) -> tuple[int, str]:
    home = max((prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")), key=len)
    return LAYERS[home], home


def test_every_module_has_a_layer() -> None:
    for name in MODULES - {"hub_export"}:
        layer(name)


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            assert state.get(target) != 1, f"import cycle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_products_import_only_themselves_and_what_lies_below() -> None:
    """The shared base (layer 0) may import its own modules; products at one level never import each other."""
    wrong = []
    for name, targets in GRAPH.items():
        if name == "hub_export":
            continue
        level, home = layer(name)
        for target in targets:
            target_level, target_home = layer(target)
            if target_level > level or (target_level == level and target_home != home and level > 0):
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_command_modules_are_imported_by_the_cli_and_what_extends_them() -> None:
    wrong = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets & COMMANDS
        if not name.startswith("hub_export.cli")
        and (name, target) not in EXTENDS
        and layer(name)[1] != layer(target)[1]
    ]
    assert not wrong, wrong
    readers = [name for name, targets in GRAPH.items() if "hub_export.quality.compress" in targets]
    assert all(name.startswith("hub_export.cli") for name in readers), f"the trainer is imported by {readers}"
