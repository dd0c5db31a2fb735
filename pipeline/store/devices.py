"""The device registry: every device that checked in, its board and firmware, and its binding.

A device is identified by its ``Device-Id`` (the MAC address, lower case) and the ``Client-Id`` UUID
its firmware generated on first boot. A *binding* says that the owner admitted that pair. A MAC
address is visible to anyone within Wi-Fi range, the UUID is not, so a bound device that comes back
with another UUID (its flash was erased, or something imitates its MAC) gets a *claim*: an
activation code that the owner must bind again. Until then the old binding stays as it was.

Life of a device (``[devices] activation = true``, the default)::

    first OTA check-in   -> unbound, with a claim (6-digit code, challenge, expiry)
    devices bind CODE    -> bound (or "approved" while a device with a serial number still has to
                            prove its identity with the HMAC of the challenge, see ops.activation)
    devices revoke ID    -> unbound and revoked; old tokens die; the next check-in gets a new code

With ``activation = false`` a new device is bound on its first check-in; a revoked one still needs
its code bound. Tokens carry the device's ``token_generation``; revoking bumps it.

Tables (owner ``devices`` in the shared database): ``devices``, ``device_bindings`` (history of binds
and revocations) and ``device_keys`` (per-serial HMAC keys for activation version 2).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..protocol.identity import normalise_device_id
from ..tables import require
from .database import SqlDatabase
from .sqlite import open_database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicesConfig:
    """``[devices]``: device onboarding."""

    #: New devices must be bound by the owner with the code they show (``xiaozhi-trio devices bind``).
    activation: bool = True
    #: Minutes an activation code stays valid; the device is given a fresh one after that.
    code_ttl_minutes: int = 60
    #: Devices with a serial number (activation version 2) must prove it with a provisioned HMAC key.
    require_device_key: bool = False
    #: Shown on the device's screen with the code; ``{code}`` is replaced. Empty: a built-in text.
    activation_message: str = ""

    def __post_init__(self) -> None:
        require(1 <= self.code_ttl_minutes <= 7 * 24 * 60, "[devices] code_ttl_minutes must be between 1 and 10080")


@dataclass(frozen=True, slots=True)
class CheckIn:
    """What a device said about itself in an OTA request."""

    device_id: str
    client_id: str
    board: str = ""
    board_type: str = ""
    firmware_version: str = ""
    serial_number: str = ""
    activation_version: int = 1
    language: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    client_id: str
    board: str
    board_type: str
    firmware_version: str
    serial_number: str
    activation_version: int
    language: str
    address: str
    first_seen: float
    last_seen: float
    bound: bool
    bound_at: float | None
    revoked_at: float | None
    token_generation: int
    #: The Client-Id a pending activation is for, its code, challenge and expiry (all None if none).
    claim_client_id: str | None
    activation_code: str | None
    activation_challenge: str | None
    activation_expires: float | None
    #: The owner bound the code, but the device has yet to prove its serial number.
    claim_approved: bool
    #: The device proved its serial number (HMAC of the challenge), the owner has yet to bind the code.
    claim_proven: bool

    @property
    def state(self) -> str:
        """``bound``, ``approved`` (waiting for the device's proof), ``pending``, ``revoked`` or ``unbound``.

        A bound device with an open claim from another client id reads ``bound, claim pending``.
        """
        claim = "approved" if self.claim_approved else "pending" if self.activation_code is not None else ""
        if self.bound:
            return f"bound, claim {claim}" if claim else "bound"
        if claim:
            return claim
        return "revoked" if self.revoked_at is not None else "unbound"

    def claim_for(self, client_id: str, now: float) -> bool:
        """True if an unexpired claim exists for ``client_id``."""
        return (
            self.activation_code is not None
            and self.claim_client_id == client_id
            and self.activation_expires is not None
            and self.activation_expires > now
        )


@dataclass(frozen=True, slots=True)
class BindingEvent:
    device_id: str
    client_id: str
    action: str
    at: float
    detail: str


@runtime_checkable
class DeviceStore(Protocol):
    """Devices, their bindings and serial-number keys: what OTA, activation, the handshake's token
    check and ``xiaozhi-trio devices`` need. ``DeviceRegistry`` (SQLite) is the built-in one; a plugin
    provides another through ``xiaozhi_register_stores``. Every method is safe to call concurrently.
    """

    #: The ``[devices]`` policy the store applies (code lifetime, activation on or off).
    config: DevicesConfig

    async def ping(self) -> None:
        """Reach the storage once (the health check); raise ``DatabaseError`` if it is unavailable."""
        ...

    async def get(self, device_id: str) -> Device | None:
        """One device, or None if it never checked in."""
        ...

    async def list(self) -> list[Device]:
        """Every device, the most recently seen first."""
        ...

    async def history(self, device_id: str) -> list[BindingEvent]:
        """The device's binds and revocations, oldest first."""
        ...

    async def key_for(self, serial_number: str) -> bytes | None:
        """The HMAC key provisioned for a serial number, if any."""
        ...

    async def needs_proof(self, device: Device) -> bool:
        """True if the device must prove its serial number before it is bound."""
        ...

    async def check_in(self, info: CheckIn) -> Device:
        """Record an OTA check-in (creating the device, opening a claim as the policy says)."""
        ...

    async def bind_code(self, code: str) -> Device | None:
        """Admit the device showing activation ``code``; None if no device waits with it."""
        ...

    async def complete_activation(self, device_id: str, client_id: str, *, proven: bool) -> Device | None:
        """The device polled activation; bind it if its claim is approved (and proven if needed)."""
        ...

    async def bind_device(self, device_id: str, client_id: str | None = None) -> Device:
        """Admit a device directly by id."""
        ...

    async def revoke(self, device_id: str) -> Device | None:
        """Unbind the device and invalidate its tokens; None if unknown."""
        ...

    async def set_key(self, serial_number: str, key: bytes) -> None:
        """Provision a serial number's HMAC key (activation version 2)."""
        ...

    def close(self) -> None:
        """Release the store's connections."""
        ...


#: The tables per dialect: append new steps to both lists, never edit or reorder old ones.
_MIGRATIONS = {
    "sqlite": [
        (
            "CREATE TABLE devices ("
            " device_id TEXT PRIMARY KEY, client_id TEXT NOT NULL DEFAULT '', board TEXT NOT NULL DEFAULT '',"
            " board_type TEXT NOT NULL DEFAULT '', firmware_version TEXT NOT NULL DEFAULT '',"
            " serial_number TEXT NOT NULL DEFAULT '', activation_version INTEGER NOT NULL DEFAULT 1,"
            " language TEXT NOT NULL DEFAULT '', address TEXT NOT NULL DEFAULT '',"
            " first_seen REAL NOT NULL, last_seen REAL NOT NULL,"
            " bound INTEGER NOT NULL DEFAULT 0, bound_at REAL, revoked_at REAL,"
            " token_generation INTEGER NOT NULL DEFAULT 0,"
            " claim_client_id TEXT, activation_code TEXT UNIQUE, activation_challenge TEXT, activation_expires REAL,"
            " claim_approved INTEGER NOT NULL DEFAULT 0, claim_proven INTEGER NOT NULL DEFAULT 0)"
        ),
        (
            "CREATE TABLE device_bindings ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, client_id TEXT NOT NULL,"
            " action TEXT NOT NULL, at REAL NOT NULL, detail TEXT NOT NULL DEFAULT '')"
        ),
        "CREATE INDEX device_bindings_by_device ON device_bindings (device_id, id)",
        "CREATE TABLE device_keys (serial_number TEXT PRIMARY KEY, hmac_key BLOB NOT NULL, added_at REAL NOT NULL)",
    ],
    "postgres": [
        (
            "CREATE TABLE devices ("
            " device_id TEXT PRIMARY KEY, client_id TEXT NOT NULL DEFAULT '', board TEXT NOT NULL DEFAULT '',"
            " board_type TEXT NOT NULL DEFAULT '', firmware_version TEXT NOT NULL DEFAULT '',"
            " serial_number TEXT NOT NULL DEFAULT '', activation_version INTEGER NOT NULL DEFAULT 1,"
            " language TEXT NOT NULL DEFAULT '', address TEXT NOT NULL DEFAULT '',"
            " first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,"
            " bound INTEGER NOT NULL DEFAULT 0, bound_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION,"
            " token_generation INTEGER NOT NULL DEFAULT 0,"
            " claim_client_id TEXT, activation_code TEXT UNIQUE, activation_challenge TEXT,"
            " activation_expires DOUBLE PRECISION,"
            " claim_approved INTEGER NOT NULL DEFAULT 0, claim_proven INTEGER NOT NULL DEFAULT 0)"
        ),
        (
            "CREATE TABLE device_bindings ("
            " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, device_id TEXT NOT NULL, client_id TEXT NOT NULL,"
            " action TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, detail TEXT NOT NULL DEFAULT '')"
        ),
        "CREATE INDEX device_bindings_by_device ON device_bindings (device_id, id)",
        "CREATE TABLE device_keys (serial_number TEXT PRIMARY KEY, hmac_key BYTEA NOT NULL,"
        " added_at DOUBLE PRECISION NOT NULL)",
    ],
}

_COLUMNS = (
    "device_id, client_id, board, board_type, firmware_version, serial_number, activation_version, language,"
    " address, first_seen, last_seen, bound, bound_at, revoked_at, token_generation, claim_client_id,"
    " activation_code, activation_challenge, activation_expires, claim_approved, claim_proven"
)


def _device(row: Any) -> Device:
    return Device(
        device_id=row["device_id"], client_id=row["client_id"], board=row["board"], board_type=row["board_type"],
        firmware_version=row["firmware_version"], serial_number=row["serial_number"],
        activation_version=row["activation_version"], language=row["language"], address=row["address"],
        first_seen=row["first_seen"], last_seen=row["last_seen"], bound=bool(row["bound"]),
        bound_at=row["bound_at"], revoked_at=row["revoked_at"], token_generation=row["token_generation"],
        claim_client_id=row["claim_client_id"], activation_code=row["activation_code"],
        activation_challenge=row["activation_challenge"], activation_expires=row["activation_expires"],
        claim_approved=bool(row["claim_approved"]), claim_proven=bool(row["claim_proven"]),
    )


def _select(c: Any, device_id: str) -> Device | None:
    row = c.execute(f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    return _device(row) if row else None


def _history(c: Any, device_id: str, client_id: str, action: str, now: float, detail: str = "") -> None:
    c.execute(
        "INSERT INTO device_bindings (device_id, client_id, action, at, detail) VALUES (?, ?, ?, ?, ?)",
        (device_id, client_id, action, now, detail),
    )


def _new_code(c: Any) -> str:
    # Six digits, as the firmware speaks them one by one; unique among all stored codes.
    while True:
        code = f"{secrets.randbelow(1_000_000):06d}"
        if c.execute("SELECT 1 FROM devices WHERE activation_code = ?", (code,)).fetchone() is None:
            return code


def _open_claim(c: Any, device: Device, client_id: str, now: float, ttl: float) -> None:
    """Keep an unexpired claim for the same client (the code must not change while typed); else a new one."""
    if device.claim_for(client_id, now):
        return
    c.execute(
        "UPDATE devices SET claim_client_id = ?, activation_code = ?, activation_challenge = ?,"
        " activation_expires = ?, claim_approved = 0, claim_proven = 0 WHERE device_id = ?",
        (client_id, _new_code(c), secrets.token_hex(16), now + ttl, device.device_id),
    )


def _clear_claim_sql() -> str:
    return (
        "claim_client_id = NULL, activation_code = NULL, activation_challenge = NULL,"
        " activation_expires = NULL, claim_approved = 0, claim_proven = 0"
    )


def _bind(c: Any, device: Device, client_id: str, now: float, action: str) -> None:
    # A binding for another client id than before makes the old client's tokens worthless.
    bump = 1 if (device.client_id != client_id and device.bound) else 0
    c.execute(
        f"UPDATE devices SET client_id = ?, bound = 1, bound_at = ?, revoked_at = NULL,"
        f" token_generation = token_generation + ?, {_clear_claim_sql()} WHERE device_id = ?",
        (client_id, now, bump, device.device_id),
    )
    _history(c, device.device_id, client_id, action, now)


class DeviceRegistry:
    """Devices and bindings in the shared database (SQLite or PostgreSQL). Every method is safe to call
    concurrently, also from several servers sharing a PostgreSQL database."""

    def __init__(self, database: SqlDatabase, config: DevicesConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        """Use ``database`` (migrating the device tables now, synchronously); ``clock`` gives Unix time."""
        self.database = database
        self.config = config or DevicesConfig()
        self._clock = clock
        database.migrate("devices", _MIGRATIONS[database.dialect])

    @classmethod
    def open(cls, path: Path, config: DevicesConfig | None = None) -> DeviceRegistry:
        """Open (creating it if needed) the database file at ``path``."""
        return cls(open_database(path), config)

    @property
    def code_ttl(self) -> float:
        return self.config.code_ttl_minutes * 60.0

    # ---- queries ---------------------------------------------------------------------------

    async def ping(self) -> None:
        await self.database.fetch("SELECT 1")

    async def get(self, device_id: str) -> Device | None:
        rows = await self.database.fetch(f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?", (normalise_device_id(device_id),))
        return _device(rows[0]) if rows else None

    async def list(self) -> list[Device]:
        rows = await self.database.fetch(f"SELECT {_COLUMNS} FROM devices ORDER BY last_seen DESC")
        return [_device(row) for row in rows]

    async def history(self, device_id: str) -> list[BindingEvent]:
        rows = await self.database.fetch(
            "SELECT device_id, client_id, action, at, detail FROM device_bindings WHERE device_id = ? ORDER BY id",
            (normalise_device_id(device_id),),
        )
        return [BindingEvent(r["device_id"], r["client_id"], r["action"], r["at"], r["detail"]) for r in rows]

    async def key_for(self, serial_number: str) -> bytes | None:
        """The HMAC key provisioned for ``serial_number``, or None."""
        rows = await self.database.fetch("SELECT hmac_key FROM device_keys WHERE serial_number = ?", (serial_number,))
        return bytes(rows[0][0]) if rows else None

    async def needs_proof(self, device: Device) -> bool:
        """Must this device prove its serial number (HMAC of the challenge) before it is bound?"""
        if not device.serial_number:
            return False
        return self.config.require_device_key or await self.key_for(device.serial_number) is not None

    # ---- changes ---------------------------------------------------------------------------

    async def check_in(self, info: CheckIn) -> Device:
        """Record an OTA check-in; open an activation claim if the device must be bound first."""
        now = self._clock()
        device_id = normalise_device_id(info.device_id)

        def details(c: Any, *, client_id: str | None = None) -> None:
            c.execute(
                "UPDATE devices SET client_id = coalesce(?, client_id), board=?, board_type=?, firmware_version=?,"
                " serial_number=?, activation_version=?, language=?, address=?, last_seen=? WHERE device_id=?",
                (client_id, info.board, info.board_type, info.firmware_version, info.serial_number,
                 info.activation_version, info.language, info.address, now, device_id),
            )

        def write(c: Any) -> Device:
            device = _select(c, device_id)
            if device is None:
                c.execute(
                    "INSERT INTO devices (device_id, client_id, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                    (device_id, info.client_id, now, now),
                )
                details(c)
                device = _select(c, device_id)
                assert device is not None
                if self.config.activation:
                    _open_claim(c, device, info.client_id, now, self.code_ttl)
                else:
                    _bind(c, device, info.client_id, now, "auto")
            elif device.bound and device.client_id == info.client_id:
                details(c)
            elif not self.config.activation and device.revoked_at is None:
                # Activation is off: whatever presents this device id is admitted (documented).
                _bind(c, device, info.client_id, now, "auto")
                details(c)
            elif not device.bound:
                # Nothing to protect yet: the newest details win.
                details(c, client_id=info.client_id)
                _open_claim(c, device, info.client_id, now, self.code_ttl)
            else:
                # A bound device id with another client id: an unverified claimant. Keep the bound
                # device's details; only note when this id was last heard of.
                c.execute("UPDATE devices SET last_seen=? WHERE device_id=?", (now, device_id))
                _open_claim(c, device, info.client_id, now, self.code_ttl)
            result = _select(c, device_id)
            assert result is not None
            return result

        return await self.database.transaction(write)

    async def bind_code(self, code: str) -> Device | None:
        """The owner binds activation ``code``; None if no unexpired claim has it.

        If the device must still prove its serial number (``needs_proof``), the claim becomes
        *approved* and the device is bound when its proof arrives (``complete_activation``).
        """
        now = self._clock()
        code = code.strip()
        rows = await self.database.fetch("SELECT device_id FROM devices WHERE activation_code = ? AND activation_expires > ?", (code, now))
        if not rows:
            return None
        device = await self.get(rows[0][0])
        needs = device is not None and await self.needs_proof(device)

        def write(c: Any) -> Device | None:
            current = _select(c, rows[0][0])
            if current is None or current.activation_code != code or not current.claim_for(current.claim_client_id or "", now):
                return None
            assert current.claim_client_id is not None
            if needs and not current.claim_proven:
                c.execute("UPDATE devices SET claim_approved = 1 WHERE device_id = ?", (current.device_id,))
                _history(c, current.device_id, current.claim_client_id, "approved", now, f"code {code}")
            else:
                _bind(c, current, current.claim_client_id, now, "bound")
            return _select(c, current.device_id)

        return await self.database.transaction(write)

    async def complete_activation(self, device_id: str, client_id: str, *, proven: bool) -> Device | None:
        """The device asks whether it is activated; ``proven``: it just proved its serial number.

        Binds an approved claim once proven; remembers a proof that arrives before the owner binds.
        Returns the device as it is now (None if unknown).
        """
        now = self._clock()
        device_id = normalise_device_id(device_id)

        def write(c: Any) -> Device | None:
            device = _select(c, device_id)
            if device is None or not proven or not device.claim_for(client_id, now):
                return device
            if device.claim_approved:
                _bind(c, device, client_id, now, "bound")
            elif not device.claim_proven:
                c.execute("UPDATE devices SET claim_proven = 1 WHERE device_id = ?", (device_id,))
            return _select(c, device_id)

        return await self.database.transaction(write)

    async def bind_device(self, device_id: str, client_id: str | None = None) -> Device:
        """Bind ``device_id`` directly (for clients that cannot show a code, e.g. a browser test page).

        A device never seen before is created; ``client_id`` None keeps the one on record.
        """
        now = self._clock()
        device_id = normalise_device_id(device_id)

        def write(c: Any) -> Device:
            device = _select(c, device_id)
            if device is None:
                c.execute(
                    "INSERT INTO devices (device_id, client_id, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                    (device_id, client_id or "", now, now),
                )
                device = _select(c, device_id)
                assert device is not None
            _bind(c, device, device.client_id if client_id is None else client_id, now, "bound")
            result = _select(c, device_id)
            assert result is not None
            return result

        return await self.database.transaction(write)

    async def revoke(self, device_id: str) -> Device | None:
        """Unbind ``device_id`` and invalidate its tokens; None if unknown."""
        now = self._clock()
        device_id = normalise_device_id(device_id)

        def write(c: Any) -> Device | None:
            device = _select(c, device_id)
            if device is None:
                return None
            c.execute(
                f"UPDATE devices SET bound = 0, revoked_at = ?, token_generation = token_generation + 1,"
                f" {_clear_claim_sql()} WHERE device_id = ?",
                (now, device_id),
            )
            _history(c, device_id, device.client_id, "revoked", now)
            return _select(c, device_id)

        return await self.database.transaction(write)

    async def set_key(self, serial_number: str, key: bytes) -> None:
        """Provision the HMAC key (the device's eFuse HMAC key 0) for ``serial_number``."""
        await self.database.execute(
            "INSERT INTO device_keys (serial_number, hmac_key, added_at) VALUES (?, ?, ?)"
            " ON CONFLICT (serial_number) DO UPDATE SET hmac_key = excluded.hmac_key, added_at = excluded.added_at",
            (serial_number, key, self._clock()),
        )

    def close(self) -> None:
        self.database.close()
