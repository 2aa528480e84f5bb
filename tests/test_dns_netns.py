"""Forwarded DNS through a real Squid, in a throwaway namespace (``atlt-dns-*``), and the lab's
DNS pieces (proxy-only names, the lab DNS server's zone).

The namespace holds Squid rendered from the lab's own template and the lab DNS server,
so the template's port-53 rule and hosts file are tested without touching the shared lab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from atlantic_lab import lab_unavailable
from scapy.layers.dns import DNS, DNSQR

from atlantic.dns import message as dns
from atlantic.lab import dnsserver
from atlantic.lab.services import render_template
from atlantic.lab.topology import PROXY_ONLY_NAMES, LabEnv, hosts_file

NS = f"atlt-dns-{os.getpid()}"
SQUID_IP, DNS_IP, OTHER_IP = "10.199.53.2", "10.199.53.3", "10.199.53.4"
USER, PASSWORD = "atl", "dns-test-pw"
SQUID_NAME = f"atltdns{os.getpid()}"  # Squid's -n (shm names), alphanumeric


# ---- pure: the lab's names and zone -------------------------------------------------------

def test_proxy_only_names_are_in_the_proxy_hosts_file_only():
    """www.origin.test resolves in the proxy's hosts file and in no other namespace's."""
    for name in PROXY_ONLY_NAMES:
        assert f"10.77.3.2\t{name}\n" in hosts_file("proxy")
        assert name not in hosts_file() and name not in hosts_file("client")
    assert hosts_file("proxy").startswith(hosts_file())


def test_lab_env_exports_the_resolver_and_a_proxy_only_name():
    """LAB_DNS_RESOLVER names the origin's DNS server; LAB_PROXY_ONLY_HOST a proxy-only name."""
    env = LabEnv(delay_ms=20, rate_mbit=None, proxy_user="u", proxy_password="p", ca_file="/ca",
                 squid_access_log="/l", sha256_2mb="a", sha256_100mb="b", state_dir="/s").as_env()
    assert env["LAB_DNS_RESOLVER"] == "10.77.3.2:53"
    assert env["LAB_PROXY_ONLY_HOST"] in PROXY_ONLY_NAMES


def test_lab_dns_server_zone_answers():
    """MX/TXT/SRV of origin.test answer; unknown names NXDOMAIN with SOA; other types NODATA."""
    def ask(name, qtype):
        return DNS(dnsserver.answer(bytes(DNS(id=5, qd=DNSQR(qname=name, qtype=qtype)))))
    assert ask("origin.test", "MX").an[0].exchange == b"mail.origin.test."
    assert ask("origin.test", "TXT").an[0].rdata == [dnsserver.TXT_VALUE]
    assert ask("_http._tcp.origin.test", "SRV").an[0].port == 80
    assert ask("www.origin.test", "A").an[0].rdata == "10.77.3.2"
    nx = ask("nope.origin.test", "A")
    assert nx.rcode == dns.NXDOMAIN and nx.ns[0].type == dns.TYPE_SOA
    nodata = ask("origin.test", "AAAA")
    assert nodata.rcode == 0 and nodata.ancount == 0 and nodata.nscount == 1
    assert dnsserver.answer(b"\x00\x01\x00") == dns.formerr_for(b"\x00\x01\x00")


# ---- Squid + lab DNS server in a throwaway namespace ------------------------------------

def _missing_tools() -> list[str]:
    return [t for t in ("ip", "squid", "htpasswd") if shutil.which(t) is None]


def _ns(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, text=True,
                          check=check, timeout=timeout)


def _wait_port(ip: str, port: int, pid: int, timeout: float = 15.0) -> bool:
    code = ("import socket,sys,time\n"
            f"end=time.monotonic()+{timeout}\n"
            "while time.monotonic()<end:\n"
            "    try:\n"
            f"        socket.create_connection(('{ip}',{port}),timeout=0.5).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.05)\n"
            "sys.exit(1)\n")
    ok = _ns(sys.executable, "-c", code, check=False, timeout=timeout + 5).returncode == 0
    return ok and os.waitpid(pid, os.WNOHANG)[0] == 0


