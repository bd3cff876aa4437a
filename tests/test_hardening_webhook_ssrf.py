"""A webhook URL cannot point the sender at the host itself or at the cloud metadata service (an attacker's
review found both accepted): refused in the admin's form, and again when the sender connects, after DNS."""

import asyncio

import pytest
from django.urls import reverse

from conferences import webhooks
from conferences.models import Webhook

pytestmark = pytest.mark.django_db

REFUSED = "Not this address"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # cloud metadata (link-local)
        "http://127.0.0.1:8088/ari/channels?endpoint=PJSIP/900123&api_key=conference:conference",  # ARI on loopback
        "http://[::1]:6379/",  # loopback, IPv6
        "http://[::ffff:127.0.0.1]:6379/",  # loopback, IPv4-mapped
        "http://localhost:5432/",
        "http://api.localhost/",
        "http://0.0.0.0:8000/",
        "http://224.0.0.1/",  # multicast
    ],
)
def test_the_admin_refuses_a_webhook_to_the_host_itself_or_link_local(client, superuser, url, settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    client.force_login(superuser)
    fields = {"name": "x", "url": url, "enabled": "on", "every_room": "on"}
    response = client.post(reverse("admin:conferences_webhook_add"), fields)
    assert response.status_code == 200 and REFUSED in response.content.decode()
    assert not Webhook.objects.filter(name="x").exists()


def test_private_addresses_and_names_are_allowed(client, superuser, settings):
    """Intranet receivers (a CRM on 10.x) are the common case."""
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    client.force_login(superuser)
    for n, url in enumerate(["http://10.1.2.3/hook", "https://192.168.0.5:8443/hook", "https://crm.example.com/h"]):
        fields = {"name": f"ok{n}", "url": url, "enabled": "on", "every_room": "on"}
        assert client.post(reverse("admin:conferences_webhook_add"), fields).status_code == 302, url
    assert Webhook.objects.count() == 3


def test_the_sender_refuses_a_name_that_resolves_to_loopback_and_a_literal_it_was_given(settings):
    """A row written before the check, or a name whose DNS now points at the host: refused at connect time."""
    settings.WEBHOOK_ALLOW_LOOPBACK = False

    async def resolve(host):
        resolver = webhooks.GuardedResolver()
        try:
            return await resolver.resolve(host, 80)
        finally:
            await resolver.close()

    with pytest.raises(OSError, match="refused"):
        asyncio.run(resolve("localhost"))  # /etc/hosts: 127.0.0.1, ::1
    assert webhooks.url_problem("http://169.254.169.254/") == webhooks.REFUSED_ADDRESS
    assert webhooks.url_problem("https://crm.example.com/") is None
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    assert webhooks.url_problem("http://127.0.0.1:9/") is None
    assert webhooks.url_problem("http://169.254.169.254/") == webhooks.REFUSED_ADDRESS  # never
    assert asyncio.run(resolve("localhost"))
