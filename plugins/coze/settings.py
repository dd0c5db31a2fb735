"""The ``[agent]`` options of the Coze backend, checked, and the credentials they name.

Secrets never come from the TOML file: the access token is in an environment variable
(``COZE_API_TOKEN`` unless ``token_env`` says otherwise) or in a file (``token_file``), and an OAuth
app's private key in a PEM file. The bot id may be in the config (``bot_id``) or in ``COZE_BOT_ID``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.tables import NonEmptyStr, Seconds, parse_table

from .auth import JwtOAuthApp, OAuthSettings, PersonalAccessToken, TokenSource

DEFAULT_BASE_URL = "https://api.coze.cn"
BOT_ID_ENV = "COZE_BOT_ID"
DEFAULT_TOKEN_ENV = "COZE_API_TOKEN"

_SECRET_KEYS = {"token", "api_token", "api_key", "access_token", "private_key", "secret"}


@dataclass(frozen=True)
class CozeSettings:
    #: The bot to talk to; empty: ``$COZE_BOT_ID``.
    bot_id: NonEmptyStr | None = None
    base_url: NonEmptyStr = DEFAULT_BASE_URL
    #: The environment variable that holds a personal access token.
    token_env: NonEmptyStr = DEFAULT_TOKEN_ENV
    #: A file that holds the token instead (read again when it changes).
    token_file: Path | None = None
    oauth: OAuthSettings | None = None
    #: Seconds without any bytes from Coze before a call gives up (also the connect limit).
    timeout: Seconds = 30.0
    #: Seconds from sending the question to the first spoken text before the turn gives up.
    first_token_timeout: Seconds = 20.0
    #: Seconds a barge-in may spend telling Coze to stop the chat.
    cancel_timeout: Seconds = 3.0
    #: Seconds one requested tool may run before the bot is told it failed.
    tool_timeout: Seconds = 20.0
    #: Values for the bot's prompt variables (``{{name}}`` in its persona).
    custom_variables: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], environ: Mapping[str, str]) -> CozeSettings:
        """Check the options; a ``ConfigError`` names the key (or variable) and what it must be."""
        secrets = sorted(set(options) & _SECRET_KEYS)
        if secrets:
            raise ConfigError(
                f"[agent] {', '.join(secrets)}: secrets do not belong in the config file; put the Coze "
                f"access token in the environment variable {DEFAULT_TOKEN_ENV} (or the one token_env "
                "names) or in a file named by token_file"
            )
        parsed = parse_table("agent", cls, options)
        base_url = parsed.base_url.rstrip("/")
        if not base_url.startswith(("https://", "http://")):
            raise ConfigError(f"[agent] base_url must be an http(s) URL such as {DEFAULT_BASE_URL} "
                              f"or https://api.coze.com, not {base_url!r}")
        bot_id = parsed.bot_id or environ.get(BOT_ID_ENV, "").strip()
        return dataclasses.replace(parsed, bot_id=bot_id, base_url=base_url)

    def token_source(self, http: httpx.AsyncClient, environ: Mapping[str, str]) -> TokenSource:
        """The credentials these settings name; ``ConfigError`` naming exactly what to set if they
        (or the bot id) are missing."""
        missing = []
        if not self.bot_id:
            missing.append(f"the bot id: set {BOT_ID_ENV} (or bot_id in [agent])")
        source: TokenSource
        if self.oauth is not None:
            source = JwtOAuthApp(self.oauth, base_url=self.base_url, http=http)
        else:
            pat = PersonalAccessToken(env=self.token_env, file=self.token_file, environ=environ)
            if not pat.current():
                if self.token_file is not None:
                    missing.append(f"an access token: the file {self.token_file} (token_file) is missing or empty")
                else:
                    missing.append(f"an access token: set {self.token_env} to a Coze personal access token "
                                   "(or name a file with token_file, or configure an [agent.oauth] JWT app)")
            source = pat
        if missing:
            raise ConfigError("the Coze agent needs " + "; and ".join(missing))
        return source
