"""The OTA check-in: ``POST /xiaozhi/ota/``, where a device learns where to connect.

The firmware (``main/ota.cc``) sends ``Device-Id`` (its MAC), ``Client-Id`` (a UUID made on first
boot), ``Activation-Version`` (2 when it has a serial number in eFuse), ``Serial-Number``,
``User-Agent: <board>/<version>`` and ``Accept-Language``, with its system info as the JSON body.
The reply may hold:

* ``websocket{url, token, version}``: always; ``token`` is empty until the device is bound, and
  ``version`` (the binary framing) must be a number;
* ``server_time{timestamp, timezone_offset}``: milliseconds and minutes;
* ``firmware{version, url, force}``: only when a newer image for the device's board is in the
  firmware folder, and only for bound devices;
* ``activation{code, message, challenge, timeout_ms}``: while the device is not bound. The firmware
  shows and speaks the code, then polls ``/activate``; it needs the challenge to do so.

Never an ``mqtt`` block: with one, the firmware would ignore the WebSocket settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..protocol.identity import normalise_device_id
from ..store.devices import CheckIn, Device
from .h11server import Request, Response, error_response, json_response
from ..tables import require

if TYPE_CHECKING:
    from .services import OpsServices

log = logging.getLogger(__name__)

#: Device and client ids: MAC addresses and UUIDs, or the names test clients use.
_ID = re.compile(r"^[A-Za-z0-9:._-]{1,64}$")
#: Host header values we are willing to echo back into a URL.
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.%a-z]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$")


@dataclass(frozen=True)
class OtaConfig:
    """``[ota]``: the HTTP server (OTA, activation, firmware, health, metrics) and the OTA reply."""

    #: Interface for the HTTP server; empty: the same as ``[server] host``.
    host: str = ""
    #: The reference server's OTA port; devices configured for it expect this.
    port: int = 8003
    #: ``websocket.version`` in the reply: the binary audio framing devices use (1, 2 or 3).
    websocket_version: int = 1
    #: Minutes east of UTC for the device's clock; unset: this server's local offset.
    timezone_offset: int | None = None
    #: Base URL devices use to reach this HTTP server (firmware download links), e.g.
    #: ``http://192.168.1.10:8003``; empty: taken from the request's Host header.
    public_url: str = ""
    #: Several servers without a load balancer: each device is told one of these WebSocket URLs,
    #: always the same one for a device while the list stays (rendezvous hashing of its id, so
    #: removing a server moves only that server's devices). Empty: ``[server] public_url``.
    websocket_urls: tuple[str, ...] = ()
    #: Firmware images, ``<dir>/<board>/<version>.bin``; empty: ``<data_dir>/firmware``.
    firmware_dir: str = ""
    #: Largest request body in bytes (the firmware's system info is about 1-2 KB).
    max_body_bytes: int = 64 * 1024
    #: Largest request head (request line and headers) in bytes.
    max_header_bytes: int = 16 * 1024
    #: Seconds a request may take to arrive once it started.
    request_timeout: float = 10.0
    #: Seconds an idle keep-alive connection is kept.
    keepalive_timeout: float = 30.0
    #: HTTP connections open at once.
    max_connections: int = 256
    #: Origins whose web pages may call the OTA, activation and health endpoints (CORS); ``*``: any
    #: (these are public device endpoints); empty: none.
    cors_origins: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        require(0 <= self.port <= 65535, f"[ota] port must be 0-65535, not {self.port}")
        require(self.websocket_version in (1, 2, 3), f"[ota] websocket_version must be 1, 2 or 3, not {self.websocket_version}")
        require(
            self.timezone_offset is None or -14 * 60 <= self.timezone_offset <= 14 * 60,
            "[ota] timezone_offset is in minutes and must be between -840 and 840",
        )
        require(not self.public_url or re.match(r"^https?://[^/\s]+", self.public_url) is not None,
                f"[ota] public_url must be an http:// or https:// URL, not {self.public_url!r}")
        for url in self.websocket_urls:
            require(re.match(r"^wss?://[^/\s]+", url) is not None,
                    f"[ota] websocket_urls must hold ws:// or wss:// URLs, not {url!r}")
        require(1024 <= self.max_body_bytes <= 64 * 1024 * 1024, "[ota] max_body_bytes must be between 1024 and 67108864")
        require(1024 <= self.max_header_bytes <= 1024 * 1024, "[ota] max_header_bytes must be between 1024 and 1048576")
        require(self.request_timeout > 0 and self.keepalive_timeout > 0, "[ota] request_timeout and keepalive_timeout must be positive")
        require(self.max_connections >= 1, "[ota] max_connections must be at least 1")
        for origin in self.cors_origins:
            require(origin == "*" or re.match(r"^https?://[^/\s]+/?$", origin) is not None,
                    f"[ota] cors_origins holds \"*\" or origins like \"http://192.168.1.5:8080\", not {origin!r}")


class BadRequest(ValueError):
    """The request cannot be used; ``status`` and the message go back to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def local_timezone_offset(now: float) -> int:
    """This server's UTC offset in minutes at ``now``."""
    return (time.localtime(now).tm_gmtoff or 0) // 60


