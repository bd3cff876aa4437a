"""Logs as JSON lines (``LOG_FORMAT=json``): one object per record, with the room, channel and request ids as fields.

Plain text stays the default. A record's ``room``, ``channel`` and
``request_id`` come from ``extra=`` when the call gives them, else from the
context: the worker's lanes set the room (and, per event, the channel) they
are handling (conferences/ari/lanes.py, worker.py), the request-id middleware
sets the request's (conferencesite/middleware.py). Messages, caller-ID names
included, are escaped by JSON: a newline or a control character sent by a
caller cannot start a forged line.
"""

import contextvars
import json
import logging
from datetime import UTC, datetime

room = contextvars.ContextVar("log_room", default=None)
channel = contextvars.ContextVar("log_channel", default=None)
request_id = contextvars.ContextVar("log_request_id", default=None)

_FIELDS = (("room", room), ("channel", channel), ("request_id", request_id))


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, variable in _FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = variable.get()
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
