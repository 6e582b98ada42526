"""Who serves which method on one network: a sans-IO table that `rpc` owns and tests drive
without sockets or tasks. The last claim wins; the caller tells whoever it displaced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

from meshactors.wire.ipc import ErrorCode, OpError

MAX_CLAIMS = 1024  # methods claimed per network

Owner = TypeVar("Owner")  # the owner of a claim: a connection, compared by identity


@attrs.define(eq=False)
class Claim(Generic[Owner]):
    """Who owns a method, and how it answers: False once, True with a stream, "binary"
    with a binary stream."""

    owner: Owner
    streaming: bool | str


@attrs.define(eq=False)
class ClaimTable(Generic[Owner]):
    """Method → claim, at most `limit` methods; owners are compared by identity."""

    limit: int = MAX_CLAIMS
    _claims: dict[str, Claim[Owner]] = attrs.field(factory=dict, init=False)

    def claim(self, owner: Owner, method: str, streaming: bool | str) -> Owner | None:
        """Give `method` to `owner`; returns the other owner it displaced, if any (OpError
        conflict when a new method would pass the limit)."""
        previous = self._claims.get(method)
        if previous is None and len(self._claims) >= self.limit:
            raise OpError(ErrorCode.CONFLICT, f"at most {self.limit} methods per network")
        self._claims[method] = Claim(owner, streaming)
        if previous is None or previous.owner is owner:
            return None
        return previous.owner

    def release(self, owner: Owner, method: str) -> bool:
        """Give up `owner`'s claim on `method`; False when it held none."""
        claim = self._claims.get(method)
        if claim is None or claim.owner is not owner:
            return False
        del self._claims[method]
        return True

    def get(self, method: str) -> Claim[Owner] | None:
        """The claim on `method`, if any."""
        return self._claims.get(method)

    def methods_of(self, owner: Owner) -> list[str]:
        """Methods `owner` holds, in the order claimed."""
        return [method for method, claim in self._claims.items() if claim.owner is owner]

    def full_for(self, method: str) -> bool:
        """Whether claiming `method` would pass the limit (it is new and the table is full)."""
        return method not in self._claims and len(self._claims) >= self.limit

    def drop_owners(self, which: Callable[[Owner], bool]) -> list[str]:
        """Release every claim of the owners `which` picks (they went away); returns the
        methods released."""
        methods = [method for method, claim in self._claims.items() if which(claim.owner)]
        for method in methods:
            del self._claims[method]
        return methods

    def clear(self) -> list[tuple[str, Claim[Owner]]]:
        """Release every claim; returns what was held, so the owners can be told."""
        held = list(self._claims.items())
        self._claims.clear()
        return held

    def items(self) -> list[tuple[str, Claim[Owner]]]:
        """Every (method, claim), in the order claimed."""
        return list(self._claims.items())

    def __len__(self) -> int:
        return len(self._claims)
