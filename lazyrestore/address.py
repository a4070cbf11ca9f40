"""Addresses of page servers: HOST:PORT as users give them, checked before anything connects or listens.

An IPv4 address or a host name, or an [IPv6] address, and a port from 0 to 65535; port 0 (any free port) and the
wildcard addresses only for listening. Errors are UsageErrors naming what is wrong and what was expected.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import UsageError


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv4 address or name; [IPv6]:PORT) -> (host, port); UsageError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise UsageError(f"address {text!r}: expected HOST:PORT, e.g. 10.231.0.1:7411 (port 0 to 65535)")
    host = host.removeprefix("[").removesuffix("]")
    if any(c.isspace() for c in host):
        raise UsageError(f"address {text!r}: the host part has white space")
    if not _host_syntax_ok(host):
        raise UsageError(f"address {text!r}: {host!r} is not an IPv4 address, [IPv6] address or host name")
    return host, int(port)


# A host name: RFC 1123 labels ("_" too, as /etc/hosts allows), at most 253 characters in all.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _host_syntax_ok(host: str) -> bool:
    """An IP address, or a host name that is not all digits and dots (999.1.1.1 is no address and no name)."""
    try:
        ipaddress.ip_address(host.partition("%")[0])
        return True
    except ValueError:
        pass
    return len(host) <= 253 and _HOST_NAME.fullmatch(host) is not None and not set(host) <= set("0123456789.")


def check_destination(address: str) -> None:
    """A restore connects to a real port: 0 (any) is only for listening."""
    host, port = parse_address(address)
    if port == 0:
        raise UsageError(f"address {address!r}: port 0 means any free port when listening; give the page "
                         "server's port (it prints it when it starts)")
    try:
        if ipaddress.ip_address(host).is_unspecified:
            raise UsageError(f"address {address!r}: {host} is a listening address; give the page server's address")
    except ValueError:
        pass  # a host name: lr-lazyd resolves it


def join(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 host in brackets ([::1]:7411)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
