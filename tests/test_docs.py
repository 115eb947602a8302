"""The README and docs/: every relative link leads to a file that exists, and every #anchor to
a heading of that file (so moving a section never leaves a dead link behind)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import PROJECT_DIR

PAGES = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors a Markdown renderer gives the page's headings (GitHub's rule)."""
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not (match := re.match(r"^#+ (.*)$", line)):
            continue
        text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower().replace("`", ""))
        found.add(text.replace(" ", "-"))
    return found


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"(?s)```.*?```", "", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+://|^mailto:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_starts_with_the_two_set_up_commands() -> None:
    head = (PROJECT_DIR / "README.md").read_text()[:1500]
    assert "pip install -e . && .venv/bin/spool up" in head
    assert "pip install -e '.[test]' && .venv/bin/pytest -q" in head
