"""Every link in the docs leads to a file of this repository, and every anchor to a heading.

A reader of a clone has the repository and nothing beside it: a link to
``../shared/…`` (outside the repository) or to a file that moved is a dead end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.markdown import anchors, code_spans, links

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {".venv", ".git", "node_modules", "build", "dist"}


def markdown_files() -> list[Path]:
    """README.md, docs/*.md and every other Markdown page the repository ships."""
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in path.relative_to(ROOT).parts)
    )


def link_problems(doc: Path, text: str) -> list[str]:
    """What is wrong with the relative links of ``doc`` (whose content is ``text``).

    A target must resolve from the page's folder to an existing file inside the
    repository; an ``#anchor`` into a Markdown page must name one of its headings.
    """
    problems: list[str] = []
    for link in links(text):
        if not link.is_relative:
            continue
        where = f"{doc.relative_to(ROOT)}:{link.line}: {link.target}"
        if link.target.startswith("/"):
            problems.append(f"{where}: absolute path (write it relative to the page)")
            continue
        if not link.path:  # "#anchor": a heading of this page
            if link.anchor not in anchors(text):
                problems.append(f"{where}: no heading with this anchor")
            continue
        target = (doc.parent / link.path).resolve()
        if not target.is_relative_to(ROOT):
            problems.append(f"{where}: outside the repository")
        elif not target.exists():
            problems.append(f"{where}: no such file")
        elif (
            link.anchor
            and target.suffix == ".md"
            and link.anchor not in anchors(target.read_text(encoding="utf-8"))
        ):
            problems.append(f"{where}: no heading with this anchor")
    return problems


def path_problems(doc: Path, text: str) -> list[str]:
    """Paths in backticks that climb with ``../``: how docs came to name files outside the repo.

    The docs name files from the repository root or their package (``calls/leg.py``).
    """
    return [
        f"{doc.relative_to(ROOT)}:{span.line}: `{span.target}` climbs out with ../ "
        "(name it from the repository root)"
        for span in code_spans(text)
        if span.target.startswith("../") and " " not in span.target
    ]


def test_the_docs_are_found() -> None:
    names = {str(path.relative_to(ROOT)) for path in markdown_files()}
    assert {"README.md", "docs/architecture.md", "docs/agent-protocol.md"} <= names


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    assert link_problems(doc, doc.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_in_backticks_stay_in_the_repository(doc: Path) -> None:
    assert path_problems(doc, doc.read_text(encoding="utf-8")) == []


def test_the_checks_catch_what_they_are_for() -> None:
    """The checks are not vacuous: each kind of dead end is reported, and only those."""
    doc = ROOT / "docs" / "architecture.md"
    text = (
        "# Architecture (as built)\n"
        "See [design](../../shared/DESIGN.md), [gone](missing.md), [abs](/etc/passwd),\n"
        "[bad anchor](agent-protocol.md#no-such-heading), [fine](agent-protocol.md),\n"
        "[top](#architecture-as-built), [no top](#nowhere), [web](https://example.com/x),\n"
        "`../shared/AGENT_PROTOCOL.md`, while `calls/leg.py` and `[a](b.md)` are fine.\n"
        "```sh\ncat [not a link](nowhere.md)\n```\n"
    )
    reasons = [problem.split(": ", 2)[2] for problem in link_problems(doc, text)]
    assert reasons == [
        "outside the repository",
        "no such file",
        "absolute path (write it relative to the page)",
        "no heading with this anchor",
        "no heading with this anchor",
    ]
    assert len(path_problems(doc, text)) == 1
