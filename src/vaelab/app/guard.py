"""What stands between the network and the explorer: limits that hold however a client
sends, each answered or closed without the app seeing it.

* a request body is counted as it streams in, whether announced by Content-Length or sent
  chunked: over ``MAX_BODY`` bytes it is refused with 413 at the limit (nothing more is
  read); a body that has not arrived whole within ``BODY_SECONDS`` gets 408;
* a request head (the request line and headers) is at most ``MAX_HEAD`` bytes (431, or
  h11's 400 for one still arriving) and must arrive within ``HEAD_SECONDS`` of the
  connection opening or of the last response, however slowly its bytes trickle in, or the
  connection is closed (a slow or idle client holds no connection longer);
* at most ``MAX_CONNECTIONS`` connections at once; beyond that a request gets 503.
"""
from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_BODY = 1 << 20  # bytes of a request body
BODY_SECONDS = 30.0  # for the whole body to arrive
MAX_HEAD = 16 * 1024  # bytes of a request line and its headers
HEAD_SECONDS = 10.0  # for a request head to arrive, counted from the connection or last answer
MAX_CONNECTIONS = 1024


async def _answer(send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: reads a request's body up to ``limit`` bytes before the app runs,
    then hands it over whole."""

    def __init__(self, app, limit: int = MAX_BODY, seconds: float = BODY_SECONDS):
        self.app, self.limit, self.seconds = app, limit, seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + \
            sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if head > MAX_HEAD:  # a head that arrived in one piece (h11 bounds one in parts)
            return await _answer(send, 431, f"request head over {MAX_HEAD} bytes")
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.limit):
            return await _answer(send, 413, f"request body over {self.limit} bytes")
        chunks, got = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await _answer(send, 408, f"the request body did not arrive within "
                                                f"{self.seconds:g} s")
            if message["type"] == "http.disconnect":
                return None
            got += len(message.get("body", b""))
            if got > self.limit:
                return await _answer(send, 413, f"request body over {self.limit} bytes")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()  # what comes after the body: a disconnect
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on every request head: armed when the
    connection opens and after each response, cleared only by a complete request head, so
    bytes trickled in one at a time do not keep a connection open."""

    _deadline: asyncio.TimerHandle | None = None
    _cycle_seen = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(HEAD_SECONDS, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._cycle_seen:
            self._cycle_seen = self.cycle  # a whole request head arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_settings() -> dict:
    """The uvicorn.Config settings that go with the limits above."""
    return {"http": GuardedProtocol, "limit_concurrency": MAX_CONNECTIONS,
            "h11_max_incomplete_event_size": MAX_HEAD, "timeout_keep_alive": 5}
