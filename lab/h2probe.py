"""What works through the lab's HTTP/2 proxy (nghttpx in front of Squid): a python-h2 probe.

Debian's curl 7.88 cannot speak HTTP/2 to a proxy, so this small blocking client does.
Run in the client namespace; prints one JSON object, one entry per check::

    ip netns exec atl-client python -m atlantic.lab.h2probe \\
        --proxy-url "$LAB_H2_PROXY_URL" --ca "$LAB_CA_FILE" --sha256-2mb "$LAB_SHA256_2MB"

Checks: ``get_http`` (``GET http://origin.test/2mb`` as an h2 proxy request),
``connect_80`` and ``connect_443`` (CONNECT streams; TLS to the origin inside the
stream), ``connect_multi`` (three CONNECT streams at once on one connection),
``auth_407_get`` and ``auth_407_connect`` (no credentials: the 407 passes through).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings

WINDOW = 1 << 24


class ProbeError(RuntimeError):
    """The proxy or origin did not behave as a check expects."""


@dataclass
class _Stream:
    status: int | None = None
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None


class H2ProxyConnection:
    """One TLS+h2 connection to the proxy; blocking, every wait bounded by a deadline."""

    def __init__(self, host: str, port: int, ca_file: str, timeout: float = 10.0) -> None:
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        if self.sock.selected_alpn_protocol() != "h2":
            raise ProbeError(f"proxy chose ALPN {self.sock.selected_alpn_protocol()!r}, not h2")
        self.timeout = timeout
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        # update_settings, not local_settings: only it sends the new value to the peer
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self.conn.increment_flow_control_window(WINDOW - 65535)
        self.streams: dict[int, _Stream] = {}
        self._flush()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def _flush(self) -> None:
        if out := self.conn.data_to_send():
            self.sock.sendall(out)

    def open(self, headers: list[tuple[str, str]], end_stream: bool) -> int:
        """Send a HEADERS frame on a new stream; return its id."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = _Stream()
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        self._flush()
        return sid

    def send(self, sid: int, data: bytes) -> None:
        """Send *data* on stream *sid*, waiting for flow-control window as needed."""
        deadline = time.monotonic() + self.timeout
        view = memoryview(data)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self._pump(deadline)
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self._flush()

    def _pump(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProbeError("timed out waiting for the proxy")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 16)
        except socket.timeout:
            raise ProbeError("timed out waiting for the proxy") from None
        if not chunk:
            raise ProbeError("proxy closed the connection")
        for ev in self.conn.receive_data(chunk):
            st = self.streams.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and st:
                st.status = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                if st:
                    st.data += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and st:
                st.ended = True
            elif isinstance(ev, h2.events.StreamReset) and st:
                st.reset, st.ended = ev.error_code, True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise ProbeError(f"proxy sent GOAWAY (error {ev.error_code})")
        self._flush()

    def wait(self, pred, what: str) -> None:
        """Pump frames until ``pred()`` holds; ProbeError naming *what* at the deadline."""
        deadline = time.monotonic() + self.timeout
        while not pred():
            try:
                self._pump(deadline)
            except ProbeError as e:
                raise ProbeError(f"{what}: {e}") from None

    def read(self, sid: int) -> bytes:
        """Wait for and take whatever data stream *sid* has received (b'' once it ended)."""
        st = self.streams[sid]
        self.wait(lambda: st.data or st.ended, f"stream {sid} data")
        out = bytes(st.data)
        st.data.clear()
        return out


