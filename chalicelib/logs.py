"""Log formatters for ``log.formatter`` (text, json) with ``log.fields``.

``json`` writes one JSON object per line, as the reference registry's logrus JSON
formatter does: ``time`` (RFC 3339, UTC, milliseconds), ``level`` (error, warning,
info, debug), ``logger``, ``msg``, then ``log.fields`` and whatever a record carries
beside the standard attributes (``extra={...}``; on Lambda the runtime's
``aws_request_id``), flat at the top level. A field named like one of the five is
written as ``fields.<name>`` so it never hides them. An exception adds ``error``
(its text) and ``stack``. Nothing leaves a line: a line break in a message is
escaped by JSON, so one record is always one line for a log shipper.

``text`` is the classic line, ``<time> <LEVEL> <logger> <message>``, followed by
the fields as ``key=value``.

Only the standard library is used: every platform (Lambda, Azure Functions,
``stratus serve``) formats the same way through the root logger's handlers.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Mapping, Optional

__all__ = ["JSONFormatter", "TextFormatter", "AccessLogFilter", "ACCESS_LOGGERS", "formatter_for"]

# What a LogRecord carries by itself; anything else was added by the caller or a filter.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_RESERVED = ("time", "level", "logger", "msg")
_LEVELS = {"WARNING": "warning", "CRITICAL": "fatal"}

# The servers' access loggers: log.accesslog.disabled drops their records.
ACCESS_LOGGERS = ("uvicorn.access", "granian.access", "gunicorn.access")


def _timestamp(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, fields: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": _LEVELS.get(record.levelname, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for source in (self.fields, _extra(record)):
            for key, value in source.items():
                line[f"fields.{key}" if key in _RESERVED else key] = value
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            line["stack"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["stack"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger> <message> key=value ...``."""

    def __init__(self, fields: Optional[Mapping[str, Any]] = None):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = {**self.fields, **_extra(record)}
        if not pairs:
            return text
        first, newline, rest = text.partition("\n")  # fields stay on the message's line
        return first + " " + " ".join(f"{k}={_text(v)}" for k, v in pairs.items()) + newline + rest


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def formatter_for(name: str, fields: Optional[Mapping[str, Any]] = None) -> logging.Formatter:
    """The formatter log.formatter names: "json" or "text"."""
    return JSONFormatter(fields) if name == "json" else TextFormatter(fields)


class AccessLogFilter(logging.Filter):
    """Drops every record: set on the access loggers when log.accesslog.disabled is true.

    A filter on the logger (not on a handler) stays whatever handlers and level a
    server gives its access logger later."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False
