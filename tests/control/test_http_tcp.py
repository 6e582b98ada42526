"""The loopback TCP listener: token file, bearer auth, and every way a request is turned away."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import attrs
import pytest
import structlog
import trio

from meshactors.actors import AskTimeout, ChildSpec, Node, Supervisor, run_root
from meshactors.control import supervisor
from meshactors.control.tcp_auth import TokenFileError, load_or_create_token
from meshactors.daemon.services import Services
from tests.control.httptools import RawHttp
from tests.daemon_tree import Connect, raw_http, serving

EACH_WAY = 8  # connections opened at once on the socket and, as many, over TCP


@attrs.frozen
class TcpDaemon:
    services: Services
    port: int
    token: str

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def tcp_daemon(tmp_path: Path) -> AsyncIterator[TcpDaemon]:
    async with serving(tmp_path, tcp_port=0) as services:
        node = services.tree.find("daemon/control/tcp")
        assert node is not None and node.figures is not None
        token = services.paths.token_file.read_text().strip()
        yield TcpDaemon(services, node.figures()["port"], token)


@pytest.fixture
async def tcp(tcp_daemon: TcpDaemon) -> AsyncIterator[Connect]:
    async with raw_http(partial(trio.open_tcp_stream, "127.0.0.1", tcp_daemon.port)) as open_tcp:
        yield open_tcp


async def test_token_file_is_private_and_the_right_token_gets_in(
    tcp_daemon: TcpDaemon, tcp: Connect
) -> None:
    token_file = tcp_daemon.services.paths.token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(tcp_daemon.token) == 43
    response = await (await tcp()).request(
        "GET", "/v1/status", Host=tcp_daemon.host, Authorization=f"Bearer {tcp_daemon.token}"
    )
    assert response.status == 200
    assert response.json()["data"]["device_id"] == tcp_daemon.services.identity.device_id


async def test_localhost_host_and_lower_case_scheme_are_accepted(
    tcp_daemon: TcpDaemon, tcp: Connect
) -> None:
    response = await (await tcp()).request(
        "GET",
        "/v1/health",
        Host=f"LOCALHOST:{tcp_daemon.port}",
        Authorization=f"bearer {tcp_daemon.token}",
    )
    assert response.status == 200


async def refused(
    tcp: Connect, path: str = "/v1/status", **headers: str
) -> tuple[int, str, dict[str, str]]:
    client = await tcp()
    response = await client.request("GET", path, **headers)
    assert response.headers["connection"] == "close"
    assert await client.closed()
    return response.status, response.code, response.headers


async def test_missing_token_is_401_with_a_challenge(tcp_daemon: TcpDaemon, tcp: Connect) -> None:
    status, code, headers = await refused(tcp, Host=tcp_daemon.host)
    assert (status, code) == (401, "unauthorized")
    assert headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization", ["Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer", "Token {token}", "{token}"]
)
async def test_wrong_token_is_401(tcp_daemon: TcpDaemon, tcp: Connect, authorization: str) -> None:
    status, code, _ = await refused(
        tcp, Host=tcp_daemon.host, Authorization=authorization.format(token=tcp_daemon.token)
    )
    assert (status, code) == (401, "unauthorized")


async def test_a_token_prefix_is_not_the_token(tcp_daemon: TcpDaemon, tcp: Connect) -> None:
    status, _, _ = await refused(
        tcp, Host=tcp_daemon.host, Authorization=f"Bearer {tcp_daemon.token[:-1]}"
    )
    assert status == 401


@pytest.mark.parametrize("key", ["token", "access_token"])
async def test_token_in_the_query_is_400(tcp_daemon: TcpDaemon, tcp: Connect, key: str) -> None:
    status, code, _ = await refused(
        tcp,
        f"/v1/status?{key}={tcp_daemon.token}",
        Host=tcp_daemon.host,
        Authorization=f"Bearer {tcp_daemon.token}",
    )
    assert (status, code) == (400, "bad_request")


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1", "localhost:1", ""])
async def test_foreign_host_is_421(tcp_daemon: TcpDaemon, tcp: Connect, host: str) -> None:
    status, code, _ = await refused(
        tcp, Host=host.format(port=tcp_daemon.port), Authorization=f"Bearer {tcp_daemon.token}"
    )
    assert (status, code) == (421, "forbidden")


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1"])
async def test_any_origin_is_403(tcp_daemon: TcpDaemon, tcp: Connect, origin: str) -> None:
    status, code, _ = await refused(
        tcp, Host=tcp_daemon.host, Authorization=f"Bearer {tcp_daemon.token}", Origin=origin
    )
    assert (status, code) == (403, "forbidden")


async def test_json_lines_are_not_spoken_on_tcp(tcp: Connect) -> None:
    client = await tcp()
    await client.send(b'{"id":1,"op":"status"}\n')
    response = await client.response()
    assert (response.status, response.code) == (400, "bad_request")
    assert await client.closed()


async def test_refused_body_is_not_read(tcp_daemon: TcpDaemon, tcp: Connect) -> None:
    client = await tcp()
    await client.send(
        b"POST /v1/status HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n"
        b"Expect: 100-continue\r\n\r\n" % tcp_daemon.host.encode()
    )
    response = await client.response()  # a 401, never a `100 Continue`
    assert response.status == 401


async def test_tcp_clients_share_the_client_numbering(tcp_daemon: TcpDaemon, tcp: Connect) -> None:
    unix = RawHttp(await trio.open_unix_socket(str(tcp_daemon.services.paths.socket)))
    first = (await unix.request("GET", "/v1/status")).json()["data"]["client_id"]
    second = (
        await (await tcp()).request(
            "GET", "/v1/status", Host=tcp_daemon.host, Authorization=f"Bearer {tcp_daemon.token}"
        )
    ).json()["data"]["client_id"]
    assert {first, second} == {"c1", "c2"}
    await unix.stream.aclose()


async def test_connections_at_once_on_both_listeners_are_numbered_in_one_sequence(
    tcp_daemon: TcpDaemon, tcp: Connect
) -> None:
    unix = partial(trio.open_unix_socket, str(tcp_daemon.services.paths.socket))
    auth = {"Host": tcp_daemon.host, "Authorization": f"Bearer {tcp_daemon.token}"}
    ids: list[str] = []

    async def status(connection: RawHttp, **headers: str) -> None:
        ids.append(
            (await connection.request("GET", "/v1/status", **headers)).json()["data"]["client_id"]
        )

    async with trio.open_nursery() as nursery:
        for _ in range(EACH_WAY):
            nursery.start_soon(status, RawHttp(await unix()))
            nursery.start_soon(partial(status, await tcp(), **auth))
    assert sorted(ids) == sorted(f"c{n}" for n in range(1, 2 * EACH_WAY + 1))


async def test_control_alone_numbers_the_clients_both_listeners_ask_for() -> None:
    control = supervisor.Control()
    numbers: list[int] = []

    async def listener() -> None:
        for _ in range(EACH_WAY):
            numbers.append(await control.number_client())

    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, control, Node("control", "supervisor"))
        async with trio.open_nursery() as listeners:
            listeners.start_soon(listener)
            listeners.start_soon(listener)
        nursery.cancel_scope.cancel()
    assert sorted(numbers) == list(range(1, 2 * EACH_WAY + 1))


def test_token_is_reused_and_a_wide_mode_tightened(tmp_path: Path) -> None:
    path = tmp_path / "http-token"
    token = load_or_create_token(path)
    os.chmod(path, 0o644)
    assert load_or_create_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("content", [b"short\n", b"\xff" * 40, b"x" * 5000, b"has space" * 8])
def test_unusable_token_file_is_refused_not_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "http-token"
    path.write_bytes(content)
    with pytest.raises(TokenFileError):
        load_or_create_token(path)
    assert path.read_bytes() == content


async def authorized(daemon: TcpDaemon, client: RawHttp) -> int:
    """The status of a token-bearing request on `client`, which stays open (keep-alive)."""
    response = await client.request(
        "GET", "/v1/health", Host=daemon.host, Authorization=f"Bearer {daemon.token}"
    )
    return response.status


def tcp_figures(daemon: TcpDaemon) -> dict[str, object]:
    node = daemon.services.tree.find("daemon/control/tcp")
    assert node is not None and node.figures is not None
    return node.figures()


async def test_silent_tcp_connections_make_room_for_the_owner(
    tcp_daemon: TcpDaemon, tcp: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone local may connect over TCP before a token is checked: when such connections
    hold every place, a newcomer takes the oldest one's, so the owner's connection gets a place
    (and keeps it once a request passed the token check)."""
    monkeypatch.setattr(supervisor, "MAX_TCP_CLIENTS", 2)
    silent = [await tcp(), await tcp()]  # they never send a byte
    assert await authorized(tcp_daemon, await tcp()) == 200
    assert await silent[0].closed()  # evicted, unanswered
    assert tcp_figures(tcp_daemon)["evicted"] == 1
    unix_node = tcp_daemon.services.tree.find("daemon/control/listener")
    assert unix_node is not None and unix_node.figures is not None
    assert "evicted" not in unix_node.figures()  # nobody is evicted from the Unix socket


