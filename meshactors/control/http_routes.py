"""HTTP routes onto the op table: GET conveniences with typed query strings, POST for every op.

Routes never name an op's params or an op: the op table gives each op's GET and POST paths
(`Op.http_get`, `Op.http_post`); a GET route's query values are converted to the types the
op's params class declares, then validated as strictly as a JSON-lines request.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Container, Sequence
from typing import Any, Union

import attrs

from meshactors.control.event_stream import check_since
from meshactors.control.http_errors import HttpError, HttpErrorCode
from meshactors.control.http_parse import RequestHead, query_pairs
from meshactors.control.http_response import HttpResponse, error_response, ok_response
from meshactors.control.session import Session
from meshactors.ops.optable import Op, OpTable, converter, run_request
from meshactors.wire.ipc import ErrorCode, OpError, Request, read_json_object
from meshactors.wire.strict import describe_error

HEALTH_PATH = "/v1/health"
OP_PATH = re.compile(r"/v1/([a-z][a-z0-9_]{0,63})")  # POST /v1/<op>
IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENCY_FIELD = "client_message_id"  # a body value wins over the header
SEND_STATUS = {"accepted": 202, "duplicate": 200}  # outcome → status (`Op.idempotency_key`)
TRUE_WORDS = frozenset({"1", "true"})  # query values read as a boolean true
FALSE_WORDS = frozenset({"0", "false"})
# query values read as an integer: a sign, leading zeros (no digits of it), and its digits
INT_QUERY = re.compile(r"(-?)0*([0-9]{1,19})")
# query values of an integer field with more significant digits than any 64-bit integer has:
# out of range, refused so, never parsed (an int of thousands of digits is slow, or refused)
LONG_INT_QUERY = re.compile(r"-?0*[1-9][0-9]{19,}")


@attrs.frozen
class EventStreamAnswer:
    """Route outcome: answer with server-sent events, replaying the log after `since`."""

    since: int | None


async def route(
    head: RequestHead, body: bytes, session: Session, request_id: int
) -> HttpResponse | EventStreamAnswer:
    """Answer one request; every failure becomes a JSON error response."""
    try:
        return await _route(head, body, session, request_id)
    except (OpError, HttpError) as error:
        return error_response(error)


async def _route(
    head: RequestHead, body: bytes, session: Session, request_id: int
) -> HttpResponse | EventStreamAnswer:
    table = session.services.ops
    allowed = allowed_methods(head.path, table)
    if not allowed:
        raise HttpError(HttpErrorCode.UNKNOWN_ROUTE, f"no route {head.path}")
    if head.method not in allowed:
        raise HttpError(
            HttpErrorCode.METHOD_NOT_ALLOWED,
            f"{head.path} answers {', '.join(sorted(allowed))}, not {head.method}",
            headers=(("Allow", ", ".join(sorted(allowed))),),
        )
    if head.method in ("GET", "HEAD"):  # HEAD is routed as GET; its answer has no body
        return await _get(head, session, request_id)
    if head.query:
        raise OpError(ErrorCode.BAD_REQUEST, "POST takes params in the JSON body, not the query")
    name = table.post_paths.get(head.path) or _op_in_path(head.path, table.ops)
    assert name is not None  # allowed_methods checked it
    return await _post(table.ops[name], head, json_object(body), session, request_id)


def allowed_methods(path: str, table: OpTable) -> frozenset[str]:
    """The methods `path` answers, given the op table (empty: no such route)."""
    methods = set()
    if path == HEALTH_PATH or path in table.get_paths:
        methods |= {"GET", "HEAD"}
    if path in table.post_paths or _op_in_path(path, table.ops) is not None:
        methods.add("POST")
    return frozenset(methods)


def _op_in_path(path: str, ops: Container[str]) -> str | None:
    """The op `POST path` runs: `/v1/<op>` for an op in the table."""
    match = OP_PATH.fullmatch(path)
    return match.group(1) if match and match.group(1) in ops else None


async def _get(
    head: RequestHead, session: Session, request_id: int
) -> HttpResponse | EventStreamAnswer:
    query = query_pairs(head.query)
    if head.path == HEALTH_PATH:
        structure_query(query, _NoQuery)
        services = session.services
        return ok_response(
            {"status": "ok", "version": services.version, "uptime_s": round(services.uptime(), 3)}
        )
    table = session.services.ops
    name = table.get_paths[head.path]  # allowed_methods checked it
    op = table.ops[name]  # the table names only its own ops' paths, and never drops an op
    if op.pushes:  # events_subscribe: the event stream as server-sent events
        since = structure_query(query, op.params).since
        last_event_id = head.headers.get("last-event-id")
        if last_event_id is not None:  # a reconnecting EventSource: the header wins
            since = query_int(last_event_id)
            if since is None:
                raise OpError(ErrorCode.INVALID_PARAMS, "Last-Event-ID must be an event id")
        check_since(since)
        return EventStreamAnswer(since)
    params = query_params(query, op.params)
    return ok_response(await run_request(session, Request(request_id, name, params)))


@attrs.frozen
class _NoQuery:
    """A route that takes no query parameters."""


async def _post(
    op: Op[Any], head: RequestHead, params: dict[str, Any], session: Session, request_id: int
) -> HttpResponse:
    if op.idempotency_key and IDEMPOTENCY_HEADER in head.headers:
        params.setdefault(IDEMPOTENCY_FIELD, head.headers[IDEMPOTENCY_HEADER])
    data = await run_request(session, Request(request_id, op.name, params))
    outcome = data.get("outcome") if op.idempotency_key and isinstance(data, dict) else None
    return ok_response(data, SEND_STATUS.get(outcome, 200) if isinstance(outcome, str) else 200)


def json_object(body: bytes) -> dict[str, Any]:
    """A POST body as op params: a JSON object, or {} for an empty body; read as the same JSON
    line is (strictly UTF-8, `bad_json` saying why otherwise)."""
    if not body.strip():
        return {}
    return read_json_object(body, "the body")


def query_params(query: Sequence[tuple[str, str]], params_type: type) -> dict[str, Any]:
    """Query pairs as params of `params_type`, each value converted to its field's type."""
    try:
        hints = typing.get_type_hints(params_type)
    except (NameError, TypeError):
        hints = {}
    params: dict[str, Any] = {}
    for key, value in query:
        if key in params:
            raise OpError(ErrorCode.INVALID_PARAMS, f"query parameter {key!r} given twice")
        params[key] = _convert(key, value, hints.get(key))
    return params


