"""``OpsServices``: everything the HTTP side and the WebSocket handshake need, built from the config."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..registry import Plugins
from ..store.context import StoreContext
from ..store.device_tools import DeviceToolLists
from ..store.devices import DevicesConfig, DeviceStore
from ..store.secret import shared_secret
from ..store.sqlite import DATABASE_FILE, open_database
from .auth import SECRET_ENV, AuthConfig, AuthPolicy, TokenSigner, load_secret
from .firmware import FirmwareFolder
from .metrics import Metrics, MetricsConfig
from .ota import OtaConfig

if TYPE_CHECKING:
    from ..app import App
from ..tables import parse_table


@dataclass(frozen=True)
class OpsConfig:
    """The four operations tables, parsed and checked."""

    ota: OtaConfig = field(default_factory=OtaConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @classmethod
    def from_config(cls, config: Config) -> OpsConfig:
        """Parse ``[ota]``, ``[auth]``, ``[devices]`` and ``[metrics]``; ``ConfigError`` names a wrong key."""
        return cls(
            ota=parse_table("ota", OtaConfig, config.extra.get("ota")),
            auth=parse_table("auth", AuthConfig, config.extra.get("auth")),
            devices=parse_table("devices", DevicesConfig, config.extra.get("devices")),
            metrics=parse_table("metrics", MetricsConfig, config.extra.get("metrics")),
        )


@dataclass
class OpsServices:
    """What the HTTP server and the WebSocket handshake share. Build it with ``build_ops_services``."""

    config: Config
    #: The parsed ``[ota]``, ``[auth]``, ``[devices]`` and ``[metrics]`` tables.
    settings: OpsConfig
    registry: DeviceStore
    auth: AuthPolicy
    metrics: Metrics
    firmware: FirmwareFolder
    #: Each device's last tool listing (in the data folder's SQLite file).
    tool_lists: DeviceToolLists
    #: Live session count from the session manager; None: counted from session events.
    session_count: Callable[[], int] | None = None
    #: Unix time (server_time in the OTA reply, token expiry, activation codes).
    clock: Callable[[], float] = time.time
    #: In a worker of ``serve --workers N``: publishes this worker's metrics and merges its siblings'.
    worker_metrics: WorkerMetrics | None = None

    @property
    def sessions(self) -> int:
        return self.session_count() if self.session_count is not None else self.metrics.connected

    def attach(self, app: App) -> None:
        """Wire into the WebSocket side: the live session count, the metrics as a session-event
        observer plugin, ``auth.refuse_reason`` as the handshake authorizer, and where sessions
        record each device's tool listing."""
        self.session_count = lambda: app.sessions.count
        app.plugins.register(self.metrics, name="xiaozhi_trio.metrics")
        self.metrics.watch_load(app)
        app.authorize = self.auth.refuse_reason
        app.tool_lists = self.tool_lists

    def close(self) -> None:
        """Close the registry's and the tool listings' database connections."""
        self.registry.close()
        self.tool_lists.database.close()


def build_ops_services(
    config: Config,
    *,
    registry: DeviceStore | None = None,
    plugins: Plugins | None = None,
    metrics: Metrics | None = None,
    session_count: Callable[[], int] | None = None,
    clock: Callable[[], float] = time.time,
) -> OpsServices:
    """Parse the ops tables, open the device store (``[store] backend``'s, from ``plugins``, unless one
    is given: it should then use ``OpsConfig.from_config(config).devices``), load or create the server
    secret, and bundle it all. Synchronous: call at startup.

    The secret comes from ``$XIAOZHI_TRIO_SECRET`` if set, else from the device store's database when
    it is a shared PostgreSQL (every server then accepts every token), else from
    ``<data_dir>/secret.key``. Raises ``ConfigError`` for a wrong table and ``DatabaseError`` for an
    unreachable database.
    """
    settings = OpsConfig.from_config(config)
    data_dir = config.server.data_path
    if registry is None:
        plugins = plugins or Plugins()
        registry = plugins.open_store("devices", config.store, StoreContext(data_dir, settings.devices, clock))
    metrics = metrics or Metrics()
    database = getattr(registry, "database", None)  # the built-in stores' shared database
    if database is not None and database.dialect == "postgres" and not os.environ.get(SECRET_ENV):
        signer = TokenSigner(shared_secret(database))
    else:
        signer = TokenSigner(load_secret(data_dir))
    auth = AuthPolicy(settings.auth, signer, registry, metrics=metrics, clock=clock)
    firmware_dir = Path(settings.ota.firmware_dir).expanduser() if settings.ota.firmware_dir else data_dir / "firmware"
    # The server's own record (for `xiaozhi-trio tools`), in its SQLite file whatever the device store.
    tool_lists = DeviceToolLists(open_database(data_dir / DATABASE_FILE), clock=clock)
    return OpsServices(
        config, settings, registry, auth, metrics, FirmwareFolder(firmware_dir), tool_lists, session_count, clock
    )
