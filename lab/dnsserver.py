"""A tiny authoritative DNS server for the lab (UDP and TCP), run in the origin namespace.

It stands in for the public resolver (``dns.resolver``) that Atlantic forwards
non-address queries to, through the upstream proxy: a test can then see an MX or TXT
answer that only this server knows come back through Squid. The zone is fixed
(`ZONE`); names outside it get NXDOMAIN, other types of known names NODATA, both with
the zone's SOA. `PROXY_ONLY_NAMES` are in the zone too (as A records), for tests that
resolve them through the forwarded path.

    python -m atlantic.lab.dnsserver --listen 10.77.3.2 --port 53
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct

from atlantic.dns import message as dns
from atlantic.lab.topology import ORIGIN_NAME, PROXY_ONLY_NAMES, host_ip

TTL = 60
ORIGIN_IP = host_ip("origin")
SOA = dns.Record(ORIGIN_NAME, dns.TYPE_SOA, TTL,
                 dns.soa_rdata(f"ns.{ORIGIN_NAME}", f"hostmaster.{ORIGIN_NAME}", 2026, TTL))
TXT_VALUE = b"atlantic-lab-dns"

# (name, type) -> rdata list; names are lower case without the trailing dot
ZONE: dict[tuple[str, int], list[bytes]] = {
    (ORIGIN_NAME, dns.TYPE_A): [dns.a_rdata(ORIGIN_IP)],
    (ORIGIN_NAME, dns.TYPE_MX): [dns.mx_rdata(10, f"mail.{ORIGIN_NAME}")],
    (ORIGIN_NAME, dns.TYPE_TXT): [dns.txt_rdata(TXT_VALUE)],
    (f"mail.{ORIGIN_NAME}", dns.TYPE_A): [dns.a_rdata(ORIGIN_IP)],
    (f"_http._tcp.{ORIGIN_NAME}", dns.TYPE_SRV): [dns.srv_rdata(0, 0, 80, ORIGIN_NAME)],
    (f"big.{ORIGIN_NAME}", dns.TYPE_TXT): [dns.txt_rdata(bytes([97 + i % 26]) * 200)
                                            for i in range(8)],  # > 1232 bytes: TC over UDP
    **{(n, dns.TYPE_A): [dns.a_rdata(ORIGIN_IP)] for n in PROXY_ONLY_NAMES},
}
_NAMES = {name for name, _ in ZONE}


def answer(data: bytes) -> bytes | None:
    """The reply to one query message, from `ZONE` (None: not worth answering)."""
    try:
        q = dns.parse_query(data)
    except dns.DnsFormatError:
        return dns.formerr_for(data)
    if q.opcode != dns.OPCODE_QUERY or q.qclass != dns.CLASS_IN:
        return dns.build_error(q, dns.NOTIMP)
    rdatas = ZONE.get((q.qname, q.qtype))
    if rdatas:
        return dns.build_answer(q, [dns.Record(q.qname, q.qtype, TTL, r) for r in rdatas])
    rcode = dns.NOERROR if q.qname in _NAMES else dns.NXDOMAIN
    return dns.build_answer(q, rcode=rcode, authority=[SOA])


class _Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply = answer(data)
        if reply is not None:
            try:
                limit = dns.parse_query(data).udp_limit
            except dns.DnsFormatError:
                limit = dns.UDP_PLAIN_LIMIT
            self.transport.sendto(dns.truncate(reply, limit), addr)


async def _tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        for _ in range(1000):  # bounded per connection
            head = await asyncio.wait_for(reader.readexactly(2), 10)
            data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), 10)
            reply = answer(data)
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, OSError):
        pass
    finally:
        writer.close()


async def start(host: str, port: int) -> tuple[asyncio.Server, asyncio.DatagramTransport]:
    """Listen on *host*:*port* over TCP and UDP; the caller closes both."""
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(_tcp, host, port)
    udp, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(host, port))
    return server, udp


async def _main(host: str, port: int) -> None:
    server, udp = await start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    udp.close()
    server.close()


def main() -> None:
    """Command line: ``--listen ADDR --port N``."""
    ap = argparse.ArgumentParser(prog="atlantic.lab.dnsserver")
    ap.add_argument("--listen", default=ORIGIN_IP)
    ap.add_argument("--port", type=int, default=53)
    args = ap.parse_args()
    asyncio.run(_main(args.listen, args.port))


if __name__ == "__main__":
    main()
