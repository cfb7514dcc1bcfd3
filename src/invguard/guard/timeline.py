"""A client's query timeline replayed from a *verified* audit log: what ``invguard log timeline`` prints.

The log (with its rotated files, or from a trusted checkpoint when older files were archived) is
verified first with :func:`invguard.guard.auditlog.verify`; a log that does not verify is refused,
and so is a query whose matching records lie beyond the verified range (records after the last
signed checkpoint, when the chain key is not given): a timeline handed to legal only ever holds
records the signatures vouch for.

Each entry is one request record: time, seq, client, role, route, status, decision, rows, input
HMAC, the entropy returned (minimum and mean over the rows), the policy applied, the detector hits
of that client so far and the mitigation in force at that moment (replayed from the detection and
mitigation records in log order). Queries: by client, by input HMAC (every client that sent the
same input), by time range, or by incident (its clients, from its first detection to its
resolution, with the records it cites as evidence marked).

A log written by several workers (``invguard serve --workers N``) is verified as a whole
(:func:`invguard.guard.auditlog.workers.verify_workers`) and its chains are replayed together in
time order; each entry then names its ``worker`` (seqs are per chain), and evidence seqs, which do
not say their chain, are not marked.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError, InvguardError

COLUMNS = (
    "time",
    "seq",
    "client",
    "role",
    "route",
    "status",
    "decision",
    "rows",
    "input_hmac",
    "entropy_min",
    "entropy_mean",
    "policy",
    "detector_hits",
    "mitigation",
    "evidence",
)


class TimelineError(InvguardError):
    """The log does not verify, or the records asked for are not covered by what verified."""

    exit_code = 1


def parse_time(value: str, what: str) -> datetime:
    """ISO 8601 (``2026-12-01T23:00:00Z``, a date, or with an offset) as an aware UTC datetime."""
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not an ISO 8601 time such as 2026-12-01T23:00:00Z") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _record_time(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00"))


@dataclass
class Entry:
    time: str
    seq: int
    client: str | None
    role: str | None
    route: str
    status: int | None
    decision: str
    rows: int
    input_hmac: str | None
    entropy_min: float | None
    entropy_mean: float | None
    policy: str | None
    detector_hits: str
    mitigation: str
    evidence: bool = False
    worker: int | None = None  # the worker whose chain holds it (a log of several workers)

    def row(self, columns: Sequence[str] = COLUMNS) -> list[Any]:
        return [getattr(self, c) for c in columns]


@dataclass
class Timeline:
    entries: list[Entry]
    verified: str  # the verification summary
    query: dict[str, Any]
    clients: list[str] = field(default_factory=list)  # distinct clients of the entries
    warnings: list[str] = field(default_factory=list)
    workers: bool = False  # replayed from the chains of several workers

    @property
    def columns(self) -> tuple[str, ...]:
        return (*COLUMNS, "worker") if self.workers else COLUMNS

    def to_json(self) -> str:
        return json.dumps(
            {
                "verified": self.verified,
                "query": self.query,
                "clients": self.clients,
                "warnings": self.warnings,
                "entries": [asdict(e) for e in self.entries],
            },
            indent=2,
        )

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for e in self.entries:
            w.writerow(["" if v is None else v for v in e.row(self.columns)])
        return buf.getvalue()


def _records(files: Sequence[Path]) -> Iterator[dict[str, Any]]:
    from invguard.guard.auditlog.format import read_file

    for f in files:
        for raw in read_file(f).split(b"\n"):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except ValueError:
                continue  # a torn last line: verify has already judged it
            if isinstance(doc, dict) and doc.get("kind") == "record":
                yield doc


def _entropy(v: Any) -> tuple[float | None, float | None]:
    if not isinstance(v, list) or not v:
        return None, None
    xs = [float(x) for x in v if isinstance(x, int | float)]
    if not xs:
        return None, None
    return round(min(xs), 6), round(sum(xs) / len(xs), 6)


def build(
    path: str | Path,
    *,
    public_key: str | None,
    chain_key: Any = None,
    head: str | Path | None = None,
    trusted: str | Path | None = None,
    trust_embedded_key: bool = False,
    allow_missing_head: bool = False,
    clients: Iterable[str] = (),
    input_hmac: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    evidence_seqs: Iterable[int] = (),
    incident: int | None = None,
) -> Timeline:
    """Verify the log, then replay the records matching the query (see the module docstring)."""
    from invguard.guard.auditlog import segments, verify
    from invguard.guard.auditlog.workers import manifest_path, single_chain_problem, verify_workers

    wanted = set(clients)
    if not wanted and input_hmac is None and incident is None:
        raise ConfigError("timeline: say whose requests: --client, --input-hmac or --incident")
    if input_hmac is not None:
        input_hmac = input_hmac.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", input_hmac):
            raise ConfigError(
                f"--input-hmac: expected an input's HMAC-SHA256 in hex (all 64 digits, or a prefix of at "
                f"least 8 that only it starts with), got {input_hmac!r}"
            )
    hmac_matches: set[str] = set()  # the full input HMACs the prefix matched
    refuse = "refusing to build a timeline from a log that does not verify"
    several = manifest_path(path).exists()
    # (records, first seq, last verified seq) of each chain
    chains: list[tuple[list[dict[str, Any]], int, int]] = []
    if several:
        if head is not None or trusted is not None:
            raise ConfigError(
                f"--head and --from name a checkpoint of one chain, and {path} is written by several "
                f"workers (manifest {manifest_path(path)})"
            )
        wrep = verify_workers(
            path,
            public_key=public_key,
            chain_key=chain_key,
            trust_embedded_key=trust_embedded_key,
            allow_missing_head=allow_missing_head,
        )
        if not wrep.ok:
            raise TimelineError(f"{refuse}: {wrep.summary()}")
        summary, warnings = wrep.summary(), list(wrep.warnings)
        for name, r in wrep.chains:
            docs = list(_records(segments(Path(path).parent / name, archived=True)))
            chains.append((docs, r.start_size + 1, r.verified_through))
        if evidence_seqs:
            warnings.append(
                "evidence seqs are not marked: in a log of several workers they do not say their chain"
            )
    else:
        problem = single_chain_problem(path)
        if problem is not None:
            raise TimelineError(f"{refuse}: FAILED: {problem}")
        rep = verify(
            path,
            public_key=public_key,
            chain_key=chain_key,
            head=head,
            trusted=trusted,
            trust_embedded_key=trust_embedded_key,
            allow_missing_head=allow_missing_head,
        )
        if not rep.ok:
            raise TimelineError(f"{refuse}: {rep.summary()}")
        summary, warnings = rep.summary(), list(rep.warnings)
        chains.append(
            (list(_records(segments(path, archived=True))), rep.start_size + 1, rep.verified_through)
        )
    stream = [(doc, first, through) for docs, first, through in chains for doc in docs]
    if several:  # the chains together in time order (the replayed mitigations cross workers)
        stream.sort(key=lambda x: str(x[0].get("time", "")))
    ev = set() if several else set(evidence_seqs)
    hits: dict[str, list[str]] = {}
    mitigation: dict[str, tuple[str, float | None]] = {}
    entries: list[Entry] = []
    unverified: list[int] = []
    through = min(t for _, _, t in chains)
    for doc, first, chain_through in stream:
        seq = int(doc.get("seq", 0))
        if seq < first:
            continue
        client = doc.get("client")
        route = str(doc.get("route", ""))
        t = _record_time(doc)
        if route == "detection":  # the replayed state: detector hits and mitigations per client
            if doc.get("decision") == "detection" and isinstance(doc.get("detection"), dict):
                hits.setdefault(str(client), []).append(str(doc["detection"].get("detector")))
            elif doc.get("decision") == "mitigation" and isinstance(doc.get("mitigation"), dict):
                m = doc["mitigation"]
                if m.get("change") == "applied":
                    mitigation[str(m.get("client"))] = (str(m.get("action")), m.get("until"))
                else:
                    mitigation.pop(str(m.get("client")), None)
        hmac_hit = input_hmac is not None and str(doc.get("input_hmac") or "").startswith(input_hmac)
        if hmac_hit:
            hmac_matches.add(str(doc["input_hmac"]))
        match = (
            (client in wanted)
            or hmac_hit
            or (incident is not None and route == "incident" and doc.get("incident") == incident)
        )
        if not match or (since is not None and t < since) or (until is not None and t > until):
            continue
        if seq > chain_through:
            unverified.append(seq)
            continue
        m_now = mitigation.get(str(client))
        in_force = ""
        if m_now is not None and (m_now[1] is None or m_now[1] > t.timestamp()):
            in_force = m_now[0] + (
                ""
                if m_now[1] is None
                else f" until {datetime.fromtimestamp(m_now[1], UTC):%Y-%m-%dT%H:%M:%SZ}"
            )
        if doc.get("mitigated"):
            in_force = in_force or str(doc["mitigated"])
        emin, emean = _entropy(doc.get("entropy"))
        entries.append(
            Entry(
                time=str(doc["time"]),
                seq=seq,
                client=client,
                role=doc.get("role"),
                route=route,
                status=doc.get("status"),
                decision=str(doc.get("decision", "")),
                rows=int(doc.get("rows") or 0),
                input_hmac=doc.get("input_hmac"),
                entropy_min=emin,
                entropy_mean=emean,
                policy=doc.get("policy"),
                detector_hits=",".join(sorted(set(hits.get(str(client), [])))),
                mitigation=in_force,
                evidence=seq in ev,
                worker=doc.get("worker") if several else None,
            )
        )
    if len(hmac_matches) > 1:
        shown = ", ".join(sorted(hmac_matches)[:3]) + (", ..." if len(hmac_matches) > 3 else "")
        raise ConfigError(
            f"--input-hmac {input_hmac}: {len(hmac_matches)} different input HMACs in the log start "
            f"with it ({shown}); give more digits"
        )
    if len(hmac_matches) == 1:
        (input_hmac,) = hmac_matches
    if unverified:
        raise TimelineError(
            f"refusing: {len(unverified)} matching record(s) (seq {unverified[0]}-{unverified[-1]}) lie "
            "after "
            f"the last signed checkpoint (seq {through}) and cannot be verified without the chain key; pass "
            "--chain-key, wait for the next checkpoint, or end the range earlier with --to"
        )
    query = {
        "clients": sorted(wanted),
        "input_hmac": input_hmac,
        "incident": incident,
        "from": None if since is None else since.isoformat(),
        "to": None if until is None else until.isoformat(),
    }
    return Timeline(
        entries=entries,
        verified=summary,
        query=query,
        clients=sorted({e.client for e in entries if e.client}),
        warnings=warnings,
        workers=several,
    )


def for_incident(store: Any, incident_id: int, margin_seconds: float = 3600.0) -> dict[str, Any]:
    """The query behind an incident: its clients, from ``margin`` before its first detection to
    its resolution (or now), and the record seqs its evidence cites."""
    inc = store.get(incident_id)
    end = inc.resolved_at if inc.resolved_at is not None else None
    seqs = [int(s) for s in inc.evidence.get("seqs", []) if isinstance(s, int)]
    return {
        "clients": list(inc.clients),
        "since": datetime.fromtimestamp(min(inc.first_seen, inc.opened_at) - margin_seconds, UTC),
        "until": None if end is None else datetime.fromtimestamp(end, UTC),
        "evidence_seqs": seqs,
        "incident": incident_id,
    }
