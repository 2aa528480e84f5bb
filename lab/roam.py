"""A laptop changing networks, in the lab: the client's link drops for 3 s and comes back
(on the old address for 2 s), then its address changes (a new Wi-Fi network, the old
address gone for good). How long
until the first HTTP and the first HTTPS request through Atlantic succeed again?

Before the change, Atlantic's pool holds warm connections made from the old address;
after it, those are dead without anyone saying so (no FIN, no RST: the replies go to an
address that no longer exists). A new curl is started every ``gap`` s for each scheme
until one succeeds. The client's address, routes and link are put back afterwards, also
when something fails, so the lab stays as it was.

``python -m atlantic.lab.roam --out FILE`` writes the figures and prints them; the lab
test runs the same and asserts behaviour.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from atlantic.lab.topology import LabEnv, router_ip
from atlantic.lab.workloads import atlantic, lab_config, ns, status, up_with

UPLINK = "eth0"
MOVED_TO = "10.77.1.3"  # the "new network's" address (same lab subnet: the router reaches it)
LINK_DOWN_S = 3.0
BACK_S = 2.0  # on the old network again for this long before the move


def _ip(lab: LabEnv, *args: str) -> None:
    r = ns(lab, ["ip", *args], timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def set_address(lab: LabEnv, address: str) -> None:
    """The client's uplink with only ``address``/24 and the default route via the router."""
    _ip(lab, "addr", "flush", "dev", UPLINK)
    _ip(lab, "addr", "add", f"{address}/24", "dev", UPLINK)
    _ip(lab, "link", "set", UPLINK, "up")
    ns(lab, ["ip", "route", "del", "default"], timeout=10)
    _ip(lab, "route", "add", "default", "via", router_ip("client"))


def curl_ok(lab: LabEnv, url: str, timeout: float) -> bool:
    """One new curl through the capture (no proxy setting), bounded."""
    r = ns(lab, ["curl", "-sS", "-o", "/dev/null", "--max-time", str(timeout), "--noproxy", "*",
                 "--cacert", lab.ca_file, url], timeout=timeout + 10)
    return r.returncode == 0


def first_success(lab: LabEnv, url: str, start: float, gap: float, limit: float) -> float | None:
    """Seconds from ``start`` (monotonic) until a curl started every ``gap`` s first succeeds."""
    done: list[float] = []
    threads = []
    deadline = start + limit
    while time.monotonic() < deadline and not done:
        def attempt():
            if curl_ok(lab, url, timeout=max(1.0, deadline - time.monotonic())):
                done.append(time.monotonic())
        t = threading.Thread(target=attempt, daemon=True)
        t.start()
        threads.append(t)
        time.sleep(gap)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 15)
    return round(min(done) - start, 2) if done else None


def roam(lab: LabEnv, *, gap: float = 0.25, limit: float = 60.0) -> dict:
    """Warm the pool, drop the link for 3 s, move to a new address, time the first requests."""
    http, https = f"http://{lab.origin_host}/small", f"https://{lab.origin_host}/small"
    for _ in range(3):  # warm connections from the old address, for both schemes
        if not (curl_ok(lab, http, 20) and curl_ok(lab, https, 20)):
            raise RuntimeError("requests through Atlantic fail before the change")
    before = status(lab)
    try:
        _ip(lab, "link", "set", UPLINK, "down")
        time.sleep(LINK_DOWN_S)
        set_address(lab, lab.client_ip)  # back on the old network first, as a laptop's Wi-Fi would be
        time.sleep(BACK_S)
        set_address(lab, MOVED_TO)
        moved = time.monotonic()
        results: dict[str, float | None] = {}
        runs = [threading.Thread(target=lambda k=k, u=u: results.__setitem__(k, first_success(lab, u, moved, gap, limit)))
                for k, u in (("http_s", http), ("https_s", https))]
        for t in runs:
            t.start()
        for t in runs:
            t.join(limit + 30)
        after = status(lab)
    finally:
        set_address(lab, lab.client_ip)
    net_before, net_after = before.get("network") or {}, after.get("network") or {}
    return {
        "first_http_s": results.get("http_s"),
        "first_https_s": results.get("https_s"),
        "major_changes": net_after.get("major_changes", 0) - net_before.get("major_changes", 0),
        "last_change": net_after.get("last_change"),
        "state_after": after.get("state"),
    }


def run_roam(lab: LabEnv) -> dict:
    """Atlantic up through the lab's Squid (password in a 0600 file), roam, always down after."""
    with tempfile.TemporaryDirectory(prefix="atl-roam-") as tmp:
        up_with(lab, lab_config(lab, Path(tmp), [lab.proxy_ip]))
        try:
            return roam(lab)
        finally:
            atlantic(lab, "down")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m atlantic.lab.roam", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    from atlantic.lab.lab import current

    lab = current()
    if lab is None:
        print("error: the lab is not up; run `atlantic lab up` first", file=sys.stderr)
        return 1
    runs = [run_roam(lab) for _ in range(args.repeat)]
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "link_down_s": LINK_DOWN_S, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    for i, r in enumerate(runs, 1):
        print(f"run {i}: first HTTP after {r['first_http_s']} s, first HTTPS after {r['first_https_s']} s "
              f"({r['major_changes']} major change(s) seen)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
