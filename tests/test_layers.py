"""The package's layers: every import points to a lower layer (docs/design.md: Layers).

A *unit* is a subpackage of ``litgpt_mka`` (``attention/``, ``compare/``, ...) or a top-level module (``data.py``,
``cli.py``, ...). :data:`LAYERS` orders the units, lowest first, and is the one statement of the rule: a module
may import modules of its own unit and of units in lower layers, never of its own layer's other units nor of
higher layers (so two units never import each other). Imports are read from the source (``ast``, nothing is
imported), inside functions too, relative ones resolved. A new module belongs to its folder's unit; a new
top-level module or subpackage fails :func:`test_every_unit_has_a_layer` until it is given a layer here and a row
in docs/design.md's table.

Two imports are outside the rule: ``import litgpt_mka`` (the root package, which Python has imported before any
of its modules, so it adds no dependency), and the root ``__init__.py`` importing the plugin's activation (what
makes the package a plugin: docs/design.md, How the plugin switches itself on).
"""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "litgpt_mka"
ROOT = "litgpt_mka"

# lowest first; the units of one layer do not import each other
LAYERS: tuple[tuple[str, ...], ...] = (
    ("validation", "atomic", "precision", "presets"),  # checks, files, machine defaults: import nothing of ours
    ("attention", "data"),  # the variants and their registry; the text corpus
    ("measure", "finetune"),  # what variants cost; their LoRA forms and which litgpt command takes which
    ("plugin", "checkpoint"),  # litgpt extended; a checkpoint folder loaded through it
    ("convert", "evaluate"),  # commands on one checkpoint
    ("compare",),  # the comparison: trains, evaluates (through evaluate/) and measures runs
    ("cli",),  # the litgpt-mka console script
)
ROOT_IMPORTS = {"litgpt_mka.plugin.activation"}  # the root __init__.py's only import: activation


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. litgpt_mka.compare.tasks
    target: str  # the imported module or name, e.g. litgpt_mka.evaluate.results
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(name: str) -> str | None:
    """``litgpt_mka.compare.tasks`` -> ``compare``; None for the root package itself."""
    parts = name.split(".")
    return parts[1] if parts[0] == ROOT and len(parts) > 1 else None


def imports_of(path: Path) -> list[Import]:
    return imports_in(module_name(path), path.name == "__init__.py", path.read_text(encoding="utf-8"))


def imports_in(module: str, is_package: bool, source: str) -> list[Import]:
    """Every import of the package's modules in `source`, the text of `module`, at any depth (``from a import b``:
    ``a.b`` where ``a`` is the root, else ``a``)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] if base == ROOT else [base]
        else:
            continue
        found += [Import(module, target, node.lineno) for target in targets if target.split(".")[0] == ROOT]
    return found


def all_imports() -> list[Import]:
    return [found for path in sorted(PACKAGE.rglob("*.py")) for found in imports_of(path)]


def layer_of() -> dict[str, int]:
    return {unit: index for index, layer in enumerate(LAYERS) for unit in layer}


def violations(imports: list[Import], layers: dict[str, int]) -> list[str]:
    """Imports of a unit in the same or a higher layer (the root package's own rules applied)."""
    found = []
    for imported in imports:
        source, target = unit_of(imported.module), unit_of(imported.target)
        if source is None:  # the root __init__.py
            if imported.target not in ROOT_IMPORTS:
                found.append(f"{imported}: the root __init__.py imports only {sorted(ROOT_IMPORTS)}")
        elif target in layers and target != source and layers[target] >= layers[source]:
            where = "the same layer as" if layers[target] == layers[source] else "a higher layer than"
            found.append(
                f"{imported}: {target} (layer {layers[target]}) is in {where} {source} (layer {layers[source]})"
            )
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(path)) for path in PACKAGE.rglob("*.py")} - {None}
    listed = [unit for layer in LAYERS for unit in layer]
    assert len(listed) == len(set(listed)), "a unit is listed twice"
    assert units == set(listed), f"without a layer: {sorted(units - set(listed))}; gone: {sorted(set(listed) - units)}"


def test_imports_point_only_to_lower_layers():
    imports = all_imports()
    edges = {(unit_of(i.module), unit_of(i.target)) for i in imports}
    assert ("compare", "evaluate") in edges and ("evaluate", "checkpoint") in edges  # the imports were read
    found = violations(imports, layer_of())
    assert found == [], "\n".join(found)


def test_a_planted_upward_import_and_a_mutual_pair_are_found():
    layers = layer_of()
    upward = Import("litgpt_mka.evaluate.results", "litgpt_mka.compare.records", 12)
    sideways = [Import("litgpt_mka.convert.command", "litgpt_mka.evaluate", 3),
                Import("litgpt_mka.evaluate.lm", "litgpt_mka.convert.checkpoint", 5)]
    relative = imports_in("litgpt_mka.measure.x", False, "def f():\n    from ..compare import report\n")
    assert relative == [Import("litgpt_mka.measure.x", "litgpt_mka.compare", 2)]
    found = violations([upward, *sideways, *relative], layers)
    assert [message.split(":")[0] for message in found] == [
        "litgpt_mka.evaluate.results", "litgpt_mka.convert.command", "litgpt_mka.evaluate.lm", "litgpt_mka.measure.x"
    ], found


def test_the_design_doc_lists_the_layers():
    """docs/design.md's layer table (``| N | `unit/`, `module.py` | ...``) is :data:`LAYERS`, top row highest."""
    text = (PROJECT / "docs" / "design.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", text, flags=re.MULTILINE)
    documented = {int(number): tuple(re.sub(r"(\.py|/)$", "", name) for name in re.findall(r"`([^`]+)`", cell))
                  for number, cell in rows}
    assert documented == dict(enumerate(LAYERS))