async def _stop_fails(_control: Supervisor, name: str, **_kw: object) -> bool:
    """`control`'s stop as an ask that got no answer in time."""
    raise AskTimeout(f"stop {name}", 30)


async def test_an_eviction_waits_on_no_ask_so_none_can_fail_the_listener(
    tcp_daemon: TcpDaemon, tcp: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener has control stop the stranger without asking: the stop's answer (a 30 s
    ask that may fail) never holds up accepting nor ends the listener, leaving the newcomer's
    connection open and unserved."""
    monkeypatch.setattr(supervisor, "MAX_TCP_CLIENTS", 2)
    monkeypatch.setattr(Supervisor, "stop_child", _stop_fails)
    silent = [await tcp(), await tcp()]
    assert await authorized(tcp_daemon, await tcp()) == 200
    assert await silent[0].closed()
    node = tcp_daemon.services.tree.find("daemon/control/tcp")
    assert node is not None and node.restarts == 0


async def test_an_eviction_control_has_no_room_for_refuses_the_newcomer(
    tcp_daemon: TcpDaemon, tcp: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """control's inbox full: no stranger is stopped, and the newcomer gets a 503."""
    monkeypatch.setattr(supervisor, "MAX_TCP_CLIENTS", 2)
    monkeypatch.setattr(Supervisor, "stop_child_nowait", lambda _control, _name: False)
    await tcp(), await tcp()
    response = await (await tcp()).response()
    assert (response.status, response.code) == (503, "unavailable")
    assert tcp_figures(tcp_daemon)["evicted"] == 0


