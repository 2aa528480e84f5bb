"""System-wide capture end to end: `atlantic up` in the lab's client namespace, real Squid,
nginx and curl, no proxy setting in any application."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

from atlantic_lab import ATLANTIC, atlantic, atlantic_up, curl, ns_run, squid_lines, status


def squid_log_lines(lab) -> list[str]:
    return Path(lab.squid_access_log).read_text().splitlines()


def leftovers(lab) -> dict:
    """What capture could have left in the client namespace: rules, table routes, the TUN, and
    Atlantic's nft tables (the kill switch, the TCP redirect)."""
    rules = ns_run(lab.client_ns, ["ip", "rule"], text=True).stdout
    tables = ns_run(lab.client_ns, ["nft", "list", "tables"], text=True).stdout
    routes = ns_run(lab.client_ns, ["ip", "route", "show", "table", "2026"], text=True).stdout
    links = ns_run(lab.client_ns, ["ip", "-o", "link"], text=True).stdout
    return {
        "rules": [ln for ln in rules.splitlines() if "2026" in ln or "suppress_prefixlength" in ln],
        "routes": routes.strip(),
        "tun": "atl0" in links,
        "nft": sorted(ln.strip() for ln in tables.splitlines() if "atlantic" in ln),
    }


def test_plain_curl_goes_through_squid_http_and_https(lab):
    """With Atlantic up, curl without -x fetches the 2 MB file over HTTP and HTTPS, via Squid (logged)."""
    before = len(squid_log_lines(lab))
    with atlantic_up(lab, lab.proxy_url) as st:
        assert st["state"] == "up"
        assert "***" in st["upstream"] and lab.proxy_password not in json.dumps(st)
        for base in (f"http://{lab.origin_host}", f"https://{lab.origin_host}"):
            res = curl(lab, f"{base}/2mb")
            assert res.returncode == 0, res.stderr
            assert hashlib.sha256(res.stdout).hexdigest() == lab.sha256_2mb
        st = status(lab)
        assert st["flows_total"] >= 2 and st["bytes_down"] >= 2 * 2 * 1024 * 1024
    # HTTP rides the request relay in a kept tunnel to the origin (logged when `down` closes it);
    # HTTPS a tunnel to the ClientHello's SNI name.
    for needle in (f"CONNECT {lab.origin_host}:80", f"CONNECT {lab.origin_host}:443"):
        lines = squid_lines(lab, before, needle, 1)
        assert any(lab.proxy_user in ln for ln in lines), (needle, squid_log_lines(lab)[before:])


CONCURRENT_SCRIPT = r"""
import asyncio, hashlib, sys
HOST, IP, N, WANT = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
async def one(sem):
    async with sem:
        r, w = await asyncio.open_connection(IP, 80)
        w.write(f"GET /2mb HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = await r.read(-1)
        w.close()
        body = data.split(b"\r\n\r\n", 1)[1]
        return hashlib.sha256(body).hexdigest() == WANT
async def main():
    sem = asyncio.Semaphore(N)
    ok = await asyncio.wait_for(asyncio.gather(*(one(sem) for _ in range(N)), return_exceptions=True), 240)
    print(sum(1 for x in ok if x is True), len(ok), [repr(x) for x in ok if x is not True][:3])
asyncio.run(main())
"""


def test_200_concurrent_flows_are_intact(lab):
    """200 concurrent captured flows through Squid all complete with the right bytes."""
    with atlantic_up(lab, lab.proxy_url):
        res = ns_run(lab.client_ns, [sys.executable, "-c", CONCURRENT_SCRIPT, lab.origin_host, lab.origin_ip,
                                     "200", lab.sha256_2mb], timeout=300, text=True)
        assert res.returncode == 0, res.stderr
        good, total, errors = res.stdout.split(" ", 2)
        assert (int(good), int(total)) == (200, 200), res.stdout
        st = status(lab)
        assert st["flows_failed"] == 0 and st["flows_total"] >= 200


