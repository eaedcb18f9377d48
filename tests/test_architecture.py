"""The package's import floors (ARCHITECTURE.md): every import points to the same or a lower floor, no cycles.

Imports inside functions count too, and so does ``importlib.import_module`` with a literal distgru name: a lazy
import is still a dependency. Only ``if TYPE_CHECKING:`` blocks are exempt, and nothing may need them to dodge a
floor either (they are reported when they point up).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distgru"
FLOORS = {"config": 0, "data": 1, "features": 2, "processing": 3, "models": 3, "training": 4, "evaluation": 5,
          "tuning": 6, "commands": 7, "cli": 7, "__main__": 8}
"""Top-level packages/modules by floor; other top-level modules (distgru/metrics.py, ...) are the ground floor."""


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS.get(parts[1], -1) if len(parts) > 1 else -1


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported distgru module, line) for every import in the file, resolving ``from pkg import module``."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = me.split(".")[: len(me.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*pkg, base]) if base else ".".join(pkg)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or \
                    (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                out.append((sub if is_module else base, node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            out.append((str(node.args[0].value), node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.JoinedStr)):
            prefix = node.args[0].values[0]
            if isinstance(prefix, ast.Constant):
                out.append((str(prefix.value).rstrip("."), node.lineno))
    return [(m, line) for m, line in out if m == "distgru" or m.startswith("distgru.")]


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad = []
    for module, targets in edges.items():
        for target, line in targets:
            if module.startswith(target + ".") or module == target:
                continue  # a package's own __init__
            if floor(target) > floor(module):
                bad.append(f"{module}:{line} imports {target} (floor {floor(module)} -> {floor(target)})")
    return bad


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    nodes = set(edges)
    succ = {m: sorted({t for t, _ in ts if t in nodes and t != m and not m.startswith(t + ".")})
            for m, ts in edges.items()}
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in succ[m]:
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif not state.get(n):
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(succ):
        if not state.get(m):
            visit(m)
    return found


def test_every_top_level_package_has_a_floor() -> None:
    unknown = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} - set(FLOORS)
    assert not unknown, f"new packages need a floor in ARCHITECTURE.md and here: {sorted(unknown)}"


def test_no_import_runs_up_the_floors() -> None:
    assert upward_imports(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_checks_can_fail() -> None:
    edges = {"distgru.config.schema": [("distgru.tuning.space", 3)], "distgru.tuning.space": [
        ("distgru.config.schema", 1)]}
    assert upward_imports(edges) == ["distgru.config.schema:3 imports distgru.tuning.space (floor 0 -> 6)"]
    assert cycles(edges) == [["distgru.config.schema", "distgru.tuning.space", "distgru.config.schema"]]
