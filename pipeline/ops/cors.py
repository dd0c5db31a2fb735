"""Cross-origin access (CORS) for the public device endpoints: OTA check-in, activation, health.

Browser clients (a test page, our own ``/talk`` page served from another host) send the firmware's
headers (``Device-Id``, ``Client-Id``…) with their POST, which makes the browser ask first with a
preflight ``OPTIONS``. ``CorsPolicy`` answers that preflight and adds ``Access-Control-Allow-Origin``
to the real answer when the request's ``Origin`` is allowed (``[ota] cors_origins``; ``*`` by default).
No credentials are ever allowed: these endpoints authenticate by header, never by cookie.

Sans-IO: functions of a ``Request`` and a ``Response``; the router decides which routes use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .h11server import Request, Response, error_response

#: Request headers a cross-origin page may send: what the firmware sends to these endpoints.
ALLOWED_HEADERS = (
    "Accept-Language",
    "Activation-Version",
    "Authorization",
    "Client-Id",
    "Content-Type",
    "Device-Id",
    "Serial-Number",
)
#: Seconds a browser may cache a preflight answer.
MAX_AGE_SECONDS = 600


class CorsPolicy:
    """Which origins may call the public endpoints, and the headers that tell the browser so."""

    def __init__(self, origins: Iterable[str]) -> None:
        cleaned = tuple(o.strip().rstrip("/") for o in origins if o.strip())
        self.any_origin = "*" in cleaned
        self.origins = frozenset(o.lower() for o in cleaned if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.strip().rstrip("/").lower() in self.origins

    def _origin_headers(self, origin: str) -> tuple[tuple[str, str], ...]:
        if self.any_origin:
            return (("access-control-allow-origin", "*"),)
        # The answer depends on the Origin header: caches must keep one copy per origin.
        return (("access-control-allow-origin", origin), ("vary", "Origin"))

    def decorate(self, request: Request, response: Response) -> Response:
        """``response`` with the allow-origin header if the request came from an allowed origin."""
        origin = request.header("origin")
        if not origin or not self.allows(origin):
            return response
        return dataclasses.replace(response, headers=(*response.headers, *self._origin_headers(origin)))

    def preflight(self, request: Request, methods: Iterable[str]) -> Response:
        """The answer to ``OPTIONS`` on a route that serves ``methods``.

        A real preflight (``Origin`` and ``Access-Control-Request-Method``) from an allowed origin
        gets 204 with the allow headers; from another origin, 403 saying why (the browser then
        blocks the call). A plain ``OPTIONS`` gets 204 with ``Allow``.
        """
        allowed = ", ".join(sorted({*methods, "OPTIONS"}))
        origin = request.header("origin")
        asked = request.header("access-control-request-method").strip().upper()
        if not origin or not asked:
            return Response(204, content_type="text/plain", headers=(("allow", allowed),))
        if not self.allows(origin):
            return error_response(403, f"origin {origin[:200]} is not in [ota] cors_origins")
        headers = (
            *self._origin_headers(origin),
            ("access-control-allow-methods", allowed),
            ("access-control-allow-headers", ", ".join(ALLOWED_HEADERS)),
            ("access-control-max-age", str(MAX_AGE_SECONDS)),
        )
        return Response(204, content_type="text/plain", headers=headers)
