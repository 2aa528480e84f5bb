"""bench/suite.py's pure parts: the peers' random order, the command line, the peer rows
and workloads it runs, the burst's command and record, and sing-box's TUN MTU."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import suite

from atlantic.lab import singbox

NAMES = ["direct", "squid -x", "sing-box", "sing-box mtu 65520", "atlantic h1", "atlantic h2"]
ENV = SimpleNamespace(client_ns="atl-client", ca_file="/lab/ca.pem", origin_host="origin.test", proxy_ip="10.0.0.2",
                      squid_port=3128, proxy_user="u", proxy_password="pw")


def test_peer_order_is_a_permutation_fixed_by_seed_and_cell():
    """The same seed and cell give the same order; it is always a permutation of the peers."""
    first = suite.peer_order(7, "40", 1, "small", NAMES)
    assert sorted(first) == sorted(NAMES)
    assert suite.peer_order(7, "40", 1, "small", NAMES) == first
    assert NAMES == ["direct", "squid -x", "sing-box", "sing-box mtu 65520", "atlantic h1", "atlantic h2"]  # untouched


def test_peer_order_differs_between_repeats_workloads_and_seeds():
    """Orders are drawn per (rtt, repeat, workload), and per seed: no one order for the whole run."""
    cells = [(seed, rtt, rep, wl) for seed in (1, 2) for rtt in ("0", "40") for rep in (1, 2, 3)
             for wl in ("chunks-http", "small", "burst")]
    orders = {tuple(suite.peer_order(*cell, NAMES)) for cell in cells}
    assert len(orders) > len(cells) // 2


def test_peer_order_puts_every_peer_last_about_as_often():
    """Over many seeds each peer runs last about 1/6 of the time (Atlantic no longer always last)."""
    last = Counter(suite.peer_order(seed, "40", 1, "chunks-http", NAMES)[-1] for seed in range(1200))
    assert set(last) == set(NAMES)
    assert all(140 <= n <= 260 for n in last.values()), last  # 200 expected each


def test_peer_order_does_not_depend_on_other_selected_workloads():
    """A cell's order depends only on the seed, the cell and its peers, not on what ran before."""
    assert suite.peer_order(3, "0", 2, "bulk1", NAMES) == suite.peer_order(3, "0", 2, "bulk1", list(NAMES))


def test_command_line_seed_burst_and_defaults():
    """--seed and --burst are read; without --seed one is drawn from the clock; the default peers
    include sing-box at both MTUs and the default workloads include burst."""
    args = suite.parse_args(["--seed", "42", "--burst", "50"])
    assert (args.seed, args.burst) == (42, 50)
    drawn = suite.parse_args([])
    assert isinstance(drawn.seed, int) and drawn.burst == 1000
    assert {"sing-box", "sing-box-mtu65520", "atlantic-h1-tls", "atlantic-h2-tls"} <= set(drawn.peers)
    assert "atlantic-h1-nomon" not in drawn.peers
    assert "burst" in drawn.workloads and "ytdlp-debian-https" in drawn.workloads


def test_sing_box_at_65520_runs_wherever_sing_box_does():
    """Every workload with the sing-box row has the MTU 65520 row too; burst runs for direct,
    both sing-box rows and Atlantic."""
    peer = next(p for p in suite.PEERS if p.slug == "sing-box-mtu65520")
    assert (peer.name, peer.kind, peer.mtu) == ("sing-box mtu 65520", "sing-box", 65520)
    assert next(p for p in suite.PEERS if p.slug == "sing-box").mtu == 9000
    for name, (_, allowed) in suite.WORKLOADS.items():
        assert ("sing-box" in allowed) == ("sing-box mtu 65520" in allowed), name
    assert suite.WORKLOADS["burst"][1] == ("direct", "sing-box", "sing-box mtu 65520", "atlantic h1", "atlantic h2",
                                           "atlantic h1, tun", "atlantic h1, forward")


def test_plain_http_as_proxy_requests_is_a_peer_of_its_own():
    """`atlantic h1, forward` runs only when named, with [pool] plain_http = "forward"."""
    peer = next(p for p in suite.PEERS if p.slug == "atlantic-h1-fwd")
    assert (peer.name, peer.kind, peer.plain_http) == ("atlantic h1, forward", "atlantic", "forward")
    assert peer not in suite.DEFAULT_PEERS
    assert next(p for p in suite.PEERS if p.slug == "atlantic-h1").plain_http == "tunnel"


def test_the_tun_only_capture_is_a_peer_of_its_own():
    """`atlantic-h1-tun` runs Atlantic with [capture] tcp = "tun" wherever atlantic h1 runs, and
    only when named in --peers (the default peers use the kernel's redirect)."""
    peer = next(p for p in suite.PEERS if p.slug == "atlantic-h1-tun")
    assert (peer.kind, peer.tcp, peer.h2) == ("atlantic", "tun", False)
    assert all(p.tcp == "redirect" for p in suite.PEERS if p.slug != "atlantic-h1-tun")
    assert "atlantic-h1-tun" not in suite.parse_args([]).peers
    for name, (_, allowed) in suite.WORKLOADS.items():
        assert ("atlantic h1" in allowed) == ("atlantic h1, tun" in allowed), name