GARBAGE_SCRIPT = r"""
import json, random, socket, sys, time
from scapy.all import IP, TCP, UDP, ICMP, Raw, fragment
dst, tun = sys.argv[1], sys.argv[2]
rnd = random.Random(7)
whole, runts = [], []  # whole: complete IPv4 headers; runts: cut short or random bytes
for i in range(300):
    kind = i % 7
    if kind == 0:    # ACK for a flow that does not exist
        whole.append(IP(dst=dst)/TCP(sport=rnd.randrange(1024, 65535), dport=80, flags="A", seq=rnd.getrandbits(32)))
    elif kind == 1:  # wrong TCP checksum
        whole.append(IP(dst=dst)/TCP(dport=80, flags="S", chksum=0xdead))
    elif kind == 2:  # nonsense flags and random payload
        whole.append(IP(dst=dst)/TCP(dport=443, flags="FSRPAUEC")/Raw(bytes(rnd.getrandbits(8) for _ in range(40))))
    elif kind == 3:  # a data offset pointing past the packet
        whole.append(IP(dst=dst)/TCP(dport=80, dataofs=15, flags="S"))
    elif kind == 4:  # fragments of a large UDP datagram
        whole.extend(fragment(IP(dst=dst)/UDP(dport=9)/Raw(b"x" * 3000), fragsize=800))
    elif kind == 5:  # ICMP and an unknown protocol number
        whole.append(IP(dst=dst)/ICMP())
        whole.append(IP(dst=dst, proto=253)/Raw(b"garbage"))
    else:            # truncated headers and random bytes
        runts.append(bytes(IP(dst=dst)/TCP(dport=80))[:rnd.randrange(1, 39)])
        runts.append(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 120))))
# Write straight out of the TUN (AF_PACKET on atl0): the daemon's packet loop reads each.
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
def send(pkts):
    sent = 0
    for p in pkts:
        try:
            s.sendto(bytes(p), (tun, 0x0800))
            sent += 1
        except OSError:
            pass  # the kernel refuses some runts itself
        time.sleep(0.002)
    return sent
print(json.dumps({"whole": len(whole), "whole_sent": send(whole), "runts": len(runts), "runts_sent": send(runts)}))
"""


def test_garbage_packets_do_not_disturb_a_download(lab):
    """Crafted bad packets sent into the TUN while a download runs: every whole one reaches the
    daemon, which drops garbage and counts it, and the download stays intact."""
    with atlantic_up(lab, lab.proxy_url):
        download = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, "curl", "-sS", "--noproxy", "*", "--max-time", "120",
             "--limit-rate", "20M", f"http://{lab.origin_host}/100mb"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            garbage = ns_run(lab.client_ns, [sys.executable, "-c", GARBAGE_SCRIPT, lab.origin_ip, "atl0"], timeout=120, text=True)
            assert garbage.returncode == 0, garbage.stderr
            body, err = download.communicate(timeout=180)
        finally:
            if download.poll() is None:
                download.kill()
                download.wait()
        sent = json.loads(garbage.stdout)
        assert sent["whole"] > 0 and sent["whole_sent"] == sent["whole"], sent
        assert download.returncode == 0, err
        assert hashlib.sha256(body).hexdigest() == lab.sha256_100mb
        st = status(lab)
        assert st["state"] == "up"
        assert sum(v for k, v in st["stack"].items() if k.startswith("dropped")) > 0, st["stack"]


