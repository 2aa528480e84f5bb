"""Atlantic's network-namespace lab: client, delaying router, upstream proxy, origin.

Python API::

    from atlantic.lab import up, down, current, set_delay, ns_exec_argv, LabEnv
    env = up(delay_ms=20)          # idempotent
    subprocess.run(ns_exec_argv("client", ["curl", ...]), env={**os.environ, **env.as_env()})
    down()
"""

from atlantic.lab.lab import (
    LabError, acquire, current, down, missing_tools, other_users, release, set_delay, up,
)
from atlantic.lab.procs import ns_exec_argv
from atlantic.lab.topology import LabEnv

__all__ = ["LabEnv", "LabError", "acquire", "current", "down", "missing_tools", "ns_exec_argv",
           "other_users", "release", "set_delay", "up"]
