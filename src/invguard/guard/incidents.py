"""Privacy incidents: an embedded store (SQLite in WAL mode) shared by the guard's workers and the CLI.

An incident opens from a detection event (``source="detection"``), a privacy SLO breach
(``"slo"``), a failed audit gate recorded in the audit history (``"audit"``) or by hand
(``"manual"``). It holds the model and its version, the clients and the keys they used, the detector
and its evidence (the audit-log record seqs that matched, fingerprints, first and last seen) and the
mitigations applied, and moves through one state machine::

    open --ack--> acknowledged --resolve--> resolved
    open --resolve--> resolved              (resolving also counts as the first response)

Every change is a row of ``transitions`` (who, when, a note). Two outboxes hang off that journal,
written in the same transaction as the change (the transactional-outbox pattern), so nothing is lost
when a process dies between the change and its side effects:

- ``audited = 0``: the transition still needs its audit-log record; the guard's background task
  appends it (:meth:`IncidentStore.pending_audit` / :meth:`mark_audited`), including transitions
  made by ``invguard incidents ack`` from another process.
- ``outbox``: CloudEvents to post to the webhook (:mod:`invguard.guard.webhook`), with attempts,
  the next attempt time (exponential backoff) and a claim lease so two workers never post the same
  event at once.

**Grouping**: a detection joins an unresolved incident of the same source, detector and model whose
clients overlap its clients (or that shares its ``group`` key, e.g. a client cluster id) and whose
last detection is at most ``group_window`` seconds old, instead of opening one incident per hit;
a page-severity detection escalates a ticket it joins.
The decision runs inside ``BEGIN IMMEDIATE``, so concurrent workers agree.

**Time to acknowledge / resolve** (M8): ``opened_at`` is when the incident was opened, ``acked_at``
the first response (ack, or resolve without an ack), ``resolved_at`` its resolution. :meth:`stats`
gives MTTA and MTTR over a period; :class:`IncidentCollector` exports them to Prometheus as
summaries (``..._sum`` / ``..._count``), so ``increase(sum[7d]) / increase(count[7d])`` is the MTTR
of the last week.

Times are seconds since the epoch from an injected clock (``time.time`` by default).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from invguard.core.errors import ConfigError, InvguardError
from invguard.storage import SqliteFile

Clock = Callable[[], float]
State = Literal["open", "acknowledged", "resolved"]
STATES: tuple[State, ...] = ("open", "acknowledged", "resolved")
SOURCES = ("detection", "slo", "audit", "manual", "canary")
SEVERITIES = ("page", "ticket")
_MAX_EVIDENCE_ITEMS = 1000  # seqs / fingerprints kept per incident (the log has the rest)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    detector TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    grp TEXT,
    clients TEXT NOT NULL,
    keys TEXT NOT NULL,
    evidence TEXT NOT NULL,
    mitigations TEXT NOT NULL,
    detections INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    opened_at REAL NOT NULL,
    acked_at REAL,
    acked_by TEXT,
    resolved_at REAL,
    resolved_by TEXT,
    resolution TEXT
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents (state, last_seen);
CREATE INDEX IF NOT EXISTS incidents_group ON incidents (source, detector, model, state);
CREATE INDEX IF NOT EXISTS incidents_resolved ON incidents (resolved_at);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    at REAL NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT NOT NULL,
    audited INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_audit ON transitions (audited, id);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    transition_id INTEGER NOT NULL REFERENCES transitions (id),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    claimed_until REAL,
    delivered_at REAL,
    failed_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered_at, failed_at, next_attempt_at);
"""

# actions that are state changes (audited and sent to the webhook); "detection" (a grouped hit)
# and "mitigation" only update the incident
_NOTIFIED = ("opened", "acknowledged", "resolved", "mitigation")


class IncidentError(InvguardError):
    """An incident operation that cannot be done (unknown id, a transition the state forbids)."""

    exit_code = 2


