"""Failover in the lab (issue 11): Atlantic with both lab proxies (real Squids), a request every
quarter second from the client namespace, and proxy 1 refused, blackholed, made lossy and
restored under it; then both down; then a packet forced past the tunnel. The scenarios are
`lab/failover.py` (the benchmark runs them with the product's default intervals); here
they run with short ones, and the test asserts what happened, not how fast."""

from __future__ import annotations

import pytest

from atlantic.lab.failover import Settings, run_failover

pytestmark = [pytest.mark.lab, pytest.mark.lab_last]  # it stops and blackholes the shared proxies

SHORT = Settings(active_interval_s=1, standby_interval_s=1, failback_hold_s=3, probe_timeout_s=2,
                 lossy_s=20, failback_limit_s=90)


@pytest.fixture(scope="module")
def failover(lab):
    """Every scenario, run once for the tests below (about 80 s)."""
    return run_failover(lab, SHORT, log=lambda _line: None)


def test_a_refused_primary_hands_new_requests_to_the_standby_and_gets_them_back(failover):
    """Proxy 1 stopped: requests go through proxy 2, status names it active and proxy 1 down;
    proxy 1 started again: traffic returns to it after the hold."""
    r = failover["stop"]
    assert r["via_proxy2_s"] is not None, r
    assert r["active_after"].endswith("10.77.4.2:3128") and r["upstream1_after"] == "down", r
    assert all("502" in e for e in r["failed_examples"]), r  # refused: a clear 502, never a hang
    assert r["failback_s"] is not None, r


def test_a_blackholed_primary_is_left_and_resumed(failover):
    """Proxy 1's packets silently dropped: traffic moves to proxy 2 (no refusal to go by:
    the flows' silence is the signal); healed, traffic goes back to proxy 1."""
    r = failover["blackhole"]
    assert r["via_proxy2_s"] is not None and r["upstream1_after"] == "down", r
    assert r["failback_s"] is not None, r


def test_a_lossy_primary_does_not_make_traffic_flap(failover):
    """30% of proxy 1's new connections refused for 20 s: no request fails for it, and the
    carrying proxy changes at most a few times (each failback waits a doubling hold)."""
    r = failover["lossy"]
    assert r["requests"] > 0 and r["failed_requests"] == 0, r
    assert r["switches"] <= 4, r


def test_all_down_fails_closed_with_the_reason_and_recovers(failover):
    """Both proxies stopped: status says all down, a new request is refused at once with a
    502 (never sent anywhere else); one proxy back: traffic flows again."""
    r = failover["all_down"]
    assert r["all_down_s"] is not None, r
    assert r["refused_with"] and "502" in r["refused_with"], r
    assert r["recovered_s"] is not None, r


def test_a_packet_forced_out_of_the_physical_interface_is_counted(failover):
    """A datagram sent from a socket bound to the uplink, without the mark: the kill switch
    blocks it and status counts it (the detector reads the counters every few seconds)."""
    assert failover["forced_packet"]["counted_after_s"] is not None, failover["forced_packet"]


def test_status_shows_health_and_leaks(failover, lab):
    """The final status: both upstreams in priority order with state, probe and exit address;
    the leak checks sealed; no password anywhere."""
    st = failover["status"]
    health, leaks = st["health"], st["leaks"]
    assert [u["url"].rsplit("@", 1)[1] for u in health["upstreams"]] == ["10.77.2.2:3128", "10.77.4.2:3128"]
    assert all(u["state"] in ("up", "down", "unknown") for u in health["upstreams"])
    assert any(u["exit_ip"] for u in health["upstreams"]), health
    assert health["failovers"] >= 4
    assert leaks["sealed"] and leaks["last"]["bound_socket"]["result"] == "ok", leaks
    assert leaks["last"]["exit_address"]["result"] == "ok", leaks
    assert leaks["blocked_packets"] >= 1
    assert "***" in repr(health) and lab.proxy_password not in repr(st)


def test_a_dead_probe_url_and_a_garbage_echo_are_status_lines_not_outages(lab, tmp_path):
    """The probe URL's name resolves nowhere (Squid keeps waiting on its DNS, or answers 503
    itself) and the echo service answers text, not JSON: the upstream stays up and carries traffic,
    status says what the probe URL did and why the exit is unknown, and nothing is logged
    as a traceback."""
    import os
    import time

    from atlantic_lab import atlantic_up, curl, status

    pw = tmp_path / "pw"
    pw.write_text(lab.proxy_password + "\n")
    conf = tmp_path / "atlantic.toml"
    conf.write_text(f'[upstream]\nurl = "http://{lab.proxy_user}@{lab.proxy_ip}:{lab.squid_port}"\n'
                    f'password_file = "{pw}"\n[health]\nprobe_url = "http://nowhere.origin.invalid/"\n'
                    'expected_status = 204\necho_url = "http://origin.test/small"\nactive_interval_s = 1\n')
    for f in (pw, conf):
        os.chmod(f, 0o600)
    with atlantic_up(lab, config=str(conf)) as first:
        log_file = os.readlink(f"/proc/{first['pid']}/fd/2")  # the daemon logs through its stderr
        with open(log_file, "rb") as f:
            start = f.seek(0, 2)
        deadline, up = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            up = status(lab)["health"]["upstreams"][0]
            if up["last_result"] and up["exit_error"]:
                break
            time.sleep(0.25)
        assert up["state"] == "up" and up["last_result"].startswith("the proxy "), repr(up)  # accepted or answered
        assert "not JSON" in up["exit_error"] and up["exit_ip"] is None, up
        assert curl(lab, "http://origin.test/small").returncode == 0
        with open(log_file, "rb") as f:
            f.seek(start)
            assert b"Traceback" not in f.read()
