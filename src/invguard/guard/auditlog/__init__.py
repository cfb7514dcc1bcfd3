"""A tamper-evident, append-only JSONL audit log: keyed hash chain, group commit, signed RFC 6962
Merkle checkpoints, rotation that never overwrites, and witnesses outside the log's write domain.

Modules: :mod:`.format` (line format, keyed chain, files), :mod:`.merkle` (RFC 6962 tree hash),
:mod:`.signing` (Ed25519 checkpoint key, chain key), :mod:`.verify` (the verifier),
:mod:`.writer` (the guard's :class:`AuditLog`), :mod:`.witness` (file, Redis and HTTP witnesses),
:mod:`.workers` (a chain per worker and the signed manifest binding them, verified as a whole).

What an attacker who can write to the log's directory (but not to the key directory nor to a
witness) can and cannot do undetected is stated in the README ("Audit log: threat model").
"""

from invguard.guard.auditlog.format import CHAIN, GENESIS, ChainKey, canonical, head_path, segments
from invguard.guard.auditlog.merkle import MerkleAccumulator, leaf_hash, merkle_root, node_hash
from invguard.guard.auditlog.report import VerifyReport
from invguard.guard.auditlog.signing import (
    chain_key_path,
    load_chain_key,
    load_public_key_hex,
    load_signing_key,
    public_hex,
    read_secret,
)
from invguard.guard.auditlog.verify import read_checkpoint, read_head, scan, verify
from invguard.guard.auditlog.witness import (
    FileWitness,
    HttpWitness,
    RedisWitness,
    Witness,
    WitnessError,
    witness_app,
    witness_from_spec,
)
from invguard.guard.auditlog.writer import AuditLog, AuditLogError

__all__ = [
    "CHAIN",
    "GENESIS",
    "AuditLog",
    "AuditLogError",
    "ChainKey",
    "FileWitness",
    "HttpWitness",
    "MerkleAccumulator",
    "RedisWitness",
    "VerifyReport",
    "Witness",
    "WitnessError",
    "canonical",
    "chain_key_path",
    "head_path",
    "leaf_hash",
    "load_chain_key",
    "load_public_key_hex",
    "load_signing_key",
    "merkle_root",
    "node_hash",
    "public_hex",
    "read_checkpoint",
    "read_head",
    "read_secret",
    "scan",
    "segments",
    "verify",
    "witness_app",
    "witness_from_spec",
]
