"""ASGI entry point: HTTP through Django, WebSockets through Channels.

The pages' WebSockets are authenticated with the Django session cookie
(checked by the consumers, conferences/sessions.py) and refused at the
handshake when their Origin is not one of the allowed hosts. The programs'
event stream (conferences/api_stream.py) is routed before that stack: it
takes a bearer token, never a cookie (no session middleware), and programs
send no Origin.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conferencesite.settings")

# Set up Django (apps, models) before anything imports a consumer.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import re_path  # noqa: E402

from conferences.sessions import SessionKeyMiddlewareStack  # noqa: E402
from conferencesite import daphne_limits  # noqa: E402
from conferencesite.routing import api_websocket_urlpatterns, websocket_urlpatterns  # noqa: E402
from conferencesite.startup import on_process_start  # noqa: E402

on_process_start()
# daphne buffers without bound for a client that does not read (see the module).
daphne_limits.install(settings.WEBSOCKET_MAX_QUEUED_BYTES)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(
            [
                *api_websocket_urlpatterns,
                re_path(r"", AllowedHostsOriginValidator(SessionKeyMiddlewareStack(URLRouter(websocket_urlpatterns)))),
            ]
        ),
    }
)
