"""The README's first command: a broker and two daemons, shown working end to end.

Every step runs the real CLI (as a user would type it) against real processes in temporary
homes on loopback, and the demo stops everything it started, whatever happens.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

STEP_TIMEOUT = 60  # seconds any one command may take
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


class Home:
    """One daemon's MESHACTORS_HOME and the CLI bound to it."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MESHACTORS_")}
        self.env["MESHACTORS_HOME"] = str(path)

    def run(self, *args: str, show: bool = True) -> str:
        """Run `meshactors ARGS…`, echo the command and its output, return stdout."""
        if show:
            print(f"{DIM}[{self.name}]{RESET} $ meshactors {shlex.join(args)}")
        result = subprocess.run(
            [sys.executable, "-m", "meshactors", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(
                f"demo failed: meshactors {shlex.join(args)} exited {result.returncode}\n"
                f"{result.stdout}{result.stderr}"
            )
        if show and result.stdout.strip():
            print(result.stdout.rstrip())
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json", show=False))


def step(title: str) -> None:
    print(f"\n{BOLD}== {title}{RESET}")


@contextmanager
def broker(workdir: Path) -> Iterator[str]:
    """A broker process on a free loopback port; yields its ws:// URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "meshactors", "broker", "--listen", "127.0.0.1:0", "--log-json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the broker's own word that it listens
            if "broker_listening" in line:
                break
        else:
            raise SystemExit("demo failed: the broker did not start")
        drain = threading.Thread(target=process.stderr.read, daemon=True)
        drain.start()  # keep its log pipe flowing
        yield f"ws://{json.loads(line)['listen']}/v1"
    finally:
        process.terminate()
        process.wait(timeout=STEP_TIMEOUT)


@contextmanager
def daemon(home: Home) -> Iterator[Home]:
    home.run("daemon", "up", "--detach")
    try:
        yield home
    finally:
        home.run("daemon", "down", show=False)


def wait_for_event(home: Home, kind: str, **match: str) -> dict[str, Any]:
    """Read the daemon's event log and live stream until an event of `kind` matches `match`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "meshactors", "events", "--json", "--since", "0"],
        env=home.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            event: dict[str, Any] = json.loads(line)
            if event.get("kind") == kind and all(event.get(k) == v for k, v in match.items()):
                return event
        raise SystemExit(f"demo failed: {home.name}'s event stream ended before {kind}")
    finally:
        process.kill()
        process.wait()


@contextmanager
def background(home: Home, *args: str, ready: str) -> Iterator[None]:
    """A long-running program (a server) started in `home`, stopped on exit."""
    process = subprocess.Popen(
        [sys.executable, *args],
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # its own word that it serves
            if ready in line:
                break
        else:
            raise SystemExit(f"demo failed: {shlex.join(args)} exited before serving")
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield
    finally:
        process.terminate()
        process.wait(timeout=STEP_TIMEOUT)


def first_line(home: Home, channel: str) -> str:
    """Subscribe to `channel` on demo and return the first message line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "meshactors", "channel", "subscribe", "-n", "demo", channel],
        env=home.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        return process.stdout.readline().strip()
    finally:
        process.kill()
        process.wait()


def kill_daemon(home: Home) -> None:
    """SIGKILL the daemon of `home` and wait until the kernel released its lock."""
    pid = int((home.path / "daemon.pid").read_text())
    print(f"{DIM}[{home.name}]{RESET} $ kill -9 {pid}")
    os.kill(pid, signal.SIGKILL)
    with open(home.path / "daemon.pid", "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        fcntl.flock(handle, fcntl.LOCK_UN)


def closed_network(
    stack: ExitStack, workdir: Path, url: str, alice: Home, bob: Home, alice_id: str, bob_id: str
) -> None:
    """A closed network: alice creates it; bob joins with an invite, carol with the bootstrap
    and a grant; alice evicts carol and every member cuts carol off."""
    step("a closed network: alice creates `team`; bob joins with a one-use invite")
    carol = Home("carol", workdir / "carol")
    stack.enter_context(daemon(carol))
    carol_id = carol.json("identity", "show")["device_id"]
    created = alice.json("network", "create", "team", "--closed", "--broker", url)
    print(f"bootstrap: {created['bootstrap'][:40]}… (the signed genesis)")
    token = alice.json("members", "invite", "-n", "team", "--uses", "1", "--ttl", "600")["token"]
    print(f"invite token: {token[:40]}… ({len(token)} characters)")
    print(f"{DIM}[bob]{RESET} $ meshactors network join-invite mshi1.…")
    bob.run("network", "join-invite", token, show=False)
    wait_for_event(bob, "member_granted", network="team", device_id=bob_id)
    wait_for_event(bob, "peer_active", network="team", device_id=alice_id)

    step("carol imports the bootstrap; alice grants her by device id")
    print(
        f"{DIM}[carol]{RESET} $ meshactors network import team --bootstrap mshg1.… --broker {url}"
    )
    carol.run(
        "network",
        "import",
        "team",
        "--bootstrap",
        created["bootstrap"],
        "--broker",
        url,
        show=False,
    )
    alice.run("members", "grant", "-n", "team", carol_id, "--role", "member")
    wait_for_event(carol, "peer_active", network="team", device_id=alice_id)
    alice.run("members", "list", "-n", "team")

    step("alice evicts carol (a lost laptop): every member cuts it off, carol stops the network")
    alice.run("members", "evict", "-n", "team", carol_id)
    wait_for_event(bob, "member_evicted", network="team", device_id=carol_id)
    wait_for_event(carol, "evicted", network="team")
    (team,) = carol.json("network", "list")
    print(f"carol's network list: phase {team['phase']}: {team['membership']['evicted']['reason']}")
    bob.run("members", "list", "-n", "team")


def main() -> None:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshactors-demo-")))
        alice = Home("alice", workdir / "alice")
        bob = Home("bob", workdir / "bob")

        step("a broker on loopback")
        url = stack.enter_context(broker(workdir))
        print(f"broker listening at {url}")

        step("two daemons, each in its own home with its own identity")
        stack.enter_context(daemon(alice))
        stack.enter_context(daemon(bob))
        alice_id = alice.json("identity", "show")["device_id"]
        bob_id = bob.json("identity", "show")["device_id"]

        step("both join the network `demo`; each approves the other")
        alice.run("network", "add", "demo", "--broker", url, "--label", "the demo network")
        bob.run("network", "add", "demo", "--broker", url)
        alice.run("roster", "approve", "-n", "demo", bob_id, "--label", "bob")
        bob.run("roster", "approve", "-n", "demo", alice_id, "--label", "alice")
        wait_for_event(alice, "peer_active", device_id=bob_id)
        wait_for_event(bob, "peer_active", device_id=alice_id)
        alice.run("peers", "-n", "demo")

        step("capabilities reach the peer, `extra` untouched")
        alice.run(
            "caps", "set", "-n", "demo", "--tag", "gpu", "--extra", '{"models":{"llama":[8]}}'
        )
        wait_for_event(bob, "peer_capabilities", device_id=alice_id)
        (seen,) = bob.json("peers", "-n", "demo")
        print(f"bob sees alice's capabilities: {json.dumps(seen['capabilities'])}")

        step("RPC: bob serves `echo` with a shell command, alice calls it")
        stack.enter_context(
            background(
                bob,
                "-m",
                "meshactors",
                "rpc",
                "serve",
                "-n",
                "demo",
                "echo",
                "--",
                "cat",
                ready="serving echo",
            )
        )
        alice.run("rpc", "call", "-n", "demo", bob_id, "echo", '{"hello": "bob"}')

        step("streamed RPC: bob serves `count` with a few lines of the Python client library")
        stack.enter_context(
            background(bob, "-m", "scripts.demo_counter", "demo", ready="serving count")
        )
        alice.run("rpc", "call", "-n", "demo", bob_id, "count", "3", "--stream")

        step("a retained channel message reaches a subscriber that comes later")
        alice.run("channel", "send", "-n", "demo", "news", "--retain", '{"headline": "mesh is up"}')
        print(f"bob subscribes afterwards and gets it at once: {first_line(bob, 'news')}")

        step("a durable message survives a SIGKILL of its sender")
        bob.run("daemon", "down")
        wait_for_event(alice, "peer_left", device_id=bob_id)
        alice.run("send", "-n", "demo", bob_id, "sent while bob was away", "--client-id", "demo-1")
        kill_daemon(alice)
        alice.run("daemon", "up", "--detach")
        bob.run("daemon", "up", "--detach")
        wait_for_event(bob, "message", client_message_id="demo-1")
        bob.run("inbox", "-n", "demo")
        alice.run("outbox", "list")

        closed_network(stack, workdir, url, alice, bob, alice_id, bob_id)

        step("the live actor tree of alice's daemon")
        alice.run("inspect")

        step("done: stopping the daemons and the broker")


if __name__ == "__main__":
    main()
