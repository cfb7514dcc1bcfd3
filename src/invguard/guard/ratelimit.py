"""Per-client rate limits (GCRA) and query budgets (per UTC day and ISO week), in memory or in Redis.

**GCRA** (Generic Cell Rate Algorithm, ITU-T I.371 / ATM Forum TM 4.1, "virtual scheduling" form):
each client has a theoretical arrival time ``TAT``. With emission interval ``T = 1 / per_second`` and
tolerance ``tau = burst * T``, a request at time ``now`` is allowed iff
``max(TAT, now) + T - tau <= now``; then ``TAT = max(TAT, now) + T``. This admits ``burst``
requests at once and ``per_second`` sustained, with one timestamp of state per client.

**Budgets** count answered rows (each row of a batch is one query, as in
:class:`invguard.core.target.BaseTarget`) in fixed windows: the UTC calendar day and the ISO week
(Monday 00:00 UTC). A request is charged only if the rate limit and every budget allow it, so a
refused request spends nothing but its rate-limit cell is not consumed either.

Headers follow **draft-ietf-httpapi-ratelimit-headers-10** (27 September 2025), the structured-field
form (RFC 8941 lists of items with parameters)::

    RateLimit-Policy: "burst";q=20;w=2, "day";q=10000;qu="rows";w=86400
    RateLimit: "burst";r=19;t=1, "day";r=9990;t=40000

``q`` is the quota, ``w`` the window in seconds (for the GCRA policy, the time to refill an empty
burst), ``r`` the remaining quota and ``t`` the seconds until it is fully restored. ``qu`` is the
quota unit (section 3.1 of the draft; the default is ``"requests"``): the budgets count answered
rows, so their policies say ``qu="rows"`` (an extension unit). A batch larger than a whole budget
can never be served (the guard refuses it with a 400 instead of a 429), and rows charged for a
request the model then failed to answer are refunded (:meth:`MemoryLimiter.refund`). A ``429``
carries ``Retry-After`` (RFC 9110 section 10.2.3) in whole seconds.

The Redis backend runs the same algorithm as one Lua script per request (atomic on the server,
timestamps from the server's ``TIME``) so several guard replicas share one limit per client.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

DAY = 86400
WEEK = 7 * DAY

SERVED = "served"
RATE_LIMITED = "rate_limited"
BUDGET_EXHAUSTED = "budget_exhausted"


@dataclass(frozen=True)
class Limits:
    """A role's limits: GCRA ``burst``/``per_second`` and optional row budgets per day and week."""

    burst: int
    per_second: float
    day: int | None = None
    week: int | None = None

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second

    @functools.cached_property
    def policy_header(self) -> str:
        items = [f'"burst";q={self.burst};w={max(1, math.ceil(self.burst / self.per_second))}']
        if self.day is not None:
            items.append(f'"day";q={self.day};qu="rows";w={DAY}')
        if self.week is not None:
            items.append(f'"week";q={self.week};qu="rows";w={WEEK}')
        return ", ".join(items)


@dataclass(frozen=True)
class Decision:
    """The outcome of one ``acquire``: ``outcome`` is served / rate_limited / budget_exhausted."""

    outcome: str
    retry_after: float
    burst_remaining: int
    burst_reset: float
    day_used: int
    week_used: int
    now: float

    @property
    def allowed(self) -> bool:
        return self.outcome == SERVED

    def headers(self, limits: Limits) -> list[tuple[str, str]]:
        items = [f'"burst";r={self.burst_remaining};t={max(0, math.ceil(self.burst_reset))}']
        if limits.day is not None:
            t = DAY - (self.now % DAY)
            items.append(f'"day";r={max(0, limits.day - self.day_used)};t={math.ceil(t)}')
        if limits.week is not None:
            t = WEEK - ((self.now + 3 * DAY) % WEEK)
            items.append(f'"week";r={max(0, limits.week - self.week_used)};t={math.ceil(t)}')
        out = [("RateLimit-Policy", limits.policy_header), ("RateLimit", ", ".join(items))]
        if not self.allowed:
            out.append(("Retry-After", str(max(1, math.ceil(self.retry_after)))))
        return out


def never_fits(limits: Limits, rows: int) -> str | None:
    """Why a batch of ``rows`` can never be served under these budgets (None if it can)."""
    for name, cap in (("day", limits.day), ("week", limits.week)):
        if cap is not None and rows > cap:
            return (
                f"a batch of {rows} rows exceeds the whole {name} budget of {cap} rows: it can never be "
                "served; send smaller batches"
            )
    return None


def refund_step(state: dict[str, Any], now: float, rows: int) -> None:
    """Give back ``rows`` charged in the current day/week (a request the model did not answer)."""
    if state.get("d") == day_id(now):
        state["du"] = max(0, int(state.get("du", 0)) - rows)
    if state.get("w") == week_id(now):
        state["wu"] = max(0, int(state.get("wu", 0)) - rows)


