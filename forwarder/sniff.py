"""What is this flow? The first bytes an application sends decide how it travels.

Pure core: :func:`classify` looks at the bytes read so far and returns a
:class:`Sniffed` verdict, or None while more bytes could change it. An HTTP/1.x
request line goes to the request relay; a TLS ClientHello yields its SNI so the
tunnel can ``CONNECT sni:port``; anything else (and silence: server-first protocols
such as SMTP or SSH) is tunnelled to the original destination. :func:`sniff` is the
thin async adapter that reads with a deadline. The bytes read are never lost: they
travel on in ``Sniffed.data``.

How long silence lasts before a flow is called server-first is a policy
(:class:`SniffPolicy`, pure): on ports whose protocols are client-first by definition
(HTTP and implicit-TLS ports: 80, 443, 8080, ...) the application always speaks first,
so silence there only means it is slow (a burst of new connections, a busy machine, or
this very loop, which also carries the application's packets through the NAT); they
wait :attr:`SniffPolicy.client_first_s` (30 s) rather than 0.3 s, so an HTTP request
is never misread as a server-first protocol and sent down a tunnel of its own. Other
ports keep the short wait, so an SSH or SMTP greeting is not held back.

The adapter never loses a byte and never misreads bytes that already arrived:

- it waits for readability and then reads without blocking, rather than cancelling a
  pending ``loop.sock_recv`` at the deadline (a read that completed in the same loop
  iteration as the deadline would be dropped with the cancellation: the request was
  gone, the tunnel carried nothing, and the origin closed it after its own header
  timeout, ~60 s later, with no response);
- at the deadline it reads once more without blocking, so bytes that are already in
  the kernel decide even when the loop ran late.
"""

from __future__ import annotations

import asyncio
import enum
import re
import socket
from dataclasses import dataclass

__all__ = [
    "CLIENT_FIRST_PORTS",
    "CLIENT_FIRST_TIMEOUT_S",
    "DEFAULT_POLICY",
    "MAX_SNIFF_BYTES",
    "SNIFF_TIMEOUT_S",
    "FlowKind",
    "SniffPolicy",
    "Sniffed",
    "classify",
    "final_verdict",
    "parse_client_hello_sni",
    "sniff",
]

# Silence on a port of unknown protocol: after this long, a server-first protocol
# (SSH, SMTP, FTP...) is waiting for its greeting, so the tunnel opens.
SNIFF_TIMEOUT_S = 0.3
# Silence on a client-first port only means the application (or this loop) is slow.
# Bounded like a server's wait for a request head (nginx's client_header_timeout is
# 60 s): a connection still silent after this is tunnelled as it is.
CLIENT_FIRST_TIMEOUT_S = 30.0
# Ports whose protocols are client-first by definition: HTTP (80 and its usual
# alternates) and implicit TLS, where the ClientHello comes first (HTTPS, SMTPS 465,
# LDAPS 636, DNS over TLS 853, IMAPS 993, POP3S 995, HTTPS alternate 8443).
CLIENT_FIRST_PORTS = frozenset({80, 443, 465, 636, 853, 993, 995, 8000, 8008, 8080, 8443, 8888})
# A ClientHello is one handshake message of at most 2^24 bytes in theory; real ones are
# under 2 KiB (4-8 KiB with post-quantum key shares). Past this bound we stop waiting.
MAX_SNIFF_BYTES = 32 * 1024
MAX_REQUEST_LINE = 8 * 1024  # longer lines are still relayed: they go through the tunnel

_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e\x80-\xff]+ HTTP/1\.[01]\r?\n")
_VERSION = b" HTTP/1."
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$")


class FlowKind(enum.Enum):
    """How a flow travels."""

    HTTP = "http"  # HTTP/1.x request line: the request relay
    TLS = "tls"  # TLS ClientHello: tunnel to the SNI (or the destination without one)
    OTHER = "other"  # anything else, or nothing at all: tunnel to the destination


@dataclass(frozen=True, slots=True)
class SniffPolicy:
    """How long a flow's first bytes are waited for before it counts as server-first."""

    client_first_ports: frozenset[int] = CLIENT_FIRST_PORTS
    client_first_s: float = CLIENT_FIRST_TIMEOUT_S
    other_s: float = SNIFF_TIMEOUT_S

    def is_client_first(self, port: int | None) -> bool:
        """True when the protocol on ``port`` always speaks first (None: port unknown)."""
        return port is not None and port in self.client_first_ports

    def timeout_for(self, port: int | None) -> float:
        """Seconds of waiting for the first bytes of a flow to ``port`` before the verdict."""
        return self.client_first_s if self.is_client_first(port) else self.other_s


