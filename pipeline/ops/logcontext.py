"""Device and session ids on every log line of a session, and the structured log formats.

The session code wraps its work in ``bind_session(device_id, session_id)``. The ids live in context
variables, which trio copies into every task started inside (and into worker threads), so each log
record made on the session's behalf carries them, whichever module logs it. ``SessionContextFilter``
puts them on the record; the formatters write them out::

    logfmt: time=2026-08-09T10:15:02.123Z level=info logger=xiaozhi_trio.pipeline.session device=aa:bb:cc:dd:ee:ff session=5f1c msg="turn 3 completed"
    json:   {"time": "...", "level": "info", "logger": "...", "device": "...", "session": "...", "msg": "..."}

Extra fields passed with ``log.info(..., extra={"turn": 3})`` are written as more keys.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

device_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("xiaozhi_device_id", default=None)
session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("xiaozhi_session_id", default=None)

#: Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "device", "session", "device_id", "session_id"}


@contextlib.contextmanager
def bind_session(device_id: str, session_id: str) -> Iterator[None]:
    """Tag every log record made inside (in this task and the tasks it starts) with these ids."""
    device_token = device_id_var.set(device_id)
    session_token = session_id_var.set(session_id)
    try:
        yield
    finally:
        session_id_var.reset(session_token)
        device_id_var.reset(device_token)


class SessionContextFilter(logging.Filter):
    """Sets ``record.device`` and ``record.session`` from the context (an explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # ``device_id``/``session_id`` passed as ``extra=`` count as explicit too.
        if getattr(record, "device", None) is None:
            record.device = getattr(record, "device_id", None) or device_id_var.get()
        if getattr(record, "session", None) is None:
            record.session = getattr(record, "session_id", None) or session_id_var.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if not isinstance(value, (int, float)) else str(value)
    if text and not any(c in text for c in ' "=\\\n\t') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Time, level, logger, device, session, message, then the record's extras, in that order."""
    fields: dict[str, Any] = {"time": _timestamp(record), "level": record.levelname.lower(), "logger": record.name}
    for key in ("device", "session"):
        if (value := getattr(record, key, None)) is not None:
            fields[key] = value
    fields["msg"] = record.getMessage()
    fields.update(_extras(record))
    return fields


class LogfmtFormatter(logging.Formatter):
    """``key=value`` lines: time, level, logger, device, session, msg, extras, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += " exc=" + _logfmt_value(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same fields as ``LogfmtFormatter``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic human-readable line with ``[device session]`` appended when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [str(v) for v in (getattr(record, "device", None), getattr(record, "session", None)) if v is not None]
        if not ids:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [{' '.join(ids)}]{newline}{rest}"


FORMATTERS: dict[str, type[logging.Formatter]] = {"logfmt": LogfmtFormatter, "json": JsonFormatter, "text": TextFormatter}


def configure_logging(level: int, log_format: str = "logfmt", stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) in ``log_format``, with session ids.

    Replaces the root logger's handlers, so calling it again (after the config is read) is fine.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[log_format]())
    handler.addFilter(SessionContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
