"""Files a new user reads first: the license pyproject names, docs that stay in the repo."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_license_file_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def _outside_prose(markdown: str) -> str:
    """The text outside fenced code blocks (examples may show other trees' paths)."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def test_design_notes_link_only_inside_the_repository() -> None:
    for doc in (ROOT / "docs" / "design.md", ROOT / "README.md"):
        prose = _outside_prose(doc.read_text())
        assert not re.findall(r"https?://", prose), doc
        for target in re.findall(r"\]\(([^)#]+)\)|`([^`\s]*\.\./[^`\s]*)`", prose):
            path = next(t for t in target if t)
            # Relative to the document or to the repository root, as a reader may take it.
            for base in (doc.parent, ROOT):
                resolved = (base / path).resolve()
                assert resolved.is_relative_to(ROOT), f"{doc.name} points outside: {path}"
