"""Detector state: in memory (one process) or in Redis (shared by every replica of a guard).

What is stored, per query: its fingerprint's salted 64-bit hashes in a global inverted index
(hash -> the last ``postings`` queries that had it, with their client), a keyed digest of the raw
row (exact repeats and distinct inputs are counted by it), and in the client's bounded history its
encoder features with its residual fraction outside them in one more column (float16) and its
PRADA minimum distance. Never the input itself. Everything
expires ``ttl`` seconds after it was last written; the index holds at most ``max_hashes`` hashes
and the table at most ``max_clients`` clients (the least recently seen go first), so memory is
bounded whatever the traffic.

Both backends implement two steps per request: :meth:`exchange` (atomic: in Redis one Lua script)
matches the rows against the index and adds them, counts the client's recent matches, its linked
clients, distinct inputs and rows per hour, reads its history and its current mitigation; then
:meth:`commit` appends the features and distances computed from that history (one MULTI). A
client under a ``block`` mitigation is answered from its mitigation alone: its queries are not
recorded.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class RowIn:
    digest: bytes  # keyed digest of the raw row
    hashes: np.ndarray  # the fingerprint (uint64), may be empty when fingerprints are off


@dataclass
class RowMatch:
    best: int  # most hashes shared with one earlier query (0: none); exact repeats are not matches
    other: str | None  # the client of that query
    repeat: bool  # the same raw row was seen before (any client)


@dataclass
class Exchange:
    rows: list[RowMatch]
    recent_matches: int  # matched queries among the client's last ``recent``
    linked: dict[str, int]  # clients whose queries matched this client's -> matched queries
    distinct_today: int
    rows_this_hour: int
    rows_per_hour_before: list[int]  # the client's previous hours (up to 24) with their counts
    features: np.ndarray  # (h, d) float32, most recent first
    dmins: np.ndarray  # (m,) float64, most recent first
    queries: int  # the client's queries so far (in the state's lifetime)
    mitigation: dict[str, Any] | None


@dataclass
class _Client:
    feats: deque[bytes]
    dmins: deque[float]
    flags: deque[int]
    links: OrderedDict[str, int] = field(default_factory=OrderedDict)
    distinct: set[bytes] = field(default_factory=set)
    day: int = -1
    hours: dict[int, int] = field(default_factory=dict)
    queries: int = 0
    seen: float = 0.0


def _ranked(counts: Counter[int]) -> Iterator[tuple[int, int]]:
    """Most common first; the full sort only when the top four are all stale."""
    top = counts.most_common(4)
    yield from top
    if len(top) == 4:
        yield from counts.most_common()[4:]


class MemoryState:
    """The state of one guard process."""

    def __init__(
        self,
        *,
        match: int,
        recent: int,
        history: int,
        postings: int = 64,
        ttl: float = DAY,
        max_clients: int = 100_000,
        max_hashes: int = 2_000_000,
        max_distinct: int = 100_000,
        clock: Any = time.time,
    ) -> None:
        self.match, self.recent, self.history, self.postings = match, recent, history, postings
        self.ttl, self.max_clients, self.max_hashes, self.max_distinct = (
            ttl,
            max_clients,
            max_hashes,
            max_distinct,
        )
        self.clock = clock
        self._index: OrderedDict[int, list[int]] = OrderedDict()
        self._queries: dict[int, tuple[str, float]] = {}  # query id -> (client, time), oldest first
        self._digests: OrderedDict[bytes, float] = OrderedDict()
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._mitigations: dict[str, tuple[float, dict[str, Any]]] = {}
        self._evidence: dict[str, deque[dict[str, Any]]] = {}
        self._qid = 0

    # ------------------------------------------------------------------ per request
    def _client(self, client: str, now: float) -> _Client:
        c = self._clients.get(client)
        if c is None or now - c.seen > self.ttl:
            c = _Client(deque(maxlen=self.history), deque(maxlen=self.history), deque(maxlen=self.recent))
            self._clients[client] = c
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client)
        c.seen = now
        return c

    def mitigation(self, client: str, now: float | None = None) -> dict[str, Any] | None:
        now = self.clock() if now is None else now
        m = self._mitigations.get(client)
        if m is None:
            return None
        if m[0] <= now:
            del self._mitigations[client]
            return None
        return m[1]

    async def exchange(self, client: str, rows: list[RowIn], rows_count: int) -> Exchange:
        now = self.clock()
        mit = self.mitigation(client, now)
        if mit is not None and mit.get("action") == "block":
            return Exchange([], 0, {}, 0, 0, [], np.zeros((0, 0), np.float32), np.zeros(0), 0, mit)
        c = self._client(client, now)
        day = int(now // DAY)
        if c.day != day:
            c.day, c.distinct = day, set()
        hour = int(now // HOUR)
        for h in [h for h in c.hours if h < hour - 24]:
            del c.hours[h]
        before = [c.hours[h] for h in sorted(c.hours) if h != hour]
        c.hours[hour] = c.hours.get(hour, 0) + rows_count
        out = []
        for r in rows:
            self._qid += 1
            qid = self._qid
            seen = self._digests.get(r.digest)
            repeat = seen is not None and now - seen <= self.ttl
            self._digests[r.digest] = now
            self._digests.move_to_end(r.digest)
            while len(self._digests) > self.max_hashes:
                self._digests.popitem(last=False)
            if len(c.distinct) < self.max_distinct:
                c.distinct.add(r.digest)
            # postings hold query ids only (ints: counted at C speed, 8 bytes a slot); who sent a
            # query and when is kept once per query in `_queries`
            hs = r.hashes.tolist()
            posts = [self._index.get(h) for h in hs]
            best, other = 0, None
            if not repeat:
                counts = Counter(chain.from_iterable(p for p in posts if p))
                for q, n in _ranked(counts):
                    meta = self._queries.get(q)  # the best query still known and within its ttl
                    if meta is not None and now - meta[1] <= self.ttl:
                        best, other = n, meta[0]
                        break
            for h, post in zip(hs, posts, strict=True):
                if post is None:
                    self._index[h] = [qid]  # a list: a deque costs ~600 bytes even when empty
                    while len(self._index) > self.max_hashes:
                        self._index.popitem(last=False)
                else:
                    self._index.move_to_end(h)
                    post.append(qid)
                    if len(post) > self.postings:
                        del post[0]
            self._queries[qid] = (client, now)
            while len(self._queries) > self.max_hashes:
                del self._queries[next(iter(self._queries))]
            matched = best >= self.match
            c.flags.append(1 if matched else 0)
            if matched and other is not None and other != client:
                self._link(client, other, now)
            out.append(RowMatch(best, other, repeat))
        c.queries += len(rows)
        feats = (
            np.stack([np.frombuffer(b, dtype=np.float16) for b in c.feats]).astype(np.float32)
            if c.feats
            else np.zeros((0, 0), np.float32)
        )
        linked = dict(c.links)
        return Exchange(
            out,
            sum(c.flags),
            linked,
            len(c.distinct),
            c.hours[hour],
            before,
            feats[::-1],
            np.array(list(c.dmins)[::-1], dtype=np.float64),
            c.queries,
            mit,
        )

    def _link(self, a: str, b: str, now: float) -> None:
        for x, y in ((a, b), (b, a)):
            cx = self._clients.get(x)
            if cx is not None:
                cx.links[y] = cx.links.get(y, 0) + 1
                cx.links.move_to_end(y)
                while len(cx.links) > 64:
                    cx.links.popitem(last=False)

    async def commit(self, client: str, features: np.ndarray, dmins: list[float]) -> None:
        c = self._clients.get(client)
        if c is None:
            return
        for f in features.astype(np.float16):
            c.feats.append(f.tobytes())
        c.dmins.extend(dmins)

    async def reset(self, client: str) -> None:
        """Forget the client's recent queries (a mitigation starts: when it ends, the client has to
        show the pattern anew); its links and the global index stay."""
        c = self._clients.get(client)
        if c is not None:
            c.feats.clear()
            c.dmins.clear()
            c.flags.clear()

    # ------------------------------------------------------------------ mitigations and evidence
    async def get_mitigation(self, client: str) -> dict[str, Any] | None:
        return self.mitigation(client)

    async def set_mitigation(self, client: str, record: dict[str, Any], until: float) -> None:
        self._mitigations[client] = (until, dict(record))

    async def lift(self, client: str) -> dict[str, Any] | None:
        m = self._mitigations.pop(client, None)
        return None if m is None else m[1]

    async def mitigations(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {k: v[1] for k, v in list(self._mitigations.items()) if v[0] > now}

    async def add_evidence(self, client: str, event: dict[str, Any], keep: int = 20) -> None:
        self._evidence.setdefault(client, deque(maxlen=keep)).append(event)
        if len(self._evidence) > self.max_clients:
            self._evidence.pop(next(iter(self._evidence)))

    async def evidence(self, client: str) -> list[dict[str, Any]]:
        return list(self._evidence.get(client, ()))

    async def flagged(self) -> list[str]:
        return list(self._evidence)

    # ------------------------------------------------------------------ introspection
    def sizes(self) -> dict[str, int]:
        return {
            "index_hashes": len(self._index),
            "index_postings": sum(len(p) for p in self._index.values()),
            "digests": len(self._digests),
            "queries": len(self._queries),
            "clients": len(self._clients),
        }

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True


_EXCHANGE = """
local p = ARGV[1]
local client = ARGV[2]
local ttl = tonumber(ARGV[3])
local match = tonumber(ARGV[4])
local recent = tonumber(ARGV[5])
local postings = tonumber(ARGV[6])
local history = tonumber(ARGV[7])
local nrows = tonumber(ARGV[8])
local rows_count = tonumber(ARGV[9])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ck = p .. ':c:' .. client
local mit = redis.call('GET', p .. ':m:' .. client)
if mit then
  local m = cjson.decode(mit)
  if m['action'] == 'block' then return {mit} end
