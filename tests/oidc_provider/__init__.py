"""A tiny OpenID Connect provider for tests/test_oidc.py: django-oauth-toolkit's, in a process of its own."""
