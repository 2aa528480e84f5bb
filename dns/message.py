"""DNS wire format (RFC 1035, EDNS0 RFC 6891): parse a query, build the replies Atlantic sends.

Pure functions over bytes. A query is parsed once into a `Query`: its header, the one
question (raw bytes kept, so the answer echoes the name's exact case), and the EDNS0
OPT record if there is one. Replies are built from it:

- `build_answer(query, records)`: NOERROR with answer records (owner names compressed
  against the question and each other; rdata is written as given, never compressed,
  which RFC 3597 requires for types other than RFC 1035's);
- `build_error(query, rcode)`: FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, with the
  question echoed when it was readable;
- `formerr_for(raw)`: FORMERR for bytes that are not even a parseable query;
- `truncate(reply, limit)`: a too-long reply for UDP becomes header + question + OPT, TC set.

EDNS0: a query with OPT gets OPT back (our payload size, version 0, the DO bit copied as
RFC 3225 asks); a query with an EDNS version above 0 gets BADVERS.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
HEADER_LEN = 12

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_PTR = 1, 2, 5, 6, 12
TYPE_MX, TYPE_TXT, TYPE_AAAA, TYPE_SRV, TYPE_OPT = 15, 16, 28, 33, 41
TYPE_HTTPS, TYPE_ANY = 65, 255
CLASS_IN = 1

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode: upper 8 bits in OPT, lower 4 in the header

OPCODE_QUERY = 0
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD, FLAG_RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
EDNS_DO = 0x8000

UDP_PLAIN_LIMIT = 512  # without EDNS0
EDNS_PAYLOAD = 1232  # what we advertise and cap at: the DNS flag day 2020 value
MAX_NAME_LEN = 255
MAX_POINTERS = 64  # bounded decompression; a longer chain is a loop or an attack


class DnsFormatError(ValueError):
    """The bytes are not a well-formed DNS message (the sender's fault: FORMERR)."""


@dataclass(frozen=True, slots=True)
class Edns:
    """The EDNS0 OPT pseudo-record of a message."""

    payload: int  # the sender's UDP payload size
    version: int
    do: bool  # DNSSEC OK
    ext_rcode: int = 0


@dataclass(frozen=True, slots=True)
class Query:
    """One parsed query: enough to answer it, forward it, or refuse it."""

    id: int
    flags: int
    qname: str  # lower case, no trailing dot, labels joined by "." ("" for the root)
    qtype: int
    qclass: int
    question: bytes  # the question section as received (name case preserved)
    edns: Edns | None

    @property
    def opcode(self) -> int:
        """The query's opcode (0 = standard query)."""
        return (self.flags >> 11) & 0xF

    @property
    def udp_limit(self) -> int:
        """Largest reply that may go back over UDP for this query."""
        if self.edns is None:
            return UDP_PLAIN_LIMIT
        return max(UDP_PLAIN_LIMIT, min(self.edns.payload, EDNS_PAYLOAD))


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record to put in an answer; ``rdata`` is already in wire format."""

    name: str  # owner name, text form
    rtype: int
    ttl: int
    rdata: bytes
    rclass: int = CLASS_IN


# ---- parsing ------------------------------------------------------------------------

def read_name(buf: bytes, off: int) -> tuple[bytes, int]:
    """Decode the (possibly compressed) name at *off*; return (wire labels, offset after it).

    The result is the uncompressed name in wire form (length-prefixed labels ending in a
    zero byte). Pointers must point backwards, at most MAX_POINTERS of them.
    """
    out = bytearray()
    end = -1
    pos = off
    jumps = 0
    while True:
        if pos >= len(buf):
            raise DnsFormatError("name runs past the end of the message")
        n = buf[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(buf):
                raise DnsFormatError("truncated compression pointer")
            target = ((n & 0x3F) << 8) | buf[pos + 1]
            if end < 0:
                end = pos + 2
            jumps += 1
            if target >= pos or jumps > MAX_POINTERS:
                raise DnsFormatError("compression pointer loop")
            pos = target
            continue
        if n & 0xC0:
            raise DnsFormatError("unsupported label type")
        if n == 0:
            out.append(0)
            if len(out) > MAX_NAME_LEN:
                raise DnsFormatError("name longer than 255 bytes")
            return bytes(out), (pos + 1 if end < 0 else end)
        if pos + 1 + n > len(buf):
            raise DnsFormatError("label runs past the end of the message")
        out += buf[pos : pos + 1 + n]
        if len(out) > MAX_NAME_LEN:
            raise DnsFormatError("name longer than 255 bytes")
        pos += 1 + n


_PLAIN = bytes(b for b in range(33, 127) if b not in (0x2E, 0x5C))  # printable, not "." or "\\"


def name_to_text(wire: bytes) -> str:
    """Text form of a wire name: labels lower-cased and joined by dots, no trailing dot.

    Bytes outside printable ASCII and dots inside a label are escaped as ``\\DDD``
    (as dig prints them), so such a name never passes `is_hostname`.
    """
    labels = []
    pos = 0
    while wire[pos]:
        n = wire[pos]
        raw = wire[pos + 1 : pos + 1 + n].lower()
        if not raw.translate(None, _PLAIN):
            labels.append(raw.decode("ascii"))
        else:
            labels.append("".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in raw))
        pos += 1 + n
    return ".".join(labels)


def text_to_wire(name: str) -> bytes:
    """Wire form of a text name (``"a.b"`` or ``"a.b."``; ``""`` or ``"."`` is the root)."""
    name = name.rstrip(".")
    out = bytearray()
    if name:
        for label in name.split("."):
            raw = label.encode("ascii")
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad label in DNS name {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > MAX_NAME_LEN:
        raise ValueError(f"DNS name longer than 255 bytes: {name[:40]!r}...")
    return bytes(out)


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def is_hostname(name: str) -> bool:
    """True if *name* (text form) can travel as the host of ``CONNECT host:port``."""
    if not name or len(name) > 253:
        return False
    return all(label and set(label) <= _HOST_CHARS for label in name.split("."))


def _skip_record(buf: bytes, off: int) -> tuple[int, int, int, int, int]:
    """Skip one RR; return (offset after it, type, class, ttl, rdata offset)."""
    _, off = read_name(buf, off)
    if off + 10 > len(buf):
        raise DnsFormatError("truncated resource record")
    rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
    rdata = off + 10
    if rdata + rdlen > len(buf):
        raise DnsFormatError("rdata runs past the end of the message")
    return rdata + rdlen, rtype, rclass, ttl, rdata


def parse_query(data: bytes | bytearray | memoryview) -> Query:
    """Parse a DNS query; raise `DnsFormatError` (answer FORMERR) if it is malformed.

    Exactly one question is required. Answer and authority sections are skipped; the
    additional section is searched for one OPT record (two OPTs are a FORMERR).
    """
    buf = bytes(data)
    if len(buf) < HEADER_LEN:
        raise DnsFormatError("shorter than a DNS header")
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(buf)
    if flags & FLAG_QR:
        raise DnsFormatError("a response, not a query")
    if qd != 1:
        raise DnsFormatError(f"{qd} questions (exactly one expected)")
    wire, off = read_name(buf, HEADER_LEN)
    if off + 4 > len(buf):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", buf, off)
    # rebuilt uncompressed (case kept), so the echoed question never holds a pointer
    question = wire + buf[off : off + 4]
    off += 4
    edns = None
    for i in range(an + ns + ar):
        start = off
        off, rtype, rclass, ttl, rdata = _skip_record(buf, off)
        if i < an + ns or rtype != TYPE_OPT:
            continue
        if edns is not None or buf[start] != 0:
            raise DnsFormatError("OPT record repeated or not owned by the root")
        edns = Edns(payload=rclass, version=(ttl >> 16) & 0xFF, do=bool(ttl & EDNS_DO),
                    ext_rcode=ttl >> 24)
    return Query(qid, flags, name_to_text(wire), qtype, qclass, question, edns)


def parse_reply_header(data: bytes | bytearray | memoryview) -> tuple[int, int, bytes]:
    """(id, rcode, question bytes) of a reply; `DnsFormatError` if it is not a reply.

    Used to check that a reply relayed from upstream answers the query we sent.
    """
    buf = bytes(data)
    if len(buf) < HEADER_LEN:
        raise DnsFormatError("reply shorter than a DNS header")
    qid, flags, qd, _an, _ns, _ar = HEADER.unpack_from(buf)
    if not flags & FLAG_QR:
        raise DnsFormatError("not a reply")
    question = b""
    if qd == 1:
        _, off = read_name(buf, HEADER_LEN)
        if off + 4 > len(buf):
            raise DnsFormatError("truncated question in reply")
        question = buf[HEADER_LEN : off + 4]
    return qid, flags & 0xF, question


# ---- building -----------------------------------------------------------------------

class _Writer:
    """Appends names with compression (RFC 1035 4.1.4) against what is already written."""

    def __init__(self, head: bytes) -> None:
        self.buf = bytearray(head)
        self.seen: dict[bytes, int] = {}  # lower-cased wire suffix -> offset

    def remember(self, wire: bytes, off: int) -> None:
        """Register every suffix of *wire*, written uncompressed at *off*, for later pointers."""
        pos = 0
        while wire[pos] and off + pos < 0x4000:
            self.seen.setdefault(wire[pos:].lower(), off + pos)
            pos += 1 + wire[pos]

    def name(self, wire: bytes) -> None:
        """Write *wire*, replacing its longest already-written suffix by a pointer."""
        pos = 0
        start = len(self.buf)
        while wire[pos]:
            ptr = self.seen.get(wire[pos:].lower())
            if ptr is not None:
                self.buf += wire[:pos] + struct.pack("!H", 0xC000 | ptr)
                break
            pos += 1 + wire[pos]
        else:
            self.buf += wire
        # new suffixes (those before the pointer) become targets too
        p = 0
        while p < pos and start + p < 0x4000:
            self.seen.setdefault(wire[p:].lower(), start + p)
            p += 1 + wire[p]


def _opt_record(query: Query, ext_rcode: int = 0) -> bytes:
    ttl = (ext_rcode << 24) | (EDNS_DO if query.edns and query.edns.do else 0)
    return b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, ttl, 0)


def _reply_flags(query: Query, rcode: int) -> int:
    # opcode and RD echoed; recursion available: we answer every name
    return FLAG_QR | (query.flags & (0x7800 | FLAG_RD)) | FLAG_RA | (rcode & 0xF)


def build_answer(query: Query, records: Iterable[Record] = (), rcode: int = NOERROR,
                 authority: Iterable[Record] = ()) -> bytes:
    """A reply to *query* with *records* as answers (none: NODATA) and *authority* (an SOA
    there lets resolvers cache a negative answer, RFC 2308)."""
    if query.edns is not None and query.edns.version > 0:
        return build_error(query, BADVERS)
    recs, auth = list(records), list(authority)
    ar = 1 if query.edns is not None else 0
    w = _Writer(HEADER.pack(query.id, _reply_flags(query, rcode), 1, len(recs), len(auth), ar))
    w.buf += query.question
    w.remember(query.question[:-4], HEADER_LEN)
    for r in recs + auth:
        w.name(text_to_wire(r.name))
        w.buf += struct.pack("!HHIH", r.rtype, r.rclass, r.ttl, len(r.rdata)) + r.rdata
    if ar:
        w.buf += _opt_record(query)
    return bytes(w.buf)


def build_error(query: Query, rcode: int) -> bytes:
    """An error reply (FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS) echoing the question."""
    ar = 1 if query.edns is not None else 0
    head = HEADER.pack(query.id, _reply_flags(query, rcode), 1, 0, 0, ar)
    return head + query.question + (_opt_record(query, rcode >> 4) if ar else b"")


def formerr_for(data: bytes | bytearray | memoryview) -> bytes | None:
    """FORMERR for bytes that failed `parse_query`: header only, the sender's ID echoed.

    None for what must not be answered at all: fewer than two bytes (no ID to echo),
    or a message with QR set (answering responses invites reply loops).
    """
    if len(data) < 2:
        return None
    qid = (data[0] << 8) | data[1]
    flags = (data[2] << 8) | data[3] if len(data) >= 4 else 0
    if flags & FLAG_QR:
        return None
    return HEADER.pack(qid, FLAG_QR | (flags & (0x7800 | FLAG_RD)) | FLAG_RA | FORMERR, 0, 0, 0, 0)


def truncate(reply: bytes, limit: int) -> bytes:
    """*reply* if it fits in *limit* bytes, else header + question (+ OPT) with TC set.

    The client then retries over TCP (RFC 7766), which Atlantic also answers.
    """
    if len(reply) <= limit:
        return reply
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(reply)
    off = HEADER_LEN
    if qd == 1:
        _, off = read_name(reply, HEADER_LEN)
        off += 4
    opt = b""
    if ar:  # keep the OPT (EDNS) record: the client needs to see we speak EDNS
        pos = off
        for _ in range(an + ns + ar):
            start = pos
            pos, rtype, *_ = _skip_record(reply, pos)
            if rtype == TYPE_OPT:
                opt = reply[start:pos]
    return (HEADER.pack(qid, flags | FLAG_TC, 1 if qd == 1 else 0, 0, 0, 1 if opt else 0)
            + reply[HEADER_LEN:off] + opt)


# ---- rdata helpers (for answers and the lab's DNS server) ---------------------------

def a_rdata(text: str) -> bytes:
    """rdata of an A record from dotted-quad text."""
    return bytes(int(p) for p in text.split("."))


def mx_rdata(preference: int, exchange: str) -> bytes:
    """rdata of an MX record (exchange name written uncompressed)."""
    return struct.pack("!H", preference) + text_to_wire(exchange)


def txt_rdata(*strings: bytes) -> bytes:
    """rdata of a TXT record: one length-prefixed character-string per argument."""
    out = bytearray()
    for s in strings:
        if len(s) > 255:
            raise ValueError("TXT character-string longer than 255 bytes")
        out.append(len(s))
        out += s
    return bytes(out)


def srv_rdata(priority: int, weight: int, port: int, target: str) -> bytes:
    """rdata of an SRV record (target never compressed, RFC 2782)."""
    return struct.pack("!HHH", priority, weight, port) + text_to_wire(target)


def soa_rdata(mname: str, rname: str, serial: int, minimum: int) -> bytes:
    """rdata of an SOA record with short refresh/retry/expire timers."""
    return (text_to_wire(mname) + text_to_wire(rname)
            + struct.pack("!IIIII", serial, 3600, 600, 86400, minimum))
