"""The payload size cap: measured as strict compact JSON, whatever path the check takes."""

from __future__ import annotations

import pytest

from meshactors.network.payload import MAX_PAYLOAD_BYTES, Payload, check_size
from meshactors.wire.ipc import OpError
from meshactors.wire.peer import MAX_EXTRA_BYTES, Capabilities

WIDEST = "\U0001f600"  # escaped as a surrogate pair: 12 bytes of JSON for one character


def test_the_widest_string_that_fits_is_taken() -> None:
    fitting = WIDEST * ((MAX_PAYLOAD_BYTES - 2) // 12)
    assert Payload(fitting).size <= MAX_PAYLOAD_BYTES
    check_size(Payload(fitting))


@pytest.mark.parametrize(
    "value",
    [
        WIDEST * ((MAX_PAYLOAD_BYTES - 2) // 12 + 1),  # short in characters, long as JSON
        "x" * (MAX_PAYLOAD_BYTES - 1),  # 2 bytes of quotes over
        {"list": ["y" * 1000] * 132},
    ],
)
def test_a_payload_over_the_cap_is_refused(value: object) -> None:
    assert Payload(value).size > MAX_PAYLOAD_BYTES
    with pytest.raises(OpError) as refused:
        check_size(Payload(value))
    assert refused.value.code == "payload_too_large"


def test_a_refusal_says_non_ascii_characters_count_as_their_escapes() -> None:
    """25,000 `é` are 50 KB of UTF-8 but 150,002 bytes escaped, as a peer frame carries them:
    the refusal says how it counted, so the size it names makes sense to the sender."""
    with pytest.raises(OpError) as refused:
        check_size(Payload("é" * 25_000))
    limit = MAX_PAYLOAD_BYTES
    assert (
        refused.value.message
        == f"payload is 150002 bytes as ASCII-escaped JSON; the limit is {limit}"
    )


def test_an_extra_refusal_says_non_ascii_characters_count_as_their_escapes() -> None:
    with pytest.raises(ValueError) as refused:
        Capabilities(extra={"k": "é" * 3000})  # some 6 KB of UTF-8
    said = f"extra is 18008 bytes as ASCII-escaped JSON; the limit is {MAX_EXTRA_BYTES}"
    assert str(refused.value) == said
