"""The keyless gate: requests without a valid key (and to unknown routes) are limited per peer address.

A GCRA limit (``server.anonymous_rate``) per address; a refusal is recorded in the audit log at most
once a second per address, and the record stands for the refusals it suppressed (``suppressed``),
so nobody without a key can fill the audit disk. The table of addresses is bounded
(``max_addresses``): when it overflows it is cleared, which can only let a few extra requests
through, never refuse a legitimate one for longer. The clock is injected (tests advance it).

With a ``shared`` limiter (the Redis backend) the per-address cells live there, so replicas share
one keyless limit per address (two guards no longer allow twice the burst); should it fail, the
local cell decides (a keyless request is refused with 401 anyway: the limit only bounds the rate
of refusals and their records).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from invguard.guard.ratelimit import Limits, gcra_step

ANON_TABLE_MAX = 100_000


class KeylessGate:
    def __init__(
        self,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.time,
        max_addresses: int = ANON_TABLE_MAX,
        record_every: float = 1.0,
        shared: Any = None,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.max_addresses = max_addresses
        self.record_every = record_every
        self.shared = shared
        self._cells: dict[str, dict[str, Any]] = {}
        self._logged: dict[str, list[float]] = {}  # address -> [last recorded refusal, suppressed]

    async def check(self, peer: str, rec: dict[str, Any]) -> tuple[bool, bool]:
        """Charge a request to its peer address: ``(allowed, audit_it)``. A refusal that is recorded
        sets ``rec["suppressed"]`` to the number of refusals since the last recorded one."""
        now = self.clock()
        if len(self._cells) > self.max_addresses:
            self._cells.clear()
            self._logged.clear()
        d = None
        if self.shared is not None:
            try:
                d = await self.shared.acquire(f"keyless:{peer}", self.limits, 0)
            except Exception:  # the shared backend is down: the local cell decides
                d = None
        if d is None:
            d = gcra_step(self._cells.setdefault(peer, {}), now, self.limits, 0)
        if d.allowed:
            return True, True
        return False, self.note_refusal(peer, rec, now)

    def note_refusal(self, peer: str, rec: dict[str, Any], now: float | None = None) -> bool:
        """Whether to record a refusal of ``peer`` (at most once per ``record_every``); a recorded
        one carries in ``rec["suppressed"]`` the refusals left unrecorded since the last."""
        now = self.clock() if now is None else now
        st = self._logged.setdefault(peer, [-float("inf"), 0.0])
        if now - st[0] < self.record_every:
            st[1] += 1
            return False
        rec["suppressed"] = int(st[1])
        st[0], st[1] = now, 0.0
        return True
