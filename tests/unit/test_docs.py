"""The docs hold together: every relative link and #anchor resolves, and the layout table matches the tree."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import REPO_ROOT

DOCS_DIR = REPO_ROOT / "docs"
PAGES = [REPO_ROOT / "README.md", *sorted(DOCS_DIR.glob("*.md"))]
LAYOUT_PAGE = DOCS_DIR / "development.md"
# The code the layout lists module by module (tests/ and frontend/ are described by folder).
LISTED_CODE = (
    "lungscan",
    "lungscan_client",
    "training",
    "infrastructure",
    "functions/classifier",
    "benchmarks",
    "events",
)

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in page.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(page):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    return [target for line in prose_lines(page) for target in LINK.findall(CODE_SPAN.sub("", line))]


def test_there_are_docs_and_the_readme_maps_every_page():
    docs = sorted(DOCS_DIR.glob("*.md"))
    assert docs, "docs/ holds the README's details"
    mapped = set(links(REPO_ROOT / "README.md"))
    assert [page.name for page in docs if f"docs/{page.name}" not in mapped] == []


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked here
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target} (no such heading)")
    assert broken == []


def layout_paths() -> list[str]:
    """The paths in the first column of the layout tables (development.md, section "Layout")."""
    text = LAYOUT_PAGE.read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    paths = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            paths.extend(re.findall(r"`([^`]+)`", first_cell))
    return paths


def test_every_path_in_the_layout_exists():
    paths = layout_paths()
    assert len(paths) > 50
    assert [path for path in paths if not (REPO_ROOT / path).exists()] == []


def test_every_module_is_in_the_layout():
    listed = set(layout_paths())
    missing = []
    for root in LISTED_CODE:
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT).as_posix()
            package = f"{path.parent.relative_to(REPO_ROOT).as_posix()}/"
            if relative not in listed and not (path.name == "__init__.py" and package in listed):
                missing.append(relative)
    assert missing == []
