"""The docs stay true: links resolve, and the uvicorn migration table covers every flag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import uvicorn

from aserve.cli import cli

DOCS = Path(__file__).parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))

# `uvicorn --help` of the uvicorn in the dev dependencies: a flag a new uvicorn adds needs a row.
UVICORN_FLAGS = [
    opt
    for param in uvicorn.main.params
    for opt in (*param.opts, *param.secondary_opts)
    if opt.startswith("--")
] + ["--help"]

ASERVE_FLAGS = {
    opt for param in cli.params for opt in (*param.opts, *param.secondary_opts) if opt[:2] == "--"
} | {"--help"}


def migration_rows() -> dict[str, tuple[set[str], str]]:
    """uvicorn flag -> (aserve flags named in the second column, that column's text)."""
    rows = {}
    text = (DOCS / "migrating.md").read_text()
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`--"):
            continue
        ours = set(re.findall(r"`(--[a-z0-9-]+)`", cells[1]))
        for flag in re.findall(r"`(--[a-z0-9-]+)`", cells[0]):
            rows[flag] = (ours, cells[1])
    return rows


def test_every_uvicorn_flag_has_a_row():
    assert sorted(set(UVICORN_FLAGS) - set(migration_rows())) == []


@pytest.mark.parametrize("flag", UVICORN_FLAGS)
def test_migration_row_is_true(flag):
    ours, column = migration_rows()[flag]
    assert ours <= ASERVE_FLAGS, f"{flag}: the table names options aserve does not have"
    if flag in ASERVE_FLAGS:
        assert flag in ours, f"aserve has {flag} now: docs/migrating.md still says {column!r}"
    else:
        assert ours or column in ("none", "not yet"), f"{flag}: say 'none' or 'not yet'"


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_between_pages_resolve(page):
    """What `mkdocs build --strict` (make docs) would refuse, caught by the suite.

    The site has only docs/: refer to other files of the repository as `path`, not as a link.
    """
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        assert not path.startswith(("/", "..")), f"{page.name}: {target} leaves docs/"
        assert (DOCS / path).is_file(), f"{page.name}: {target} does not exist"


def slugs(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub and the site (pymdownx slugify) make them."""
    found: set[str] = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6} (.*)", line)
        if match:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1)).lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            candidate, number = slug, 0
            while candidate in found:
                number += 1
                candidate = f"{slug}_{number}"
            found.add(candidate)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_anchors_exist(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        linked = DOCS / path if path else page
        assert anchor in slugs(linked), f"{page.name}: {target}: no such heading"


def test_every_page_is_in_the_site_navigation():
    nav = set(
        re.findall(r"^\s+- [^:]+: (\S+\.md)$", (DOCS.parent / "mkdocs.yml").read_text(), re.M)
    )
    pages = {page.name for page in PAGES}
    assert pages - nav == set(), "add these pages to `nav:` in mkdocs.yml"
    assert nav - pages == set(), "mkdocs.yml's nav names pages that do not exist"
