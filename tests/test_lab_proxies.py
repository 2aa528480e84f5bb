"""The lab's two upstream proxies: distinct exit addresses, and failing/restoring each one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atlantic.lab.lab import LabError, proxy_control
from atlantic.lab.topology import LabEnv, hosts_file, render_blackhole, render_heal

CONNECT_TIMEOUT_S = "2"


# ---- pure parts -------------------------------------------------------------------

def test_env_names_the_second_proxy_and_keeps_the_first():
    """as_env() adds LAB_PROXY2_* (same user and password as proxy 1); LAB_PROXY_URL is unchanged."""
    env = LabEnv(delay_ms=20, rate_mbit=None, proxy_user="u", proxy_password="p",
                 ca_file="/ca", squid_access_log="/log", sha256_2mb="a", sha256_100mb="b",
                 state_dir="/run/x").as_env()
    assert env["LAB_PROXY_URL"] == "http://u:p@10.77.2.2:3128"
    assert env["LAB_PROXY2_URL"] == "http://u:p@10.77.4.2:3128"
    assert env["LAB_PROXY2_IP"] == "10.77.4.2" and env["LAB_PROXY2_NS"] == "atl-proxy2"
    assert env["LAB_PROXY2_HOST"] == "proxy2.test"
    assert env["LAB_SQUID2_ACCESS_LOG"] == "/run/x/squid2/access.log"


def test_hosts_files_name_proxy2_and_proxy_only_names_resolve_at_both_proxies():
    """Every namespace knows proxy2.test; www.origin.test is in both proxies' hosts files only."""
    assert "10.77.4.2\tproxy2.test\n" in hosts_file("client")
    assert "www.origin.test" in hosts_file("proxy") and "www.origin.test" in hosts_file("proxy2")
    assert "www.origin.test" not in hosts_file("client")


def test_blackhole_ruleset_drops_both_directions_and_is_safe_twice():
    """The nft script replaces its own table atomically; heal deletes it even if absent."""
    script = render_blackhole("proxy2")
    assert script.startswith("table inet atl_blackhole_proxy2\ndelete table inet atl_blackhole_proxy2\n")
    assert "hook forward" in script
    assert "ip daddr 10.77.4.2 drop" in script and "ip saddr 10.77.4.2 drop" in script
    assert render_heal("proxy2") == ("table inet atl_blackhole_proxy2\n"
                                     "delete table inet atl_blackhole_proxy2\n")


@pytest.mark.parametrize(("n", "action", "error"), [
    (3, "stop", "no proxy 3 in the lab; pick 1 or 2"),
    (2, "reboot", "unknown proxy action 'reboot'"),
])
def test_proxy_control_refuses_bad_arguments_in_one_line(n, action, error):
    """A wrong proxy number or action is a one-line LabError, checked before anything runs."""
    with pytest.raises(LabError, match=error) as e:
        proxy_control(n, action)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_bad_proxy_number_in_one_line():
    """`atlantic lab proxy 7 stop` prints one error line and exits 1."""
    r = subprocess.run([sys.executable, "-m", "atlantic.lab", "proxy", "7", "stop"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: no proxy '7' in the lab; pick 1 or 2"


# ---- the running lab --------------------------------------------------------------

def _curl(in_ns, proxy_url: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    """curl from the client namespace through *proxy_url*; bounded, bytes out."""
    return in_ns("client", ["curl", "-sS", "--max-time", "20", *extra, "-x", proxy_url, url],
                 timeout=40)


def _seen_ip(in_ns, lab: LabEnv, proxy_url: str, url: str = "http://origin.test/ip") -> str:
    """The address the origin saw for a request through *proxy_url*."""
    r = _curl(in_ns, proxy_url, url, "--cacert", lab.ca_file)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["ip"]


@pytest.mark.lab
def test_origin_sees_each_proxy_leave_from_its_own_address(lab, in_ns):
    """Through LAB_PROXY_URL the origin sees 10.77.2.2, through LAB_PROXY2_URL 10.77.4.2."""
    assert _seen_ip(in_ns, lab, lab.proxy_url) == lab.proxy_ip == "10.77.2.2"
    assert _seen_ip(in_ns, lab, lab.proxy2_url) == lab.proxy2_ip == "10.77.4.2"


@pytest.mark.lab
def test_proxy2_serves_https_and_resolves_the_proxy_only_names(lab, in_ns):
    """CONNECT through proxy 2 to https://origin.test/ip and to a proxy-only name both work."""
    assert _seen_ip(in_ns, lab, lab.proxy2_url, "https://origin.test/ip") == lab.proxy2_ip
    assert _seen_ip(in_ns, lab, lab.proxy2_url, f"https://{lab.proxy_only_host}/ip") == lab.proxy2_ip


@pytest.mark.lab
def test_origin_ip_endpoint_is_json_over_http_and_https(lab, in_ns):
    """GET /ip answers application/json with the client's own address when fetched directly."""
    for url in ("http://origin.test/ip", "https://origin.test/ip"):
        r = in_ns("client", ["curl", "-sS", "--max-time", "10", "--cacert", lab.ca_file,
                             "-w", "\n%{content_type}", url])
        body, ctype = r.stdout.decode().rsplit("\n", 1)
        assert r.returncode == 0 and ctype == "application/json"
        assert json.loads(body) == {"ip": lab.client_ip}


@pytest.mark.lab
def test_stop_makes_proxy2_refuse_and_start_brings_it_back(lab, in_ns):
    """stop: connects to proxy 2 are refused (curl exit 7), twice is fine; start: it serves again."""
    try:
        assert not proxy_control(2, "stop").running
        assert not proxy_control(2, "stop").running
        r = _curl(in_ns, lab.proxy2_url, "http://origin.test/ip")
        assert r.returncode == 7, r.stderr
        assert _seen_ip(in_ns, lab, lab.proxy_url) == lab.proxy_ip  # proxy 1 unaffected
    finally:
        assert proxy_control(2, "start").running
    assert proxy_control(2, "start").running
    assert _seen_ip(in_ns, lab, lab.proxy2_url) == lab.proxy2_ip


@pytest.mark.lab
def test_blackhole_makes_proxy2_time_out_and_heal_brings_it_back(lab, in_ns):
    """blackhole: a connect to proxy 2 times out (curl exit 28), twice is fine; heal: it serves again."""
    try:
        assert proxy_control(2, "blackhole").blackholed
        assert proxy_control(2, "blackhole").blackholed
        r = _curl(in_ns, lab.proxy2_url, "http://origin.test/ip",
                  "--connect-timeout", CONNECT_TIMEOUT_S)
        assert r.returncode == 28, r.stderr
        assert _seen_ip(in_ns, lab, lab.proxy_url) == lab.proxy_ip  # proxy 1 unaffected
    finally:
        assert not proxy_control(2, "heal").blackholed
    assert not proxy_control(2, "heal").blackholed
    assert _seen_ip(in_ns, lab, lab.proxy2_url) == lab.proxy2_ip
    state = proxy_control(2, "status")
    assert state.running and not state.blackholed
