"""Nothing leaks: with Atlantic up in the lab's client namespace, a capture on its physical
interface sees only the daemon's traffic to the upstream proxy, whatever the applications do
(DNS by name, HTTP and HTTPS by name, a DNS query to an outside resolver, IPv6, QUIC)."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

from atlantic_lab import atlantic, atlantic_up, curl, ns_run, squid_lines, status

FAKE_V4 = ipaddress.ip_network("198.18.128.0/17")
FAKE_V6 = ipaddress.ip_network("fd00:a71a:1c::/64")


@contextlib.contextmanager
def capture(lab, tmp_path: Path):
    """tcpdump on the client's physical interface for the block; yields a list filled after."""
    pcap = tmp_path / "eth0.pcap"
    proc = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, "tcpdump", "-i", "eth0", "-n", "-U",
                             "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    packets: list = []
    try:
        time.sleep(1.0)  # tcpdump needs a moment before it sees packets
        yield packets
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    from scapy.all import rdpcap

    packets.extend(rdpcap(str(pcap)))


def stray(lab, packets) -> list[str]:
    """Every captured packet that is not the daemon's TCP to or from the proxy, nor link plumbing."""
    from scapy.all import ARP, IP, IPv6, TCP

    proxy = (lab.proxy_ip, lab.squid_port)
    out = []
    for p in packets:
        if ARP in p:
            continue
        if IPv6 in p and (p[IPv6].src == "::" or p[IPv6].dst.startswith("ff02:") or p[IPv6].src.startswith("fe80:")):
            continue  # neighbour discovery and MLD: no address of ours, no payload
        if IP in p and TCP in p:
            ip, tcp = p[IP], p[TCP]
            if (ip.dst, tcp.dport) == proxy or (ip.src, tcp.sport) == proxy:
                continue
        out.append(p.summary())
    return out


UDP_PROBE = r"""
import socket, sys
ip = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)  # bounded: a dropped datagram ends here as "timeout"
s.connect((ip, 443))
s.send(b"\xc0" + b"\x00" * 1199)  # looks like a QUIC Initial
try:
    s.recv(2048)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""

DNS_PROBE = r"""
import socket, struct, sys
server = sys.argv[1]
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x03www\x06origin\x04test\x00" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (server, 53))
data, _ = s.recvfrom(2048)
print(socket.inet_ntoa(data[-4:]))
"""

PING_PROBE = r"""
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(1)
msg = struct.pack("!BBHHH", 8, 0, 0, 0x4154, 1) + b"atlantic"
s.sendto(msg[:2] + struct.pack("!H", csum(msg)) + msg[4:], (sys.argv[1], 0))
try:
    while True:
        data, addr = s.recvfrom(2048)
        if data[20] == 0:
            print("reply")
            break
except socket.timeout:
    print("no reply")
"""

IPV6_PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(5)
try:  # no such IPv6 host in the lab: only Atlantic can accept and answer this
    s.connect(("fd00:77::3", 80))
    s.sendall(f"GET /small HTTP/1.1\r\nHost: {sys.argv[1]}\r\nConnection: close\r\n\r\n".encode())
    print("connected", s.recv(200).split(b"\r\n")[0].decode(errors="replace"))
except OSError as e:
    print("failed", repr(e))
"""


def test_capture_sees_only_the_daemon_to_the_proxy(lab, tmp_path):
    """Names, HTTP, HTTPS, DNS to outside resolvers, IPv6, QUIC and ping: the physical side sees only proxy traffic."""
    start = len(Path(lab.squid_access_log).read_text().splitlines())
    with atlantic_up(lab, lab.proxy_url), capture(lab, tmp_path) as packets:
        name = lab.proxy_only_host
        res = ns_run(lab.client_ns, ["getent", "ahostsv4", name], text=True)
        assert res.returncode == 0, res.stderr
        assert ipaddress.ip_address(res.stdout.split()[0]) in FAKE_V4  # answered by Atlantic
        res = ns_run(lab.client_ns, ["getent", "ahostsv6", name], text=True)
        assert ipaddress.ip_address(res.stdout.split()[0]) in FAKE_V6  # IPv6 is captured: AAAA too
        for url in (f"http://{name}/2mb", f"https://{name}/2mb"):
            got = curl(lab, url)
            assert got.returncode == 0, got.stderr
            assert hashlib.sha256(got.stdout).hexdigest() == lab.sha256_2mb
        for server in (lab.origin_ip, "10.77.1.1"):  # an outside resolver, and the LAN one in resolv.conf
            dns = ns_run(lab.client_ns, [sys.executable, "-c", DNS_PROBE, server], text=True)
            assert dns.returncode == 0, dns.stderr
            assert ipaddress.ip_address(dns.stdout.strip()) in FAKE_V4
        quic = ns_run(lab.client_ns, [sys.executable, "-c", UDP_PROBE, lab.origin_ip], text=True)
        assert quic.stdout.strip() == "refused", quic.stdout
        v6 = ns_run(lab.client_ns, [sys.executable, "-c", IPV6_PROBE, name], text=True)
        assert v6.stdout.strip() == "connected HTTP/1.1 200 OK", v6.stdout + v6.stderr  # captured, via Squid
        ping = ns_run(lab.client_ns, [sys.executable, "-c", PING_PROBE, lab.origin_ip], text=True)
        assert ping.stdout.strip() == "no reply", ping.stdout + ping.stderr
        st = status(lab)
    assert stray(lab, packets) == []
    assert len(packets) > 100  # the capture did see the downloads going to the proxy
    assert st["ipv6"] == "captured" and st["kill_switch"] is True
    assert st["dns"]["answered_fake"] >= 3 and st["stack"]["policy_quic_rejected"] >= 1
    assert st["stack"]["policy_icmp_dropped"] >= 1
    # Only the proxy resolves the name: both ports were CONNECTed by name (plain HTTP, the IPv6
    # probe's included, rides the kept tunnel to the origin, logged when `down` closed it).
    for needle in (f"CONNECT {lab.proxy_only_host}:80", f"CONNECT {lab.proxy_only_host}:443"):
        assert squid_lines(lab, start, needle, 1), Path(lab.squid_access_log).read_text().splitlines()[start:]


