"""Where a webhook may send: the URL's form, its host against ``TAGSIFT_WEBHOOK_ALLOWED_HOSTS``, and every address the
host resolves to against the private, loopback, link-local and other non-public ranges (``TAGSIFT_WEBHOOK_ALLOWED_
NETWORKS`` lets chosen ones through).

:func:`check_url` runs when a hook is registered and again before each delivery attempt, which then connects to one
of the addresses checked right there (never to a second resolution of the name): a DNS answer that changes after
registration (DNS rebinding) cannot turn a hook towards an internal service.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.config import Settings

MAX_URL_LENGTH = 2000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL may not be used; the message says why and, where a setting decides it, which one."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, all allowed) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]


def host_allowed(host: str, patterns: list[str]) -> bool:
    """``host`` matches ``*``, itself, or ``*.<parent>`` for one of its parents."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def address_refusal(address: IPAddress, settings: Settings) -> str | None:
    """Why ``address`` may not be reached (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in settings.webhook_networks):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        kind = f"6to4 (2002::/16, a tunnel to {address.sixtofour})"
    elif isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        kind = "site-local (fec0::/10)"
    elif address.is_loopback:
        kind = "loopback"
    elif address.is_link_local:
        kind = "link-local"
    elif address.is_private:
        kind = "private"
    elif address.is_multicast or address.is_unspecified or address.is_reserved or not address.is_global:
        kind = "non-public"
    else:
        return None
    return f"{address} is a {kind} address (allow its network with TAGSIFT_WEBHOOK_ALLOWED_NETWORKS)"


def parse_url(url: str, settings: Settings) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an acceptable URL; :class:`UrlRefused` otherwise. No network access."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"at most {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UrlRefused("contains a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("the scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("credentials in the URL are not allowed (the signature authenticates the sender)")
    if parts.fragment:
        raise UrlRefused("a fragment (#...) is never sent; leave it out")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("no host")
    if not host.isascii():
        raise UrlRefused("the host must be ASCII (write an international name in its xn-- form)")
    if not host_allowed(host, settings.webhook_host_patterns):
        allowed = settings.webhook_allowed_hosts.strip() or "(none)"
        raise UrlRefused(f"host {host!r} is not allowed by TAGSIFT_WEBHOOK_ALLOWED_HOSTS ({allowed})")
    port = port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return parts.scheme, host, port, path


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` stands for (an IP literal: itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"host {host!r} does not resolve ({exc})") from None
    out: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if address not in out:
            out.append(address)
    if not out:
        raise UrlRefused(f"host {host!r} has no address")
    return out


def check_url(url: str, settings: Settings) -> Target:
    """The checked target of ``url`` (see the module docstring); :class:`UrlRefused` says what is wrong."""
    scheme, host, port, path = parse_url(url, settings)
    addresses = resolve(host, port)
    refusals = [r for a in addresses if (r := address_refusal(a, settings))]
    if refusals:
        raise UrlRefused(f"host {host!r} resolves to a refused address: {refusals[0]}")
    return Target(scheme, host, port, path, tuple(str(a) for a in addresses))
