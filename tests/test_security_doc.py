"""docs/security.md names the test covering each threat: every name must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `test_file.py::test_name`, or `::test_name` meaning the file last named before it.
_REFERENCE_RE = re.compile(r"`(test_\w+\.py)?(?:::(test_\w+))?`")


def _tests_in(file: str) -> set[str]:
    tree = ast.parse((ROOT / "tests" / file).read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_every_test_named_in_the_security_doc_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    named: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        current: str | None = None  # `::name` refers to the file named before it on the row
        for file, test in _REFERENCE_RE.findall(line):
            current = file or current
            assert current is not None, f"`::{test}` names no file on its row: {line}"
            named.append((current, test or None))
    assert len(named) > 40
    for file, test in named:
        assert (ROOT / "tests" / file).is_file(), file
        if test:
            assert test in _tests_in(file), f"{file}::{test} named in docs/security.md"
