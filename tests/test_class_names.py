"""No two classes or protocols share a name, in the package or in its tests, and no two
constants of the package share a name with different values, so a reader who finds one by name
has found the only one (issue 17: `Inbound`, `EventSink` and `Client` each had
two; the tests had two `FakeSend`, `Note`, `Probe` and `RawPeer`)."""

from __future__ import annotations

import ast
import collections
import importlib
import re
from collections.abc import Iterator
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


CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
VALUES = (bool, int, float, str, bytes)  # what a limit or a name is; tables and enums are not


def constants(source: Path) -> Iterator[tuple[str, str, object]]:
    """(module, name, value) of each constant `source` assigns at module level."""
    parts = source.relative_to(ROOT).with_suffix("").parts
    module = importlib.import_module(
        ".".join(parts[:-1] if source.name == "__init__.py" else parts)
    )
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and CONSTANT.match(target.id):
                value = getattr(module, target.id)
                if isinstance(value, VALUES):
                    yield module.__name__, target.id, value


def test_a_constant_name_has_one_value_in_the_package() -> None:
    """Two modules may define the same constant only with the same value: the limit tables of
    docs/ cite a limit by name, and `MAX_NAME_CHARS` once meant 128 in one module, 64 in another."""
    values: dict[str, dict[str, object]] = collections.defaultdict(dict)
    for source in sorted((ROOT / "meshactors").rglob("*.py")):
        if source.name != "__main__.py":  # importing it runs the CLI
            for module, name, value in constants(source):
                values[name][module] = value
    clashes = {
        name: by_module
        for name, by_module in values.items()
        if len({repr(value) for value in by_module.values()}) > 1
    }
    assert clashes == {}
