"""HTTP/2 from the application (terminated TLS), sans-I/O: h2 frames in, relay events out.

Pure core of :mod:`.h2serve`. :class:`H2ServerCore` wraps an h2 server connection:
``receive_data(bytes)`` returns the events the relay acts on (a request to send to the
pool, a piece of request body, the app cancelling a stream, a window opening, GOAWAY),
the ``send_*`` methods queue frames, ``data_to_send()`` hands them out; no I/O, no clock.

What the application sends is checked here before the pool sees it: h2 rejects
connection-specific headers and bad pseudo-headers; :func:`request_from_headers` turns
the rest into a :class:`~atlantic.pool.api.RequestHead`, or into the reply the
application gets instead: 421 when ``:authority`` names another origin than the one
this connection was terminated for (the certificate covered one name only), 501 for
CONNECT (tunnels do not ride a terminated connection), 400 for what cannot be relayed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream

from atlantic.forwarder.http1_heads import (
    BadRequest, ErrorReply, bad_request_reply, end_to_end, response_headers, split_host,
)
from atlantic.pool.api import Endpoint, RequestHead, ResponseHead

__all__ = [
    "AppProtocolError",
    "BodyEnded",
    "BodyReceived",
    "H2ServerCore",
    "PeerGoaway",
    "Rejected",
    "RequestStarted",
    "StreamCancelled",
    "WindowOpened",
    "error_fields",
    "has_body",
    "request_from_headers",
    "response_fields",
]

MAX_STREAMS = 100
STREAM_WINDOW = 1 << 20  # what one stream's upload may buffer before the pool takes it
CONNECTION_WINDOW = 1 << 22  # all streams' uploads together
MAX_FRAME = 1 << 18  # larger DATA frames from the application: fewer events per upload
_S = h2.settings.SettingCodes
_NO_BODY_STATUS = (204, 304)
_CAN_SEND = frozenset({h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE})


class AppProtocolError(Exception):
    """The application broke HTTP/2; a GOAWAY is queued and the connection must close."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request answered by Atlantic itself, never sent to the pool; ``kind`` for the log."""

    reply: ErrorReply
    kind: str


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A new stream: ``head`` for the pool, or ``rejected``; ``end_stream``: no body follows;
    ``expects_continue``: the application waits for a 100 before it sends the body."""

    stream_id: int
    method: str
    head: RequestHead | None
    rejected: Rejected | None
    end_stream: bool
    expects_continue: bool = False


@dataclass(frozen=True, slots=True)
class BodyReceived:
    """A piece of request body; ``flow_length`` to acknowledge once the pool took it."""

    stream_id: int
    data: bytes
    flow_length: int


@dataclass(frozen=True, slots=True)
class BodyEnded:
    """The application finished the request body (END_STREAM)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamCancelled:
    """The application reset the stream (RST_STREAM)."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """More may be sent: on ``stream_id``, or on every stream when it is 0."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PeerGoaway:
    """The application sends no new streams (GOAWAY); the open ones may still finish."""

    error_code: int


Event = RequestStarted | BodyReceived | BodyEnded | StreamCancelled | WindowOpened | PeerGoaway


def _reply(status: int, reason: str, text: str) -> ErrorReply:
    return ErrorReply(status, reason, f"Atlantic: {text}\n".encode())


def _misdirected(text: str) -> Rejected:
    return Rejected(_reply(421, "Misdirected Request", text), "h2: misdirected request (421)")


