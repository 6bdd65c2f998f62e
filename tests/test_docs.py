"""The README is a front page linking a docs/ guide: every relative link of the README and the guide resolves, the
front page stays short, and no committed document names a path of the machine it was made on."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAX_FRONT_PAGE_LINES = 200


def relative_links(path: Path) -> list[str]:
    """The targets of the markdown links in `path` that point into the repository (no URL, no bare anchor)."""
    targets = [target.split("#")[0] for target in LINK.findall(path.read_text())]
    return [target for target in targets if target and not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    missing = [target for target in relative_links(path) if not (path.parent / target).exists()]
    assert missing == []


def test_the_readme_is_a_front_page_that_links_every_guide_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= MAX_FRONT_PAGE_LINES
    guide = {p.name for p in (ROOT / "docs").glob("*.md")}
    linked = {Path(target).name for target in relative_links(ROOT / "README.md") if target.startswith("docs/")}
    assert guide <= linked, sorted(guide - linked)
    assert guide - {"README.md"} <= {Path(t).name for t in relative_links(ROOT / "docs" / "README.md")}


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_names_a_path_of_the_machine(path):
    assert not re.search(r"(?<![\w.])/(work|home|root|tmp|Users)/", path.read_text())


# ------------------------------------------------------------------------------------------- docs/design.md
DESIGN = ROOT / "docs" / "design.md"
DESCRIPTION_COLUMN = 20  # the tree's descriptions start further right than any name


def section(text: str, heading: str) -> str:
    """The text of the ``## heading`` section of a markdown page, up to the next ``## `` heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]


def design_tree_paths() -> set[str]:
    """The files of the package tree in design.md's "The package" (its first code block), by path."""
    block = section(DESIGN.read_text(), "The package").split("```")[1]
    folders, paths = [], set()
    for line in block.splitlines():
        name, indent = line.strip().split("  ")[0], len(line) - len(line.lstrip())
        if not name or indent >= DESCRIPTION_COLUMN:  # a description's second line
            continue
        folders = folders[: indent // 2]  # two spaces per level, the root folder at 0
        if name.endswith("/"):
            folders.append(name)
        else:
            paths.add("".join(folders) + name)
    return paths


def test_the_design_doc_lists_every_module_of_the_package():
    package = ROOT / "litgpt_mka"
    files = {str(p.relative_to(ROOT)) for p in package.rglob("*") if p.suffix in (".py", ".pth")}
    assert design_tree_paths() == files


def test_every_function_the_design_doc_walks_through_exists():
    """Each ``name()`` or ``Class.name()`` of "From a YAML key to the code that reads it" is defined in the package."""
    walk = section(DESIGN.read_text(), "From a YAML key to the code that reads it")
    source = "\n".join(p.read_text() for p in (ROOT / "litgpt_mka").rglob("*.py"))
    named = set(re.findall(r"`([\w.]+)\(\)`", walk))
    assert len(named) > 20  # the walk-through was read
    missing = [name for name in sorted(named) if not all(
        re.search(rf"^\s*(def|class) {part}\b", source, flags=re.MULTILINE) for part in name.split(".")
    )]
    assert missing == []
