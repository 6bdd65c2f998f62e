"""The package's import graph: no module imports, directly or through others, a module that imports it back,
counting imports inside functions too (docs/design.md: what may import what)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "litgpt_mka"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {other for other in imported if other in modules and other != name}
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for successor in graph[node]:
            if successor == start:
                return [*path, start]
            if successor not in seen:
                seen.add(successor)
                stack.append((successor, [*path, successor]))
    return None


def test_no_import_cycle_in_the_package():
    graph = package_imports()
    assert "litgpt_mka.compare.report" in graph and graph["litgpt_mka.compare.runner"]  # the graph was read
    cycles = [cycle for name in sorted(graph) if (cycle := cycle_through(graph, name))]
    assert cycles == [], cycles[0] if cycles else None


def test_the_report_renders_without_the_runner_or_the_plan():
    assert not {"litgpt_mka.compare.runner", "litgpt_mka.compare.plan"} & package_imports()["litgpt_mka.compare.report"]
