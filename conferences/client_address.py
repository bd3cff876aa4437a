"""The address of the client behind a request, trusting only the proxies the operator declared.

``X-Forwarded-For`` is written by whoever sends the request, so it only means
something when the TCP peer is one of ``settings.TRUSTED_PROXIES``
(``DJANGO_TRUSTED_PROXIES``). Rules:

- the peer (``REMOTE_ADDR``) is the client unless the peer is a trusted proxy;
- behind trusted proxies, ``X-Forwarded-For`` is read from the right (the entry
  the nearest proxy appended) and trusted proxies are skipped: the first
  untrusted entry is the client. Entries further left were written by that
  client and are never believed;
- a malformed entry stops the walk at the last hop that could be checked (a
  trusted proxy): a client cannot pick a fresh address by sending garbage.

daphne runs without ``--proxy-headers`` so that ``REMOTE_ADDR`` is the real peer.
"""

import ipaddress

from django.conf import settings


def client_address(request):
    """Return the client's IP address as text, or ``""`` when the request has no peer address."""
    raw_peer = request.META.get("REMOTE_ADDR") or ""
    peer = parse_ip(raw_peer)
    if peer is None:
        return raw_peer.strip()  # a Unix socket or a test double: nothing to resolve
    trusted = tuple(settings.TRUSTED_PROXIES)
    if not _is_trusted(peer, trusted):
        return str(peer)
    address = peer
    for entry in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        hop = parse_ip(entry)
        if hop is None:
            break
        address = hop
        if not _is_trusted(hop, trusted):
            break
    return str(address)


def parse_ip(text):
    """Return ``text`` as an IP address (IPv4-mapped IPv6 as IPv4), or None when it is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address, networks):
    return any(address.version == network.version and address in network for network in networks)
