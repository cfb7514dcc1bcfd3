"""API keys: only SHA-256 hashes are stored (config file or a SQLite key store), compared in constant time.

A key is ``igk_<43 url-safe base64 characters>`` (256 random bits from :mod:`secrets`); it is shown
once when created. A presented key is hashed, the hash is looked up, and the stored hash is then
compared with :func:`hmac.compare_digest`, so neither the comparison nor the lookup depends on the
secret in a way an attacker can exploit (the index is the SHA-256 of the key, not the key).

The guard re-reads the SQLite store when its modification time changes (checked at most once per
second), so ``invguard keys revoke`` takes effect on a running guard without a restart. The read
runs in a worker thread (never blocking the event loop); the modification time is marked seen only
after a successful read, and while a changed store cannot be read the guard refuses keys from it
(503, fail closed) rather than keep serving a key that may have been revoked.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable
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
    """An authenticated client: its key id and its role."""

    client_id: str
    role: str


@dataclass(frozen=True)
class KeyRecord:
    id: str
    sha256: str
    role: str
    created: str = ""
    revoked: bool = False


class KeyStore:
    """SQLite store of key hashes, managed by ``invguard keys add|list|revoke``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=2.0)
        con.execute(
            "CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, "
            "role TEXT NOT NULL, created TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)"
        )
        return con

    def add(self, role: str, key_id: str | None = None) -> tuple[str, KeyRecord]:
        """Create a key for ``role``; returns ``(key, record)``. The key itself is not stored."""
        if not role or not role.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"keys add: role must be a name like 'partner', got {role!r}")
        key = new_key()
        rec = KeyRecord(
            id=key_id or "key-" + secrets.token_hex(4),
            sha256=hash_key(key),
            role=role,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._connect() as con:
            try:
                con.execute(
                    "INSERT INTO keys (id, sha256, role, created, revoked) VALUES (?, ?, ?, ?, 0)",
                    (rec.id, rec.sha256, rec.role, rec.created),
                )
            except sqlite3.IntegrityError:
                raise ConfigError(f"{self.path}: a key with id {rec.id!r} already exists") from None
        return key, rec

    def list(self) -> list[KeyRecord]:
        if not self.path.exists():
            return []
        with self._connect() as con:
            rows = con.execute(
                "SELECT id, sha256, role, created, revoked FROM keys ORDER BY created, id"
            ).fetchall()
        return [KeyRecord(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

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
    ) -> None:
        self.header_name = header
        self.header = header.lower().encode("latin-1")
        self.roles = frozenset(roles)
        self._static = [e for e in entries if not e.revoked]
        self.store = store
        self._index: dict[str, KeyRecord] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self.failure: str | None = None  # the store changed but could not be read: fail closed
        self._reloading: asyncio.Future[None] | None = None
        self._rebuild(self._read_store())

    def _mtime_now(self) -> float | None:
        assert self.store is not None
        try:
            return os.path.getmtime(self.store.path)
        except OSError:
            return None

    def _read_store(self) -> tuple[float | None, list[KeyRecord]]:
        """Read the store; the mtime is taken before the read, so a change during it is seen next time."""
        if self.store is None:
            return None, []
        mtime = self._mtime_now()
        return mtime, [r for r in self.store.list() if not r.revoked]

    def _rebuild(self, read: tuple[float | None, list[KeyRecord]]) -> None:
        mtime, stored = read
        self._index = {r.sha256: r for r in [*self._static, *stored]}
        self._mtime = mtime  # only after a successful read
        self.failure = None

    async def refresh(self) -> str | None:
        """Re-read the store if it changed (checked at most once a second, read in a worker thread).
        Returns None, or why keys cannot be trusted right now (the caller answers 503)."""
        if self.store is None:
            return None
        now = time.monotonic()
        if now - self._checked < 1.0:
            return self.failure
        if self._reloading is not None:
            await asyncio.shield(self._reloading)
            return self.failure
        self._checked = now
        if self._mtime_now() == self._mtime and self.failure is None:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reloading = fut
        try:
            read = await asyncio.to_thread(self._read_store)
            self._rebuild(read)
        except Exception as e:  # locked, half-copied, unreadable: fail closed, retry next second
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
        return Principal(rec.id, rec.role), ""
