"""The pooled forwarder end to end: applications that reconnect for every request ride warm,
shared upstream connections (real Squid, nghttpx, nginx and curl, through `atlantic up`)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

from atlantic_lab import atlantic, ns_run, squid_lines, status

from atlantic.lab.workloads import DEBIAN_YTDLP

SQUID_CLIENT = re.compile(r"^\S+\s+\d+\s+(\S+):(\d+)\s")


def curl(lab, url: str) -> bytes:
    """A new curl process (so a new connection), no proxy option; returns the body."""
    res = ns_run(lab.client_ns, ["curl", "-sS", "--fail", "--noproxy", "*", "--max-time", "60",
                                 "--cacert", lab.ca_file, url], timeout=90)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize(("tcp", "plain_http"), [("redirect", "tunnel"), ("tun", "tunnel"), ("redirect", "forward")])
def test_30_new_connections_ride_one_upstream_connection(lab, up, tcp, plain_http):
    """30 downloads, each by a new curl process: >= 29 requests reuse an upstream connection, Squid sees 1-2:
    tunnels to the origin (the default: Squid logs 1-2 CONNECT origin.test:80 carrying all 60 MB when they
    close) or proxy requests (30 GET lines from 1-2 client connections); with the kernel's redirect (the
    default) and with every packet through the TUN's NAT alike."""
    start = len(Path(lab.squid_access_log).read_text().splitlines())
    st = up(lab.proxy_url, sections=f'[capture]\ntcp = "{tcp}"\n[pool]\nplain_http = "{plain_http}"\n')
    assert st["tcp_capture"] == tcp
    for _ in range(30):
        assert hashlib.sha256(curl(lab, f"http://{lab.origin_host}/2mb")).hexdigest() == lab.sha256_2mb
    st = status(lab)
    pool = st["pool"]
    assert pool["requests"] == 30 and pool["reused"] >= 29, pool
    other = "tun" if tcp == "redirect" else "redirect"
    assert st["flows_captured"][tcp] >= 30 and st["flows_captured"][other] == 0, st["flows_captured"]
    if tcp == "tun":
        assert st["stack"]["bytes_down"] >= 30 * 2 * 1024 * 1024, st["stack"]
    if plain_http == "forward":
        assert pool["http_tunnels_opened"] == 0, pool
        lines = squid_lines(lab, start, f"GET http://{lab.origin_host}/2mb", 30)
        assert len(lines) == 30
    else:
        assert 1 <= pool["http_tunnels_opened"] <= 2 and pool["http_tunnels_refused"] == 0, pool
        assert atlantic(lab, "down").returncode == 0  # the tunnels close: Squid logs them
        lines = squid_lines(lab, start, f"CONNECT {lab.origin_host}:80", 1)
        assert not squid_lines(lab, start, f"GET http://{lab.origin_host}/2mb", 0)  # (the health probes are)
        assert sum(int(ln.split()[4]) for ln in lines) >= 30 * 2 * 1024 * 1024, lines
    client_connections = {SQUID_CLIENT.match(ln).groups() for ln in lines}
    assert 1 <= len(client_connections) <= 2, client_connections


@pytest.mark.parametrize("tcp", ["redirect", "tun"])
def test_https_flows_tunnel_to_the_sni_name_over_warm_connections(lab, up, tcp):
    """Sequential HTTPS downloads are CONNECTed by name, mostly on pre-opened warm proxy connections
    (both ways TCP reaches the daemon)."""
    start = len(Path(lab.squid_access_log).read_text().splitlines())
    up(lab.proxy_url, sections=f'[capture]\ntcp = "{tcp}"\n')
    time.sleep(0.5)  # let the background task open the warm connections
    for _ in range(5):
        assert hashlib.sha256(curl(lab, f"https://{lab.origin_host}/2mb")).hexdigest() == lab.sha256_2mb
        time.sleep(0.5)  # the pool replenishes in the background
    pool = status(lab)["pool"]
    assert pool["tunnels_warm"] + pool["tunnels_cold"] == 5 and pool["tunnels_warm"] >= 3, pool
    assert len(squid_lines(lab, start, f"CONNECT {lab.origin_host}:443", 5)) == 5


