"""Options of the ``openai`` agent (the ``[agent]`` table), checked with specific messages."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.tables import Between, NonEmptyStr, parse_table

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant inside a small speaker with a screen. Everything you write is "
    "read aloud, so answer like a person talking: usually one to three short sentences, in the "
    "language the user speaks. Use plain words only: no markdown, lists, headings, code, emoji, "
    "links or tables, and spell out symbols and units. If you did not understand, ask briefly. "
    "When the user wants something on the device changed or checked (volume, brightness, battery and "
    "the like), use the tools you have, then say in a few words what you did."
)


@dataclass(frozen=True)
class OpenAIOptions:
    #: The API root, up to and including ``/v1`` (``/chat/completions`` is appended).
    base_url: NonEmptyStr = "https://api.deepseek.com/v1"
    model: NonEmptyStr = "deepseek-chat"
    #: Name of the environment variable that holds the API key (the key itself never goes in the file).
    api_key_env: NonEmptyStr = "OPENAI_API_KEY"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    #: Earlier question-and-answer pairs sent with each question; 0 = no memory.
    history_turns: Annotated[int, Between(0)] = 10
    #: Sampling temperature; None leaves the provider's default.
    temperature: Annotated[float, Between(0.0, 2.0)] | None = None
    #: Longest answer in tokens; None leaves the provider's default.
    max_tokens: Annotated[int, Between(1)] | None = None
    #: Seconds to connect, and the longest wait for the next piece of the answer.
    timeout: Annotated[float, Between(0.001, 3600.0)] = 30.0
    #: Rounds of tool calls one question may take before the model must answer.
    max_tool_rounds: Annotated[int, Between(0)] = 4

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> OpenAIOptions:
        """Check the ``[agent]`` options of the ``openai`` backend."""
        if "api_key" in options:
            raise ConfigError(
                "[agent] api_key: keys do not go in the config file; put the key in an environment "
                "variable and name it with api_key_env (default OPENAI_API_KEY)"
            )
        parsed = parse_table("agent", cls, options)
        scheme = urlsplit(parsed.base_url).scheme
        if scheme not in ("http", "https") or not urlsplit(parsed.base_url).hostname:
            raise ConfigError(
                f"[agent] base_url must be an http(s) URL such as https://api.deepseek.com/v1, not {parsed.base_url!r}"
            )
        return parsed

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def is_local(self) -> bool:
        """The API runs on this machine (Ollama, llama.cpp, vLLM...): a key is optional."""
        host = urlsplit(self.base_url).hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def api_key(self, environ: Mapping[str, str] = os.environ) -> str:
        """The key from the environment; a ``ConfigError`` naming the variable if it is missing."""
        key = environ.get(self.api_key_env, "").strip()
        if not key and not self.is_local:
            raise ConfigError(
                f"the openai agent needs an API key for {self.base_url}: set the environment variable "
                f"{self.api_key_env} (or name another one with [agent] api_key_env)"
            )
        return key
