"""The WebSocket handshake: who is connecting, with which binary framing.

The firmware sends ``Authorization``, ``Protocol-Version``, ``Device-Id`` and ``Client-Id`` headers.
Browsers cannot set headers, so the same values are also accepted as query parameters
(``device-id``, ``client-id``, ``authorization``, ``protocol-version``); headers win.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from ..audio.framing import SUPPORTED_VERSIONS
from .identity import normalise_device_id


class HandshakeError(ValueError):
    """The handshake cannot be accepted; ``status`` is the HTTP status to reject with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Handshake:
    device_id: str
    client_id: str
    protocol_version: int
    #: The raw ``Authorization`` value (``Bearer …``), or None.
    authorization: str | None
    path: str
    #: Whether the client named its framing version; if not, the hello's ``version`` decides.
    version_given: bool = True


def _normalise_path(path: str) -> str:
    return path.rstrip("/") or "/"


def parse_handshake(target: str, headers: Iterable[tuple[bytes | str, bytes | str]], expected_path: str) -> Handshake:
    """Read a handshake from the request target (path + query) and headers.

    A device without a ``Device-Id`` still gets a session (browser test pages often have none):
    it is named by its client id, or ``anonymous``. The id is normalized (``normalise_device_id``).
    """
    split = urlsplit(target)
    if _normalise_path(split.path) != _normalise_path(expected_path):
        raise HandshakeError(f"unknown path {split.path!r}; devices connect to {expected_path!r}", status=404)
    values: dict[str, str] = {}
    for key, value in parse_qsl(split.query):
        values.setdefault(key.lower().replace("_", "-"), value)
    for raw_key, raw_value in headers:
        key = raw_key.decode("latin-1") if isinstance(raw_key, bytes) else raw_key
        value = raw_value.decode("utf-8", "replace") if isinstance(raw_value, bytes) else raw_value
        values[key.lower()] = value  # headers override query parameters
    version_given = bool(values.get("protocol-version", "").strip())
    version_text = values.get("protocol-version", "").strip() or "1"
    try:
        version = int(version_text)
    except ValueError:
        raise HandshakeError(f"Protocol-Version {version_text!r} is not a number") from None
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(map(str, SUPPORTED_VERSIONS))
        raise HandshakeError(f"unsupported Protocol-Version {version}; this server speaks {supported}")
    client_id = values.get("client-id", "").strip()
    # Normalized here, once: everything behind the handshake keys on this spelling.
    device_id = normalise_device_id(values.get("device-id", "") or client_id or "anonymous")
    authorization = values.get("authorization") or None
    return Handshake(device_id, client_id, version, authorization, split.path, version_given)
