"""Credentials for the Coze API: a personal access token, or an OAuth JWT app's access token.

Personal access tokens live at most 30 days, so a deployment rotates them without a restart: the
token is read from its environment variable or file each time it is needed (the file only when it
changed on disk), and when Coze rejects it (HTTP 401 / code 4100) it is read again at once.

An OAuth JWT app signs a short RS256 JWT with its private key and trades it at
``POST /api/permission/oauth2/token`` for an access token, which is cached and renewed shortly
before it expires.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
import trio
from xiaozhi_trio.pipeline.backends import BackendError
from xiaozhi_trio.pipeline.tables import Between, NonEmptyStr, parse_table, require

log = logging.getLogger(__name__)

TOKEN_PATH = "/api/permission/oauth2/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The longest access token Coze issues to a JWT app, in seconds.
MAX_DURATION = 86399


class TokenSource(Protocol):
    """Where the ``Authorization: Bearer`` token of each request comes from."""

    async def token(self) -> str:
        """The token to send now."""
        ...

    async def rejected(self, token: str) -> bool:
        """Coze rejected ``token``; forget it. True if a different token is now available."""
        ...


class PersonalAccessToken:
    """A personal access token (``pat_…``) from a file, or else from an environment variable."""

    def __init__(self, *, env: str = "COZE_API_TOKEN", file: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.env = env
        self.file = file
        self._environ = os.environ if environ is None else environ
        self._file_key: tuple[int, int, int] | None = None
        self._file_token = ""

    def where(self) -> str:
        """Where the token is read from, for messages."""
        return f"the file {self.file}" if self.file else f"the environment variable {self.env}"

    def current(self) -> str:
        """The token as it is now ("" if there is none)."""
        if self.file is None:
            return self._environ.get(self.env, "").strip()
        try:
            stat = self.file.stat()
        except OSError:
            return ""
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if key != self._file_key:
            # Re-read only when the file changed: a rotation replaces or rewrites it.
            try:
                self._file_token = self.file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                log.error("cannot read the Coze token file %s: %s", self.file, exc)
                return ""
            self._file_key = key
        return self._file_token

    async def token(self) -> str:
        token = self.current()
        if not token:
            raise BackendError(f"no Coze access token in {self.where()}", kind="auth")
        return token

    async def rejected(self, token: str) -> bool:
        self._file_key = None  # force a re-read even if the file's stat did not change
        fresh = self.current()
        if fresh and fresh != token:
            log.info("Coze rejected the access token; using the new one from %s", self.where())
            return True
        log.error("Coze rejected the access token from %s and no new one is there yet", self.where())
        return False


@dataclass(frozen=True)
class OAuthSettings:
    """The ``[agent.oauth]`` table: a Coze OAuth app of the JWT (service) kind."""

    client_id: NonEmptyStr
    public_key_id: NonEmptyStr
    #: The PEM file of the app's key pair.
    private_key_file: Path
    #: Lifetime of each access token, in seconds (at most 86399).
    duration: Annotated[int, Between(60, MAX_DURATION)] = 3600

    def __post_init__(self) -> None:
        require(
            self.private_key_file.is_file(),
            f"[agent.oauth] private_key_file {self.private_key_file} does not exist (the PEM file of the app's key pair)",
        )

    @classmethod
    def from_options(cls, table: Any) -> OAuthSettings:
        """Check the table; a ``ConfigError`` says exactly what is wrong."""
        return parse_table("agent.oauth", cls, table)


class JwtOAuthApp:
    """Access tokens of a Coze OAuth JWT app, fetched on demand and renewed before they expire.

    ``wall_clock`` gives Unix time (tokens expire in Unix time); tests pass their own.
    """

    def __init__(self, settings: OAuthSettings, *, base_url: str, http: httpx.AsyncClient,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        # The JWT's audience is the API host, port included when there is one.
        self.audience = urlsplit(self.base_url).netloc
        self._http = http
        self._now = wall_clock
        self._lock = trio.Lock()
        self._token = ""
        self._expires_at = 0.0
        #: How many access tokens this app has fetched (for logs and tests).
        self.fetches = 0

    def _margin(self) -> float:
        # Renew a little early so that no request goes out with a token about to lapse.
        return min(300.0, self.settings.duration / 10)

    async def token(self) -> str:
        async with self._lock:  # one fetch at a time, however many sessions ask
            if self._token and self._now() < self._expires_at - self._margin():
                return self._token
            self._token, self._expires_at = await self._fetch()
            return self._token

    async def rejected(self, token: str) -> bool:
        if token and token == self._token:
            self._token = ""
        return True  # the next token() fetches a fresh one

    def signed_jwt(self) -> str:
        """A fresh RS256 JWT asserting the app's identity, valid for ten minutes."""
        try:
            private_key = self.settings.private_key_file.read_bytes()
        except OSError as exc:
            raise BackendError(f"cannot read the Coze OAuth private key {self.settings.private_key_file}: {exc}",
                               kind="auth") from None
        now = int(self._now())
        claims = {
            "iss": self.settings.client_id,
            "aud": self.audience,
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        try:
            return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": self.settings.public_key_id})
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise BackendError(f"cannot sign a JWT with {self.settings.private_key_file}: {exc}", kind="auth") from None

    async def _fetch(self) -> tuple[str, float]:
        body = {"grant_type": JWT_GRANT, "duration_seconds": self.settings.duration}
        headers = {"Authorization": f"Bearer {self.signed_jwt()}"}
        try:
            response = await self._http.post(self.base_url + TOKEN_PATH, json=body, headers=headers)
        except httpx.TimeoutException:
            raise BackendError("timed out getting a Coze OAuth access token", kind="timeout") from None
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach Coze for an OAuth access token: {exc}", kind="connect") from None
        logid = response.headers.get("x-tt-logid", "")
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BackendError(f"Coze OAuth token endpoint answered HTTP {response.status_code} without JSON "
                               f"(logid {logid})", kind="auth")
        token = data.get("access_token")
        if response.status_code != 200 or not isinstance(token, str) or not token:
            detail = data.get("error_message") or data.get("msg") or data.get("error_code") or data.get("code")
            raise BackendError(f"Coze refused an OAuth access token for client {self.settings.client_id}: "
                               f"HTTP {response.status_code}, {detail} (logid {logid})", kind="auth")
        expires_in = float(data.get("expires_in") or 0)
        # Coze gives the expiry as a Unix time; a small number would be a lifetime in seconds.
        now = self._now()
        expires_at = expires_in if expires_in > 1e9 else now + (expires_in or self.settings.duration)
        self.fetches += 1
        log.info("got a Coze OAuth access token for client %s, valid for %.0f s (logid %s)",
                 self.settings.client_id, expires_at - now, logid)
        return token, expires_at
