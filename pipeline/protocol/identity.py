"""Device ids, normalized once at the edge (WebSocket handshake, OTA, activation, auth, CLI).

Firmware sends its MAC address in lower case, other clients in upper case or with dashes; all of
``25:B0:58:0A:1B:2C``, ``25:b0:58:0a:1b:2c`` and ``25-B0-58-0A-1B-2C`` name one device, so sessions,
conversations (agent memory), the Coze user id, recordings, tokens and the device registry must all
see one spelling: lower case, MAC bytes separated by colons.
"""

from __future__ import annotations

import re

_DASHED_MAC = re.compile(r"^[0-9a-f]{2}(?:-[0-9a-f]{2}){5}$")


def normalise_device_id(device_id: str) -> str:
    """The one spelling of a device id: trimmed, lower case, a dashed MAC written with colons."""
    text = device_id.strip().lower()
    if _DASHED_MAC.match(text):
        return text.replace("-", ":")
    return text
