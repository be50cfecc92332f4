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

__all__ = ["JSONFormatter", "TextFormatter", "AccessLogFilter", "AccessLog", "ACCESS_LOGGERS", "formatter_for",
           "redact_target"]

# What a LogRecord carries by itself; anything else was added by the caller or a filter.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_RESERVED = ("time", "level", "logger", "msg")
_LEVELS = {"WARNING": "warning", "CRITICAL": "fatal"}

# The servers' access loggers: log.accesslog.disabled drops their records. stratus.access
# is the one `stratus serve` writes (AccessLog); the servers' own are kept off.
ACCESS_LOGGER = "stratus.access"
ACCESS_LOGGERS = (ACCESS_LOGGER, "uvicorn.access", "granian.access", "gunicorn.access")


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
        # an access line's request and response fields (AccessLog), structured only here:
        # the text line already says them
        for source in (self.fields, _extra(record), getattr(record, "_fields", {})):
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


# Query parameters whose value is a credential: the upload `_state` token (an HMAC
# the next request of the upload presents; whoever reads it may continue the upload).
_REDACTED_PARAMS = ("_state",)
REDACTED = "REDACTED"


def redact_target(path: str, query: str) -> str:
    """path?query as the access log writes it, each redacted parameter's value replaced."""
    if not query:
        return path
    if "_state" in query:
        parts = []
        for part in query.split("&"):
            name, equals, _ = part.partition("=")
            parts.append(f"{name}={REDACTED}" if equals and name in _REDACTED_PARAMS else part)
        query = "&".join(parts)
    return f"{path}?{query}"


class AccessLog:
    """One line per request answered, on the ``stratus.access`` logger: who, what (with
    the query string: ``?mount=&from=``, ``?digest=``, ``?n=&last=``; ``_state`` redacted),
    the status, the response's declared size and how long the request took, from its
    head arriving to its response's last byte handed to the socket.

    Text: ``<addr> - "<METHOD> <target> HTTP/<v>" <status> <size> <ms>ms "<user agent>"``.
    JSON (log.formatter: json): the same message, plus the fields ``http.request.*`` /
    ``http.response.*`` the reference registry logs, duration in seconds."""

    def __init__(self, logger: Optional[logging.Logger] = None):
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    def log(self, remote: str, method: str, path: str, query: str, version: str, status: int,
            size: Optional[int], seconds: float, user_agent: str) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        target = redact_target(path, query)
        fields = {
            "http.request.remoteaddr": remote,
            "http.request.method": method,
            "http.request.uri": target,
            "http.request.proto": f"HTTP/{version}",
            "http.request.useragent": user_agent,
            "http.response.status": status,
            "http.response.contentlength": size,
            "http.response.duration": round(seconds, 6),
        }
        self.logger.info('%s - "%s %s HTTP/%s" %d %s %.1fms "%s"', remote or "-", method, target, version, status,
                         "-" if size is None else size, seconds * 1000, user_agent or "-",
                         extra={"_fields": fields})


def access_log_handler(destination: str) -> Optional[logging.Handler]:
    """STRATUS_ACCESS_LOG's destination: "-" is the root logger's handlers (None here),
    else a file of its own, formatted like the rest (the root handlers' formatter)."""
    if destination == "-":
        return None
    handler = logging.FileHandler(destination)
    for root_handler in logging.getLogger().handlers:
        if root_handler.formatter is not None:
            handler.setFormatter(root_handler.formatter)
            break
    return handler


def enable_access_log(destination: str) -> AccessLog:
    """The access logger writing at INFO whatever log.level says (an access log is asked
    for apart from the level), to stderr through the root's handlers or to a file."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    handler = access_log_handler(destination)
    if handler is not None:
        logger.addHandler(handler)
        logger.propagate = False
    return AccessLog(logger)
