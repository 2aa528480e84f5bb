"""Re-resolving the proxy's name over the marked path (client/repin.py, system/marked_dns.py)
in throwaway namespaces (root): the client namespace is sealed by the kill switch, its
resolv.conf names only systemd-resolved's stub, resolved's uplink file names a tiny DNS
server in the peer namespace. The query leaves marked (an unmarked one is refused), the
answer moves the pin: address maps, kill switch endpoint, pins file, one info line."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import threading

import pytest
from atlantic.client.repin import Repin
from atlantic.dns import message as dns
from atlantic.system import killswitch
from atlantic.system.marked_dns import MarkedDnsError, read_resolvers, resolve_marked
from test_leak_netns import (
    MARK,
    PEER4,
    inside,
    listen,
    tcp_connect,
    tcp_refused,
    veth_pair,
)

pytestmark = pytest.mark.lab_local  # root: namespaces and nftables

HOST = "proxy.example.test"
OLD = "192.0.2.50"  # where the name pointed on the previous network
PORT = 3128


class TinyDns:
    """A UDP DNS server in the peer namespace: HOST -> PEER4, everything else NXDOMAIN."""

    def __init__(self, ns: str) -> None:
        with inside(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((PEER4, 53))
        self.sock.settimeout(0.1)
        self.queries: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            q = dns.parse_query(data)
            self.queries.append((q.qname, q.qtype))
            if q.qname == HOST and q.qtype == dns.TYPE_A:
                reply = dns.build_answer(q, [dns.Record(q.qname, dns.TYPE_A, 60, dns.a_rdata(PEER4))])
            else:
                reply = dns.build_answer(q, rcode=dns.NOERROR if q.qname == HOST else dns.NXDOMAIN)
            self.sock.sendto(reply, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def ruleset(pinned: dict[str, str], resolvers: tuple[str, ...]) -> killswitch.KillSwitchConfig:
    return killswitch.KillSwitchConfig(tun="atl0", fwmark=MARK, upstream=(killswitch.Endpoint(pinned[HOST], PORT),),
                                       resolvers=resolvers, forward=False)


def test_a_moved_name_is_looked_up_marked_and_re_pinned(tmp_path, caplog):
    """Stub-only resolv.conf -> resolved's uplink server; the kill switch first lets marked
    DNS reach it, the marked query is answered, the pin moves from OLD to PEER4 everywhere;
    a second round with the same answer changes nothing."""
    etc, resolved = tmp_path / "resolv.conf", tmp_path / "resolved.conf"
    etc.write_text("nameserver 127.0.0.53\noptions edns0\n")
    resolved.write_text(f"nameserver {PEER4}\n")
    pool_map, monitor_map = {HOST: OLD}, {HOST: OLD}
    drained, remembered = [], []

    async def seal(cfg: killswitch.KillSwitchConfig) -> None:
        killswitch.apply(cfg)  # on this thread: it is the one inside the client namespace

    repin = Repin(hosts=(HOST,), pinned={HOST: OLD}, maps=[pool_map, monitor_map], mark=MARK, render=ruleset,
                  seal=seal, remember=remembered.append, drain=lambda: drained.append(1),
                  read=lambda: read_resolvers(etc, resolved))
    with veth_pair() as pair:
        server = TinyDns(pair.peer)
        with inside(pair.peer):
            proxy = listen((PEER4, PORT))
        try:
            with inside(pair.client):
                killswitch.apply(ruleset({HOST: OLD}, ()))
                with pytest.raises(MarkedDnsError):  # sealed, and no resolver allowed yet: refused
                    asyncio.run(resolve_marked(HOST, (PEER4,), mark=MARK, timeout=1.0))
                assert server.queries == []
                with caplog.at_level(logging.INFO, logger="atlantic"):
                    asyncio.run(repin.run())
                text = subprocess.run(["nft", "list", "table", "inet", "atlantic"], capture_output=True,
                                      text=True, check=True).stdout
                tcp_connect((PEER4, PORT), mark=MARK).close()  # the new endpoint is let through
                tcp_refused((PEER4, PORT))  # unmarked: still refused
                with pytest.raises(MarkedDnsError):  # unmarked DNS to the same resolver: refused
                    asyncio.run(resolve_marked(HOST, (PEER4,), mark=None, timeout=1.0))
                asyncio.run(repin.run())  # same answer again: nothing moves
        finally:
            proxy.close()
            server.close()
    assert server.queries == [(HOST, dns.TYPE_A), (HOST, dns.TYPE_A)]
    assert repin.resolvers == (PEER4,)
    assert f"meta mark 0x00002026 ip daddr {PEER4} udp dport 53 accept" in text  # nft lists a one-element set bare
    assert f"ip daddr {PEER4} tcp dport {PORT} accept" in text and OLD not in text
    assert pool_map == monitor_map == repin.pinned == {HOST: PEER4}
    assert drained == [1] and remembered == [{HOST: PEER4}] and repin.changes == 1
    lines = [r.getMessage() for r in caplog.records if "proxy address changed" in r.getMessage()]
    assert lines == [(f"proxy address changed after the network change: {HOST} moved from {OLD} to {PEER4} "
                      f"(asked {PEER4} over the marked path)")]