DEFAULT_POLICY = SniffPolicy()


@dataclass(frozen=True, slots=True)
class Sniffed:
    """The verdict on a flow and the bytes already read from it (to be replayed)."""

    kind: FlowKind
    data: bytes
    sni: str | None = None  # TLS only: the server_name, lowercased, no trailing dot


def classify(data: bytes) -> Sniffed | None:
    """The verdict on ``data`` (everything read so far), or None if more bytes may change it."""
    if not data:
        return None
    if data[0] == 0x16:
        return _classify_tls(data)
    if data[0] in _TOKEN_CHARS:
        return _classify_http(data)
    return Sniffed(FlowKind.OTHER, data)


def final_verdict(data: bytes) -> Sniffed:
    """The verdict when no more bytes will come in time (timeout, EOF, size bound)."""
    verdict = classify(data)
    if verdict is not None:
        return verdict
    return Sniffed(FlowKind.OTHER, data)


def _classify_http(data: bytes) -> Sniffed | None:
    end = data.find(b"\n")
    if end < 0:
        if len(data) > MAX_REQUEST_LINE or not _could_be_request_line(data):
            return Sniffed(FlowKind.OTHER, data)
        return None
    if _REQUEST_LINE.fullmatch(data, 0, end + 1):
        return Sniffed(FlowKind.HTTP, data)
    return Sniffed(FlowKind.OTHER, data)


def _could_be_request_line(data: bytes) -> bool:
    """True if ``data`` (no newline yet) is a prefix of ``token SP target SP HTTP/1.x``."""
    sp = data.find(b" ")
    if sp < 0:
        return all(b in _TOKEN_CHARS for b in data)
    if sp == 0 or not all(b in _TOKEN_CHARS for b in data[:sp]):
        return False
    rest = data[sp + 1 :]
    sp2 = rest.find(b" ")
    if sp2 < 0:
        return all(0x21 <= b for b in rest) and b"\x7f" not in rest
    if sp2 == 0:
        return False
    tail = rest[sp2:]  # " HTTP/1.x\r" prefix
    if len(tail) <= len(_VERSION):
        return _VERSION.startswith(tail)
    if not tail.startswith(_VERSION) or tail[len(_VERSION)] not in b"01":
        return False
    return tail[len(_VERSION) + 1 :] in (b"", b"\r")


def _classify_tls(data: bytes) -> Sniffed | None:
    """Reassemble the first handshake message across TLS records; parse the ClientHello."""
    handshake = bytearray()
    pos = 0
    while True:
        if len(handshake) >= 4:
            if handshake[0] != 0x01:  # not a ClientHello
                return Sniffed(FlowKind.OTHER, data)
            need = 4 + int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= need:
                try:
                    sni = parse_client_hello_sni(bytes(handshake[4:need]))
                except ValueError:
                    return Sniffed(FlowKind.OTHER, data)
                return Sniffed(FlowKind.TLS, data, sni)
            if need > MAX_SNIFF_BYTES:
                return Sniffed(FlowKind.OTHER, data)
        header = data[pos : pos + 5]
        if len(header) >= 1 and header[0] != 0x16:
            return Sniffed(FlowKind.OTHER, data)
        if len(header) >= 2 and header[1] != 0x03:
            return Sniffed(FlowKind.OTHER, data)
        if len(header) >= 3 and header[2] > 0x04:
            return Sniffed(FlowKind.OTHER, data)
        if len(header) < 5:
            return None if len(data) < MAX_SNIFF_BYTES else Sniffed(FlowKind.OTHER, data)
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > 16384 + 2048:
            return Sniffed(FlowKind.OTHER, data)
        body = data[pos + 5 : pos + 5 + length]
        handshake += body
        if len(body) < length:
            if len(handshake) >= 4 and (
                handshake[0] != 0x01 or 4 + int.from_bytes(handshake[1:4], "big") > MAX_SNIFF_BYTES
            ):
                return Sniffed(FlowKind.OTHER, data)
            return None if len(data) < MAX_SNIFF_BYTES else Sniffed(FlowKind.OTHER, data)
        pos += 5 + length


