"""The guard's key files: the audit log's Ed25519 signing key, its chain key and the HMAC secret of
``input_hmac``.

Both are created on first use. By default they live in ``<log dir>-keys/``, beside (never inside)
the log's directory, so that whoever can rewrite the log does not also find the key that signs it;
a configured path inside the log's directory is accepted with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invguard.guard.auditlog import ChainKey, chain_key_path, load_signing_key
from invguard.guard.auditlog.signing import read_secret

log = logging.getLogger("invguard.guard")


def key_paths(audit_path: str, signing_key: str | None, hash_key: str | None) -> tuple[Path, Path]:
    """The signing key and the HMAC secret: by default in ``<log dir>-keys/``, beside (never inside)
    the log directory, so that whoever can rewrite the log does not also find the key signing it."""
    p = Path(audit_path)
    keys = p.parent.with_name(p.parent.name + "-keys")
    return (
        Path(signing_key) if signing_key else keys / (p.name + ".ed25519.pem"),
        Path(hash_key) if hash_key else keys / (p.name + ".hmac-key"),
    )


@dataclass(frozen=True)
class GuardKeys:
    """What the audit log signs with, the HMAC secret, and the warnings about where they sit."""

    signing_key: Any
    chain_key: ChainKey
    hmac_key: bytes
    key_path: Path
    hmac_path: Path
    warnings: tuple[str, ...]


def open_keys(
    audit_path: str, signing_key: str | None, hash_key: str | None, chain_key: str | None = None
) -> GuardKeys:
    """Load (or create) the signing key, the chain key and the HMAC secret of an audit log config."""
    key_path, hkey_path = key_paths(audit_path, signing_key, hash_key)
    ckey_path = chain_key_path(audit_path, chain_key)
    warnings: list[str] = []
    log_dir = Path(audit_path).resolve().parent
    for what, kp in (
        ("audit.signing_key", key_path),
        ("audit.hash_key", hkey_path),
        ("audit.chain_key", ckey_path),
    ):
        if kp.resolve().parent == log_dir:
            msg = (
                f"{what} {kp} is inside the audit log's directory: whoever can rewrite the log can "
                "also re-sign it; keep the key elsewhere"
            )
            warnings.append(msg)
            log.warning(msg)
    if key_path.parent.name.endswith("-keys"):
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    hkey = read_secret(hkey_path, "audit.hash_key")
    ckey = ChainKey(read_secret(ckey_path, "audit.chain_key"))
    return GuardKeys(load_signing_key(key_path), ckey, hkey, key_path, hkey_path, tuple(warnings))


def detect_salt_path(audit_path: str, salt_key: str | None) -> Path:
    """The secret salting detection's fingerprints (default beside the other keys)."""
    if salt_key:
        return Path(salt_key)
    p = Path(audit_path)
    return p.parent.with_name(p.parent.name + "-keys") / (p.name + ".detect-salt")
