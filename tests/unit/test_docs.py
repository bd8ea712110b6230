"""The documentation points at things that exist: every relative link (and its heading), and every
file path it names in backquotes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..projects import REPOSITORY

DOCUMENTS = [REPOSITORY / "README.md", REPOSITORY / "bench" / "README.md",
             *sorted((REPOSITORY / "docs").glob("*.md"))]
PATH = re.compile(r"`((?:flows|padim_plugin|tests|bench|stack|docs)/[\w./-]+)`")
OUTPUTS = ("bench/results/",)  # what the benches write when run (git ignores it)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(document: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in document.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(REPOSITORY)) for d in DOCUMENTS])
def test_every_relative_link_and_named_path_exists(document: Path) -> None:
    text = document.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in headings(file)):
            broken.append(target)
    broken += [path for path in PATH.findall(text)
               if not path.startswith(OUTPUTS) and not (REPOSITORY / path).exists()]
    assert broken == []


def test_the_readme_is_a_front_door() -> None:
    assert len((REPOSITORY / "README.md").read_text().splitlines()) <= 250
