"""Which URLs a tenant may make this server call (``wandb_base_url``, and any other URL a request
carries): only those the operator allows (``TUNERY_OUTBOUND_URL_ALLOW``, default the public W&B
endpoint), never an address inside the server's own network unless the operator named that host.

An allow-list entry is ``scheme://host[:port]``; a host may start with ``*.`` to allow its
subdomains. A URL matches an entry with the same scheme, host (or a subdomain, for a wildcard)
and port. A host the operator named exactly is trusted as named; a host that matched only a
wildcard, or a URL whose host is an IP address, must resolve to public addresses only: loopback,
private, link-local (cloud metadata at 169.254.169.254), multicast and reserved ones are refused.
URLs with credentials in them are refused, and so is every other scheme than http and https.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from tunery.errors import InvalidRequest

Resolve = Callable[[str], list[str]]


def _addresses(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})


def _inside(address: str) -> str | None:
    """Why ``address`` is not a public address, or None when it is."""
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    for kind, flag in (("a loopback", ip.is_loopback), ("a link-local", ip.is_link_local),
                       ("a private", ip.is_private), ("a multicast", ip.is_multicast),
                       ("a reserved", ip.is_reserved or ip.is_unspecified)):
        if flag:
            return kind
    return None


def _port(scheme: str, port: int | None) -> int:
    return port or (443 if scheme == "https" else 80)


def parse_allow_list(text: str) -> list[tuple[str, str, int]]:
    """``(scheme, host, port)`` per comma-separated entry of ``TUNERY_OUTBOUND_URL_ALLOW``."""
    entries = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"TUNERY_OUTBOUND_URL_ALLOW entry {item!r} must be scheme://host[:port]")
        entries.append((parts.scheme, parts.hostname.lower(), _port(parts.scheme, parts.port)))
    return entries


def check_url(url: str, allow: list[tuple[str, str, int]], *, param: str,
              resolve: Resolve = _addresses) -> None:
    """Raise ``InvalidRequest`` (400, naming ``param``) unless this server may call ``url``."""
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), _port(parts.scheme, parts.port)
    except ValueError:
        raise InvalidRequest(f"{param} is not a valid URL: {url!r}", param=param) from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(f"{param} must be an http(s) URL; got {url!r}", param=param)
    if parts.username or parts.password:
        raise InvalidRequest(f"{param} must not carry credentials in the URL", param=param)
    exact = any(host == h and parts.scheme == s and port == p for s, h, p in allow)
    wildcard = any(h.startswith("*.") and host.endswith(h[1:]) and parts.scheme == s and port == p
                   for s, h, p in allow)
    if not (exact or wildcard):
        allowed = ", ".join(f"{s}://{h}" + ("" if p == _port(s, None) else f":{p}") for s, h, p in allow)
        raise InvalidRequest(f"{param} {url!r} is not allowed on this server; it may call {allowed or 'no URL'} "
                             "(the operator's TUNERY_OUTBOUND_URL_ALLOW)", param=param)
    if exact:
        return  # a host the operator named: trusted as named
    try:
        addresses = [host] if _is_ip(host) else resolve(host)
    except OSError:
        raise InvalidRequest(f"{param}: the host {host!r} does not resolve", param=param) from None
    for address in addresses:
        kind = _inside(address)
        if kind is not None:
            raise InvalidRequest(f"{param} {url!r} points at {kind} address ({address}); this server does not "
                                 "call into its own network for a request", param=param)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
