"""Just enough Markdown for the docs tests: fenced blocks, links and heading anchors.

The tests check what a reader of README.md and docs/ meets (the blocks they
paste, the links they follow), so this reads Markdown the way GitHub renders
those parts, without a Markdown library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(?P<title>.*?)(?:\s+#+)?\s*$")
INLINE_LINK = re.compile(
    r"!?\[(?:[^\]\\]|\\.)*\]\(\s*(?:<(?P<angled>[^>]*)>|(?P<target>[^)\s]*))(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(?P<target>[^\s>]+)>?")
CODE_SPAN = re.compile(r"(`+)(?P<code>.+?)\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its text, its lines and the heading above it."""

    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence (the last line when unclosed)
    heading: str  # the nearest heading above it ("" before any)


@dataclass(frozen=True)
class Link:
    """A link's target as written, and the line it is on."""

    target: str
    line: int

    @property
    def is_relative(self) -> bool:
        """A path in the repository (``docs/x.md``, ``#anchor``), not a URL or mail address."""
        return not SCHEME.match(self.target) and not self.target.startswith("//")

    @property
    def path(self) -> str:
        """The file part of the target, without the ``#anchor`` or ``?query``."""
        return re.split(r"[#?]", self.target, maxsplit=1)[0]

    @property
    def anchor(self) -> str:
        """The ``#anchor`` part, without the ``#`` ("" when there is none)."""
        return self.target.partition("#")[2]


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced code block in order, indentation (a block in a list item) removed."""
    blocks: list[Block] = []
    heading = ""
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        opening = FENCE.match(line)
        if opening is None:
            title = HEADING.match(line)
            heading = title["title"] if title else heading
            continue
        fence, indent, start, body = opening["fence"], len(line) - len(line.lstrip()), number, []
        while number < len(lines):
            line = lines[number]
            number += 1
            closing = FENCE.match(line)
            if closing and closing["fence"].startswith(fence) and not closing["info"].strip():
                break
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
        lang = opening["info"].split()[0] if opening["info"].strip() else ""
        blocks.append(Block(lang, "".join(f"{b}\n" for b in body), start, number, heading))
    return blocks


def prose(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced blocks, with their 1-based numbers.

    An example in a block is not a heading or a link to follow.
    """
    inside: set[int] = set()
    for block in fenced_blocks(text):
        inside.update(range(block.line, block.end + 1))
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if n not in inside]


def links(text: str) -> list[Link]:
    """Inline links and images (``[t](x)``, ``![a](x)``) and reference definitions.

    A link split over lines (``[text\\n](x)``) is found on the line of its target;
    code spans are left out, since ``[a](b)`` in backticks is not a link.
    """
    found: list[Link] = []
    for number, line in prose(text):
        plain = CODE_SPAN.sub(lambda m: " " * len(m[0]), line)
        for match in INLINE_LINK.finditer(plain):
            found.append(Link(match["angled"] or match["target"] or "", number))
        definition = REFERENCE_DEFINITION.match(plain)
        if definition:
            found.append(Link(definition["target"], number))
    return found


def code_spans(text: str) -> list[Link]:
    """The inline code spans outside fenced blocks: paths the prose names."""
    return [
        Link(match["code"].strip(), number)
        for number, line in prose(text)
        for match in CODE_SPAN.finditer(line)
    ]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, numbered (``-1``, ``-2``) when a heading repeats, as GitHub does."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in prose(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match["title"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result
