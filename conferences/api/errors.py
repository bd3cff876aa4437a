"""The API's errors: ``{"error": stable English text, "error_text": the same in the request's language}``.

As on the room socket (conferences/protocol.py), ``error`` is what programs
compare and ``error_text`` what a person reads. The texts that the page's
replies carry keep their wording here, so a program gets the same error
from the API as a page gets from its socket; the API's own texts are below,
marked for translation. Nothing else reaches a client: no exception text,
no stack trace.
"""

from django.http import JsonResponse
from django.utils import translation
from django.utils.translation import gettext_noop

from conferences import moderation, protocol

NOT_AUTHENTICATED = gettext_noop("send an API token (Authorization: Bearer <token>) or log in")
BAD_TOKEN = gettext_noop("the API token is not valid: unknown, expired or revoked, or its owner is disabled")
BAD_AUTHORIZATION = gettext_noop("the Authorization header must be: Bearer <token>")
CSRF_FAILED = gettext_noop("CSRF check failed: a request with a login session needs the X-CSRFToken header")
THROTTLED = gettext_noop("too many requests; slow down")
NO_SUCH_ROOM = "no such room"  # the protocol's (conferences/protocol.py)
NO_SUCH_RECORDING = gettext_noop("no such recording")
MAY_NOT_DOWNLOAD = gettext_noop("you may not download this room's recordings")
STORAGE_DOWN = gettext_noop("the recordings' storage did not answer; try again later")
NO_SUCH_PATH = gettext_noop("no such API path")
METHOD_NOT_ALLOWED = gettext_noop("method not allowed")
INVALID_INPUT = gettext_noop("invalid input")
BAD_JSON = gettext_noop("the body is not a JSON object")
TOO_LARGE = gettext_noop("the body is too large")
BAD_CURSOR = gettext_noop("invalid page cursor")
BAD_DATES = gettext_noop("the start date is after the end date")
PARTICIPANT_INVALID = "participant missing or invalid"  # the protocol's
UNKNOWN_ACTION = "unknown action"  # the protocol's
DATABASE_DOWN = "the database is unavailable; try again"  # the protocol's
LAYER_BUSY = "the server is busy; try again"  # the protocol's
INTERNAL_ERROR = "the request failed; try again"  # the protocol's

# The HTTP status of each refusal an action can get (from the checks here or from the worker);
# any other refusal of the worker is 409: the request was understood, the room's state refused it.
ACTION_STATUS = {
    "you may not moderate this room": 403,
    PARTICIPANT_INVALID: 400,
    "a number holds only 0-9 * # + (at most 32)": 400,
    "no such participant in this room": 404,
    "no such waiting caller in this room": 404,
    "no such invite ringing in this room": 404,
    "no such sound on this room's server": 404,
    "too many invites lately; try again in a few minutes": 429,
    "the link to Asterisk is down": 503,
    moderation.WORKER_DOWN: 503,
    "Asterisk refused the request": 502,
    DATABASE_DOWN: 503,
    LAYER_BUSY: 503,
    INTERNAL_ERROR: 500,
}
WORKER_REFUSED = 409


def action_status(error):
    return ACTION_STATUS.get(error, WORKER_REFUSED)


class ApiError(Exception):
    """An error answered as JSON: ``status``, the stable ``message``, extra body fields and headers."""

    def __init__(self, status, message, *, headers=None, **extra):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra


def localized(message):
    """``message`` in the request's language (LocaleMiddleware activated it)."""
    text = protocol.localized(message, translation.get_language() or "en")
    if text == message:
        text = translation.gettext(message)
    return text


def response(status, message, *, headers=None, **extra):
    answer = JsonResponse({"error": message, "error_text": localized(message), **extra}, status=status)
    for name, value in (headers or {}).items():
        answer[name] = value
    return answer


def from_exception(error):
    return response(error.status, error.message, headers=error.headers, **error.extra)
