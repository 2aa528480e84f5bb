"""UDP/ICMP policy: QUIC refused with ICMP(v6), other UDP dropped or refused, chains and their counters."""

from __future__ import annotations

import pytest
from scapy.all import ICMP, IP, TCP, UDP, ICMPv6DestUnreach, ICMPv6EchoRequest, IPerror, IPerror6, IPv6, UDPerror, raw

from atlantic.interceptor import policy as P
from atlantic.interceptor.packet import parse


def call(pol, pkt) -> bytes | None:
    data = raw(pkt)
    return pol(memoryview(data), parse(data))


def udp4(dport=443, payload=b"quic"):
    return IP(src="10.0.0.5", dst="203.0.113.7") / UDP(sport=5555, dport=dport) / payload


def udp6(dport=443, payload=b"quic"):
    return IPv6(src="2001:db8::5", dst="2001:db8:1::7") / UDP(sport=5555, dport=dport) / payload


def test_quic_over_ipv4_gets_port_unreachable_from_the_destination():
    """UDP 443 is answered by ICMP type 3 code 3 from the address the app wrote to, quoting its header."""
    out = IP(call(P.reject_quic, udp4()))
    assert (out.src, out.dst, out[ICMP].type, out[ICMP].code) == ("203.0.113.7", "10.0.0.5", 3, 3)
    assert out[IPerror].dst == "203.0.113.7" and out[UDPerror].dport == 443
    assert IP(raw(out)).chksum == out.chksum and ICMP(raw(out[ICMP])).chksum == out[ICMP].chksum


def test_quic_over_ipv6_gets_icmpv6_port_unreachable_with_valid_checksum():
    """UDP 443 over IPv6 is answered by ICMPv6 type 1 code 4 whose checksum scapy recomputes identically."""
    reply = call(P.reject_quic, udp6())
    out = IPv6(reply)
    assert (out.src, out.dst, out.nh) == ("2001:db8:1::7", "2001:db8::5", 58)
    icmp = out[ICMPv6DestUnreach]
    assert (icmp.type, icmp.code) == (1, 4)
    assert out[IPerror6].dst == "2001:db8:1::7"
    given = icmp.cksum
    del out[ICMPv6DestUnreach].cksum
    assert IPv6(raw(out))[ICMPv6DestUnreach].cksum == given


def test_icmpv6_quote_fits_the_minimum_mtu():
    """A large offending datagram is quoted only up to the 1280-byte IPv6 minimum MTU."""
    assert len(call(P.reject_quic, udp6(payload=b"x" * 3000))) == 1280


def test_non_quic_is_not_claimed_by_reject_quic():
    """reject_quic leaves other ports and TCP to the next handler."""
    assert call(P.reject_quic, udp4(dport=444)) is None
    assert call(P.reject_quic, IP(dst="1.2.3.4") / TCP(dport=443)) is None


def test_default_chain_drops_udp_and_icmp_and_counts_each_verdict():
    """QUIC rejected, other UDP dropped, ICMP echo (v4 and v6) dropped, each counted under its name."""
    chain = P.default_policy()
    assert call(chain, udp4()) is not None
    assert call(chain, udp6()) is not None
    assert call(chain, udp4(dport=5000)) is None
    assert call(chain, IP(dst="203.0.113.7") / ICMP()) is None
    assert call(chain, IPv6(dst="2001:db8:1::7") / ICMPv6EchoRequest()) is None
    assert call(chain, IP(dst="203.0.113.7", proto=47) / b"gre") is None
    assert chain.counters() == {
        "quic_rejected": 2,
        "udp_dropped": 1,
        "icmp_dropped": 2,
        "other_dropped": 1,
    }


def test_reject_mode_refuses_every_udp_port():
    """With udp="reject" any UDP datagram gets ICMP port unreachable, counted as udp_rejected."""
    chain = P.default_policy(udp="reject")
    out = IP(call(chain, udp4(dport=5000)))
    assert (out[ICMP].type, out[ICMP].code) == (3, 3)
    assert chain.counters()["udp_rejected"] == 1


def test_dns_handler_comes_first_and_owns_port_53():
    """The DNS handler answers port 53 before the UDP policy; its None (answer later) still counts as dns."""
    answers = iter([b"ANSWER", None])
    seen = []

    def dns(packet, info):
        seen.append(info.dport)
        return next(answers)

    chain = P.default_policy(dns=dns)
    assert call(chain, udp4(dport=53)) == b"ANSWER"
    assert call(chain, udp6(dport=53)) is None
    assert call(chain, udp4(dport=5353)) is None
    assert seen == [53, 53]
    assert chain.counters()["dns"] == 2 and chain.counters()["udp_dropped"] == 1


def test_compose_takes_names_and_first_non_none_wins():
    """compose accepts (name, handler) pairs; a DROP answer stops the chain and the stack writes nothing."""
    chain = P.compose(("mine", lambda p, i: P.DROP), P.reject_quic)
    assert call(chain, udp4()) is None
    assert chain.counters() == {"mine": 1, "quic_rejected": 0, "other_dropped": 0}
    with pytest.raises(ValueError, match="unique"):
        P.compose(P.drop_udp, P.drop_udp)
    with pytest.raises(ValueError, match="UDP policy"):
        P.default_policy(udp="allow")
