"""lab/measure.py's small-request probe against a real HTTP server on loopback: each mode
makes the requests it says (new connections, or one keep-alive connection), with the
proxy's credentials only when it talks to a proxy."""

from __future__ import annotations

import http.server
import threading
from typing import ClassVar

import pytest

from atlantic.lab.measure import small_requests


class Small(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close
    seen: ClassVar[list[tuple[str, str | None, int]]] = []

    def do_GET(self):  # http.server's name for it
        Small.seen.append((self.path, self.headers.get("Proxy-Authorization"), self.client_address[1]))
        body = b"x" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Small.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Small)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.mark.parametrize(("mode", "path", "auth", "connections"), [
    ("plain", "/small", None, 5),
    ("proxy", "http://origin.test/small", "Basic dTpw", 5),
    ("ideal", "http://origin.test/small", "Basic dTpw", 1),
])
def test_each_mode_sends_what_it_says(server, mode, path, auth, connections):
    out = small_requests(mode, server, "origin.test", 5, auth="u:p")
    assert len(out["times"]) == 5 and out["wall"] >= sum(out["times"])
    assert {(p, a) for p, a, _ in Small.seen} == {(path, auth)} and len(Small.seen) == 5
    assert len({port for *_, port in Small.seen}) == connections