def test_kill_9_fails_closed_and_down_restores(lab):
    """After kill -9 traffic does not leak directly; `atlantic down` then removes every trace."""
    atlantic(lab, "down")
    before = leftovers(lab)
    res = atlantic(lab, "up", "--upstream", lab.proxy_url)
    assert res.returncode == 0, res.stderr
    try:
        pid = status(lab)["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        st = status(lab)
        assert st["state"] == "down" and "atlantic down" in st["problem"]
        # Fail closed: the direct path to the origin is not taken while the rules stay.
        leak = curl(lab, f"http://{lab.origin_ip}/small", timeout=5)
        assert leak.returncode != 0
    finally:
        res = atlantic(lab, "down")
    assert res.returncode == 0, res.stderr
    assert leftovers(lab) == before == {"rules": [], "routes": "", "tun": False, "nft": []}
    again = atlantic(lab, "down")
    assert again.returncode == 0 and "not up" in again.stdout
    direct = curl(lab, f"http://{lab.origin_host}/2mb")
    assert direct.returncode == 0 and hashlib.sha256(direct.stdout).hexdigest() == lab.sha256_2mb


def test_wrong_password_fails_fast_and_status_says_why(lab):
    """A wrong proxy password: HTTP gets a 502 naming the 407, HTTPS a reset; status says why; the daemon lives on."""
    bad = re.sub(r":[^:@/]+@", ":wrong-password@", lab.proxy_url, count=1)
    with atlantic_up(lab, bad):
        res = curl(lab, f"http://{lab.origin_host}/2mb", "-w", "\n%{http_code}", timeout=20)
        assert res.returncode == 0, res.stderr
        body, code = res.stdout.decode().rsplit("\n", 1)
        assert code == "502" and "407" in body and "wrong-password" not in body
        st = status(lab)
        assert st["state"] == "up" and st["flows_failed"] >= 1
        assert "407" in st["last_error"]["message"] and "wrong-password" not in json.dumps(st)
        res = curl(lab, f"https://{lab.origin_host}/2mb", timeout=20)
        assert res.returncode not in (0, 28)
        assert status(lab)["state"] == "up"


def test_status_and_down_when_nothing_is_up(lab):
    """With nothing up, status says down and `down` succeeds, twice."""
    atlantic(lab, "down")
    assert status(lab) == {"state": "down"}
    for _ in range(2):
        res = atlantic(lab, "down")
        assert res.returncode == 0 and "not up" in res.stdout


def test_direct_upstream_carries_flows(lab):
    """`--upstream direct` carries flows itself (marked sockets), without Squid."""
    before = len(squid_log_lines(lab))
    with atlantic_up(lab, "direct"):
        for base in (f"http://{lab.origin_host}", f"https://{lab.origin_host}"):
            res = curl(lab, f"{base}/2mb")
            assert res.returncode == 0, res.stderr
            assert hashlib.sha256(res.stdout).hexdigest() == lab.sha256_2mb
        assert status(lab)["pool"]["requests"] == 1
    assert len(squid_log_lines(lab)) == before


def test_two_instances_in_two_namespaces_do_not_collide(lab):
    """Atlantic in the lab client and in a second namespace: each status and down finds its own."""
    other = f"atlt-two-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", other], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", other, "link", "set", "lo", "up"], check=True, timeout=10)
        with atlantic_up(lab, lab.proxy_url) as mine:
            res = ns_run(other, [*ATLANTIC, "up", "--upstream", "direct"], timeout=30, text=True)
            assert res.returncode == 0, res.stderr
            theirs = json.loads(ns_run(other, [*ATLANTIC, "status", "--json"], text=True).stdout)
            assert theirs["state"] == "up" and theirs["pid"] != mine["pid"]
            assert theirs["upstream"] == "direct"
            assert status(lab)["pid"] == mine["pid"]
            res = ns_run(other, [*ATLANTIC, "down"], timeout=30, text=True)
            assert res.returncode == 0, res.stderr
            assert status(lab)["state"] == "up"
    finally:
        ns_run(other, [*ATLANTIC, "down"], timeout=30)
        subprocess.run(["ip", "netns", "del", other], timeout=10)


def test_ports_the_provider_does_not_carry_are_refused_with_the_reason(lab, tmp_path):
    """With capture.ports = [80, 443] and other_ports = reject, a flow to 8080 is reset at once; status says why."""
    cfg = tmp_path / "atlantic.toml"
    cfg.touch(mode=0o600)  # the URL holds the proxy password
    cfg.write_text(f'[upstream]\nurl = "{lab.proxy_url}"\n[capture]\nports = [80, 443]\nother_ports = "reject"\n')
    with atlantic_up(lab, config=str(cfg)):
        refused = curl(lab, f"http://{lab.origin_ip}:8080/small", timeout=20)
        assert refused.returncode not in (0, 28), refused.returncode  # reset, not a timeout
        st = status(lab)
        assert "port 8080 is not carried" in st["last_error"]["message"]
        carried = curl(lab, f"http://{lab.origin_host}/2mb")
        assert carried.returncode == 0 and hashlib.sha256(carried.stdout).hexdigest() == lab.sha256_2mb


def test_dead_proxy_fails_fast_with_a_reason(lab):
    """A proxy port with nothing listening: HTTP gets a 502 saying so, HTTPS a reset; status names it."""
    dead = f"http://{lab.proxy_user}:{lab.proxy_password}@{lab.proxy_ip}:3999"
    with atlantic_up(lab, dead):
        res = curl(lab, f"http://{lab.origin_host}/small", "-w", "\n%{http_code}", timeout=20)
        assert res.returncode == 0, res.stderr
        body, code = res.stdout.decode().rsplit("\n", 1)
        assert code == "502" and "3999" in body and lab.proxy_password not in body
        res = curl(lab, f"https://{lab.origin_host}/small", timeout=20)
        assert res.returncode not in (0, 28)
        st = status(lab)
        assert st["state"] == "up" and "3999" in st["last_error"]["message"]