def read_http1_response(more) -> tuple[int, bytes]:
    """Parse one HTTP/1.1 response (Content-Length bodies) from the byte source ``more()``."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = more()
        if not chunk:
            raise ProbeError("tunnel closed before the response headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next((int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:])
                   if k.strip().lower() == b"content-length"), 0)
    body = bytearray(body)
    while len(body) < length:
        chunk = more()
        if not chunk:
            raise ProbeError(f"tunnel closed after {len(body)} of {length} body bytes")
        body += chunk
    return status, bytes(body[:length])


class _TunnelTLS:
    """TLS to the origin inside a CONNECT stream (ssl.MemoryBIO)."""

    def __init__(self, h2c: H2ProxyConnection, sid: int, host: str, ca_file: str) -> None:
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.set_alpn_protocols(["http/1.1"])
        self.h2c, self.sid = h2c, sid
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname=host)
        self._io(self.tls.do_handshake)

    def _io(self, op, *args):
        for _ in range(10_000):
            try:
                result = op(*args)
                self._send_pending()
                return result
            except ssl.SSLWantReadError:
                self._send_pending()
                data = self.h2c.read(self.sid)
                if not data:
                    self.inc.write_eof()
                self.inc.write(data)
        raise ProbeError("TLS inside the tunnel made no progress")

    def _send_pending(self) -> None:
        if pending := self.out.read():
            self.h2c.send(self.sid, pending)

    def write(self, data: bytes) -> None:
        """Encrypt and send *data*."""
        self._io(self.tls.write, data)

    def recv(self) -> bytes:
        """Next decrypted bytes (b'' at the end)."""
        try:
            return self._io(self.tls.read, 1 << 16)
        except ssl.SSLZeroReturnError:
            return b""


def _get_request(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def run_checks(proxy_url: str, ca_file: str, sha256_2mb: str, origin: str = "origin.test",
               timeout: float = 15.0) -> dict[str, dict]:
    """Run every check against the h2 proxy at *proxy_url*; return name -> {ok, detail}."""
    u = urlsplit(proxy_url)
    cred = base64.b64encode(f"{unquote(u.username or '')}:{unquote(u.password or '')}".encode())
    auth = [("proxy-authorization", "Basic " + cred.decode())]

    def connection() -> H2ProxyConnection:
        return H2ProxyConnection(u.hostname, u.port or 443, ca_file, timeout)

    def connect(c: H2ProxyConnection, port: int, with_auth: bool = True) -> int:
        sid = c.open([(":method", "CONNECT"), (":authority", f"{origin}:{port}")]
                     + (auth if with_auth else []), end_stream=False)
        c.wait(lambda: c.streams[sid].status is not None or c.streams[sid].ended, "CONNECT reply")
        return sid

    def get_http(with_auth: bool = True) -> tuple[int, bytes]:
        c = connection()
        try:
            sid = c.open([(":method", "GET"), (":scheme", "http"), (":authority", origin),
                          (":path", "/2mb")] + (auth if with_auth else []), end_stream=True)
            c.wait(lambda: c.streams[sid].ended, "GET response")
            return c.streams[sid].status or 0, bytes(c.streams[sid].data)
        finally:
            c.close()

    def check_get_http():
        status, body = get_http()
        return status == 200 and hashlib.sha256(body).hexdigest() == sha256_2mb, \
            f"status {status}, {len(body)} bytes"

    def check_connect_80():
        c = connection()
        try:
            sid = connect(c, 80)
            c.send(sid, _get_request(origin, "/2mb"))
            status, body = read_http1_response(lambda: c.read(sid))
            return (c.streams[sid].status == 200 and status == 200
                    and hashlib.sha256(body).hexdigest() == sha256_2mb), \
                f"CONNECT {c.streams[sid].status}, inner {status}, {len(body)} bytes"
        finally:
            c.close()

    def check_connect_443():
        c = connection()
        try:
            sid = connect(c, 443)
            tls = _TunnelTLS(c, sid, origin, ca_file)
            tls.write(_get_request(origin, "/2mb"))
            status, body = read_http1_response(tls.recv)
            return (status == 200 and hashlib.sha256(body).hexdigest() == sha256_2mb), \
                f"CONNECT {c.streams[sid].status}, TLS {tls.tls.version()}, inner {status}, " \
                f"{len(body)} bytes"
        finally:
            c.close()

    def check_connect_multi():
        c = connection()
        try:
            sids = [connect(c, 80) for _ in range(3)]
            for sid in sids:
                c.send(sid, _get_request(origin, "/small"))
            results = [read_http1_response(lambda s=sid: c.read(s))[0] for sid in sids]
            return results == [200, 200, 200], f"streams {sids} on one connection -> {results}"
        finally:
            c.close()

    def check_407_get():
        status, _ = get_http(with_auth=False)
        return status == 407, f"status {status}"

    def check_407_connect():
        c = connection()
        try:
            sid = connect(c, 443, with_auth=False)
            return c.streams[sid].status == 407, f"status {c.streams[sid].status}"
        finally:
            c.close()

    checks = {"get_http": check_get_http, "connect_80": check_connect_80,
              "connect_443": check_connect_443, "connect_multi": check_connect_multi,
              "auth_407_get": check_407_get, "auth_407_connect": check_407_connect}
    out = {}
    for name, fn in checks.items():
        t0 = time.monotonic()
        try:
            ok, detail = fn()
        except (ProbeError, OSError, ValueError, StopIteration) as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        out[name] = {"ok": bool(ok), "detail": detail,
                     "seconds": round(time.monotonic() - t0, 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit 0 only if every check passed."""
    p = argparse.ArgumentParser(prog="python -m atlantic.lab.h2probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proxy-url", required=True, help="https://user:pass@proxy.test:3129")
    p.add_argument("--ca", required=True, help="lab CA file (LAB_CA_FILE)")
    p.add_argument("--sha256-2mb", required=True, help="expected sha256 of /2mb")
    a = p.parse_args(argv)
    results = run_checks(a.proxy_url, a.ca, a.sha256_2mb)
    print(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
