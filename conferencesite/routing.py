"""WebSocket routes. A path that matches none is accepted and closed with 4404, not a traceback."""

from django.urls import path, re_path

from conferences.consumers import ConferenceConsumer, NoSuchSocket, RoomListConsumer

websocket_urlpatterns = [
    path("ws/conferences/", RoomListConsumer.as_asgi()),
    path("ws/conferences/<slug:slug>/", ConferenceConsumer.as_asgi()),
    re_path(r"", NoSuchSocket.as_asgi()),
]
