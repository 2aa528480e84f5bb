"""Leak-proof end to end in throwaway namespaces (root only): nothing unmarked reaches the wire.

Two namespaces joined by a veth pair: the client (kill switch, routing, a running
SystemStack with IPv6 capture) and its "physical" peer, where an AF_PACKET socket
records every frame the client puts on the wire. Unmarked TCP, UDP 443, DNS, IPv6
and ping must leave no trace there; a marked connection to the upstream must (the
capture's positive control). Frames are judged by :mod:`atlantic.health.leaks`. The
helpers are shared with test_killswitch.py.
"""

from __future__ import annotations

import secrets
import socket
import struct
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from atlantic.health.leaks import classify
from atlantic.interceptor.policy import DROP, default_policy
from atlantic.interceptor.stack import SystemStack
from atlantic.lab.throwaway import inside
from atlantic.system import killswitch, routing

pytestmark = pytest.mark.lab_local  # root: namespaces, nftables and TUN

SO_MARK = 36
IPV6_FREEBIND = 78
IP_FREEBIND = 15
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MARK = 0x2026
CLIENT4, PEER4 = "10.200.0.1", "10.200.0.2"
CLIENT6, PEER6 = "2001:db8:200::1", "2001:db8:200::2"
UPSTREAM = (PEER4, 3128)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10, capture_output=True)


@dataclass(frozen=True)
class Pair:
    """Client and peer namespaces and their veth ends."""

    client: str
    peer: str
    client_if: str
    peer_if: str


@contextmanager
def veth_pair():
    """atlt-leak-* client and peer namespaces on one veth, IPv4 and IPv6, default routes via the peer."""
    tag = secrets.token_hex(3)
    pair = Pair(f"atlt-leak-{tag}-c", f"atlt-leak-{tag}-p", f"lc{tag}", f"lp{tag}")
    try:
        for ns in (pair.client, pair.peer):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", pair.client_if, "netns", pair.client, "type", "veth",
            "peer", "name", pair.peer_if, "netns", pair.peer)
        for ns, dev, a4, a6 in ((pair.client, pair.client_if, CLIENT4, CLIENT6), (pair.peer, pair.peer_if, PEER4, PEER6)):
            _ip("-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            _ip("-n", ns, "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", pair.client, "route", "add", "default", "via", PEER4)
        _ip("-n", pair.client, "-6", "route", "add", "default", "via", PEER6)
        yield pair
    finally:
        for ns in (pair.client, pair.peer):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10, capture_output=True)


class Capture:
    """Every frame the client sends onto the wire, as seen by the peer's veth end."""

    def __init__(self, pair: Pair) -> None:
        with inside(pair.peer):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((pair.peer_if, 0))
        self.sock.setblocking(False)

    def frames(self, settle: float = 0.2) -> list[bytes]:
        """Frames received since the last call (the peer's own sends left out), after *settle* s."""
        time.sleep(settle)
        out = []
        for _ in range(10_000):  # bounded
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] != PACKET_OUTGOING:
                out.append(data)
        return out

    def close(self) -> None:
        self.sock.close()


def tcp_connect(addr: tuple, *, mark: int | None = None, timeout: float = 3.0) -> socket.socket:
    """A connected TCP socket (raises OSError on refusal, rejection or timeout)."""
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        if mark is not None:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        s.settimeout(timeout)
        s.connect(addr)
    except BaseException:
        s.close()
        raise
    return s


def tcp_refused(addr: tuple) -> None:
    """A connect to *addr* is rejected (ECONNREFUSED from a TCP reset), not dropped:
    a drop would end in the bounded timeout instead."""
    with pytest.raises(ConnectionRefusedError):
        tcp_connect(addr, timeout=5.0).close()


def udp_send(addr: tuple, payload: bytes = b"probe") -> socket.socket:
    """A connected UDP socket that has sent *payload* to *addr* (errors of the send ignored)."""
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.connect(addr)
    try:
        s.send(payload)
    except OSError:
        pass
    return s


