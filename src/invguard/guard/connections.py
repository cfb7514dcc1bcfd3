"""Connections at the transport: a deadline for request headers and a cap per peer address.

uvicorn waits for a request's headers without a deadline (its keep-alive timeout stops as soon as
a byte arrives), so a client can hold connections open with partial headers for as long as it
likes, never reaching the app: uncharged, unaudited. :class:`ConnectionGuard` gives uvicorn an
HTTP protocol (a subclass of the one it would use) that

- closes a connection whose request headers are not complete ``header_timeout`` seconds after it
  opened, or after the previous response once bytes of the next request arrived (an idle kept-alive
  connection is left to uvicorn's keep-alive timeout);
- refuses (closes at once) a connection from an address that already holds
  ``max_per_address`` connections.

Each refusal is reported to ``on_refused(peer, reason)`` (``header_timeout`` or
``too_many_connections``), which the guard meters and records like other keyless refusals. A
request body that stalls is the app's business (``server.body_timeout``: a 408 from the guard).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _default_protocol() -> type:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # httptools is optional in uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


class ConnectionGuard:
    def __init__(
        self, header_timeout: float, max_per_address: int, on_refused: Callable[[str, str], None]
    ) -> None:
        self.header_timeout = header_timeout
        self.max_per_address = max_per_address
        self.on_refused = on_refused
        self.open: dict[str, int] = {}

    def admit(self, peer: str) -> bool:
        n = self.open.get(peer, 0)
        if n >= self.max_per_address:
            return False
        self.open[peer] = n + 1
        return True

    def release(self, peer: str) -> None:
        n = self.open.get(peer, 0) - 1
        if n > 0:
            self.open[peer] = n
        else:
            self.open.pop(peer, None)

    def protocol(self, base: type | None = None) -> type:
        """uvicorn's HTTP protocol class (``http=``) with the deadline and the cap."""
        return _guarded(base or _default_protocol(), self)


def _guarded(base: type, cg: ConnectionGuard) -> type:
    class GuardedProtocol(base):  # type: ignore[misc]
        _ig_peer: str | None = None
        _ig_timer: Any = None
        _ig_seen: Any = None
        _ig_bytes = False
        _ig_after_response = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            peer = str(self.client[0]) if self.client else ""
            if not cg.admit(peer):
                cg.on_refused(peer, "too_many_connections")
                transport.close()
                return
            self._ig_peer = peer
            self._ig_arm(after_response=False)

        def _ig_arm(self, *, after_response: bool) -> None:
            self._ig_cancel()
            self._ig_seen, self._ig_bytes, self._ig_after_response = self.cycle, False, after_response
            self._ig_timer = self.loop.call_later(cg.header_timeout, self._ig_expired)

        def _ig_cancel(self) -> None:
            if self._ig_timer is not None:
                self._ig_timer.cancel()
                self._ig_timer = None

        def data_received(self, data: bytes) -> None:
            self._ig_bytes = True
            super().data_received(data)
            if self._ig_timer is not None and self.cycle is not self._ig_seen:
                self._ig_cancel()  # the headers are complete: a request is being served

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._ig_peer is not None and not self.transport.is_closing():
                self._ig_arm(after_response=True)

        def _ig_expired(self) -> None:
            self._ig_timer = None
            cycle = self.cycle
            if cycle is not self._ig_seen or (cycle is not None and not cycle.response_complete):
                return  # a request is in progress
            if self._ig_after_response and not self._ig_bytes:
                return  # idle between requests: uvicorn's keep-alive timeout closes it
            cg.on_refused(self._ig_peer or "", "header_timeout")
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._ig_cancel()
            if self._ig_peer is not None:
                cg.release(self._ig_peer)
                self._ig_peer = None
            super().connection_lost(exc)

    return GuardedProtocol
