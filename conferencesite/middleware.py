"""Response headers that Django's SecurityMiddleware does not set; the login throttle's 429 and 503; request ids."""

import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpResponse

from conferences import auth_backends
from conferencesite import logformat

# A request id sent by the proxy (X-Request-ID) is kept when it looks like one; any other gets a new one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


class BothModes:
    """A middleware that runs sync or async, as the handler does: under ASGI a sync-only middleware puts
    every request behind it in a thread (an API action waiting for the worker would hold one all along)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        return self.handle(request)


class SecurityHeadersMiddleware(BothModes):
    """A strict Content-Security-Policy (no inline scripts or styles anywhere) and a Permissions-Policy."""

    @staticmethod
    def _headers(response):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response

    def handle(self, request):
        return self._headers(self.get_response(request))

    async def _acall(self, request):
        return self._headers(await self.get_response(request))


class LoginThrottleMiddleware(BothModes):
    """Answers 429 (or 503: counts unreachable) when the login throttle refused an attempt; settles attempts.

    A login page (a template response with a form: the site's and the admin's)
    is shown again with the throttle's message in place of the form's errors;
    any other response to a refused attempt is replaced by a short 429.
    Attempts no failure settled are given back at the end of the request
    (conferences/auth_backends.py).
    """

    def handle(self, request):
        try:
            response = self.get_response(request)
        finally:
            auth_backends.settle_request(request)
        return self._answer(request, response)

    async def _acall(self, request):
        try:
            response = await self.get_response(request)
        finally:
            if auth_backends.has_pending(request):  # a login attempt (cache I/O): off the loop
                await sync_to_async(auth_backends.settle_request)(request)
        return self._answer(request, response)

    @staticmethod
    def _answer(request, response):
        refusal = _refusal(request)
        if refusal is not None and response.status_code != refusal[0]:
            status, message = refusal
            response = HttpResponse(str(message), status=status, content_type="text/plain; charset=utf-8")
        return response

    def process_template_response(self, request, response):
        form = (response.context_data or {}).get("form")
        refusal = _refusal(request)
        if refusal is not None and hasattr(form, "add_error"):
            status, message = refusal
            form.errors.clear()
            form.add_error(None, message)
            response.context_data["throttled"] = True
            response.status_code = status
        return response


def _refusal(request):
    """``(status, message)`` when the login throttle refused an attempt of ``request``, else None."""
    if auth_backends.was_unavailable(request):
        return 503, auth_backends.UNAVAILABLE_MESSAGE
    if auth_backends.was_throttled(request):
        return 429, auth_backends.THROTTLED_MESSAGE
    return None


class RequestIdMiddleware:
    """Every request gets an id: the proxy's ``X-Request-ID`` when it looks like one, else a new one.

    It is in the logs of everything the request does (``request_id``,
    conferencesite/logformat.py) and in the response's ``X-Request-ID``.
    Sync and async, so that it adds no thread hop under ASGI.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    @staticmethod
    def _id(request):
        sent = request.headers.get("X-Request-ID", "")
        return sent if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        value = self._id(request)
        token = logformat.request_id.set(value)
        try:
            response = self.get_response(request)
        finally:
            logformat.request_id.reset(token)
        response["X-Request-ID"] = value
        return response

    async def _acall(self, request):
        value = self._id(request)
        token = logformat.request_id.set(value)
        try:
            response = await self.get_response(request)
        finally:
            logformat.request_id.reset(token)
        response["X-Request-ID"] = value
        return response
