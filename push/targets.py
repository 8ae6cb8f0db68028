"""User-given push targets: syntax checks and the SSRF guard.

A webhook or push endpoint is a URL a user chose, fetched by our worker from inside the
network. Unless `PARLEY_PUSH_ALLOW_PRIVATE_TARGETS` is set, every address the host resolves to
must be public: loopback, private, link-local (cloud metadata), multicast and reserved ranges
are refused, at subscription time and again right before each send (DNS may change between).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

MAX_URL = 2048
MAX_EMAIL = 254
_EMAIL = re.compile(
    r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$"
)


class UnsafeTarget(ValueError):
    """The URL or address is malformed, or points somewhere we must not send to."""


def check_url(url: str, *, allow_private: bool, resolve: bool = True) -> str:
    """Return the URL if it is http(s) with a host, and public unless private is allowed."""
    if len(url) > MAX_URL:
        raise UnsafeTarget(f"longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget("not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeTarget("must be an http or https URL")
    if not parts.hostname:
        raise UnsafeTarget("must name a host")
    if parts.username or parts.password:
        raise UnsafeTarget("must not carry credentials")
    if parts.fragment:
        raise UnsafeTarget("must not have a #fragment")
    if not allow_private and resolve:
        _require_public(parts.hostname, port or (443 if parts.scheme == "https" else 80))
    return url


def _require_public(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeTarget(f"host {host!r} does not resolve") from exc
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if not addr.is_global or addr.is_multicast:
            raise UnsafeTarget(f"host {host!r} resolves to a non-public address")


def check_email(address: str) -> str:
    if len(address) > MAX_EMAIL or not _EMAIL.match(address):
        raise UnsafeTarget("not a valid e-mail address")
    return address
