"""Device tokens and the policy that admits a WebSocket connection.

A token is issued in the OTA reply and stored by the firmware, which sends it back as
``Authorization: Bearer <token>`` on every WebSocket handshake. It is
``v1.<payload>.<signature>``: the payload is url-safe base64 of compact JSON (device id, client id,
token generation, expiry) and the signature is HMAC-SHA256 over ``v1.<payload>`` with the server
secret, url-safe base64 without padding.

The secret comes from ``$XIAOZHI_TRIO_SECRET`` or is generated once into ``<data>/secret.key``
(mode 0600). Changing it invalidates every token; devices get new ones at their next boot.

The firmware asks for a token only when it boots, and a device may stay on for months: a token that
expires locks it out until it is restarted. Hence the long default lifetime; ``devices revoke``
(which bumps the device's token generation) is what cuts a device off, at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends import ConfigError
from ..protocol.identity import normalise_device_id
from ..store.devices import Device, DeviceStore
from ..tables import require

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

SECRET_ENV = "XIAOZHI_TRIO_SECRET"
SECRET_FILE = "secret.key"
_PREFIX = "v1"


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: who may open a WebSocket session."""

    #: Check the token on every WebSocket handshake (off: anyone who reaches the port may talk).
    enabled: bool = True
    #: If not empty, only these device ids (MAC addresses) get tokens and sessions.
    allowed_devices: tuple[str, ...] = ()
    #: Token lifetime in days; 0 = tokens never expire (revocation still works).
    token_ttl_days: float = 365.0

    def __post_init__(self) -> None:
        require(self.token_ttl_days >= 0, "[auth] token_ttl_days must be 0 (never expire) or more")
        require(
            self.enabled or not self.allowed_devices,
            "[auth] allowed_devices has no effect while [auth] enabled = false; enable auth or remove the list",
        )
        object.__setattr__(self, "allowed_devices", tuple(normalise_device_id(d) for d in self.allowed_devices))


@dataclass(frozen=True, slots=True)
class AuthDecision:
    ok: bool
    #: Why: for logs and for the 401 body (never contains the token).
    reason: str


@dataclass(frozen=True, slots=True)
class TokenClaims:
    device_id: str
    client_id: str
    generation: int
    #: Unix time after which the token is refused; 0 = never.
    expires: float


class TokenError(ValueError):
    """A token is malformed, forged or expired; the message says which."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("token is not valid base64") from None


class TokenSigner:
    """Issues and verifies tokens with one server secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("the server secret must be at least 16 bytes")
        self._secret = secret

    def _sign(self, message: bytes) -> str:
        return _b64encode(hmac.new(self._secret, message, hashlib.sha256).digest())

    def issue(self, claims: TokenClaims) -> str:
        payload = json.dumps(
            {"d": claims.device_id, "c": claims.client_id, "g": claims.generation, "e": int(claims.expires)},
            separators=(",", ":"),
        )
        body = f"{_PREFIX}.{_b64encode(payload.encode())}"
        return f"{body}.{self._sign(body.encode())}"

    def verify(self, token: str, now: float) -> TokenClaims:
        """The claims of a genuine, unexpired token; ``TokenError`` otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise TokenError("token is malformed")
        body = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._sign(body.encode()), parts[2]):
            raise TokenError("token signature is wrong (forged, or signed with another server secret)")
        try:
            data = json.loads(_b64decode(parts[1]))
            claims = TokenClaims(str(data["d"]), str(data["c"]), int(data["g"]), float(data["e"]))
        except (ValueError, KeyError, TypeError):
            raise TokenError("token payload is malformed") from None
        if claims.expires and claims.expires <= now:
            raise TokenError("token has expired (the device gets a new one when it restarts)")
        return claims


def load_secret(data_dir: Path) -> bytes:
    """The server secret: ``$XIAOZHI_TRIO_SECRET``, else ``<data_dir>/secret.key``, created on first use."""
    if env := os.environ.get(SECRET_ENV):
        if len(env) < 16:
            raise ConfigError(f"${SECRET_ENV} must be at least 16 characters")
        return env.encode()
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once cannot both create (and disagree on) the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); restricting it to 0600", path, mode)
            path.chmod(0o600)
        secret = path.read_text().strip()
        if len(secret) < 32:
            raise ConfigError(f"{path} holds no valid secret; delete it to have a new one generated") from None
        return secret.encode()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    log.info("generated the server secret in %s", path)
    return path.read_text().strip().encode()


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    value = authorization.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


class AuthPolicy:
    """Decides whether a device may open a session, and issues its tokens."""

    def __init__(
        self,
        config: AuthConfig,
        signer: TokenSigner,
        registry: DeviceStore,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.signer = signer
        self.registry = registry
        self.metrics = metrics
        self._clock = clock

    def allows(self, device_id: str) -> bool:
        """Is ``device_id`` on the allow-list (or is there none, or is auth off)?"""
        if not self.config.enabled or not self.config.allowed_devices:
            return True
        return normalise_device_id(device_id) in self.config.allowed_devices

    def issue(self, device: Device) -> str:
        """A token for a bound ``device`` (its current client id and token generation)."""
        ttl = self.config.token_ttl_days * 86400.0
        expires = self._clock() + ttl if ttl else 0.0
        return self.signer.issue(TokenClaims(device.device_id, device.client_id, device.token_generation, expires))

    async def check(self, device_id: str, client_id: str, authorization: str | None) -> AuthDecision:
        """May ``device_id`` (with ``client_id`` and this ``Authorization`` value) open a session?

        Accepts ``Bearer <token>`` and a bare token. With auth off, everything is accepted.
        """
        decision = await self._decide(normalise_device_id(device_id), client_id.strip(), authorization)
        if self.metrics is not None:
            self.metrics.auth_decision(decision)
        return decision

    async def _decide(self, device_id: str, client_id: str, authorization: str | None) -> AuthDecision:
        if not self.config.enabled:
            return AuthDecision(True, "auth disabled")
        if not self.allows(device_id):
            return AuthDecision(False, "device is not in [auth] allowed_devices")
        token = _bearer(authorization)
        if token is None:
            return AuthDecision(False, "no token (the device gets one from the OTA check-in)")
        try:
            claims = self.signer.verify(token, self._clock())
        except TokenError as e:
            return AuthDecision(False, str(e))
        if claims.device_id != device_id:
            return AuthDecision(False, "token belongs to another device")
        if client_id and claims.client_id and client_id != claims.client_id:
            return AuthDecision(False, "token belongs to another client id")
        device = await self.registry.get(device_id)
        if device is None:
            return AuthDecision(False, "device is unknown to the registry")
        if not device.bound or device.client_id != claims.client_id:
            return AuthDecision(False, "device is not bound (run: xiaozhi-trio devices bind CODE)")
        if device.token_generation != claims.generation:
            return AuthDecision(False, "token was revoked")
        return AuthDecision(True, "token valid")

    async def refuse_reason(self, device_id: str, client_id: str, authorization: str | None) -> str | None:
        """``check`` in the shape of the WebSocket server's authorizer: None to accept, else why not."""
        decision = await self.check(device_id, client_id, authorization)
        return None if decision.ok else decision.reason
