"""Why a broker link is down, in a few kinds a user can act on, and what the link does about
each: a kind that retrying can heal (a broker restarting, a network blip) is retried with the
usual backoff; one that cannot (a wrong path, a rejected hello) waits the longest backoff."""

from __future__ import annotations

import enum
import socket
import ssl
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs
import trio

from meshactors.wire.broker import REJECT_CLOSE_CODES

if TYPE_CHECKING:
    from trio_websocket import ConnectionClosed

MAX_REASON_CHARS = 200  # a reason is one short line: in `network list`, events and logs


class LinkErrorKind(enum.StrEnum):
    """The kinds of link failure, each with its own advice in docs/operations.md."""

    REFUSED = "refused"  # nothing listens on the host and port
    NOT_FOUND = "not_found"  # an HTTP answer other than the upgrade, e.g. 404 on the path
    BUSY = "busy"  # an HTTP 5xx answer: the broker (or its proxy) is overloaded, e.g. full
    DNS = "dns"  # the host name does not resolve
    TLS = "tls"  # the TLS handshake failed (wss:// to a plain port, a bad certificate)
    TIMEOUT = "timeout"  # a step of connecting, the welcome, a pong or a send not in time
    REJECTED = "rejected"  # the broker refused our hello, with its reason
    CLOSED = "closed"  # an established connection closed or broke
    PROTOCOL = "protocol"  # the broker said something we cannot read
    OTHER = "other"  # any other OS error


UNHEALABLE = frozenset({LinkErrorKind.NOT_FOUND, LinkErrorKind.REJECTED})


@attrs.frozen
class LinkError:
    """One classified failure: its kind and a one-line reason."""

    kind: LinkErrorKind
    reason: str

    @property
    def heals_by_retrying(self) -> bool:
        return self.kind not in UNHEALABLE

    def view(self) -> dict[str, str]:
        """As `networks_list`, `inspect` and the `network_link_error` event show it."""
        return {"kind": self.kind.value, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.reason}"


def classify(error: BaseException, url: str, *, welcomed: bool) -> LinkError:
    """The kind of `error`, raised while connecting to `url` or while the link was up."""
    # Imported here, not at the top: the link imports it only once it connects (cold start).
    from trio_websocket import (
        ConnectionClosed,
        ConnectionRejected,
        ConnectionTimeout,
        HandshakeError,
    )
    from wsproto.utilities import LocalProtocolError

    if isinstance(error, ConnectionRejected):
        return _rejected(error.status_code, urlsplit(url).path or "/")
    if isinstance(error, ConnectionTimeout):
        return _error(LinkErrorKind.TIMEOUT, str(error) or "no WebSocket upgrade in time")
    if isinstance(error, trio.TooSlowError):
        return _error(LinkErrorKind.TIMEOUT, "the broker sent no welcome in time")
    if isinstance(error, ConnectionClosed):
        return _closed(error, welcomed=welcomed)
    if isinstance(error, LocalProtocolError):  # python-trio/trio-websocket#184
        return _error(LinkErrorKind.CLOSED, "the connection closed as a ping came in")
    if isinstance(error, HandshakeError):
        return _os_error(error.__cause__ or error.__context__, url)
    if isinstance(error, OSError):
        return _os_error(error, url)
    return _error(LinkErrorKind.PROTOCOL, str(error) or type(error).__name__)


def _rejected(status: int, path: str) -> LinkError:
    """An HTTP answer instead of the upgrade: a 5xx is an overloaded broker (503 at its
    connection limit) that room later heals; anything else a wrong path that it does not."""
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        why = f"the broker answered HTTP {status} for {path}: it is overloaded, retrying"
        return _error(LinkErrorKind.BUSY, why)
    return _error(LinkErrorKind.NOT_FOUND, f"the broker answered HTTP {status} for {path}")


def _closed(error: ConnectionClosed, *, welcomed: bool) -> LinkError:
    reason = error.reason
    code = getattr(reason, "code", None)
    text = getattr(reason, "reason", None) or getattr(reason, "name", None) or "no reason"
    if not welcomed and code in REJECT_CLOSE_CODES.values():
        return _error(LinkErrorKind.REJECTED, f"the broker refused our hello: {text} ({code})")
    return _error(LinkErrorKind.CLOSED, f"the connection closed: {text} ({code})")


def _os_error(error: BaseException | None, url: str) -> LinkError:
    host = urlsplit(url).netloc
    error = _first_cause(error)
    if isinstance(error, socket.gaierror):
        return _error(LinkErrorKind.DNS, f"{urlsplit(url).hostname} does not resolve")
    if isinstance(error, ConnectionRefusedError):
        return _error(LinkErrorKind.REFUSED, f"nothing listens on {host}")
    if isinstance(error, ssl.SSLError):  # ssl.CertificateError is one
        return _error(LinkErrorKind.TLS, f"TLS with {host} failed: {_tls_failure(error)}")
    if isinstance(error, OSError):
        return _error(LinkErrorKind.OTHER, f"{host}: {error.strerror or error}")
    return _error(LinkErrorKind.OTHER, f"{host}: {error or 'handshake failed'}")


def _first_cause(error: BaseException | None) -> BaseException | None:
    """The OS's or TLS's own error under trio's: under "all attempts to connect … failed" (its
    cause a group of one error per address tried), under the BrokenResourceError of a failed
    TLS handshake (its cause the SSL or socket error); else `error`."""
    cause = error.__cause__ if error is not None else None
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return cause.exceptions[0]
    if isinstance(error, trio.BrokenResourceError) and cause is not None:
        return cause
    return error


def _tls_failure(error: ssl.SSLError) -> str:
    """What went wrong in the handshake, in words: OpenSSL's codes name neither a plain port
    nor which check the certificate failed."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its certificate was refused: {error.verify_message}"
    if error.reason == "WRONG_VERSION_NUMBER":  # an HTTP answer read as a TLS record
        return "it does not speak TLS (a wss:// URL to a plain ws:// port?)"
    if isinstance(error, ssl.SSLEOFError):  # a proxy with no backend, a server going down
        return "it closed the connection during the handshake"
    return f"{error.library or 'SSL'} error {error.reason}" if error.reason else str(error)


def _error(kind: LinkErrorKind, reason: str) -> LinkError:
    one_line = " ".join(reason.split())
    return LinkError(kind, one_line[:MAX_REASON_CHARS])
