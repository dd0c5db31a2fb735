"""What a store factory gets, and the kinds of store plugins provide.

Stores come from plugins exactly as backends do: a plugin's ``xiaozhi_register_stores`` hook adds a
factory per kind under a name, ``[store] backend`` picks the name, and every other key of ``[store]``
goes to the factories as their options. The built-in SQLite stores are such a plugin
(``plugins/sqlite_store.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .conversations import ConversationStore
from .devices import DevicesConfig, DeviceStore

#: Each kind of store with the protocol its objects implement. A provider registers a factory for
#: each kind under one name (the name ``[store] backend`` selects).
STORE_KINDS: Mapping[str, type] = MappingProxyType({
    "conversations": ConversationStore,
    "devices": DeviceStore,
})

#: The store used when ``[store] backend`` is not set.
DEFAULT_STORE = "sqlite"


@dataclass(frozen=True)
class StoreContext:
    """What a store factory gets besides the options of ``[store]``."""

    #: The server's data folder (the default home of file-based stores).
    data_dir: Path
    #: The ``[devices]`` policy the device store applies.
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    #: Unix time (claims, activation codes, history timestamps).
    clock: Callable[[], float] = time.time
