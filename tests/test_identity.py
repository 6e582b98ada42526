"""The Ed25519 identity file: creation, reloading, permissions, corruption and labels."""

import base64
import json
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nacl.signing
import pytest

from meshactors.identity import (
    LABEL_MAX_CHARS,
    Identity,
    IdentityError,
    load_or_create_identity,
    set_identity_label,
)
from meshactors.wire.device_id import device_id_from_public_key, public_key_from_device_id


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_use_creates_a_private_versioned_file(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"

    identity = load_or_create_identity(path)

    stored = json.loads(path.read_text())
    assert stored == {
        "version": 1,
        "secret_key": base64.b64encode(bytes(identity.signing_key)).decode(),
        "label": None,
    }
    assert mode_of(path) == 0o600
    assert identity.label is None
    assert [p.name for p in tmp_path.iterdir()] == ["identity.json"]


def test_reload_returns_the_same_identity(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"

    first = load_or_create_identity(path)
    second = load_or_create_identity(path)

    assert second == first
    assert second.device_id == first.device_id


def test_public_key_device_id_and_signature(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path / "identity.json")

    signature = identity.sign(b"hello")

    assert len(identity.public_key) == 32
    assert identity.device_id == device_id_from_public_key(identity.public_key)
    assert public_key_from_device_id(identity.device_id) == identity.public_key
    assert len(signature) == 64
    nacl.signing.VerifyKey(identity.public_key).verify(b"hello", signature)


def test_repr_does_not_show_the_secret(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path / "identity.json")

    secret = bytes(identity.signing_key)

    assert secret.hex() not in repr(identity)
    assert base64.b64encode(secret).decode() not in repr(identity)


def test_wide_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    created = load_or_create_identity(path)
    path.chmod(0o644)

    loaded = load_or_create_identity(path)

    assert loaded == created
    assert mode_of(path) == 0o600


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    workers = 8
    barrier = threading.Barrier(workers)

    def create() -> Identity:
        barrier.wait()
        return load_or_create_identity(path)

    with ThreadPoolExecutor(workers) as pool:
        identities = list(pool.map(lambda _: create(), range(workers)))

    assert {identity.device_id for identity in identities} == {
        load_or_create_identity(path).device_id
    }


SEED = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "Expecting"),
        (json.dumps({"version": 2, "secret_key": SEED, "label": None}), "unsupported version 2"),
        (json.dumps({"version": 1, "secret_key": SEED}), "expected keys"),
        (json.dumps({"version": 1, "secret_key": 5, "label": None}), "not a string"),
        (json.dumps({"version": 1, "secret_key": "!!!!", "label": None}), "base64|Non-base64"),
        (
            json.dumps({"version": 1, "secret_key": SEED[:-4], "label": None}),
            "not 32",
        ),
        (json.dumps({"version": 1, "secret_key": SEED, "label": 7}), "neither a string nor null"),
        (json.dumps({"version": 1, "secret_key": SEED, "label": "x" * 65}), "limit is 64"),
        ("{}" + " " * 5000, "larger than"),
    ],
)
def test_corrupt_file_raises_and_is_never_overwritten(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "identity.json"
    path.write_text(content)

    with pytest.raises(IdentityError, match=reason) as caught:
        load_or_create_identity(path)

    assert str(path) in str(caught.value)
    assert path.read_text() == content


def test_unreadable_file_raises_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.mkdir()  # unreadable as a file even for root

    with pytest.raises(IdentityError, match=str(path)):
        load_or_create_identity(path)

    assert path.is_dir()


def test_unwritable_directory_raises_identity_error(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "identity.json"

    with pytest.raises(IdentityError, match="cannot write identity file"):
        load_or_create_identity(path)


def test_set_label_persists_and_keeps_the_key(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    original = load_or_create_identity(path)

    labelled = set_identity_label(path, "kitchen laptop ✓")

    assert labelled.label == "kitchen laptop ✓"
    assert labelled.device_id == original.device_id
    assert load_or_create_identity(path) == labelled
    assert mode_of(path) == 0o600


def test_set_label_none_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    set_identity_label(path, "old")

    cleared = set_identity_label(path, None)

    assert cleared.label is None
    assert json.loads(path.read_text())["label"] is None


def test_set_label_creates_the_identity_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"

    labelled = set_identity_label(path, "new box")

    assert load_or_create_identity(path) == labelled


def test_label_at_the_limit_is_accepted(tmp_path: Path) -> None:
    label = "x" * LABEL_MAX_CHARS

    assert set_identity_label(tmp_path / "identity.json", label).label == label


@pytest.mark.parametrize(
    ("label", "reason"),
    [
        ("x" * (LABEL_MAX_CHARS + 1), "65 characters long; the limit is 64"),
        ("two\nlines", "printable"),
        ("bell\x07", "printable"),
        ("", "must not be empty"),
    ],
)
def test_bad_labels_raise_value_error_and_change_nothing(
    tmp_path: Path, label: str, reason: str
) -> None:
    path = tmp_path / "identity.json"
    load_or_create_identity(path)
    before = path.read_bytes()

    with pytest.raises(ValueError, match=reason):
        set_identity_label(path, label)

    assert path.read_bytes() == before


def test_bad_label_on_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"

    with pytest.raises(ValueError, match="printable"):
        set_identity_label(path, "\x00")

    assert not path.exists()


def test_identity_rejects_a_bad_label_directly() -> None:
    with pytest.raises(ValueError, match="printable"):
        Identity(nacl.signing.SigningKey.generate(), "tab\there")
