"""The lab itself: pure parts, then the real namespaces, services and delay line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlantic.lab import acquire, current, down, ns_exec_argv, other_users, set_delay
from atlantic.lab.delayline import IDLE_TIMEOUT_S, DelayQueue, wait_timeout
from atlantic.lab.procs import is_alive
from atlantic.lab.topology import ROLES, ROUTER_TUN, LabEnv, hosts_file, ns_name, render_exports

PY = sys.executable
REQUIRED_ENV = {
    "LAB_CLIENT_NS", "LAB_ROUTER_NS", "LAB_PROXY_NS", "LAB_ORIGIN_NS", "LAB_PROXY_URL",
    "LAB_H2_PROXY_URL", "LAB_PROXY_USER", "LAB_PROXY_PASSWORD", "LAB_PROXY_IP",
    "LAB_ORIGIN_HTTP", "LAB_ORIGIN_HTTPS", "LAB_ORIGIN_IP", "LAB_CA_FILE", "LAB_DELAY_MS",
    "LAB_SQUID_ACCESS_LOG", "LAB_SHA256_2MB", "LAB_SHA256_100MB",
}


# ---- pure parts -------------------------------------------------------------------

def test_delay_queue_releases_each_packet_after_the_delay():
    """A packet is held exactly `delay` seconds, and packets leave in arrival order."""
    q = DelayQueue(0.020)
    q.push(b"a", now=1.000)
    q.push(b"b", now=1.005)
    assert q.pop_due(1.019) == []
    assert q.next_deadline() == pytest.approx(1.020)
    assert q.pop_due(1.020) == [b"a"]
    assert q.pop_due(1.030) == [b"b"]
    assert q.next_deadline() is None


def test_delay_queue_drops_beyond_its_byte_limit():
    """Over max_bytes a packet is dropped and counted, like a full router queue."""
    q = DelayQueue(0.01, max_bytes=10)
    assert q.push(b"x" * 8, now=0)
    assert not q.push(b"y" * 8, now=0)
    assert q.stats().dropped == 1 and q.stats().queued_bytes == 8


def test_idle_wait_is_bounded_and_never_negative():
    """The loop sleeps at most IDLE_TIMEOUT_S when idle and 0 for overdue packets (no spin)."""
    assert wait_timeout(None, 5.0) == IDLE_TIMEOUT_S
    assert wait_timeout(4.0, 5.0) == 0.0
    assert wait_timeout(5.003, 5.0) == pytest.approx(0.003)


def test_env_has_every_documented_variable_and_quotes_values():
    """as_env() exports every LAB_* variable the brief lists; exports are shell-quoted."""
    env = LabEnv(delay_ms=20, rate_mbit=None, proxy_user="u", proxy_password="p w'x",
                 ca_file="/ca", squid_access_log="/log", sha256_2mb="a", sha256_100mb="b",
                 state_dir="/run/x")
    assert REQUIRED_ENV <= set(env.as_env())
    assert env.as_env()["LAB_PROXY_URL"] == "http://u:p w'x@10.77.2.2:3128"
    assert "export LAB_PROXY_PASSWORD='p w'\"'\"'x'\n" in render_exports(env.as_env())


def test_ns_names_and_exec_argv():
    """Roles map to atl-* namespaces; ns_exec_argv wraps `ip netns exec`; others are refused."""
    assert [ns_name(r) for r in ROLES] == ["atl-client", "atl-router", "atl-proxy", "atl-origin"]
    assert ns_exec_argv("client", ["true"]) == ["ip", "netns", "exec", "atl-client", "true"]
    for other in ("atlt-other", "bogus"):
        with pytest.raises(ValueError):
            ns_name(other)


def test_hosts_file_names_proxy_and_origin():
    """proxy.test and origin.test resolve to lab addresses inside the namespaces."""
    assert "10.77.2.2\tproxy.test" in hosts_file() and "10.77.3.2\torigin.test" in hosts_file()


# ---- the running lab --------------------------------------------------------------

def _wait_log(path: str, needle: str, timeout: float = 5.0) -> str:
    """Squid logs a transaction when it ends: poll its access log (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        text = Path(path).read_text()
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


@pytest.mark.lab
def test_plain_http_through_squid_returns_the_file_and_is_logged(lab, in_ns):
    """curl -x $LAB_PROXY_URL http://origin.test/2mb from the client: right bytes, logged."""
    r = in_ns("client", ["curl", "-sS", "--max-time", "30", "-x", lab.proxy_url,
                         "http://origin.test/2mb"])
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(r.stdout).hexdigest() == lab.sha256_2mb
    log = _wait_log(lab.squid_access_log, "GET http://origin.test/2mb")
    line = [ln for ln in log.splitlines() if "GET http://origin.test/2mb" in ln][-1]
    assert "TCP_MISS/200" in line and f" {lab.proxy_user} " in line and lab.client_ip in line


@pytest.mark.lab
def test_https_through_squid_connect_with_lab_ca(lab, in_ns):
    """HTTPS via CONNECT verifies against LAB_CA_FILE and returns the file; Squid logs it."""
    r = in_ns("client", ["curl", "-sS", "--max-time", "30", "--cacert", lab.ca_file, "-x",
                         lab.proxy_url, "https://origin.test/2mb"])
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(r.stdout).hexdigest() == lab.sha256_2mb
    assert "CONNECT origin.test:443" in _wait_log(lab.squid_access_log, "CONNECT origin.test:443")


@pytest.mark.lab
def test_origin_serves_small_and_hls(lab, in_ns):
    """/small is ~100 bytes; the HLS playlist lists ~20 segments of about 2 MB each."""
    r = in_ns("client", ["curl", "-sS", "--max-time", "10", "http://origin.test/small"])
    assert r.returncode == 0 and 80 <= len(r.stdout) <= 200
    r = in_ns("client", ["curl", "-sS", "--max-time", "10", "http://origin.test/hls/index.m3u8"])
    segments = [ln for ln in r.stdout.decode().splitlines() if ln.endswith(".ts")]
    assert 15 <= len(segments) <= 30
    r = in_ns("client", ["curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w",
                         "%{http_code} %{size_download}", f"http://origin.test/hls/{segments[0]}"])
    code, size = r.stdout.decode().split()
    assert code == "200" and 1_000_000 < int(size) < 4_000_000


def _connects(in_ns, host: str, port: int, count: int = 9) -> int:
    """``count`` TCP connects from the client to ``host:port``; how many succeeded."""
    r = in_ns("client", [PY, "-m", "atlantic.lab.measure", "rtt", host, str(port), "--count",
                         str(count)], timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["count"]


def _delay_line(lab) -> tuple[int, str]:
    """The running delay line's PID and its ``--delay-ms`` argument."""
    pid = json.loads((Path(lab.state_dir) / "state.json").read_text())["pids"]["delayline"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return pid, argv[argv.index("--delay-ms") + 1]


def _tun_packets() -> tuple[int, int]:
    """Packets the router handed to the delay line's TUN, and packets it wrote back."""
    r = subprocess.run(["ip", "-n", ns_name("router"), "-s", "-j", "link", "show", ROUTER_TUN],
                       capture_output=True, text=True, check=True, timeout=10)
    stats = json.loads(r.stdout)[0]["stats64"]
    return stats["tx"]["packets"], stats["rx"]["packets"]


def _crosses_delay_line(in_ns, host: str, port: int) -> None:
    """9 connects to host:port all succeed, and each one's packets pass the delay line
    both ways (a SYN and a SYN-ACK per connect at least). How long the line holds a
    packet is pinned by the DelayQueue tests above; durations belong to benchmarks."""
    sent_before, back_before = _tun_packets()
    assert _connects(in_ns, host, port) == 9
    sent, back = _tun_packets()
    assert sent - sent_before >= 18 and back - back_before >= 18, (sent_before, sent, back_before, back)


@pytest.mark.lab
def test_traffic_crosses_the_delay_line_with_the_lab_delay(lab, in_ns):
    """The delay line runs with the lab's one-way delay, and client->proxy TCP passes through it."""
    pid, delay = _delay_line(lab)
    assert is_alive(pid) and float(delay) == lab.delay_ms
    _crosses_delay_line(in_ns, lab.proxy_ip, lab.squid_port)


@pytest.mark.lab
def test_set_delay_restarts_the_delay_line_and_back(lab, in_ns):
    """set_delay(5) restarts the delay line with 5 ms and traffic crosses it; 20 again restores the lab."""
    old_pid, _ = _delay_line(lab)
    try:
        assert set_delay(5).delay_ms == 5 and current().delay_ms == 5
        pid, delay = _delay_line(lab)
        assert pid != old_pid and not is_alive(old_pid) and float(delay) == 5
        _crosses_delay_line(in_ns, lab.origin_ip, 80)
    finally:
        set_delay(lab.delay_ms)
    assert current() == lab
    assert float(_delay_line(lab)[1]) == lab.delay_ms


@pytest.fixture(scope="module")
def h2_results(lab):
    """Results of the python-h2 probe through nghttpx, run once in the client namespace."""
    argv = [PY, "-m", "atlantic.lab.h2probe", "--proxy-url", lab.h2_proxy_url,
            "--ca", lab.ca_file, "--sha256-2mb", lab.sha256_2mb]
    r = subprocess.run(ns_exec_argv("client", argv), capture_output=True, timeout=180)
    return json.loads(r.stdout)


@pytest.mark.lab
@pytest.mark.parametrize("check", ["get_http", "connect_80", "connect_443", "connect_multi",
                                   "auth_407_get", "auth_407_connect"])
def test_h2_proxy_through_nghttpx(h2_results, check):
    """Through nghttpx (h2): GET http://, CONNECT :80/:443, 3 CONNECTs on one conn, 407s."""
    assert h2_results[check]["ok"], h2_results[check]["detail"]


@pytest.mark.lab
def test_names_resolve_in_namespace_without_host_resolver(lab, in_ns):
    """origin.test resolves from the namespace hosts file; resolv.conf points inside the lab."""
    r = in_ns("client", ["getent", "hosts", "origin.test"])
    assert r.stdout.split()[0].decode() == lab.origin_ip
    resolv = in_ns("client", ["cat", "/etc/resolv.conf"]).stdout.decode()
    assert "nameserver 10.77." in resolv


@pytest.mark.lab
@pytest.mark.lab_last
def test_down_leaves_nothing_and_up_again(lab):
    """down(): no atl- namespace, process, /etc/netns dir or state left; safe twice; up again."""
    if users := other_users():
        pytest.skip(f"another live test session uses the lab (PIDs {users}); not cycling it")
    state_dir = Path(lab.state_dir)
    state = json.loads((state_dir / "state.json").read_text())
    pids = list(state["pids"].values())
    cc = state["allowed_cc"]
    down()
    down()  # safe twice
    from atlantic.lab.netns import ALLOWED_CC, lab_namespaces  # noqa: PLC0415

    assert lab_namespaces() == []
    assert [p for p in pids if is_alive(p)] == []
    assert not any(Path("/etc/netns", ns_name(r)).exists() for r in ROLES)
    assert not state_dir.exists()
    if cc["original"] != cc["ours"]:
        assert ALLOWED_CC.read_text().strip() == cc["original"]
    assert current() is None
    # the session fixture expects a lab until its own teardown: bring the same one back
    assert acquire(delay_ms=lab.delay_ms) == lab
