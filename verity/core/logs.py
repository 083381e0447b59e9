"""Logging: a JSON-lines formatter and the id of the request being served.

The service sets :data:`request_id` for each request; every record logged
while serving it (in any module, in the request's thread too) carries that id
in JSON output, so one request's lines can be found together.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

request_id: ContextVar[str | None] = ContextVar("verity_request_id", default=None)

LogFormat = Literal["json", "text"]

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id and any ``extra``.

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.setFormatter(JsonFormatter())
        >>> logging.getLogger("verity").addHandler(handler)
        >>> logging.getLogger("verity").warning("slow", extra={"ms": 812.5})
        {"ts": "2025-01-01T12:00:00.000Z", "level": "WARNING", "logger": "verity",
         "message": "slow", "ms": 812.5}
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            data["request_id"] = current
        data.update({k: v for k, v in vars(record).items()
                     if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def choose_format(requested: str) -> LogFormat:
    """``json`` or ``text``; ``auto`` means text on a terminal and JSON otherwise."""
    if requested == "json":
        return "json"
    if requested == "text":
        return "text"
    if requested != "auto":
        raise ValueError(f"unknown log format {requested!r}; use json, text or auto")
    return "text" if sys.stderr.isatty() else "json"


def formatter(fmt: LogFormat) -> logging.Formatter:
    """The formatter for ``fmt``."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
