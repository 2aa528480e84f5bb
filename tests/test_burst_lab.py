"""A burst of 1,000 application connections at once through Atlantic (issue 14): every flow
served, every body checked, every plain-HTTP request on the pool, with Squid (HTTP/1.1) and
nghttpx (HTTP/2) upstream. Real Squid, nghttpx and nginx; the burst is `lab/burst.py`."""

from __future__ import annotations

import json
import sys
import time

import pytest

from atlantic_lab import status

pytestmark = pytest.mark.lab

FLOWS = 1000
HTTPS_FLOWS = 500
BURST_DEADLINE_S = 240  # the burst cuts its open flows here: the test cannot hang


def settled_status(lab, timeout: float = 30.0) -> dict:
    """Status once every flow of the burst has ended (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        report = status(lab)
        assert report.get("state") == "up", f"Atlantic is no longer up: {report}"
        if report["flows_open"] == 0 or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


@pytest.mark.parametrize("upstream", ["h1", "h2"])
def test_burst_of_1000_flows_is_served_in_full(lab, in_ns, up, upstream):
    """1,000 flows at once (500 plain-HTTP range requests, 500 HTTPS by a fake-IP name):
    every body intact, every plain-HTTP flow read as HTTP (none left to a tunnel of its
    own), every HTTPS flow as TLS, and status counts exactly the failures the burst saw."""
    if upstream == "h1":
        before = up(lab.proxy_url)
    else:
        before = up(lab.h2_proxy_url, ca_file=lab.ca_file)
    res = in_ns("client", [sys.executable, "-m", "atlantic.lab.burst", "--n", str(FLOWS),
                           "--https", str(HTTPS_FLOWS), "--ca", lab.ca_file,
                           "--http-host", lab.origin_host, "--https-host", lab.proxy_only_host,
                           "--deadline", str(BURST_DEADLINE_S)],
                timeout=BURST_DEADLINE_S + 60)
    assert res.stdout, res.stderr.decode()[-2000:]
    out = json.loads(res.stdout)
    after = settled_status(lab)
    assert out["resolved"]["https"].startswith("198.18."), out["resolved"]  # a fake address
    assert out["ok"] == FLOWS, (out["failure_reasons"], out["failures"][:3])
    assert out["ok_by_scheme"] == {"http": FLOWS - HTTPS_FLOWS, "https": HTTPS_FLOWS}
    kinds = {k: after["flow_kinds"][k] - before["flow_kinds"][k] for k in after["flow_kinds"]}
    assert kinds == {"http": FLOWS - HTTPS_FLOWS, "tls": HTTPS_FLOWS, "other": 0}, kinds
    assert after["flows_failed"] - before["flows_failed"] == out["failed"] == 0, after.get("last_error")
    assert after["flows_open"] == 0
    assert after["http"]["requests"] - before["http"]["requests"] == FLOWS - HTTPS_FLOWS
