"""What a browser may send on a room socket, checked before anything else runs.

``parse_request(text)`` turns one text frame into a ``Request`` or raises
``FrameError`` with the message the browser gets in an ``error`` frame. Pure:
no database, no I/O, bounded work (the frame is at most MAX_FRAME_BYTES).

Requests are small flat JSON objects. Everything else is refused with a clear
error and never reaches the rest of the socket: oversized frames, nesting
deep enough to exhaust the parser's recursion (``[[[[…]]]]`` raises
``RecursionError``, not ``ValueError``), non-finite numbers, strings that
cannot be encoded as UTF-8 (lone surrogates written as ``\\ud800``: the
channel layer's msgpack would fail on them later), ids out of the database's
range.
"""

import json
import math
from dataclasses import dataclass

MAX_FRAME_BYTES = 4096
MAX_DEPTH = 4  # requests are flat objects; a little room for future fields
MAX_REQUEST_ID_LENGTH = 64
MAX_ID = 2**63 - 1  # BigAutoField
MAX_SAFE_INTEGER = 2**53 - 1  # what a browser's JSON.parse keeps exactly


class FrameError(ValueError):
    """A frame that cannot be understood; the message is what the browser is told."""


@dataclass(frozen=True)
class Request:
    """One understood request. ``action`` may still be unknown (the socket replies "unknown action")."""

    action: str | None
    request_id: str | int
    participant: int | None  # None when absent or not a valid id
    fields: dict


def nesting_depth(text):
    """The deepest nesting of ``[`` / ``{`` outside JSON strings (a cheap pre-check before parsing)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name):
    raise FrameError("not JSON")  # NaN, Infinity, -Infinity are not JSON


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise FrameError("number out of range")
    return value


def encodable(text):
    """Whether ``text`` can be encoded as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(value, max_length):
    """``value`` when it is a string of at most ``max_length`` encodable characters, else None."""
    if not isinstance(value, str) or len(value) > max_length or not encodable(value):
        return None
    return value


def database_id(value):
    """``value`` when it is an integer id the database can hold (not a bool, a float or a string), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        return None
    return value


def _request_id(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) <= MAX_SAFE_INTEGER else None
    return clean_text(value, MAX_REQUEST_ID_LENGTH)


def decode(text):
    """The JSON object of one text frame, or ``FrameError``."""
    if len(text) > MAX_FRAME_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        raise FrameError("message too large")
    if nesting_depth(text) > MAX_DEPTH:
        raise FrameError("message too deeply nested")
    try:
        frame = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except FrameError:
        raise
    except (ValueError, RecursionError):
        raise FrameError("not JSON") from None
    if not isinstance(frame, dict):
        raise FrameError("expected a JSON object")
    return frame


def parse_request(text):
    """A ``Request`` from one text frame, or ``FrameError``."""
    frame = decode(text)
    request_id = _request_id(frame.get("request_id"))
    if request_id is None:
        raise FrameError("request_id missing or invalid")
    action = clean_text(frame.get("action"), 32)
    return Request(
        action=action,
        request_id=request_id,
        participant=database_id(frame.get("participant")),
        fields=frame,
    )
