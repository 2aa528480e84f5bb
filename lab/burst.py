"""A burst of application connections opened at once, every body checked (issue 14).

Run inside a lab namespace (``ip netns exec atl-client ...`` or ``atlantic lab exec --``);
one process, one asyncio loop, N connections started together, like N applications
each opening one connection at the same moment. Each flow is one plain-HTTP or HTTPS
range request for a distinct 64 KiB (``--size``) slice of the origin's ``/100mb``; its
body is compared with the slice of the file's known content (:func:`lab.media.file_content`:
SHAKE-256, so nothing has to be fetched first). Prints one JSON object::

    ip netns exec atl-client python -m atlantic.lab.burst --n 1000 --https 500 \\
        --ca "$LAB_CA_FILE" --https-host www.origin.test

HTTPS flows use names resolved once, before the burst, with the system resolver: with
Atlantic up, ``www.origin.test`` (a name only the proxy knows) gets a fake address from
Atlantic's DNS, so the flow's name must travel to the exit node. Bounded: every flow
still open at ``--deadline`` seconds is cut and reported with the phase it was in.
A benchmark-style probe: it reports; the tests decide what to assert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

from atlantic.lab.media import TEST_FILES, file_content

__all__ = ["FlowResult", "check_response", "parse_head", "plan_ranges", "run_burst", "summarize"]

FILE = "100mb"
MAX_HEAD = 16 * 1024
MAX_FAILURES_LISTED = 40


@dataclass(slots=True)
class FlowResult:
    """What happened to one flow (times in seconds since the burst started)."""

    index: int
    scheme: str
    start: int  # first byte of the range
    ok: bool = False
    phase: str = "connect"  # connect -> request -> head -> body -> done
    reason: str = ""
    connected_s: float | None = None
    first_byte_s: float | None = None
    done_s: float | None = None
    body_bytes: int = 0


def plan_ranges(n: int, size: int, file_size: int = TEST_FILES[FILE]) -> list[int]:
    """Distinct start offsets for ``n`` ranges of ``size`` bytes (wrapping, spread out)."""
    slots = max(1, file_size // size)
    stride = 7 if slots % 7 else 1  # neighbours in time are far apart in the file
    return [((i * stride) % slots) * size for i in range(n)]


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of an HTTP/1.x response head (no trailing CRLFCRLF)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def check_response(status: int, headers: dict[str, str], start: int, size: int) -> str | None:
    """Why this head is not the expected 206 for ``bytes=start-(start+size-1)``, or None."""
    end = start + size - 1
    if status != 206:
        return f"status {status}"
    want = f"bytes {start}-{end}/{TEST_FILES[FILE]}"
    if headers.get("content-range") != want:
        return f"content-range {headers.get('content-range')!r}, want {want!r}"
    if headers.get("content-length") != str(size):
        return f"content-length {headers.get('content-length')!r}, want {size}"
    return None


async def _one(res: FlowResult, addr: tuple[str, int], host: str, size: int, expected: bytes,
               tls: ssl.SSLContext | None, t0: float) -> None:
    clock = time.monotonic
    reader = writer = None
    try:
        reader, writer = await asyncio.open_connection(
            addr[0], addr[1], ssl=tls, server_hostname=host if tls else None,
            ssl_handshake_timeout=None if tls is None else 600)
        res.connected_s = clock() - t0
        res.phase = "request"
        end = res.start + size - 1
        writer.write(f"GET /{FILE} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={res.start}-{end}\r\n"
                     f"User-Agent: atlantic-burst\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        res.phase = "head"
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError(f"EOF after {len(buf)} bytes of the response head")
            if not buf:
                res.first_byte_s = clock() - t0
            buf += chunk
            if len(buf) > MAX_HEAD and b"\r\n\r\n" not in buf:
                raise ValueError("response head too large")
        head, _, body = buf.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        if (why := check_response(status, headers, res.start, size)) is not None:
            res.reason = why
            return
        res.phase = "body"
        parts = [body]
        got = len(body)
        while got < size:
            chunk = await reader.read(min(262144, size - got))
            if not chunk:
                raise ConnectionError(f"EOF after {got} of {size} body bytes")
            parts.append(chunk)
            got += len(chunk)
        res.body_bytes = got
        data = b"".join(parts)
        if data != expected[res.start:res.start + size]:
            bad = next((i for i, (a, b) in enumerate(zip(data, expected[res.start:])) if a != b), len(data))
            res.reason = f"body differs from the file at byte {res.start + bad}"
            return
        res.phase, res.ok, res.done_s = "done", True, clock() - t0
    except (OSError, ValueError, ssl.SSLError, asyncio.IncompleteReadError) as e:
        res.reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    finally:
        if res.done_s is None:
            res.done_s = clock() - t0
        if writer is not None:
            writer.close()


async def _resolve(host: str, port: int) -> tuple[str, int]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             family=socket.AF_INET)
    except socket.gaierror as e:
        raise SystemExit(f"burst: cannot resolve {host} ({e.strerror}); is Atlantic up in this "
                         "namespace? (names like www.origin.test resolve only through its DNS)") from None
    return infos[0][4][0], port


async def run_burst(n: int, https: int, size: int, http_host: str, https_host: str, ca: str | None,
                    deadline: float) -> dict:
    """Open ``n`` flows at once (``https`` of them HTTPS, interleaved); the JSON-able report."""
    if https and not ca:
        raise SystemExit("--https needs --ca (the lab CA file)")
    starts = plan_ranges(n, size)
    expected = file_content(FILE, max(starts) + size)
    addrs = {"http": await _resolve(http_host, 80)}
    if https:
        addrs["https"] = await _resolve(https_host, 443)
    tls = None
    if https:
        tls = ssl.create_default_context(cafile=ca)
        tls.set_alpn_protocols(["http/1.1"])
    every = n / https if https else 0
    https_idx = {int(k * every) for k in range(https)}
    results = [FlowResult(i, "https" if i in https_idx else "http", starts[i]) for i in range(n)]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(_one(r, addrs[r.scheme], https_host if r.scheme == "https" else http_host,
                                      size, expected, tls if r.scheme == "https" else None, t0))
             for r in results]
    _done, pending = await asyncio.wait(tasks, timeout=deadline)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for r in results:
        if not r.ok and not r.reason:
            r.reason = f"still in phase {r.phase} at the {deadline:g} s deadline"
    return summarize(results, wall_s=time.monotonic() - t0, addrs=addrs, size=size)


def summarize(results: list[FlowResult], *, wall_s: float, addrs: dict, size: int) -> dict:
    """Counts, percentiles and the failures (first few in full, all by reason)."""
    ok = [r for r in results if r.ok]
    bad = [r for r in results if not r.ok]
    times = sorted(r.done_s for r in ok)

    def pct(p: float) -> float | None:
        return round(times[min(len(times) - 1, int(p * len(times)))], 3) if times else None

    def reason_class(r: FlowResult) -> str:
        return f"{r.scheme} {r.phase}: " + "".join(c for c in r.reason if not c.isdigit())[:100]

    return {
        "n": len(results),
        "ok": len(ok),
        "failed": len(bad),
        "ok_by_scheme": dict(Counter(r.scheme for r in ok)),
        "failed_by_scheme": dict(Counter(r.scheme for r in bad)),
        "size": size,
        "wall_s": round(wall_s, 3),
        "p50_s": round(statistics.median(times), 3) if times else None,
        "p95_s": pct(0.95),
        "slowest_s": round(times[-1], 3) if times else None,
        "over_10s": sum(1 for t in times if t > 10),
        "failure_reasons": {
            reason: {"count": len(rs), "first_s": round(min(r.done_s for r in rs), 1),
                     "last_s": round(max(r.done_s for r in rs), 1)}
            for reason, rs in sorted(_group(bad, reason_class).items(), key=lambda kv: -len(kv[1]))},
        "failures": [asdict(r) for r in bad[:MAX_FAILURES_LISTED]],
        "resolved": {k: f"{a[0]}:{a[1]}" for k, a in addrs.items()},
    }


def _group(items: list[FlowResult], key) -> dict[str, list[FlowResult]]:
    out: dict[str, list[FlowResult]] = {}
    for r in items:
        out.setdefault(key(r), []).append(r)
    return out


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m atlantic.lab.burst", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="flows opened at once (at most 2,000)")
    p.add_argument("--https", type=int, default=0, help="how many of them are HTTPS (interleaved)")
    p.add_argument("--size", type=int, default=64 * 1024, help="bytes per range request")
    p.add_argument("--http-host", default="origin.test", help="name for plain HTTP flows (port 80)")
    p.add_argument("--https-host", default="www.origin.test", help="name for HTTPS flows (port 443)")
    p.add_argument("--ca", default=None, help="the lab CA file (HTTPS)")
    p.add_argument("--deadline", type=float, default=150.0, help="seconds before open flows are cut")
    a = p.parse_args(argv)
    if not 1 <= a.n <= 2000 or not 0 <= a.https <= a.n or not 1 <= a.size <= 1 << 20:
        p.error("need 1 <= n <= 2000, 0 <= https <= n, 1 <= size <= 1 MiB")
    _raise_nofile(a.n + 64)
    out = asyncio.run(run_burst(a.n, a.https, a.size, a.http_host, a.https_host, a.ca, a.deadline))
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if out["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
