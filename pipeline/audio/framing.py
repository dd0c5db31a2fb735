"""The device's binary WebSocket framing, versions 1, 2 and 3.

The device announces its version in the ``Protocol-Version`` handshake header (and in its hello).
Every binary message carries one payload:

- version 1: the message *is* one raw Opus packet;
- version 2: a 16-byte big-endian header ``u16 version, u16 type, u32 reserved, u32 timestamp_ms,
  u32 payload_size``, then the payload;
- version 3: a 4-byte header ``u8 type, u8 reserved, u16 payload_size`` (big-endian), then the payload.

Type 0 is Opus and type 1 is JSON text. The firmware fills in the v2 ``version`` field and the
reserved fields but never reads them back, so they are not checked here either.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xiaozhi_trio.pipeline.messages import OpusPacket

SUPPORTED_VERSIONS = (1, 2, 3)

_TYPE_OPUS = 0
_TYPE_JSON = 1
_V2_HEADER = struct.Struct(">HHIII")
_V3_HEADER = struct.Struct(">BBH")
_V3_MAX_PAYLOAD = 0xFFFF


class FramingError(ValueError):
    """A binary message that does not follow the negotiated framing."""


@dataclass(frozen=True, slots=True)
class JsonFrame:
    """A JSON text carried in a binary message (type 1, versions 2 and 3)."""

    text: str


def _check_version(version: int) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise FramingError(
            f"unsupported binary protocol version {version!r} (supported: "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
        )


def _payload(version: int, frame_type: int, payload: bytes, timestamp_ms: int) -> OpusPacket | JsonFrame:
    if frame_type == _TYPE_OPUS:
        return OpusPacket(payload, timestamp_ms)
    if frame_type == _TYPE_JSON:
        try:
            return JsonFrame(payload.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise FramingError(f"v{version} JSON payload is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    raise FramingError(f"unknown frame type {frame_type} in a v{version} message")


def _check_size(version: int, declared: int, arrived: int) -> None:
    if declared != arrived:
        raise FramingError(f"v{version} header says {declared} bytes of payload but {arrived} arrived")


def unpack(version: int, message: bytes) -> OpusPacket | JsonFrame:
    """Parse one binary WebSocket message from the device.

    Raises :class:`FramingError` for an unsupported version, an empty message, a message shorter
    than its header, a declared payload size that disagrees with what arrived, an unknown frame
    type, or a JSON payload that is not UTF-8. A v2/v3 header may declare an empty payload; an
    empty Opus packet is then returned and left for the decoder to reject.
    """
    _check_version(version)
    message = bytes(message)
    if not message:
        raise FramingError("empty binary message")
    if version == 1:
        return OpusPacket(message)
    if version == 2:
        if len(message) < _V2_HEADER.size:
            raise FramingError(
                f"message of {len(message)} bytes is shorter than the {_V2_HEADER.size}-byte v2 header"
            )
        _, frame_type, _, timestamp_ms, size = _V2_HEADER.unpack_from(message)
        payload = message[_V2_HEADER.size :]
        _check_size(2, size, len(payload))
        return _payload(2, frame_type, payload, timestamp_ms)
    if len(message) < _V3_HEADER.size:
        raise FramingError(f"message of {len(message)} bytes is shorter than the {_V3_HEADER.size}-byte v3 header")
    frame_type, _, size = _V3_HEADER.unpack_from(message)
    payload = message[_V3_HEADER.size :]
    _check_size(3, size, len(payload))
    return _payload(3, frame_type, payload, 0)


def pack(version: int, packet: OpusPacket) -> bytes:
    """Frame one Opus packet for the device (the server's downlink).

    Version 2 carries ``packet.timestamp_ms`` in its header (modulo 2**32, like the firmware's u32
    millisecond clock). Raises :class:`FramingError` for an unsupported version, an empty packet in
    version 1 (it would be an empty message), or a payload over 65535 bytes in version 3.
    """
    _check_version(version)
    data = bytes(packet.data)
    if version == 1:
        if not data:
            raise FramingError("cannot send an empty Opus packet in v1 framing (it would be an empty message)")
        return data
    if version == 2:
        header = _V2_HEADER.pack(2, _TYPE_OPUS, 0, packet.timestamp_ms % 2**32, len(data))
        return header + data
    if len(data) > _V3_MAX_PAYLOAD:
        raise FramingError(f"Opus packet of {len(data)} bytes exceeds the v3 limit of {_V3_MAX_PAYLOAD}")
    return _V3_HEADER.pack(_TYPE_OPUS, 0, len(data)) + data
