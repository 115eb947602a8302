"""The README and docs/: every relative link leads to a file that exists, and every #anchor to
a heading of that file (so moving a section never leaves a dead link behind)."""

from __future__ import annotations

import re
import shutil
import subprocess
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
    assert ". .venv/bin/activate && pip install -e . && spool up" in head
    assert ". .venv/bin/activate && pip install -e '.[test]' && pytest -q" in head


def test_the_readme_and_docs_call_spool_one_way_after_the_quick_start() -> None:
    # Broke once: the quick start used .venv/bin/spool, later sections bare `spool`. The one
    # convention: the venv activated, `spool ...`; full paths only where no shell activates
    # anything (crontab, systemd), which name an absolute /srv/app/.venv/bin/spool.
    pages = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
    relative = [
        f"{page.name}: {line.strip()}"
        for page in pages
        for line in page.read_text().splitlines()
        if re.search(r"(?<![\w/])\.venv/bin/(spool|pytest|supervisorctl|pip|python)\b", line)
        and "activate" not in line
    ]
    assert not relative


def readme_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (PROJECT_DIR / "README.md").read_text(), re.S)
    [block] = [b for b in blocks if containing in b]
    return str(block)


@pytest.mark.parametrize("language", ["sh", "php"])
def test_the_readmes_drop_recipes_make_files_the_workers_group_can_read(
    language: str, spool_root: Path
) -> None:
    # Broke once: mktemp and tempnam make 0600 files, which a worker of another user rejects.
    queue = spool_root / "default"
    for sub in ("tmp", "incoming"):
        (queue / sub).mkdir(parents=True)
    if language == "sh":
        script = readme_block("sh", "mktemp").replace("var/spool/default", str(queue))
        argv = ["bash", "-c", "umask 077\n" + script.split("spool wait")[0]]
    else:
        if shutil.which("php") is None:
            pytest.skip("php is not installed")
        script = readme_block("php", "tempnam").replace("/srv/app/var/spool/default", str(queue))
        argv = ["php", "-r", "umask(0077);" + script.removeprefix("<?php\n")]
    subprocess.run(argv, check=True, timeout=30)
    [dropped] = list((queue / "incoming").iterdir())
    assert dropped.stat().st_mode & 0o777 == 0o660
