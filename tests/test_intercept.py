"""forwarder/intercept.py: which names are terminated, and the pass-through memory (pure)."""

from __future__ import annotations

import pytest

from atlantic.forwarder.intercept import MAX_PATTERNS, InterceptPolicy, normalize_pattern
from atlantic.forwarder.localca import is_permitted


@pytest.mark.parametrize("pattern", ["example.com", "*.example.com", "*.EXAMPLE.com.", " example.com "])
def test_both_spellings_cover_the_domain_and_every_name_under_it(pattern):
    """"example.com" and "*.example.com" mean the same subtree: the domain itself and its subdomains."""
    policy = InterceptPolicy([pattern])
    assert normalize_pattern(pattern) == "example.com"
    for name in ("example.com", "www.example.com", "a.b.example.com"):
        assert policy.matches(name)
    for name in ("notexample.com", "example.com.evil.net", "example.org", "com"):
        assert not policy.matches(name)


def test_matching_agrees_with_the_local_ca_name_constraints():
    """A name the policy matches is exactly one the CA's constraints permit."""
    policy = InterceptPolicy(["*.video.example", "cdn.test.net"])
    domains = ("cdn.test.net", "video.example")
    for name in ("video.example", "x.video.example", "cdn.test.net", "a.cdn.test.net",
                 "test.net", "xvideo.example", "example", "b.test.net"):
        assert policy.matches(name) == is_permitted(name, domains), name


@pytest.mark.parametrize("name", [None, "", "127.0.0.1", "10.0.0.1", "::1", "[::1]"])
def test_no_sni_and_addresses_never_match(name):
    """Without a name, or with an address for a name, nothing is terminated."""
    assert not InterceptPolicy(["example.com"]).matches(name)


@pytest.mark.parametrize("pattern, words", [
    ("*", "every domain"), ("*.", "every domain"), ("", "every domain"), ("a.*.example.com", "wildcard"),
    ("*example.com", "wildcard"), ("192.168.1.1", "IP address"), ("::1", "IP address"), ("com", "top-level"),
    ("*.com", "top-level"), ("exa mple.com", "not a valid DNS name"), ("bücher.de", "xn--"),
    ("-bad.example.com", "not a valid DNS name"), ("1.2.3.999", "looks like an IP"), (7, "expected a domain"),
])
def test_unusable_patterns_are_refused_in_one_line(pattern, words):
    """A bare *, a wildcard past the first label, an address or a lone TLD is refused, one line naming it."""
    with pytest.raises(ValueError) as caught:
        normalize_pattern(pattern)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_the_list_is_bounded():
    """More than MAX_PATTERNS patterns are refused."""
    InterceptPolicy([f"d{i}.example" for i in range(MAX_PATTERNS)])
    with pytest.raises(ValueError, match="at most"):
        InterceptPolicy([f"d{i}.example" for i in range(MAX_PATTERNS + 1)])


def test_a_name_marked_pass_through_is_not_terminated_until_it_expires():
    """Pass-through holds the exact name (not its siblings) for pass_through_s, then ends."""
    policy = InterceptPolicy(["example.com"], pass_through_s=3600)
    assert policy.should_terminate("api.example.com", 100.0)
    policy.mark_pass_through("API.example.com.", "refused our certificate", 100.0)
    assert not policy.should_terminate("api.example.com", 100.0)
    assert not policy.should_terminate("api.example.com", 3699.0)
    assert policy.should_terminate("www.example.com", 200.0)
    assert policy.pass_through(1900.0) == [
        {"name": "api.example.com", "reason": "refused our certificate", "seconds_left": 1800}]
    assert policy.should_terminate("api.example.com", 3700.0)
    assert policy.pass_through(3700.0) == []


def test_unlisted_names_are_never_terminated_even_when_marked():
    """should_terminate is False for a name off the list, marked or not."""
    policy = InterceptPolicy(["example.com"])
    policy.mark_pass_through("other.net", "closed after our certificate", 0.0)
    assert not policy.should_terminate("other.net", 10_000.0)
    assert not InterceptPolicy([]).should_terminate("example.com", 0.0)


def test_the_pass_through_memory_is_bounded_and_the_soonest_ending_gives_way():
    """At max_pass_through names, expired entries go first, then the one ending soonest."""
    policy = InterceptPolicy(["example.com"], pass_through_s=100, max_pass_through=3)
    for i, name in enumerate(("a.example.com", "b.example.com", "c.example.com")):
        policy.mark_pass_through(name, "r", float(i))
    policy.mark_pass_through("d.example.com", "r", 50.0)
    assert [e["name"] for e in policy.pass_through(50.0)] == ["b.example.com", "c.example.com", "d.example.com"]
    policy.mark_pass_through("e.example.com", "r", 101.5)  # a and b are expired by now
    assert [e["name"] for e in policy.pass_through(101.5)] == ["c.example.com", "d.example.com", "e.example.com"]
    assert policy.marked == 5


def test_marking_again_extends_the_time():
    """A name refused again passes through for the full time from the new refusal."""
    policy = InterceptPolicy(["example.com"], pass_through_s=100)
    policy.mark_pass_through("example.com", "first", 0.0)
    policy.mark_pass_through("example.com", "second", 90.0)
    assert policy.pass_through(95.0) == [{"name": "example.com", "reason": "second", "seconds_left": 95}]
