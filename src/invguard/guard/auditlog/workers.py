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
each with the SHA-256 of its genesis line (its signed opening checkpoint, unique by its time) and
the revision of the manifest it last started under (and that manifest's SHA-256 once retired), and
the single-process chain ``<log>`` too when one existed before the workers; it carries a
``revision`` that every start raises and the SHA-256 of the manifest it replaced, and is signed
(Ed25519, RFC 8032) with the log's key over its canonical JSON. Once a manifest exists every start
is a start of the set (one worker too): nothing writes ``<log>`` any more. At every start the
supervisor checks the set on disk (:func:`set_problem`) and refuses a rollback, then signs the next
revision and writes each started chain's ``worker_start`` record (its index, the manifest's
SHA-256 and revision) before any worker runs; each worker writes one more when it starts, and every
record a worker writes carries ``worker``. With witnesses, the manifest's (revision, SHA-256) is
published to them as a signed head (:func:`manifest_head`), so their never-backwards rule refuses
an older manifest.

:func:`verify_workers` checks the set as a whole: the manifest's signature (by the pinned key);
every listed chain present (rotated and ``.gz`` archived files included), with the genesis the
manifest names (a chain deleted, or swapped with another's file, fails); no worker chain file on
disk (live, rotated or archived) that the manifest does not list, nor an unlisted ``<log>``; the
last ``worker_start`` of every chain naming its own index and exactly the manifest it last started
under (an older manifest put back to hide a chain deleted since fails: the surviving chains name a
newer revision); no witness holding a newer manifest; and each chain verifying on its own
(:func:`.verify.verify`: head, witnesses, chain key). Without a manifest, worker chain files or
records written by a worker make the log fail as one chain (:func:`single_chain_problem`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError
from invguard.guard.auditlog.format import canonical, segments, write_atomic
from invguard.guard.auditlog.report import VerifyReport
from invguard.guard.auditlog.signing import check_sig, public_hex, sign

MANIFEST_KIND = "worker_manifest"
log = logging.getLogger("invguard.guard.audit")


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


def chain_files(chain: Path) -> list[Path]:
    """Every file of a chain, oldest first: rotated ``<chain>.N`` (or archived ``<chain>.N.gz``),
    then the live file."""
    return segments(chain, archived=True)


def _open(f: Path) -> Any:
    return gzip.open(f, "rb") if f.name.endswith(".gz") else open(f, "rb")


def _genesis(chain: Path) -> str | None:
    """SHA-256 of the first line of the chain's first file (its signed genesis; an archived
    ``.gz`` file is read), None if absent."""
    files = chain_files(chain)
    if not files:
        return None
    try:
        with _open(files[0]) as f:
            first = f.readline().rstrip(b"\n")
    except (OSError, EOFError):
        return None
    return hashlib.sha256(first).hexdigest() if first else None


def worker_files(path: str | Path) -> dict[int, list[Path]]:
    """The worker chain files on disk beside the log ``path``: ``<stem>.w<i><suffix>``, rotated
    ``.N`` and archived ``.N.gz`` (or ``.gz``), by worker index."""
    p = Path(path)
    pat = re.compile(re.escape(p.stem) + r"\.w(\d+)" + re.escape(p.suffix) + r"(?:\.\d+)?(?:\.gz)?$")
    out: dict[int, list[Path]] = {}
    if p.parent.exists():
        for q in sorted(p.parent.iterdir()):
            m = pat.match(q.name)
            if m:
                out.setdefault(int(m.group(1)), []).append(q)
    return out


def records(files: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """The parsed records of ``files`` (lines that are not JSON objects are skipped: verify judges
    them)."""
    for f in files:
        try:
            fh = _open(f)
        except OSError:
            continue
        with fh:
            try:
                for line in fh:
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and doc.get("kind") == "record":
                        yield doc
            except (OSError, EOFError):
                continue


def _worker_records(files: Sequence[Path]) -> dict[str, Any] | None:
    """The first record that says it was written by a worker (``worker`` or ``worker_start``)."""
    for doc in records(files):
        if doc.get("event") == "worker_start" or "worker" in doc or "manifest" in doc:
            return doc
    return None


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
    if not (kind_ok and isinstance(doc.get("chains"), list) and isinstance(doc.get("revision"), int)):
        raise ConfigError(
            f"{mp}: not a worker manifest (expected kind {MANIFEST_KIND!r}, a revision and chains)"
        )
    problem = check_sig(doc, public_key)
    if problem is not None:
        raise ConfigError(f"{mp}: the worker manifest's {problem}: it was modified or replaced")
    manifest: dict[str, Any] = doc
    return manifest


def write_manifest(
    path: str | Path, workers: int, signing_key: Any, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Sign the manifest of a start of ``workers`` workers (revision one above ``previous``, the
    manifest in force, which lists the chains kept): workers ``0..workers-1`` start under it, every
    other chain ``previous`` lists stays listed as retired, with the manifest it last started under.
    The chains must have been opened (their genesis written). Returns the manifest."""
    p = Path(path)
    chains: dict[str, dict[str, Any]] = {}
    revision = 1
    if previous is not None:
        revision = int(previous["revision"]) + 1
        prev_digest = manifest_digest(previous)
        for c in previous["chains"]:
            c = dict(c)
            if c.get("worker") is not None and c.get("started") == previous["revision"]:
                c["started_digest"] = prev_digest  # active under the previous one: retired now
            chains[c["file"]] = c
    wanted: list[tuple[int | None, Path]] = [(i, worker_path(p, i)) for i in range(workers)]
    if p.name not in chains and segments(p, archived=True):
        wanted.insert(0, (None, p))  # the single-process chain written before the workers
    for i, chain in wanted:
        if chain.name in chains:
            entry = chains[chain.name]
        else:
            g = _genesis(chain)
            if g is None:
                raise ConfigError(f"{chain}: the chain has no genesis to list in the manifest")
            entry = chains[chain.name] = {"worker": i, "file": chain.name, "genesis": g}
        if i is not None:
            entry["started"], entry["started_digest"] = revision, None
        else:
            entry.setdefault("started", None)
            entry.setdefault("started_digest", None)
    order = sorted(chains.values(), key=lambda c: -1 if c["worker"] is None else int(c["worker"]))
    doc = sign(
        signing_key,
        {
            "kind": MANIFEST_KIND,
            "log": p.name,
            "revision": revision,
            "previous": None if previous is None else manifest_digest(previous),
            "workers": workers,
            "chains": order,
            "public_key": public_hex(signing_key),
        },
    )
    write_atomic(manifest_path(p), canonical(doc) + b"\n")
    return doc


def worker_start_record(worker: int, workers: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """The record that opens every start of a worker's chain (written by the supervisor when it
    seals the chains, and by the worker itself when it starts)."""
    return {
        "event": "worker_start",
        "decision": "worker_start",
        "worker": worker,
        "workers": workers,
        "manifest": manifest_digest(manifest),
        "revision": manifest["revision"],
    }


# ------------------------------------------------------------------ the manifest's witness
def manifest_witness(spec: str) -> str:
    """The witness spec of the manifest: ``{worker}`` becomes ``manifest``, else ``guard.head``
    becomes ``guard.manifest.head`` (``file:``) and ``#key`` becomes ``#key.manifest`` (Redis)."""
    if "{worker}" in spec:
        return spec.replace("{worker}", "manifest")
    if spec.startswith(("redis://", "rediss://", "unix://")):
        url, _, key = spec.partition("#")
        return f"{url}#{key or 'invguard:witness'}.manifest"
    if spec.startswith(("http://", "https://")):
        return worker_witness(spec, 0)  # raises the {worker} ConfigError
    prefix = "file:" if spec.startswith("file:") else ""
    q = Path(spec.removeprefix("file:"))
    return prefix + str(q.with_name(f"{q.stem}.manifest{q.suffix}"))


def manifest_head(manifest: dict[str, Any], signing_key: Any) -> dict[str, Any]:
    """What a witness holds of the manifest: a signed head whose ``size`` is the revision and
    whose ``root`` the manifest's digest (so every witness's never-backwards rule applies)."""
    return sign(
        signing_key,
        {
            "kind": "checkpoint",
            "chain": MANIFEST_KIND,
            "size": int(manifest["revision"]),
            "root": manifest_digest(manifest),
            "public_key": public_hex(signing_key),
        },
    )


def _witness_problem(
    manifest: dict[str, Any], specs: Sequence[str], public_key: str | None, strict: bool
) -> str | None:
    from invguard.guard.auditlog.witness import WitnessError, witness_from_spec

    rev, digest = int(manifest["revision"]), manifest_digest(manifest)
    for spec in specs:
        w = witness_from_spec(manifest_witness(spec))
        try:
            doc = w.read()
        except WitnessError as e:
            if not strict:  # at start, as a chain's recovery: an unreachable witness is a warning
                log.warning("worker manifest: cannot compare with its witness (%s)", e)
                continue
            raise ConfigError(f"witness: {e}") from None
        if doc is None or check_sig(doc, public_key) is not None or doc.get("chain") != MANIFEST_KIND:
            continue
        if int(doc.get("size", -1)) > rev:
            return (
                f"the witness {w.name} holds worker manifest revision {doc.get('size')}, newer than "
                f"revision {rev} on disk: the manifest was rolled back"
            )
        if int(doc.get("size", -1)) == rev and doc.get("root") != digest:
            return (
                f"the witness {w.name} holds another worker manifest of revision {rev} than the one on "
                "disk: the manifest was replaced"
            )
    return None


def publish_manifest(manifest: dict[str, Any], specs: Sequence[str], signing_key: Any) -> list[str]:
    """Hand the manifest's (revision, digest) to every witness; the refusals, if any."""
    from invguard.guard.auditlog.witness import WitnessError, witness_from_spec

    head = manifest_head(manifest, signing_key)
    problems = []
    for spec in specs:
        w = witness_from_spec(manifest_witness(spec))
        try:
            w.publish(head)
        except WitnessError as e:
            problems.append(str(e))
    return problems


# ------------------------------------------------------------------ checks of the set
def _names(indices: Sequence[int]) -> str:
    return ", ".join(f"w{i}" for i in sorted(indices))


def single_chain_problem(path: str | Path, *, scan_records: bool = True) -> str | None:
    """Why the log ``path`` cannot be read (or written) as one process's chain: a manifest beside
    it, worker chain files with none, or (``scan_records``) records written by a worker. None if it
    can. One worker's
    chain (``guard.w0.jsonl``) may be read alone while its manifest is in place."""
    p = Path(path)
    m = re.fullmatch(r"(.+)\.w(\d+)", p.stem)
    if m is not None:
        base = p.with_name(m.group(1) + p.suffix)
        if manifest_path(base).exists():
            return None
        return (
            f"the worker manifest {manifest_path(base)} is missing; {p.name} is the chain of worker "
            f"w{m.group(2)} of {base.name}: the manifest was deleted"
        )
    mp = manifest_path(p)
    on_disk = worker_files(p)
    if mp.exists():
        return f"{p} is written by several workers (manifest {mp})"
    if on_disk:
        return (
            f"the worker manifest {mp} is missing; worker chains {_names(list(on_disk))} exist beside "
            f"{p.name}: the manifest was deleted (verify or serve the set with it in place)"
        )
    doc = _worker_records(segments(p, archived=True)) if scan_records else None
    if doc is not None:
        return (
            f"the worker manifest {mp} is missing, and {p} holds records written by a worker (record "
            f"seq {doc.get('seq')} names worker {doc.get('worker')}): the chain was written under a "
            "manifest (its files were renamed, or the manifest deleted)"
        )
    return None


def set_problem(
    path: str | Path,
    manifest: dict[str, Any],
    *,
    public_key: str | None,
    witnesses: Sequence[str] = (),
    at_start: bool = False,
    starting: int = 0,
) -> str | None:
    """Why the chains on disk are not the set ``manifest`` binds, or None: every worker chain file
    listed; every listed chain present with its genesis; the single-process chain listed if any;
    each worker chain's last ``worker_start`` naming exactly the manifest it last started under
    (this one for the active chains; ``at_start`` also accepts the one this manifest replaced, a
    start interrupted before its chains were sealed, and an unlisted chain of one of the ``starting``
    workers that holds no record, opened by a start interrupted before it signed the manifest); no
    witness holding a newer manifest."""
    p = Path(path)
    mp = manifest_path(p)
    digest, revision = manifest_digest(manifest), int(manifest["revision"])
    listed = {str(c["file"]): c for c in manifest["chains"]}
    for i, files in sorted(worker_files(p).items()):
        if worker_path(p, i).name not in listed:
            if at_start and i < starting and next(records(files), None) is None:
                continue  # nothing in it to hide: the manifest about to be signed lists it
            return (
                f"{files[0]}: a worker chain (w{i}) that the signed manifest {mp} does not list: it was "
                "added outside the guard, or the manifest was replaced by an older one"
            )
    if p.name not in listed and segments(p, archived=True):
        return (
            f"{p}: a single-process chain that the signed manifest {mp} does not list: it was written "
            "outside the guard's workers"
        )
    for c in manifest["chains"]:
        chain, worker = p.parent / str(c["file"]), c["worker"]
        who = "the single-process chain" if worker is None else f"worker chain w{worker}"
        if not chain_files(chain):
            return f"{chain}: {who} listed in the signed manifest is missing: it was deleted or moved"
        if _genesis(chain) != c["genesis"]:
            return (
                f"{chain}: {who} does not start with the genesis the signed manifest lists for it: the "
                "file was swapped with another chain's or replaced"
            )
        if worker is None:
            continue
        start = _last_worker_start(chain_files(chain))
        if start is None:
            return f"{chain}: {who} holds no worker_start record: it was not started under a manifest"
        if start.get("worker") != worker:
            return (
                f"{chain}: {who} holds the records of worker {start.get('worker')} (its last "
                f"worker_start, seq {start.get('seq')}): the file was swapped with another chain's"
            )
        if c.get("started") == revision:
            want_rev, want_digest = revision, digest
        else:
            want_rev, want_digest = c.get("started"), c.get("started_digest")
        got_rev = start.get("revision")
        if start.get("manifest") == want_digest and got_rev == want_rev:
            continue
        if at_start and want_rev == revision and start.get("manifest") == manifest.get("previous"):
            continue  # the last start wrote this manifest, then stopped before sealing this chain
        if isinstance(got_rev, int) and got_rev > revision:
            return (
                f"{chain}: {who} last started (record seq {start.get('seq')}) under worker manifest "
                f"revision {got_rev}, and {mp} is revision {revision}: the manifest was rolled back to "
                "an older one (a chain added since may have been deleted)"
            )
        return (
            f"{chain}: {who} last started (record seq {start.get('seq')}) under another manifest "
            f"(revision {got_rev}) than {mp} says (revision {want_rev}): the manifest was replaced by "
            "an older one (a chain added since may have been deleted)"
        )
    return _witness_problem(manifest, witnesses, public_key, strict=not at_start)


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
    """The chain's last ``worker_start`` record (parsed, not searched for)."""
    last = None
    for doc in records(files):
        if doc.get("event") == "worker_start":
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
    problem = set_problem(p, manifest, public_key=public_key, witnesses=witnesses)
    if problem is not None:
        return rep.fail(problem)
    for c in manifest["chains"]:
        chain, worker = p.parent / str(c["file"]), c["worker"]
        who = "the single-process chain" if worker is None else f"worker chain w{worker}"
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
    return rep