def parse_client_hello_sni(body: bytes) -> str | None:
    """The host_name of the server_name extension in a ClientHello body (after the 4-byte
    handshake header); None if absent or not a valid DNS name. ValueError if malformed."""
    p = 2 + 32  # legacy_version, random
    p = _skip(body, p, 1)  # session id
    p = _skip(body, p, 2)  # cipher suites
    p = _skip(body, p, 1)  # compression methods
    if p == len(body):
        return None  # no extensions at all (old clients)
    end = p + 2 + _uint(body, p, 2)
    if end > len(body):
        raise ValueError("extensions overrun the ClientHello")
    p += 2
    while p < end:
        ext_type = _uint(body, p, 2)
        ext_len = _uint(body, p + 2, 2)
        p += 4
        if p + ext_len > end:
            raise ValueError("extension overruns the extension block")
        if ext_type == 0:
            return _server_name(body[p : p + ext_len])
        p += ext_len
    return None


def _server_name(ext: bytes) -> str | None:
    list_end = 2 + _uint(ext, 0, 2)
    if list_end > len(ext):
        raise ValueError("server_name list overruns its extension")
    p = 2
    while p < list_end:
        name_type = ext[p]
        name_len = _uint(ext, p + 1, 2)
        name = ext[p + 3 : p + 3 + name_len]
        if len(name) != name_len:
            raise ValueError("server_name entry overruns its list")
        if name_type == 0:
            return _valid_hostname(name)
        p += 3 + name_len
    return None


def _valid_hostname(raw: bytes) -> str | None:
    try:
        name = raw.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    return name if _HOSTNAME.match(name) else None


def _uint(buf: bytes, p: int, n: int) -> int:
    if p + n > len(buf):
        raise ValueError("ClientHello truncated")
    return int.from_bytes(buf[p : p + n], "big")


def _skip(buf: bytes, p: int, n: int) -> int:
    """Skip a vector with an ``n``-byte length prefix at ``p``."""
    end = p + n + _uint(buf, p, n)
    if end > len(buf):
        raise ValueError("ClientHello truncated")
    return end


async def sniff(sock: socket.socket, timeout: float | None = None, *, port: int | None = None,
                policy: SniffPolicy = DEFAULT_POLICY) -> Sniffed:
    """Read the application's first bytes from ``sock`` until they decide.

    ``port`` is the flow's original destination port: ``policy`` says how long to wait
    for it (``timeout`` overrides). Waits at most that long in total; silence (a
    server-first protocol) or EOF yields ``OTHER`` with whatever was read. Every byte
    read is in the verdict's data, also when the loop ran late or the task is cancelled
    (unread bytes stay in the kernel). Socket errors propagate (the flow is dead).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (policy.timeout_for(port) if timeout is None else timeout)
    data = b""
    while len(data) < MAX_SNIFF_BYTES:
        chunk = _recv_nowait(sock, MAX_SNIFF_BYTES - len(data))
        if chunk is None:
            if await _wait_readable(loop, sock, deadline):
                continue
            # the deadline: one last read, for bytes the loop was too busy to see
            chunk = _recv_nowait(sock, MAX_SNIFF_BYTES - len(data))
            if chunk is None:
                break
        if not chunk:
            break  # EOF
        data = data + chunk if data else chunk
        verdict = classify(data)
        if verdict is not None:
            return verdict
    return final_verdict(data)


def _recv_nowait(sock: socket.socket, size: int) -> bytes | None:
    """What the kernel holds for ``sock`` now (b"" at EOF), or None if nothing yet."""
    try:
        return sock.recv(size, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None


async def _wait_readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float) -> bool:
    """Wait until ``sock`` is readable (True) or ``deadline`` in loop time passes (False).

    Only readiness is awaited, no bytes are taken: a cancellation or a deadline that
    fires in the same loop iteration as the data can never drop a read.
    """
    delay = deadline - loop.time()
    if delay <= 0:
        return False
    ready = loop.create_future()

    def settle(value: bool) -> None:
        if not ready.done():
            ready.set_result(value)

    fd = sock.fileno()
    loop.add_reader(fd, settle, True)
    timer = loop.call_later(delay, settle, False)
    try:
        return await ready
    finally:
        timer.cancel()
        loop.remove_reader(fd)
