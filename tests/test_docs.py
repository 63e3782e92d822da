"""The docs hold together: README.md is a front page of at most 250 lines that links every page of docs/, and
every relative link in README.md and docs/*.md reaches a file of the repository (and, with an #anchor, a heading
of it, by GitHub's anchor rules); every image is a PNG that exists. No network: external links are not followed.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

PROJECT = Path(__file__).resolve().parents[1]
README = PROJECT / "README.md"
DOCS = PROJECT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MAX_FRONT_PAGE_LINES = 250
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# [text](target) and ![alt](target), the target up to a space (an optional "title") or the closing parenthesis.
LINK = re.compile(r"(!?)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_IMAGE = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"(`+)[^`\n]*?\1", "", text)


def links(path: Path) -> list[tuple[bool, str]]:
    """(is an image, target) of every Markdown link and image of ``path``, and of every <img src>."""
    text = prose(path.read_text())
    found = [(bang == "!", target) for bang, target in LINK.findall(text)]
    return found + [(True, src) for src in HTML_IMAGE.findall(text)]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lower case, without markup and punctuation, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of a Markdown file (a repeated one also as -1, -2 ..., as GitHub does)."""
    seen: dict[str, int] = {}
    result = set()
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        slug = anchor(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def internal_links(path: Path) -> list[tuple[bool, Path, str]]:
    """(is an image, the file it points at, its anchor or "") of every relative link of ``path``."""
    result = []
    for image, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        file_part = unquote(file_part.split("?")[0])
        resolved = path if not file_part else (path.parent / file_part)
        result.append((image, resolved, unquote(fragment)))
    return result


MARKDOWN = [README, *PAGES]


def test_there_are_docs_pages():
    assert PAGES, "docs/*.md: no page"


def test_the_front_page_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_FRONT_PAGE_LINES, f"README.md has {lines} lines: the front page keeps to " \
        f"{MAX_FRONT_PAGE_LINES}; move the reference into docs/"


def test_the_front_page_starts_with_the_two_commands():
    text = README.read_text()
    block = re.search(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    assert block, "README.md: no sh block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make demo", "make test"], commands
    assert text.index(block.group(0)) < text.index("\n## "), "the two commands come before the first section"


def test_every_docs_page_is_linked_from_the_front_page():
    linked = {target.resolve() for _, target, _ in internal_links(README)}
    missing = [page.name for page in PAGES if page.resolve() not in linked]
    assert not missing, f"docs pages README.md does not link: {missing}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(PROJECT)))
def test_every_relative_link_reaches_a_file_and_its_heading(path):
    broken = []
    for _, target, fragment in internal_links(path):
        resolved = target.resolve()
        where = resolved.relative_to(PROJECT) if resolved.is_relative_to(PROJECT) else target
        if not resolved.is_relative_to(PROJECT):
            broken.append(f"{where}: outside the repository")
        elif not target.exists():
            broken.append(f"{where}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{where}#{fragment}: no such heading")
    assert not broken, f"{path.relative_to(PROJECT)}: broken links: {broken}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(PROJECT)))
def test_every_image_is_a_png_that_exists(path):
    bad = [f"{target}: not in the repository" for image, target in links(path) if image and EXTERNAL.match(target)]
    for image, target, _ in internal_links(path):
        if not image:
            continue
        if target.suffix.lower() != ".png" or not target.is_file():
            bad.append(f"{target.relative_to(PROJECT)}: not a PNG file")
        elif target.read_bytes()[:8] != PNG_MAGIC:
            bad.append(f"{target.relative_to(PROJECT)}: not PNG data")
    assert not bad, f"{path.relative_to(PROJECT)}: {bad}"


def test_the_anchor_rules():
    assert anchor("Airflow's floor, 2026-12-05") == "airflows-floor-2026-12-05"
    assert anchor("Running Airflow on Docker (`docker-compose.yaml`)") == "running-airflow-on-docker-docker-composeyaml"
    assert anchor("Failures: tags, teardown, retries") == "failures-tags-teardown-retries"
    assert anchor("1. Build an image") == "1-build-an-image"
