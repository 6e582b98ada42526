"""A joined network's configuration: id, label, broker URLs and the auto-approve switch."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs

from meshactors.identity import validate_label
from meshactors.wire.broker import BROKER_PATH, is_network_id
from meshactors.wire.strict import describe_error, make_strict_converter

MAX_BROKERS = 8  # broker URLs per network, tried in turn
MAX_BROKER_URL_CHARS = 512  # one broker URL
BROKER_SCHEMES = ("ws", "wss")

_converter = make_strict_converter()


class ConfigError(ValueError):
    """A network config that is not valid; the message names the field."""


def _check_id(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not is_network_id(value):
        raise ConfigError(f"network id must be 1-64 characters of [A-Za-z0-9._-]: {value!r}")


def _check_label(
    _instance: object, _attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    try:
        validate_label(value)
    except ValueError as exc:
        raise ConfigError(f"label: {exc}") from None


def _check_brokers(
    _instance: object, _attribute: attrs.Attribute[list[str]], value: list[str]
) -> None:
    if not 1 <= len(value) <= MAX_BROKERS:
        raise ConfigError(f"brokers must list 1 to {MAX_BROKERS} URLs, got {len(value)}")
    if len(set(value)) != len(value):
        raise ConfigError("brokers must not repeat a URL")
    for url in value:
        check_broker_url(url)


def _with_paths(urls: list[str]) -> list[str]:
    """Broker URLs with the broker's path where none was given (`ws://host:7447` → `/v1`);
    anything else is left for the validator to refuse."""
    if not isinstance(urls, list):
        return urls
    return [with_broker_path(url) if isinstance(url, str) else url for url in urls]


def with_broker_path(url: str) -> str:
    """`url` with BROKER_PATH when it has no path at all (nor query or fragment)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.path in ("", "/") and not parts.query and not parts.fragment and parts.netloc:
        return parts._replace(path=BROKER_PATH).geturl()
    return url


def check_broker_url(url: str) -> str:
    """Return `url` if it is a ws:// or wss:// URL with a host; else raise ConfigError."""
    if len(url) > MAX_BROKER_URL_CHARS:
        raise ConfigError(f"broker URL longer than {MAX_BROKER_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: {exc}") from None
    if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
        raise ConfigError(f"broker URL must be ws://HOST[:PORT]/PATH or wss://…: {url!r}")
    if port == 0 or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"broker URL must have no port 0, query, fragment or user: {url!r}")
    return url


@attrs.frozen
class NetworkConfig:
    """What the daemon was told about one network; validated whenever one is built."""

    id: str = attrs.field(validator=_check_id)
    brokers: list[str] = attrs.field(converter=_with_paths, validator=_check_brokers)
    label: str | None = attrs.field(default=None, validator=_check_label)
    auto_approve: bool = False

    @classmethod
    def from_json(cls, data: Any) -> NetworkConfig:
        """Structure untrusted JSON strictly (no coercion, no unknown keys); ConfigError if bad."""
        try:
            return _converter.structure(data, cls)
        except Exception as exc:
            raise ConfigError(_first_config_error(exc) or describe_error(exc)) from None

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the state database and shown by `networks_list`."""
        data: dict[str, Any] = _converter.unstructure(self)
        return data

    def needs_reconnect_from(self, other: NetworkConfig) -> bool:
        """Whether switching from `other` to this config needs a reconnect (brokers changed)."""
        return self.brokers != other.brokers


def _first_config_error(exc: BaseException) -> str | None:
    """The message of a validator's ConfigError inside cattrs' error group, if there is one."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_config_error(inner)
            if found is not None:
                return found
    return None