def read_identity(request: Request) -> tuple[str, str]:
    """The ``Device-Id`` and ``Client-Id`` headers, checked; ``BadRequest`` if missing or malformed."""
    device_id = request.header("device-id").strip()
    client_id = request.header("client-id").strip()
    if not device_id:
        raise BadRequest("the Device-Id header is missing")
    if not _ID.match(device_id):
        raise BadRequest("the Device-Id header is malformed (expected a MAC address like aa:bb:cc:dd:ee:ff)")
    if not client_id:
        raise BadRequest("the Client-Id header is missing")
    if not _ID.match(client_id):
        raise BadRequest("the Client-Id header is malformed (expected a UUID)")
    return normalise_device_id(device_id), client_id


def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``); ``BadRequest`` otherwise."""
    if not request.body.strip():
        return {}
    try:
        data = json.loads(request.body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _text(data: Any, *keys: str) -> str:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data.strip()[:128] if isinstance(data, str) else ""


def firmware_user_agent(user_agent: str) -> tuple[str, str]:
    """(board, firmware version) from the firmware's ``User-Agent: <board>/<version>``.

    Browsers' ``Mozilla/5.0 (...)`` and anything else without that shape give ("", "").
    """
    board, slash, version = user_agent.strip().partition("/")
    board, version = board.strip(), version.strip()
    if not slash or not board or not version or board.lower() == "mozilla" or " " in board or " " in version:
        return "", ""
    return board[:128], version[:64]


def read_check_in(request: Request) -> CheckIn:
    """What the device says about itself: the JSON body's ``board.type`` and
    ``application.version`` first (the firmware sends both), then the ``User-Agent``."""
    device_id, client_id = read_identity(request)
    body = read_json_object(request)
    agent_board, agent_version = firmware_user_agent(request.header("user-agent"))
    version_text = request.header("activation-version", "1").strip() or "1"
    if not version_text.isdigit():
        raise BadRequest(f"the Activation-Version header must be a number, not {version_text!r}")
    serial = request.header("serial-number").strip()
    if len(serial) > 64:
        raise BadRequest("the Serial-Number header is too long")
    board_type = _text(body, "board", "type")
    return CheckIn(
        device_id=device_id,
        client_id=client_id,
        board=board_type or _text(body, "board", "name") or agent_board,
        board_type=board_type,
        firmware_version=_text(body, "application", "version")[:64] or agent_version,
        serial_number=serial,
        activation_version=int(version_text[:3]),
        language=request.header("accept-language").strip()[:32] or _text(body, "language"),
        address=request.client[0] if request.client else "",
    )


def request_host(request: Request) -> tuple[str, str]:
    """(host without port, host with port as sent) from the Host header, else this server's address."""
    host = request.header("host").strip()
    if host and _HOST.match(host):
        bare = host[: host.index("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
        return bare, host
    address, port = request.local if request.local else ("127.0.0.1", 0)
    bare = f"[{address}]" if ":" in address else address
    return bare, f"{bare}:{port}"


def server_for(device_id: str, urls: tuple[str, ...]) -> str:
    """The one of ``urls`` that ``device_id`` is given: the highest hash of (url, device id)."""
    return max(urls, key=lambda url: hashlib.sha256(f"{url}\n{device_id}".encode()).digest())


def websocket_url(services: OpsServices, request: Request, device_id: str = "") -> str:
    """Where the device should open its WebSocket: one of ``[ota] websocket_urls``, else
    ``[server] public_url``, else this server as the device reached it."""
    server = services.config.server
    if services.settings.ota.websocket_urls:
        return server_for(device_id, services.settings.ota.websocket_urls)
    if server.public_url:
        return server.public_url
    host, _ = request_host(request)
    return f"ws://{host}:{server.port}{server.path}"


def firmware_url(services: OpsServices, request: Request, board: str, file_name: str) -> str:
    base = services.settings.ota.public_url.rstrip("/") or f"http://{request_host(request)[1]}"
    return f"{base}/xiaozhi/ota/firmware/{quote(board, safe='')}/{quote(file_name, safe='')}"


def activation_message(services: OpsServices, code: str, language: str) -> str:
    template = services.settings.devices.activation_message
    if template:
        return template.replace("{code}", code)
    if language.lower().startswith("zh"):
        return f"请在服务器上运行: xiaozhi-trio devices bind {code}"
    return f"On the server, run: xiaozhi-trio devices bind {code}"


def build_reply(services: OpsServices, request: Request, check_in: CheckIn, device: Device) -> dict[str, Any]:
    """The OTA reply for a device whose check-in was recorded as ``device``."""
    now = services.clock()
    ota = services.settings.ota
    admitted = device.bound and device.client_id == check_in.client_id
    reply: dict[str, Any] = {
        "websocket": {
            "url": websocket_url(services, request, device.device_id),
            "token": services.auth.issue(device) if admitted else "",
            "version": ota.websocket_version,
        },
        "server_time": {
            "timestamp": int(now * 1000),
            "timezone_offset": ota.timezone_offset if ota.timezone_offset is not None else local_timezone_offset(now),
        },
    }
    if admitted and check_in.board:
        image = services.firmware.newer_than(check_in.board, check_in.firmware_version)
        if image is not None:
            reply["firmware"] = {"version": image.version, "url": firmware_url(services, request, image.board, image.file_name), "force": 0}
    if not admitted and device.claim_for(check_in.client_id, now):
        assert device.activation_code is not None and device.activation_expires is not None
        reply["activation"] = {
            "code": device.activation_code,
            "message": activation_message(services, device.activation_code, check_in.language),
            "challenge": device.activation_challenge,
            "timeout_ms": max(0, int((device.activation_expires - now) * 1000)),
        }
    return reply


async def handle_ota(services: OpsServices, request: Request) -> Response:
    """``POST /xiaozhi/ota/``: record the check-in and answer with where and how to connect."""
    try:
        check_in = read_check_in(request)
    except BadRequest as e:
        log.info("ota check-in refused from %s: %s", request.client and request.client[0], e)
        return error_response(e.status, str(e))
    if not services.auth.allows(check_in.device_id):
        log.warning("ota check-in refused: device %s is not in [auth] allowed_devices", check_in.device_id,
                    extra={"device": check_in.device_id})
        services.metrics.ota_check_ins.inc(state="refused")
        return error_response(403, "this device is not allowed on this server")
    device = await services.registry.check_in(check_in)
    reply = build_reply(services, request, check_in, device)
    state = "bound" if "activation" not in reply else "activating"
    services.metrics.ota_check_ins.inc(state=state)
    extra = {"device": check_in.device_id, "board": check_in.board or "?", "firmware": check_in.firmware_version or "?"}
    if "activation" in reply:
        # A warning: the owner must act, and it shows without -v.
        log.warning("device %s must be activated: run `xiaozhi-trio devices bind %s`", check_in.device_id,
                 reply["activation"]["code"], extra=extra)
    else:
        log.info("device %s checked in", check_in.device_id, extra=extra)
    if "firmware" in reply:
        log.info("offering firmware %s to device %s", reply["firmware"]["version"], check_in.device_id, extra=extra)
    return json_response(200, reply)


OTA_HINT = b"xiaozhi-trio OTA endpoint: devices POST their system info here.\n"


async def handle_ota_hint(services: OpsServices, request: Request) -> Response:
    """``GET /xiaozhi/ota/``: a short text for a person checking the URL in a browser."""
    return Response(200, OTA_HINT + f"WebSocket: {websocket_url(services, request)}\n".encode(), "text/plain; charset=utf-8")
