"""GCRA rate limits and query budgets, in memory and in a real Redis, and their IETF headers."""

from __future__ import annotations

import asyncio

import pytest

from invguard.guard.ratelimit import DAY, Limits, MemoryLimiter, RedisLimiter


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(coro)


def test_gcra_admits_a_burst_then_the_sustained_rate():
    clock = Clock(1_000_000.0)
    lim = MemoryLimiter(clock)
    limits = Limits(burst=3, per_second=2.0)
    outs = [run(lim.acquire("c", limits, 1)) for _ in range(4)]
    assert [o.outcome for o in outs] == ["served", "served", "served", "rate_limited"]
    assert [o.burst_remaining for o in outs] == [2, 1, 0, 0]
    assert outs[3].retry_after == pytest.approx(0.5)
    clock.t += 0.49
    assert run(lim.acquire("c", limits, 1)).outcome == "rate_limited"
    clock.t += 0.02
    assert run(lim.acquire("c", limits, 1)).outcome == "served"
    # another client has its own cell
    assert run(lim.acquire("other", limits, 1)).outcome == "served"
    # sustained: one request every 0.5 s is always admitted
    clock.t += 10
    for _ in range(20):
        clock.t += 0.5
        assert run(lim.acquire("c", limits, 1)).allowed


def test_budget_counts_rows_per_day_and_refusals_cost_nothing():
    clock = Clock(DAY * 20_000 + 100.0)  # 100 s after a UTC midnight
    lim = MemoryLimiter(clock)
    limits = Limits(burst=100, per_second=100.0, day=10, week=15)
    assert run(lim.acquire("c", limits, 6)).allowed
    d = run(lim.acquire("c", limits, 5))
    assert d.outcome == "budget_exhausted"
    assert d.retry_after == pytest.approx(DAY - 100)
    assert run(lim.acquire("c", limits, 4)).allowed  # the refused 5 rows were not charged
    clock.t += DAY  # next day: the daily budget resets, the weekly one does not
    d = run(lim.acquire("c", limits, 6))
    assert d.outcome == "budget_exhausted" and d.week_used == 10
    assert run(lim.acquire("c", limits, 5)).allowed


def test_headers_follow_draft_ietf_httpapi_ratelimit_headers_10():
    clock = Clock(DAY * 20_000 + 100.0)
    lim = MemoryLimiter(clock)
    limits = Limits(burst=4, per_second=2.0, day=100)
    d = run(lim.acquire("c", limits, 3))
    assert dict(d.headers(limits)) == {
        "RateLimit-Policy": '"burst";q=4;w=2, "day";q=100;qu="rows";w=86400',
        "RateLimit": f'"burst";r=3;t=1, "day";r=97;t={DAY - 100}',
    }
    for _ in range(3):
        run(lim.acquire("c", limits, 1))
    d = run(lim.acquire("c", limits, 1))
    h = dict(d.headers(limits))
    assert h["Retry-After"] == "1" and h["RateLimit"].startswith('"burst";r=0;t=2')


