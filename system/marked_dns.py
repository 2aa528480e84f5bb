"""Looking up the proxy's name again, over the marked path (the async adapter around
:mod:`atlantic.dns.stubquery`).

While Atlantic is up an unmarked lookup by the daemon would be captured like any other
(and answered with a fake address), so the query goes out on a socket carrying the
daemon's firewall mark: policy routing sends it to the main table and the kill switch lets
marked UDP/TCP 53 reach exactly the resolvers it names (``KillSwitchConfig.resolvers``).
UDP first, TCP when the reply is truncated; each resolver in turn; A first, AAAA only when
there is no A (as ``outbound.resolve`` prefers IPv4). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import struct
from pathlib import Path

from atlantic.dns.message import TYPE_A, TYPE_AAAA, DnsFormatError
from atlantic.dns.stubquery import (
    StubAnswerError,
    build_query,
    choose_resolvers,
    is_truncated,
    parse_addresses,
)

__all__ = ["ETC_RESOLV_CONF", "RESOLVED_RESOLV_CONF", "MarkedDnsError", "read_resolvers", "resolve_marked"]

ETC_RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")  # systemd-resolved's uplink servers
SO_MARK = 36  # <asm-generic/socket.h>; socket.SO_MARK only since Python 3.12
DNS_PORT = 53
TIMEOUT_S = 2.0  # per resolver and query type
MAX_REPLY = 65535


class MarkedDnsError(Exception):
    """No resolver gave an address; the message names the name and the last reason."""


def read_resolvers(etc: Path = ETC_RESOLV_CONF, resolved: Path = RESOLVED_RESOLV_CONF) -> tuple[str, ...]:
    """The network's resolvers as the machine's files name them now (blocking: a thread)."""
    try:
        etc_text = etc.read_text(errors="replace")
    except OSError:
        etc_text = ""
    try:
        resolved_text = resolved.read_text(errors="replace")
    except OSError:
        resolved_text = None
    return choose_resolvers(etc_text, resolved_text)


def _socket(server: str, kind: int, mark: int | None) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(server).version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _udp(server: str, port: int, query: bytes, qid: int, name: str, qtype: int, mark: int | None) -> list[str] | None:
    """The addresses, or None when the reply was truncated (ask over TCP)."""
    loop = asyncio.get_running_loop()
    with _socket(server, socket.SOCK_DGRAM, mark) as sock:
        await loop.sock_connect(sock, (server, port))  # connected: replies from elsewhere never arrive
        await loop.sock_sendall(sock, query)
        for _ in range(16):  # bounded: a stray datagram is skipped, not trusted
            reply = await loop.sock_recv(sock, MAX_REPLY)
            try:
                if is_truncated(reply):
                    return None
                return parse_addresses(reply, qid, name, qtype)
            except DnsFormatError:
                continue
        raise MarkedDnsError(f"{name}: no valid reply from {server}")


async def _tcp(server: str, port: int, query: bytes, qid: int, name: str, qtype: int, mark: int | None) -> list[str]:
    loop = asyncio.get_running_loop()
    with _socket(server, socket.SOCK_STREAM, mark) as sock:
        await loop.sock_connect(sock, (server, port))
        await loop.sock_sendall(sock, struct.pack("!H", len(query)) + query)
        head = await _read_exactly(loop, sock, 2)
        return parse_addresses(await _read_exactly(loop, sock, struct.unpack("!H", head)[0]), qid, name, qtype)


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise MarkedDnsError("the resolver closed the connection mid-reply")
        buf += chunk
    return bytes(buf)


async def _ask(server: str, port: int, name: str, qtype: int, mark: int | None, timeout: float) -> list[str]:
    qid = secrets.randbelow(0x10000)
    query = build_query(name, qtype, qid)
    async with asyncio.timeout(timeout):
        found = await _udp(server, port, query, qid, name, qtype, mark)
        if found is None:
            found = await _tcp(server, port, query, qid, name, qtype, mark)
    return found


async def resolve_marked(name: str, resolvers: tuple[str, ...], *, mark: int | None, port: int = DNS_PORT,
                         timeout: float = TIMEOUT_S) -> list[str]:
    """``name``'s addresses from the first resolver that answers (IPv4 first), asked on
    sockets carrying ``mark``. Raises ``MarkedDnsError`` (one line) when none gives one."""
    if not resolvers:
        raise MarkedDnsError(f"{name}: no resolver to ask (resolv.conf names none but loopback stubs)")
    last = "no answer"
    for server in resolvers:
        no_record = False
        for qtype in (TYPE_A, TYPE_AAAA):
            try:
                return await _ask(server, port, name, qtype, mark, timeout)
            except StubAnswerError as exc:
                last, no_record = str(exc), True
                if "NXDOMAIN" in last:
                    break  # no AAAA either
            except TimeoutError:
                last = f"{server} did not answer within {timeout:g} s"
                break
            except (OSError, DnsFormatError, MarkedDnsError) as exc:
                last = f"{server}: {exc}"
                break
        if no_record:
            break  # an authoritative "no": another resolver would say the same
    raise MarkedDnsError(f"cannot look up {name} over the marked path: {last}")
