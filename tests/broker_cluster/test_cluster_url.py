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

from meshactors.broker.cluster import (
    CLUSTER_URL_PARAMETERS,
    COMMAND_TIMEOUT_S,
    check_cluster_url,
    redis_client,
)
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
URL_QUERIES += [("?username=u&password=p&ssl_check_hostname=true", True), ("?", True)]
URL_QUERIES += [("?db=3", False), ("?timeout=x", False), ("?max_connections=y", False)]
URL_QUERIES += [("?ssl_cert_reqs=bogus", None), ("?ssl_ca_certs=/nonexistent", None)]
# each would replace what the link sets (a reply, a deadline, its one connection)
LINK_OVERRIDES = ["noreply=true", "stream_timeout=3600", "connect_timeout=0", "max_connections=9"]
LINK_OVERRIDES += ["decode_responses=1", "ssl_context=x", "client_name=c", "stream_timeout="]
URL_QUERIES += [(f"?password=p&{override}", False) for override in LINK_OVERRIDES]
# what the link sets on its connections, which no URL may change
LINK_SETTINGS = {
    "stream_timeout": COMMAND_TIMEOUT_S,
    "connect_timeout": COMMAND_TIMEOUT_S,
    "noreply": False,
    "decode_responses": False,
    "client_name": None,
}


@st.composite
def cluster_urls(draw: st.DrawFn) -> tuple[str, bool | None]:
    """A URL and whether it should be accepted (None: not known, as for a free-form one or
    TLS parameters only coredis can judge); TLS parameters need a rediss:// URL."""
    if draw(st.booleans()):
        return draw(st.text(max_size=40).map(lambda rest: "redis://" + rest)), None
    parts = [
        draw(st.sampled_from(choices))
        for choices in (URL_SCHEMES, URL_USERS, URL_HOSTS, URL_PORTS, URL_PATHS, URL_QUERIES)
    ]
    known = [good for _, good in parts]
    scheme, query = parts[0][0], parts[-1][0]
    if scheme == "redis://" and "ssl_" in query:
        known.append(False)  # redis:// would connect without TLS, ignoring them
    good = False if False in known else None if None in known else True
    return "".join(text for text, _ in parts), good


async def _serve_nothing(broker: Broker, host: str, port: int) -> None:
    """Stands in for serving: an accepted URL only needs to reach the broker."""
    served_urls.append(broker.cluster_url)


served_urls: list[str | None] = []  # what the stand-in for serving was given (reset by each)


def _broker_exit(url: str) -> tuple[object, str]:
    """`broker --cluster url`'s exit code and stderr, with serving stood in for."""
    served_urls.clear()
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setattr(broker_cmd, "_serve_until_signal", _serve_nothing)
        with pytest.raises(SystemExit) as exited:
            main(["broker", "--listen", "127.0.0.1:0", "--cluster", url])
    return exited.value.code, stderr.getvalue()


@settings(max_examples=200, deadline=None)
@given(case=cluster_urls())
@example(case=("redis://", False))
@example(case=("redis://127.0.0.1:notaport/0", False))
@example(case=("redis://host:6379/abc", False))
@example(case=("redis://host/1/2", False))
@example(case=("redis://:hunter2@[::1/0", False))
@example(case=("redis://h?no%72eply=1", False))
@example(case=("rediss://h?ssl_cert_reqs=bogus", False))
@example(case=("rediss://h?ssl_ca_certs=/nonexistent", False))
@example(case=("redis://h?ssl_cert_reqs=required", False))
@example(case=("rediss://h?ssl_cert_reqs=required", True))
def test_a_cluster_url_is_refused_with_exit_2_or_read_as_written(
    case: tuple[str, bool | None],
) -> None:
    url, good = case
    code, error = _broker_exit(url)
    if code == EXIT_USAGE:
        assert good is not True, (url, error)
        assert "--cluster must be" in error
        assert "hunter2" not in error
        return
    assert code == 0, error
    assert good is not False, url
    assert served_urls == [url]
    pool = redis_client(url).connection_pool
    parts = urllib.parse.urlsplit(url)
    assert pool.location is not None
    assert (pool.location.host, pool.location.port) == (parts.hostname, parts.port or 6379)
    assert (pool.connection_kwargs.get("db") or 0) == int(parts.path.strip("/") or 0)
    link_settings = {key: pool.connection_kwargs.get(key) for key in LINK_SETTINGS}
    assert link_settings == LINK_SETTINGS, url
    assert pool.max_connections == redis_client("redis://h").connection_pool.max_connections


@pytest.mark.parametrize("override", LINK_OVERRIDES)
def test_a_cluster_url_parameter_that_would_override_the_link_is_named(override: str) -> None:
    code, error = _broker_exit(f"redis://h:6379/0?password=hunter2&{override}")
    assert code == EXIT_USAGE, error
    assert f"not {override.partition('=')[0]!r}" in error
    assert "hunter2" not in error


@pytest.mark.parametrize("parameter", [name for name in CLUSTER_URL_PARAMETERS if "ssl_" in name])
def test_tls_parameters_on_a_redis_url_are_refused_not_ignored(parameter: str) -> None:
    """redis:// connects without TLS whatever its ssl_* parameters say: say so at start."""
    url = f"redis://:hunter2@h:6379/0?{parameter}=x"
    with pytest.raises(ValueError, match="rediss://") as refused:
        check_cluster_url(url)
    assert str(refused.value).startswith(f"a rediss:// URL to take TLS parameters ({parameter})")
    code, error = _broker_exit(url)
    assert code == EXIT_USAGE, error
    assert f"--cluster must be a rediss:// URL to take TLS parameters ({parameter})" in error
    assert "hunter2" not in error
    assert served_urls == []
