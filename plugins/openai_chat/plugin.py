"""The ``openai`` agent backend: any OpenAI-compatible ``/v1/chat/completions`` API.

Config (the ``[agent]`` table, every key optional)::

    [agent]
    backend = "openai"
    base_url = "https://api.deepseek.com/v1"   # or GLM, Qwen (DashScope), http://localhost:11434/v1 (Ollama)
    model = "deepseek-chat"
    api_key_env = "OPENAI_API_KEY"              # the variable holding the key; none needed on loopback
    history_turns = 10
    max_tool_rounds = 4
    timeout = 30.0
    # system_prompt, temperature, max_tokens

See ``docs/agents.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xiaozhi_trio.pipeline.backends import BackendContext
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.store.conversations import SqliteConversationStore
from xiaozhi_trio.pipeline.store.sqlite import DATABASE_FILE

from .agent import OpenAIChatAgent
from .options import OpenAIOptions


def create_agent(context: BackendContext, options: Mapping[str, Any]) -> OpenAIChatAgent:
    """The ``openai`` agent factory; a ``ConfigError`` names a bad option or the missing key variable."""
    parsed = OpenAIOptions.parse(options)
    api_key = parsed.api_key()
    # A context without a store (a test, a command without a server) keeps memory in the data folder.
    store = (
        context.conversations
        if context.conversations is not None
        else SqliteConversationStore.open(context.data_dir / DATABASE_FILE)
    )
    return OpenAIChatAgent(parsed, api_key, store)


@hookimpl
def xiaozhi_register_backends(registry: Any) -> None:
    registry.add(
        "agent",
        "openai",
        create_agent,
        description="OpenAI-compatible chat completions (DeepSeek, GLM, Qwen, Ollama, ...), streamed, with device tools",
    )
