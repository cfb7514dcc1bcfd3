"""Several writers, one log: a chain per worker and a signed manifest that binds the set.

A guard served by ``invguard serve --workers N`` gives each worker process its own chain, so the
group commit, the keyed chain, checkpoints, rotation, the head, the witnesses and the start-up
recovery (:mod:`.writer`, :mod:`.recovery`) stay exactly those of one process: worker ``i`` of the
log ``audit/guard.jsonl`` writes ``audit/guard.w<i>.jsonl`` (rotated ``guard.w<i>.jsonl.1``, ...,
its head ``guard.w<i>.jsonl.head``), signed with the guard's one signing key, chained with its one
chain key. A witness spec is made per worker by substituting ``{worker}`` (any spec), else
``guard.head`` becomes ``guard.w<i>.head`` (``file:``) and ``#key`` becomes ``#key.w<i>`` (Redis);
an HTTP witness holds one chain, so it needs ``{worker}``.

The **manifest** ``<log stem>.workers.json`` lists every chain the guard ever opened for this log
(a chain is never dropped from it: fewer workers later leave the others retired, still verified),
each with the SHA-256 of its genesis line (its signed opening checkpoint, unique by its time), and
the single-process chain ``<log>`` too when one existed; it is signed (Ed25519, RFC 8032) with the
log's key over its canonical JSON. Each worker's first record at every start is a
``worker_start`` record naming its index and the SHA-256 of the manifest in force, and every record
a worker writes carries ``worker``.

:func:`verify_workers` checks the set as a whole: the manifest's signature (by the pinned key);
every listed chain present, with the genesis the manifest names (a chain deleted, or swapped with
another's file, fails); no worker chain on disk that the manifest does not list; each chain
verifying on its own (:func:`.verify.verify`: head, witnesses, chain key); and the last
``worker_start`` of every chain naming this manifest and its own index (an older manifest put back
to hide a chain deleted since fails: the surviving chains name the newer one).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError
from invguard.guard.auditlog.format import canonical, segments, write_atomic
from invguard.guard.auditlog.report import VerifyReport
from invguard.guard.auditlog.signing import check_sig, public_hex, sign

MANIFEST_KIND = "worker_manifest"


def worker_path(path: str | Path, worker: int) -> Path:
    """The chain of worker ``worker``: ``guard.jsonl`` -> ``guard.w0.jsonl``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.w{worker}{p.suffix}")


def manifest_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(f"{p.stem}.workers.json")


def worker_witness(spec: str, worker: int) -> str:
    """The witness spec of one worker's chain (see the module docstring)."""
    if "{worker}" in spec:
        return spec.replace("{worker}", str(worker))
    if spec.startswith(("redis://", "rediss://", "unix://")):
        url, _, key = spec.partition("#")
        return f"{url}#{key or 'invguard:witness'}.w{worker}"
    if spec.startswith(("http://", "https://")):
        raise ConfigError(
            f"audit.witnesses: the HTTP witness {spec.split('?')[0]!r} holds one chain, and each worker "
            "writes its own: put {worker} in its URL (e.g. https://witness.example/heads/guard-{worker})"
        )
    prefix = "file:" if spec.startswith("file:") else ""
    return prefix + str(worker_path(spec.removeprefix("file:"), worker))


def _genesis(chain: Path) -> str | None:
    """SHA-256 of the first line of the chain's first file (its signed genesis), None if absent."""
    files = segments(chain)
    if not files:
        return None
    with open(files[0], "rb") as f:
        first = f.readline().rstrip(b"\n")
    return hashlib.sha256(first).hexdigest() if first else None


def manifest_digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(doc)).hexdigest()


def read_manifest(path: str | Path, public_key: str | None) -> dict[str, Any]:
    """The signed manifest of the log ``path``; ConfigError if it is missing, malformed or not signed
    by ``public_key`` (any valid signature when None)."""
    mp = manifest_path(path)
    try:
        doc = json.loads(mp.read_bytes())
    except OSError as e:
        raise ConfigError(f"{mp}: cannot read the worker manifest ({e.strerror})") from None
    except ValueError:
        raise ConfigError(f"{mp}: the worker manifest is not JSON: it was modified") from None
    kind_ok = isinstance(doc, dict) and doc.get("kind") == MANIFEST_KIND
    if not (kind_ok and isinstance(doc.get("chains"), list)):
        raise ConfigError(f"{mp}: not a worker manifest (expected kind {MANIFEST_KIND!r} and chains)")
    problem = check_sig(doc, public_key)
    if problem is not None:
        raise ConfigError(f"{mp}: the worker manifest's {problem}: it was modified or replaced")
    manifest: dict[str, Any] = doc
    return manifest


def write_manifest(path: str | Path, workers: int, signing_key: Any) -> dict[str, Any]:
    """List (and sign) the chains of ``workers`` workers, keeping every chain an earlier manifest
    listed; the chains must have been opened (their genesis written). Returns the manifest."""
    p = Path(path)
    chains: dict[str, dict[str, Any]] = {}
    if manifest_path(p).exists():
        for c in read_manifest(p, public_hex(signing_key))["chains"]:
            chains[c["file"]] = c
    wanted: list[tuple[int | None, Path]] = [(i, worker_path(p, i)) for i in range(workers)]
    if p.name not in chains and segments(p):
        wanted.insert(0, (None, p))  # the single-process chain written before the workers
    for i, chain in wanted:
        if chain.name in chains:
            continue
        g = _genesis(chain)
        if g is None:
            raise ConfigError(f"{chain}: the chain has no genesis to list in the manifest")
        chains[chain.name] = {"worker": i, "file": chain.name, "genesis": g}
    order = sorted(chains.values(), key=lambda c: -1 if c["worker"] is None else int(c["worker"]))
    doc = sign(
        signing_key,
        {"kind": MANIFEST_KIND, "log": p.name, "chains": order, "public_key": public_hex(signing_key)},
    )
    mp = manifest_path(p)
    if not mp.exists() or json.loads(mp.read_bytes()) != doc:
        write_atomic(mp, canonical(doc) + b"\n")
    return doc


