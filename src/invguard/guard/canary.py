"""Two versions of a model behind one guard: a privacy canary with automatic rollback.

``canary: {version: v2, weight: 0.05, path: models/digits-v2.pt}`` serves a second version of the
model to a fixed share of the clients, compares the two versions' privacy SLIs over a window, and
shifts all traffic back to the stable version when the canary breaches.

**Routing.** Which version answers is decided per client, never per request: the client id's
HMAC-SHA-256 under a key derived from the guard's HMAC secret (``audit.hash_key``, the same in every
worker and across restarts), taken as a 64-bit fraction and compared with ``weight``. One client
always sees one version; the canary's share of clients is ``weight`` in expectation (a binomial
draw per client), and nobody without the secret can choose an id that lands on the canary. The
canary version is part of the hashed message, so a new canary version draws a fresh sample. Every
audit record of a request carries the answering version (``model_version``), and the per-version
counters carry it as a label.

**The comparison** (every ``check_seconds``, over the last ``window_seconds``, clock injected):

- **M2**, the high-confidence answer rate: scored rows whose returned scores have entropy below
  ``metrics.high_confidence_entropy``, over scored rows;
- **detection rate**: requests on which a detector fired, over requests the detectors saw (the
  per-request form of the M3 detection count: a request counts once however many detectors fire);
- **the canary version's latest audit** in the audit history (``incidents.history``, the runs of
  ``history_model``, default ``<model>@<version>``): a failed gate is a breach at once.

A rate is compared only when each version has at least ``min_rows`` scored rows (M2) or
``min_requests`` requests (detections) from at least ``min_clients`` distinct clients (that
contributed to that rate) in the window; below that the comparison is "insufficient data" and
decides nothing. Under ``serve --workers N`` every worker compares the counts of all workers
(summed from the multiprocess metric files); its client count and design effects are from its
own traffic (a lower bound of the clients), so a worker may wait longer to decide.

The rule is a one-sided test on the difference ``p_canary - p_stable``: the canary breaches when
a lower confidence bound (at ``1 - alpha``) of the difference exceeds the SLI's margin
(``m2_margin``, ``detection_margin``): the canary is worse by more than the margin with confidence
``1 - alpha``. The bound is the lower of two: Newcombe's hybrid score interval (Newcombe 1998,
method 10; :func:`invguard.metrics.stats.difference_interval`), right for independent rows and
rates near 0 or 1; and, because clients and not rows are randomised (a client's rows are alike,
and a few heavy clients can make a version's rate without the model having anything to do with
it), a cluster-robust bound: each rate's variance inflated by its design effect over the clients
seen (:func:`design_effect`) and a Student t quantile with ``min(clients) - 1`` degrees of freedom
(:func:`clustered_lower`). The comparison is repeated every ``check_seconds`` over an overlapping
window, so the false-rollback rate per day is higher than ``alpha``; ``alpha`` defaults to 0.001
for that reason (``python benchmarks/canary.py`` measures both rates).

**Rollback.** On a breach the guard flips its routing to stable-only at once (one attribute holding
an immutable value: a request routed after it gets the stable version), then records it in the
canary state shared through the incident store's SQLite file (compare-and-set on a generation
number, so of several workers exactly one wins and the others follow at their next tick), opens a
``source: canary`` incident whose title and evidence give the numbers, writes a ``route: canary``
audit-log record (``decision: canary_rolled_back``) and counts it in
``invguard_canary_rollbacks_total{model_version,reason}``. A restart keeps a rolled-back canary
rolled back; a new canary version in the config starts active. ``invguard canary enable`` (or
``POST /admin/api/canary/enable``) re-enables it by hand with a fresh window, which is also
journalled and audited; ``invguard canary rollback`` (``POST /admin/api/canary/rollback``) rolls it
back by hand.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError, InvguardError
from invguard.guard.config import CanaryConfig
from invguard.guard.incidents import Clock, Detection, IncidentStore, iso
from invguard.guard.metrics import aggregate, multiprocess
from invguard.metrics.stats import difference_interval
from invguard.storage import SqliteFile

log = logging.getLogger("invguard.guard.canary")

ACTIVE, ROLLED_BACK = "active", "rolled_back"
SLIS = ("high_confidence_rate", "detection_rate")
SLI_NAMES = {"high_confidence_rate": "M2 high-confidence rate", "detection_rate": "detection rate"}
# clients tracked per version and time bucket (beyond it a client's rows count in the totals only,
# so the client count and the design effect see the first 100,000 clients of a bucket)
_MAX_CLIENTS = 100_000
# the per-version counters, in the order of _Counts.snapshot (rows, confident, observed, detected)
_VERSION_COUNTERS = (
    "invguard_guard_version_scored_rows_total",
    "invguard_guard_version_high_confidence_rows_total",
    "invguard_guard_version_observed_requests_total",
    "invguard_guard_version_detected_requests_total",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS canary_state (
    model TEXT PRIMARY KEY,
    stable_version TEXT NOT NULL,
    canary_version TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    evaluated_at REAL,
    evaluation TEXT
);
CREATE TABLE IF NOT EXISTS canary_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    canary_version TEXT NOT NULL,
    generation INTEGER NOT NULL,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT NOT NULL,
    detail TEXT NOT NULL,
    audited INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS canary_journal_audit ON canary_journal (audited, id);
"""


