"""The strict converter's lean hook for flat attrs classes: same results and same errors as
cattrs' own hook, whichever path a value takes."""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
import pytest

from meshactors.wire.strict import describe_error, make_strict_converter


def _nonempty(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


@attrs.frozen
class Inner:
    code: str


@attrs.frozen
class Flat:
    name: str = attrs.field(validator=_nonempty)
    count: int
    on: bool
    value: Any = None
    note: str | None = None
    items: list[Any] | None = None
    inner: Inner | None = None


@attrs.frozen
class Nested:
    inner: Inner


converter = make_strict_converter()


def _reference(value: Any, cls: type) -> Any:
    """cattrs' generated hook, which the lean one must agree with."""
    return converter.gen_structure_attrs_fromdict(cls)(value, cls)


def _outcome(structure: Any, value: Any) -> object:
    try:
        return structure(value, Flat)
    except Exception as exc:
        return describe_error(exc)


def test_flat_classes_get_the_lean_hook_and_others_keep_cattrs() -> None:
    assert converter.get_structure_hook(Flat).__qualname__.startswith("_lean_hook")
    assert not converter.get_structure_hook(Nested).__qualname__.startswith("_lean_hook")


@pytest.mark.parametrize(
    "value",
    [
        {"name": "a", "count": 1, "on": True},
        {"name": "a", "count": 1, "on": False, "value": {"x": [1]}, "note": None, "items": [1]},
        {"name": "a", "count": 1, "on": True, "inner": {"code": "c"}},  # nested: cattrs' path
        {"name": "a", "count": True, "on": True},  # a boolean is not an integer
        {"name": "a", "count": 1, "on": 1},  # nor an integer a boolean
        {"name": 5, "count": 1, "on": True},
        {"name": None, "count": 1, "on": True},
        {"name": "a", "count": 1},
        {"name": "a", "count": 1, "on": True, "extra": 1},
        {"name": "", "count": 1, "on": True},  # the class's validator says no
        {"name": "a", "count": 1, "on": True, "items": "abc"},
        {"name": "a", "count": 1, "on": True, "inner": "c"},
        ["name", "count"],
        None,
    ],
)
def test_the_lean_hook_agrees_with_cattrs(value: Any) -> None:
    assert _outcome(converter.structure, value) == _outcome(_reference, value)


def test_a_failure_still_names_the_field() -> None:
    with pytest.raises(cattrs.ClassValidationError) as failed:
        converter.structure({"name": "a", "count": "1", "on": True}, Flat)
    assert describe_error(failed.value) == "expected an integer, got string @ params.count"


@attrs.frozen
class WithMeta:
    meta: dict[str, Any] | None = None
    at: int | None = None


def test_a_failure_names_json_types_never_python_ones() -> None:
    with pytest.raises(cattrs.ClassValidationError) as failed:
        converter.structure({"meta": [1], "at": "now"}, WithMeta)
    said = describe_error(failed.value)
    assert "expected an object or null, got array @ params.meta" in said
    assert "expected an integer or null, got string @ params.at" in said
    assert "typing" not in said and "dict[" not in said and "None" not in said


@attrs.frozen
class Tagged:
    tags: list[str]


def test_a_list_of_typed_items_keeps_cattrs_checking_each_item() -> None:
    assert not converter.get_structure_hook(Tagged).__qualname__.startswith("_lean_hook")
    with pytest.raises(cattrs.ClassValidationError):
        converter.structure({"tags": ["a", 1]}, Tagged)


@pytest.mark.parametrize(
    "value",
    [
        Flat("a", 1, True),
        Flat("a", 2, False, {"x": [1, {"y": None}]}, "n", [1, "two"], Inner("c")),
    ],
)
def test_flat_classes_unstructure_as_cattrs_would(value: Flat) -> None:
    reference = cattrs.Converter().gen_unstructure_attrs_fromdict(Flat)(value)
    unstructured = converter.unstructure(value)
    assert unstructured == reference
    assert list(unstructured) == list(reference)  # the same key order too
    assert converter.get_unstructure_hook(Flat).__qualname__.startswith("_lean_unstructure")
