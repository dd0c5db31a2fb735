"""Keep the device's dead-channel timer from firing while it is connected."""

from __future__ import annotations

import trio

from ..protocol import device_messages as dm
from ..protocol.outbox import Outbox


async def keep_alive(outbox: Outbox, session_id: str, interval: float) -> None:
    """Send something harmless whenever nothing went out for ``interval`` seconds (the firmware
    closes a channel that was silent for 120 s)."""
    while True:
        await trio.sleep_until(outbox.last_sent_at + interval)
        if trio.current_time() >= outbox.last_sent_at + interval:
            await outbox.send_json(dm.keepalive(session_id))
