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
