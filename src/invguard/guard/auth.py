"""API keys: only SHA-256 hashes are stored (config file or a SQLite key store), compared in constant time.

A key is ``igk_<43 url-safe base64 characters>`` (256 random bits from :mod:`secrets`); it is shown
once when created. A presented key is hashed, the hash is looked up, and the stored hash is then
compared with :func:`hmac.compare_digest`, so neither the comparison nor the lookup depends on the
secret in a way an attacker can exploit (the index is the SHA-256 of the key, not the key).

A key may name an **owner** (``invguard keys add --owner acme``): a role's budget can then be
shared by every key of one owner (``budget.scope: owner``), so one actor does not get N budgets
from N keys.

The guard re-reads the SQLite store when it changed, checked at most once per ``check_every``
seconds of the injected clock. Change is detected by a **revision counter** in the store, bumped
by triggers on every insert, update and delete (whoever writes, in any journal mode: a WAL commit
leaves the main file's mtime alone), together with the file's identity (a replaced file). The
check and the read run in a worker thread; every request that arrives while one is in flight waits
for it, and the new key set is built whole and then swapped in, so no request is ever answered
with the list from before a change the guard has started to read. While a changed store cannot be
read the guard refuses keys from it (503, fail closed). Every connection is closed after use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from invguard.core.errors import ConfigError

KEY_PREFIX = "igk_"


def hash_key(key: str) -> str:
    """Hex SHA-256 of an API key (what is stored)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """An authenticated client: its key id, its role and the key's owner (if any)."""

    client_id: str
    role: str
    owner: str | None = None


@dataclass(frozen=True)
class KeyRecord:
    id: str
    sha256: str
    role: str
    created: str = ""
    revoked: bool = False
    owner: str | None = None


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, "
    "role TEXT NOT NULL, created TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, owner TEXT)",
    "CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO revision (id, n) VALUES (0, 0)",
    # the roles of the guard that uses the store, recorded at its start: `keys add` refuses others
    "CREATE TABLE IF NOT EXISTS roles (name TEXT PRIMARY KEY)",
    *(
        f"CREATE TRIGGER IF NOT EXISTS keys_{op.lower()} AFTER {op} ON keys "
        "BEGIN UPDATE revision SET n = n + 1 WHERE id = 0; END"
        for op in ("INSERT", "UPDATE", "DELETE")
    ),
)
_NAME = "letters, digits, '_', '-', '.' or '@' (no ':')"


def _valid_name(v: str) -> bool:
    return bool(v) and len(v) <= 64 and all(c.isalnum() or c in "_-.@" for c in v)


Version = tuple[int, int, int]  # (device, inode, revision) of a key store
Records = list[KeyRecord]


