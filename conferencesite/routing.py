"""WebSocket routes."""

from django.urls import path

from conferences.consumers import ConferenceConsumer, RoomListConsumer

websocket_urlpatterns = [
    path("ws/conferences/", RoomListConsumer.as_asgi()),
    path("ws/conferences/<slug:slug>/", ConferenceConsumer.as_asgi()),
]
