"""The fake-IP pool: every name gets an address from a reserved range, so the name can
travel with the flow and resolve at the exit node, never on this machine.

Pure: the time comes in as an argument (``now``, any monotonic-ish seconds). One
`FakeIpPool` holds one table per family (A from an IPv4 range, default
198.18.128.0/17 inside the benchmark range 198.18.0.0/15; AAAA from a ULA /64).

Stability rules, per family:

- a name keeps its address while the mapping lives: the same name always gets the same
  address back, and each answer extends the mapping by ``hold_s`` (longer than the DNS
  TTL, because applications cache past it);
- an address used by a flow is pinned (``pin``/``unpin``, counted) and never recycled;
- fresh addresses are handed out first; once the range or ``max_entries`` is used up,
  the least recently used mapping that has expired and is not pinned is recycled;
  if there is none, `assign` returns None (the DNS answer is then SERVFAIL).

Pinned mappings leave the LRU order while pinned, so the oldest unpinned mapping is
always at its front and recycling is O(1). `to_json(now)`/`from_json(data, now)` keep
the mappings across a daemon restart (times stored as "seconds left", so the clock's
origin may change); `save`/`load` write and read that file atomically.
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_V4 = "198.18.128.0/17"
DEFAULT_V6 = "fd00:a71a:1c::/64"
DEFAULT_TTL_S = 10
DEFAULT_HOLD_S = 300.0
DEFAULT_MAX_ENTRIES = 32768
FORMAT_VERSION = 2


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counts for ``status``."""

    v4_entries: int
    v6_entries: int
    pinned: int
    assigned: int  # new mappings made
    recycled: int  # of which took an expired mapping's address
    exhausted: int  # assign() calls that found no address


@dataclass(slots=True)
class _Entry:
    name: str
    expires: float
    pins: int = 0


class _Family:
    """One address family's table: name <-> address index, LRU of unpinned entries."""

    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, max_entries: int) -> None:
        self.net = network
        self.base = int(network.network_address)
        self.width = network.max_prefixlen // 8
        # the first and last address of the range are never handed out
        self.first, self.last = 1, network.num_addresses - 2
        self.max_entries = min(max_entries, max(0, self.last - self.first + 1))
        self.cursor = self.first
        self.by_name: dict[str, int] = {}
        self.entries: dict[int, _Entry] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()  # unpinned only, oldest first

    def to_bytes(self, idx: int) -> bytes:
        return (self.base + idx).to_bytes(self.width, "big")

    def index(self, raw: bytes) -> int | None:
        if len(raw) != self.width:
            return None
        idx = int.from_bytes(raw, "big") - self.base
        return idx if self.first <= idx <= self.last else None

    def assign(self, name: str, now: float, expires: float, reclaim_before: float) -> tuple[int | None, bool]:
        """(index or None, recycled?) for *name*, extending its mapping to *expires*.

        Full: the least recently answered unpinned mapping is recycled once its hold has
        run out, or, under pressure, once its last answer is older than the DNS TTL
        (its deadline is at most ``reclaim_before``): a flood of new names must not
        leave every later name without an answer for the whole hold.
        """
        idx = self.by_name.get(name)
        if idx is not None:
            e = self.entries[idx]
            e.expires = max(e.expires, expires)
            if not e.pins:
                self.lru.move_to_end(idx)
            return idx, False
        recycled = False
        if len(self.entries) < self.max_entries and self.cursor <= self.last:
            idx = self.cursor
            self.cursor += 1
        else:
            idx = self._oldest_expired(reclaim_before)
            if idx is None:
                return None, False
            del self.by_name[self.entries[idx].name]
            del self.lru[idx]
            recycled = True
        self.entries[idx] = _Entry(name, expires)
        self.by_name[name] = idx
        self.lru[idx] = None
        return idx, recycled

    def _oldest_expired(self, deadline: float) -> int | None:
        # the LRU front is the least recently answered unpinned entry; with a constant
        # hold it also has the earliest deadline, so if it is live, all are
        if not self.lru:
            return None
        idx = next(iter(self.lru))
        return idx if self.entries[idx].expires <= deadline else None

    def pin(self, idx: int) -> bool:
        e = self.entries.get(idx)
        if e is None:
            return False
        if not e.pins:
            self.lru.pop(idx, None)
        e.pins += 1
        return True

    def unpin(self, idx: int) -> bool:
        e = self.entries.get(idx)
        if e is None or not e.pins:
            return False
        e.pins -= 1
        if not e.pins:
            self.lru[idx] = None  # most recently used: a flow just ended
        return True

    def add_loaded(self, idx: int, name: str, expires: float) -> None:
        if idx in self.entries or name in self.by_name or len(self.entries) >= self.max_entries:
            return
        self.entries[idx] = _Entry(name, expires)
        self.by_name[name] = idx
        self.lru[idx] = None


