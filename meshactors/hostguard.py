"""Host guard: refuse to run an identity copied to another machine.

On first start the daemon records hashed facts about its machine next to the identity; on later
starts it compares. Two daemons sharing one identity would fight over one device id.
"""

import enum
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeGuard

import attrs

from meshactors.paths import RefusedFile, read_private_record, write_private_record

HOST_MISMATCH_EXIT_CODE = 4  # CLI exit status when the identity was recorded on another machine
HOST_FILE_VERSION = 1  # bump when the host record's keys or the fingerprint recipe change
HOST_FILE_MAX_BYTES = 4096  # a real host record is about 300 bytes
FACT_FILE_MAX_BYTES = 256  # machine-id (33 bytes) and a /sys address (<= 60 bytes) are tiny
MACHINE_ID_FILES = ("etc/machine-id", "var/lib/dbus/machine-id")  # under root, first one wins
UNINITIALIZED_MACHINE_ID = "uninitialized"  # systemd's placeholder before first boot completes
FINGERPRINT_DOMAIN = "meshactors-host-v1"  # first line of the fingerprint's canonical string
_FIELDS = frozenset({"version", "machine_id", "mac", "fingerprint", "recorded_at"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAC_OCTET = re.compile(r"[0-9a-f]{2}")


class HostGuardError(Exception):
    """The host record cannot be used (corrupt or unreadable) or cannot be written."""


class HostRecordUnreadable(HostGuardError):
    """The host record is there but cannot be read (its owner, mode or kind): not corrupt, so
    recording this machine over it (accept-host) is not the way out."""


class HostRecordUnwritable(HostGuardError):
    """The host record cannot be written (a read-only or full home): the machine was not
    refused, the daemon cannot keep its record, as with any file it cannot write (exit 3)."""


class HostCheck(enum.Enum):
    """Outcome of comparing this machine with the host record."""

    RECORDED = "recorded"  # no record yet: this machine was recorded
    MATCH = "match"  # same machine
    MAC_UPDATED = "mac_updated"  # same machine-id, new network card: record rewritten
    MISMATCH = "mismatch"  # another machine: the daemon must refuse to start


def _sha256_hex_or_none(
    _instance: object, attribute: "attrs.Attribute[str | None]", value: str | None
) -> None:
    """attrs validator: a host fact is absent or a lowercase sha256 hex digest."""
    if value is not None and not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"{attribute.name} is not a sha256 hex digest")


@attrs.frozen
class HostFacts:
    """Hashed facts identifying this machine; only digests are stored, never the raw values."""

    machine_id: str | None = attrs.field(validator=_sha256_hex_or_none)
    mac: str | None = attrs.field(validator=_sha256_hex_or_none)


def read_host_facts(root: Path = Path("/")) -> HostFacts:
    """Read this machine's facts from the filesystem under `root` (tests pass a fake tree).

    machine_id hashes the stripped /etc/machine-id (else /var/lib/dbus/machine-id). mac hashes the
    first stable MAC in sorted /sys/class/net: not `lo`, backed by a device, not all-zero and
    not locally administered (which also rules out randomised MACs).
    """
    return HostFacts(machine_id=_read_machine_id(root), mac=_read_stable_mac(root))


def _read_machine_id(root: Path) -> str | None:
    for relative in MACHINE_ID_FILES:
        text = _read_fact(root / relative)
        if text and text != UNINITIALIZED_MACHINE_ID:
            return _sha256_hex(text)
    return None


def _read_stable_mac(root: Path) -> str | None:
    try:
        interfaces = sorted((root / "sys" / "class" / "net").iterdir())
    except OSError:
        return None
    for interface in interfaces:
        if interface.name == "lo" or not (interface / "device").exists():
            continue  # loopback and virtual interfaces (bridges, veth, tun) change freely
        octets = _parse_mac(_read_fact(interface / "address"))
        if octets is not None and any(octets) and not octets[0] & 0x02:
            return _sha256_hex(octets.hex(":"))
    return None


def _parse_mac(text: str | None) -> bytes | None:
    """The octets of a colon-separated hex hardware address, or None if it is not one."""
    if not text:
        return None
    parts = text.lower().split(":")
    if not all(_MAC_OCTET.fullmatch(part) for part in parts):
        return None
    return bytes.fromhex("".join(parts))


def _read_fact(path: Path) -> str | None:
    """The stripped text of a small system file, or None when it cannot be read."""
    try:
        with path.open("rb") as file:
            return file.read(FACT_FILE_MAX_BYTES).decode("utf-8", "replace").strip()
    except OSError:
        return None


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(facts: HostFacts) -> str:
    """sha256 hex of the canonical string
    "meshactors-host-v1\\nmachine_id=<digest or empty>\\nmac=<digest or empty>\\n"."""
    canonical = (
        f"{FINGERPRINT_DOMAIN}\nmachine_id={facts.machine_id or ''}\nmac={facts.mac or ''}\n"
    )
    return _sha256_hex(canonical)


def check_host(path: Path, facts: HostFacts) -> HostCheck:
    """Compare `facts` with the host record at `path`, recording them on first start and when only
    the MAC changed. MISMATCH is returned, not raised; a corrupt record raises HostGuardError,
    an unreadable one HostRecordUnreadable, one that cannot be written HostRecordUnwritable."""
    recorded = _read_record(path)
    if recorded is None:
        accept_host(path, facts)
        return HostCheck.RECORDED
    if recorded == facts:
        return HostCheck.MATCH
    if recorded.machine_id is not None and recorded.machine_id == facts.machine_id:
        accept_host(path, facts)
        return HostCheck.MAC_UPDATED
    return HostCheck.MISMATCH


def accept_host(path: Path, facts: HostFacts) -> None:
    """Record `facts` as the identity's machine, replacing any record (even a corrupt one);
    HostRecordUnwritable when it cannot be written."""
    record = {
        "version": HOST_FILE_VERSION,
        "machine_id": facts.machine_id,
        "mac": facts.mac,
        "fingerprint": fingerprint(facts),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        write_private_record(path, record)
    except OSError as exc:
        raise HostRecordUnwritable(
            f"cannot write host record {path}: {exc.strerror or exc}"
        ) from exc


def mismatch_message(path: Path) -> str:
    """What the CLI prints (with exit code 4) when check_host returns MISMATCH."""
    return (
        f"this identity was recorded on another machine ({path} does not match this host); "
        "two daemons sharing one identity would fight over its device id. "
        "If you moved it here on purpose, run `meshactors daemon accept-host`."
    )


def _is_str_or_none(value: object) -> TypeGuard[str | None]:
    return value is None or isinstance(value, str)


def _read_record(path: Path) -> HostFacts | None:
    """The facts in the host record at `path`, or None when there is no record yet."""
    try:
        record = read_private_record(
            path, version=HOST_FILE_VERSION, fields=_FIELDS, max_bytes=HOST_FILE_MAX_BYTES
        )
        machine_id, mac = record["machine_id"], record["mac"]
        if not (_is_str_or_none(machine_id) and _is_str_or_none(mac)):
            raise ValueError("machine_id and mac must be strings or null")
        facts = HostFacts(machine_id=machine_id, mac=mac)
        if record["fingerprint"] != fingerprint(facts):
            raise ValueError("fingerprint does not match the recorded facts")
        recorded_at = record["recorded_at"]
        if not isinstance(recorded_at, str):
            raise ValueError("recorded_at is not a string")
        datetime.fromisoformat(recorded_at)
        return facts
    except FileNotFoundError:
        return None
    except RefusedFile:
        raise  # not a corrupt record: a link or another user's file, never used (exit 3)
    except OSError as exc:
        raise HostRecordUnreadable(
            f"host record {path} is unreadable ({exc.strerror or exc})"
        ) from exc
    except ValueError as exc:
        raise HostGuardError(
            f"host record {path} is corrupt ({exc}); run `meshactors daemon accept-host` "
            "to record this machine"
        ) from exc
