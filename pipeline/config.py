"""The server's configuration: one TOML file, a default for every key, secrets only from the
environment.

``config.example.toml`` documents every key; ``xiaozhi-trio check`` validates a file. Each table
maps to a frozen dataclass below. Backend tables (``[vad]``, ``[asr]``, ``[agent]``, ``[tts]``,
``[turn]``) name their backend with ``backend = "…"``; every other key of the table goes to that
backend's factory as its options, and the backend checks them. ``[turn]`` also holds the turn
policy's own keys (``TurnPolicyConfig``), which are taken out before the rest reaches the backend.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import ConfigError


def default_data_dir() -> Path:
    """``$XIAOZHI_TRIO_DATA`` if set, else the XDG data folder."""
    if env := os.environ.get("XIAOZHI_TRIO_DATA"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "xiaozhi-trio"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    #: WebSocket port (the firmware's usual default).
    port: int = 8000
    path: str = "/xiaozhi/v1/"
    #: The URL devices are told to connect to (OTA); empty: derived from the request's host.
    public_url: str = ""
    #: Where conversations, devices and models are kept; empty: ``default_data_dir()``.
    data_dir: str = ""
    #: Connections beyond this are refused with HTTP 503.
    max_sessions: int = 1000
    #: Largest text or binary message accepted from a device, in bytes.
    max_message_bytes: int = 64 * 1024
    #: Seconds replies in flight may take to finish when the server is stopped (SIGTERM, Ctrl-C).
    shutdown_grace: float = 8.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()


@dataclass(frozen=True)
class SessionConfig:
    #: Seconds the device has to send its hello after connecting.
    hello_timeout: float = 10.0
    #: Seconds without any user speech before the server says goodbye and closes; 0 = never.
    idle_timeout: float = 300.0
    #: Spoken before an idle close; empty: close without speaking.
    goodbye_text: str = "I'll go quiet now. Wake me when you need me. Goodbye!"
    #: Spoken when a turn fails (dead agent, failed synthesis...).
    apology_text: str = "Sorry, something went wrong. Please try again."
    #: Send something harmless after this many quiet seconds, well inside the device's 120 s timer.
    keepalive_interval: float = 45.0
    #: Listen modes in which new speech interrupts the reply ("realtime" needs the device's AEC);
    #: push-to-talk ("manual") never barges in.
    barge_in_modes: tuple[str, ...] = ("realtime",)
    #: ``listen detect`` texts that are the device's wake word (compared ignoring case, spaces and
    #: punctuation); any other text is a message the user typed, answered like speech.
    wake_words: tuple[str, ...] = ("你好小智", "你好小志", "小智小智", "hi xiaozhi", "hey xiaozhi", "hi esp", "hey esp", "hi lexin", "嗨乐鑫", "alexa")
    #: Spoken when the device hears its wake word; empty: a wake word only interrupts a reply.
    wake_word_greeting: str = "I'm listening."
    #: Seconds a blocked downlink write may take before the device is treated as gone.
    send_timeout: float = 10.0
    #: The reply's first segment may end at a comma once this long (CJK characters; an English
    #: word counts 1.5), so the device starts speaking sooner.
    first_clause_min_chars: int = 4
    #: A segment with no sentence end is cut (at a comma, else a space) at this length.
    max_sentence_chars: int = 100


@dataclass(frozen=True)
class AudioConfig:
    #: Downlink Opus sample rate announced in the server hello (the firmware decodes 16 or 24 kHz).
    downlink_sample_rate: int = 24000
    downlink_frame_ms: int = 60
    #: How far ahead of real time the sender may run; well under the device's ~40-packet buffer.
    downlink_lead_ms: int = 180
    opus_bitrate: int = 24000


@dataclass(frozen=True)
class BackendConfig:
    backend: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnPolicyConfig:
    """When a pause ends the user's turn (the ``[turn]`` keys besides the backend's own)."""

    #: Silence after which the turn detector is first asked whether the user has finished.
    pause_ms: float = 200.0
    #: Silence that ends the turn whatever the detector says.
    max_silence_ms: float = 1600.0
    #: While the detector says "not finished", ask again after this much more silence.
    recheck_ms: float = 400.0
    #: Probability of "finished" at which the turn ends.
    threshold: float = 0.5
    #: Listen modes that use the detector; the others keep the VAD's own silence window
    #: (``manual`` ends with ``listen stop`` anyway).
    modes: tuple[str, ...] = ("auto", "realtime")


@dataclass(frozen=True)
class WorkersConfig:
    #: Threads for CPU-heavy backend work shared by all sessions; 0 = one per core.
    cpu_threads: int = 0


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    vad: BackendConfig = field(default_factory=lambda: BackendConfig("silero"))
    asr: BackendConfig = field(default_factory=lambda: BackendConfig("sherpa-onnx"))
    agent: BackendConfig = field(default_factory=lambda: BackendConfig("coze"))
    tts: BackendConfig = field(default_factory=lambda: BackendConfig("sherpa-onnx"))
    turn: BackendConfig = field(default_factory=lambda: BackendConfig("smart-turn"))
    turn_policy: TurnPolicyConfig = field(default_factory=TurnPolicyConfig)
    #: Tables this module does not know, kept for other parts (``[ota]``, ``[auth]``...) to read.
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def backend(self, kind: str) -> BackendConfig:
        return typing.cast(BackendConfig, getattr(self, kind))


_SECTIONS = {"server": ServerConfig, "session": SessionConfig, "audio": AudioConfig, "workers": WorkersConfig}
_BACKENDS = ("vad", "asr", "agent", "tts", "turn")
#: ``[turn]`` keys that belong to the policy, not to the detector backend.
_TURN_POLICY_KEYS = frozenset(f.name for f in dataclasses.fields(TurnPolicyConfig))
#: Tables owned by other modules; validated there.
_OTHER_TABLES = ("ota", "auth", "devices", "metrics", "store", "recording", "models")


def _check_type(where: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
            raise ConfigError(f"{where} must be a list of {item_type.__name__}, not {value!r}")
        return tuple(value)
    if origin in (types.UnionType, typing.Union):
        return value
    if isinstance(annotation, type) and (not isinstance(value, annotation) or isinstance(value, bool) != (annotation is bool)):
        raise ConfigError(f"{where} must be {annotation.__name__}, not {type(value).__name__} {value!r}")
    return value


def _section(name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    values = {key: _check_type(f"[{name}] {key}", value, hints[key]) for key, value in table.items()}
    return cls(**values)


def _backend(name: str, table: Any, default: BackendConfig) -> BackendConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    options = dict(table)
    backend = options.pop("backend", default.backend)
    if not isinstance(backend, str) or not backend:
        raise ConfigError(f"[{name}] backend must be a backend name (a string)")
    return BackendConfig(backend, options)


def _turn_policy(table: dict[str, Any]) -> TurnPolicyConfig:
    policy = _section("turn", TurnPolicyConfig, table)
    if not 0 < policy.pause_ms <= policy.max_silence_ms:
        raise ConfigError(
            f"[turn] needs 0 < pause_ms <= max_silence_ms, not {policy.pause_ms:g} and {policy.max_silence_ms:g}"
        )
    if policy.recheck_ms <= 0:
        raise ConfigError(f"[turn] recheck_ms must be above 0, not {policy.recheck_ms:g}")
    if not 0 < policy.threshold < 1:
        raise ConfigError(f"[turn] threshold must be between 0 and 1, not {policy.threshold:g}")
    unknown_modes = sorted(set(policy.modes) - {"auto", "realtime", "manual"})
    if unknown_modes:
        raise ConfigError(f"[turn] modes: unknown listen mode(s) {', '.join(unknown_modes)}; modes are auto, realtime, manual")
    return policy


def parse_config(data: Mapping[str, Any]) -> Config:
    """Build a ``Config`` from parsed TOML, with a ``ConfigError`` naming any wrong key."""
    defaults = Config()
    kwargs: dict[str, Any] = {}
    extra: dict[str, Mapping[str, Any]] = {}
    for name, table in data.items():
        if name in _SECTIONS:
            kwargs[name] = _section(name, _SECTIONS[name], table)
        elif name == "turn" and isinstance(table, dict):
            policy = {k: v for k, v in table.items() if k in _TURN_POLICY_KEYS}
            kwargs["turn_policy"] = _turn_policy(policy)
            rest = {k: v for k, v in table.items() if k not in _TURN_POLICY_KEYS}
            kwargs[name] = _backend(name, rest, defaults.turn)
        elif name in _BACKENDS:
            kwargs[name] = _backend(name, table, getattr(defaults, name))
        elif name in _OTHER_TABLES:
            if not isinstance(table, dict):
                raise ConfigError(f"[{name}] must be a table")
            extra[name] = table
        else:
            known = sorted([*_SECTIONS, *_BACKENDS, *_OTHER_TABLES])
            raise ConfigError(f"unknown table [{name}]; valid tables: {', '.join(known)}")
    return Config(**kwargs, extra=extra)


def load_config(path: Path | None) -> Config:
    """Read ``path`` (None: all defaults)."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (copy config.example.toml to start)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