def test_h2_front_multiplexes_requests_and_tunnels_on_one_connection(lab, up):
    """Through nghttpx (HTTP/2), concurrent HTTP requests and HTTPS tunnels share one upstream connection."""
    up(lab.h2_proxy_url, ca_file=lab.ca_file)
    urls = [f"http://{lab.origin_host}/2mb", f"https://{lab.origin_host}/2mb"] * 3
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as ex:
        bodies = list(ex.map(lambda u: curl(lab, u), urls))
    assert all(hashlib.sha256(b).hexdigest() == lab.sha256_2mb for b in bodies)
    # Sequential tunnels end: their streams (and the proxy's backend tunnels) must not pile up.
    for url in urls[:2] + urls[1:2] * 10:
        assert hashlib.sha256(curl(lab, url)).hexdigest() == lab.sha256_2mb
    pool = status(lab)["pool"]
    assert pool["connections_opened"] == 1, pool
    assert pool["h2_streams"] >= 17 and pool["requests"] >= 4, pool


def test_small_requests_keep_one_connection_and_report_ttfb(lab, up):
    """100 small requests on new app connections: all on reused upstream connections but the first; TTFB percentiles reported."""
    up(lab.proxy_url)
    script = (
        "import socket,sys\n"
        "ip,host=sys.argv[1],sys.argv[2]\n"
        "for _ in range(100):\n"
        "    s=socket.create_connection((ip,80),timeout=10)\n"
        "    s.sendall(f'GET /small HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n'.encode())\n"
        "    data=b''\n"
        "    while (c:=s.recv(65536)): data+=c\n"
        "    assert data.startswith(b'HTTP/1.1 200'), data[:80]\n"
        "    s.close()\n"
    )
    res = ns_run(lab.client_ns, [sys.executable, "-c", script, lab.origin_ip, lab.origin_host], timeout=120)
    assert res.returncode == 0, res.stderr
    pool = status(lab)["pool"]
    assert pool["requests"] == 100 and pool["reused"] >= 99, pool
    assert 0 < pool["ttfb_ms_p50"] <= pool["ttfb_ms_p95"] <= pool["ttfb_ms_p99"], pool


def test_demo_compares_without_and_with_atlantic(lab):
    """`atlantic demo` runs its workloads (curl chunks, yt-dlp HLS) without and with Atlantic and prints the table."""
    res = subprocess.run([sys.executable, "-m", "atlantic", "demo", "--chunks", "3", "--keep-lab"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "without Atlantic" in res.stdout and "per chunk" in res.stdout
    assert ("yt-dlp, HLS" in res.stdout) == os.access(DEBIAN_YTDLP, os.X_OK)
    assert status(lab)["state"] == "down"  # the demo brought Atlantic down again


def test_a_short_request_does_not_wait_behind_other_downloads(lab, up):
    """Sixteen long downloads at once over the HTTP/1.1 pool (one request per upstream
    connection) still leave room: a small request from another application completes while
    they are all still running."""
    up(lab.proxy_url)
    argv = ["ip", "netns", "exec", lab.client_ns, "curl", "-sS", "--fail", "--noproxy", "*", "--max-time", "300",
            "--limit-rate", "2M", "-o", "/dev/null", f"http://{lab.origin_host}/100mb"]
    downloads = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(16)]
    try:
        time.sleep(2)  # all sixteen are under way (at 2 MB/s each, 100 MB takes 50 s)
        assert curl(lab, f"http://{lab.origin_host}/small")
        assert all(d.poll() is None for d in downloads), "a download ended early: the check proved nothing"
        assert status(lab)["pool"]["connections_opened"] >= 17
    finally:
        for d in downloads:
            d.kill()
            d.wait(timeout=10)
