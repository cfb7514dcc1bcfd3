"""Files written whole or not at all, and the one content-hash cache of trained artifacts.

- :func:`atomic_write` / :func:`atomic_path`: write through a unique temp file in the destination's
  folder and rename it into place, so an interrupt (or a parallel worker writing the same file)
  never leaves half a file and two writers never share a temp name.
- :func:`cached`: load an artifact from its cache file, or make it, save it atomically and return
  it. The key hashes the caller's description of what the artifact depends on *and* the code that
  produces it (the package version plus the source of the named modules), so weights trained by
  older code are never reused. Reference models, the inversion evaluator, the role-swap control
  and the inversion generator are all cached through it.

No torch import here: the callers pass their own ``load`` and ``save``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: the modules whose source every trained artifact depends on
TRAINING_CODE = ("invguard.models.nets", "invguard.models.train")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A unique temp path beside ``path``; renamed onto ``path`` when the block succeeds, removed if
    it raises."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temp file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@cache
def code_version(modules: tuple[str, ...]) -> str:
    """A hash of the package version and the source files of ``modules`` (importable names)."""
    from invguard import __version__

    h = hashlib.sha256(__version__.encode())
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = None if spec is None else spec.origin
        h.update(name.encode())
        if origin and os.path.exists(origin):
            h.update(Path(origin).read_bytes())
    return h.hexdigest()[:16]


def content_key(parts: Mapping[str, Any], *, code: Sequence[str] = TRAINING_CODE) -> str:
    """The cache key of an artifact described by ``parts`` (JSON-able) and produced by ``code``."""
    blob = json.dumps(
        {"parts": parts, "code": code_version(tuple(code))}, sort_keys=True, default=str
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def cached(
    cache_dir: str | Path | None,
    name: str,
    parts: Mapping[str, Any],
    *,
    make: Callable[[], T],
    load: Callable[[Path], T],
    save: Callable[[T, Path], object],
    code: Sequence[str] = TRAINING_CODE,
    suffix: str = ".pt",
) -> T:
    """``load`` the artifact cached under ``cache_dir`` for ``parts``, or ``make`` it and ``save`` it
    there atomically. ``cache_dir=None`` disables caching (``make`` every time)."""
    if cache_dir is None:
        return make()
    path = Path(cache_dir) / f"{name}-{content_key(parts, code=code)}{suffix}"
    if path.is_file():
        return load(path)
    obj = make()
    with atomic_path(path) as tmp:
        save(obj, tmp)
    return obj


class SqliteFile:
    """A SQLite file several processes share (the guard's workers and the CLI): WAL journal, a
    30 s busy timeout, and :meth:`connect` ``(write=True)`` for one ``BEGIN IMMEDIATE``
    transaction (committed on success, rolled back on any error), so concurrent writers agree.
    ``schema`` runs at open; a file that is not a SQLite database is a ``ConfigError`` naming
    ``what`` it should have been."""

    def __init__(self, path: str | Path, schema: str, *, what: str) -> None:
        import sqlite3

        from invguard.core.errors import ConfigError

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(schema)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: not {what} ({e})") from None

    @contextlib.contextmanager
    def connect(self, write: bool = False) -> Iterator[Any]:
        import sqlite3

        con = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA synchronous=NORMAL")
            if write:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            else:
                yield con
        finally:
            con.close()
