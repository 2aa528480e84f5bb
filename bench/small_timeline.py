"""Where a small request's time goes: packet timestamps in the lab's client namespace.

The suite's ``small`` workload gives one number per request (the client's own time). This
splits it with tcpdump on every interface of the client namespace, for the ideal client
(one keep-alive connection to Squid) and Atlantic (a new application connection per
request, carried on a kept connection to Squid):

    network    the request's first byte leaving for the proxy -> the response's first
               byte back from it (what the delay line, Squid and the origin take)
    local      the client's time minus the network: for the ideal, Python's own loop;
               for Atlantic, that plus everything the daemon does
    in         Atlantic only: the application's request reaching the daemon -> the
               daemon writing it to the proxy (accept, sniff, parse, pool)
    out        Atlantic only: the response arriving from the proxy -> the daemon writing
               it to the application
    cpu        Atlantic only: the daemon's CPU time per request (all its threads, from
               /proc/PID/task/*/schedstat over the timed requests, divided by their number:
               accept to close, plus what runs in the background meanwhile)
    background Atlantic only: of that, what the daemon spends with no request at all (its
               CPU over ``IDLE_S`` before the requests, at the same rate for as long as they
               took, per request: health probes, timers)
    waiting    Atlantic only: the daemon's time runnable but waiting for a CPU, per request

Medians over ``--count`` requests, for each ``--repeat``; prints a table and writes
bench/results/small-timeline-<date>.json. Run as root (the lab)::

    .venv/bin/python bench/small_timeline.py [--rtt 40] [--count 200] [--repeat 2] [--awake]

``--awake`` measures every peer twice per repeat: as it is, and with one busy loop per CPU
at nice 19 (``awake`` rows): every process of the lab preempts them at once, but no CPU
halts while a request waits for the network. Between requests 80 ms apart an idle virtual
CPU halts, and waking it (the hypervisor runs it again) is a cost of the machine that
lands on whatever wakes first; the difference between the two rows is that cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402 - bench/ is not a package

from atlantic.lab import workloads as w  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("ideal", "atlantic-h1")
LISTEN_TIMEOUT_S = 10.0
SETTLE_S = 0.5  # after "listening on", and before stopping tcpdump (it writes what it holds)
IDLE_S = 5.0  # the daemon's own CPU with no request, measured before the timed ones


def capture(env, fn, pcap: Path):
    """Run ``fn()`` while tcpdump records every TCP packet in the client namespace; fn's result.
    ``fn`` starts once tcpdump says it is listening (a short run would otherwise go unseen)."""
    argv = ["ip", "netns", "exec", env.client_ns, "tcpdump", "-i", "any", "-n", "--immediate-mode", "-U", "-s", "128",
            "-w", str(pcap), "tcp"]  # immediate: a short run ends before a capture block would fill
    dump = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while time.monotonic() < deadline and select.select([dump.stderr], [], [], 0.5)[0]:
            line = dump.stderr.readline()
            if not line or line.startswith("listening on"):
                break
        if dump.poll() is not None:
            raise RuntimeError(f"tcpdump exited ({dump.returncode}) in {env.client_ns}")
        time.sleep(SETTLE_S)
        out = fn()
        time.sleep(SETTLE_S)
    finally:
        dump.terminate()
        dump.wait(10)
        dump.stderr.close()
    return out


def moments(pcap: Path, proxy_port: int, through_daemon: bool) -> list[dict[str, float]]:
    """Per request, in order: when its bytes passed each point (seconds, capture clock).

    ``app_req``: the application's GET reaching the daemon; ``up_req``: the first payload to
    the proxy after the previous response; ``up_resp``: the first payload back from it;
    ``app_resp``: the daemon's first ``HTTP/`` payload to the application. The ideal client's
    requests have the proxy points only; ``through_daemon`` keeps only requests an application
    made (not the health monitor's probes on the same proxy connections).
    """
    from scapy.all import TCP, PcapReader  # off the hot path: a benchmark's parser

    out: list[dict[str, float]] = []
    cur: dict[str, float] = {}
    with PcapReader(str(pcap)) as packets:
        for p in packets:
            if TCP not in p:
                continue
            payload = bytes(p[TCP].payload)
            if not payload:
                continue
            t, tcp = float(p.time), p[TCP]
            if tcp.dport == proxy_port:
                if "up_req" not in cur:
                    cur["up_req"] = t
            elif tcp.sport == proxy_port:
                if "up_req" in cur and "up_resp" not in cur:
                    cur["up_resp"] = t
            elif payload.startswith(b"GET "):
                cur = {"app_req": t}
                out.append(cur)
                continue
            elif payload.startswith(b"HTTP/"):
                cur.setdefault("app_resp", t)
            if not through_daemon and "up_resp" in cur:  # the ideal client: one pair per request
                out.append(cur)
                cur = {}
    return [m for m in out if "up_req" in m and "up_resp" in m and (not through_daemon or "app_resp" in m)]


def daemon_clock(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable and waiting for one) summed over the threads
    ``pid`` has now (schedstat: nanoseconds; a thread that ended takes its share with it)."""
    on = waiting = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):  # ended between the listing and the read
            continue
        on += int(run_ns)
        waiting += int(wait_ns)
    return on / 1e9, waiting / 1e9


