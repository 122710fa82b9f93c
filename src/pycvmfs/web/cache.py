"""Answers kept per index generation: a page or API answer depends only on the request and on
the index (plus, for the tree and diff pages, on the indexed revision, which is part of the
index), so a GET answered once is answered again from memory until the index changes.

A pure ASGI middleware: a hit never enters the router, the handlers or the template engine.
Only complete 200 answers to GET requests are kept, least recently used first out, within a byte
budget; any refresh of the index (:attr:`WebIndex.generation`) empties the cache."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["ResponseCache"]

Entry = tuple[int, list[tuple[bytes, bytes]], bytes]


class ResponseCache:
    """``app.add_middleware(ResponseCache, index=index, max_bytes=...)``."""

    def __init__(self, app: Any, *, index: Any, max_bytes: int = 256 << 20,
                 skip: tuple[str, ...] = ("/static/",)) -> None:
        self.app = app
        self.index = index
        self.max_bytes = max_bytes
        self.skip = skip
        self._entries: OrderedDict[tuple[str, bytes], Entry] = OrderedDict()
        self._bytes = 0
        self._generation = None
        self.hits = 0
        self.misses = 0

    def _clear_if_stale(self) -> None:
        generation = getattr(self.index, "generation", None)
        if generation != self._generation:
            self._entries.clear()
            self._bytes = 0
            self._generation = generation

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or any(
                scope["path"].startswith(p) for p in self.skip):
            await self.app(scope, receive, send)
            return
        self._clear_if_stale()
        key = (scope["path"], scope.get("query_string", b""))
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            status, headers, body = entry
            await send({"type": "http.response.start", "status": status,
                        "headers": [*headers, (b"x-cache", b"hit")]})
            await send({"type": "http.response.body", "body": body})
            return
        self.misses += 1
        generation = self._generation
        started: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self._keep(key, generation, started, b"".join(chunks))
            await send(message)

        await self.app(scope, receive, capture)

    def _keep(self, key, generation, started: dict, body: bytes) -> None:
        if started.get("status") != 200 or generation != self._generation:
            return
        if len(body) > self.max_bytes // 8:
            return
        headers = [(k, v) for k, v in started.get("headers", []) if k.lower() != b"x-cache"]
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[2])
        self._entries[key] = (200, headers, body)
        self._bytes += len(body)
        while self._bytes > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped[2])
