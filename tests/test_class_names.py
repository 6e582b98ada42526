"""No two classes or protocols in the package share a name, so a reader who finds one by name
has found the only one (issue 17: `Inbound`, `EventSink` and `Client` each had two)."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "meshactors"


def test_every_class_name_is_used_once() -> None:
    where = collections.defaultdict(list)
    for source in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(source.relative_to(PACKAGE.parent)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}
