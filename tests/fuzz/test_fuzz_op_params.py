"""Generated params for every op in the op table, hostile values among plausible ones, at one
live daemon: no answer is `internal` (a value that would fail later is refused where it
enters), every error code is documented, and no actor restarts."""

from __future__ import annotations

import itertools
import json
import types
import typing
from typing import Any

import attrs
from hypothesis import strategies as st

from meshactors.daemon.main import build_ops
from meshactors.daemon.services import Services
from meshactors.wire.ipc import ErrorCode
from tests.fuzz.conftest import examples_of
from tests.fuzz.strategies import hostile_json, odd_text
from tests.ops.test_message_ops import NET, joined, new_device
from tests.support import LineClient

DOCUMENTED = {code.value for code in ErrorCode} - {ErrorCode.INTERNAL.value}
OPS = build_ops().ops
SPARED = {"shutdown"}  # it would end the run; NoParams refuses any key like status does
PLAUSIBLE_TEXT = [NET, new_device(), "c", "m", "@all", "idle", "now", "ws://127.0.0.1:9/v1"]


def of_type(type_: Any) -> st.SearchStrategy[Any]:
    """Values of the JSON type `type_` asks for, mostly, hostile ones included: strings with
    lone surrogates, integers beyond 64 bits, floats that are not finite."""
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if type_ is str:
        return st.sampled_from(PLAUSIBLE_TEXT) | odd_text
    if type_ is int:
        return st.integers(-2, 600) | st.integers() | st.integers(min_value=2**63)
    if type_ is float:
        return st.floats()
    if type_ is bool:
        return st.booleans()
    if origin is typing.Literal:
        return st.sampled_from(args) | odd_text
    if origin in (types.UnionType, typing.Union):
        return st.one_of([of_type(arg) for arg in args])
    if type_ is type(None):
        return st.none()
    if origin is list:
        return st.lists(of_type(args[0]) if args else hostile_json, max_size=3)
    if attrs.has(type_):
        return params_of(type_)
    return hostile_json  # Any, dict[str, Any]: any JSON at all


def params_of(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """An object for the attrs class `cls`: some of its keys (now and then an unknown one),
    each of its field's type, or once in a while any JSON."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: of_type(hints[field.name]) | hostile_json for field in attrs.fields(cls)}
    return st.fixed_dictionaries({}, optional={**fields, "unknown_key": hostile_json})


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """An op of the table (but `shutdown`) and params generated from its params class."""
    op = draw(st.sampled_from(sorted(set(OPS) - SPARED)))
    params = OPS[op].params
    return op, draw(params_of(params) if attrs.has(params) else st.just({}))


async def test_no_op_answers_internal_for_any_params(daemon: Services, connect: Any) -> None:
    client: LineClient = await joined(connect)
    drawn = await examples_of(requests())
    ids = itertools.count(1_000)
    for op, params in drawn:
        request_id = next(ids)
        line = json.dumps({"id": request_id, "op": op, **params}).encode() + b"\n"
        await client.send_raw(line)
        while (frame := await client.frame()).get("id") != request_id:
            pass  # events (from an events_subscribe drawn earlier)
        if not frame["ok"]:
            assert frame["error"]["code"] in DOCUMENTED, (op, params, frame)
    assert (await client.call("status"))["ok"] is True
    assert restarted(daemon.tree) == []


def restarted(node: Any, path: str = "daemon") -> list[str]:
    """Paths of the actors in the tree that restarted at least once."""
    own = [path] if node.restarts else []
    return own + [p for name, c in node.children.items() for p in restarted(c, f"{path}/{name}")]
