"""Run the tests' OpenID Connect provider: ``python -m tests.oidc_provider.serve PORT``.

Needs OIDC_TEST_DATABASE (a SQLite file), OIDC_TEST_ISSUER (http://127.0.0.1:PORT/o), OIDC_TEST_KEY_FILE
(an RSA private key, PEM), OIDC_TEST_CONTROL_TOKEN, and the client: OIDC_TEST_CLIENT_ID,
OIDC_TEST_CLIENT_SECRET, OIDC_TEST_REDIRECT_URI, OIDC_TEST_LOGOUT_REDIRECT_URI. Migrates its database,
registers the confidential client, then serves (threads) until killed.
"""

import os
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def main(port):
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.oidc_provider.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application
    from oauth2_provider.models import Application

    call_command("migrate", verbosity=0, interactive=False)
    Application.objects.update_or_create(
        client_id=os.environ["OIDC_TEST_CLIENT_ID"],
        defaults={
            "name": "Conferences",
            "client_secret": os.environ["OIDC_TEST_CLIENT_SECRET"],
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
            "redirect_uris": os.environ["OIDC_TEST_REDIRECT_URI"],
            "post_logout_redirect_uris": os.environ["OIDC_TEST_LOGOUT_REDIRECT_URI"],
            "algorithm": Application.RS256_ALGORITHM,
            "skip_authorization": False,
        },
    )
    server = make_server("127.0.0.1", port, get_wsgi_application(), server_class=_Server, handler_class=_Quiet)
    print(f"serving on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]))