def request_from_headers(
    headers: Iterable[tuple[bytes, bytes]],
    dst: tuple[str, int],
    *,
    end_stream: bool = False,
) -> tuple[str, RequestHead | Rejected]:
    """The method and the pool request for one HEADERS block (h2 validated its form), or the
    reply the application gets instead (400 / 421 / 501).

    The origin is ``dst`` (the name the TLS was terminated for): ``:authority`` (else the
    Host header) must name it, and becomes the Host header the upstream sees.
    """
    pseudo: dict[str, str] = {}
    fields: list[tuple[str, str]] = []
    cookies: list[str] = []
    host_header = None
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name.startswith(":"):
            pseudo[name] = value
        elif name == "host":
            host_header = value
        elif name == "cookie":
            cookies.append(value)  # RFC 9113 §8.2.3: crumbs join into one field for HTTP/1.1
        else:
            fields.append((name, value))
    method = pseudo.get(":method", "")
    if method == "CONNECT" or ":protocol" in pseudo:
        what = "extended CONNECT" if ":protocol" in pseudo else "CONNECT"
        return method, Rejected(
            _reply(501, "Not Implemented", f"{what} is not relayed on a TLS connection Atlantic "
                   "terminated: open a tunnel without the terminated name instead"),
            "h2: CONNECT refused (501)")
    if pseudo.get(":scheme", "https") != "https":
        return method, Rejected(bad_request_reply(f":scheme {pseudo[':scheme'][:20]!r} on a TLS connection"),
                                "h2: bad request (400)")
    authority = pseudo.get(":authority") or host_header
    dst_host, dst_port = dst
    dst_host = dst_host.lower().rstrip(".")
    endpoint = Endpoint("https", dst_host, dst_port)
    if authority:
        try:
            host, port = split_host(authority)
        except BadRequest as exc:
            return method, Rejected(bad_request_reply(str(exc)), "h2: bad request (400)")
        if host != dst_host or (port is not None and port != dst_port):
            shown = ascii(authority[:80])
            return method, _misdirected(
                f"this connection serves {endpoint.authority} only, not {shown}: "
                "open a new connection for that name")
        if host_header is not None and pseudo.get(":authority"):
            try:
                other = split_host(host_header)
            except BadRequest as exc:
                return method, Rejected(bad_request_reply(str(exc)), "h2: bad request (400)")
            if other[0] != host or (other[1] or dst_port) != (port or dst_port):
                return method, Rejected(bad_request_reply("Host and :authority name different origins"),
                                        "h2: bad request (400)")
    out = end_to_end(fields, drop_expect=True)  # 100-continue is answered by the relay
    if cookies:
        out = (*out, ("cookie", "; ".join(cookies)))
    if end_stream:
        length: int | None = 0
    else:
        length = None
        for name, value in out:
            if name == "content-length":
                if not value.isascii() or not value.isdigit():
                    return method, Rejected(bad_request_reply(f"bad content-length {value[:20]!r}"),
                                            "h2: bad request (400)")
                length = int(value)
    head = RequestHead(method, endpoint, pseudo.get(":path", "/"), (("Host", endpoint.authority), *out), length)
    return method, head


def response_fields(head: ResponseHead, method: str) -> list[tuple[bytes, bytes]]:
    """The HEADERS block for a pool response: ``:status``, then end-to-end fields, lowercase.

    Raises ``ValueError`` for a status HTTP/2 cannot carry as a final response."""
    if not 200 <= head.status <= 999 or head.status == 101:
        raise ValueError(f"status {head.status} cannot be relayed on HTTP/2")
    out = [(b":status", str(head.status).encode())]
    for name, value in response_headers(head, method):
        lname = name.lower()
        if lname == "host":
            continue
        out.append((lname.encode("latin-1"), value.encode("latin-1")))
    return out


def error_fields(reply: ErrorReply) -> list[tuple[bytes, bytes]]:
    """The HEADERS block for one of Atlantic's own replies (no connection-specific fields)."""
    out = [(b":status", str(reply.status).encode())]
    for name, value in reply.headers():
        if name.lower() != "connection":
            out.append((name.lower().encode(), value.encode()))
    return out