def test_sing_box_config_renders_the_mtu():
    """lab/singbox.py renders the TUN MTU it is given (default 9000)."""
    assert singbox.config(ENV)["inbounds"][0]["mtu"] == 9000
    assert singbox.config(ENV, 65520)["inbounds"][0]["mtu"] == 65520


def test_burst_argv_targets_the_origin_by_name_half_https():
    """The burst runs in the client namespace, half HTTPS, by the origin's /etc/hosts name,
    trusting the peer's CA when it has one (else the lab's)."""
    argv = suite.burst_argv(ENV, 1000, None, 240)
    assert argv[:4] == ["ip", "netns", "exec", "atl-client"]
    assert argv[5:7] == ["-m", "atlantic.lab.burst"]
    opts = dict(zip(argv[7::2], argv[8::2]))
    assert opts == {"--n": "1000", "--https": "500", "--ca": "/lab/ca.pem", "--http-host": "origin.test",
                    "--https-host": "origin.test", "--deadline": "240"}
    assert "/tmp/local-ca.pem" in suite.burst_argv(ENV, 10, "/tmp/local-ca.pem", 240)


def test_burst_record_keeps_counts_and_the_slowest_flow():
    """The suite keeps ok/failed counts, the slowest flow's seconds and failures by reason, not every flow."""
    out = {"n": 1000, "ok": 998, "failed": 2, "slowest_s": 3.2, "p50_s": 0.4, "p95_s": 1.1, "wall_s": 3.3,
           "over_10s": 0, "failure_reasons": {"http connect: x": {"count": 2}}, "failures": [{}] * 2,
           "resolved": {"http": "10.0.0.3:80"}, "ok_by_scheme": {}}
    rec = suite.burst_record(out)
    assert (rec["ok"], rec["failed"], rec["slowest_s"]) == (998, 2, 3.2)
    assert "failures" not in rec and rec["failure_reasons"] == {"http connect: x": {"count": 2}}


def test_run_suite_waits_before_every_peer_and_records_the_order(monkeypatch):
    """With the lab replaced by stubs: before every peer's run (not only between workloads)
    the suite waits for Squid, peers run in peer_order's order, and the JSON-bound records
    hold that order, each wait and each run's place."""
    import contextlib

    events: list[str] = []

    @contextlib.contextmanager
    def running(env, peer):
        events.append(f"up {peer.name}")
        yield suite.Running(peer, None, None)

    def wait(env, timeout):
        events.append("wait")
        return {"idle_wait_s": 1.5, "proxy_idle": True}

    monkeypatch.setattr(suite, "lab_at", lambda rtt: SimpleNamespace())
    monkeypatch.setattr(suite, "running", running)
    monkeypatch.setattr(suite, "wait_proxy_idle", wait)
    monkeypatch.setattr(suite, "WORKLOADS", {"w1": (lambda env, r, args: {"ms": 1.0}, tuple(NAMES)),
                                             "w2": (lambda env, r, args: {"ms": 2.0}, ("direct", "atlantic h1"))})
    args = suite.parse_args(["--rtts", "40", "--repeat", "2", "--seed", "9", "--peers",
                             "direct,sing-box,sing-box-mtu65520,atlantic-h1", "--workloads", "w1,w2"])
    results, order = {}, []
    suite.run_suite(args, results, lambda: None, order)
    ran = ["direct", "sing-box", "sing-box mtu 65520", "atlantic h1"]
    assert [(c["repeat"], c["workload"]) for c in order] == [(1, "w1"), (1, "w2"), (2, "w1"), (2, "w2")]
    for c in order:
        peers = ran if c["workload"] == "w1" else ["direct", "atlantic h1"]
        assert c["peers"] == suite.peer_order(9, "40", c["repeat"], c["workload"], peers)
        assert c["idle_wait_s"] == [1.5] * len(peers)
    assert events[::2] == ["wait"] * 12 and all(e.startswith("up ") for e in events[1::2])
    assert [e.removeprefix("up ") for e in events[1::2]] == [p for c in order for p in c["peers"]]
    first = results["40"]["w1"][order[0]["peers"][0]][0]
    assert first == {"ms": 1.0, "idle_wait_s": 1.5, "proxy_idle": True, "position": 1}


def test_status_sampler_keeps_the_daemons_report_time_apart():
    """The sampler's summary has the round trips' percentiles and, apart, those of the
    daemon's own report time (what the daemon spent, not the machine's scheduling)."""
    sampler = suite.StatusSampler(Path("/nonexistent"))
    sampler.rtts = [1.0, 2.0, 30.0]
    sampler.report_ms = [0.2, 0.3, 0.4]
    got = sampler.summary()
    assert got["p50"] == 2.0 and got["max"] == 30.0 and got["report_p99"] == 0.4 and got["n"] == 3
    assert "report_p99" not in suite.StatusSampler(Path("/nonexistent")).summary()
