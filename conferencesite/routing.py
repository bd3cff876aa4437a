"""WebSocket routes. The room consumer at /ws/conferences/<slug>/ is added here."""

websocket_urlpatterns = []
