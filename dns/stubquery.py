"""A stub resolver's messages, pure: one A or AAAA query out, the addresses of its answer in,
and which resolvers a machine's resolv.conf files name.

The daemon looks up only one kind of name itself: its proxy's, again after a network
change (``atlantic.system.marked_dns`` sends the bytes, marked so that they bypass the
capture). Everything else the machine resolves goes through the interceptor.

- ``build_query(name, qtype, qid)``: RD set, EDNS0 with our payload size;
- ``parse_addresses(reply, qid, name, qtype)``: the addresses at the end of the answer's
  CNAME chain, or ``StubAnswerError`` saying why there are none;
- ``choose_resolvers(etc, resolved)``: the nameservers of ``/etc/resolv.conf``, unless they
  are loopback stubs (systemd-resolved's 127.0.0.53): then the uplink's servers from
  ``/run/systemd/resolve/resolv.conf``. A loopback address is never returned: a query
  sent there would reach a stub that asks unmarked, and the kill switch refuses that.
"""

from __future__ import annotations

import ipaddress
import struct

from atlantic.dns.message import (
    CLASS_IN,
    EDNS_PAYLOAD,
    FLAG_QR,
    FLAG_RD,
    FLAG_TC,
    HEADER,
    HEADER_LEN,
    NOERROR,
    TYPE_A,
    TYPE_CNAME,
    TYPE_OPT,
    DnsFormatError,
    name_to_text,
    read_name,
    text_to_wire,
)

__all__ = ["StubAnswerError", "build_query", "choose_resolvers", "is_truncated", "nameservers",
           "parse_addresses"]

MAX_RESOLVERS = 3  # glibc's MAXNS: what resolv.conf users get
_RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class StubAnswerError(Exception):
    """A well-formed reply that holds no address (NXDOMAIN, SERVFAIL, no record): one line."""


def build_query(name: str, qtype: int, qid: int) -> bytes:
    """An A or AAAA query for ``name`` with id ``qid``, recursion desired, EDNS0 (1232)."""
    opt = b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, 0, 0)
    return (HEADER.pack(qid & 0xFFFF, FLAG_RD, 1, 0, 0, 1) + text_to_wire(name.rstrip("."))
            + struct.pack("!HH", qtype, CLASS_IN) + opt)


def is_truncated(reply: bytes) -> bool:
    """True when a UDP reply has TC set (ask again over TCP)."""
    return len(reply) >= HEADER_LEN and bool(HEADER.unpack_from(reply)[1] & FLAG_TC)


def _records(buf: bytes, off: int, count: int):
    for _ in range(count):
        wire, off = read_name(buf, off)
        if off + 10 > len(buf):
            raise DnsFormatError("truncated record")
        rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
        off += 10
        if off + rdlen > len(buf):
            raise DnsFormatError("rdata runs past the end of the message")
        yield name_to_text(wire), rtype, rclass, off, rdlen
        off += rdlen


def parse_addresses(reply: bytes, qid: int, name: str, qtype: int) -> list[str]:
    """The addresses answering ``name``/``qtype`` in ``reply`` (CNAMEs followed, in order).

    ``DnsFormatError``: not a well-formed reply to this query (wrong id, question or shape:
    ignore it, as a stray or spoofed datagram). ``StubAnswerError``: a real answer without
    an address.
    """
    buf = bytes(reply)
    if len(buf) < HEADER_LEN:
        raise DnsFormatError("reply shorter than a DNS header")
    rid, flags, qd, an, _ns, _ar = HEADER.unpack_from(buf)
    if rid != qid or not flags & FLAG_QR or qd != 1:
        raise DnsFormatError("not a reply to our query")
    wire, off = read_name(buf, HEADER_LEN)
    if off + 4 > len(buf) or struct.unpack_from("!HH", buf, off) != (qtype, CLASS_IN):
        raise DnsFormatError("the reply's question is not ours")
    wanted = name.rstrip(".").lower()
    if name_to_text(wire) != wanted:
        raise DnsFormatError("the reply's question is not ours")
    rcode = flags & 0xF
    if rcode != NOERROR:
        raise StubAnswerError(f"{wanted}: {_RCODES.get(rcode, f'rcode {rcode}')}")
    owners, found = {wanted}, []
    size = 4 if qtype == TYPE_A else 16
    for owner, rtype, rclass, at, rdlen in _records(buf, off + 4, an):
        if owner not in owners or rclass != CLASS_IN:
            continue
        if rtype == TYPE_CNAME:
            owners.add(name_to_text(read_name(buf, at)[0]))
        elif rtype == qtype and rdlen == size:
            found.append(str(ipaddress.ip_address(buf[at:at + rdlen])))
    if not found:
        raise StubAnswerError(f"{wanted}: no {'A' if qtype == TYPE_A else 'AAAA'} record")
    return found


def nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order (scope ids and junk dropped)."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = str(ipaddress.ip_address(parts[1].split("%")[0]))
            except ValueError:
                continue
            if addr not in out:
                out.append(addr)
    return out


def choose_resolvers(etc: str, resolved: str | None) -> tuple[str, ...]:
    """The network's own resolvers (at most three), never a loopback address.

    ``etc``: /etc/resolv.conf's text; ``resolved``: /run/systemd/resolve/resolv.conf's
    (None when it does not exist). Empty when neither names a usable server.
    """
    listed = nameservers(etc)
    remote = [a for a in listed if not ipaddress.ip_address(a).is_loopback]
    if not remote and resolved is not None:
        remote = [a for a in nameservers(resolved) if not ipaddress.ip_address(a).is_loopback]
    return tuple(remote[:MAX_RESOLVERS])

