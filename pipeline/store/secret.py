"""The server secret kept in the shared database, so that every server signs and accepts the same tokens.

One server alone keeps its secret in ``<data_dir>/secret.key`` (``ops.auth.load_secret``). Servers
that share a PostgreSQL database share this row instead: the first server to start creates it, the
others read it, so a device's token works on whichever server the load balancer picks.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from .database import SqlDatabase

log = logging.getLogger(__name__)

_MIGRATIONS = ["CREATE TABLE server_secret (id INTEGER PRIMARY KEY, secret TEXT NOT NULL)"]


def shared_secret(database: SqlDatabase) -> bytes:
    """The secret stored in ``database``, created there by the first caller. Synchronous (startup)."""
    database.migrate("secret", _MIGRATIONS)
    candidate = secrets.token_hex(32)

    def read_or_create(c: Any) -> tuple[str, bool]:
        # Two servers starting at once: the row's key makes the second insert a no-op.
        created = c.execute(
            "INSERT INTO server_secret (id, secret) VALUES (1, ?) ON CONFLICT (id) DO NOTHING", (candidate,)
        ).rowcount
        row = c.execute("SELECT secret FROM server_secret WHERE id = 1").fetchone()
        return row[0], bool(created)

    secret, created = database.run_now(read_or_create)
    if created:
        log.info("generated the server secret in %s", database.where)
    return secret.encode()
