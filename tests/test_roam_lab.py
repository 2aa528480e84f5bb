"""A laptop changing networks under Atlantic (issue 12), in the lab: the client's link drops
for 3 s, comes back, and its address changes. The network monitor sees one major change,
the pool drops the connections of the old path, and new HTTP and HTTPS requests get
through again (the benchmark, `lab/roam.py`, reports how soon). The lab's address is put
back afterwards."""

from __future__ import annotations

import pytest

from atlantic.lab.roam import run_roam
from atlantic_lab import ns_run

pytestmark = pytest.mark.lab


def test_requests_get_through_after_a_link_bounce_and_a_new_address(lab):
    """Both schemes succeed again after the change; status saw it as a major change."""
    r = run_roam(lab)
    assert r["first_http_s"] is not None and r["first_https_s"] is not None, r
    assert r["major_changes"] >= 1 and "major network change" in r["last_change"], r
    assert r["state_after"] == "up", r
    addr = ns_run(lab.client_ns, ["ip", "-br", "addr", "show", "dev", "eth0"], text=True).stdout
    assert f"{lab.client_ip}/24" in addr and "10.77.1.3" not in addr  # the lab is as it was