end
local qbase = redis.call('INCRBY', p .. ':qid', nrows)
local day = math.floor(now / 86400)
local hour = math.floor(now / 3600)
local rows = {}
local i = 10
for r = 1, nrows do
  local qid = tostring(qbase - nrows + r)
  local digest = ARGV[i]
  local nh = tonumber(ARGV[i + 1])
  i = i + 2
  local repeat_ = redis.call('SET', p .. ':d:' .. digest, '1', 'EX', ttl, 'GET') ~= false
  redis.call('PFADD', ck .. ':dd:' .. day, digest)
  local counts = {}
  local owner = {}
  for j = 1, nh do
    local hk = p .. ':h:' .. ARGV[i + j - 1]
    local post = redis.call('LRANGE', hk, 0, -1)
    for _, e in ipairs(post) do
      local sep = string.find(e, '|', 1, true)
      local q = string.sub(e, 1, sep - 1)
      counts[q] = (counts[q] or 0) + 1
      owner[q] = string.sub(e, sep + 1)
    end
    redis.call('LPUSH', hk, qid .. '|' .. client)
    redis.call('LTRIM', hk, 0, postings - 1)
    redis.call('EXPIRE', hk, ttl)
  end
  i = i + nh
  local best, other = 0, ''
  if not repeat_ then
    for q, n in pairs(counts) do
      if n > best then best, other = n, owner[q] end
    end
  end
  local flag = '0'
  if best >= match then
    flag = '1'
    if other ~= client and other ~= '' then
      redis.call('ZINCRBY', ck .. ':l', 1, other)
      redis.call('ZINCRBY', p .. ':c:' .. other .. ':l', 1, client)
      redis.call('EXPIRE', p .. ':c:' .. other .. ':l', ttl)
      redis.call('ZREMRANGEBYRANK', ck .. ':l', 0, -65)
      redis.call('ZREMRANGEBYRANK', p .. ':c:' .. other .. ':l', 0, -65)
    end
  end
  redis.call('LPUSH', ck .. ':f', flag)
  rows[r] = {best, other, repeat_ and 1 or 0}
