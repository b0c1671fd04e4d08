"""Every code block of the docs is closed: an unclosed fence swallows the next sections (their
headings render as text in a code block, and the anchors that other pages link to disappear)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
HEADING = re.compile(r"^#{2,6} \S")  # "# ..." alone is a shell comment in sh blocks


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_section_heading_inside_a_code_block(page: Path) -> None:
    inside = False
    swallowed: list[str] = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        elif inside and HEADING.match(line):
            swallowed.append(f"{page.name}:{number}: {line}")
    assert not inside, f"{page.name} ends inside a code block"
    assert swallowed == []
