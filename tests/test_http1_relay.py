"""The request relay on loopback: a real h11 origin, a real loopback pool, raw app bytes."""

from __future__ import annotations

import asyncio
import json

from http1_peers import LoopbackPool, Origin, app_flow, read_response

from atlantic.pool.api import Endpoint


def run(coro, limit: float = 20.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


async def send_bytewise(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send ``data`` one byte per write, yielding to the loop between bytes."""
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0)


def test_get_in_first_bytes_reaches_origin_in_origin_form():
    """A request already read by sniffing is relayed: origin-form, Host kept, hop-by-hop gone."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            req = b"GET /echo?x=1 HTTP/1.1\r\nHost: Site.example\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nAccept: */*\r\n\r\n"
            async with app_flow(pool, first_bytes=req, dst=("10.1.2.3", 8080)) as (reader, writer, task, counters):
                status, headers, body, _ = await read_response(reader)
            await pool.aclose()
            return origin, pool, status, body, counters

    origin, pool, status, body, counters = run(go())
    assert status == 200
    seen = json.loads(body)
    assert seen["target"] == "/echo?x=1"
    assert [n.lower() for n, _ in seen["headers"]] == ["host", "accept"]
    assert pool.heads[0].endpoint == Endpoint("http", "site.example", 8080)
    assert counters.requests == 1 and counters.upstream_errors == 0


def test_chunked_request_body_byte_by_byte():
    """A chunked request body fed one byte at a time arrives whole (body_length None)."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, _):
                await send_bytewise(
                    writer,
                    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n3;ext=1\r\n, w\r\n4\r\norld\r\n0\r\n\r\n",
                )
                status, _, body, _ = await read_response(reader)
            await pool.aclose()
            return pool, status, json.loads(body)

    pool, status, seen = run(go())
    assert status == 200 and seen["body"] == "hello, world"
    assert pool.heads[0].body_length is None


def test_content_length_body_byte_by_byte():
    """A Content-Length body fed byte by byte is relayed with body_length n."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, _):
                await send_bytewise(writer, b"PUT /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\npayload")
                status, _, body, _ = await read_response(reader)
            await pool.aclose()
            return pool, status, json.loads(body)

    pool, status, seen = run(go())
    assert (status, seen["method"], seen["body"]) == (200, "PUT", "payload")
    assert pool.heads[0].body_length == 7


def test_head_then_get_on_one_connection():
    """HEAD gets no body but keeps Content-Length; the connection then serves a GET."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(b"HEAD /sized?n=5000 HTTP/1.1\r\nHost: a\r\n\r\n")
                head = await read_response(reader, "HEAD")
                writer.write(b"GET /sized?n=10 HTTP/1.1\r\nHost: a\r\n\r\n")
                get = await read_response(reader)
            await pool.aclose()
            return pool, head, get

    pool, head, get = run(go())
    assert head[0] == 200 and head[1]["content-length"] == "5000" and head[2] == b""
    assert get[0] == 200 and len(get[2]) == 10
    assert pool.opened == 1  # the origin connection was reused for the second request


def test_204_and_304_have_no_body():
    """204 and 304 responses carry no body and keep the connection usable."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(b"GET /204 HTTP/1.1\r\nHost: a\r\n\r\nGET /304 HTTP/1.1\r\nHost: a\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                results = [await read_response(reader) for _ in range(3)]
            await pool.aclose()
            return results

    r204, r304, echo = run(go())
    assert (r204[0], r204[2]) == (204, b"")
    assert (r304[0], r304[1]["etag"]) == (304, '"x"')
    assert echo[0] == 200


def test_expect_100_continue_is_answered_before_the_body():
    """With Expect: 100-continue the app gets 100 Continue from us, then sends the body."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
                writer.write(b"data")
                final = await read_response(reader)
            await pool.aclose()
            return origin, interim, final

    origin, interim, final = run(go())
    assert interim.startswith(b"HTTP/1.1 100 ")
    assert final[0] == 200 and json.loads(final[2])["body"] == "data"
    assert all(n.lower() != "expect" for n, _ in origin.requests[0]["headers"])


def test_pipelined_requests_answered_in_order():
    """Pipelined requests in one write get their responses in order, one pool request each."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            batch = b"".join(f"GET /echo?i={i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5))
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(batch)
                results = [await read_response(reader) for _ in range(5)]
            await pool.aclose()
            return pool, results

    pool, results = run(go())
    assert [json.loads(r[2])["target"] for r in results] == [f"/echo?i={i}" for i in range(5)]
    assert len(pool.heads) == 5


def test_new_connection_per_request_rides_one_warm_upstream_connection():
    """Ten app connections, one request each: the pool reuses one origin connection."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            for i in range(10):
                async with app_flow(pool) as (reader, writer, task, _):
                    writer.write(f"GET /sized?n={i + 1} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
                    status, headers, body, _ = await read_response(reader)
                    assert (status, len(body), headers["connection"]) == (200, i + 1, "close")
                    assert await reader.read() == b""  # we close after Connection: close
            await pool.aclose()
            return origin, pool

    origin, pool = run(go())
    assert len(pool.heads) == 10 and pool.opened == 1 and origin.connections == 1


def test_absolute_form_request():
    """An absolute-form request goes to the URL's origin, origin-form upstream."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(b"GET http://abs.example:8000/echo?q HTTP/1.1\r\nHost: ignored\r\nProxy-Connection: keep-alive\r\n\r\n")
                status, _, body, _ = await read_response(reader)
            await pool.aclose()
            return pool, status, json.loads(body)

    pool, status, seen = run(go())
    assert status == 200 and seen["target"] == "/echo?q"
    assert dict((n.lower(), v) for n, v in seen["headers"])["host"] == "abs.example:8000"
    assert "proxy-connection" not in [n.lower() for n, _ in seen["headers"]]
    assert pool.heads[0].endpoint == Endpoint("http", "abs.example", 8000)


def test_http10_app_gets_close_delimited_body():
    """An HTTP/1.0 app gets an unknown-length body close-delimited (no chunked), then EOF."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool, dst=("10.0.0.9", 80)) as (reader, writer, task, _):
                writer.write(b"GET /chunked?n=100000&piece=1000 HTTP/1.0\r\n\r\n")
                status, headers, body, _ = await read_response(reader)
            await pool.aclose()
            return pool, status, headers, body

    pool, status, headers, body = run(go())
    assert status == 200 and len(body) == 100000
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert pool.heads[0].endpoint == Endpoint("http", "10.0.0.9", 80)
    assert ("Host", "10.0.0.9") in pool.heads[0].headers


def test_http11_app_gets_chunked_body_for_unknown_length():
    """An unknown-length body goes to an HTTP/1.1 app chunked, and keep-alive continues."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(b"GET /chunked?n=70000&piece=7000 HTTP/1.1\r\nHost: a\r\n\r\n")
                first = await read_response(reader)
                writer.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                second = await read_response(reader)
            await pool.aclose()
            return first, second

    first, second = run(go())
    assert first[1]["transfer-encoding"] == "chunked" and len(first[2]) == 70000
    assert second[0] == 200


def test_app_closing_idle_connection_ends_flow_quietly():
    """An app that connects and closes without a request ends serve_http cleanly."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, counters):
                writer.close()
                await asyncio.wait_for(task, 3)
            return task, counters

    task, counters = run(go())
    assert task.exception() is None and counters.requests == 0


def test_response_before_request_body_closes_after_response():
    """If the pool answers without pulling the body, the app gets the response, then EOF."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            pool.ignore_body = True
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"b" * 1000)
                status, _, body, _ = await read_response(reader)
                rest = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                await asyncio.wait_for(task, 5)
            await pool.aclose()
            return status, json.loads(body), rest, task

    status, seen, rest, task = run(go())
    assert status == 200 and seen["body"] == "" and rest == b""
    assert task.exception() is None


def test_partial_first_bytes_then_rest_from_socket():
    """Bytes handed over by sniffing and bytes read later form one request, replayed intact."""
    upgrade = b"GET /ws HTTP/1.1\r\nHost: w.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool, first_bytes=upgrade[:20]) as (reader, writer, task, _):
                writer.write(upgrade[20:])
                status, _, _, _ = await read_response(reader)
            return origin, status

    origin, status = run(go())
    assert status == 101
    assert origin.requests[0]["headers"] == [("Host", "w.example"), ("Connection", "Upgrade"), ("Upgrade", "echo")]
