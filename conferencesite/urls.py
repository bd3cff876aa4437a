from django.contrib import admin
from django.urls import include, path, re_path

from conferences import oidc, twofactor
from conferences.api import api, not_found
from conferences.auth_views import LoginView
from conferencesite import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", oidc.LogoutView.as_view(), name="logout"),
    path("accounts/sso/", oidc.start, name=oidc.START),
    path("accounts/sso/callback/", oidc.callback, name=oidc.CALLBACK),
    path("accounts/two-factor/", twofactor.verify, name="twofactor-verify"),
    path("accounts/two-factor/enrol/", twofactor.enrol, name="twofactor-enrol"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<rest>.*)$", not_found),
    path("", include("conferences.urls")),
]