def _stop(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    for _ in range(60):  # up to 3 s, then hard
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@pytest.fixture
def squid_ns():
    """Namespace with Squid (lab template) on SQUID_IP:3128 and the lab DNS server on DNS_IP:53.

    Squid or the DNS server not starting is a failure, never a skip.
    """
    if missing := _missing_tools():
        lab_unavailable(f"needs {', '.join(missing)}")
    d = Path(tempfile.mkdtemp(prefix="atlt-dns-"))
    os.chmod(d, 0o755)  # Squid runs as `proxy` and must reach its dir
    pids: list[tuple[int, int]] = []
    try:
        subprocess.run(["ip", "netns", "add", NS], check=True, timeout=10)
        _ns("ip", "link", "set", "lo", "up")
        for addr in (SQUID_IP, DNS_IP, OTHER_IP):  # on lo: this kernel has no dummy links
            _ns("ip", "addr", "add", f"{addr}/32", "dev", "lo")
        sq = d / "squid"
        sq.mkdir()
        # proxy-only name -> the resolver's address, so CONNECT by name reaches a live port
        (sq / "hosts").write_text(f"127.0.0.1\tlocalhost\n{DNS_IP}\t{PROXY_ONLY_NAMES[0]}\n")
        subprocess.run(["htpasswd", "-b", "-c", "-m", str(sq / "passwd"), USER, PASSWORD],
                       check=True, capture_output=True, timeout=10)
        conf = sq / "squid.conf"
        conf.write_text(render_template("squid.conf", dir=sq, proxy_ip=SQUID_IP, squid_port=3128,
                                        dns_server="127.0.0.1", hosts_file=sq / "hosts",
                                        dns_port=53, dns_ip=DNS_IP))
        for name in ("access.log", "cache.log"):
            (sq / name).touch()
            shutil.chown(sq / name, "proxy", "proxy")
        shutil.chown(sq, "root", "proxy")
        os.chmod(sq, 0o770)
        shutil.chown(sq / "passwd", "root", "proxy")
        os.chmod(sq / "passwd", 0o640)
        os.chmod(sq / "hosts", 0o644)
        with (d / "out.log").open("ab") as log:
            squid = subprocess.Popen(["ip", "netns", "exec", NS, "squid", "-N", "-n", SQUID_NAME,
                                      "-f", str(conf)], stdout=log, stderr=log,
                                     start_new_session=True)
            pids.append((squid.pid, signal.SIGINT))
            srv = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-m",
                                    "atlantic.lab.dnsserver", "--listen", DNS_IP, "--port", "53"],
                                   stdout=log, stderr=log, start_new_session=True)
            pids.append((srv.pid, signal.SIGTERM))
        assert _wait_port(DNS_IP, 53, srv.pid), "lab DNS server did not start"
        assert _wait_port(SQUID_IP, 3128, squid.pid), f"squid did not start; see {sq}/cache.log"
        yield sq
    finally:
        for pid, sig in pids:
            _stop(pid, sig)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=10)
        for shm in Path("/dev/shm").glob(f"{SQUID_NAME}-*.shm"):
            shm.unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)


_CLIENT = r"""
import asyncio, json, sys
from atlantic.pool.pool import UpstreamPool
from atlantic.dns import message as dns
from atlantic.dns.intercept import DnsInterceptor
from atlantic.dns.fakeip import FakeIpPool

async def main():
    out = {}
    async with UpstreamPool(sys.argv[1], warm_tunnels=0, connect_timeout=5) as pool:
        for resolver in sys.argv[2:]:
            d = DnsInterceptor(FakeIpPool(), open_tunnel=pool.open_tunnel, resolver=resolver, timeout_s=8)
            raw = (bytes.fromhex("abcd01000001000000000000") + dns.text_to_wire("origin.test")
                   + bytes.fromhex("000f0001"))
            reply = await d.resolve(dns.parse_query(raw), raw)
            out[resolver] = reply.hex()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.lab_local  # root: its own namespace and Squid
def test_mx_forwarded_through_squid_connect_to_the_resolver_only(squid_ns):
    """MX goes through Squid CONNECT to the resolver (by address or by a name only Squid
    resolves); CONNECT to port 53 of any other address is refused, giving SERVFAIL."""
    proxy_url = f"http://{USER}:{PASSWORD}@{SQUID_IP}:3128"
    resolvers = [f"{DNS_IP}:53", f"{PROXY_ONLY_NAMES[0]}:53", f"{OTHER_IP}:53"]
    r = _ns(sys.executable, "-c", _CLIENT, proxy_url, *resolvers, check=False, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    got = {k: DNS(bytes.fromhex(v)) for k, v in json.loads(r.stdout).items()}
    by_ip, by_name, other = (got[x] for x in resolvers)
    assert by_ip.id == 0xABCD and by_ip.an[0].exchange == b"mail.origin.test."
    assert by_name.an[0].exchange == b"mail.origin.test."
    assert other.rcode == dns.SERVFAIL
    log = (squid_ns / "access.log").read_text()
    assert f"CONNECT {DNS_IP}:53" in log and f"CONNECT {PROXY_ONLY_NAMES[0]}:53" in log
    assert "TCP_DENIED" in log and f"{OTHER_IP}:53" in log
