from django.urls import path

from conferences import history, recordings, views

urlpatterns = [
    path("", views.conference_list, name="conference-list"),
    path("conferences/<slug:slug>/", views.conference_detail, name="conference-detail"),
    path("conferences/<slug:slug>/history/", history.conference_history, name="conference-history"),
    path(
        "conferences/<slug:slug>/recordings/<int:pk>/",
        recordings.recording_download,
        name="recording-download",
    ),
]
