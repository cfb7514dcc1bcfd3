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
timestamps from the server's ``TIME``) so several guard replicas share one limit per client (and
one keyless limit per address). A Redis without persistence resets every budget when it restarts:
the guard checks at start-up and warns (or refuses, ``ratelimit.require_persistence: true``).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

DAY = 86400
WEEK = 7 * DAY
US = 1_000_000  # the GCRA's time unit: integer microseconds
SCOPES = ("key", "owner", "role")

SERVED = "served"
RATE_LIMITED = "rate_limited"
BUDGET_EXHAUSTED = "budget_exhausted"


@dataclass(frozen=True)
class Limits:
    """A role's limits: GCRA ``burst``/``per_second`` (per key) and optional row budgets per day
    and week, shared per key, per owner or per role (``scope``)."""

    burst: int
    per_second: float
    day: int | None = None
    week: int | None = None
    scope: str = "key"

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second

    @functools.cached_property
    def interval_us(self) -> int:
        return max(1, round(US / self.per_second))

    def budget_key(self, client_id: str, owner: str | None, role: str) -> str:
        """Whose budget a request is charged to: the key's own, its owner's, or the whole role's
        (a key without an owner keeps its own budget under ``owner``)."""
        if self.scope == "role":
            return f"role:{role}"
        if self.scope == "owner" and owner:
            return f"owner:{owner}"
        return client_id

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


def gcra_step(
    state: dict[str, Any],
    now: float,
    limits: Limits,
    rows: int,
    budget: dict[str, Any] | None = None,
) -> Decision:
    """One GCRA + budget decision; mutates ``state`` (the cell: ``tat``) and ``budget`` (``d``,
    ``du``, ``w``, ``wu``; default: ``state`` itself) only if served.

    Time is kept in integer microseconds (``tat`` too), so the remaining burst counts down exactly:
    float epoch seconds lose the low bits that ``(tau - (tat - now)) / T`` needs."""
    b = state if budget is None else budget
    now_us = round(now * US)
    T = limits.interval_us
    tau = limits.burst * T
    tat = max(int(state.get("tat", now_us)), now_us)
    d, w = day_id(now), week_id(now)
    du = int(b.get("du", 0)) if b.get("d") == d else 0
    wu = int(b.get("wu", 0)) if b.get("w") == w else 0
    new_tat = tat + T
    allow_at = new_tat - tau
    if now_us < allow_at:
        rem = max(0, (tau - (tat - now_us)) // T)
        return Decision(RATE_LIMITED, (allow_at - now_us) / US, rem, (tat - now_us) / US, du, wu, now)
    waits = []
    if limits.day is not None and du + rows > limits.day:
        waits.append(DAY - (now % DAY))
    if limits.week is not None and wu + rows > limits.week:
        waits.append(WEEK - ((now + 3 * DAY) % WEEK))
    if waits:
        rem = max(0, (tau - (tat - now_us)) // T)
        return Decision(BUDGET_EXHAUSTED, max(waits), rem, (tat - now_us) / US, du, wu, now)
    state["tat"] = new_tat
    b.update(d=d, du=du + rows, w=w, wu=wu + rows)
    rem = max(0, (tau - (new_tat - now_us)) // T)
    return Decision(SERVED, 0.0, rem, (new_tat - now_us) / US, du + rows, wu + rows, now)


class MemoryLimiter:
    """In-process state (one guard process). Safe under asyncio: a decision never awaits."""

    def __init__(self, clock: Any = time.time) -> None:
        self._state: dict[str, dict[str, Any]] = {}
        self._clock = clock

    async def acquire(
        self, client: str, limits: Limits, rows: int, budget_key: str | None = None
    ) -> Decision:
        state = self._state.setdefault(client, {})
        budget = state if budget_key in (None, client) else self._state.setdefault(str(budget_key), {})
        return gcra_step(state, float(self._clock()), limits, rows, budget)

    async def refund(self, budget_key: str, limits: Limits, rows: int) -> None:
        state = self._state.get(budget_key)
        if state is not None:
            refund_step(state, float(self._clock()), rows)

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True


_LUA = """
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local rows = tonumber(ARGV[3])
local dlim = tonumber(ARGV[4])
local wlim = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local sec = tonumber(t[1])
local day = math.floor(sec / 86400)
local week = math.floor((sec + 259200) / 604800)
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat')) or now
if tat < now then tat = now end
local s = redis.call('HMGET', KEYS[2], 'd', 'du', 'w', 'wu')
local du = 0
if tonumber(s[1]) == day then du = tonumber(s[2]) end
local wu = 0
if tonumber(s[3]) == week then wu = tonumber(s[4]) end
local tau = burst * T
local new_tat = tat + T
local allow_at = new_tat - tau
local f = function(x) return string.format('%.0f', x) end
if now < allow_at then
  return {'rate_limited', f(allow_at - now), f(tat - now), du, wu, f(now)}
end
local wait = -1
if dlim >= 0 and du + rows > dlim then wait = (86400 - (sec % 86400)) * 1000000 - tonumber(t[2]) end
if wlim >= 0 and wu + rows > wlim then
  local ww = (604800 - ((sec + 259200) % 604800)) * 1000000 - tonumber(t[2])
  if ww > wait then wait = ww end
end
if wait >= 0 then
  return {'budget_exhausted', f(wait), f(tat - now), du, wu, f(now)}
end
redis.call('HSET', KEYS[1], 'tat', f(new_tat))
redis.call('HSET', KEYS[2], 'd', day, 'du', du + rows, 'w', week, 'wu', wu + rows)
redis.call('EXPIRE', KEYS[1], 691200)
redis.call('EXPIRE', KEYS[2], 691200)
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

    async def acquire(
        self, client: str, limits: Limits, rows: int, budget_key: str | None = None
    ) -> Decision:
        res = await self._script(
            keys=[f"{self.prefix}:{client}", f"{self.prefix}:{budget_key or client}"],
            args=[
                limits.interval_us,
                limits.burst,
                rows,
                -1 if limits.day is None else limits.day,
                -1 if limits.week is None else limits.week,
            ],
        )
        outcome = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        retry_us, reset_us, du, wu, now_us = int(res[1]), int(res[2]), int(res[3]), int(res[4]), int(res[5])
        T = limits.interval_us
        rem = max(0, (limits.burst * T - reset_us) // T)
        return Decision(outcome, retry_us / US, rem, reset_us / US, du, wu, now_us / US)

    async def refund(self, budget_key: str, limits: Limits, rows: int) -> None:
        await self._refund(keys=[f"{self.prefix}:{budget_key}"], args=[rows])

    def persistence_problem(self) -> str | None:
        """Why the limits would not survive a restart of the Redis server (None if they would):
        with neither RDB snapshots (``save``) nor an append-only file, a restart resets every
        budget and rate limit."""
        import redis

        from invguard.wire.urls import redact_url

        where = f"the Redis server at {redact_url(self.url)}"
        client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            save = str(client.config_get("save").get("save", ""))
            aof = str(client.config_get("appendonly").get("appendonly", "no"))
        except redis.RedisError as e:
            return (
                f"cannot tell whether {where} persists its data ({type(e).__name__}): a restart of it may "
                "reset every budget"
            )
        finally:
            client.close()
        if save.strip() or aof == "yes":
            return None
        return (
            f"{where} keeps neither snapshots nor an append-only file (save '', appendonly no): a restart "
            "of it resets every budget and rate limit"
        )

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
