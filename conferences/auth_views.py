"""The site's login page.

The throttle is not here: it sits in the first authentication backend
(conferences/auth_backends.py), so the admin login and any later way in are
throttled too, and LoginThrottleMiddleware shows its 429 on this page.
"""

from urllib.parse import unquote, urlsplit

from django.contrib.auth import views as auth_views


class LoginView(auth_views.LoginView):
    """Django's login view; a ``next`` pointing back at the login page goes to LOGIN_REDIRECT_URL instead.

    Django raises ValueError (a 500) when a logged-in user's ``next`` is the
    login page itself, and a ``next`` of the login page with a query, or as
    an absolute URL of this host, costs an extra round of redirects.
    """

    redirect_authenticated_user = True

    def get_redirect_url(self):
        url = super().get_redirect_url()
        if url and unquote(urlsplit(url).path) == self.request.path:
            return ""
        return url
