"""The fake-IP pool: stable mappings, pins, LRU recycling, bounds, persistence (pure)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlantic.dns.fakeip import FakeIpPool, load, save


def ip(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def test_same_name_same_address_and_names_are_normalised():
    """A name keeps its address; case and a trailing dot do not make a new mapping."""
    p = FakeIpPool()
    a = p.assign("www.example.com", 4, now=0)
    assert ip(a) == "198.18.128.1"
    assert p.assign("WWW.Example.com.", 4, now=5) == a
    assert p.assign("other.example", 4, now=5) != a
    assert p.lookup(a) == p.lookup(ip(a)) == "www.example.com"
    assert len(p) == 2


def test_v6_addresses_come_from_the_ula_range_and_are_separate():
    """AAAA mappings come from the /64 and live beside the v4 ones."""
    p = FakeIpPool()
    a6 = p.assign("www.example.com", 6, now=0)
    assert ip(a6) == "fd00:a71a:1c::1"
    assert p.lookup(a6) == "www.example.com" and p.is_fake("fd00:a71a:1c::1234")
    assert FakeIpPool(v6=None).assign("x", 6, now=0) is None


def test_is_fake_covers_the_range_only():
    """is_fake is true inside the configured ranges and false elsewhere or for junk."""
    p = FakeIpPool()
    assert p.is_fake("198.18.128.0") and p.is_fake(b"\xc6\x12\xff\xff")
    assert not p.is_fake("198.18.0.1") and not p.is_fake("10.0.0.1")
    assert not p.is_fake("fd00::1") and not p.is_fake("nonsense") and not p.is_fake(b"\x01")
    assert p.lookup("198.18.200.1") is None and p.lookup("10.0.0.1") is None


def test_full_pool_of_names_answered_within_the_ttl_says_none():
    """A /29 has 6 usable addresses: a 7th name while all 6 were answered within the TTL
    gets None and is counted."""
    p = FakeIpPool("10.9.0.0/29", None, ttl_s=10, hold_s=100)
    got = [p.assign(f"n{i}", 4, now=0) for i in range(6)]
    assert [ip(a) for a in got] == [f"10.9.0.{i}" for i in range(1, 7)]
    assert p.assign("n6", 4, now=5) is None
    assert p.stats().exhausted == 1


def test_full_pool_reclaims_the_oldest_name_past_its_ttl_before_its_hold_ends():
    """A flood of names cannot starve later ones for the whole hold: once the oldest answer
    is older than the TTL, its address goes to the new name (pinned ones never do)."""
    p = FakeIpPool("10.9.0.0/29", None, ttl_s=10, hold_s=300)
    for i in range(6):
        p.assign(f"n{i}", 4, now=i)
    p.pin("10.9.0.1")  # n0 is in use by a flow
    got = p.assign("late", 4, now=12)
    assert ip(got) == "10.9.0.2" and p.lookup("10.9.0.2") == "late"
    assert p.lookup("10.9.0.1") == "n0"
    assert p.stats().recycled == 1


def test_saved_map_is_private_and_survives_a_round_trip(tmp_path):
    """The state file is 0600 (it lists every name resolved) and loads back the same."""
    from atlantic.dns import fakeip
    p = FakeIpPool()
    for i in range(50):
        p.assign(f"n{i}.example", 4, now=0)
        p.assign(f"n{i}.example", 6, now=0)
    path = tmp_path / "fakeip.json"
    path.write_text("{}")
    path.chmod(0o644)
    fakeip.save(p, path, now=1.0)
    assert path.stat().st_mode & 0o777 == 0o600
    q = fakeip.load(path, now=1.0)
    assert q.lookup("198.18.128.7") == p.lookup("198.18.128.7") and len(q) == 100


@pytest.mark.parametrize("content", [
    "[" * 100000, "not json", '{"version": 2, "v4": "198.18.128.0/17", "v4_entries": 5}',
    '{"version": 2, "v4": "198.18.128.0/17", "v4_entries": [[1e9, "x", 1]], "v4_cursor": -5}',
    '{"version": 2, "v4": "198.18.128.0/17", "v4_entries": [[1, "x", "nan"]]}',
])
def test_a_corrupted_state_file_gives_an_empty_map(tmp_path, content):
    """Garbage, deep nesting or out-of-range values in the saved map never stop a start."""
    from atlantic.dns import fakeip
    path = tmp_path / "fakeip.json"
    path.write_text(content)
    q = fakeip.load(path, now=0.0)
    assert ip(q.assign("fresh.example", 4, now=0.0)).startswith("198.18.")


def test_expired_mappings_are_recycled_least_recently_used_first():
    """Once expired, the least recently answered mapping gives its address to a new name."""
    p = FakeIpPool("10.9.0.0/29", None, ttl_s=10, hold_s=100)
    addrs = {f"n{i}": p.assign(f"n{i}", 4, now=i) for i in range(6)}
    p.assign("n0", 4, now=10)  # n0 answered again: n1 is now the oldest
    new = p.assign("fresh", 4, now=200)
    assert new == addrs["n1"]
    assert p.lookup(new) == "fresh" and p.assign("n0", 4, now=200) == addrs["n0"]
    assert p.stats().recycled == 1


def test_pinned_address_is_never_recycled_until_unpinned():
    """A flow's pin keeps even an expired mapping; pins count; after the last unpin it recycles."""
    p = FakeIpPool("10.9.0.0/30", None, hold_s=10)  # 2 usable addresses
    a = p.assign("a", 4, now=0)
    b = p.assign("b", 4, now=0)
    assert p.pin(a) and p.pin(a)
    assert p.assign("c", 4, now=100) == b  # b expired and unpinned: recycled
    assert p.assign("d", 4, now=105) is None  # a pinned (expired), c live
    assert p.unpin(a)
    assert p.assign("d", 4, now=200) == b  # a still pinned once: c (expired) goes
    assert p.lookup(a) == "a"
    assert p.unpin(a)
    assert p.assign("e", 4, now=300) == b  # an unpin counts as a use: d is older than a
    assert p.assign("f", 4, now=400) == a  # unpinned and expired at last
    assert not p.unpin(a)  # no pins left
    assert not p.pin("10.0.0.1") and not p.unpin("198.18.128.1") and not p.pin("junk")


