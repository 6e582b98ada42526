"""The op table: each control-socket op's params class, handler and one-line summary.

Ops with a `Merge` are run in order, one request after another, by the connection's in-order
runner; consecutive requests with equal run keys run as one (e.g. one frame and seal for many
channel messages, one store call for many durable sends) and each still gets its own answer,
in order. Other ops run each request in its own task, at once, except that an op `ordered_by`
a key waits for the connection's earlier requests of equal key (a claim or a subscription of
one name) to end.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import structlog

from meshactors.actors import ActorGone, AskTimeout, Turn, unanswered
from meshactors.wire.ipc import ErrorCode, OpError, Request
from meshactors.wire.jsonlimits import bad_json_path
from meshactors.wire.strict import describe_error, make_strict_converter

if TYPE_CHECKING:
    from meshactors.control.session import Session

P = TypeVar("P")

log = structlog.get_logger("meshactors.ops")

converter = make_strict_converter()
_hooks: dict[type[Any], Callable[[Any, type[Any]], Any]] = {}  # one per params class of an op


@attrs.frozen
class NoParams:
    """Params of an op that takes none: any key is rejected."""


@attrs.frozen
class Merge(Generic[P]):
    """How consecutive requests of one op run as one: `item` checks a request's params (an
    OpError answers that request alone) and gives its run key and item, or None to run it
    alone with the op's handler; `run` takes the run's first params and every item, in order,
    and gives the answer all of them share, or with `each` a list of one outcome per item
    (its answer or its OpError), in order."""

    item: Callable[[P], tuple[Hashable, Any] | None]
    run: Callable[[Session, P, list[Any]], Awaitable[Any]]
    each: bool = False


@attrs.frozen
class Op(Generic[P]):
    """One op: validated params of type `params`, answered by `handler`; with `merge` it is
    run in order and consecutive requests may run as one. `command` is the CLI command a user
    reaches it with and `client` the MeshClient method (the op's name unless given);
    tests/test_op_registry.py checks both exist and that docs/protocol.md describes the op.
    An op that `switches` may turn its connection into a binary stream: the connection reads
    no line after it until it is answered. An op that `pushes` delivers events to the
    connection that asks. Both need a JSON-lines connection and are refused on one that takes
    no pushes (HTTP). Over HTTP every op is `POST /v1/<name>`; `http_post` is another POST path
    to it, `http_get` a GET path that runs it with the query string as params (for an op that
    `pushes`, answered with the event stream as server-sent events); with `idempotency_key`
    a POST's Idempotency-Key header fills a missing `client_message_id` and the answer's
    `outcome` picks the status. A `cancellable` op's request that has an id can be stopped
    by that id while in flight (`rpc_cancel{call}`): it then fails with `cancelled`. An op
    `ordered_by` a key of its params runs each request once the connection's earlier requests
    of equal key ended, so the claims and subscriptions it sends take effect in the order sent
    (other requests run meanwhile); an op with `merge` runs in order already."""

    name: str
    params: type[P]
    handler: Callable[[Session, P], Awaitable[Any]]
    summary: str
    merge: Merge[P] | None = None
    command: str = attrs.field(kw_only=True, default="")  # "" only for tests' stand-ins
    client: str = attrs.field(
        kw_only=True, default=attrs.Factory(lambda op: op.name, takes_self=True)
    )
    switches: bool = attrs.field(kw_only=True, default=False)
    pushes: bool = attrs.field(kw_only=True, default=False)
    http_get: str | None = attrs.field(kw_only=True, default=None)
    http_post: str | None = attrs.field(kw_only=True, default=None)
    idempotency_key: bool = attrs.field(kw_only=True, default=False)
    cancellable: bool = attrs.field(kw_only=True, default=False)
    ordered_by: Callable[[P], Hashable] | None = attrs.field(kw_only=True, default=None)

    def refusal_without_pushes(self) -> OpError:
        """Why a connection that takes no pushes (HTTP) cannot run this op that `switches` or
        `pushes`."""
        if self.switches:
            why = "turns its connection into a binary stream: use a JSON-lines connection"
        elif self.http_get is not None:
            why = f"needs a JSON-lines connection; GET {self.http_get}"
        else:
            why = (
                "delivers events to the connection that asks: use a JSON-lines connection "
                "(HTTP requests cannot receive them)"
            )
        return OpError(ErrorCode.BAD_REQUEST, f"{self.name} {why}")

    def structure(self, params: Any) -> P:
        """`params` as this op's params class, by its hook: generated on the op's first request
        (generating every op's at import would delay the daemon's READY), then looked up."""
        hook = _hooks.get(self.params)
        if hook is None:
            hook = _hooks[self.params] = converter.get_structure_hook(self.params)
        structured: P = hook(params, self.params)
        return structured


Outcome = Any  # an answer's data, or the OpError it failed with, or Each


@attrs.frozen
class Each:
    """The outcomes of a run whose requests have one each (`Merge.each`), in request order:
    answered together, so they can leave in one write."""

    outcomes: Sequence[Outcome]


Answer = Callable[[Sequence[Request], Outcome], Awaitable[None]]


@attrs.define
class _Run:
    """Requests of one op with equal run keys, waiting to run as one."""

    op: Op[Any]
    key: Hashable
    params: Any  # the first request's
    requests: list[Request]
    items: list[Any]


@attrs.define
class OpTable:
    """All ops the daemon answers, by name, and the HTTP routes their entries name (to the
    op's name, indexed as the table is built)."""

    ops: dict[str, Op[Any]] = attrs.field(factory=dict)
    get_paths: dict[str, str] = attrs.field(factory=dict)  # GET path → op (`Op.http_get`)
    post_paths: dict[str, str] = attrs.field(factory=dict)  # POST path → op (`Op.http_post`)

    @classmethod
    def of(cls, *groups: Iterable[Op[Any]]) -> OpTable:
        """A table of the given op groups; an op name or HTTP path may appear only once."""
        table = cls()
        for group in groups:
            for op in group:
                if op.name in table.ops:
                    raise ValueError(f"op {op.name!r} defined twice")
                if op.merge is not None and op.ordered_by is not None:
                    raise ValueError(f"op {op.name!r} runs in order already: no ordered_by")
                table.ops[op.name] = op
                routes = ((op.http_get, table.get_paths), (op.http_post, table.post_paths))
                for path, paths in routes:
                    if path is not None and paths.setdefault(path, op.name) != op.name:
                        raise ValueError(f"HTTP path {path!r} given to two ops")
        return table

    def names(self) -> list[str]:
        """Op names, sorted, for the `version` op."""
        return sorted(self.ops)

    def in_order(self, request: Request) -> bool:
        """Whether `request` goes to the connection's in-order runner (`run_in_order`)."""
        op = self.ops.get(request.op)
        return op is not None and op.merge is not None

    def switches(self, request: Request) -> bool:
        """Whether `request` may turn its connection into a binary stream."""
        op = self.ops.get(request.op)
        return op is not None and op.switches

    def validate(self, session: Session, request: Request) -> tuple[Op[Any], Any]:
        """The request's op and its params, validated strictly, for a connection that can
        carry the op (OpError otherwise)."""
        op = self.ops.get(request.op)
        if op is None:
            raise OpError(ErrorCode.UNKNOWN_OP, f"unknown op {request.op!r}")
        bad = bad_json_path(request.params, "params")
        if bad is not None:  # what no store, counter, line or peer could take, refused here
            where, why = bad
            raise OpError(ErrorCode.INVALID_PARAMS, f"{where}: {why.detail}")
        try:
            params = op.structure(request.params)
        except Exception as exc:
            raise OpError(ErrorCode.INVALID_PARAMS, describe_error(exc)) from None
        if (op.pushes or op.switches) and not session.receives_pushes:
            raise op.refusal_without_pushes()
        return op, params

    def begin(self, session: Session, request: Request) -> Awaitable[Any]:
        """Validate the request strictly and start its handler: a handler that is a plain
        function returning an awaitable does its first part now, in the caller's task (so an
        RPC frame leaves without waiting for a new task to run); the rest is the awaitable,
        which the connection's session can stop by the request's id if the op is `cancellable`.
        An op `ordered_by` a key takes its place in the key's line now and starts its handler
        in the awaitable, once the requests begun before it of that key ended: the awaitable
        must be awaited.

        Raises OpError; a handler's bug is logged and becomes `internal`.
        """
        op, params = self.validate(session, request)
        cancel_id = request.id if op.cancellable else None  # rpc_cancel{call} names it
        if cancel_id is not None:
            session.check_cancellable(cancel_id)  # before anything of it is done
        if op.ordered_by is None:
            work = _started(session, op, params)
        else:
            turn = session.turns.turn(op.ordered_by(params))
            work = _in_turn(turn, functools.partial(_started, session, op, params))
        if cancel_id is not None:
            return session.cancellable(cancel_id, work)
        return work

    async def run_in_order(
        self, session: Session, requests: Sequence[Request], answer: Answer
    ) -> None:
        """Run `requests` one after another, merging consecutive ones of equal run key, and
        pass every outcome to `answer` in request order (a run's requests share one, or with
        `Merge.each` get one each, as `Each`)."""
        run: _Run | None = None
        for request in requests:
            try:
                op, params = self.validate(session, request)
                merged = None if op.merge is None else op.merge.item(params)
            except OpError as error:
                await self._finish(session, run, answer)
                run = None
                await answer([request], error)
                continue
            if run is not None and (merged is None or (op.name, merged[0]) != run.key):
                await self._finish(session, run, answer)
                run = None
            if merged is None:
                try:
                    work = _started(session, op, params)
                except OpError as error:
                    await answer([request], error)
                    continue
                await answer([request], await _guarded(session, request.op, work))
            elif run is None:
                run = _Run(op, (op.name, merged[0]), params, [request], [merged[1]])
            else:
                run.requests.append(request)
                run.items.append(merged[1])
        await self._finish(session, run, answer)

    async def _finish(self, session: Session, run: _Run | None, answer: Answer) -> None:
        """Run a pending run, if any, and answer its requests."""
        if run is None:
            return
        assert run.op.merge is not None
        work = run.op.merge.run(session, run.params, run.items)
        outcome = await _guarded(session, run.op.name, work)
        if run.op.merge.each and not isinstance(outcome, OpError):
            outcome = Each(outcome)
        await answer(run.requests, outcome)


async def _in_turn(turn: Turn[Hashable], start: Callable[[], Awaitable[Any]]) -> Any:
    """What `start()` begins, begun once `turn` came, and awaited before the turn ends."""
    async with turn:
        return await start()


def _started(session: Session, op: Op[P], params: P) -> Awaitable[Any]:
    """`op`'s handler called (see OpTable.begin); raises OpError."""
    try:
        return op.handler(session, params)
    except OpError:
        raise
    except Exception as exc:
        raise _internal(session, op.name, exc) from None


async def _guarded(session: Session, op: str, work: Awaitable[Any]) -> Outcome:
    """The result of `work`, or the OpError it raised; a handler's bug becomes `internal`."""
    try:
        return await work
    except Exception as exc:
        return as_op_error(session, op, exc)


def as_op_error(session: Session, op: str, error: Exception) -> OpError:
    """The error to answer `op` with: an OpError as it is; an actor the op asked that is
    down (restarting) or did not answer in time, `unavailable` or `timeout`; anything else is
    a handler's bug, logged, and answered as `internal`."""
    if isinstance(error, OpError):
        return error
    if isinstance(error, ActorGone | AskTimeout):
        return unanswered(error)
    return _internal(session, op, error)


def _internal(session: Session, op: str, bug: Exception) -> OpError:
    """Log a handler's bug; the `internal` error its request is answered with."""
    log.error("op failed", op=op, client=session.client_id, exc_info=bug)
    return OpError(ErrorCode.INTERNAL, f"{op} failed: {bug!r}")


async def finish(session: Session, request: Request, work: Awaitable[Any]) -> Any:
    """The answer of a begun request (see OpTable.begin); raises OpError."""
    outcome = await _guarded(session, request.op, work)
    if isinstance(outcome, OpError):
        raise outcome
    return outcome


async def run_request(session: Session, request: Request) -> Any:
    """Begin and finish `request` on the session's op table; raises OpError."""
    return await finish(session, request, session.services.ops.begin(session, request))


def unstructure(value: Any) -> Any:
    """Answer data as JSON-ready values (attrs instances become objects)."""
    return converter.unstructure(value)