def structure_query(query: Sequence[tuple[str, str]], params_type: type[Any]) -> Any:
    """Query pairs converted and strictly validated as a `params_type` instance."""
    try:
        return converter.structure(query_params(query, params_type), params_type)
    except OpError:
        raise
    except Exception as exc:
        raise OpError(ErrorCode.INVALID_PARAMS, describe_error(exc)) from None


def _convert(key: str, value: str, hint: Any) -> Any:
    """A query string as the field type wants it; left a string when it does not fit (so the
    strict validation names the field). An integer too long for 64 bits is refused here, as
    out of range, rather than as a string."""
    target = _without_none(hint)
    if target is bool:
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
    elif target is int:
        if (whole := query_int(value)) is not None:
            return whole
        if LONG_INT_QUERY.fullmatch(value):
            message = f"params.{key}: out of range, an integer beyond 64 bits"
            raise OpError(ErrorCode.INVALID_PARAMS, message)
    elif target is float:
        try:
            number = float(value)
        except ValueError:
            return value
        if math.isfinite(number):
            return number
    return value


def query_int(value: str) -> int | None:
    """`value` as an integer of at most 19 digits past any leading zeros (so `007` is 7), or
    None; only those digits are parsed, however many zeros lead them."""
    match = INT_QUERY.fullmatch(value)
    return None if match is None else int(match[1] + match[2])


def _without_none(hint: Any) -> Any:
    """`X` for `X | None` (or Optional[X]); the hint itself otherwise."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint
