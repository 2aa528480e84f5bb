"""The DNS interceptor: UDP packets in and out (IPv4, IPv6), DNS over TCP on loopback, and
forwarding of other query types through a tunnel to a real DNS-over-TCP server."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRROPT
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from atlantic.dns import message as dns
from atlantic.dns.intercept import (
    DROP, DnsInterceptor, build_udp_reply, parse_resolver,
)
from atlantic.dns.fakeip import FakeIpPool
from atlantic.interceptor.packet import parse
from atlantic.lab import dnsserver


def udp4(payload: bytes, dport: int = 53) -> bytes:
    return bytes(IP(src="10.0.0.2", dst="192.0.2.53") / UDP(sport=40000, dport=dport) / payload)


def udp6(payload: bytes) -> bytes:
    return bytes(IPv6(src="fd00::2", dst="2001:db8::53") / UDP(sport=40001, dport=53) / payload)


def q(name="www.example.com", qtype="A", qid=0x4242, edns=None) -> bytes:
    return bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype), ar=edns or []))


def call(d, pkt: bytes) -> bytes | None:
    """Run a DnsInterceptor's handle_udp (or any policy) on *pkt*."""
    handler = d.handle_udp if isinstance(d, DnsInterceptor) else d
    return handler(memoryview(pkt), parse(pkt))


def interceptor(**kw) -> DnsInterceptor:
    return DnsInterceptor(FakeIpPool(), clock=lambda: 1000.0, **kw)


def assert_checksums_valid(reply: bytes, version: int) -> None:
    """scapy recomputes each checksum from scratch; ours must match."""
    if version == 4:
        p = IP(reply)
        del p[IP].chksum, p[UDP].chksum
        assert IP(reply)[IP].chksum == IP(bytes(p))[IP].chksum
        assert IP(reply)[UDP].chksum == IP(bytes(p))[UDP].chksum
    else:
        p = IPv6(reply)
        del p[UDP].chksum
        assert IPv6(reply)[UDP].chksum == IPv6(bytes(p))[UDP].chksum


# ---- UDP from the stack ------------------------------------------------------------------

def test_ipv4_a_query_gets_a_fake_answer_with_swapped_addresses_and_valid_checksums():
    """An IPv4 UDP query to any address on :53 comes back from that address with a fake A."""
    d = interceptor()
    reply = call(d, udp4(q()))
    p = IP(reply)
    assert (p.src, p.dst, p[UDP].sport, p[UDP].dport) == ("192.0.2.53", "10.0.0.2", 53, 40000)
    assert p[DNS].id == 0x4242 and p[DNS].an[0].rdata == "198.18.128.1" and p[DNS].an[0].ttl == 10
    assert_checksums_valid(reply, 4)
    assert d.lookup("198.18.128.1") == "www.example.com" and d.is_fake("198.18.128.1")
    assert (d.stats().queries, d.stats().answered_fake) == (1, 1)


def test_ipv6_aaaa_query_gets_a_fake_ula_answer_with_valid_checksum():
    """An IPv6 UDP query for AAAA comes back over IPv6 with an address from the ULA /64."""
    d = interceptor()
    reply = call(d, udp6(q(qtype="AAAA")))
    p = IPv6(reply)
    assert (p.src, p.dst, p[UDP].dport) == ("2001:db8::53", "fd00::2", 40001)
    assert p[DNS].an[0].rdata == "fd00:a71a:1c::1"
    assert_checksums_valid(reply, 6)
    assert d.lookup("fd00:a71a:1c::1") == "www.example.com"


def test_aaaa_is_empty_when_ipv6_is_blocked():
    """answer_aaaa=False: AAAA is NOERROR with no records (NODATA), A still fake."""
    d = interceptor(answer_aaaa=False)
    p = IP(call(d, udp4(q(qtype="AAAA"))))
    assert p[DNS].rcode == 0 and p[DNS].ancount == 0
    assert IP(call(d, udp4(q())))[DNS].ancount == 1


def test_malformed_query_gets_formerr_and_responses_are_dropped():
    """Garbage after a DNS ID gets FORMERR; a DNS response sent to :53 is dropped silently."""
    d = interceptor()
    p = IP(call(d, udp4(b"\x12\x34\x01\x00\x00\x07junk")))
    assert p[DNS].id == 0x1234 and p[DNS].rcode == dns.FORMERR
    assert call(d, udp4(bytes(DNS(id=1, qr=1, qd=DNSQR(qname="x"))))) == DROP
    assert call(d, udp4(b"")) == DROP
    assert d.stats().formerr == 1


def test_packets_that_are_not_dns_are_left_to_the_next_handler():
    """UDP to another port, and a fragment (no ports to read), are not ours: None."""
    d = interceptor()
    assert call(d, udp4(q(), dport=443)) is None
    frag = bytearray(udp4(q()))
    frag[6] = 0x20  # MF set
    assert d.handle_udp(memoryview(bytes(frag)), parse(bytes(frag))) is None
    assert d.stats().queries == 0


def test_names_that_cannot_travel_in_connect_are_refused():
    """A name with a dot inside a label gets REFUSED, not a fake address."""
    d = interceptor()
    weird = struct.pack("!HHHHHH", 9, 0x100, 1, 0, 0, 0) + b"\x03a.b\x03com\x00\x00\x01\x00\x01"
    assert IP(call(d, udp4(weird)))[DNS].rcode == dns.REFUSED
    assert len(d.pool) == 0


def test_ptr_of_a_fake_address_names_it_and_localhost_is_loopback():
    """PTR for a fake IP answers its name locally; localhost A/AAAA is loopback."""
    d = interceptor()
    call(d, udp4(q("cdn.example.net")))
    p = IP(call(d, udp4(q("1.128.18.198.in-addr.arpa", "PTR"))))
    assert p[DNS].an[0].rdata == b"cdn.example.net."
    assert IP(call(d, udp4(q("2.128.18.198.in-addr.arpa", "PTR"))))[DNS].rcode == dns.NXDOMAIN
    assert IP(call(d, udp4(q("localhost"))))[DNS].an[0].rdata == "127.0.0.1"
    assert IP(call(d, udp4(q("db.localhost", "AAAA"))))[DNS].an[0].rdata == "::1"


def test_other_types_without_a_tunnel_get_servfail_never_a_local_answer():
    """MX with no open_tunnel configured: SERVFAIL at once."""
    d = interceptor()
    p = IP(call(d, udp4(q("example.com", "MX"))))
    assert p[DNS].rcode == dns.SERVFAIL and d.stats().servfail == 1


def test_edns_opt_comes_back_in_the_udp_answer():
    """A query with EDNS gets OPT (payload 1232) back in its UDP answer."""
    p = IP(call(interceptor(), udp4(q(edns=DNSRROPT(rclass=4096)))))
    assert p[DNS].arcount == 1 and p[DNS].ar[0].rclass == 1232


def test_parse_resolver_forms_and_errors():
    """host:port, [v6]:port and bare hosts parse; junk reads as one line naming the key."""
    assert parse_resolver("9.9.9.9:53") == ("9.9.9.9", 53)
    assert parse_resolver("[2620:fe::fe]:5353") == ("2620:fe::fe", 5353)
    assert parse_resolver("dns.example") == ("dns.example", 53)
    assert parse_resolver("2620:fe::fe") == ("2620:fe::fe", 53)
    for bad in ("9.9.9.9:x", ":53", "[::1", "h:0"):
        with pytest.raises(ValueError, match="dns.resolver"):
            parse_resolver(bad)


def test_build_udp_reply_odd_length_payload_checksum():
    """An odd-length payload still gets a correct UDP checksum (IPv4 and IPv6)."""
    for pkt, ver in ((udp4(b"abc"), 4), (udp6(b"abc"), 6)):
        assert_checksums_valid(build_udp_reply(parse(pkt), b"hello"), ver)


# ---- forwarding through a tunnel to a real DNS-over-TCP server ---------------------------

class LabResolver:
    """The lab's DNS server on loopback, with a tunnel opener that records its targets."""

    def __init__(self):
        self.targets: list[tuple[str, int]] = []
        self.port = 0
        self.max_open = self.open = 0

    async def __aenter__(self):
        self.server, self.udp = await dnsserver.start("127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.udp.close()
        self.server.close()
        await self.server.wait_closed()

    async def open_tunnel(self, host: str, port: int):
        self.targets.append((host, port))
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        return _Counted(r, w, self)


class _Counted:
    """A ByteStream (read/write/aclose) over a StreamReader/Writer pair, counting open ones."""

    def __init__(self, r, w, owner):
        self.r, self.w, self.owner = r, w, owner

    async def read(self, n=65536):
        await asyncio.sleep(0.01)  # keep several queries in flight at once
        return await self.r.read(n)

    async def write(self, data):
        self.w.write(data)
        await self.w.drain()

    async def aclose(self, *, reset=False):
        self.owner.open -= 1
        self.w.close()


def forwarded(d: DnsInterceptor, payload: bytes, sent: list[bytes], n: int = 1, timeout: float = 5):
    """Feed one UDP query and wait (bounded) until *n* packets were sent."""
    async def run():
        assert call(d, udp4(payload)) == DROP
        for _ in range(int(timeout / 0.01)):
            if len(sent) >= n:
                return
            await asyncio.sleep(0.01)
    return run()


def test_mx_is_forwarded_over_tcp_through_the_tunnel_and_sent_back_as_udp():
    """MX goes to the configured resolver through open_tunnel; the reply arrives via send()."""
    async def main():
        async with LabResolver() as lab:
            sent: list[bytes] = []
            d = interceptor(open_tunnel=lab.open_tunnel, send=sent.append,
                            resolver="203.0.113.53:53")
            await forwarded(d, q("origin.test", "MX"), sent)
            await d.aclose()
            return lab, d, sent
    lab, d, sent = asyncio.run(main())
    assert lab.targets == [("203.0.113.53", 53)]
    p = IP(sent[0])
    assert (p.src, p.dst, p[UDP].dport) == ("192.0.2.53", "10.0.0.2", 40000)
    assert p[DNS].id == 0x4242 and p[DNS].an[0].exchange == b"mail.origin.test."
    assert_checksums_valid(sent[0], 4)
    assert (d.stats().forwarded, d.stats().servfail, d.stats().inflight) == (1, 0, 0)


def test_large_forwarded_reply_is_truncated_for_udp_and_whole_over_tcp():
    """A TXT reply over 512 bytes comes back with TC over UDP; serve_tcp gives it whole."""
    async def main():
        async with LabResolver() as lab:
            sent: list[bytes] = []
            d = interceptor(open_tunnel=lab.open_tunnel, send=sent.append)
            await forwarded(d, q("big.origin.test", "TXT"), sent)
            a, b = socket.socketpair()
            a.setblocking(False)
            server = asyncio.create_task(d.serve_tcp(a))
            raw = q("big.origin.test", "TXT")
            loop = asyncio.get_running_loop()
            b.setblocking(False)
            await loop.sock_sendall(b, struct.pack("!H", len(raw)) + raw)
            head = await asyncio.wait_for(loop.sock_recv(b, 2), 5)
            body = b""
            for _ in range(100):
                if len(body) >= struct.unpack("!H", head)[0]:
                    break
                body += await asyncio.wait_for(loop.sock_recv(b, 65536), 5)
            b.close()
            await asyncio.wait_for(server, 5)
            return sent, body
    sent, body = asyncio.run(main())
    udp = IP(sent[0])[DNS]
    assert udp.tc == 1 and udp.ancount == 0 and len(IP(sent[0])[UDP].payload) <= 512
    assert DNS(body).ancount == 8 and DNS(body).tc == 0


def test_forwarding_failures_become_servfail():
    """A tunnel that fails, a resolver that never answers, and a mismatched reply: SERVFAIL."""
    async def refuse(host, port):
        raise ConnectionRefusedError("proxy said no")

    async def silent_server():
        async def handle(r, w):
            await asyncio.sleep(5)
            w.close()
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    async def wrong_id_server():
        async def handle(r, w):
            n = struct.unpack("!H", await r.readexactly(2))[0]
            data = bytearray(await r.readexactly(n))
            data[0] ^= 0xFF
            data[2] |= 0x80
            w.write(struct.pack("!H", len(data)) + data)
            await w.drain()
            w.close()
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    async def main():
        results = []
        for server_factory in (None, silent_server, wrong_id_server):
            sent: list[bytes] = []
            if server_factory is None:
                opener, srv = refuse, None
            else:
                srv = await server_factory()
                port = srv.sockets[0].getsockname()[1]

                async def opener(host, p, port=port):
                    return await asyncio.open_connection("127.0.0.1", port)
            d = interceptor(open_tunnel=opener, send=sent.append, timeout_s=0.3)
            await forwarded(d, q("x.test", "TXT"), sent)
            results.append((IP(sent[0])[DNS].rcode, d.stats().servfail))
            await d.aclose()  # its forwarding task must not outlive it (else GC'd while suspended)
            if srv:
                srv.close()
        return results
    assert asyncio.run(main()) == [(dns.SERVFAIL, 1)] * 3


def test_forwarding_concurrency_is_bounded():
    """With max_inflight=2, never more than two tunnels are open at once; all 6 get answers."""
    async def main():
        async with LabResolver() as lab:
            sent: list[bytes] = []
            d = interceptor(open_tunnel=lab.open_tunnel, send=sent.append, max_inflight=2)
            for i in range(6):
                assert call(d, udp4(q("origin.test", "TXT", qid=i))) == DROP
            for _ in range(500):
                if len(sent) == 6:
                    break
                await asyncio.sleep(0.01)
            return lab, sent
    lab, sent = asyncio.run(main())
    assert len(sent) == 6 and lab.max_open == 2
    assert sorted(IP(p)[DNS].id for p in sent) == list(range(6))
    assert all(IP(p)[DNS].an[0].rdata == [dnsserver.TXT_VALUE] for p in sent)


def test_too_many_pending_forwards_get_servfail_at_once():
    """Beyond max_pending, a forwarded query is answered SERVFAIL immediately (bounded memory)."""
    async def main():
        async with LabResolver() as lab:
            sent: list[bytes] = []
            d = interceptor(open_tunnel=lab.open_tunnel, send=sent.append, max_pending=1)
            first = call(d, udp4(q("origin.test", "TXT", qid=1)))
            second = call(d, udp4(q("origin.test", "TXT", qid=2)))
            await d.aclose()
            return first, second
    first, second = asyncio.run(main())
    assert first == DROP and IP(second)[DNS].rcode == dns.SERVFAIL


def test_forwarding_from_a_stack_thread_uses_the_daemon_loop():
    """handle_udp called from a thread with no loop hands the query to the given loop."""
    import threading

    async def main():
        async with LabResolver() as lab:
            sent: list[bytes] = []
            d = interceptor(open_tunnel=lab.open_tunnel, send=sent.append,
                            loop=asyncio.get_running_loop())
            out = []
            t = threading.Thread(target=lambda: out.append(call(d, udp4(q("origin.test", "MX")))))
            t.start()
            t.join(5)
            for _ in range(500):
                if sent:
                    break
                await asyncio.sleep(0.01)
            return out, sent
    out, sent = asyncio.run(main())
    assert out == [DROP] and IP(sent[0])[DNS].an[0].preference == 10


# ---- DNS over TCP (flows to port 53 at the dispatcher) ------------------------------------

def test_serve_tcp_answers_pipelined_queries_over_loopback():
    """A and MX pipelined on one TCP connection, plus FORMERR, then EOF closes the server side."""
    async def main():
        async with LabResolver() as lab:
            d = interceptor(open_tunnel=lab.open_tunnel)
            listener = socket.create_server(("127.0.0.1", 0))
            listener.setblocking(False)
            loop = asyncio.get_running_loop()

            async def accept_one():
                s, _ = await loop.sock_accept(listener)
                s.setblocking(False)
                await d.serve_tcp(s)
            server = asyncio.create_task(accept_one())
            r, w = await asyncio.open_connection(*listener.getsockname())
            msgs = [q("www.origin.test", qid=1), q("origin.test", "MX", qid=2), b"\x00\x03\x01"]
            w.write(b"".join(struct.pack("!H", len(m)) + m for m in msgs))
            await w.drain()
            replies = []
            for _ in msgs:
                n = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), 5))[0]
                replies.append(DNS(await asyncio.wait_for(r.readexactly(n), 5)))
            w.close()
            await asyncio.wait_for(server, 5)
            listener.close()
            return d, replies
    d, (a, mx, bad) = asyncio.run(main())
    assert a.an[0].rdata == "198.18.128.1" and d.lookup("198.18.128.1") == "www.origin.test"
    assert mx.id == 2 and mx.an[0].exchange == b"mail.origin.test."
    assert bad.id == 3 and bad.rcode == dns.FORMERR
    assert d.stats().queries == 3


def test_serve_tcp_uses_bytes_the_dispatcher_already_read():
    """The sniffed first bytes are the start of the first query."""
    async def main():
        d = interceptor()
        a, b = socket.socketpair()
        a.setblocking(False)
        raw = q("pre.read.example")
        framed = struct.pack("!H", len(raw)) + raw
        task = asyncio.create_task(d.serve_tcp(a, first=framed[:5]))
        b.sendall(framed[5:])
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(b, 4096), 5)
        b.close()
        await asyncio.wait_for(task, 5)
        return DNS(data[2:])
    assert asyncio.run(main()).an[0].rdata == "198.18.128.1"


def test_handle_udp_sits_first_in_the_stack_policy_chain():
    """default_policy(dns=handle_udp): DNS is answered, a forwarded query is counted as the
    DNS handler's (not dropped as other UDP), QUIC is still rejected."""
    from atlantic.interceptor.policy import default_policy

    d = interceptor()
    chain = default_policy(dns=d.handle_udp)
    assert IP(call(chain, udp4(q())))[DNS].an[0].rdata == "198.18.128.1"
    assert IP(call(chain, udp4(b"quic", dport=443))).proto == 1  # ICMP port unreachable
    assert chain.counters()["dns"] == 1


def _raw_query(labels: list[bytes], qtype: int = 1, qid: int = 0x5151) -> bytes:
    """A query whose name is built from raw label bytes (anything a hostile process sends)."""
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


@pytest.mark.parametrize("labels", [
    [b"a\x01\x7f\xff", b"localhost"],                       # unprintable bytes in a label
    [b"\\" * 60, b"\\" * 60, b"\\" * 60, b"\\" * 60, b"localhost"],  # > 255 bytes once escaped
    [b"a.b", b"localhost"],                                 # a dot inside a label
])
def test_hostile_localhost_names_get_refused_not_a_traceback(labels, caplog):
    """Names under .localhost that are no hostname get REFUSED over UDP, like any such name."""
    d = interceptor()
    reply = call(d, udp4(_raw_query(labels)))
    assert reply is not None and reply != b""
    assert DNS(bytes(IP(reply)[UDP].payload)).rcode == dns.REFUSED
    assert d.stats().internal_errors == 0 and "Traceback" not in caplog.text


def test_hostile_localhost_name_over_tcp_keeps_the_connection_serving():
    """Over TCP a hostile .localhost name is answered (REFUSED) and the next query still works."""
    async def main():
        d = interceptor()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        server = asyncio.create_task(d.serve_tcp(a))
        replies = []
        for raw in (_raw_query([b"\x00\x01\x02", b"localhost"]), q("www.example.com")):
            await loop.sock_sendall(b, struct.pack("!H", len(raw)) + raw)
            n = struct.unpack("!H", await loop.sock_recv(b, 2))[0]
            data = b""
            while len(data) < n:
                data += await loop.sock_recv(b, n - len(data))
            replies.append(DNS(data))
        b.close()
        await asyncio.wait_for(server, 5)
        return replies
    bad, good = asyncio.run(main())
    assert bad.rcode == dns.REFUSED
    assert good.rcode == dns.NOERROR and good.an[0].rdata == "198.18.128.1"


def test_a_bug_in_answering_is_servfail_and_one_log_line(caplog, monkeypatch):
    """Whatever goes wrong inside the decision costs that query a SERVFAIL, logged once a minute."""
    d = interceptor()
    monkeypatch.setattr(d, "_answer_address", lambda q: 1 / 0)
    replies = [call(d, udp4(q(f"n{i}.example.com"))) for i in range(5)]
    assert all(DNS(bytes(IP(r)[UDP].payload)).rcode == dns.SERVFAIL for r in replies)
    assert d.stats().internal_errors == 5
    assert caplog.text.count("cannot answer") == 1 and "Traceback" not in caplog.text