class WebhookConfig(BaseModel):
    """Where new incidents and transitions are posted (CloudEvents, structured JSON mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    secret_env: str | None = None  # the HMAC secret, from this environment variable ...
    secret_file: str | None = None  # ... or from this file (one line)
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_seconds: float = Field(default=2.0, gt=0)
    max_backoff_seconds: float = Field(default=600.0, gt=0)
    timeout_seconds: float = Field(default=5.0, gt=0)


class IncidentsConfig(BaseModel):
    """``incidents:`` in guard.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str = "incidents.db"
    group_window_seconds: float = Field(default=3600.0, gt=0)
    history: str | None = None  # an audit history store: failed gates open incidents
    admin_roles: tuple[str, ...] = ()  # roles whose keys sign in to /admin (default: detection.admin_roles)
    webhook: WebhookConfig | None = None


def iso(t: float | None) -> str | None:
    """``2026-12-01T23:04:05Z`` for an epoch time (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Incident:
    id: int
    state: State
    source: str
    detector: str
    severity: str
    title: str
    model: str
    model_version: str
    group: str | None
    clients: tuple[str, ...]
    keys: tuple[str, ...]
    evidence: dict[str, Any]
    mitigations: tuple[dict[str, Any], ...]
    detections: int
    first_seen: float
    last_seen: float
    opened_at: float
    acked_at: float | None
    acked_by: str | None
    resolved_at: float | None
    resolved_by: str | None
    resolution: str | None

    @property
    def time_to_acknowledge(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.opened_at

    @property
    def time_to_resolve(self) -> float | None:
        return None if self.resolved_at is None else self.resolved_at - self.opened_at

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["clients"], d["keys"], d["mitigations"] = (
            list(self.clients),
            list(self.keys),
            list(self.mitigations),
        )
        d["time_to_acknowledge"] = self.time_to_acknowledge
        d["time_to_resolve"] = self.time_to_resolve
        for k in ("first_seen", "last_seen", "opened_at", "acked_at", "resolved_at"):
            d[k + "_iso"] = iso(d[k])
        return d


@dataclass(frozen=True)
class Transition:
    id: int
    incident_id: int
    at: float
    action: str
    actor: str
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "incident": self.incident_id,
            "at": self.at,
            "at_iso": iso(self.at),
            "action": self.action,
            "actor": self.actor,
            "note": self.note,
        }


@dataclass(frozen=True)
class IncidentStats:
    """Incidents of a period: opened in it, and MTTA / MTTR of those acknowledged / resolved in it."""

    since: float
    until: float
    opened: int
    acknowledged: int
    resolved: int
    open_now: int
    mtta_seconds: float | None
    mttr_seconds: float | None
    ttr_p50_seconds: float | None
    ttr_max_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["since_iso"], d["until_iso"] = iso(self.since), iso(self.until)
        return d


@dataclass(frozen=True)
class OutboxItem:
    """One event to deliver: the transition, the incident as it is now, and the attempts so far."""

    id: int
    attempts: int
    transition: Transition
    incident: Incident


@dataclass
class Detection:
    """What a detector (or an SLO check, a failed gate, a person) reports; see :meth:`IncidentStore.open`."""

    source: str
    detector: str
    title: str
    model: str
    model_version: str = "unversioned"
    severity: str = "page"
    clients: Sequence[str] = ()
    keys: Sequence[str] = ()
    evidence: dict[str, Any] = field(default_factory=dict)
    mitigations: Sequence[dict[str, Any]] = ()
    group: str | None = None
    first_seen: float | None = None
    last_seen: float | None = None

    def check(self) -> None:
        if self.source not in SOURCES:
            raise IncidentError(f"incident source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.severity not in SEVERITIES:
            raise IncidentError(
                f"incident severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}"
            )
        if not self.detector or not self.title:
            raise IncidentError("an incident needs a detector (what flagged it) and a title")


def _merge_evidence(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Union of list-valued evidence (seqs, fingerprints; capped), latest value for the rest."""
    out = dict(old)
    for k, v in new.items():
        if isinstance(v, list) and isinstance(out.get(k), list):
            merged = list(out[k])
            seen = {json.dumps(x, sort_keys=True) for x in merged}
            for x in v:
                s = json.dumps(x, sort_keys=True)
                if s not in seen and len(merged) < _MAX_EVIDENCE_ITEMS:
                    seen.add(s)
                    merged.append(x)
            out[k] = merged
        else:
            out[k] = v
    return out