def split(times: list[float], marks: list[dict[str, float]]) -> dict:
    """Medians (ms) of the client's time and of its parts; the last requests pair up."""
    n = min(len(times), len(marks))
    times, marks = times[-n:], marks[-n:]
    ms = 1000.0
    net = [(m["up_resp"] - m["up_req"]) * ms for m in marks]
    row = {"n": n, "client_ms": statistics.median(t * ms for t in times), "network_ms": statistics.median(net),
           "local_ms": statistics.median(t * ms - x for t, x in zip(times, net))}
    if all("app_req" in m and "app_resp" in m for m in marks):
        row["in_ms"] = statistics.median((m["up_req"] - m["app_req"]) * ms for m in marks)
        row["out_ms"] = statistics.median((m["app_resp"] - m["up_resp"]) * ms for m in marks)
    return row


SPIN_LIFETIME_S = 600.0  # a busy loop ends by itself after this, whatever happens
SPIN = ("import os, time\n"
        "os.nice(19)\n"
        f"end = time.monotonic() + {SPIN_LIFETIME_S}\n"
        "while time.monotonic() < end:\n"
        "    pass\n")


@contextlib.contextmanager
def cpus_awake(on: bool):
    """With ``on``: one busy loop per CPU at nice 19 for the duration, ended by PID."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(os.cpu_count() or 1)] if on else []
    try:
        yield
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait(10)


def timed(pid: int, env, count: int) -> tuple[dict, dict]:
    """``count`` small requests through the daemon ``pid``: their times, and per request
    (ms) the daemon's CPU, the part of it that is background (its idle rate over ``IDLE_S``
    first) and its wait for a CPU."""
    idle0 = daemon_clock(pid)
    time.sleep(IDLE_S)
    before = daemon_clock(pid)
    t0 = time.monotonic()
    out = w.small_requests(env, "plain", count)
    took = time.monotonic() - t0
    after = daemon_clock(pid)
    per = 1000 / count
    return out, {"cpu_ms": (after[0] - before[0]) * per, "waiting_ms": (after[1] - before[1]) * per,
                 "background_ms": (before[0] - idle0[0]) / IDLE_S * took * per}


def run(args) -> dict:
    env = suite.lab_at(args.rtt)
    peers = {p.slug: p for p in suite.PEERS}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="atl-timeline-") as tmp:
        for rep in range(1, args.repeat + 1):
            for peer in (peers[slug] for slug in PEERS):
                for awake in (False, True) if args.awake else (False,):
                    pcap = Path(tmp) / f"{peer.slug}-{rep}-{awake}.pcap"
                    with cpus_awake(awake):
                        if peer.kind == "ideal":
                            out = capture(env, lambda: w.small_requests(env, "ideal", args.count), pcap)
                            used = None
                        else:
                            with suite.running(env, peer) as r:
                                w.small_requests(env, "plain", 5)  # the kept connection is open before we time
                                out, used = capture(env, lambda: timed(r.pid, env, args.count), pcap)
                    row = {"peer": peer.name, "repeat": rep, "awake": awake,
                           **split(out["times"], moments(pcap, env.squid_port, peer.kind != "ideal"))}
                    row.update(used or {})
                    rows.append(row)
                    shown = ("in_ms", "out_ms", "cpu_ms", "background_ms", "waiting_ms")
                    parts = "".join(f"  {k[:-3]} {row[k]:.2f}" for k in shown if k in row)
                    print(f"rep {rep} {peer.name:12}{' awake' if awake else ''} client {row['client_ms']:.2f}  "
                          f"network {row['network_ms']:.2f}  local {row['local_ms']:.2f}{parts}  (n {row['n']})",
                          file=sys.stderr, flush=True)
    return {"benchmark": "small-timeline", "meta": {**suite.machine(), "rtt_ms": args.rtt, "count": args.count,
                                                    "awake": args.awake}, "rows": rows}


def table(result: dict) -> str:
    lines = [f"Small requests at RTT {result['meta']['rtt_ms']:g} ms, medians (ms) per repeat"
             + (" (awake: a nice-19 busy loop per CPU, so no CPU halts)" if result["meta"].get("awake") else ""),
             "", "| peer | repeat | client | network | local | in | out | daemon CPU per request | of it background "
             "| waiting for a CPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [f"{r[k]:.2f}" if k in r else "-" for k in ("client_ms", "network_ms", "local_ms", "in_ms", "out_ms",
                                                           "cpu_ms", "background_ms", "waiting_ms")]
        lines.append(f"| {r['peer']}{' awake' if r.get('awake') else ''} | {r['repeat']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtt", type=float, default=40.0)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--awake", action="store_true", help="also measure with no CPU halting (see above)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    result = run(args)
    text = table(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"small-timeline-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(text + "\n")
    print(f"\nwrote {stem}.{{json,md}}")
    return stem


if __name__ == "__main__":
    main()