def test_max_entries_bounds_the_table():
    """max_entries caps the size even when the range is bigger; expired entries are reused."""
    p = FakeIpPool(max_entries=3, hold_s=10)
    for i in range(3):
        p.assign(f"n{i}", 4, now=0)
    assert p.assign("n3", 4, now=5) is None
    assert ip(p.assign("n3", 4, now=11)) == "198.18.128.1"
    assert len(p) == 3


def test_bad_configuration_reads_as_one_line():
    """Too small a range, or a hold shorter than the TTL, is refused with a clear message."""
    with pytest.raises(ValueError, match="too small"):
        FakeIpPool("10.0.0.0/31")
    with pytest.raises(ValueError, match="hold_s"):
        FakeIpPool(ttl_s=30, hold_s=5)


def test_json_round_trip_keeps_mappings_order_and_cursor_with_a_new_clock():
    """to_json at one clock, from_json at another: same names, same addresses, same LRU."""
    p = FakeIpPool(hold_s=100)
    a = p.assign("a.example", 4, now=1000)
    b = p.assign("b.example", 4, now=1010)
    a6 = p.assign("a.example", 6, now=1010)
    p.pin(b)
    data = json.loads(json.dumps(p.to_json(now=1020)))
    q = FakeIpPool.from_json(data, now=5, hold_s=100)
    assert q.lookup(a) == "a.example" and q.lookup(b) == "b.example" and q.lookup(a6) == "a.example"
    assert q.assign("c.example", 4, now=5) not in (a, b)
    assert q.assign("a.example", 4, now=6) == a
    # a had 80 s left at save time: expired after 85 s on the new clock, b (pinned) kept 100
    r = FakeIpPool.from_json(data, now=0, hold_s=100)
    r._fam[4].max_entries = 2
    assert r.assign("z", 4, now=81) == a


def test_from_json_drops_entries_outside_a_changed_range_and_rejects_bad_data():
    """A new v4 range keeps no stale addresses; an unknown version or a bad row is a ValueError."""
    p = FakeIpPool()
    p.assign("a", 4, now=0)
    q = FakeIpPool.from_json(p.to_json(now=0), now=0, v4="198.19.0.0/24")
    assert len(q) == 0 and ip(q.assign("b", 4, now=0)) == "198.19.0.1"
    with pytest.raises(ValueError, match="version"):
        FakeIpPool.from_json({"version": 99}, now=0)
    with pytest.raises(ValueError, match="bad entry"):
        FakeIpPool.from_json({"version": 1, "v4_entries": [["x"]]}, now=0)


def test_save_and_load_are_atomic_and_forgiving(tmp_path):
    """save writes via a temporary file; load of a missing or corrupt file gives an empty pool."""
    path = tmp_path / "fakeip.json"
    p = FakeIpPool()
    a = p.assign("a.example", 4, now=0)
    save(p, path, now=0)
    assert not list(tmp_path.glob(".*.tmp"))
    assert load(path, now=0).lookup(a) == "a.example"
    assert len(load(tmp_path / "missing.json", now=0)) == 0
    path.write_text("{not json")
    assert len(load(path, now=0, v6=None)) == 0


ops = st.lists(st.tuples(st.sampled_from(["assign", "pin", "unpin", "tick"]),
                         st.integers(0, 11), st.integers(0, 30)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_no_address_ever_serves_two_live_names(seq):
    """Under any mix of answers, pins and time: name<->ip stay a bijection, a pinned mapping or
    one answered within the TTL never changes owner, and the size bound holds."""
    p = FakeIpPool("10.9.0.0/29", None, ttl_s=5, hold_s=20)
    now = 0.0
    owner: dict[str, str] = {}  # ip -> name as last seen
    pins: dict[str, int] = {}
    deadline: dict[str, float] = {}
    for op, n, dt in seq:
        name = f"h{n}"
        if op == "tick":
            now += dt
            continue
        if op == "assign":
            a = p.assign(name, 4, now)
            if a is None:
                continue
            a = ip(a)
            prev = owner.get(a)
            if prev is not None and prev != name:  # recycled: must have been dead
                assert pins.get(a, 0) == 0 and deadline[a] - 20 + 5 <= now  # answered >= one TTL ago
            owner[a] = name
            deadline[a] = now + 20
            continue
        a = next((x for x, nm in owner.items() if nm == name), None)
        if a is None:
            continue
        if op == "pin":
            assert p.pin(a)
            pins[a] = pins.get(a, 0) + 1
        elif pins.get(a):
            assert p.unpin(a)
            pins[a] -= 1
        assert len(p) <= 6
    for a, name in owner.items():
        assert p.lookup(a) == name
