"""The JSON log formatter and the log format choice (verity/core/logs.py)."""

import json
import logging

import pytest

from verity.core.logs import JsonFormatter, choose_format, request_id

pytestmark = pytest.mark.unit


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "verity.test", "levelname": "WARNING",
                                    "levelno": logging.WARNING, "msg": msg, "args": ()})
    record.__dict__.update(extra)
    return record


def test_a_record_is_one_json_object_with_its_extras() -> None:
    line = JsonFormatter().format(_record("slow \"query\"\nsecond line", ms=812.5, status=200))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "slow \"query\"\nsecond line" and data["level"] == "WARNING"
    assert data["logger"] == "verity.test" and data["ms"] == 812.5 and data["status"] == 200
    assert data["ts"].endswith("Z") and "request_id" not in data


def test_the_current_request_id_is_added() -> None:
    token = request_id.set("abc")
    try:
        assert json.loads(JsonFormatter().format(_record("x")))["request_id"] == "abc"
    finally:
        request_id.reset(token)


def test_exceptions_are_kept_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc_info"]


def test_log_format_choice() -> None:
    assert choose_format("json") == "json" and choose_format("text") == "text"
    assert choose_format("auto") in ("json", "text")
    with pytest.raises(ValueError, match="json, text or auto"):
        choose_format("xml")
