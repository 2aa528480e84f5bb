"""The daemon as systemd runs it (issue 12), in the lab's client namespace: `up --foreground`
with NOTIFY_SOCKET and WATCHDOG_USEC set, as a Type=notify unit with WatchdogSec= sees it.
READY=1 comes once traffic flows, with a STATUS= line; WATCHDOG=1 pings come from the
event loop; SIGHUP reloads (RELOADING=1, then READY=1; a broken file is refused in one
line and the daemon keeps serving); SIGTERM sends STOPPING=1 and restores the machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from atlantic_lab import atlantic, curl, status

pytestmark = pytest.mark.lab

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s


class Listener:
    """systemd's side of NOTIFY_SOCKET: a datagram socket collecting what the daemon says."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def until(self, pred, limit: float = 30.0) -> dict[str, str]:
        """Read messages (bounded) until one satisfies ``pred``; return it."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            self.messages.append(msg)
            if pred(msg):
                return msg
        raise AssertionError(f"no such message within {limit} s; got {self.messages[-5:]}")


def test_notify_watchdog_reload_and_stop(lab, tmp_path):
    """The whole notify protocol against the real daemon, through the lab's Squid."""
    pw = tmp_path / "pw"
    pw.write_text(lab.proxy_password + "\n")
    os.chmod(pw, 0o600)
    conf = tmp_path / "atlantic.toml"
    good = (f'[[upstream]]\nurl = "http://{lab.proxy_user}@{lab.proxy_ip}:{lab.squid_port}"\npassword_file = "{pw}"\n'
            '[health]\nprobe_url = "http://origin.test/small"\nexpected_status = 200\necho_url = ""\n')
    conf.write_text(good)
    os.chmod(conf, 0o600)
    listener = Listener(str(tmp_path / "notify"))
    atlantic(lab, "down")
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC=str(WATCHDOG_USEC))
    daemon = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "atlantic", "up",
                               "--foreground", "--config", str(conf)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready = listener.until(lambda m: m.get("READY") == "1")
        assert ready["STATUS"].startswith("up: via http://atl") and "flows open" in ready["STATUS"]
        assert status(lab)["state"] == "up"  # READY=1 only once traffic can flow
        assert curl(lab, "http://origin.test/small").returncode == 0
        listener.until(lambda m: m.get("WATCHDOG") == "1", limit=5)
        listener.until(lambda m: m.get("WATCHDOG") == "1", limit=5)  # again: pings keep coming

        conf.write_text(good.replace("[health]\n", "[health]\nactive_interval_s = 7\n") + '[daemon]\nlog_level = "debug"\n')
        daemon.send_signal(signal.SIGHUP)
        listener.until(lambda m: m.get("RELOADING") == "1")
        listener.until(lambda m: m.get("READY") == "1")
        conf.write_text("[health\nbroken")  # a broken file: refused, the running settings stay
        daemon.send_signal(signal.SIGHUP)
        listener.until(lambda m: m.get("READY") == "1")
        assert curl(lab, "http://origin.test/small").returncode == 0

        daemon.send_signal(signal.SIGTERM)
        listener.until(lambda m: m.get("STOPPING") == "1")
        _, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        listener.sock.close()
        atlantic(lab, "down")
    assert daemon.returncode == 0, err
    assert "reload: applied daemon.log_level, [health]" in err
    refused = [line for line in err.splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "not valid TOML" in refused[0]
    assert "Traceback" not in err
    assert status(lab)["state"] == "down"


def test_a_restart_for_an_upgrade_never_opens_the_machine(lab, tmp_path):
    """SIGUSR2 (what the package's postinst sends on upgrade): the daemon exits 75 for a
    restart and leaves the kill switch in place; the next start keeps it until its own table
    replaces it, so no moment exists in which the machine is open; `down` then restores."""
    from atlantic_lab import ns_run

    conf = tmp_path / "atlantic.toml"
    conf.write_text(f'[upstream]\nurl = "http://{lab.proxy_user}:{lab.proxy_password}@{lab.proxy_ip}:{lab.squid_port}"\n'
                    '[health]\nprobe_url = "http://origin.test/small"\nexpected_status = 200\necho_url = ""\n')
    os.chmod(conf, 0o600)
    atlantic(lab, "down")
    daemon = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "atlantic", "up",
                               "--foreground", "--config", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while status(lab).get("state") != "up" and time.monotonic() < deadline:
            time.sleep(0.2)
        daemon.send_signal(signal.SIGUSR2)
        _, err = daemon.communicate(timeout=30)
        assert daemon.returncode == 75, err
        assert "stopped for a restart" in err
        table = ns_run(lab.client_ns, ["nft", "list", "table", "inet", "atlantic"], text=True)
        assert table.returncode == 0  # still sealed between the two daemons
        assert curl(lab, "http://origin.test/small", timeout=5).returncode != 0  # and nothing gets out
        up = atlantic(lab, "up", "--config", str(conf))
        assert up.returncode == 0, up.stderr
        assert curl(lab, "http://origin.test/small").returncode == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        down = atlantic(lab, "down")
    assert down.returncode == 0, down.stderr
    assert ns_run(lab.client_ns, ["nft", "list", "table", "inet", "atlantic"], text=True).returncode != 0