def _union(a: Iterable[str], b: Iterable[str]) -> list[str]:
    return sorted(set(a) | set(b))


class IncidentStore:
    """The incident store at ``path`` (created if missing). Safe to share between processes."""

    def __init__(self, path: str | Path, *, clock: Clock = time.time, group_window: float = 3600.0) -> None:
        self.clock = clock
        self.group_window = group_window
        self._db = SqliteFile(path, _SCHEMA, what="an incident store")
        self.path = self._db.path
        self._connect = self._db.connect

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _incident(row: sqlite3.Row | tuple[Any, ...]) -> Incident:
        r = list(row)
        return Incident(
            id=r[0],
            state=r[1],
            source=r[2],
            detector=r[3],
            severity=r[4],
            title=r[5],
            model=r[6],
            model_version=r[7],
            group=r[8],
            clients=tuple(json.loads(r[9])),
            keys=tuple(json.loads(r[10])),
            evidence=json.loads(r[11]),
            mitigations=tuple(json.loads(r[12])),
            detections=r[13],
            first_seen=r[14],
            last_seen=r[15],
            opened_at=r[16],
            acked_at=r[17],
            acked_by=r[18],
            resolved_at=r[19],
            resolved_by=r[20],
            resolution=r[21],
        )

    def _get(self, con: sqlite3.Connection, incident_id: int) -> Incident:
        row = con.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            raise IncidentError(f"no incident #{incident_id} in {self.path}")
        return self._incident(row)

    def get(self, incident_id: int) -> Incident:
        with self._connect() as con:
            return self._get(con, incident_id)

    def find(
        self,
        *,
        state: str | Sequence[str] | None = None,
        model: str | None = None,
        client: str | None = None,
        limit: int = 100,
    ) -> list[Incident]:
        """Incidents, newest first; ``state="active"`` means open or acknowledged."""
        q, args = "SELECT * FROM incidents WHERE 1=1", list[Any]()
        states = (
            ("open", "acknowledged") if state == "active" else (state,) if isinstance(state, str) else state
        )
        if states:
            for s in states:
                if s not in STATES:
                    raise IncidentError(f"state must be one of active, {', '.join(STATES)}; got {s!r}")
            q += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(states)
        if model is not None:
            q += " AND model = ?"
            args.append(model)
        if client is not None:
            q += " AND EXISTS (SELECT 1 FROM json_each(incidents.clients) WHERE value = ?)"
            args.append(client)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._connect() as con:
            return [self._incident(r) for r in con.execute(q, args)]

    def transitions(self, incident_id: int) -> list[Transition]:
        with self._connect() as con:
            self._get(con, incident_id)
            rows = con.execute(
                "SELECT id, incident_id, at, action, actor, note FROM transitions WHERE incident_id = ? "
                "ORDER BY id",
                (incident_id,),
            ).fetchall()
        return [Transition(*r) for r in rows]

    # ------------------------------------------------------------------ writing
    def _journal(
        self, con: sqlite3.Connection, incident_id: int, now: float, action: str, actor: str, note: str
    ) -> int:
        notified = action in _NOTIFIED
        cur = con.execute(
            "INSERT INTO transitions (incident_id, at, action, actor, note, audited) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (incident_id, now, action, actor, note, 0 if notified else 1),
        )
        tid = int(cur.lastrowid or 0)
        if notified:
            con.execute("INSERT INTO outbox (transition_id, next_attempt_at) VALUES (?, ?)", (tid, now))
        return tid

    def open(self, d: Detection, *, actor: str = "guard") -> tuple[Incident, bool]:
        """Open an incident for ``d``, or add ``d`` to the unresolved incident it belongs with.

        Returns ``(incident, created)``."""
        d.check()
        now = self.clock()
        first = d.first_seen if d.first_seen is not None else now
        last = d.last_seen if d.last_seen is not None else now
        with self._connect(write=True) as con:
            rows = con.execute(
                "SELECT * FROM incidents WHERE source = ? AND detector = ? AND model = ? "
                "AND state != 'resolved' AND last_seen >= ? ORDER BY id DESC",
                (d.source, d.detector, d.model, min(first, now) - self.group_window),
            ).fetchall()
            for row in rows:
                inc = self._incident(row)
                same_group = d.group is not None and inc.group == d.group
                overlap = bool(set(d.clients) & set(inc.clients))
                if same_group or overlap or (not d.clients and not inc.clients and d.group is None):
                    con.execute(
                        "UPDATE incidents SET clients = ?, keys = ?, evidence = ?, mitigations = ?, "
                        "detections = detections + 1, first_seen = MIN(first_seen, ?), "
                        "last_seen = MAX(last_seen, ?), "
                        "severity = CASE WHEN ? = 'page' THEN 'page' ELSE severity END WHERE id = ?",
                        (
                            json.dumps(_union(inc.clients, d.clients)),
                            json.dumps(_union(inc.keys, d.keys)),
                            json.dumps(_merge_evidence(inc.evidence, d.evidence)),
                            json.dumps([*inc.mitigations, *d.mitigations]),
                            first,
                            last,
                            d.severity,
                            inc.id,
                        ),
                    )
                    self._journal(con, inc.id, now, "detection", actor, d.title)
                    return self._get(con, inc.id), False
            cur = con.execute(
                "INSERT INTO incidents (state, source, detector, severity, title, model, model_version, grp, "
                "clients, keys, evidence, mitigations, detections, first_seen, last_seen, opened_at) "
                "VALUES ('open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
                (
                    d.source,
                    d.detector,
                    d.severity,
                    d.title,
                    d.model,
                    d.model_version,
                    d.group,
                    json.dumps(sorted(set(d.clients))),
                    json.dumps(sorted(set(d.keys))),
                    json.dumps(d.evidence),
                    json.dumps(list(d.mitigations)),
                    first,
                    last,
                    now,
                ),
            )
            iid = int(cur.lastrowid or 0)
            self._journal(con, iid, now, "opened", actor, d.title)
            return self._get(con, iid), True

    def acknowledge(self, incident_id: int, actor: str, note: str = "") -> Incident:
        """open -> acknowledged."""
        if not actor:
            raise IncidentError("acknowledging an incident needs who acknowledges it (--by)")
        now = self.clock()
        with self._connect(write=True) as con:
            inc = self._get(con, incident_id)
            if inc.state != "open":
                raise IncidentError(
                    f"incident #{incident_id} is {inc.state}; only an open incident can be acknowledged"
                )
            con.execute(
                "UPDATE incidents SET state = 'acknowledged', acked_at = ?, acked_by = ? WHERE id = ?",
                (now, actor, incident_id),
            )
            self._journal(con, incident_id, now, "acknowledged", actor, note)
            return self._get(con, incident_id)

    def resolve(self, incident_id: int, actor: str, note: str) -> Incident:
        """open | acknowledged -> resolved (a note saying what was found and done is required)."""
        if not actor:
            raise IncidentError("resolving an incident needs who resolves it (--by)")
        if not note.strip():
            raise IncidentError(f"resolving incident #{incident_id} needs a note: what was found and done")
        now = self.clock()
        with self._connect(write=True) as con:
            inc = self._get(con, incident_id)
            if inc.state == "resolved":
                raise IncidentError(
                    f"incident #{incident_id} was already resolved by {inc.resolved_by} "
                    f"at {iso(inc.resolved_at)}"
                )
            con.execute(
                "UPDATE incidents SET state = 'resolved', resolved_at = ?, resolved_by = ?, resolution = ?, "
                "acked_at = COALESCE(acked_at, ?), acked_by = COALESCE(acked_by, ?) WHERE id = ?",
                (now, actor, note, now, actor, incident_id),
            )
            self._journal(con, incident_id, now, "resolved", actor, note)
            return self._get(con, incident_id)

    def add_mitigation(self, incident_id: int, mitigation: dict[str, Any], actor: str) -> Incident:
        """Record a mitigation applied (or lifted) for an incident's clients."""
        now = self.clock()
        with self._connect(write=True) as con:
            inc = self._get(con, incident_id)
            m = {"at": now, "by": actor, **mitigation}
            con.execute(
                "UPDATE incidents SET mitigations = ? WHERE id = ?",
                (json.dumps([*inc.mitigations, m]), incident_id),
            )
            self._journal(con, incident_id, now, "mitigation", actor, json.dumps(mitigation, sort_keys=True))
            return self._get(con, incident_id)

    # ------------------------------------------------------------------ figures
    def stats(self, since: float | None = None, until: float | None = None) -> IncidentStats:
        """Opened in ``[since, until]``; MTTA / MTTR of the incidents acknowledged / resolved in it."""
        until = self.clock() if until is None else until
        since = 0.0 if since is None else since
        with self._connect() as con:
            opened = con.execute(
                "SELECT COUNT(*) FROM incidents WHERE opened_at >= ? AND opened_at <= ?", (since, until)
            ).fetchone()[0]
            tta = [
                r[0]
                for r in con.execute(
                    "SELECT acked_at - opened_at FROM incidents WHERE acked_at >= ? AND acked_at <= ?",
                    (since, until),
                )
            ]
            ttr = sorted(
                r[0]
                for r in con.execute(
                    "SELECT resolved_at - opened_at FROM incidents "
                    "WHERE resolved_at >= ? AND resolved_at <= ?",
                    (since, until),
                )
            )
            open_now = con.execute("SELECT COUNT(*) FROM incidents WHERE state != 'resolved'").fetchone()[0]
        return IncidentStats(
            since=since,
            until=until,
            opened=opened,
            acknowledged=len(tta),
            resolved=len(ttr),
            open_now=open_now,
            mtta_seconds=sum(tta) / len(tta) if tta else None,
            mttr_seconds=sum(ttr) / len(ttr) if ttr else None,
            ttr_p50_seconds=_median(ttr),
            ttr_max_seconds=ttr[-1] if ttr else None,
        )

    def resolution_within(self, threshold: float, since: float, until: float) -> tuple[int, int]:
        """``(late, total)`` for the incident-resolution SLO over ``[since, until]``. An incident counts
        once, when it is decided: at its resolution if that came within ``threshold`` seconds of its
        opening (good), else at ``opened_at + threshold`` (late, resolved or not)."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT opened_at, resolved_at FROM incidents WHERE opened_at >= ? AND opened_at <= ?",
                (since - threshold, until),
            ).fetchall()
        late = total = 0
        for opened, resolved in rows:
            in_time = resolved is not None and resolved - opened <= threshold
            decided = resolved if in_time else opened + threshold
            if since <= decided <= until:
                total += 1
                late += not in_time
        return late, total

    def gauges(self) -> dict[str, Any]:
        """What the Prometheus collector exports (one query per figure)."""
        now = self.clock()
        with self._connect() as con:
            active = con.execute(
                "SELECT model, model_version, state, severity, source, COUNT(*), MIN(opened_at) "
                "FROM incidents "
                "WHERE state != 'resolved' GROUP BY model, model_version, state, severity, source"
            ).fetchall()
            totals = con.execute(
                "SELECT model, model_version, COUNT(*), "
                "COUNT(acked_at), COALESCE(SUM(acked_at - opened_at), 0), "
                "COUNT(resolved_at), COALESCE(SUM(resolved_at - opened_at), 0) "
                "FROM incidents GROUP BY model, model_version"
            ).fetchall()
        return {
            "active": [(m, v, s, sev, src, n, now - oldest) for m, v, s, sev, src, n, oldest in active],
            "totals": totals,
        }

    # ------------------------------------------------------------------ outboxes
    def pending_audit(self, limit: int = 100) -> list[Transition]:
        """State changes that still need their audit-log record (oldest first)."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT id, incident_id, at, action, actor, note FROM transitions WHERE audited = 0 "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [Transition(*r) for r in rows]

    def claim_audit(self, limit: int = 100) -> list[Transition]:
        """Take the pending transitions for this process to write (marked audited in the same
        transaction, so two workers never both write one). If the write then fails, call
        :meth:`unmark_audited` to give them back."""
        with self._connect(write=True) as con:
            rows = con.execute(
                "SELECT id, incident_id, at, action, actor, note FROM transitions WHERE audited = 0 "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
            con.executemany("UPDATE transitions SET audited = 1 WHERE id = ?", [(r[0],) for r in rows])
        return [Transition(*r) for r in rows]

    def unmark_audited(self, ids: Sequence[int]) -> None:
        with self._connect(write=True) as con:
            con.executemany("UPDATE transitions SET audited = 0 WHERE id = ?", [(i,) for i in ids])

    def claim_outbox(self, now: float, lease: float, limit: int = 20) -> list[OutboxItem]:
        """Events due for delivery, leased to the caller for ``lease`` seconds."""
        with self._connect(write=True) as con:
            rows = con.execute(
                "SELECT o.id, o.attempts, t.id, t.incident_id, t.at, t.action, t.actor, t.note "
                "FROM outbox o JOIN transitions t ON t.id = o.transition_id "
                "WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= ? "
                "AND (o.claimed_until IS NULL OR o.claimed_until <= ?) ORDER BY o.id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            con.executemany(
                "UPDATE outbox SET claimed_until = ? WHERE id = ?", [(now + lease, r[0]) for r in rows]
            )
            return [OutboxItem(r[0], r[1], Transition(*r[2:]), self._get(con, r[3])) for r in rows]

    def delivered(self, outbox_id: int, now: float) -> None:
        with self._connect(write=True) as con:
            con.execute(
                "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, claimed_until = NULL, "
                "last_error = NULL WHERE id = ?",
                (now, outbox_id),
            )

    def delivery_failed(self, outbox_id: int, now: float, error: str, retry_at: float | None) -> None:
        """One failed attempt: retry at ``retry_at``, or give up (``None``)."""
        with self._connect(write=True) as con:
            con.execute(
                "UPDATE outbox SET attempts = attempts + 1, claimed_until = NULL, last_error = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at), failed_at = CASE WHEN ? IS NULL THEN ? END "
                "WHERE id = ?",
                (error[:500], retry_at, retry_at, now, outbox_id),
            )

    def outbox(self) -> list[dict[str, Any]]:
        """Every webhook event with its delivery state (for ``incidents show`` and tests)."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT o.id, t.incident_id, t.action, o.attempts, o.next_attempt_at, o.delivered_at, "
                "o.failed_at, o.last_error FROM outbox o JOIN transitions t ON t.id = o.transition_id "
                "ORDER BY o.id"
            ).fetchall()
        keys = (
            "id",
            "incident",
            "action",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "failed_at",
            "error",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # ------------------------------------------------------------------ sources
    def open_from_history(self, history: str | Path, *, model_version: str = "unversioned") -> list[Incident]:
        """Open one incident per failed audit run in an audit history store (``.invguard/history.db``)
        not already seen; returns the incidents opened. Idempotent: the run id is the group key."""
        hp = Path(history)
        if not hp.is_file():
            raise IncidentError(f"{hp}: no audit history store")
        con = sqlite3.connect(f"file:{hp}?mode=ro", uri=True, timeout=30)
        try:
            runs = con.execute(
                "SELECT id, model, finished_at, summary, config_hash FROM runs WHERE passed = 0 ORDER BY id"
            ).fetchall()
        except sqlite3.DatabaseError as e:
            raise IncidentError(f"{hp}: not an audit history store ({e})") from None
        finally:
            con.close()
        with self._connect() as c:
            seen = {
                r[0]
                for r in c.execute("SELECT grp FROM incidents WHERE source = 'audit' AND grp IS NOT NULL")
            }
        opened = []
        for run_id, model, finished, summary, chash in runs:
            grp = f"audit-run:{hp.resolve()}:{run_id}"
            if grp in seen:
                continue
            inc, created = self.open(
                Detection(
                    source="audit",
                    detector="audit-gate",
                    title=f"audit gate failed for {model}: {summary}",
                    model=model,
                    model_version=model_version,
                    severity="ticket",
                    group=grp,
                    evidence={"history": str(hp), "run_id": run_id, "summary": summary, "config_hash": chash},
                    first_seen=finished,
                    last_seen=finished,
                ),
                actor="audit-history",
            )
            if created:
                opened.append(inc)
        return opened


def open_store(store: str | Path | None, config: str | Path | None, **kw: Any) -> IncidentStore:
    """The store named by ``store``, else by ``incidents.store`` of the guard config ``config``, else
    ``incidents.db``."""
    if store is None and config is not None:
        from invguard.guard.config import load

        inc = load(config).incidents
        if inc is None:
            raise ConfigError(f"{config}: no incidents section (incidents: {{store: incidents.db}})")
        return IncidentStore(inc.store, group_window=inc.group_window_seconds, **kw)
    return IncidentStore(store if store is not None else "incidents.db", **kw)


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


class IncidentCollector:
    """Prometheus collector reading the store at scrape time (so every worker, and a CLI ack,
    show the same figures):

    - ``invguard_incidents_active{model,model_version,state,severity,source}``: unresolved incidents;
    - ``invguard_incidents_oldest_active_age_seconds{...}``: age of the oldest of them;
    - ``invguard_incidents_opened_total{model,model_version}``;
    - M8: ``invguard_incident_time_to_resolve_seconds`` and ``..._time_to_acknowledge_seconds``
      (summaries: ``_sum`` / ``_count`` over resolved / acknowledged incidents).
    """

    def __init__(self, store: IncidentStore) -> None:
        self.store = store

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

        g = self.store.gauges()
        labels = ["model", "model_version", "state", "severity", "source"]
        active = GaugeMetricFamily(
            "invguard_incidents_active", "Unresolved privacy incidents.", labels=labels
        )
        age = GaugeMetricFamily(
            "invguard_incidents_oldest_active_age_seconds",
            "Age of the oldest unresolved incident.",
            labels=labels,
        )
        for m, v, s, sev, src, n, a in g["active"]:
            active.add_metric([m, v, s, sev, src], n)
            age.add_metric([m, v, s, sev, src], a)
        opened = CounterMetricFamily(
            "invguard_incidents_opened", "Privacy incidents opened.", labels=["model", "model_version"]
        )
        tta = SummaryMetricFamily(
            "invguard_incident_time_to_acknowledge_seconds",
            "Time from an incident's opening to its first response (ack or resolve).",
            labels=["model", "model_version"],
        )
        ttr = SummaryMetricFamily(
            "invguard_incident_time_to_resolve_seconds",
            "M8: time from an incident's opening to its resolution (MTTR = sum / count over a period).",
            labels=["model", "model_version"],
        )
        for m, v, n, n_ack, s_ack, n_res, s_res in g["totals"]:
            opened.add_metric([m, v], n)
            tta.add_metric([m, v], n_ack, s_ack)
            ttr.add_metric([m, v], n_res, s_res)
        yield from (active, age, opened, tta, ttr)
