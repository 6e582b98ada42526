"""`broker --cluster URL` refuses a URL the link could not use as written (exit 2, naming
`--cluster`, never a traceback) before anything starts; one it accepts, coredis reads as
written: the host, the port (6379 if none) and the database of its path (0 if none)."""

from __future__ import annotations

import contextlib
import io
import urllib.parse

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshactors.broker.cluster import redis_client
from meshactors.broker.server import Broker
from meshactors.cli import broker_cmd, main
from meshactors.cli.common import EXIT_USAGE

# (text, whether it is good) for each part of a generated URL
URL_SCHEMES = [("redis://", True), ("rediss://", True), ("http://", False), ("", False)]
URL_USERS = [("", True), (":hunter2@", True), ("user:hunter2@", True), ("@", True)]
URL_HOSTS = [("127.0.0.1", True), ("[::1]", True), ("redis.internal", True), ("", False)]
URL_HOSTS += [("[::1", False), ("[::1]]", False), ("[::1]x", False), ("h]", False)]
URL_PORTS = [("", True), (":", True), (":6379", True), (":65535", True), (":0", False)]
URL_PORTS += [(":65536", False), (":notaport", False), (":-1", False), (":+5", False)]
URL_PATHS = [("", True), ("/", True), ("/0", True), ("/15", True), ("/abc", False)]
URL_PATHS += [("/1/2", False), ("/-1", False), ("/0/", False), ("/\u0661", False)]
URL_QUERIES = [("", True), ("?ssl_cert_reqs=none", True), ("?password=p", True)]
URL_QUERIES += [("?db=3", False), ("?timeout=x", False), ("?max_connections=y", False)]


@st.composite
def cluster_urls(draw: st.DrawFn) -> tuple[str, bool | None]:
    """A URL and whether it should be accepted (None: a free-form one, not known)."""
    if draw(st.booleans()):
        return draw(st.text(max_size=40).map(lambda rest: "redis://" + rest)), None
    parts = [
        draw(st.sampled_from(choices))
        for choices in (URL_SCHEMES, URL_USERS, URL_HOSTS, URL_PORTS, URL_PATHS, URL_QUERIES)
    ]
    return "".join(text for text, _ in parts), all(good for _, good in parts)


async def _serve_nothing(broker: Broker, host: str, port: int) -> None:
    """Stands in for serving: an accepted URL only needs to reach the broker."""
    served_urls.append(broker.cluster_url)


served_urls: list[str | None] = []  # what the stand-in for serving was given (reset by each)


@settings(max_examples=200, deadline=None)
@given(case=cluster_urls())
@example(case=("redis://", False))
@example(case=("redis://127.0.0.1:notaport/0", False))
@example(case=("redis://host:6379/abc", False))
@example(case=("redis://host/1/2", False))
@example(case=("redis://:hunter2@[::1/0", False))
def test_a_cluster_url_is_refused_with_exit_2_or_read_as_written(
    case: tuple[str, bool | None],
) -> None:
    url, good = case
    served_urls.clear()
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setattr(broker_cmd, "_serve_until_signal", _serve_nothing)
        with pytest.raises(SystemExit) as exited:
            main(["broker", "--listen", "127.0.0.1:0", "--cluster", url])
    if exited.value.code == EXIT_USAGE:
        assert good is not True, (url, stderr.getvalue())
        assert "--cluster must be" in stderr.getvalue()
        assert "hunter2" not in stderr.getvalue()
        return
    assert exited.value.code == 0, stderr.getvalue()
    assert good is not False, url
    assert served_urls == [url]
    pool = redis_client(url).connection_pool
    parts = urllib.parse.urlsplit(url)
    assert pool.location is not None
    assert (pool.location.host, pool.location.port) == (parts.hostname, parts.port or 6379)
    assert (pool.connection_kwargs.get("db") or 0) == int(parts.path.strip("/") or 0)
