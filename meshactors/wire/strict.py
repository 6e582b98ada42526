"""A cattrs converter for untrusted input: no coercion, no unknown keys, readable errors."""

from __future__ import annotations

from typing import Any, TypeVar, get_args, get_origin

import cattrs

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


def make_strict_converter() -> cattrs.Converter:
    """A converter that rejects extra keys and never turns "12" into 12 or 1 into True."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _exact(int, "integer"))
    converter.register_structure_hook(str, _exact(str, "string"))
    converter.register_structure_hook(bool, _exact(bool, "boolean"))
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_object)
    _strict_lists(converter)
    return converter


def describe_error(exc: Exception) -> str:
    """One line naming every field that failed and why."""
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path="params"))
    return str(exc)