class KeyStore:
    """SQLite store of key hashes, managed by ``invguard keys add|list|revoke``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection with the schema in place, committed on success and always closed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=2.0)
        try:
            with con:
                columns = {r[1] for r in con.execute("PRAGMA table_info(keys)")}
                if columns and "owner" not in columns:
                    con.execute("ALTER TABLE keys ADD COLUMN owner TEXT")  # a store from before owners
                for stmt in _SCHEMA:
                    con.execute(stmt)
            with con:
                yield con
        finally:
            con.close()

    def add(self, role: str, key_id: str | None = None, owner: str | None = None) -> tuple[str, KeyRecord]:
        """Create a key for ``role``; returns ``(key, record)``. The key itself is not stored."""
        if not role or not role.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"keys add: role must be a name like 'partner', got {role!r}")
        for what, v in (("--id", key_id), ("--owner", owner)):
            if v is not None and not _valid_name(v):
                raise ConfigError(f"keys add: {what} must be 1-64 {_NAME}, got {v!r}")
        key = new_key()
        rec = KeyRecord(
            id=key_id or "key-" + secrets.token_hex(4),
            sha256=hash_key(key),
            role=role,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            owner=owner,
        )
        with self._connect() as con:
            try:
                con.execute(
                    "INSERT INTO keys (id, sha256, role, created, revoked, owner) VALUES (?, ?, ?, ?, 0, ?)",
                    (rec.id, rec.sha256, rec.role, rec.created, rec.owner),
                )
            except sqlite3.IntegrityError:
                raise ConfigError(f"{self.path}: a key with id {rec.id!r} already exists") from None
        return key, rec

    def list(self) -> list[KeyRecord]:
        return self.read()[1]

    def record_roles(self, roles: Iterable[str]) -> None:
        """Record the roles of the guard using this store (``keys add`` refuses any other)."""
        with self._connect() as con:
            con.execute("DELETE FROM roles")
            con.executemany("INSERT INTO roles (name) VALUES (?)", [(r,) for r in sorted(set(roles))])

    def recorded_roles(self) -> tuple[str, ...] | None:
        """The roles the guard recorded when it last started, or None if no guard has."""
        if not self.path.exists():
            return None
        with self._connect() as con:
            names = tuple(r[0] for r in con.execute("SELECT name FROM roles ORDER BY name"))
        return names or None

    def read(self) -> tuple[Version | None, Records]:
        """``(version, records)`` read in one transaction; the version is :meth:`version`'s."""
        if not self.path.exists():
            return None, []
        with self._connect() as con:
            con.execute("BEGIN")
            (n,) = con.execute("SELECT n FROM revision WHERE id = 0").fetchone()
            rows = con.execute(
                "SELECT id, sha256, role, created, revoked, owner FROM keys ORDER BY created, id"
            ).fetchall()
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino, int(n)), [
            KeyRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows
        ]

    def version(self) -> Version | None:
        """The store's identity and revision: changes with every write, in any journal mode."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        con = sqlite3.connect(self.path, timeout=2.0)
        try:
            row = con.execute("SELECT n FROM revision WHERE id = 0").fetchone()
        finally:
            con.close()
        return st.st_dev, st.st_ino, int(row[0]) if row else -1

    def revoke(self, key_id: str) -> None:
        with self._connect() as con:
            cur = con.execute("UPDATE keys SET revoked = 1 WHERE id = ?", (key_id,))
            if cur.rowcount == 0:
                raise ConfigError(f"{self.path}: no key with id {key_id!r}")


class Authenticator:
    """Resolve the API key of a request (``X-API-Key`` or ``Authorization: Bearer``) to a principal."""

    def __init__(
        self,
        entries: Iterable[KeyRecord],
        roles: Iterable[str],
        *,
        header: str = "X-API-Key",
        store: KeyStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_every: float = 1.0,
    ) -> None:
        self.header_name = header
        self.header = header.lower().encode("latin-1")
        self.roles = frozenset(roles)
        self._static = [e for e in entries if not e.revoked]
        self.store = store
        self.clock = clock
        self.check_every = check_every
        self._index: dict[str, KeyRecord] = {}
        self._version: tuple[int, int, int] | None = None
        self._checked: float | None = None
        self.failure: str | None = None  # the store changed but could not be read: fail closed
        self._reloading: asyncio.Future[None] | None = None
        self._rebuild(self._read_store())

    def _read_store(self) -> tuple[tuple[int, int, int] | None, list[KeyRecord]]:
        if self.store is None:
            return None, []
        version, records = self.store.read()
        return version, [r for r in records if not r.revoked]

    def _rebuild(self, read: tuple[tuple[int, int, int] | None, list[KeyRecord]]) -> None:
        version, stored = read
        self._index = {r.sha256: r for r in [*self._static, *stored]}  # built whole, then swapped in
        self._version = version  # only after a successful read
        self.failure = None

    def _reload_if_changed(self) -> None:
        """In a worker thread: read the store if its version moved (or the last read failed)."""
        assert self.store is not None
        if self.failure is None and self.store.version() == self._version:
            return
        read = self._read_store()
        self._rebuild(read)

    async def refresh(self) -> str | None:
        """Re-read the store if it changed (checked at most once per ``check_every``, in a worker
        thread; a request arriving meanwhile waits for that check). Returns None, or why keys
        cannot be trusted right now (the caller answers 503)."""
        if self.store is None:
            return None
        if self._reloading is not None:
            await asyncio.shield(self._reloading)
            return self.failure
        now = self.clock()
        if self._checked is not None and now - self._checked < self.check_every:
            return self.failure
        self._checked = now
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reloading = fut
        try:
            await asyncio.to_thread(self._reload_if_changed)
        except Exception as e:  # locked, half-copied, unreadable: fail closed, retry at the next check
            self.failure = f"the key store cannot be read ({type(e).__name__}); try later"
        finally:
            self._reloading = None
            fut.set_result(None)
        return self.failure

    def reload(self) -> None:
        self._rebuild(self._read_store())

    @staticmethod
    def _presented(headers: list[tuple[bytes, bytes]], header: bytes) -> list[str]:
        found = []
        for name, value in headers:
            lname = name.lower()
            if lname == header:
                found.append(value.decode("latin-1").strip())
            elif lname == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    found.append(token.strip())
        return found

    def by_hash(self, digest: str) -> Principal | None:
        """The principal of a valid (not revoked) key given its SHA-256 hex digest (admin sessions)."""
        rec = self._index.get(digest)
        if rec is None or not hmac.compare_digest(rec.sha256, digest) or rec.role not in self.roles:
            return None
        return Principal(rec.id, rec.role, rec.owner)

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> tuple[Principal | None, str]:
        """``(principal, "")`` for a valid key, else ``(None, reason)``. Call ``await refresh()`` first."""
        keys = self._presented(headers, self.header)
        if not keys:
            return None, (
                f"missing API key (send it in the {self.header_name} header "
                "or as Authorization: Bearer <key>)"
            )
        if len(set(keys)) > 1:
            return None, (
                f"conflicting API keys: the {self.header_name} and Authorization: Bearer values differ; "
                "send one key"
            )
        key = keys[0]
        digest = hash_key(key)
        rec = self._index.get(digest)
        if rec is None or not hmac.compare_digest(rec.sha256, digest):
            return None, "invalid or revoked API key"
        if rec.role not in self.roles:
            return None, f"the key's role {rec.role!r} is not configured on this guard"
        return Principal(rec.id, rec.role, rec.owner), ""
