"""Optional per-turn recordings, to debug recognition: what the user said and what was answered.

Off by default (``[recording] enabled = true`` turns it on). Each turn is kept under
``data_dir/recordings/<device>/`` as ``<time>-<session>-<turn>-user.flac`` (the utterance as the
recognizer heard it), ``...-reply.flac`` (the spoken reply) and ``...json`` (transcript, reply text
and timings). When the folder grows past ``max_megabytes``, the oldest turns are deleted.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from ..messages import PcmChunk

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(text: str) -> str:
    """A file-name-safe form of a device or session id (they come from the network)."""
    return _UNSAFE.sub("_", text)[:64].strip("._") or "unknown"


class Recorder:
    """Writes turns under ``directory/<device>/`` and keeps the total under ``max_bytes``.

    Synchronous (file I/O and FLAC encoding): call it from a worker thread.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = directory
        self.max_bytes = max_bytes

    def save(
        self,
        device_id: str,
        session_id: str,
        turn: int,
        utterance: PcmChunk | None,
        reply: PcmChunk | None,
        transcript: str,
        reply_text: str,
    ) -> None:
        """Keep one turn; then delete the oldest turns while over the cap."""
        folder = self.directory / _safe_name(device_id)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = (
            time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
        )
        stem = f"{stamp}-{_safe_name(session_id)}-{turn:04d}"
        sidecar: dict[str, Any] = {
            "device_id": device_id,
            "session_id": session_id,
            "turn": turn,
            "time": time.time(),
            "transcript": transcript,
            "reply_text": reply_text,
        }
        for label, chunk in (("user", utterance), ("reply", reply)):
            if chunk is None or len(chunk.samples) == 0:
                continue
            path = folder / f"{stem}-{label}.flac"
            samples = np.clip(np.asarray(chunk.samples, dtype=np.float32), -1.0, 1.0)
            soundfile.write(
                path, samples, chunk.sample_rate, format="FLAC", subtype="PCM_16"
            )
            sidecar[label] = {
                "file": path.name,
                "seconds": round(chunk.duration, 3),
                "sample_rate": chunk.sample_rate,
            }
        (folder / f"{stem}.json").write_text(
            json.dumps(sidecar, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
        self.enforce_cap()

    def enforce_cap(self) -> None:
        """Delete whole turns, oldest first, until everything fits in ``max_bytes``."""
        turns: dict[Path, list[Path]] = {}
        total = 0
        for path in self.directory.glob("*/*"):
            if not path.is_file():
                continue
            total += path.stat().st_size
            # A turn's files share the stem before "-user"/"-reply"/".json".
            key = path.parent / re.sub(r"(-user|-reply)?\.(flac|json)$", "", path.name)
            turns.setdefault(key, []).append(path)
        if total <= self.max_bytes:
            return
        # Names start with a UTC timestamp, so the name orders turns by age within a device;
        # across devices the newest modification time decides.
        ordered = sorted(
            turns.items(),
            key=lambda item: (max(p.stat().st_mtime for p in item[1]), item[0].name),
        )
        for _, paths in ordered[
            :-1
        ]:  # the turn just saved stays, even alone over the cap
            if total <= self.max_bytes:
                break
            for path in paths:
                total -= path.stat().st_size
                path.unlink(missing_ok=True)
            log.debug(
                "recordings over %d bytes: deleted %s", self.max_bytes, paths[0].name
            )
