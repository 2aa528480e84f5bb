"""The stub resolver's messages (dns/stubquery.py), pure: the query it sends, the addresses
it takes from a reply, and which resolvers it asks."""

from __future__ import annotations

import pytest
from atlantic.dns import message as dns
from atlantic.dns.stubquery import (
    StubAnswerError,
    build_query,
    choose_resolvers,
    is_truncated,
    nameservers,
    parse_addresses,
)

NAME = "proxy.example.net"


def reply(qid: int, qtype: int, records=(), rcode: int = dns.NOERROR, name: str = NAME) -> bytes:
    query = dns.parse_query(build_query(name, qtype, qid))
    return dns.build_answer(query, records, rcode=rcode)


def test_query_is_one_question_with_recursion_and_edns():
    """The query parses as a standard query for the name and type, RD set, EDNS0 at 1232."""
    q = dns.parse_query(build_query(NAME + ".", dns.TYPE_AAAA, 0x1234))
    assert (q.id, q.qname, q.qtype, q.qclass, q.opcode) == (0x1234, NAME, dns.TYPE_AAAA, dns.CLASS_IN, 0)
    assert q.flags & dns.FLAG_RD and q.edns is not None and q.edns.payload == dns.EDNS_PAYLOAD


def test_addresses_follow_the_cname_chain_and_ignore_other_owners():
    """A and AAAA records at the end of a CNAME chain, in order; records of other names are not ours."""
    recs = [dns.Record(NAME, dns.TYPE_CNAME, 60, dns.text_to_wire("edge.cdn.test")),
            dns.Record("edge.cdn.test", dns.TYPE_A, 60, dns.a_rdata("203.0.113.7")),
            dns.Record("other.test", dns.TYPE_A, 60, dns.a_rdata("198.51.100.1")),
            dns.Record("edge.cdn.test", dns.TYPE_A, 60, dns.a_rdata("203.0.113.8"))]
    assert parse_addresses(reply(7, dns.TYPE_A, recs), 7, NAME, dns.TYPE_A) == ["203.0.113.7", "203.0.113.8"]
    six = [dns.Record(NAME, dns.TYPE_AAAA, 60, bytes.fromhex("20010db8000000000000000000000053"))]
    assert parse_addresses(reply(8, dns.TYPE_AAAA, six), 8, NAME.upper(), dns.TYPE_AAAA) == ["2001:db8::53"]


def test_a_reply_to_another_query_is_not_trusted():
    """Wrong id, another name or type, or a query instead of a reply: DnsFormatError (skipped)."""
    good = reply(9, dns.TYPE_A, [dns.Record(NAME, dns.TYPE_A, 60, dns.a_rdata("203.0.113.7"))])
    for bad, qid, name, qtype in ((good, 10, NAME, dns.TYPE_A), (good, 9, "evil.test", dns.TYPE_A),
                                  (good, 9, NAME, dns.TYPE_AAAA), (build_query(NAME, dns.TYPE_A, 9), 9, NAME, dns.TYPE_A),
                                  (good[:20], 9, NAME, dns.TYPE_A)):
        with pytest.raises(dns.DnsFormatError):
            parse_addresses(bad, qid, name, qtype)


def test_answers_without_an_address_say_why():
    """NXDOMAIN, SERVFAIL and NODATA are one-line StubAnswerErrors naming the name."""
    with pytest.raises(StubAnswerError, match=f"{NAME}: NXDOMAIN"):
        parse_addresses(reply(1, dns.TYPE_A, rcode=dns.NXDOMAIN), 1, NAME, dns.TYPE_A)
    with pytest.raises(StubAnswerError, match="SERVFAIL"):
        parse_addresses(reply(1, dns.TYPE_A, rcode=dns.SERVFAIL), 1, NAME, dns.TYPE_A)
    with pytest.raises(StubAnswerError, match="no AAAA record"):
        parse_addresses(reply(1, dns.TYPE_AAAA), 1, NAME, dns.TYPE_AAAA)


def test_truncated_flag():
    """TC set means: ask again over TCP."""
    big = reply(3, dns.TYPE_A, [dns.Record(NAME, dns.TYPE_A, 60, dns.a_rdata(f"10.0.{i // 250}.{i % 250}"))
                                for i in range(200)])
    assert not is_truncated(big) and is_truncated(dns.truncate(big, 512))


def test_resolvers_from_resolv_conf_or_behind_the_resolved_stub():
    """/etc/resolv.conf's servers unless they are loopback stubs; then systemd-resolved's
    uplink servers; never loopback, at most three, duplicates and junk dropped."""
    etc = "# comment\nsearch lan\nnameserver 192.168.1.1\nnameserver fe80::1%wlan0\nnameserver 192.168.1.1\nnameserver bogus\n"
    assert nameservers(etc) == ["192.168.1.1", "fe80::1"]
    assert choose_resolvers(etc, "nameserver 9.9.9.9\n") == ("192.168.1.1", "fe80::1")
    stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n"
    assert choose_resolvers(stub, "nameserver 10.0.0.1\nnameserver 127.0.0.1\nnameserver 2001:db8::1\n") == ("10.0.0.1", "2001:db8::1")
    assert choose_resolvers(stub, None) == ()
    assert choose_resolvers("".join(f"nameserver 10.0.0.{i}\n" for i in range(1, 6)), None) == ("10.0.0.1", "10.0.0.2", "10.0.0.3")