def ping(dst: str) -> None:
    """One ICMP echo request from a raw socket (send errors ignored)."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"atlantic"
        body = body[:2] + struct.pack("!H", _icmp_csum(body)) + body[4:]
        try:
            s.sendto(body, (dst, 0))
        except OSError:
            pass


def _icmp_csum(data: bytes) -> int:
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def listen(addr: tuple) -> socket.socket:
    """A listening TCP socket on *addr* (FREEBIND: the address may not exist yet)."""
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    s.bind(addr)
    s.listen(64)
    s.settimeout(3.0)
    return s


def wait_for(predicate, timeout: float = 2.0) -> bool:
    """Poll *predicate* every 10 ms for at most *timeout* s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_nothing_unmarked_leaves_and_quic_is_refused_at_once():
    """TCP, UDP 443, DNS, IPv6, ping of an app leave no frame on the wire; QUIC is refused (ECONNREFUSED)."""
    dns_seen = []

    def dns(packet, info):
        dns_seen.append((info.dst, info.dport))
        return DROP

    with veth_pair() as pair:
        with inside(pair.peer):
            upstream = listen(UPSTREAM)
        with inside(pair.client):
            lis4 = listen(("198.18.0.1", 0))
            port = lis4.getsockname()[1]
            lis6 = listen(("fd00:a71a::1", port))
            chain = default_policy(dns=dns)
            stack = SystemStack("atl0", "198.18.0.1", "198.18.0.2", port, 65520, True,
                                inet6_addr="fd00:a71a::1", policy=chain)
            plan = routing.plan_routing("atl0", 2026, MARK, 32000, ipv6="captured", capture_dns=True)
            record = routing.prepare(plan)
            cap = None
            stack.start_thread()
            try:
                routing.apply(plan)
                killswitch.apply(killswitch.KillSwitchConfig(tun="atl0", fwmark=MARK,
                                                             upstream=(killswitch.Endpoint(*UPSTREAM),)))
                cap = Capture(pair)

                # Captured flows reach the listener with their original destination.
                for dst, lis in ((("203.0.113.5", 80), lis4), ((PEER4, 53), lis4), (("2001:db8:1::9", 443), lis6)):
                    c = tcp_connect(dst)
                    conn, peer = lis.accept()
                    assert stack.lookup(peer[1])[1] == dst
                    conn.close()
                    c.close()
                # On-link destinations stay in main and meet the kill switch: rejected, not dropped.
                tcp_refused(UPSTREAM)
                tcp_refused((PEER6, 3128))
                # QUIC: ICMP / ICMPv6 port unreachable written back by the stack.
                for dst in (("203.0.113.5", 443), ("2001:db8:1::7", 443)):
                    s = udp_send(dst)
                    s.settimeout(5.0)  # bounded: a drop would time out instead
                    with pytest.raises(ConnectionRefusedError):
                        s.recv(100)
                    s.close()
                udp_send((PEER4, 53)).close()  # a LAN resolver: DNS goes to the TUN anyway
                udp_send((PEER4, 9999)).close()  # on-link UDP: the kill switch
                udp_send(("203.0.113.5", 9999)).close()  # routed UDP: the policy drops it
                ping("203.0.113.5")
                ping(PEER4)
                assert wait_for(lambda: dns_seen and chain.counters()["icmp_dropped"] >= 1
                                and chain.counters()["udp_dropped"] >= 1)
                assert dns_seen == [(socket.inet_aton(PEER4), 53)]
                counts = stack.counters()
                assert counts["policy_quic_rejected"] == 2 and counts["policy_udp_dropped"] >= 1
                assert classify(cap.frames()).descriptions() == ()
                assert killswitch.counters()["blocked_packets"] >= 4

                # Positive control: the daemon's marked socket to the upstream does reach the wire.
                tcp_connect(UPSTREAM, mark=MARK).close()
                assert any("10.200.0.1 -> 10.200.0.2" in d for d in classify(cap.frames()).descriptions())
            finally:
                if cap is not None:
                    cap.close()
                killswitch.remove()
                assert routing.restore(record) == []
                stack.stop()
            # Everything back: the same unmarked connect goes straight out.
            tcp_connect(UPSTREAM).close()
            assert not killswitch.is_active()
            for s in (lis4, lis6):
                s.close()
        upstream.close()
