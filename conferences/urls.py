from django.urls import path

from conferences import history, recordings, token_views, views

urlpatterns = [
    path("", views.conference_list, name="conference-list"),
    path("conferences/<slug:slug>/", views.conference_detail, name="conference-detail"),
    path("conferences/<slug:slug>/history/", history.conference_history, name="conference-history"),
    path("account/tokens/", token_views.token_list, name="api-tokens"),
    path("account/tokens/<int:pk>/revoke/", token_views.token_revoke, name="api-token-revoke"),
    path(
        "conferences/<slug:slug>/recordings/<int:pk>/",
        recordings.recording_download,
        name="recording-download",
    ),
]