def has_body(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` carries a body on the wire."""
    return method != "HEAD" and status not in _NO_BODY_STATUS


class H2ServerCore:
    """The application's HTTP/2 connection as seen by the relay (h2, server side)."""

    def __init__(self, dst: tuple[str, int], *, max_streams: int = MAX_STREAMS) -> None:
        self.dst = dst
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True,
            normalize_inbound_headers=True, validate_outbound_headers=True))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            _S.MAX_CONCURRENT_STREAMS: max_streams,
            _S.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            _S.MAX_FRAME_SIZE: MAX_FRAME,
            _S.MAX_HEADER_LIST_SIZE: 65536,
        })
        self.h2.max_inbound_frame_size = MAX_FRAME  # h2 reads it from local_settings only at init
        self.goaway_received = False
        self.closed = False  # our GOAWAY is queued: nothing more is sent but it

    def start(self) -> None:
        """Queue our SETTINGS and the larger connection window."""
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the application. Raises :class:`AppProtocolError` (GOAWAY queued)."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            if self.h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                # a bad preface fails before h2 queues its GOAWAY: queue one ourselves
                self.h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self.closed = True
            raise AppProtocolError(f"the application broke HTTP/2: {exc}") from None
        out: list[Event] = []
        for event in events:
            self._translate(event, out)
        return out

    def _translate(self, event: h2.events.Event, out: list[Event]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            end = event.stream_ended is not None
            method, result = request_from_headers(event.headers, self.dst, end_stream=end)
            if isinstance(result, Rejected):
                out.append(RequestStarted(event.stream_id, method, None, result, end))
            else:
                expects = not end and (b"expect", b"100-continue") in (
                    (n, v.lower()) for n, v in event.headers)
                out.append(RequestStarted(event.stream_id, method, result, None, end, expects))
        elif isinstance(event, h2.events.DataReceived):
            out.append(BodyReceived(event.stream_id, event.data, event.flow_controlled_length))
        elif isinstance(event, h2.events.StreamEnded):
            out.append(BodyEnded(event.stream_id))
        elif isinstance(event, h2.events.StreamReset):
            out.append(StreamCancelled(event.stream_id, int(event.error_code)))
        elif isinstance(event, h2.events.WindowUpdated):
            out.append(WindowOpened(event.stream_id))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            out.append(WindowOpened(0))  # INITIAL_WINDOW_SIZE or MAX_FRAME_SIZE may have changed
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_received = True
            # h2 closes its whole state machine on GOAWAY (python-hyper/h2#1181), yet the
            # streams already open must still be answered (RFC 9113 §6.8): reopen it.
            self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
            out.append(PeerGoaway(int(event.error_code or 0)))
        # TrailersReceived: the pool carries no request trailers (END_STREAM follows).
        # PingReceived: h2 queued the ACK. Priority and unknown frames: nothing to do.

    def window(self, stream_id: int) -> int:
        """Body bytes ``stream_id`` may send now (stream and connection windows); 0 if closed."""
        try:
            return max(0, self.h2.local_flow_control_window(stream_id))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return 0

    def _state(self, stream_id: int) -> h2.stream.StreamState:
        stream = self.h2.streams.get(stream_id)
        return h2.stream.StreamState.CLOSED if stream is None else stream.state_machine.state

    def can_send(self, stream_id: int) -> bool:
        """True while ``stream_id`` can still carry (more of) a response."""
        return self._state(stream_id) in _CAN_SEND

    def is_open(self, stream_id: int) -> bool:
        """True until ``stream_id`` is closed both ways (or reset)."""
        return self._state(stream_id) is not h2.stream.StreamState.CLOSED

    def has_sent_end(self, stream_id: int) -> bool:
        """True once our side of ``stream_id`` is finished (END_STREAM or reset)."""
        return self._state(stream_id) not in _CAN_SEND

    def send_continue(self, stream_id: int) -> None:
        """An interim 100 (Continue) on ``stream_id``; nothing if the stream is gone."""
        try:
            self.h2.send_headers(stream_id, [(b":status", b"100")])
        except h2.exceptions.ProtocolError:
            pass

    def send_head(self, stream_id: int, fields: list[tuple[bytes, bytes]], *, end_stream: bool) -> None:
        """HEADERS on ``stream_id``. Raises ``ValueError`` if h2 refuses the fields."""
        try:
            self.h2.send_headers(stream_id, fields, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            raise ValueError(f"response head cannot be relayed on HTTP/2: {exc}") from None

    def send_data(self, stream_id: int, data: memoryview) -> int:
        """DATA frames from the start of ``data`` while the windows allow; bytes sent."""
        h2c = self.h2
        sent = 0
        frame = h2c.max_outbound_frame_size
        while sent < len(data):
            n = min(self.window(stream_id), frame, len(data) - sent)
            if n <= 0:
                break
            h2c.send_data(stream_id, data[sent:sent + n])
            sent += n
        return sent

    def end_stream(self, stream_id: int) -> None:
        """END_STREAM (an empty DATA frame); nothing if the stream is gone."""
        try:
            self.h2.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        """RST_STREAM on ``stream_id``; nothing if it is already closed."""
        try:
            self.h2.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """Give ``flow_length`` bytes of window back (WINDOW_UPDATE once enough is due)."""
        if flow_length <= 0 or self.closed:
            return
        try:
            self.h2.acknowledge_received_data(flow_length, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def goaway(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Queue our GOAWAY (once): the application opens no new streams here."""
        if self.closed:
            return
        self.closed = True
        try:
            self.h2.close_connection(code)
        except h2.exceptions.ProtocolError:
            pass

    def data_to_send(self) -> bytes:
        """Frames queued since the last call."""
        return self.h2.data_to_send()
