"""The pool end to end in the lab: real Squid (HTTP/1.1) and nghttpx (HTTP/2) from the client namespace."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

PROBE = str(Path(__file__).resolve().parent.parent / "bench" / "pool_lab.py")

pytestmark = pytest.mark.lab


def probe(in_ns, *args: str, timeout: float = 120) -> dict:
    """Run bench/pool_lab.py in the client namespace; its JSON output."""
    r = in_ns("client", [sys.executable, PROBE, *args], timeout=timeout)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout)


def _squid_lines(lab, since: float) -> list[str]:
    lines = Path(lab.squid_access_log).read_text().splitlines()
    return [ln for ln in lines if float(ln.split()[0]) >= since]


def test_30_sequential_gets_through_squid_ride_one_keepalive_connection(lab, in_ns):
    """30 x GET /2mb via Squid: sha256 right, >= 29 reused, Squid logs 30 GET http://origin.test/2mb."""
    since = time.time() - 1
    out = probe(in_ns, "seq", "--proxy", lab.proxy_url, "--url", f"http://{lab.origin_host}/2mb",
                "--n", "30")
    assert out["statuses"] == [200] and out["sha256"] == [lab.sha256_2mb]
    c = out["counters"]
    assert c["requests"] == 30 and c["reused"] >= 29 and c["connections_opened"] == 1
    assert c["ttfb_ms_p50"] is not None
    logged = [ln for ln in _squid_lines(lab, since) if f"GET http://{lab.origin_host}/2mb" in ln]
    assert len(logged) == 30, logged[-3:]


def test_h2_proxy_multiplexes_requests_and_connect_tunnels_on_one_connection(lab, in_ns):
    """Via nghttpx (h2): 4 GETs and 3 CONNECT tunnels at once share the pool's single connection."""
    out = probe(in_ns, "h2mix", "--proxy", lab.h2_proxy_url, "--ca", lab.ca_file,
                "--n", "4", "--tunnels", "3")
    assert out["statuses"] == [200] and out["sha256"] == [lab.sha256_2mb]
    assert out["tunnel_status_lines"] == ["HTTP/1.1 200 OK"]
    assert out["tunnel_sha256"] == [lab.sha256_2mb]
    c = out["counters"]
    assert c["connections_opened"] == 1 and c["h2_streams"] == 7
    assert c["tunnels_warm"] + c["tunnels_cold"] == 3


def test_early_connect_data_works_with_squid(lab, in_ns):
    """Bytes sent right behind CONNECT (no wait for 200) reach the origin through Squid."""
    out = probe(in_ns, "early", "--proxy", lab.proxy_url, "--rounds", "1")
    assert out["early"]["median_ms"] > 0 and out["wait_200"]["median_ms"] > 0


def test_squid_reads_early_bytes_after_a_407_as_a_request_of_their_own(lab, in_ns):
    """Why early CONNECT data is off by default: on 407 Squid parses the app's bytes as HTTP."""
    out = probe(in_ns, "early407", "--proxy", lab.proxy_url, timeout=30)
    assert len(out["status_lines"]) == 2 and all(" 407 " in s for s in out["status_lines"])
