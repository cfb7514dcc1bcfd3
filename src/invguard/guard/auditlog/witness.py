"""Witnesses: copies of the log's signed heads kept outside the log's write domain.

A head written beside the log can be rewritten by whoever rewrites the log (roll the log back to an
older checkpoint and put that checkpoint in ``<log>.head``: everything still verifies). A witness
is a place that attacker cannot write: a file on another mount, a Redis key, an HTTP endpoint. The
guard publishes every signed head to each configured witness, and ``invguard log verify --witness``
refuses a log that holds fewer records than the newest witnessed head, or whose first records do not
hash to its signed Merkle root.

A witness **never goes backwards**: it refuses a head smaller than the one it holds, and a head of
the same size with another root (a fork). Every witness implements the same two calls:

- ``publish(head)`` stores a signed head, or raises :class:`WitnessError` if it is refused;
- ``read()`` returns the newest head held, or None.

Specs (``audit.witnesses`` and ``--witness``): ``file:/mnt/other/guard.head`` (or a plain path),
``redis://host:6379/0#invguard:witness:guard`` (the fragment names the key) and
``http(s)://host/heads/guard`` (``POST`` a head, ``GET`` the newest; :func:`witness_app` is such an
endpoint).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from invguard.core.errors import ConfigError
from invguard.guard.auditlog.format import canonical, write_atomic
from invguard.guard.auditlog.signing import check_sig
from invguard.wire.urls import redact_url


class WitnessError(Exception):
    """A witness refused a head or could not be reached."""


class Witness(Protocol):
    name: str

    def publish(self, head: dict[str, Any]) -> None: ...

    def read(self) -> dict[str, Any] | None: ...


def check_advance(current: dict[str, Any] | None, head: dict[str, Any], where: str) -> None:
    """Raise :class:`WitnessError` unless ``head`` may replace ``current`` (never backwards)."""
    if current is None:
        return
    cur, new = int(current.get("size", -1)), int(head.get("size", -1))
    if new < cur:
        raise WitnessError(
            f"{where} refused a head of {new} records: it holds a signed head of {cur} (never backwards)"
        )
    if new == cur and current.get("root") != head.get("root"):
        raise WitnessError(f"{where} refused a head of {new} records with another root than the one it holds")


def _parse(raw: bytes | str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise WitnessError(f"{where} holds something that is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "checkpoint":
        raise WitnessError(f"{where} holds something that is not a checkpoint")
    return doc


class FileWitness:
    """A file, written atomically (put it on another mount, writable by the guard only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"

    def read(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise WitnessError(f"{self.name} cannot be read ({e})") from None
        return _parse(raw, self.name)

    def publish(self, head: dict[str, Any]) -> None:
        check_advance(self.read(), head, self.name)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, canonical(head))
        except OSError as e:
            raise WitnessError(f"{self.name} cannot be written ({e})") from None


_REDIS_PUBLISH = """
local cur = redis.call('HGET', KEYS[1], 'size')
if cur then
  if tonumber(cur) > tonumber(ARGV[1]) then return {0, cur} end
  if tonumber(cur) == tonumber(ARGV[1]) and redis.call('HGET', KEYS[1], 'root') ~= ARGV[2] then
    return {-1, cur}
  end
end
redis.call('HSET', KEYS[1], 'size', ARGV[1], 'root', ARGV[2], 'head', ARGV[3])
return {1, ARGV[1]}
"""


class RedisWitness:
    """A Redis hash (``size``, ``root``, ``head``), advanced by a Lua script (atomic on the server)."""

    def __init__(self, url: str, key: str = "invguard:witness") -> None:
        self.url, self.key = url, key
        self.name = f"{redact_url(url)}#{key}"
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    def read(self) -> dict[str, Any] | None:
        import redis

        try:
            raw = self._redis().hget(self.key, "head")
        except redis.RedisError as e:
            raise WitnessError(f"{self.name} cannot be read ({type(e).__name__}: {e})") from None
        return None if raw is None else _parse(raw, self.name)

    def publish(self, head: dict[str, Any]) -> None:
        import redis

        try:
            ok, cur = self._redis().eval(
                _REDIS_PUBLISH, 1, self.key, int(head["size"]), str(head["root"]), canonical(head)
            )
        except redis.RedisError as e:
            raise WitnessError(f"{self.name} cannot be written ({type(e).__name__}: {e})") from None
        if int(ok) == 0:
            raise WitnessError(
                f"{self.name} refused a head of {head['size']} records: it holds a signed head of "
                f"{int(cur)} (never backwards)"
            )
        if int(ok) < 0:
            raise WitnessError(
                f"{self.name} refused a head of {head['size']} records with another root than the one "
                "it holds"
            )


class HttpWitness:
    """An HTTP endpoint: ``POST`` stores a head (409 if refused), ``GET`` returns the newest (404: none)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url, self.timeout = url, timeout
        self.name = redact_url(url)

    def _call(self, req: urllib.request.Request) -> bytes | None:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 404 and req.get_method() == "GET":
                return None
            try:
                detail = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError):
                detail = ""
            raise WitnessError(f"{self.name} answered {e.code} {detail}".rstrip()) from None
        except OSError as e:
            raise WitnessError(f"{self.name} cannot be reached ({type(e).__name__})") from None

    def read(self) -> dict[str, Any] | None:
        raw = self._call(urllib.request.Request(self.url, method="GET"))
        return None if raw is None else _parse(raw, self.name)

    def publish(self, head: dict[str, Any]) -> None:
        req = urllib.request.Request(
            self.url, data=canonical(head), method="POST", headers={"Content-Type": "application/json"}
        )
        self._call(req)


def witness_from_spec(spec: str) -> Witness:
    """A witness from its spec (see the module docstring); ConfigError names a bad one."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        url, _, key = spec.partition("#")
        return RedisWitness(url, key or "invguard:witness")
    if spec.startswith(("http://", "https://")):
        return HttpWitness(spec)
    if spec.startswith("file:"):
        spec = spec[len("file:") :]
    elif "://" in spec:
        raise ConfigError(
            f"witness {redact_url(spec)!r}: expected file:<path>, redis://host:port/db#key or an "
            "http(s):// URL"
        )
    if not spec:
        raise ConfigError("witness: empty file path")
    return FileWitness(spec)


def witness_app(store: str | Path, public_key: str) -> Any:
    """A minimal HTTP witness (ASGI): accepts heads signed by ``public_key`` that advance the one
    it holds (kept atomically in ``store``), answers ``GET`` with the newest."""
    keep = FileWitness(store)
    lock = asyncio.Lock()

    async def respond(send: Any, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def err(msg: str) -> bytes:
        return json.dumps({"error": msg}).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            head = await asyncio.to_thread(keep.read)
            await respond(send, 200 if head else 404, canonical(head) if head else err("no head yet"))
            return
        if scope["method"] != "POST":
            await respond(send, 405, err("GET or POST"))
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > 65536:
                await respond(send, 413, err("a head is smaller than 64 KiB"))
                return
            if not msg.get("more_body"):
                break
        try:
            head = _parse(body, "the request")
        except WitnessError as e:
            await respond(send, 400, err(str(e)))
            return
        bad = check_sig(head, public_key)
        if bad is not None:
            await respond(send, 400, err(f"the head's {bad}"))
            return
        async with lock:
            try:
                await asyncio.to_thread(keep.publish, head)
            except WitnessError as e:
                await respond(send, 409, err(str(e)))
                return
        await respond(send, 200, json.dumps({"size": head["size"]}).encode())

    return app