def start_fails_once(monkeypatch: pytest.MonkeyPatch, *, carried_out: bool) -> None:
    """Make control's next start of a child an ask that got no answer in time; with
    `carried_out`, one whose start control carried out all the same (it answered too late)."""
    start = Supervisor.start_child

    async def timed_out(control: Supervisor, spec: ChildSpec, *, replace: bool = False) -> None:
        monkeypatch.setattr(Supervisor, "start_child", start)  # the next start succeeds
        if carried_out:
            await start(control, spec, replace=replace)
        raise AskTimeout(f"start {spec.name}", 30)

    monkeypatch.setattr(Supervisor, "start_child", timed_out)


@pytest.mark.parametrize("carried_out", [False, True])
@pytest.mark.parametrize("over", ["listener", "tcp"])
async def test_a_connection_control_did_not_start_is_closed_and_the_listener_goes_on(
    tcp_daemon: TcpDaemon,
    tcp: Connect,
    monkeypatch: pytest.MonkeyPatch,
    over: str,
    carried_out: bool,
) -> None:
    """The start of a connection's client is an ask of control that may fail: the listener
    closes that connection (its client, if control started it after all, is stopped and
    ends as if the program hung up) and accepts the next one, without a restart."""
    unix_socket = str(tcp_daemon.services.paths.socket)
    async with raw_http(partial(trio.open_unix_socket, unix_socket)) as unix:
        connect = unix if over == "listener" else tcp
        start_fails_once(monkeypatch, carried_out=carried_out)
        with structlog.testing.capture_logs() as logs:
            failed = await connect()
            assert await failed.closed()
            served = await connect()
            assert await authorized(tcp_daemon, served) == 200
            while len(tcp_daemon.services.client_nodes()) > 1:  # the late client's stop
                await trio.testing.wait_all_tasks_blocked()
    node = tcp_daemon.services.tree.find(f"daemon/control/{over}")
    assert node is not None and node.figures is not None and node.restarts == 0
    assert (node.figures()["accepted"], node.figures()["failed"]) == (1, 1)
    assert [log["event"] for log in logs if log["log_level"] == "error"] == []


async def test_tcp_connections_that_passed_the_token_check_keep_their_places(
    tcp_daemon: TcpDaemon, tcp: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only connections that never passed the token check are evicted; once every place is
    the owner's, a newcomer is turned away, and the Unix socket still serves."""
    monkeypatch.setattr(supervisor, "MAX_TCP_CLIENTS", 2)
    owner = await tcp()
    assert await authorized(tcp_daemon, owner) == 200
    stranger = await tcp()
    second = await tcp()
    assert await authorized(tcp_daemon, second) == 200
    assert await stranger.closed()
    assert await authorized(tcp_daemon, owner) == 200  # still open
    refused = await tcp()
    response = await refused.response()
    assert (response.status, response.code) == (503, "unavailable")
    assert "TCP" in response.json()["error"]["message"]
    assert await refused.closed()
    assert tcp_figures(tcp_daemon)["evicted"] == 1
    unix = RawHttp(await trio.open_unix_socket(str(tcp_daemon.services.paths.socket)))
    assert (await unix.request("GET", "/v1/status")).status == 200
    await unix.stream.aclose()
