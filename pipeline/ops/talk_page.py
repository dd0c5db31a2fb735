"""``GET /talk``: the talk page, a browser client of the device protocol served on the HTTP port.

An owner opens ``http://SERVER:8003/talk`` on any laptop to test a deployment: the page checks in
at the OTA URL, connects to the WebSocket as a device, sends the microphone as Opus and plays the
reply (see ``talk/talk.js``). The files are static and ship inside the package; they are read once.

Browsers open the microphone only on a secure page: ``https://``, or ``http://localhost`` /
``http://127.0.0.1`` (e.g. through an SSH tunnel). The page says so when it is not.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING

from .h11server import Request, Response, error_response

if TYPE_CHECKING:
    from .services import OpsServices

#: The page's files and their types; nothing else under /talk/ is served.
FILES = {
    "talk.html": "text/html; charset=utf-8",
    "talk.js": "text/javascript; charset=utf-8",
    "talk.css": "text/css; charset=utf-8",
    "capture-worklet.js": "text/javascript; charset=utf-8",
}
#: The page runs only its own scripts; it may connect to any OTA or WebSocket URL the owner types.
HEADERS = (
    ("cache-control", "no-cache"),
    ("content-security-policy",
     "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' http: https: ws: wss:;"
     " media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)


@functools.cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("talk", name).read_bytes()


def is_talk_path(path: str) -> bool:
    return path.rstrip("/") == "/talk" or path.startswith("/talk/")


async def handle_talk(services: OpsServices, request: Request) -> Response:
    """``/talk`` → the page; ``/talk/<file>`` → one of its files."""
    name = request.raw_path.rstrip("/").removeprefix("/talk").lstrip("/") or "talk.html"
    content_type = FILES.get(name)
    if content_type is None:
        return error_response(404, "no such file")
    return Response(200, _read(name), content_type, HEADERS)