class FakeIpPool:
    """Name <-> fake address, for A (IPv4) and AAAA (IPv6, optional)."""

    def __init__(self, v4: str = DEFAULT_V4, v6: str | None = DEFAULT_V6, *,
                 ttl_s: int = DEFAULT_TTL_S, hold_s: float = DEFAULT_HOLD_S,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        net4 = ipaddress.IPv4Network(v4)
        if net4.num_addresses < 4:
            raise ValueError(f"fake-IP range {v4} is too small; use a /30 or larger")
        self.v4_range, self.v6_range = str(net4), None
        self.ttl_s, self.hold_s = int(ttl_s), float(hold_s)
        if self.hold_s < self.ttl_s:
            raise ValueError(f"fake-IP hold_s ({hold_s}) must be at least the TTL ({ttl_s})")
        self._fam: dict[int, _Family] = {4: _Family(net4, max_entries)}
        if v6 is not None:
            net6 = ipaddress.IPv6Network(v6)
            if net6.num_addresses < 4:
                raise ValueError(f"fake-IP range {v6} is too small")
            self.v6_range = str(net6)
            self._fam[6] = _Family(net6, max_entries)
        self.assigned = self.recycled = self.exhausted = 0
        self.changes = 0  # grows with every new mapping: a saver compares it to skip idle saves

    # -- answering ---------------------------------------------------------------

    def assign(self, name: str, family: int, now: float) -> bytes | None:
        """The fake address (4 or 16 bytes) for *name*, made or refreshed; None if the pool is full.

        *name* is normalised (lower case, no trailing dot). Family 6 without a v6 range
        returns None.
        """
        fam = self._fam.get(family)
        if fam is None:
            return None
        name = name.rstrip(".").lower()
        known = name in fam.by_name
        # an entry answered at least one TTL ago may go when the range is full
        idx, recycled = fam.assign(name, now, now + self.hold_s, now + self.hold_s - self.ttl_s)
        if idx is None:
            self.exhausted += 1
            return None
        if not known:
            self.assigned += 1
            self.recycled += recycled
            self.changes += 1
        return fam.to_bytes(idx)

    # -- questions from the dispatcher --------------------------------------------

    def _find(self, ip) -> tuple[_Family, int] | tuple[None, None]:
        try:
            raw = _raw(ip)
        except ValueError:
            return None, None
        fam = self._fam.get(4 if len(raw) == 4 else 6)
        if fam is None:
            return None, None
        idx = fam.index(raw)
        return (fam, idx) if idx is not None else (None, None)

    def is_fake(self, ip) -> bool:
        """True if *ip* (bytes, text or ipaddress) lies in one of the fake ranges."""
        try:
            raw = _raw(ip)
        except ValueError:
            return False
        fam = self._fam.get(4 if len(raw) == 4 else 6)
        return fam is not None and int.from_bytes(raw, "big") in _span(fam)

    def lookup(self, ip) -> str | None:
        """The name behind fake address *ip*, expired or not (until recycled); else None."""
        fam, idx = self._find(ip)
        if fam is None:
            return None
        e = fam.entries.get(idx)
        return e.name if e else None

    def pin(self, ip) -> bool:
        """A flow uses *ip*: never recycle it until the matching `unpin`. False if unknown."""
        fam, idx = self._find(ip)
        return fam.pin(idx) if fam is not None else False

    def unpin(self, ip) -> bool:
        """A flow using *ip* ended. False if *ip* was not pinned."""
        fam, idx = self._find(ip)
        return fam.unpin(idx) if fam is not None else False

    def stats(self) -> PoolStats:
        """Sizes and counters (O(entries) for the pinned count: for status, not per packet)."""
        pinned = sum(1 for f in self._fam.values() for e in f.entries.values() if e.pins)
        v6 = self._fam.get(6)
        return PoolStats(len(self._fam[4].entries), len(v6.entries) if v6 else 0, pinned,
                         self.assigned, self.recycled, self.exhausted)

    def __len__(self) -> int:
        return sum(len(f.entries) for f in self._fam.values())

    def __repr__(self) -> str:
        s = self.stats()
        return (f"<FakeIpPool {self.v4_range} {self.v6_range} v4={s.v4_entries} "
                f"v6={s.v6_entries} pinned={s.pinned}>")

    # -- persistence --------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        """The mappings as plain rows (offset in the range, name, seconds left), oldest
        first (see ``snapshot_steps`` for a big map on a busy loop)."""
        steps = self.snapshot_steps(now, step=1 << 30)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def snapshot_steps(self, now: float, step: int = 4096) -> Generator[None, None, Snapshot]:
        """``snapshot`` in pieces: yields after every ``step`` rows so the caller can let
        other work run (a full map is 65,000 rows); returns the Snapshot. Mappings that
        change between pieces are taken as they are when their piece is read."""
        fams = []
        for fam_no in (4, 6):
            fam = self._fam.get(fam_no)
            if fam is None:
                continue
            entries = fam.entries
            order = list(fam.lru) + [i for i, e in entries.items() if e.pins]  # oldest first
            rows: list[tuple[int, str, float]] = []
            for start in range(0, len(order), step):
                for i in order[start : start + step]:
                    e = entries.get(i)
                    if e is not None:
                        rows.append((i, e.name, self.hold_s if e.pins else max(0.0, e.expires - now)))
                yield
            fams.append((fam_no, str(fam.net), fam.cursor, rows))
        return Snapshot(tuple(fams))

    def to_json(self, now: float) -> dict:
        """The mappings as JSON-able data (format 2: rows of offset, name, seconds left)."""
        return self.snapshot(now).to_json()

    @classmethod
    def from_json(cls, data: dict, now: float, **kwargs) -> FakeIpPool:
        """A pool configured by *kwargs* holding the mappings of *data* that still fit it.

        Reads format 1 (rows by address text) and 2 (rows by offset). Entries outside the
        configured ranges (the config changed) are dropped; bad data raises ValueError
        with one line saying what is wrong.
        """
        if not isinstance(data, dict) or data.get("version") not in (1, FORMAT_VERSION):
            raise ValueError("fake-IP state: unknown format version")
        by_offset = data["version"] == FORMAT_VERSION
        pool = cls(**kwargs)
        for fam_no, key in ((4, "v4"), (6, "v6")):
            fam = pool._fam.get(fam_no)
            if fam is None:
                continue
            same_range = data.get(key) == (pool.v4_range if fam_no == 4 else pool.v6_range)
            if by_offset and not same_range:
                continue  # offsets only mean something in the range they were taken from
            rows = data.get(f"{key}_entries", [])
            if not isinstance(rows, list):
                raise ValueError(f"fake-IP state: {key}_entries is not a list")
            top = fam.first
            for row in rows:
                try:
                    ref, name, left = row
                    if by_offset:
                        idx = ref if isinstance(ref, int) and fam.first <= ref <= fam.last else None
                    else:
                        idx = fam.index(ipaddress.ip_address(ref).packed)
                    left = float(left)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"fake-IP state: bad entry {str(row)[:60]}: {exc}") from None
                if idx is None or not isinstance(name, str) or not left >= 0:
                    continue
                fam.add_loaded(idx, name, now + min(left, pool.hold_s))
                top = max(top, idx + 1)
            cursor = data.get(f"{key}_cursor")
            if not (same_range and isinstance(cursor, int) and fam.first <= cursor <= fam.last + 1):
                cursor = top
            fam.cursor = max(top, cursor)
        return pool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The mappings at one moment: per family (4/6, range, cursor, rows)."""

    families: tuple[tuple[int, str, int, list[tuple[int, str, float]]], ...]

    def to_json(self) -> dict:
        """Format 2 as a dict (what ``lines`` writes, in one piece)."""
        out: dict = {"version": FORMAT_VERSION, "v4": None, "v6": None}
        for fam_no, net, cursor, rows in self.families:
            key = f"v{fam_no}"
            out[key] = net
            out[f"{key}_entries"] = [[i, name, round(left, 3)] for i, name, left in rows]
            out[f"{key}_cursor"] = cursor
        return out

    def chunks(self):
        """The same JSON document as ``to_json`` in small pieces: written from a thread,
        a big map never holds the interpreter for long (one row at a time)."""
        head = {"version": FORMAT_VERSION, "v4": None, "v6": None}
        for fam_no, net, cursor, _rows in self.families:
            head[f"v{fam_no}"] = net
            head[f"v{fam_no}_cursor"] = cursor
        yield json.dumps(head, separators=(",", ":"))[:-1]
        for fam_no, _net, _cursor, rows in self.families:
            yield f',"v{fam_no}_entries":['
            sep = ""
            for i, name, left in rows:
                yield f"{sep}[{i},{json.dumps(name)},{round(left, 3)}]"
                sep = ","
            yield "]"
        yield "}"


def _raw(ip) -> bytes:
    if isinstance(ip, (bytes, bytearray, memoryview)):
        raw = bytes(ip)
        if len(raw) not in (4, 16):
            raise ValueError("an address is 4 or 16 bytes")
        return raw
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip)
    return ip.packed


def _span(fam: _Family) -> range:
    return range(fam.base, fam.base + fam.net.num_addresses)


# ---- the file edge: atomic save and load of the JSON state ---------------------------

def save(pool: FakeIpPool, path: str | Path, now: float) -> None:
    """Write *pool* to *path* atomically (see ``write_snapshot``)."""
    write_snapshot(pool.snapshot(now), path)


def write_snapshot(snap: Snapshot, path: str | Path) -> None:
    """Write *snap* to *path* atomically (temporary file in the same dir, then rename),
    readable by its owner only: the map lists every name the machine resolved."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)  # created private, before a byte is written
    with tmp.open("w") as f:
        for chunk in snap.chunks():
            f.write(chunk)
    tmp.replace(path)


def load(path: str | Path, now: float, **kwargs) -> FakeIpPool:
    """The pool saved at *path*, or an empty one (configured by *kwargs*) if there is none
    or it cannot be read: losing the mappings only costs applications a fresh lookup."""
    try:
        data = json.loads(Path(path).read_text())
        return FakeIpPool.from_json(data, now, **kwargs)
    except (OSError, ValueError, RecursionError):
        return FakeIpPool(**kwargs)
