"""Providers never import each other (the guide's rule): what two networks share lives in
a common module (``telephony_edge/tokens.py``, ``rate_limit.py``, ``wsleg.py``, ``calls/``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "telephony_edge"
PROVIDERS = ("twilio", "vonage", "sip", "webrtc")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports in functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_imports_no_other_provider(provider: str) -> None:
    others = tuple(f"telephony_edge.{p}" for p in PROVIDERS if p != provider)
    found = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in sorted((PACKAGE / provider).rglob("*.py"))
        for name in imported(path)
        if name in others or name.startswith(tuple(o + "." for o in others))
    }
    assert not found, sorted(found)