def test_quic_is_refused_not_dropped(lab):
    """UDP 443 gets an ICMP port unreachable from the TUN: the socket sees ECONNREFUSED, not a timeout."""
    with atlantic_up(lab, lab.proxy_url):
        res = ns_run(lab.client_ns, [sys.executable, "-c", UDP_PROBE, lab.origin_ip], text=True)
        assert res.stdout.strip() == "refused", res.stdout


def test_kill_9_fails_closed_then_down_restores(lab):
    """After kill -9 the kill switch stays (no direct path to the origin); down removes table, rules and TUN."""
    atlantic(lab, "down")
    res = atlantic(lab, "up", "--upstream", lab.proxy_url)
    assert res.returncode == 0, res.stderr
    try:
        pid = status(lab)["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        tables = ns_run(lab.client_ns, ["nft", "list", "tables"], text=True).stdout
        assert "inet atlantic" in tables  # fail closed: the rules outlive the daemon
        leak = curl(lab, f"http://{lab.origin_ip}/small")
        assert leak.returncode != 0
    finally:
        res = atlantic(lab, "down")
    assert res.returncode == 0, res.stderr
    assert "inet atlantic" not in ns_run(lab.client_ns, ["nft", "list", "tables"], text=True).stdout
    rules = ns_run(lab.client_ns, ["ip", "rule"], text=True).stdout + ns_run(lab.client_ns, ["ip", "-6", "rule"], text=True).stdout
    assert "2026" not in rules and "suppress_prefixlength" not in rules
    assert "atl0" not in ns_run(lab.client_ns, ["ip", "-o", "link"], text=True).stdout
    direct = curl(lab, f"http://{lab.origin_host}/2mb")
    assert direct.returncode == 0 and hashlib.sha256(direct.stdout).hexdigest() == lab.sha256_2mb


def test_restart_keeps_fake_ip_mappings(lab):
    """A name's fake address survives `down` + `up`: an application holding it still reaches the name."""
    with atlantic_up(lab, lab.proxy_url):
        res = ns_run(lab.client_ns, ["getent", "ahostsv4", lab.proxy_only_host], text=True)
        fake = res.stdout.split()[0]
    with atlantic_up(lab, lab.proxy_url):
        got = curl(lab, f"http://{fake}/2mb")
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256(got.stdout).hexdigest() == lab.sha256_2mb
        again = ns_run(lab.client_ns, ["getent", "ahostsv4", lab.proxy_only_host], text=True)
        assert again.stdout.split()[0] == fake


def test_other_query_types_resolve_through_the_proxy(lab, tmp_path):
    """MX and TXT (no fake answer possible) are resolved by the configured resolver through the proxy."""
    cfg = tmp_path / "atlantic.toml"
    cfg.touch(mode=0o600)  # the URL holds the proxy password
    cfg.write_text(f'[upstream]\nurl = "{lab.proxy_url}"\n[capture]\ndns_resolver = "{lab.dns_resolver}"\n')
    start = len(Path(lab.squid_access_log).read_text().splitlines())
    with atlantic_up(lab, config=str(cfg)):
        mx = ns_run(lab.client_ns, ["dig", "+short", "+time=5", "+tries=1", "@10.77.1.1", lab.origin_host, "MX"], text=True)
        txt = ns_run(lab.client_ns, ["dig", "+short", "+tcp", "+time=5", "+tries=1", "@10.77.1.1", lab.origin_host, "TXT"],
                     text=True)
        st = status(lab)
    assert mx.stdout.strip() == f"10 mail.{lab.origin_host}.", mx.stdout + mx.stderr
    assert txt.stdout.strip() == '"atlantic-lab-dns"', txt.stdout + txt.stderr
    assert st["dns"]["forwarded"] >= 2
    log = Path(lab.squid_access_log).read_text().splitlines()[start:]
    assert any(f"CONNECT {lab.dns_resolver}" in ln for ln in log), log
