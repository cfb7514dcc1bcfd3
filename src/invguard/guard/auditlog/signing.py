"""The audit log's keys: the Ed25519 checkpoint signing key (RFC 8032) and the chain key (HMAC).

Both belong outside the log's directory: whoever can rewrite the log must not also find the keys
that sign and chain it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError
from invguard.guard.auditlog.format import ChainKey, canonical


def load_signing_key(path: str | Path, *, create: bool = True) -> Any:
    """Load an Ed25519 private key (PKCS#8 PEM); create it (mode 0600, plus ``.pub``) if missing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    if not p.exists():
        if not create:
            raise ConfigError(f"{p}: signing key not found")
        p.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        p.with_name(p.name + ".pub").write_bytes(pub)
        return key
    try:
        loaded: Any = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{p}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{p}: expected an Ed25519 private key, got {type(loaded).__name__}")
    return loaded


def public_hex(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return str(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    )


def load_public_key_hex(path: str | Path) -> str:
    """Raw public key (hex) from a PEM public key file or a PEM private key file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: public key file not found")
    data = p.read_bytes()
    try:
        pub: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            priv = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{p}: not a PEM Ed25519 key ({e})") from None
        if not isinstance(priv, Ed25519PrivateKey):
            raise ConfigError(f"{p}: not an Ed25519 key") from None
        pub = priv.public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise ConfigError(f"{p}: expected an Ed25519 public key, got {type(pub).__name__}")
    return str(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())


def sign(key: Any, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with its ``sig`` over the canonical JSON of everything else."""
    return {**checkpoint, "sig": key.sign(canonical(checkpoint)).hex()}


def check_sig(cp: dict[str, Any], public_key: str | None = None) -> str | None:
    """None if ``cp`` carries a valid signature (by ``public_key`` when pinned), else why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if public_key is not None and cp.get("public_key") != public_key:
        return "signed by a different key than the pinned one"
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(cp["public_key"])))
        body = {k: v for k, v in cp.items() if k != "sig"}
        pub.verify(bytes.fromhex(str(cp["sig"])), canonical(body))
        return None
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return "signature is invalid"


def read_secret(path: str | Path, where: str, *, create: bool = True) -> bytes:
    """A 32-byte secret stored as hex (mode 0600, its directory 0700), created if missing."""
    p = Path(path)
    if not p.exists():
        if not create:
            raise ConfigError(f"{where}: {p} not found")
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # written whole under a private name, then linked into place: two processes starting at once
        # agree on one secret (the loser's link fails and it reads the winner's), and none reads a
        # file that is still empty
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
    try:
        value = bytes.fromhex(p.read_text().strip())
    except ValueError:
        value = b""
    if len(value) < 16:
        raise ConfigError(f"{where}: {p} does not hold a hex secret")
    return value


def load_chain_key(path: str | Path, *, create: bool = True) -> ChainKey:
    """The chain key (``audit.chain_key``): a hex secret file, created if missing."""
    return ChainKey(read_secret(path, "audit.chain_key", create=create))


def chain_key_path(audit_path: str | Path, configured: str | None) -> Path:
    """``audit.chain_key``, by default ``<log dir>-keys/<log name>.chain-key`` (beside the signing key)."""
    if configured:
        return Path(configured)
    p = Path(audit_path)
    return p.parent.with_name(p.parent.name + "-keys") / (p.name + ".chain-key")
