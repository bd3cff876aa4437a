from django.urls import path

from conferences import history, views

urlpatterns = [
    path("", views.conference_list, name="conference-list"),
    path("conferences/<slug:slug>/", views.conference_detail, name="conference-detail"),
    path("conferences/<slug:slug>/history/", history.conference_history, name="conference-history"),
]
