"""Model folders that appear whole or not at all.

Every model folder (a pip-shipped model prepared into sherpa-ready form, or a downloaded archive)
is built in a temporary folder beside its destination and renamed into place, so a crash or a
second process never leaves half a model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Written into a prepared folder: what it was made from (package and version).
PREPARED_MARKER = "prepared.json"


def replace_dir(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest``, replacing an old one."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.rename(dest, old / "x")
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, dest)


@contextmanager
def building(dest: Path, prefix: str | None = None) -> Iterator[Path]:
    """A temporary folder beside ``dest`` for the caller to fill; it is removed whatever
    happens (the caller moves it into place with ``replace_dir`` when it is complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepared_from(dest: Path) -> str | None:
    """What the prepared folder ``dest`` was made from, or None if it is not a whole one."""
    try:
        return str(json.loads((dest / PREPARED_MARKER).read_text())["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def preparing(dest: Path, name: str, source: str) -> Iterator[Path]:
    """Fill the yielded folder; on success it becomes ``dest``, marked as made from ``source``.

    If another process finished the same preparation first, its folder is kept.
    """
    with building(dest) as tmp:
        yield tmp
        (tmp / PREPARED_MARKER).write_text(json.dumps({"name": name, "source": source}) + "\n")
        try:
            replace_dir(tmp, dest)
        except OSError:
            if prepared_from(dest) != source:
                raise
