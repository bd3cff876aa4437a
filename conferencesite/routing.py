"""WebSocket routes. A path that matches none is accepted and closed with 4404, not a traceback.

``websocket_urlpatterns`` are the pages' sockets (session cookie, Origin
checked: conferencesite/asgi.py); ``api_websocket_urlpatterns`` the
programs' (a bearer token, no cookie, no Origin: conferences/api_stream.py).
"""

from django.urls import path, re_path

from conferences.api_stream import PATH as EVENT_STREAM_PATH
from conferences.api_stream import EventStreamConsumer
from conferences.consumers import ConferenceConsumer, NoSuchSocket, RoomListConsumer

websocket_urlpatterns = [
    path("ws/conferences/", RoomListConsumer.as_asgi()),
    path("ws/conferences/<slug:slug>/", ConferenceConsumer.as_asgi()),
    re_path(r"", NoSuchSocket.as_asgi()),
]

api_websocket_urlpatterns = [
    path(EVENT_STREAM_PATH, EventStreamConsumer.as_asgi()),
]