def test_redis_limiter_is_atomic_under_concurrency(redis_url):
    async def main():
        lim = RedisLimiter(redis_url, prefix="test-atomic")
        limits = Limits(burst=5, per_second=0.01, day=1000)
        outs = await asyncio.gather(*(lim.acquire("c", limits, 2) for _ in range(30)))
        budget = Limits(burst=100, per_second=100, day=7)
        b = [await lim.acquire("b", budget, 3) for _ in range(4)]
        ok = await lim.ping()
        await lim.close()
        return outs, b, ok

    outs, b, ok = asyncio.run(main())
    assert ok
    assert sum(o.allowed for o in outs) == 5
    assert {o.outcome for o in outs if not o.allowed} == {"rate_limited"}
    assert max(o.day_used for o in outs) == 10
    assert all(o.retry_after > 90 for o in outs if not o.allowed)  # T = 100 s
    assert [x.outcome for x in b] == ["served", "served", "budget_exhausted", "budget_exhausted"]
    assert b[2].day_used == 6 and 0 < b[2].retry_after <= DAY


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_refunded_rows_can_be_spent_again_and_a_batch_larger_than_the_budget_never_fits(backend, request):
    from invguard.guard.ratelimit import never_fits

    async def main():
        lim = (
            MemoryLimiter()
            if backend == "memory"
            else RedisLimiter(request.getfixturevalue("redis_url"), prefix="test-refund")
        )
        limits = Limits(burst=100, per_second=100, day=5, week=50)
        first = await lim.acquire("c", limits, 4)
        await lim.refund("c", limits, 4)  # the model failed: the rows are given back
        again = await lim.acquire("c", limits, 5)
        over = await lim.acquire("c", limits, 1)
        await lim.close()
        return first, again, over

    first, again, over = run(main())
    assert first.allowed and again.allowed and again.day_used == 5 and again.week_used == 5
    assert over.outcome == "budget_exhausted"
    assert never_fits(Limits(burst=1, per_second=1, day=5, week=3), 4) == (
        "a batch of 4 rows exceeds the whole week budget of 3 rows: it can never be served; "
        "send smaller batches"
    )
    assert never_fits(Limits(burst=1, per_second=1, day=5), 5) is None


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_the_remaining_burst_counts_down_exactly(backend, request):
    """burst 20: r = 19 after the first request, 0 after the twentieth (it was 18 after the first:
    float rounding of epoch seconds in the GCRA). Time is integer microseconds in both backends."""

    async def main():
        if backend == "memory":
            lim = MemoryLimiter(Clock(1_764_000_000.123457))  # a real epoch: the low bits matter
        else:
            lim = RedisLimiter(request.getfixturevalue("redis_url"), prefix="test-countdown")
        limits = Limits(burst=20, per_second=0.01)  # T = 100 s: Redis's clock moving does not count
        outs = [await lim.acquire("c", limits, 1) for _ in range(21)]
        await lim.close()
        return outs, limits

    outs, limits = run(main())
    assert [o.burst_remaining for o in outs] == [*range(19, -1, -1), 0]
    assert [o.outcome for o in outs] == ["served"] * 20 + ["rate_limited"]
    assert dict(outs[0].headers(limits))["RateLimit"].startswith('"burst";r=19;t=100')


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_budget_shared_per_owner_or_per_role_is_enforced_atomically(backend, request):
    """One actor with many keys gets one budget (scope owner); scope role shares it across the role."""

    async def main():
        if backend == "memory":
            lim = MemoryLimiter(Clock(DAY * 20_000 + 5.0))
        else:
            lim = RedisLimiter(request.getfixturevalue("redis_url"), prefix=f"test-scope-{backend}")
        owner = Limits(burst=100, per_second=100, day=10, scope="owner")
        keys = [f"acme-{i}" for i in range(4)]
        outs = await asyncio.gather(
            *(lim.acquire(k, owner, 1, budget_key=owner.budget_key(k, "acme", "partner")) for k in keys * 5)
        )
        alone = await lim.acquire("solo", owner, 1, budget_key=owner.budget_key("solo", None, "partner"))
        role = Limits(burst=100, per_second=100, day=3, scope="role")
        shared = [
            await lim.acquire(k, role, 1, budget_key=role.budget_key(k, None, "free"))
            for k in ("x", "y", "z", "w")
        ]
        await lim.close()
        return outs, alone, shared

    outs, alone, shared = run(main())
    assert sum(o.allowed for o in outs) == 10  # 4 keys x 5 requests, one budget of 10 rows
    assert {o.outcome for o in outs if not o.allowed} == {"budget_exhausted"}
    assert alone.allowed and alone.day_used == 1  # a key without an owner keeps its own budget
    assert [s.outcome for s in shared] == ["served"] * 3 + ["budget_exhausted"]
    assert Limits(1, 1, scope="key").budget_key("k", "acme", "r") == "k"
