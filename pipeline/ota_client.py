"""The device's OTA check-in, as the firmware does it at boot: where is the WebSocket, with
which token and framing, and is an activation code waiting to be bound?"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class OtaAnswer:
    websocket_url: str | None
    token: str | None
    protocol_version: int
    activation_code: str | None
    activation_message: str


def check_in(ota_url: str, *, device_id: str, client_id: str, board: str = "xiaozhi-trio-talk", version: str = "2.0.0", timeout: float = 10.0) -> OtaAnswer:
    """POST the firmware's check-in to ``ota_url`` and read the reply the way the firmware does."""
    headers = {
        "Activation-Version": "1",
        "Device-Id": device_id,
        "Client-Id": client_id,
        "User-Agent": f"{board}/{version}",
        "Accept-Language": "en-US",
        "Content-Type": "application/json",
    }
    body = {
        "version": 2,
        "language": "en-US",
        "mac_address": device_id,
        "uuid": client_id,
        "application": {"name": "xiaozhi", "version": version},
        "board": {"type": board, "name": board},
    }
    response = httpx.post(ota_url, headers=headers, content=json.dumps(body), timeout=timeout)
    response.raise_for_status()
    reply = response.json()
    websocket = reply.get("websocket") if isinstance(reply.get("websocket"), dict) else {}
    activation = reply.get("activation") if isinstance(reply.get("activation"), dict) else {}
    return OtaAnswer(
        websocket_url=websocket.get("url") or None,
        token=websocket.get("token") or None,
        protocol_version=int(websocket.get("version") or 1),
        activation_code=activation.get("code") or None,
        activation_message=str(activation.get("message") or ""),
    )
