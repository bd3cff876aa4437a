"""The REST API for integrators, under /api/v1/ (issue 18): django-ninja, async views.

django-ninja rather than Django REST Framework: its views can be async, so a
request that waits for the worker's reply (an action) waits on the event
loop, holding no thread; its OpenAPI document comes from the views'
signatures and pydantic schemas. The document is at /api/v1/openapi.json,
its page at /api/v1/docs.

- ``auth``: who calls (a token, or a logged-in browser with CSRF) and the
  throttle;
- ``rooms``: what is read (rooms, live state, history, attendance,
  recordings);
- ``actions``: the page's moderator actions;
- ``errors``: every error is JSON ``{"error", "error_text"}``, never a stack trace.
"""

import logging

from django.core.exceptions import RequestDataTooBig
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from conferences.api import actions, auth, errors, rooms

logger = logging.getLogger(__name__)

DESCRIPTION = """Rooms, their live state, history, attendance and recordings, and the room page's moderator actions.

Authenticate with `Authorization: Bearer <token>` (an API token: the admin, or the user's own token page), or
with a logged-in browser session (then unsafe methods need the `X-CSRFToken` header). A token can do at most
what its owner can: its rooms and its scope (read only, or moderate) narrow the owner's rights.

Errors are JSON: `{"error": "stable English text", "error_text": "the same in the request's language"}`.
Requests are throttled per token (per user for a session): over the limit, 429 with `Retry-After`.
"""

api = NinjaAPI(
    title="Live conference pages API",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api-v1",
    auth=[auth.TokenAuth(), auth.SessionAuth()],
)
api.add_router("", rooms.router)
api.add_router("", actions.router)


@api.exception_handler(errors.ApiError)
def _api_error(request, exc):
    return errors.from_exception(exc)


@api.exception_handler(AuthenticationError)
def _not_authenticated(request, exc):
    return errors.response(401, errors.NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})


def _field(error):
    location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "payload")]
    return {"field": ".".join(location) or None, "message": str(error.get("msg", ""))}


@api.exception_handler(ValidationError)
def _invalid(request, exc):
    if any(tuple(error.get("loc", ()))[:2] == ("path", "action") for error in exc.errors):
        return errors.response(404, errors.UNKNOWN_ACTION)
    problems = [_field(error) for error in exc.errors]
    if any(error.get("type") == "json_invalid" for error in exc.errors):
        return errors.response(400, errors.BAD_JSON)
    return errors.response(422, errors.INVALID_INPUT, problems=problems)


@api.exception_handler(HttpError)
def _http_error(request, exc):
    if exc.status_code == 400:  # ninja's "Cannot parse request body"
        return errors.response(400, errors.BAD_JSON)
    return errors.response(exc.status_code, errors.INVALID_INPUT)


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc):
    return errors.response(413, errors.TOO_LARGE)


@api.exception_handler(Exception)
def _failed(request, exc):
    logger.exception("api: %s %s failed", request.method, request.path)
    return errors.response(500, errors.INTERNAL_ERROR)


async def not_found(request, rest=""):
    """Any other path under /api/v1/: a JSON 404, not the site's HTML page."""
    return errors.response(404, errors.NO_SUCH_PATH)
