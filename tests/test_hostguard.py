"""Host guard: host facts from a real (fake-rooted) filesystem tree, and the host record."""

import hashlib
import json
import stat
from pathlib import Path

import pytest

from meshactors.hostguard import (
    HOST_MISMATCH_EXIT_CODE,
    HostCheck,
    HostFacts,
    HostGuardError,
    HostRecordUnreadable,
    HostRecordUnwritable,
    accept_host,
    check_host,
    fingerprint,
    mismatch_message,
    read_host_facts,
)

MACHINE_ID = "0123456789abcdef0123456789abcdef"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_interface(root: Path, name: str, address: str, *, device: bool = True) -> None:
    interface = root / "sys" / "class" / "net" / name
    interface.mkdir(parents=True)
    (interface / "address").write_text(address + "\n")
    if device:
        (interface / "device").mkdir()


def add_file(root: Path, relative: str, content: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


FACTS = HostFacts(machine_id=sha("a"), mac=sha("b"))


def test_reads_machine_id_and_first_stable_mac(tmp_path: Path) -> None:
    add_file(tmp_path, "etc/machine-id", MACHINE_ID + "\n")
    add_interface(tmp_path, "wlan0", "00:11:22:33:44:66")
    add_interface(tmp_path, "eth0", "00:11:22:33:44:55")

    facts = read_host_facts(tmp_path)

    assert facts == HostFacts(machine_id=sha(MACHINE_ID), mac=sha("00:11:22:33:44:55"))


def test_falls_back_to_dbus_machine_id(tmp_path: Path) -> None:
    add_file(tmp_path, "var/lib/dbus/machine-id", MACHINE_ID)

    assert read_host_facts(tmp_path).machine_id == sha(MACHINE_ID)


@pytest.mark.parametrize("content", ["", "\n", "uninitialized\n"])
def test_empty_or_uninitialized_machine_id_is_skipped(tmp_path: Path, content: str) -> None:
    add_file(tmp_path, "etc/machine-id", content)
    add_file(tmp_path, "var/lib/dbus/machine-id", MACHINE_ID)

    assert read_host_facts(tmp_path).machine_id == sha(MACHINE_ID)


def test_unstable_interfaces_are_skipped(tmp_path: Path) -> None:
    add_interface(tmp_path, "a-lo", "00:00:00:00:00:00")  # all zero
    add_interface(tmp_path, "b-random", "02:11:22:33:44:55")  # locally administered
    add_interface(tmp_path, "c-random", "DA:A1:19:00:00:01")  # randomised (bit 2 set)
    add_interface(tmp_path, "d-bridge", "00:aa:bb:cc:dd:ee", device=False)  # virtual
    add_interface(tmp_path, "e-garbage", "not a mac")
    add_interface(tmp_path, "f-eth", "AC:DE:48:00:11:22")  # stable, upper case

    assert read_host_facts(tmp_path).mac == sha("ac:de:48:00:11:22")


def test_loopback_is_skipped_by_name(tmp_path: Path) -> None:
    add_interface(tmp_path, "lo", "00:11:22:33:44:55")

    assert read_host_facts(tmp_path).mac is None


def test_empty_tree_gives_no_facts(tmp_path: Path) -> None:
    facts = read_host_facts(tmp_path)

    assert facts == HostFacts(machine_id=None, mac=None)
    assert fingerprint(facts) == fingerprint(read_host_facts(tmp_path))


def test_reading_the_real_machine_does_not_fail() -> None:
    facts = read_host_facts()

    assert len(fingerprint(facts)) == 64


def test_fingerprint_follows_the_documented_canonical_string() -> None:
    expected = sha(f"meshactors-host-v1\nmachine_id={FACTS.machine_id}\nmac={FACTS.mac}\n")

    assert fingerprint(FACTS) == expected
    assert fingerprint(HostFacts(None, None)) == sha("meshactors-host-v1\nmachine_id=\nmac=\n")
    assert fingerprint(HostFacts(FACTS.machine_id, None)) != fingerprint(FACTS)


def test_host_facts_hold_only_digests() -> None:
    with pytest.raises(ValueError, match="machine_id is not a sha256 hex digest"):
        HostFacts(machine_id=MACHINE_ID, mac=None)


def test_first_check_records_the_host(tmp_path: Path) -> None:
    path = tmp_path / "host.json"

    assert check_host(path, FACTS) is HostCheck.RECORDED

    record = json.loads(path.read_text())
    assert record.keys() == {"version", "machine_id", "mac", "fingerprint", "recorded_at"}
    assert record["version"] == 1
    assert (record["machine_id"], record["mac"]) == (FACTS.machine_id, FACTS.mac)
    assert record["fingerprint"] == fingerprint(FACTS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_same_host_matches_without_rewriting(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    check_host(path, FACTS)
    before = path.read_bytes()

    assert check_host(path, FACTS) is HostCheck.MATCH
    assert path.read_bytes() == before


def test_host_without_any_facts_still_matches(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    nothing = HostFacts(None, None)

    assert check_host(path, nothing) is HostCheck.RECORDED
    assert check_host(path, nothing) is HostCheck.MATCH
    assert check_host(path, FACTS) is HostCheck.MISMATCH


def test_new_mac_on_the_same_machine_updates_the_record(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    check_host(path, FACTS)
    new_card = HostFacts(machine_id=FACTS.machine_id, mac=sha("new card"))

    assert check_host(path, new_card) is HostCheck.MAC_UPDATED
    assert json.loads(path.read_text())["mac"] == new_card.mac
    assert check_host(path, new_card) is HostCheck.MATCH


@pytest.mark.parametrize(
    "other",
    [
        HostFacts(machine_id=sha("other"), mac=FACTS.mac),  # copied disk image, same MAC
        HostFacts(machine_id=sha("other"), mac=sha("other card")),
        HostFacts(machine_id=None, mac=FACTS.mac),
    ],
)
def test_another_machine_is_a_mismatch_and_the_record_stays(
    tmp_path: Path, other: HostFacts
) -> None:
    path = tmp_path / "host.json"
    check_host(path, FACTS)
    before = path.read_bytes()

    assert check_host(path, other) is HostCheck.MISMATCH
    assert path.read_bytes() == before


def test_mac_change_without_machine_id_is_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    check_host(path, HostFacts(None, FACTS.mac))

    assert check_host(path, HostFacts(None, sha("other card"))) is HostCheck.MISMATCH


def test_accept_host_takes_over_after_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    check_host(path, FACTS)
    other = HostFacts(machine_id=sha("other"), mac=None)

    accept_host(path, other)

    assert check_host(path, other) is HostCheck.MATCH
    assert check_host(path, FACTS) is HostCheck.MISMATCH


def record_text(**changes: object) -> str:
    record: dict[str, object] = {
        "version": 1,
        "machine_id": FACTS.machine_id,
        "mac": FACTS.mac,
        "fingerprint": fingerprint(FACTS),
        "recorded_at": "2024-05-01T12:00:00+00:00",
    }
    record.update(changes)
    return json.dumps(record)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("garbage", "Expecting value"),
        (record_text(version=2), "unsupported version 2"),
        (record_text(mac=5), "must be strings or null"),
        (record_text(mac="not-a-digest"), "mac is not a sha256 hex digest"),
        (record_text(fingerprint=fingerprint(HostFacts(None, None))), "fingerprint does not"),
        (record_text(recorded_at="yesterday"), "isoformat"),
        (record_text(recorded_at=None), "recorded_at is not a string"),
    ],
)
def test_corrupt_record_raises_naming_accept_host(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "host.json"
    path.write_text(content)

    with pytest.raises(HostGuardError, match=reason) as caught:
        check_host(path, FACTS)

    assert f"{path} is corrupt" in str(caught.value)
    assert "`meshactors daemon accept-host`" in str(caught.value)
    assert path.read_text() == content


def test_a_record_that_cannot_be_read_is_unreadable_not_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.mkdir()

    with pytest.raises(HostRecordUnreadable) as caught:
        check_host(path, FACTS)

    assert str(caught.value) == (
        f"host record {path} is unreadable ({path} is a directory, not a regular file)"
    )
    assert path.is_dir()


def test_well_formed_record_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text(record_text())

    assert check_host(path, FACTS) is HostCheck.MATCH


def test_accept_host_repairs_a_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text("garbage")

    accept_host(path, FACTS)

    assert check_host(path, FACTS) is HostCheck.MATCH


def test_unwritable_record_raises_host_record_unwritable(tmp_path: Path) -> None:
    with pytest.raises(HostRecordUnwritable, match="cannot write host record"):
        check_host(tmp_path / "missing-dir" / "host.json", FACTS)


def test_mismatch_exit_code_and_message(tmp_path: Path) -> None:
    path = tmp_path / "host.json"

    message = mismatch_message(path)

    assert HOST_MISMATCH_EXIT_CODE == 4
    assert str(path) in message
    assert "`meshactors daemon accept-host`" in message
