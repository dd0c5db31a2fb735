"""A simulated device for the OTA side: the firmware's ``Ota`` class and ``CheckNewVersion`` loop.

Headers, body and reply handling follow ``78/xiaozhi-esp32`` ``main/ota.cc``,
``main/boards/common/board.cc`` (``GetSystemInfoJson``), ``wifi_board.cc`` (``GetBoardJson``) and
``main/application.cc`` (the activation loop), so a test that passes against this double exercises
the server with what a real device sends and reads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


def _stoi_version(version: str) -> list[int]:
    """``Ota::ParseVersion``: std::stoi on each dot-separated part (leading digits; else it throws)."""
    parts = []
    for segment in version.split("."):
        digits = ""
        for ch in segment.lstrip():
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            raise ValueError(f"std::stoi would throw on {segment!r}")
        parts.append(int(digits))
    return parts


def is_new_version_available(current: str, new: str) -> bool:
    """``Ota::IsNewVersionAvailable``."""
    a, b = _stoi_version(current), _stoi_version(new)
    for old, candidate in zip(a, b):
        if candidate > old:
            return True
        if candidate < old:
            return False
    return len(b) > len(a)


@dataclass
class FirmwareOta:
    """One device's OTA client. ``settings`` mirrors the NVS ``websocket`` namespace the firmware fills."""

    client: httpx.AsyncClient
    ota_url: str
    mac: str = "a4:cf:12:34:56:78"
    uuid: str = "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5"
    board_name: str = "bread-compact-wifi"
    board_type: str = "bread-compact-wifi"
    version: str = "2.0.3"
    language: str = "zh-CN"
    #: eFuse USER_DATA serial number (None: not burned, Activation-Version 1).
    serial_number: str | None = None
    #: eFuse HMAC_KEY0 (None: a chip without the HMAC peripheral sends an empty hmac).
    hmac_key: bytes | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    # What CheckVersion() parsed from the last reply:
    has_activation_code: bool = False
    has_activation_challenge: bool = False
    activation_code: str = ""
    activation_message: str = ""
    activation_challenge: str = ""
    has_mqtt_config: bool = False
    has_websocket_config: bool = False
    has_server_time: bool = False
    server_time_ms: float = 0.0
    has_new_version: bool = False
    firmware_version: str = ""
    firmware_url: str = ""
    last_reply: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        """``Ota::SetupHttp``, in its order."""
        headers = {"Activation-Version": "2" if self.serial_number else "1", "Device-Id": self.mac, "Client-Id": self.uuid}
        if self.serial_number:
            headers["Serial-Number"] = self.serial_number
        headers["User-Agent"] = f"{self.board_name}/{self.version}"
        headers["Accept-Language"] = self.language
        headers["Content-Type"] = "application/json"
        return headers

    def system_info_json(self) -> str:
        """``Board::GetSystemInfoJson`` + ``WifiBoard::GetBoardJson``, concatenated the same way."""
        j = '{"version":2,"language":"' + self.language + '",'
        j += '"flash_size":16777216,'
        j += '"minimum_free_heap_size":"8021848",'
        j += '"mac_address":"' + self.mac + '",'
        j += '"uuid":"' + self.uuid + '",'
        j += '"chip_model_name":"esp32s3",'
        j += '"chip_info":{"model":9,"cores":2,"revision":2,"features":18},'
        j += '"application":{"name":"xiaozhi","version":"' + self.version + '",'
        j += '"compile_time":"Aug  8 2026T08:33:45Z","idf_version":"v5.4.1",'
        j += '"elf_sha256":"' + "ab" * 32 + '"},'
        j += '"partition_table": [{"label":"nvs","type":1,"subtype":2,"address":36864,"size":16384},'
        j += '{"label":"ota_0","type":0,"subtype":16,"address":131072,"size":4128768}],'
        j += '"ota":{"label":"ota_0"},'
        j += '"display":{"monochrome":false,"width":240,"height":240},'
        j += '"board":{"type":"' + self.board_type + '","name":"' + self.board_name + '","manufacturer":"",'
        j += '"ssid":"home","rssi":-52,"channel":6,"ip":"192.168.1.77","mac":"' + self.mac + '"}'
        j += "}"
        return j

    async def check_version(self) -> int:
        """``Ota::CheckVersion``: returns 0 (ESP_OK) or the HTTP status / -1 for an unparsable reply."""
        response = await self.client.post(self.ota_url, headers=self.headers(), content=self.system_info_json())
        if response.status_code != 200:
            return response.status_code
        try:
            root = json.loads(response.content)
        except ValueError:
            return -1
        self.last_reply = root
        self.has_activation_code = self.has_activation_challenge = False
        activation = root.get("activation")
        if isinstance(activation, dict):
            if isinstance(activation.get("message"), str):
                self.activation_message = activation["message"]
            if isinstance(activation.get("code"), str):
                self.activation_code = activation["code"]
                self.has_activation_code = True
            if isinstance(activation.get("challenge"), str):
                self.activation_challenge = activation["challenge"]
                self.has_activation_challenge = True
        self.has_mqtt_config = isinstance(root.get("mqtt"), dict)
        websocket = root.get("websocket")
        self.has_websocket_config = isinstance(websocket, dict)
        if isinstance(websocket, dict):
            for key, value in websocket.items():
                # cJSON_IsString / cJSON_IsNumber: other types are silently skipped.
                if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                    self.settings[key] = value if isinstance(value, str) else int(value)
        server_time = root.get("server_time")
        self.has_server_time = False
        if isinstance(server_time, dict) and isinstance(server_time.get("timestamp"), (int, float)):
            offset = server_time.get("timezone_offset")
            self.server_time_ms = server_time["timestamp"] + (offset * 60 * 1000 if isinstance(offset, (int, float)) else 0)
            self.has_server_time = True
        self.has_new_version = False
        firmware = root.get("firmware")
        if isinstance(firmware, dict) and isinstance(firmware.get("version"), str) and isinstance(firmware.get("url"), str):
            self.firmware_version, self.firmware_url = firmware["version"], firmware["url"]
            self.has_new_version = is_new_version_available(self.version, self.firmware_version)
            if isinstance(firmware.get("force"), (int, float)) and firmware["force"] == 1:
                self.has_new_version = True
        return 0

    def activation_payload(self) -> str:
        """``Ota::GetActivationPayload``."""
        if not self.serial_number:
            return "{}"
        signature = hmac.new(self.hmac_key, self.activation_challenge.encode(), hashlib.sha256).hexdigest() if self.hmac_key else ""
        payload = {"algorithm": "hmac-sha256", "serial_number": self.serial_number,
                   "challenge": self.activation_challenge, "hmac": signature}
        return json.dumps(payload, separators=(",", ":"))

    async def activate(self) -> str:
        """``Ota::Activate``: "ok" (200), "timeout" (202) or "fail"."""
        if not self.has_activation_challenge:
            return "fail"
        url = self.ota_url + ("activate" if self.ota_url.endswith("/") else "/activate")
        response = await self.client.post(url, headers=self.headers(), content=self.activation_payload())
        if response.status_code == 202:
            return "timeout"
        return "ok" if response.status_code == 200 else "fail"

    async def boot(
        self,
        *,
        on_code_shown: Callable[[str], Awaitable[None]] | None = None,
        on_activate_result: Callable[[str], Awaitable[None]] | None = None,
        max_rounds: int = 20,
    ) -> list[str]:
        """``Application::CheckNewVersion`` without the sleeps; returns what happened, in order.

        Entries: ``check:<status>``, ``code:<code>``, ``activate:<result>``, ``upgrade:<version>``,
        ``done``. The loop stops (like the firmware) when a reply has neither code nor challenge.
        """
        log: list[str] = []
        for _ in range(max_rounds):
            err = await self.check_version()
            log.append(f"check:{err}")
            if err != 0:
                return log
            if self.has_new_version:
                log.append(f"upgrade:{self.firmware_version}")
                return log
            if not self.has_activation_code and not self.has_activation_challenge:
                log.append("done")
                return log
            if self.has_activation_code:
                log.append(f"code:{self.activation_code}")
                if on_code_shown is not None:
                    await on_code_shown(self.activation_code)
            for _ in range(10):
                result = await self.activate()
                log.append(f"activate:{result}")
                if on_activate_result is not None:
                    await on_activate_result(result)
                if result == "ok":
                    break
        return log
