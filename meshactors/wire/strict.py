"""A cattrs converter for untrusted input: no coercion, no unknown keys, readable errors.

Flat attrs classes (every field a string, integer, boolean, JSON value, list of JSON values,
or optional of one of those or of an attrs class) get a lean hook: well-formed input is
checked by exact type in one loop and passed to the class, which runs its validators; anything
that fails a check goes to cattrs' own hook, so errors read the same. Unstructuring them takes their
fields as they are (cattrs copies every list, item by item): a channel run's payloads are not
copied once per frame.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any, TypeVar, Union, get_args, get_origin

import attrs
import cattrs
import cattrs.v

T = TypeVar("T")


def _exact(kind: type, name: str) -> Any:
    def structure(value: object, _: type) -> object:
        if type(value) is not kind:
            raise TypeError(f"expected {name}, got {_json_type(value)}")
        return value

    return structure


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected number, got {_json_type(value)}")
    return float(value)


def _structure_object(value: object, _: type) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise TypeError(f"expected object, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


def _strict_lists(converter: cattrs.Converter) -> None:
    """Only a JSON array structures as a list (cattrs would split a string into characters)."""

    def structure(value: object, list_type: Any) -> list[Any]:
        if not isinstance(value, list):
            raise TypeError(f"expected array, got {_json_type(value)}")
        (item_type,) = get_args(list_type) or (Any,)
        return [converter.structure(item, item_type) for item in value]

    def is_list(type_: Any) -> bool:
        return get_origin(type_) is list

    converter.register_structure_hook_func(is_list, structure)


class _OnlyNone:
    """The exact type of no JSON value: an optional attrs-class field takes only None fast."""


FieldCheck = tuple[type | None, bool]  # (exact type, or None for any value; None allowed too)


def _field_check(field_type: Any) -> FieldCheck | None:
    """How the lean hook checks a field of this type; None when it cannot."""
    if field_type is Any:
        return None, True
    if field_type in (str, int, bool, list, list[Any]):  # a list's items: any JSON value
        return list if field_type == list[Any] else field_type, False
    args = get_args(field_type)
    if get_origin(field_type) in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        (inner,) = [arg for arg in args if arg is not type(None)]
        check = _field_check(inner)
        if check is not None and check[0] is not None:
            return check[0], True
        if attrs.has(inner):
            return _OnlyNone, True
    return None


@functools.cache
def _field_checks(cls: type) -> dict[str, FieldCheck] | None:
    """Each init field's check, when the lean hooks can take the attrs class (else None);
    worked out once per class, for both hook factories."""
    attrs.resolve_types(cls)
    checks: dict[str, FieldCheck] = {}
    for field in attrs.fields(cls):
        check = _field_check(field.type)
        if check is None or not field.init or field.alias != field.name:
            return None
        checks[field.name] = check
    return checks


def _is_flat(cls: Any) -> bool:
    """Whether the lean hooks take `cls`: an attrs class whose every field they can check."""
    return attrs.has(cls) and _field_checks(cls) is not None


def _lean_hook(converter: cattrs.Converter, cls: type) -> Callable[[Any, type], Any]:
    """A structure hook for a flat attrs class: exact type checks, then the class itself;
    whatever fails goes through cattrs' hook, which raises the error it always raised."""
    checks = _field_checks(cls)
    assert checks is not None
    required = frozenset(f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING)
    allowed = frozenset(checks)
    explain: Callable[[Any, type], Any] = converter.gen_structure_attrs_fromdict(cls)

    def structure(value: Any, type_: type) -> Any:
        if type(value) is dict and value.keys() <= allowed and required <= value.keys():
            for key, item in value.items():
                kind, optional = checks[key]
                if not (kind is None or type(item) is kind or (item is None and optional)):
                    break
            else:
                try:
                    return cls(**value)
                except (TypeError, ValueError):
                    pass  # a validator said no: cattrs says it again, in its words
        return explain(value, type_)

    return structure


def _lean_unstructure(converter: cattrs.Converter, cls: type) -> Callable[[Any], dict[str, Any]]:
    """An unstructure hook for a flat attrs class: its fields as they are, in order (JSON
    values need no copy, where cattrs copies every list), a nested attrs value through the
    converter."""
    checks = _field_checks(cls)
    assert checks is not None
    names = tuple(checks)
    nested = tuple(name for name, (kind, _) in checks.items() if kind is _OnlyNone)

    def unstructure(value: Any) -> dict[str, Any]:
        data = {name: getattr(value, name) for name in names}
        for name in nested:
            if data[name] is not None:
                data[name] = converter.unstructure(data[name])
        return data

    return unstructure


def make_strict_converter() -> cattrs.Converter:
    """A converter that rejects extra keys and never turns "12" into 12 or 1 into True."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _exact(int, "integer"))
    converter.register_structure_hook(str, _exact(str, "string"))
    converter.register_structure_hook(bool, _exact(bool, "boolean"))
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_object)
    _strict_lists(converter)
    converter.register_structure_hook_factory(_is_flat, lambda cls: _lean_hook(converter, cls))
    converter.register_unstructure_hook_factory(
        _is_flat, lambda cls: _lean_unstructure(converter, cls)
    )
    return converter


def describe_error(exc: Exception) -> str:
    """One line naming every field that failed and why, in JSON's words (never a Python type
    name: `expected an object or null`, not `expected dict[str, typing.Any] | None`)."""
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path="params", format_exception=_in_json))
    return str(exc)


def _in_json(exc: BaseException, expected: Any) -> str:
    """cattrs' message for one field, with the expected type named as JSON names it."""
    if isinstance(exc, TypeError | ValueError) and expected is not None:
        _, got, found = str(exc).partition(", got ")  # the strict hooks name what came
        return f"expected {_json_kind(expected)}" + (f", got {found}" if got else "")
    return cattrs.v.format_exception(exc, expected)


_JSON_KINDS = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
    list: "an array",
    type(None): "null",
}


def _json_kind(type_: Any) -> str:
    """What JSON value a field of `type_` takes, in words."""
    if type_ is Any:
        return "any JSON value"
    origin = get_origin(type_)
    if origin in (Union, types.UnionType):
        return " or ".join(_json_kind(arg) for arg in get_args(type_))
    if attrs.has(type_) or origin is dict:
        return "an object"
    if origin is list:
        return "an array"
    return _JSON_KINDS.get(type_, "a valid value")
