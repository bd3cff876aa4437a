from django.urls import path

from conferences import views

urlpatterns = [
    path("", views.conference_list, name="conference-list"),
    path("conferences/<slug:slug>/", views.conference_detail, name="conference-detail"),
]
