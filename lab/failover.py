"""Failover in the lab: Atlantic with both lab proxies, a request every ``gap`` seconds from
the client namespace (a new connection each, as applications make them), and proxy 1
failed and restored under it. Each request's result says which proxy carried it: the
origin's ``GET /ip`` echoes the address it saw, and the two proxies leave from different
addresses.

Two halves: ``tick`` runs inside the client namespace and prints one JSON line per
request as it ends; :func:`run_failover` (the host side) brings Atlantic up with a
two-upstream config, starts the ticker, fails proxy 1 (refused, blackholed, 30% of
connections refused), restores it, takes both down, forces a packet past the tunnel,
and returns what it saw. ``python -m atlantic.lab.failover run`` writes that as a result
file and prints a table; the lab test runs the same with short intervals and asserts
behaviour, never timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from atlantic.lab.topology import LabEnv
from atlantic.lab.workloads import atlantic, lab_config, ns, status, up_with

ORIGIN = "origin.test"
REQUEST_TIMEOUT_S = 15.0


# ---- the ticker (inside the client namespace) ------------------------------------------

async def _one(host: str, path: str, timeout: float) -> tuple[str | None, str]:
    """GET ``path`` on a new connection: (the ip the origin saw, error or "")."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, 80)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read(65536)
            while chunk := await reader.read(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if status != [b"200"]:
            return None, head.split(b"\r\n", 1)[0].decode("latin-1")[:120] or "empty answer"
        return json.loads(body)["ip"], ""
    except TimeoutError:
        return None, f"no answer within {timeout:g} s"
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:120]
    finally:
        if writer is not None:
            writer.close()


async def tick(gap: float, seconds: float, timeout: float, out=sys.stdout) -> None:
    """A request every ``gap`` s for ``seconds``; one JSON line per request as it ends."""
    async def one(sent: float) -> None:
        ip, error = await _one(ORIGIN, "/ip", timeout)
        out.write(json.dumps({"sent": sent, "done": time.time(), "ip": ip, "error": error}) + "\n")
        out.flush()

    end = time.monotonic() + seconds
    async with asyncio.TaskGroup() as tg:
        while time.monotonic() < end:
            tg.create_task(one(time.time()))
            await asyncio.sleep(gap)


# ---- the host side ---------------------------------------------------------------------

@dataclass(slots=True)
class Sample:
    """One request: when it was sent and ended (wall clock), which proxy, or the error."""

    sent: float
    done: float
    via: str | None  # "proxy1", "proxy2", or None (failed)
    error: str


