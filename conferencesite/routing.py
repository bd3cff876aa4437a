"""WebSocket routes."""

from django.urls import path

from conferences.consumers import ConferenceConsumer

websocket_urlpatterns = [
    path("ws/conferences/<slug:slug>/", ConferenceConsumer.as_asgi()),
]
