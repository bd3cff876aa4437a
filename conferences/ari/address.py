"""What an ARI base URL may look like: one rule for the admin's server form and the ARI_URL setting.

Plain Python (no Django): conferencesite/env.py checks ARI_URL with it before
Django is set up.
"""

from urllib.parse import urlsplit


def without_credentials(url):
    """``url`` with anything before an ``@`` in its network location replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def http_url_problem(url):
    """What is wrong with ``url`` as an ARI base URL (to follow the setting's name), or None.

    http(s), a host (a bare intranet name is fine), an optional port, no
    credentials: in a URL they end up in logs, error messages and the admin's
    list of servers; they belong in the username and password fields.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return f"must be an http:// or https:// URL, got {without_credentials(url)!r}."
    if parts.username is not None or parts.password is not None:
        return (
            f"must not contain a user name or password ({without_credentials(url)!r}): "
            "give them as the ARI username and password instead."
        )
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError:
        return f"the port is not a number in {without_credentials(url)!r}."
    return None
