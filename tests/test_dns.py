"""DNS wire format: query parsing, answers, errors, compression, EDNS0, truncation (pure)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRROPT

from atlantic.dns import message as dns


def query(name="www.example.com", qtype="A", qid=0x1234, edns=None, **kw) -> bytes:
    """A scapy-built query; *edns* is an OPT record or None."""
    return bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype), ar=edns or [], **kw))


def header(qid, flags, qd, an, ns, ar) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QNAME_WIRE = b"\x03www\x07example\x03com\x00"


# ---- parsing -------------------------------------------------------------------------

def test_parse_query_reads_header_question_and_lowercases_the_name():
    """parse_query keeps id/flags, lower-cases qname, and keeps the question bytes as sent."""
    q = dns.parse_query(query("WWW.Example.COM", "AAAA"))
    assert (q.id, q.qname, q.qtype, q.qclass, q.opcode) == (0x1234, "www.example.com", 28, 1, 0)
    assert q.flags & dns.FLAG_RD
    assert q.question == b"\x03WWW\x07Example\x03COM\x00\x00\x1c\x00\x01"
    assert q.edns is None and q.udp_limit == 512


def test_parse_query_reads_edns_payload_version_and_do():
    """The OPT record gives payload size, version and DO; udp_limit is capped at 1232."""
    q = dns.parse_query(query(edns=DNSRROPT(rclass=4096, z=0x8000)))
    assert q.edns == dns.Edns(payload=4096, version=0, do=True)
    assert q.udp_limit == 1232
    small = dns.parse_query(query(edns=DNSRROPT(rclass=100, z=0)))
    assert small.udp_limit == 512 and not small.edns.do


def test_read_name_follows_a_backward_pointer_and_returns_the_end_after_it():
    """A label followed by a pointer decodes to the full name; parsing resumes after the pointer."""
    msg = header(1, 0, 1, 0, 0, 0) + b"\x01a\x00" + b"\x00\x01\x00\x01"
    assert dns.parse_query(msg).qname == "a"
    wire, end = dns.read_name(msg + b"\x01b\xc0\x0c", len(msg))
    assert wire == b"\x01b\x01a\x00" and end == len(msg) + 4


@pytest.mark.parametrize("raw, why", [
    (b"\x12\x34\x01", "short header"),
    (header(1, 0, 0, 0, 0, 0), "no question"),
    (header(1, 0, 2, 0, 0, 0) + (QNAME_WIRE + b"\x00\x01\x00\x01") * 2, "two questions"),
    (header(1, 0x8000, 1, 0, 0, 0) + QNAME_WIRE + b"\x00\x01\x00\x01", "a response"),
    (header(1, 0, 1, 0, 0, 0) + b"\x03www\x07exa", "name cut short"),
    (header(1, 0, 1, 0, 0, 0) + QNAME_WIRE + b"\x00\x01", "question cut short"),
    (header(1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", "pointer to itself"),
    (header(1, 0, 1, 0, 0, 0) + b"\xc0\x20\x00\x01\x00\x01" + bytes(20), "forward pointer"),
    (header(1, 0, 1, 0, 0, 0) + b"\x40abc\x00\x00\x01\x00\x01", "extended label type"),
    (header(1, 0, 1, 0, 0, 0) + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63
     + b"\x3f" + b"a" * 63 + b"\x00\x00\x01\x00\x01", "name over 255 bytes"),
    (header(1, 0, 1, 0, 0, 1) + QNAME_WIRE + b"\x00\x01\x00\x01" + b"\x00\x00\x29", "cut OPT"),
    (header(1, 0, 1, 0, 0, 2) + QNAME_WIRE + b"\x00\x01\x00\x01"
     + (b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00") * 2, "two OPT records"),
    (header(1, 0, 1, 0, 0, 1) + QNAME_WIRE + b"\x00\x01\x00\x01"
     + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x05ab", "rdata past the end"),
])
def test_malformed_queries_raise_format_error(raw, why):
    """Every malformed query raises DnsFormatError (never another exception)."""
    with pytest.raises(dns.DnsFormatError):
        dns.parse_query(raw)


def test_name_to_text_escapes_what_cannot_be_a_hostname():
    """Dots and non-printable bytes inside a label are escaped, so is_hostname rejects them."""
    text = dns.name_to_text(b"\x03a.b\x02\x00x\x03com\x00")
    assert text == "a\\046b.\\000x.com"
    assert not dns.is_hostname(text)
    assert dns.is_hostname("_dmarc.sub-1.example.com")
    assert not dns.is_hostname("") and not dns.is_hostname("a..b")


# ---- answers -------------------------------------------------------------------------

def test_build_answer_byte_by_byte():
    """An A answer: flags QR|RD|RA, the question echoed, owner a pointer to offset 12."""
    q = dns.parse_query(header(0xBEEF, 0x0100, 1, 0, 0, 0) + QNAME_WIRE + b"\x00\x01\x00\x01")
    out = dns.build_answer(q, [dns.Record("www.example.com", dns.TYPE_A, 10, bytes([198, 18, 128, 1]))])
    assert out == (header(0xBEEF, 0x8180, 1, 1, 0, 0) + QNAME_WIRE + b"\x00\x01\x00\x01"
                   + b"\xc0\x0c" + b"\x00\x01\x00\x01" + b"\x00\x00\x00\x0a" + b"\x00\x04"
                   + bytes([198, 18, 128, 1]))


def test_answer_echoes_the_case_of_the_question_and_scapy_reads_it():
    """0x20-randomised case comes back as sent, and scapy parses the answer."""
    q = dns.parse_query(query("wWw.ExAmPlE.cOm"))
    out = DNS(dns.build_answer(q, [dns.Record(q.qname, dns.TYPE_A, 10, b"\x01\x02\x03\x04")]))
    assert out.qd[0].qname == b"wWw.ExAmPlE.cOm." and out.an[0].rrname == b"wWw.ExAmPlE.cOm."
    assert out.an[0].rdata == "1.2.3.4" and out.qr == 1 and out.ra == 1 and out.rd == 1


def test_owner_names_compress_against_question_and_earlier_records():
    """mail.example.com after the question becomes 'mail' + pointer; repeats are one pointer."""
    q = dns.parse_query(query("example.com", "MX"))
    recs = [dns.Record("mail.example.com", dns.TYPE_A, 5, b"\x01\x01\x01\x01"),
            dns.Record("MAIL.example.com", dns.TYPE_A, 5, b"\x02\x02\x02\x02")]
    out = dns.build_answer(q, recs)
    qend = 12 + len(b"\x07example\x03com\x00") + 4
    assert out[qend : qend + 7] == b"\x04mail\xc0\x0c"
    assert out[qend + 7 + 14 : qend + 7 + 16] == struct.pack("!H", 0xC000 | qend)
    parsed = DNS(out)
    assert [parsed.an[i].rrname for i in range(2)] == [b"mail.example.com."] * 2


def test_edns_query_gets_opt_back_with_our_size_and_do_copied():
    """OPT in the reply: payload 1232, version 0, DO copied from the query (RFC 3225)."""
    q = dns.parse_query(query(edns=DNSRROPT(rclass=4096, z=0x8000)))
    out = dns.build_answer(q)
    assert out[-11:] == b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"
    assert DNS(out).arcount == 1
    q2 = dns.parse_query(query(edns=DNSRROPT(rclass=4096, z=0)))
    assert dns.build_answer(q2)[-11:] == b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


def test_edns_version_above_zero_gets_badvers():
    """EDNS version 1: rcode BADVERS (16) split as 0 in the header and 1 in the OPT TTL."""
    q = dns.parse_query(query(edns=DNSRROPT(rclass=4096, version=1)))
    out = dns.build_answer(q, [dns.Record("x", dns.TYPE_A, 1, bytes(4))])
    assert out[3] & 0xF == 0 and struct.unpack("!HHHHHH", out[:12])[3] == 0
    assert out[-11:-4] == b"\x00\x00\x29\x04\xd0\x01\x00"


@pytest.mark.parametrize("rcode", [dns.FORMERR, dns.SERVFAIL, dns.NXDOMAIN, dns.NOTIMP, dns.REFUSED])
def test_error_replies_echo_id_question_and_rcode(rcode):
    """build_error keeps the id, the question and RD; sets QR, RA and the rcode."""
    raw = query("a.example", "MX", qid=77)
    out = DNS(dns.build_error(dns.parse_query(raw), rcode))
    assert (out.id, out.rcode, out.qr, out.rd, out.ancount) == (77, rcode, 1, 1, 0)
    assert out.qd[0].qname == b"a.example."


def test_formerr_for_unparseable_bytes_echoes_the_id_only():
    """FORMERR for garbage: the two ID bytes echoed, no sections; nothing for <2 bytes or QR."""
    assert dns.formerr_for(b"\xab\xcd\x01\x00\x00") == header(0xABCD, 0x8181, 0, 0, 0, 0)
    assert dns.formerr_for(b"\xab") is None
    assert dns.formerr_for(header(1, 0x8000, 0, 0, 0, 0)) is None


def test_nxdomain_with_soa_in_authority():
    """authority records land in the authority section, with names compressed."""
    q = dns.parse_query(query("nope.origin.test"))
    soa = dns.Record("origin.test", dns.TYPE_SOA, 60,
                     dns.soa_rdata("ns.origin.test", "hostmaster.origin.test", 1, 60))
    out = DNS(dns.build_answer(q, rcode=dns.NXDOMAIN, authority=[soa]))
    assert out.rcode == 3 and out.nscount == 1 and out.ns[0].rrname == b"origin.test."
    assert out.ns[0].mname == b"ns.origin.test."


def test_truncate_keeps_question_and_opt_and_sets_tc():
    """A reply over the limit shrinks to header + question + OPT with TC; a small one passes."""
    q = dns.parse_query(query("t.example", "TXT", edns=DNSRROPT(rclass=1232)))
    big = dns.build_answer(q, [dns.Record("t.example", dns.TYPE_TXT, 1, dns.txt_rdata(b"x" * 250))
                               for _ in range(4)])
    assert dns.truncate(big, 2000) is big
    small = dns.truncate(big, 512)
    parsed = DNS(small)
    assert parsed.tc == 1 and parsed.ancount == 0 and parsed.arcount == 1
    assert parsed.qd[0].qname == b"t.example." and len(small) < 512


def test_rdata_helpers_parse_back_with_scapy():
    """MX, TXT and SRV rdata built here decode to the same values in scapy."""
    q = dns.parse_query(query("o.test", 255))
    out = DNS(dns.build_answer(q, [
        dns.Record("o.test", dns.TYPE_MX, 1, dns.mx_rdata(10, "mail.o.test")),
        dns.Record("o.test", dns.TYPE_TXT, 1, dns.txt_rdata(b"hello", b"world")),
        dns.Record("_x._tcp.o.test", dns.TYPE_SRV, 1, dns.srv_rdata(1, 2, 80, "o.test")),
    ]))
    assert out.an[0].exchange == b"mail.o.test." and out.an[0].preference == 10
    assert out.an[1].rdata == [b"hello", b"world"]
    assert (out.an[2].priority, out.an[2].weight, out.an[2].port, out.an[2].target) == (1, 2, 80, b"o.test.")


# ---- properties ------------------------------------------------------------------------

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=6).map(".".join)


@given(names, st.sampled_from(["A", "AAAA", "MX", "TXT", "SRV"]), st.integers(0, 0xFFFF),
       st.booleans())
def test_query_round_trip_through_scapy(name, qtype, qid, edns):
    """Any scapy query parses to its name/type/id; the answer parses back in scapy."""
    raw = query(name, qtype, qid=qid, edns=DNSRROPT(rclass=1400) if edns else None)
    q = dns.parse_query(raw)
    assert (q.qname, q.id) == (name, qid)
    out = DNS(dns.build_answer(q, [dns.Record(name, dns.TYPE_A, 10, b"\x0a\x00\x00\x01")]))
    assert out.id == qid and out.an[0].rrname.decode().rstrip(".") == name
    assert dns.text_to_wire(name) == raw[12 : 12 + len(dns.text_to_wire(name))]


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_parse_never_raises_anything_but_format_error(data):
    """Random bytes either parse or raise DnsFormatError; formerr_for never raises."""
    try:
        dns.parse_query(data)
    except dns.DnsFormatError:
        pass
    out = dns.formerr_for(data)
    assert out is None or len(out) == 12


@given(st.lists(names, min_size=1, max_size=8))
def test_compressed_names_read_back_exactly(owner_names):
    """Whatever compression build_answer chooses, read_name recovers every owner name."""
    q = dns.parse_query(query(owner_names[0]))
    out = dns.build_answer(q, [dns.Record(n, dns.TYPE_A, 1, bytes(4)) for n in owner_names])
    off = 12 + len(q.question)
    for n in owner_names:
        wire, off = dns.read_name(out, off)
        assert dns.name_to_text(wire) == n
        off += 10 + 4
    assert off == len(out)
