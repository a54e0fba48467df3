"""The documentation says what the code does: tables made from the code match it, the README
stays an entry point whose links resolve, and no text a user reads cites our tracker."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_auto_rules_table_in_the_docs_is_the_one_the_code_makes():
    from soundtag.recipe_auto import rules_markdown

    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    block = text.split("<!-- auto-rules:start -->")[1].split("<!-- auto-rules:end -->")[0].strip()
    assert block == rules_markdown(), (
        "docs/training.md's auto rules are stale: paste the output of "
        "python -c 'from soundtag.recipe_auto import rules_markdown; print(rules_markdown())'"
    )


def test_the_readme_is_an_entry_point_whose_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220, "the README is the entry point: details belong in docs/"
    links = re.findall(r"\]\(((?!https?:|#)[^)#\s]+)", text)
    assert links, "the README links to its documentation pages"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, missing


def test_no_text_a_user_reads_cites_the_tracker():
    tracker = re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)
    places = [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "src").rglob("*.py")),
        *sorted((REPO / "src").rglob("*.yaml")),
    ]
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in places for m in tracker.finditer(p.read_text("utf-8"))]
    assert not found, found
