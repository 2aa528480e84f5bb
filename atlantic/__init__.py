"""Atlantic: a system-wide proxy client for Linux.

The parts live in the repository's top-level folders and are installed under
this package: ``atlantic.client``, ``atlantic.interceptor``, ``atlantic.forwarder``,
``atlantic.pool``, ``atlantic.health`` and ``atlantic.lab``.
"""

__version__ = "0.1.0"
