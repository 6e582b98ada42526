"""The bench clients' shortcuts: the sink counts channel messages without parsing every line,
the echo answers without decoding the call, requests are encoded once; all of them right."""

from __future__ import annotations

import json

import pytest

from meshactors.wire.ipc import event_frame, ok_frame
from scripts.benchlib.meshclient import channel_messages, echo_answer, request_template


def test_the_sink_counts_single_messages_and_batches() -> None:
    head = {"network": "n", "from": "d", "channel": "c"}
    singles = b"".join(event_frame("channel_inbound", head | {"payload": n}) for n in range(3))
    batch = event_frame("channel_inbound", head | {"payloads": [1, 2, 3, 4]})
    other = ok_frame(1, {"dispatched_to": []}) + event_frame("lagged", {"skipped": 9})
    assert channel_messages(singles + other) == 3
    assert channel_messages(singles + batch + other) == 7
    assert channel_messages(other) == 0


@pytest.mark.parametrize(
    "payload",
    ["x" * 126, {"payload": '"payload":"no"', "request_id": "no"}, [1, 2.5, None], "é\u2028", 7],
)
def test_the_echo_answers_a_call_with_its_id_and_exact_payload(payload: object) -> None:
    call = {
        "network": "bench",
        "from": "d" * 52,
        "request_id": "0f" * 16,
        "method": 'say "payload":',
        "streaming": False,
        "timeout_ms": 30000,
        "payload": payload,
    }
    line = event_frame("rpc_inbound", call).decode().rstrip("\n")
    answer = echo_answer(line)
    assert answer.endswith(b"\n")
    assert json.loads(answer) == {"op": "rpc_respond", "request_id": "0f" * 16, "payload": payload}


def test_a_request_template_makes_the_line_json_dumps_would() -> None:
    head, tail = request_template("rpc_call", network="n", payload="x")
    line = head + b"%d" % 42 + tail
    assert line.endswith(b"\n")
    assert json.loads(line) == {"id": 42, "op": "rpc_call", "network": "n", "payload": "x"}