def day_id(now: float) -> int:
    return int(now // DAY)


def week_id(now: float) -> int:
    # 1970-01-01 was a Thursday: shifting by 3 days makes weeks start on Monday 00:00 UTC
    return int((now + 3 * DAY) // WEEK)


def gcra_step(state: dict[str, Any], now: float, limits: Limits, rows: int) -> Decision:
    """One GCRA + budget decision; mutates ``state`` (keys tat, d, du, w, wu) only if served."""
    T = limits.interval
    tau = limits.burst * T
    tat = max(float(state.get("tat", now)), now)
    d, w = day_id(now), week_id(now)
    du = int(state.get("du", 0)) if state.get("d") == d else 0
    wu = int(state.get("wu", 0)) if state.get("w") == w else 0
    new_tat = tat + T
    allow_at = new_tat - tau
    if now < allow_at:
        rem = max(0, math.floor((tau - (tat - now)) / T + 1e-9))
        return Decision(RATE_LIMITED, allow_at - now, rem, tat - now, du, wu, now)
    waits = []
    if limits.day is not None and du + rows > limits.day:
        waits.append(DAY - (now % DAY))
    if limits.week is not None and wu + rows > limits.week:
        waits.append(WEEK - ((now + 3 * DAY) % WEEK))
    if waits:
        rem = max(0, math.floor((tau - (tat - now)) / T + 1e-9))
        return Decision(BUDGET_EXHAUSTED, max(waits), rem, tat - now, du, wu, now)
    state.update(tat=new_tat, d=d, du=du + rows, w=w, wu=wu + rows)
    rem = max(0, math.floor((tau - (new_tat - now)) / T + 1e-9))
    return Decision(SERVED, 0.0, rem, new_tat - now, du + rows, wu + rows, now)


class MemoryLimiter:
    """In-process state (one guard process). Safe under asyncio: a decision never awaits."""

    def __init__(self, clock: Any = time.time) -> None:
        self._state: dict[str, dict[str, Any]] = {}
        self._clock = clock

    async def acquire(self, client: str, limits: Limits, rows: int) -> Decision:
        state = self._state.setdefault(client, {})
        return gcra_step(state, float(self._clock()), limits, rows)

    async def refund(self, client: str, limits: Limits, rows: int) -> None:
        state = self._state.get(client)
        if state is not None:
            refund_step(state, float(self._clock()), rows)

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True


_LUA = """
local key = KEYS[1]
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local rows = tonumber(ARGV[3])
local dlim = tonumber(ARGV[4])
local wlim = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local day = math.floor(now / 86400)
local week = math.floor((now + 259200) / 604800)
local s = redis.call('HMGET', key, 'tat', 'd', 'du', 'w', 'wu')
local tat = tonumber(s[1]) or now
if tat < now then tat = now end
local du = 0
if tonumber(s[2]) == day then du = tonumber(s[3]) end
local wu = 0
if tonumber(s[4]) == week then wu = tonumber(s[5]) end
local tau = burst * T
local new_tat = tat + T
local allow_at = new_tat - tau
local f = function(x) return string.format('%.6f', x) end
if now < allow_at then
  return {'rate_limited', f(allow_at - now), f(tat - now), du, wu, f(now)}
end
local wait = -1
if dlim >= 0 and du + rows > dlim then wait = 86400 - (now % 86400) end
if wlim >= 0 and wu + rows > wlim then
  local ww = 604800 - ((now + 259200) % 604800)
  if ww > wait then wait = ww end
end
if wait >= 0 then
  return {'budget_exhausted', f(wait), f(tat - now), du, wu, f(now)}
end
redis.call('HSET', key, 'tat', f(new_tat), 'd', day, 'du', du + rows, 'w', week, 'wu', wu + rows)
redis.call('EXPIRE', key, 691200)
return {'served', '0', f(new_tat - now), du + rows, wu + rows, f(now)}
"""


_LUA_REFUND = """
local key = KEYS[1]
local rows = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local day = math.floor(now / 86400)
local week = math.floor((now + 259200) / 604800)
local s = redis.call('HMGET', key, 'd', 'du', 'w', 'wu')
if tonumber(s[1]) == day then redis.call('HSET', key, 'du', math.max(0, tonumber(s[2]) - rows)) end
if tonumber(s[3]) == week then redis.call('HSET', key, 'wu', math.max(0, tonumber(s[4]) - rows)) end
return 1
"""


class RedisLimiter:
    """State in Redis, one hash per client, updated atomically by a Lua script (EVALSHA)."""

    def __init__(self, url: str, prefix: str = "invguard:rl") -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self._redis = aioredis.from_url(url)
        self._script = self._redis.register_script(_LUA)
        self._refund = self._redis.register_script(_LUA_REFUND)

    async def acquire(self, client: str, limits: Limits, rows: int) -> Decision:
        res = await self._script(
            keys=[f"{self.prefix}:{client}"],
            args=[
                repr(limits.interval),
                limits.burst,
                rows,
                -1 if limits.day is None else limits.day,
                -1 if limits.week is None else limits.week,
            ],
        )
        outcome = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        retry, reset, du, wu, now = float(res[1]), float(res[2]), int(res[3]), int(res[4]), float(res[5])
        T = limits.interval
        rem = max(0, math.floor((limits.burst * T - reset) / T + 1e-9))
        return Decision(outcome, retry, rem, reset, du, wu, now)

    async def refund(self, client: str, limits: Limits, rows: int) -> None:
        await self._refund(keys=[f"{self.prefix}:{client}"], args=[rows])

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
