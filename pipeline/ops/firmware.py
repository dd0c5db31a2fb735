"""The firmware folder: images offered to devices by the OTA reply, and served for download.

Layout: ``<firmware_dir>/<board>/<version>.bin``, where ``<board>`` is the board name the firmware
reports in its ``User-Agent`` (``BOARD_NAME``, e.g. ``bread-compact-wifi``) and ``<version>`` is
dotted numbers (``2.4.3``). The firmware parses ``firmware.version`` with ``std::stoi`` per
dot-separated part and aborts its check on anything else, so files with other names are ignored.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^\d{1,9}(?:\.\d{1,9}){0,5}$")
# Path segments we serve: no separators, no leading dot (so no "." / ".." / hidden files).
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_LEADING_DIGITS = re.compile(r"^\s*(\d+)")


@dataclass(frozen=True, slots=True)
class FirmwareImage:
    board: str
    version: str
    path: Path
    size: int

    @property
    def file_name(self) -> str:
        return self.path.name


def parse_version(text: str) -> tuple[int, ...] | None:
    """A strict dotted version (what we may send to a device), or None."""
    return tuple(int(p) for p in text.split(".")) if _VERSION.match(text) else None


def device_version(text: str) -> tuple[int, ...] | None:
    """The version a device reports, read the way the firmware does (leading digits of each part)."""
    parts = []
    for part in text.split("."):
        match = _LEADING_DIGITS.match(part)
        if match is None:
            return None
        parts.append(int(match.group(1)))
    return tuple(parts) if parts else None


def is_newer(candidate: tuple[int, ...], current: tuple[int, ...]) -> bool:
    """The firmware's own rule: compare part by part; with equal prefixes the longer one is newer."""
    for new, old in zip(candidate, current):
        if new != old:
            return new > old
    return len(candidate) > len(current)


def safe_segment(segment: str) -> bool:
    return bool(_SEGMENT.match(segment))


class FirmwareFolder:
    """Firmware images under one folder; the folder may be missing (then nothing is offered)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def images(self, board: str) -> list[FirmwareImage]:
        """The valid images for ``board``, oldest first."""
        if not safe_segment(board):
            return []
        folder = self.root / board
        found = []
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            log.warning("cannot read firmware folder %s: %s", folder, e)
            return []
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            if not dot or ext != "bin" or (version := parse_version(stem)) is None:
                continue
            image = self.resolve(board, entry.name)
            if image is not None:
                found.append((version, image))
        return [image for _, image in sorted(found, key=lambda pair: pair[0])]

    def newer_than(self, board: str, current: str) -> FirmwareImage | None:
        """The newest image for ``board`` if it is newer than version ``current``."""
        images = self.images(board)
        if not images:
            return None
        running = device_version(current)
        if running is None:
            log.info("device firmware version %r is not dotted numbers; no update offered", current)
            return None
        newest = images[-1]
        version = parse_version(newest.version)
        return newest if version is not None and is_newer(version, running) else None

    def resolve(self, board: str, file_name: str) -> FirmwareImage | None:
        """The image ``<board>/<file_name>``, or None unless it is a regular ``.bin`` file inside the folder.

        Segments must be plain names (no separators, no leading dot), and the real path (symlinks
        resolved) must stay inside the folder.
        """
        if not (safe_segment(board) and safe_segment(file_name) and file_name.endswith(".bin")):
            return None
        try:
            root = self.root.resolve(strict=True)
            path = (self.root / board / file_name).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return FirmwareImage(board, file_name[: -len(".bin")], path, path.stat().st_size)
