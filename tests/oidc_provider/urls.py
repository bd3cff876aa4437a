"""The provider's pages: django-oauth-toolkit under /o/, a login page, and the tests' control of its users."""

import json
import os

from django.contrib.auth import views as auth_views
from django.contrib.auth.models import Group, User
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def control_user(request):
    """POST {"username", "password", "groups", "email", ...}: make or update a user (the tests' only)."""
    if request.method != "POST" or request.headers.get("X-Control") != os.environ["OIDC_TEST_CONTROL_TOKEN"]:
        return HttpResponseForbidden()
    data = json.loads(request.body)
    user, _ = User.objects.get_or_create(username=data["username"])
    for field in ("email", "first_name", "last_name"):
        if field in data:
            setattr(user, field, data[field])
    if "password" in data:
        user.set_password(data["password"])
    user.save()
    if "groups" in data:
        user.groups.set([Group.objects.get_or_create(name=name)[0] for name in data["groups"]])
    return JsonResponse({"sub": str(user.pk)})


def healthz(request):
    return HttpResponse("ok")


urlpatterns = [
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("control/user", control_user),
    path("healthz", healthz),
]
