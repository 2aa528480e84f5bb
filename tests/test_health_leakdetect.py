"""The leak detector's adapter on the loop: counters and the machine's own addresses are read
off the loop's thread (netlink and nft never run on it), and the exit check uses them."""

from __future__ import annotations

import asyncio
import threading

from atlantic.health.leakdetect import LeakDetector


def test_exit_address_is_checked_against_addresses_read_off_the_loop():
    """own_addresses runs in a worker thread; an exit equal to one of them is a LEAK, another is OK."""
    threads = []

    def own() -> frozenset[str]:
        threads.append(threading.current_thread() is threading.main_thread())
        return frozenset({"192.0.2.10"})

    async def main():
        det = LeakDetector(read_counters=lambda: {"blocked_packets": 3, "blocked_dns_packets": 1}, target=None,
                           own_addresses=own, interface=lambda: None, interval=0.01)
        task = asyncio.create_task(det.run())
        for _ in range(500):
            if threads:
                break
            await asyncio.sleep(0.01)
        det.exit_seen("198.51.100.7")
        ok = det.snapshot().as_dict()
        det.exit_seen("192.0.2.10")
        leak = det.snapshot().as_dict()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return ok, leak

    ok, leak = asyncio.run(main())
    assert threads and not any(threads)  # never on the loop's (main) thread
    assert ok["sealed"] and ok["last"]["exit_address"]["result"] == "ok" and ok["blocked_packets"] == 3
    assert not leak["sealed"] and "192.0.2.10" in leak["last"]["exit_address"]["detail"]