class CanaryError(InvguardError):
    """A canary operation that cannot be done (no canary state, a transition the state forbids)."""

    exit_code = 2


@dataclass(frozen=True)
class CanaryState:
    model: str
    stable_version: str
    canary_version: str
    generation: int
    state: str
    since: float
    actor: str
    reason: str
    evaluated_at: float | None
    evaluation: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["since_iso"], d["evaluated_at_iso"] = iso(self.since), iso(self.evaluated_at)
        return d


@dataclass(frozen=True)
class JournalEntry:
    id: int
    model: str
    canary_version: str
    generation: int
    at: float
    action: str
    actor: str
    note: str
    detail: dict[str, Any]


class CanaryStateStore:
    """The canary's state and journal, in the incident store's SQLite file (WAL; shared by the
    guard's workers and the CLI). Every change is a journal row written in the same transaction,
    marked ``audited`` once the guard has appended its audit-log record."""

    def __init__(self, path: str | Path, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._db = SqliteFile(path, _SCHEMA, what="an incident store")
        self.path = self._db.path
        self._connect = self._db.connect

    @staticmethod
    def _state(r: tuple[Any, ...]) -> CanaryState:
        names = [f for f in CanaryState.__dataclass_fields__ if f != "evaluation"]
        kw: dict[str, Any] = dict(zip(names, r[:9], strict=True))
        return CanaryState(**kw, evaluation=None if r[9] is None else json.loads(r[9]))

    def _get(self, con: sqlite3.Connection, model: str) -> CanaryState | None:
        r = con.execute("SELECT * FROM canary_state WHERE model = ?", (model,)).fetchone()
        return None if r is None else self._state(r)

    def get(self, model: str) -> CanaryState | None:
        with self._connect() as con:
            return self._get(con, model)

    def require(self, model: str) -> CanaryState:
        st = self.get(model)
        if st is None:
            raise CanaryError(f"{self.path}: no canary of model {model!r} has been served yet")
        return st

    @staticmethod
    def _journal(
        con: sqlite3.Connection, st: CanaryState, action: str, actor: str, note: str, detail: dict[str, Any]
    ) -> None:
        con.execute(
            "INSERT INTO canary_journal (model, canary_version, generation, at, action, actor, note, "
            "detail, audited) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (
                st.model,
                st.canary_version,
                st.generation,
                st.since,
                action,
                actor,
                note,
                json.dumps(detail, sort_keys=True),
            ),
        )

    def start(self, model: str, stable_version: str, canary_version: str) -> CanaryState:
        """The state a starting guard adopts: the stored one for this canary version (a rolled-back
        canary stays rolled back), or a new active state for a new canary version."""
        now = self.clock()
        with self._connect(write=True) as con:
            st = self._get(con, model)
            if st is not None and st.canary_version == canary_version:
                if st.stable_version != stable_version:
                    con.execute(
                        "UPDATE canary_state SET stable_version = ? WHERE model = ?", (stable_version, model)
                    )
                    st = self._get(con, model)
                assert st is not None
                return st
            gen = 1 if st is None else st.generation + 1
            con.execute(
                "INSERT OR REPLACE INTO canary_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                (model, stable_version, canary_version, gen, ACTIVE, now, "guard", "configured"),
            )
            new = self._get(con, model)
            assert new is not None
            self._journal(con, new, "started", "guard", "", {"stable_version": stable_version})
            return new

    def roll_back(
        self, model: str, generation: int, actor: str, reason: str, detail: dict[str, Any]
    ) -> CanaryState | None:
        """active (at ``generation``) -> rolled back; None if the state had already moved on (another
        worker rolled it back first, or someone re-enabled it meanwhile)."""
        now = self.clock()
        with self._connect(write=True) as con:
            cur = con.execute(
                "UPDATE canary_state SET state = ?, generation = generation + 1, since = ?, actor = ?, "
                "reason = ? WHERE model = ? AND generation = ? AND state = ?",
                (ROLLED_BACK, now, actor, reason, model, generation, ACTIVE),
            )
            if cur.rowcount != 1:
                return None
            st = self._get(con, model)
            assert st is not None
            self._journal(con, st, "rolled_back", actor, reason, detail)
            return st

    def roll_back_by_hand(self, model: str, actor: str, note: str) -> CanaryState:
        if not actor or not note.strip():
            raise CanaryError("rolling a canary back by hand needs who (--by) and why (--note)")
        st = self.require(model)
        if st.state != ACTIVE:
            raise CanaryError(
                f"the canary {st.canary_version} of {model} is already rolled back ({st.reason})"
            )
        new = self.roll_back(model, st.generation, actor, f"by hand: {note}", {"by_hand": True})
        if new is None:
            raise CanaryError(f"the canary {st.canary_version} of {model} changed meanwhile; look again")
        return new

    def enable(self, model: str, actor: str, note: str) -> CanaryState:
        """rolled back -> active (by hand), with a fresh comparison window."""
        if not actor or not note.strip():
            raise CanaryError("re-enabling a canary needs who (--by) and why (--note)")
        now = self.clock()
        with self._connect(write=True) as con:
            st = self._get(con, model)
            if st is None:
                raise CanaryError(f"{self.path}: no canary of model {model!r} has been served yet")
            if st.state == ACTIVE:
                raise CanaryError(f"the canary {st.canary_version} of {model} is already active")
            con.execute(
                "UPDATE canary_state SET state = ?, generation = generation + 1, since = ?, actor = ?, "
                "reason = ?, evaluated_at = NULL, evaluation = NULL WHERE model = ?",
                (ACTIVE, now, actor, f"re-enabled: {note}", model),
            )
            new = self._get(con, model)
            assert new is not None
            self._journal(con, new, "enabled", actor, note, {"previous": st.reason})
            return new

    def record_evaluation(self, model: str, generation: int, at: float, doc: dict[str, Any]) -> None:
        with self._connect(write=True) as con:
            con.execute(
                "UPDATE canary_state SET evaluated_at = ?, evaluation = ? WHERE model = ? AND generation = ?",
                (at, json.dumps(doc, sort_keys=True), model, generation),
            )

    def journal(self, model: str) -> list[JournalEntry]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT id, model, canary_version, generation, at, action, actor, note, detail "
                "FROM canary_journal WHERE model = ? ORDER BY id",
                (model,),
            ).fetchall()
        return [_entry(r) for r in rows]

    def claim_audit(self, limit: int = 100) -> list[JournalEntry]:
        """Journal rows still needing their audit-log record, marked in the same transaction (two
        workers never both write one); :meth:`unmark_audited` gives them back if the write fails."""
        with self._connect() as con:
            if con.execute("SELECT 1 FROM canary_journal WHERE audited = 0 LIMIT 1").fetchone() is None:
                return []
        with self._connect(write=True) as con:
            rows = con.execute(
                "SELECT id, model, canary_version, generation, at, action, actor, note, detail "
                "FROM canary_journal WHERE audited = 0 ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
            con.executemany("UPDATE canary_journal SET audited = 1 WHERE id = ?", [(r[0],) for r in rows])
        return [_entry(r) for r in rows]

    def unmark_audited(self, ids: list[int]) -> None:
        with self._connect(write=True) as con:
            con.executemany("UPDATE canary_journal SET audited = 0 WHERE id = ?", [(i,) for i in ids])

    def add_detail(self, entry_id: int, extra: dict[str, Any]) -> None:
        with self._connect(write=True) as con:
            r = con.execute("SELECT detail FROM canary_journal WHERE id = ?", (entry_id,)).fetchone()
            if r is not None:
                con.execute(
                    "UPDATE canary_journal SET detail = ? WHERE id = ?",
                    (json.dumps(json.loads(r[0]) | extra, sort_keys=True), entry_id),
                )

    def last_entry(self, model: str, generation: int, action: str) -> JournalEntry | None:
        with self._connect() as con:
            r = con.execute(
                "SELECT id, model, canary_version, generation, at, action, actor, note, detail "
                "FROM canary_journal WHERE model = ? AND generation = ? AND action = ? ORDER BY id DESC",
                (model, generation, action),
            ).fetchone()
        return None if r is None else _entry(r)


def _entry(r: tuple[Any, ...]) -> JournalEntry:
    names = [f for f in JournalEntry.__dataclass_fields__ if f != "detail"]
    kw: dict[str, Any] = dict(zip(names, r[:8], strict=True))
    return JournalEntry(**kw, detail=json.loads(r[8]))


def latest_audit(history: str | Path, model: str) -> dict[str, Any] | None:
    """The latest run of ``model`` in an audit history store, or None (no store, no run)."""
    hp = Path(history)
    if not hp.is_file():
        return None
    con = sqlite3.connect(f"file:{hp}?mode=ro", uri=True, timeout=5)
    try:
        r = con.execute(
            "SELECT id, finished_at, passed, summary FROM runs WHERE model = ? "
            "ORDER BY finished_at DESC, id DESC LIMIT 1",
            (model,),
        ).fetchone()
    except sqlite3.DatabaseError as e:
        log.warning("audit history %s unreadable: %s", hp, e)
        return None
    finally:
        con.close()
    if r is None:
        return None
    return {"model": model, "run_id": r[0], "finished_at": r[1], "passed": bool(r[2]), "summary": r[3]}


def design_effect(units: list[tuple[int, int]]) -> float:
    """Kish's design effect of a rate estimated from clustered units ``(bad, total)`` per client:
    the cluster-robust variance of the ratio estimator ``R = sum(bad) / sum(total)`` (Cochran
    1977, *Sampling Techniques*, 6.13: ``m / (m - 1) * sum((bad_j - R total_j)^2) / N^2``) over the
    binomial variance ``R (1 - R) / N``; at least 1 (never more optimistic than independent rows)."""
    m = len(units)
    n = sum(t for _, t in units)
    if m < 2 or n <= 0:
        return 1.0
    r = sum(b for b, _ in units) / n
    vb = r * (1 - r) / n
    if vb <= 0:
        return 1.0
    vc = m / (m - 1) * sum((b - r * t) ** 2 for b, t in units) / (n * n)
    return max(1.0, vc / vb)


def clustered_lower(c: dict[str, Any], s: dict[str, Any], confidence: float) -> float:
    """The lower bound of ``rate_c - rate_s`` allowing for clients that differ from each other:
    each rate's binomial variance times its design effect, a Student t quantile with
    ``min(clients) - 1`` degrees of freedom (as for a cluster-randomised comparison, Donner & Klar
    2000, *Design and Analysis of Cluster Randomization Trials in Health Research*, ch. 6)."""
    import math

    from scipy.stats import t as student_t

    var = 0.0
    for a in (c, s):
        r, n = a["bad"] / a["total"], a["total"]
        var += a["design_effect"] * r * (1 - r) / n
    df = max(1, min(c["clients"], s["clients"]) - 1)
    q = float(student_t.ppf(confidence, df))
    return float(c["bad"] / c["total"] - s["bad"] / s["total"] - q * math.sqrt(var))


# ---------------------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Arm:
    """One version of the model: what answers a client routed to it."""

    version: str
    model: Any
    canary: bool
    counts: _Counts = field(compare=False, repr=False)


@dataclass
class _Counts:
    """Cumulative counts of one version (plain ints: bumped on the request path, sampled per tick)."""

    rows: int = 0
    confident: int = 0
    observed: int = 0
    detected: int = 0
    # per client and time bucket: [rows, confident, observed, detected] (for the design effect)
    buckets: deque[tuple[float, dict[str, list[int]]]] = field(default_factory=deque)

    def client(self, client: str) -> list[int] | None:
        if not self.buckets:
            return None
        b = self.buckets[-1][1]
        row = b.get(client)
        if row is None and len(b) < _MAX_CLIENTS:
            row = b[client] = [0, 0, 0, 0]
        return row

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.rows, self.confident, self.observed, self.detected


AuditAppend = Callable[[dict[str, Any]], Awaitable[Any]]


class Canary:
    """The routing and the comparison of one canary; the guard's on-call loop calls :meth:`tick`."""

    def __init__(
        self,
        cfg: CanaryConfig,
        *,
        model_name: str,
        stable_version: str,
        stable_model: Any,
        canary_model: Any,
        key: bytes,
        store: CanaryStateStore,
        history: str | None = None,
        registry: Any = None,
        clock: Clock = time.time,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.cfg = cfg
        self.model_name = model_name
        self.store = store
        self.history = history
        self.clock = clock
        self.history_model = cfg.history_model or f"{model_name}@{cfg.version}"
        self._key = hmac.digest(key, b"invguard-canary-routing-v1", "sha256")
        self._msg = f"{model_name}\x00{cfg.version}\x00".encode()
        self._threshold = int(cfg.weight * 2**64)
        self.stable = Arm(stable_version, stable_model, False, _Counts())
        self.canary = Arm(cfg.version, canary_model, True, _Counts())
        st = store.start(model_name, stable_version, cfg.version)
        # (active, generation): replaced whole, never mutated, so a request reads one consistent value
        self._route: tuple[bool, int] = (st.state == ACTIVE, st.generation)
        self.state = st
        self._samples: dict[bool, deque[tuple[float, tuple[int, int, int, int]]]] = {
            False: deque(),
            True: deque(),
        }
        self._tick_time = clock()
        self._bucket = cfg.window_seconds / 10  # per-client counts are kept in 10 time buckets
        self._last_check: float | None = None
        self._baseline(self._tick_time)
        self.last: dict[str, Any] | None = st.evaluation
        self._pending: tuple[int, str, dict[str, Any]] | None = None  # a rollback not yet stored
        reg = registry if registry is not None else CollectorRegistry()
        lv = ["model_version"]
        self._m_weight = Gauge(
            "invguard_canary_weight",
            "Share of clients the canary version answers (0 once rolled back).",
            lv,
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self._m_active = Gauge(
            "invguard_canary_active",
            "1 while the canary version serves its share.",
            lv,
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self._m_rollbacks = Counter(
            "invguard_canary_rollbacks",
            "Automatic rollbacks of a canary, by what breached (an SLI, or audit: a failed gate).",
            ["model_version", "reason"],
            registry=reg,
        )
        self._m_rate = Gauge(
            "invguard_canary_window_rate",
            "A privacy SLI of each version over the canary comparison window.",
            ["model_version", "sli"],
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self._m_lower = Gauge(
            "invguard_canary_difference_lower_bound",
            "Lower confidence bound of canary minus stable for an SLI (rollback above its margin).",
            ["model_version", "sli"],
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self._m_rows = Counter(
            "invguard_guard_version_scored_rows",
            "Rows answered with scores, by the model version that answered.",
            lv,
            registry=reg,
        )
        self._m_confident = Counter(
            "invguard_guard_version_high_confidence_rows",
            "M2 by version: scored rows with entropy below the high-confidence threshold.",
            lv,
            registry=reg,
        )
        self._m_observed = Counter(
            "invguard_guard_version_observed_requests",
            "Requests the detectors saw, by the model version the client is routed to.",
            lv,
            registry=reg,
        )
        self._m_detected = Counter(
            "invguard_guard_version_detected_requests",
            "Requests on which a detector fired, by the model version the client is routed to.",
            lv,
            registry=reg,
        )
        self._children = {
            arm.canary: (
                self._m_rows.labels(arm.version),
                self._m_confident.labels(arm.version),
                self._m_observed.labels(arm.version),
                self._m_detected.labels(arm.version),
            )
            for arm in (self.stable, self.canary)
        }
        self._gauges()

    # ------------------------------------------------------------------ the request path
    def in_canary(self, client: str) -> bool:
        """Whether ``client`` belongs to the canary's share (a keyed hash: fixed per client)."""
        h = hmac.digest(self._key, self._msg + client.encode(), "sha256")
        return int.from_bytes(h[:8], "big") < self._threshold

    def choose(self, client: str) -> Arm:
        active, _ = self._route
        return self.canary if active and self.in_canary(client) else self.stable

    def version_of(self, client: str) -> str:
        """The version that answers ``client`` now (no side effect, unlike :meth:`choose`)."""
        return self.canary.version if self._route[0] and self.in_canary(client) else self.stable.version

    @property
    def active(self) -> bool:
        return self._route[0]

    def served(self, arm: Arm, client: str, scored_rows: int, confident_rows: int) -> None:
        c = arm.counts
        c.rows += scored_rows
        c.confident += confident_rows
        row = c.client(client)
        if row is not None:
            row[0] += scored_rows
            row[1] += confident_rows
        m = self._children[arm.canary]
        if scored_rows:
            m[0].inc(scored_rows)
        if confident_rows:
            m[1].inc(confident_rows)

    def observed(self, arm: Arm, client: str, detected: bool) -> None:
        c = arm.counts
        c.observed += 1
        row = c.client(client)
        if row is not None:
            row[2] += 1
            row[3] += detected
        m = self._children[arm.canary]
        m[2].inc()
        if detected:
            c.detected += 1
            m[3].inc()

    # ------------------------------------------------------------------ the window
    def _reset(self) -> None:
        for arm in (self.stable, self.canary):
            arm.counts.buckets.clear()
        self._last_check = None
        self._baseline(self.clock())

    def _baseline(self, now: float) -> None:
        """Start the window afresh at ``now``: what is counted from here on is in it."""
        snaps = self._snapshots()
        for arm in (self.stable, self.canary):
            self._samples[arm.canary].clear()
            self._samples[arm.canary].append((now, snaps[arm.canary]))
            arm.counts.buckets.clear()
            arm.counts.buckets.append((now, {}))

    def _snapshots(self) -> dict[bool, tuple[int, int, int, int]]:
        """Each version's cumulative counts: this process's, or (``serve --workers N``) every
        worker's summed from the multiprocess metric files, so each worker compares all traffic."""
        if not multiprocess():
            return {arm.canary: arm.counts.snapshot() for arm in (self.stable, self.canary)}
        sums: dict[tuple[str, str], float] = {}
        for fam in aggregate().collect():
            for smp in fam.samples:
                if smp.name in _VERSION_COUNTERS:
                    k = (smp.name, smp.labels.get("model_version", ""))
                    sums[k] = sums.get(k, 0.0) + smp.value
        return {
            arm.canary: (
                int(sums.get((_VERSION_COUNTERS[0], arm.version), 0)),
                int(sums.get((_VERSION_COUNTERS[1], arm.version), 0)),
                int(sums.get((_VERSION_COUNTERS[2], arm.version), 0)),
                int(sums.get((_VERSION_COUNTERS[3], arm.version), 0)),
            )
            for arm in (self.stable, self.canary)
        }

    def _sample(self, now: float) -> None:
        self._tick_time = now
        keep = self.cfg.window_seconds + self.cfg.check_seconds
        snaps = self._snapshots()
        for arm in (self.stable, self.canary):
            dq = self._samples[arm.canary]
            dq.append((now, snaps[arm.canary]))
            while len(dq) > 2 and dq[1][0] <= now - keep:
                dq.popleft()
            b = arm.counts.buckets
            if not b or now - b[-1][0] >= self._bucket:
                b.append((now, {}))
            while b and b[0][0] < now - self.cfg.window_seconds - self._bucket:
                b.popleft()

    def _window(self, arm: Arm, now: float) -> tuple[int, int, int, int]:
        """(rows, confident, observed, detected) of the last ``window_seconds`` (the history there
        is, while the window is not yet full)."""
        dq = self._samples[arm.canary]
        if not dq:
            return 0, 0, 0, 0
        start = dq[0][1]
        for t, snap in dq:
            if t <= now - self.cfg.window_seconds:
                start = snap
            else:
                break
        end = dq[-1][1]
        return (end[0] - start[0], end[1] - start[1], end[2] - start[2], end[3] - start[3])

    def evaluate(self, now: float) -> dict[str, Any]:
        """Compare the versions over the window; ``breach`` lists what breached (empty: none)."""
        cfg = self.cfg
        ws, wc = self._window(self.stable, now), self._window(self.canary, now)
        cut = now - cfg.window_seconds - self._bucket
        per_client: dict[bool, dict[str, list[int]]] = {}
        for arm in (self.stable, self.canary):
            merged: dict[str, list[int]] = {}
            for t, bucket in arm.counts.buckets:
                if t >= cut:
                    for client, row in bucket.items():
                        acc = merged.setdefault(client, [0, 0, 0, 0])
                        for i in range(4):
                            acc[i] += row[i]
            per_client[arm.canary] = merged
        conf = 1 - cfg.alpha
        slis: dict[str, Any] = {}
        breach: list[str] = []
        for sli, (bi, ti), need, margin in (
            ("high_confidence_rate", (1, 0), cfg.min_rows, cfg.m2_margin),
            ("detection_rate", (3, 2), cfg.min_requests, cfg.detection_margin),
        ):
            arms: dict[str, dict[str, Any]] = {}
            for arm, w in ((self.stable, ws), (self.canary, wc)):
                bad, total = w[bi], w[ti]
                units = [(r[bi], r[ti]) for r in per_client[arm.canary].values() if r[ti] > 0]
                arms["canary" if arm.canary else "stable"] = {
                    "version": arm.version,
                    "bad": bad,
                    "total": total,
                    "rate": bad / total if total else None,
                    "clients": len(units),
                    "design_effect": design_effect(units),
                }
            s, c = arms["stable"], arms["canary"]
            short = [
                f"{name} has {a['total']} of {need} {'rows' if sli == 'high_confidence_rate' else 'requests'}"
                for name, a in (("stable", s), ("canary", c))
                if a["total"] < need
            ] + [
                f"{name} has {a['clients']} of {cfg.min_clients} clients"
                for name, a in (("stable", s), ("canary", c))
                if a["clients"] < cfg.min_clients
            ]
            doc: dict[str, Any] = {
                "stable": s,
                "canary": c,
                "margin": margin,
                "confidence": conf,
                "min_sample": need,
            }
            if sli == "detection_rate" and s["total"] == 0 and c["total"] == 0:
                doc.update(decided=False, why="no request was seen by the detectors (detection off?)")
            elif short:
                doc.update(decided=False, why="insufficient data: " + "; ".join(short))
            else:
                d, lower, upper = difference_interval(
                    c["bad"], c["total"], s["bad"], s["total"], confidence=conf
                )
                lower_c = clustered_lower(c, s, conf)
                doc.update(
                    decided=True,
                    difference=d,
                    lower=min(lower, lower_c),
                    upper=upper,
                    lower_rows=lower,
                    lower_clustered=lower_c,
                    breach=min(lower, lower_c) > margin,
                )
                lower = min(lower, lower_c)
                if lower > margin:
                    breach.append(sli)
            slis[sli] = doc
        audit = latest_audit(self.history, self.history_model) if self.history else None
        if audit is not None and not audit["passed"]:
            breach.append("audit")
        out = {
            "at": now,
            "window_seconds": cfg.window_seconds,
            "stable_version": self.stable.version,
            "canary_version": self.canary.version,
            "slis": slis,
            "audit": audit,
            "audit_model": self.history_model,
            "breach": breach,
        }
        out["reason"] = self.describe(out) if breach else ""
        return out

    @staticmethod
    def describe(ev: dict[str, Any]) -> str:
        """The breach in words, with the numbers."""
        parts = []
        for sli in ev["breach"]:
            if sli == "audit":
                a = ev["audit"]
                parts.append(
                    f"its latest audit ({ev['audit_model']}, run {a['run_id']} at {iso(a['finished_at'])}) "
                    f"failed a gate: {a['summary']}"
                )
                continue
            d = ev["slis"][sli]
            s, c = d["stable"], d["canary"]
            unit = "rows" if sli == "high_confidence_rate" else "requests"
            parts.append(
                f"{SLI_NAMES[sli]} {c['rate']:.3f} on {c['version']} ({c['bad']}/{c['total']} {unit}, "
                f"{c['clients']} clients) vs {s['rate']:.3f} on {s['version']} ({s['bad']}/{s['total']}, "
                f"{s['clients']} clients): the difference's {d['confidence']:.1%} lower bound "
                f"{d['lower']:.3f} exceeds the margin {d['margin']:g}"
            )
        return "; ".join(parts)

    # ------------------------------------------------------------------ the on-call tick
    def _gauges(self) -> None:
        v = self.canary.version
        self._m_active.labels(v).set(1 if self.active else 0)
        self._m_weight.labels(v).set(self.cfg.weight if self.active else 0.0)

    def follow(self, st: CanaryState) -> None:
        """Follow a change made elsewhere (another worker's rollback, an enable from the CLI)."""
        if st.generation == self._route[1] and (st.state == ACTIVE) == self._route[0]:
            return
        if self._pending is not None and st.generation == self._pending[0]:
            return  # our own rollback, not yet stored: keep serving stable only
        self.state = st
        was_active = self._route[0]
        self._route = (st.state == ACTIVE, st.generation)
        if self._route[0] and not was_active:
            self._reset()
            self.last = None
        self._gauges()

    async def tick(self, incidents: IncidentStore, append: AuditAppend | None) -> None:
        now = self.clock()
        st = await asyncio.to_thread(self.store.require, self.model_name)
        self.state = st
        self.follow(st)
        self._sample(now)
        if self._pending is not None:
            await self._store_rollback(incidents)
        elif self.active and (self._last_check is None or now - self._last_check >= self.cfg.check_seconds):
            self._last_check = now
            ev = await asyncio.to_thread(self.evaluate, now)
            self.last = ev
            for sli in SLIS:
                d = ev["slis"][sli]
                for who in ("stable", "canary"):
                    if d[who]["rate"] is not None:
                        self._m_rate.labels(d[who]["version"], sli).set(d[who]["rate"])
                if d.get("decided"):
                    self._m_lower.labels(self.canary.version, sli).set(d["lower"])
            gen = self._route[1]
            await asyncio.to_thread(self.store.record_evaluation, self.model_name, gen, now, ev)
            if ev["breach"]:
                self._route = (False, gen)  # from here on every request is routed to stable
                self._gauges()
                log.warning("canary %s rolled back: %s", self.canary.version, ev["reason"])
                self._pending = (gen, ev["reason"], ev)
                await self._store_rollback(incidents)
        if append is not None:
            await self._audit(append)

    async def _store_rollback(self, incidents: IncidentStore) -> None:
        assert self._pending is not None
        gen, reason, ev = self._pending
        new = await asyncio.to_thread(self.store.roll_back, self.model_name, gen, "guard", reason, ev)
        self._pending = None
        if new is None:  # another worker rolled it back first (or it was re-enabled): follow the store
            st = await asyncio.to_thread(self.store.require, self.model_name)
            self._route = (st.state == ACTIVE, st.generation)
            if st.state == ACTIVE:
                self._reset()
            self._gauges()
            return
        self._route = (False, new.generation)
        self.state = new
        self._gauges()
        first = ev["breach"][0]
        for sli in ev["breach"]:
            self._m_rollbacks.labels(self.canary.version, sli).inc()
        d = Detection(
            source="canary",
            detector=f"canary:{first}",
            title=f"canary {self.canary.version} of {self.model_name} rolled back to {self.stable.version}: "
            + reason,
            model=self.model_name,
            model_version=self.canary.version,
            severity="page",
            group=f"canary:{self.model_name}:{self.canary.version}:{new.generation}",
            evidence={"canary": ev},
            first_seen=ev["at"],
            last_seen=ev["at"],
        )
        inc, _ = await asyncio.to_thread(incidents.open, d)
        entry = await asyncio.to_thread(self.store.last_entry, self.model_name, new.generation, "rolled_back")
        if entry is not None:
            await asyncio.to_thread(self.store.add_detail, entry.id, {"incident": inc.id})

    async def _audit(self, append: AuditAppend) -> None:
        claimed = await asyncio.to_thread(self.store.claim_audit)
        for i, e in enumerate(claimed):
            rec = {
                "client": None,
                "role": None,
                "route": "canary",
                "status": None,
                "decision": f"canary_{e.action}",
                "policy": None,
                "input_hmac": None,
                "rows": 0,
                "labels": None,
                "entropy": None,
                "model_version": e.canary_version,
                "generation": e.generation,
                "actor": e.actor,
                "note": e.note,
                "at": e.at,
                "incident": e.detail.get("incident"),
                "breach": e.detail.get("breach"),
                "slis": e.detail.get("slis"),
                "audit": e.detail.get("audit"),
            }
            try:
                await append(rec)
            except Exception as ex:  # the log cannot be written now: give the rest back for later
                log.warning("canary transition not yet in the audit log (%s); will retry", ex)
                await asyncio.to_thread(self.store.unmark_audited, [x.id for x in claimed[i:]])
                return

    def status(self) -> dict[str, Any]:
        """What the admin API shows: the state, the routing, the last comparison."""
        st = self.state
        return {
            "model": self.model_name,
            "stable_version": self.stable.version,
            "canary_version": self.canary.version,
            "weight": self.cfg.weight,
            "serving": self.cfg.weight if self.active else 0.0,
            "state": ACTIVE if self.active else ROLLED_BACK,
            "generation": st.generation,
            "since": st.since,
            "since_iso": iso(st.since),
            "actor": st.actor,
            "reason": st.reason,
            "last_evaluation": self.last,
        }


def open_state(config: str | Path) -> tuple[CanaryStateStore, str]:
    """The canary state store of a guard config and the model's name (for the CLI)."""
    from invguard.guard.config import load

    cfg = load(config)
    if cfg.canary is None or cfg.incidents is None:
        raise ConfigError(f"{config}: no canary section (canary: {{version: v2, weight: 0.05, path: ...}})")
    return CanaryStateStore(cfg.incidents.store), cfg.model.name