end
redis.call('LTRIM', ck .. ':f', 0, recent - 1)
redis.call('EXPIRE', ck .. ':f', ttl)
redis.call('EXPIRE', ck .. ':dd:' .. day, 2 * 86400)
redis.call('EXPIRE', ck .. ':l', ttl)
local flags = redis.call('LRANGE', ck .. ':f', 0, -1)
local nflag = 0
for _, f in ipairs(flags) do if f == '1' then nflag = nflag + 1 end end
local hk = ck .. ':r:' .. hour
local this_hour = redis.call('INCRBY', hk, rows_count)
redis.call('EXPIRE', hk, 25 * 3600)
local before = {}
for h = hour - 24, hour - 1 do
  local v = redis.call('GET', ck .. ':r:' .. h)
  if v then table.insert(before, tonumber(v)) end
end
local queries = redis.call('INCRBY', ck .. ':n', nrows)
redis.call('EXPIRE', ck .. ':n', ttl)
local linked = redis.call('ZRANGE', ck .. ':l', 0, -1, 'WITHSCORES')
local feats = redis.call('LRANGE', ck .. ':x', 0, history - 1)
local dmins = redis.call('LRANGE', ck .. ':dm', 0, history - 1)
local distinct = redis.call('PFCOUNT', ck .. ':dd:' .. day)
return {mit or '', rows, nflag, linked, distinct, this_hour, before, feats, dmins, queries}
"""


class RedisState:
    """The same state in Redis, shared by every guard replica pointing at it (atomic: one Lua script
    per request, timestamps from the server's clock)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        match: int,
        recent: int,
        history: int,
        postings: int = 64,
        ttl: float = DAY,
        client: Any = None,
    ) -> None:
        import redis.asyncio as aioredis

        self.r: Any = client if client is not None else aioredis.from_url(url)
        self.p = prefix
        self.match, self.recent, self.history, self.postings = match, recent, history, postings
        self.ttl = int(max(1, ttl))
        self._script = self.r.register_script(_EXCHANGE)

    async def exchange(self, client: str, rows: list[RowIn], rows_count: int) -> Exchange:
        argv: list[Any] = [
            self.p,
            client,
            self.ttl,
            self.match,
            self.recent,
            self.postings,
            self.history,
            len(rows),
            rows_count,
        ]
        for r in rows:
            argv += [r.digest.hex(), len(r.hashes)]
            argv += [format(int(h), "x") for h in r.hashes]
        res = await self._script(keys=[], args=argv)
        mit = json.loads(res[0]) if res[0] else None
        if len(res) == 1:
            return Exchange([], 0, {}, 0, 0, [], np.zeros((0, 0), np.float32), np.zeros(0), 0, mit)
        rows_out = [
            RowMatch(int(b), (o.decode() if isinstance(o, bytes) else o) or None, bool(rep))
            for b, o, rep in res[1]
        ]
        feats = (
            np.stack([np.frombuffer(b, dtype=np.float16) for b in res[7]]).astype(np.float32)
            if res[7]
            else np.zeros((0, 0), np.float32)
        )
        return Exchange(
            rows_out,
            int(res[2]),
            {res[3][j].decode(): int(float(res[3][j + 1])) for j in range(0, len(res[3]), 2)},
            int(res[4]),
            int(res[5]),
            [int(v) for v in res[6]],
            feats,
            np.array([float(v) for v in res[8]], dtype=np.float64),
            int(res[9]),
            mit,
        )

    async def commit(self, client: str, features: np.ndarray, dmins: list[float]) -> None:
        if not len(features) and not dmins:
            return
        ck = f"{self.p}:c:{client}"
        pipe = self.r.pipeline(transaction=True)
        if len(features):
            pipe.lpush(ck + ":x", *[f.tobytes() for f in features.astype(np.float16)])
            pipe.ltrim(ck + ":x", 0, self.history - 1)
            pipe.expire(ck + ":x", self.ttl)
        if dmins:
            pipe.lpush(ck + ":dm", *[repr(float(d)) for d in dmins])
            pipe.ltrim(ck + ":dm", 0, self.history - 1)
            pipe.expire(ck + ":dm", self.ttl)
        await pipe.execute()

    async def reset(self, client: str) -> None:
        ck = f"{self.p}:c:{client}"
        await self.r.delete(ck + ":f", ck + ":x", ck + ":dm")

    async def get_mitigation(self, client: str) -> dict[str, Any] | None:
        v = await self.r.get(f"{self.p}:m:{client}")
        return json.loads(v) if v else None

    async def set_mitigation(self, client: str, record: dict[str, Any], until: float) -> None:
        ms = max(1, int((until - time.time()) * 1000))
        pipe = self.r.pipeline(transaction=True)
        pipe.set(f"{self.p}:m:{client}", json.dumps(record), px=ms)
        pipe.sadd(f"{self.p}:mset", client)
        await pipe.execute()

    async def lift(self, client: str) -> dict[str, Any] | None:
        pipe = self.r.pipeline(transaction=True)
        pipe.getdel(f"{self.p}:m:{client}")
        pipe.srem(f"{self.p}:mset", client)
        v, _ = await pipe.execute()
        return json.loads(v) if v else None

    async def mitigations(self) -> dict[str, dict[str, Any]]:
        names = [m.decode() for m in await self.r.smembers(f"{self.p}:mset")]
        if not names:
            return {}
        vals = await self.r.mget([f"{self.p}:m:{n}" for n in names])
        gone = [n for n, v in zip(names, vals, strict=True) if v is None]
        if gone:
            await self.r.srem(f"{self.p}:mset", *gone)
        return {n: json.loads(v) for n, v in zip(names, vals, strict=True) if v is not None}

    async def add_evidence(self, client: str, event: dict[str, Any], keep: int = 20) -> None:
        k = f"{self.p}:e:{client}"
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(k, json.dumps(event))
        pipe.ltrim(k, 0, keep - 1)
        pipe.expire(k, self.ttl)
        pipe.zadd(f"{self.p}:flagged", {client: time.time()})
        await pipe.execute()

    async def evidence(self, client: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in reversed(await self.r.lrange(f"{self.p}:e:{client}", 0, -1))]

    async def flagged(self) -> list[str]:
        cutoff = time.time() - self.ttl
        await self.r.zremrangebyscore(f"{self.p}:flagged", "-inf", cutoff)
        return [m.decode() for m in await self.r.zrange(f"{self.p}:flagged", 0, -1)]

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except Exception:
            return False
