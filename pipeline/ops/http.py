"""The operations HTTP server (port 8003 by default): OTA, activation, firmware, health and metrics.

Routes::

    POST     /xiaozhi/ota/                          the device check-in (GET: a short hint)
    POST     /xiaozhi/ota/activate                  202 until the owner binds the code, then 200
    GET/HEAD /xiaozhi/ota/firmware/<board>/<file>   firmware images from the firmware folder
    GET/HEAD /healthz                               {"ok", "sessions", "version"}
    GET/HEAD /talk                                  the talk page, a browser client (talk_page.py)
    GET/HEAD /metrics                               Prometheus text 0.0.4, or OpenMetrics if accepted

``OPTIONS`` on the OTA, activation and health routes answers CORS preflights, and their answers carry
``Access-Control-Allow-Origin`` for allowed origins (``[ota] cors_origins``), so browser clients can
check in; see ``cors.py``.

Runs in the same trio process as the WebSocket server: ``nursery.start(serve_http, services, host, port)``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import trio

from .. import __version__
from ..store.sqlite import DatabaseError
from .activation import handle_activate
from .cors import CorsPolicy
from .h11server import (
    HttpLimits,
    Request,
    Response,
    error_response,
    json_response,
    serve,
)
from .ota import handle_ota, handle_ota_hint
from .worker_metrics import TEXT_CONTENT_TYPE
from .talk_page import handle_talk, is_talk_path
from .services import OpsConfig, OpsServices, build_ops_services

__all__ = ["OpsConfig", "OpsServices", "build_ops_services", "handle_request", "limits_for", "serve_http"]

log = logging.getLogger(__name__)

Endpoint = Callable[[OpsServices, Request], Awaitable[Response]]
_READ = ("GET", "HEAD")
#: Routes browsers may call from another origin: the public device endpoints only.
_CORS_ROUTES = frozenset({"ota", "activate", "healthz"})


async def _healthz(services: OpsServices, request: Request) -> Response:
    try:
        await services.registry.ping()
    except DatabaseError as e:
        log.error("health check: %s", e)
        return json_response(503, {"ok": False, "sessions": services.sessions, "version": __version__, "error": "database unavailable"})
    return json_response(200, {"ok": True, "sessions": services.sessions, "version": __version__})


async def _metrics(services: OpsServices, request: Request) -> Response:
    shared = services.worker_metrics
    if shared is not None:  # one of several worker processes: every worker's figures, labelled
        return Response(200, shared.scrape().encode(), TEXT_CONTENT_TYPE)
    body, content_type = services.metrics.render(request.header("accept"))
    return Response(200, body, content_type)


async def _firmware(services: OpsServices, request: Request) -> Response:
    parts = request.raw_path.split("/")
    # ["", "xiaozhi", "ota", "firmware", board, file]: anything else is not a firmware path.
    if len(parts) != 6:
        return error_response(404, "no such firmware file")
    board, file_name = unquote(parts[4]), unquote(parts[5])
    image = services.firmware.resolve(board, file_name)
    if image is None:
        log.info("firmware request for %r/%r refused or not found", board, file_name)
        return error_response(404, "no such firmware file")
    return Response(200, content_type="application/octet-stream", file=image.path, file_size=image.size,
                    headers=(("content-disposition", f'attachment; filename="{image.file_name}"'),))


def _route(path: str) -> tuple[str, dict[str, Endpoint]] | None:
    """(route name, method → endpoint) for a raw path, or None."""
    trimmed = path.rstrip("/") or "/"
    if trimmed == "/xiaozhi/ota":
        return "ota", {"POST": handle_ota, "GET": handle_ota_hint, "HEAD": handle_ota_hint}
    if trimmed == "/xiaozhi/ota/activate":
        return "activate", {"POST": handle_activate}
    if path.startswith("/xiaozhi/ota/firmware/"):
        return "firmware", {m: _firmware for m in _READ}
    if trimmed == "/healthz":
        return "healthz", {m: _healthz for m in _READ}
    if trimmed == "/metrics":
        return "metrics", {m: _metrics for m in _READ}
    if is_talk_path(path):
        return "talk", {m: handle_talk for m in _READ}
    return None


async def handle_request(services: OpsServices, request: Request) -> Response:
    """Route one request; count it in the metrics."""
    started = time.perf_counter()
    found = _route(request.raw_path)
    if found is not None and found[0] == "metrics" and not services.settings.metrics.enabled:
        found = None
    if found is None:
        name, response = "not_found", error_response(404, f"no such path: {request.raw_path[:200]}")
    else:
        name, endpoints = found
        cors = CorsPolicy(services.settings.ota.cors_origins) if name in _CORS_ROUTES else None
        endpoint = endpoints.get(request.method)
        if cors is not None and cors.enabled and request.method == "OPTIONS":
            response = cors.preflight(request, endpoints)
        else:
            if endpoint is None:
                allowed = ", ".join(sorted(endpoints))
                response = error_response(405, f"{request.method} is not allowed here; use {allowed}", (("allow", allowed),))
            else:
                response = await endpoint(services, request)
            if cors is not None:
                response = cors.decorate(request, response)
    services.metrics.http_request(name, response.status, time.perf_counter() - started)
    return response


def limits_for(services: OpsServices) -> HttpLimits:
    ota = services.settings.ota
    return HttpLimits(
        max_body_bytes=ota.max_body_bytes,
        max_header_bytes=ota.max_header_bytes,
        request_timeout=ota.request_timeout,
        keepalive_timeout=ota.keepalive_timeout,
        max_connections=ota.max_connections,
    )


async def serve_http(
    services: OpsServices,
    host: str,
    port: int,
    *,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the operations routes on ``host:port`` until cancelled; ``task_status.started(bound_port)``.

    ``host`` ``""`` listens on all interfaces; ``port`` 0 picks a free port (tests). ``sock``: accept
    on this already listening socket instead (shared by several worker processes).
    """

    async def handler(request: Request) -> Response:
        return await handle_request(services, request)

    def on_reject(status: int) -> None:
        services.metrics.http_request("rejected", status, 0.0)

    await serve(handler, host, port, limits_for(services), on_reject=on_reject, sock=sock, task_status=task_status)
