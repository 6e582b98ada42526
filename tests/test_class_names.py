"""No two classes or protocols share a name, in the package or in its tests, so a reader who
finds one by name has found the only one (issue 17: `Inbound`, `EventSink` and `Client` each had
two; the tests had two `FakeSend`, `Note`, `Probe` and `RawPeer`)."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).parent.parent
TREES = ("meshactors", "tests")  # test helpers share one namespace with the package


def test_every_class_name_is_used_once() -> None:
    where = collections.defaultdict(list)
    for tree in TREES:
        for source in sorted((ROOT / tree).rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.ClassDef):
                    where[node.name].append(str(source.relative_to(ROOT)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}
