"""The JSON text frames: parsing what the device sends, building what the server sends.

Parsing is strict about what matters (a ``type`` string, a known ``state``) and lenient about the
rest (extra keys, a missing ``session_id``), as the firmware and browser clients vary.
"""

from __future__ import annotations

import json
from typing import Any

from ..messages import (
    Abort,
    AudioParams,
    DeviceControl,
    DeviceHello,
    ListenStart,
    ListenStop,
    McpMessage,
    WakeWordDetected,
)

LISTEN_MODES = ("auto", "manual", "realtime")


class ProtocolError(ValueError):
    """A text frame the server cannot act on; the message says why (it is logged and ignored)."""


def _decode(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"malformed JSON ({e.msg} at {e.pos})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type'")
    return data


def _audio_params(value: Any) -> AudioParams:
    if not isinstance(value, dict):
        return AudioParams()  # browser clients may omit it: the firmware's defaults apply
    defaults = AudioParams()
    fmt = value.get("format", defaults.format)
    if fmt != "opus":
        raise ProtocolError(f"unsupported audio format {fmt!r}; only opus is supported")
    sample_rate = value.get("sample_rate", defaults.sample_rate)
    channels = value.get("channels", defaults.channels)
    frame = value.get("frame_duration", defaults.frame_duration)
    if sample_rate not in (8000, 12000, 16000, 24000, 48000):
        raise ProtocolError(f"unsupported uplink sample_rate {sample_rate!r}")
    if channels != 1:
        raise ProtocolError(f"unsupported channels {channels!r}; devices send mono")
    if frame not in (10, 20, 40, 60, 80, 100, 120):
        raise ProtocolError(f"unsupported frame_duration {frame!r}")
    return AudioParams(fmt, sample_rate, channels, frame)


def parse_hello(text: str) -> DeviceHello:
    """Parse the device's hello; ``ProtocolError`` if it is not one."""
    data = _decode(text)
    if data["type"] != "hello":
        raise ProtocolError(f"expected hello first, got {data['type']!r}")
    transport = data.get("transport", "websocket")
    if transport != "websocket":
        raise ProtocolError(f"unsupported transport {transport!r}; this server speaks websocket")
    version = data.get("version", 1)
    features = data.get("features") if isinstance(data.get("features"), dict) else {}
    return DeviceHello(
        version=version if isinstance(version, int) else 1,
        transport=transport,
        audio_params=_audio_params(data.get("audio_params")),
        features=dict(features),
    )


def parse_control(text: str) -> DeviceControl | DeviceHello:
    """Parse a text frame after the hello. A repeated hello is returned for the caller to judge."""
    data = _decode(text)
    match data["type"]:
        case "hello":
            return parse_hello(text)
        case "listen":
            state = data.get("state")
            if state == "start":
                mode = data.get("mode", "auto")
                if mode not in LISTEN_MODES:
                    raise ProtocolError(f"unknown listen mode {mode!r}; expected one of {', '.join(LISTEN_MODES)}")
                return ListenStart(mode)
            if state == "stop":
                return ListenStop()
            if state == "detect":
                text_value = data.get("text", "")
                return WakeWordDetected(text_value if isinstance(text_value, str) else "")
            raise ProtocolError(f"unknown listen state {state!r}")
        case "abort":
            reason = data.get("reason", "")
            return Abort(reason if isinstance(reason, str) else "")
        case "mcp":
            payload = data.get("payload")
            if not isinstance(payload, dict):
                raise ProtocolError("mcp message without an object payload")
            return McpMessage(payload)
        case other:
            raise ProtocolError(f"unknown message type {other!r}")


# --------------------------------------------------------------------------------------------
# Server → device
# --------------------------------------------------------------------------------------------


def server_hello(session_id: str, sample_rate: int, frame_duration: int) -> dict[str, Any]:
    # ``transport`` is mandatory: without it the firmware dereferences null and reboots.
    return {
        "type": "hello",
        "transport": "websocket",
        "session_id": session_id,
        "audio_params": {"format": "opus", "sample_rate": sample_rate, "channels": 1, "frame_duration": frame_duration},
    }


def stt(session_id: str, text: str) -> dict[str, Any]:
    return {"type": "stt", "text": text, "session_id": session_id}


def llm_emotion(session_id: str, emotion: str, emoji: str = "") -> dict[str, Any]:
    return {"type": "llm", "text": emoji, "emotion": emotion, "session_id": session_id}


def tts(session_id: str, state: str, text: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "tts", "state": state, "session_id": session_id}
    if text is not None:
        message["text"] = text
    return message


def mcp(session_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "mcp", "payload": payload, "session_id": session_id}


def keepalive(session_id: str) -> dict[str, Any]:
    """Traffic that resets the firmware's 120 s dead-channel timer and does nothing else.

    The firmware's MCP server silently ignores JSON-RPC notifications.
    """
    return mcp(session_id, {"jsonrpc": "2.0", "method": "notifications/keepalive"})


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))