def worker_start_record(worker: int, workers: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """The first record a worker writes at each start."""
    return {
        "event": "worker_start",
        "decision": "worker_start",
        "worker": worker,
        "workers": workers,
        "manifest": manifest_digest(manifest),
    }


_WORKER_FILE = re.compile(r"\.w(\d+)$")


@dataclass
class WorkersReport:
    """The verdict on every chain of a log served by several workers."""

    ok: bool = True
    problem: str = ""
    manifest: str = ""
    chains: list[tuple[str, VerifyReport]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> WorkersReport:
        self.ok, self.problem = False, msg
        return self

    @property
    def records(self) -> int:
        return sum(r.records for _, r in self.chains)

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED: {self.problem}"
        lines = [
            f"OK: {len(self.chains)} chain(s) listed in the signed manifest {self.manifest} verified "
            f"({self.records} records in all)"
        ]
        lines += [f"  {name}: {rep.summary()}" for name, rep in self.chains]
        return "\n".join(lines)


def _last_worker_start(files: Sequence[Path]) -> dict[str, Any] | None:
    last = None
    for f in files:
        with open(f, "rb") as fh:
            for line in fh:
                if b'"event":"worker_start"' in line:
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        continue  # a torn last line: verify has judged it
                    if isinstance(doc, dict) and doc.get("kind") == "record":
                        last = doc
    return last


def verify_workers(
    path: str | Path,
    *,
    public_key: str | None,
    chain_key: Any = None,
    witnesses: Sequence[str] = (),
    trust_embedded_key: bool = False,
    allow_missing_head: bool = False,
) -> WorkersReport:
    """Verify the manifest of the log ``path`` and every chain it lists (see the module docstring).
    ``witnesses`` are witness specs of the log (made per worker as the guard makes them)."""
    from invguard.guard.auditlog.verify import verify
    from invguard.guard.auditlog.witness import witness_from_spec

    p = Path(path)
    rep = WorkersReport(manifest=str(manifest_path(p)))
    if public_key is None and not trust_embedded_key:
        raise ConfigError(
            f"{p}: no public key pinned: the manifest and checkpoints would be checked against the key "
            "written in them, which a forger replaces; pass --public-key <the guard's signing key .pub>, "
            "or --trust-embedded-key to accept that"
        )
    try:
        manifest = read_manifest(p, public_key)
    except ConfigError as e:
        return rep.fail(str(e))
    digest = manifest_digest(manifest)
    listed = {c["file"] for c in manifest["chains"]}
    stem, suffix = p.stem, p.suffix
    for q in sorted(p.parent.iterdir()):
        if q.name.startswith(stem + ".w") and q.name.endswith(suffix) and q.name not in listed:
            m = _WORKER_FILE.match(q.name[len(stem) : len(q.name) - len(suffix)])
            if m is not None:
                return rep.fail(
                    f"{q}: a worker chain that the signed manifest {rep.manifest} does not list: it was "
                    "added outside the guard"
                )
    chains = list(manifest["chains"])
    if p.name not in listed and segments(p):  # a single-process chain begun after the workers
        chains.insert(0, {"worker": None, "file": p.name, "genesis": None})
    for c in chains:
        chain, worker = p.parent / str(c["file"]), c["worker"]
        who = "the single-process chain" if worker is None else f"worker chain w{worker}"
        files = segments(chain)
        if not files:
            return rep.fail(
                f"{chain}: {who} listed in the signed manifest is missing: it was deleted or moved"
            )
        if c["genesis"] is not None and _genesis(chain) != c["genesis"]:
            return rep.fail(
                f"{chain}: {who} does not start with the genesis the signed manifest lists for it: the "
                "file was swapped with another chain's or replaced"
            )
        specs = witnesses if worker is None else [worker_witness(w, int(worker)) for w in witnesses]
        one = verify(
            chain,
            public_key=public_key,
            chain_key=chain_key,
            witnesses=[witness_from_spec(w) for w in specs],
            trust_embedded_key=trust_embedded_key,
            allow_missing_head=allow_missing_head,
        )
        rep.chains.append((chain.name, one))
        rep.warnings += [f"{chain.name}: {w}" for w in one.warnings]
        if not one.ok:
            return rep.fail(f"{who}: {one.summary()}")
        if worker is not None:
            start = _last_worker_start(files)
            if start is not None and start.get("worker") != worker:
                return rep.fail(
                    f"{chain}: {who} holds the records of worker {start.get('worker')} (its last "
                    f"worker_start, seq {start.get('seq')}): the file was swapped with another chain's"
                )
            if start is not None and start.get("manifest") != digest:
                return rep.fail(
                    f"{chain}: {who} last started (record seq {start.get('seq')}) under another manifest "
                    f"than {rep.manifest}: the manifest was replaced by an older one (a chain added "
                    "since may have been deleted)"
                )
    return rep