class Ticker:
    """The ticker process in the client namespace and the samples it reports."""

    def __init__(self, lab: LabEnv, exits: dict[str, str], gap: float, seconds: float):
        self.exits, self.samples, self._lock = exits, [], threading.Lock()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "atlantic.lab.failover", "tick",
             "--gap", str(gap), "--seconds", str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            r = json.loads(line)
            with self._lock:
                self.samples.append(Sample(r["sent"], r["done"], self.exits.get(r["ip"]), r["error"]))

    def after(self, t: float) -> list[Sample]:
        """Samples sent at or after ``t``, in the order sent."""
        with self._lock:
            return sorted((s for s in self.samples if s.sent >= t), key=lambda s: s.sent)

    def wait_for(self, t: float, pred: Callable[[list[Sample]], Sample | None], limit: float) -> Sample | None:
        """Poll (bounded by ``limit`` s) until ``pred(samples after t)`` names a sample."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if (hit := pred(self.after(t))) is not None:
                return hit
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)


def first_steady(via: str, run: int = 3) -> Callable[[list[Sample]], Sample | None]:
    """The first of ``run`` successes in a row through ``via`` (in the order sent)."""
    def pred(samples: list[Sample]) -> Sample | None:
        streak = [s for s in samples if s.done]  # every reported sample is done
        for k in range(len(streak) - run + 1):
            if all(s.via == via for s in streak[k:k + run]):
                return streak[k]
        return None
    return pred


def switches(samples: list[Sample]) -> int:
    """How often the proxy carrying successful requests changed (in the order sent)."""
    vias = [s.via for s in samples if s.via is not None]
    return sum(1 for a, b in zip(vias, vias[1:]) if a != b)


@dataclass(slots=True)
class Settings:
    """The [health] values the run uses (the product's defaults unless a test shortens them)."""

    active_interval_s: float = 30.0
    standby_interval_s: float = 120.0
    failback_hold_s: float = 60.0
    probe_timeout_s: float = 3.0
    gap_s: float = 0.25
    lossy_s: float = 180.0
    failback_limit_s: float = 600.0

    def toml(self) -> str:
        return (f"active_interval_s = {self.active_interval_s}\nstandby_interval_s = {self.standby_interval_s}\n"
                f"failback_hold_s = {self.failback_hold_s}\nprobe_timeout_s = {self.probe_timeout_s}\n")


def exit_addresses(lab: LabEnv) -> dict[str, str]:
    """The address the origin sees for each proxy (asked straight through each, Atlantic down)."""
    out = {}
    for name, ip in (("proxy1", lab.proxy_ip), ("proxy2", lab.proxy2_ip)):
        url = f"http://{lab.proxy_user}:{lab.proxy_password}@{ip}:{lab.squid_port}"
        r = ns(lab, ["curl", "-sS", "--max-time", "20", "-x", url, f"http://{ORIGIN}/ip"], timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"cannot reach the origin through {name}: {r.stderr.strip()}")
        out[json.loads(r.stdout)["ip"]] = name
    if len(out) != 2:
        raise RuntimeError("both lab proxies leave from the same address: the origin cannot tell them apart")
    return out


def _first(pred: Callable[[Sample], bool]) -> Callable[[list[Sample]], Sample | None]:
    return lambda samples: next((s for s in samples if pred(s)), None)


def _since(t: float, sample: Sample | None) -> float | None:
    return None if sample is None else round(sample.done - t, 2)


def fail_and_restore(lab: LabEnv, ticker: Ticker, action: str, s: Settings) -> dict:
    """Fail proxy 1 (``stop`` or ``blackhole``) until traffic is steady through proxy 2,
    then restore it and wait until traffic is back on proxy 1."""
    from atlantic.lab.lab import proxy_control

    t0 = time.time()
    proxy_control(1, action)
    try:
        over = ticker.wait_for(t0, first_steady("proxy2"), limit=90)
        failed = [x for x in ticker.after(t0) if x.via is None and (over is None or x.sent < over.sent)]
        health = status(lab).get("health") or {}
    finally:
        proxy_control(1, "start" if action == "stop" else "heal")
    t1 = time.time()
    back = ticker.wait_for(t1, first_steady("proxy1"), limit=s.failback_limit_s)
    first_fail = min(failed, key=lambda x: x.done) if failed else None
    return {
        "action": action,
        "first_failure_s": _since(t0, first_fail),
        "via_proxy2_s": _since(t0, over),
        "via_proxy2_after_first_failure_s": (None if over is None or first_fail is None
                                             else round(over.done - first_fail.done, 2)),
        "failed_requests": len(failed),
        "failed_examples": sorted({x.error for x in failed})[:3],
        "active_after": health.get("active"),
        "upstream1_after": (health.get("upstreams") or [{}])[0].get("state"),
        "failback_s": _since(t1, back),
    }


def lossy(lab: LabEnv, ticker: Ticker, s: Settings) -> dict:
    """Proxy 1 refuses 30% of new connections for ``lossy_s``: how often traffic switched."""
    from atlantic.lab.lab import proxy_control

    before = status(lab).get("health") or {}
    t0 = time.time()
    proxy_control(1, "lossy")
    try:
        time.sleep(s.lossy_s)
    finally:
        proxy_control(1, "heal")
    window = [x for x in ticker.after(t0) if x.sent < t0 + s.lossy_s]
    after = status(lab).get("health") or {}
    ticker.wait_for(time.time(), first_steady("proxy1"), limit=s.failback_limit_s)
    return {
        "seconds": s.lossy_s,
        "requests": len(window),
        "failed_requests": sum(1 for x in window if x.via is None),
        "via_proxy1": sum(1 for x in window if x.via == "proxy1"),
        "via_proxy2": sum(1 for x in window if x.via == "proxy2"),
        "switches": switches(window),
        "failovers": after.get("failovers", 0) - before.get("failovers", 0),
    }


def all_down(lab: LabEnv, ticker: Ticker) -> dict:
    """Both proxies stopped: status says so, requests fail at once with the reason; then both back."""
    from atlantic.lab.lab import proxy_control

    t0 = time.time()
    proxy_control(1, "stop")
    proxy_control(2, "stop")
    try:
        deadline, health = time.monotonic() + 60, {}
        while time.monotonic() < deadline and not health.get("all_down"):
            health = status(lab).get("health") or {}
            time.sleep(0.25)
        t_down = time.time()
        refused = ticker.wait_for(t_down + 0.5, _first(lambda x: x.via is None), limit=10)
    finally:
        proxy_control(1, "start")
        proxy_control(2, "start")
    t1 = time.time()
    back = ticker.wait_for(t1, _first(lambda x: x.via is not None), limit=120)
    return {
        "all_down_s": round(t_down - t0, 2) if health.get("all_down") else None,
        "refused_in_s": None if refused is None else round(refused.done - refused.sent, 3),
        "refused_with": None if refused is None else refused.error,
        "recovered_s": _since(t1, back),
    }


FORCE_OUT = """
import json, socket, subprocess
route = json.loads(subprocess.run(["ip", "-j", "route", "show", "default", "table", "main"],
                                  capture_output=True, text=True, check=True).stdout)[0]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, route["dev"].encode())
try:
    s.sendto(b"leak?", ("{ip}", 9))
except OSError as exc:
    print(exc.strerror)
"""


def forced_packet(lab: LabEnv) -> dict:
    """A process sends a datagram out of the physical interface, past the TUN and without the
    mark: the kill switch must block it, and status must count it (read every few seconds)."""
    before = (status(lab).get("leaks") or {}).get("blocked_packets", 0)
    t0 = time.monotonic()
    r = ns(lab, [sys.executable, "-c", FORCE_OUT.replace("{ip}", lab.origin_ip)], timeout=60)
    counted = None
    while time.monotonic() - t0 < 30:
        if (status(lab).get("leaks") or {}).get("blocked_packets", 0) > before:
            counted = round(time.monotonic() - t0, 2)
            break
        time.sleep(0.25)
    return {"send_error": r.stdout.strip() or None, "counted_after_s": counted}


def run_failover(lab: LabEnv, s: Settings = Settings(), *, log: Callable[[str], None] = print) -> dict:
    """Every scenario in turn, Atlantic up with both proxies; always brought down after."""
    exits = exit_addresses(lab)
    result: dict = {"settings": asdict(s), "exits": exits}
    with tempfile.TemporaryDirectory(prefix="atl-failover-") as tmp:
        up_with(lab, lab_config(lab, Path(tmp), [lab.proxy_ip, lab.proxy2_ip], s.toml()))
        ticker = Ticker(lab, exits, s.gap_s, seconds=3 * 3600)
        try:
            if ticker.wait_for(time.time(), first_steady("proxy1"), limit=60) is None:
                raise RuntimeError("traffic never went through proxy 1 after up")
            for action in ("stop", "blackhole"):
                log(f"proxy 1 {action}")
                result[action] = fail_and_restore(lab, ticker, action, s)
            log("proxy 1 lossy")
            result["lossy"] = lossy(lab, ticker, s)
            log("both proxies stopped")
            result["all_down"] = all_down(lab, ticker)
            log("a packet forced out of the physical interface")
            result["forced_packet"] = forced_packet(lab)
            result["status"] = status(lab)
        finally:
            ticker.stop()
            atlantic(lab, "down")
    return result


def table(result: dict) -> str:
    """The figures as a small text table."""
    rows = [("scenario", "first failure", "via proxy 2", "after 1st failure", "failed reqs", "failback")]
    for action in ("stop", "blackhole"):
        r = result[action]
        rows.append((f"proxy 1 {action}", r["first_failure_s"], r["via_proxy2_s"],
                     r["via_proxy2_after_first_failure_s"], r["failed_requests"], r["failback_s"]))
    lo, ad, fp = result["lossy"], result["all_down"], result["forced_packet"]
    lines = ["  ".join(f"{str(c):>18}" for c in row) for row in rows]
    lines.append(f"lossy proxy 1 for {lo['seconds']:g} s: {lo['requests']} requests, {lo['failed_requests']} failed, "
                 f"{lo['via_proxy1']} via proxy 1, {lo['via_proxy2']} via proxy 2, {lo['switches']} switches")
    lines.append(f"all down after {ad['all_down_s']} s; a request then refused in {ad['refused_in_s']} s "
                 f"({ad['refused_with']}); back {ad['recovered_s']} s after restart")
    lines.append(f"forced packet counted after {fp['counted_after_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m atlantic.lab.failover", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tick", help="(inside the client namespace) a request every --gap seconds")
    t.add_argument("--gap", type=float, default=0.25)
    t.add_argument("--seconds", type=float, default=600)
    t.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT_S)
    r = sub.add_parser("run", help="(host, lab up) every scenario; write --out")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--lossy-s", type=float, default=Settings().lossy_s)
    args = p.parse_args(argv)
    if args.cmd == "tick":
        try:
            asyncio.run(tick(args.gap, args.seconds, args.timeout))
        except KeyboardInterrupt:
            pass
        return 0
    from atlantic.lab.lab import current

    lab = current()
    if lab is None:
        print("error: the lab is not up; run `atlantic lab up` first", file=sys.stderr)
        return 1
    result = run_failover(lab, Settings(lossy_s=args.lossy_s))
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
