"""The guard's configuration (``guard.yaml``), validated with pydantic.

Every error names the field path and what would be right, e.g.
``guard.yaml: roles.partner.rate.per_second: Input should be greater than 0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from invguard.configfile import FieldProblems
from invguard.core.errors import ConfigError
from invguard.guard.detect.config import DetectionConfig
from invguard.guard.incidents import IncidentsConfig
from invguard.guard.slo import SLOConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpstreamConfig(_Strict):
    """A model server the guard forwards to (proxy mode)."""

    url: str
    preset: Literal["kserve-v2", "instances"] = "kserve-v2"
    returns: Literal["labels", "scores", "logits"] = "logits"
    input_name: str = "input"
    output_name: str | None = None
    pool_size: int = Field(default=64, ge=1, le=4096)
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v


class ModelConfig(_Strict):
    """What the guard serves: an in-process model (torch or scikit-learn) or an upstream."""

    name: str = Field(default="model", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # on every audit record, incident and (through invguard_guard_model_info) metric
    version: str = Field(default="unversioned", pattern=r"^[A-Za-z0-9_.+-]{1,64}$")
    kind: Literal["torch", "sklearn", "proxy", "hf_lm", "openai"] = "torch"
    path: str | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = Field(default=None, ge=2)
    input_range: tuple[float, float] = (-1e6, 1e6)
    max_batch: int = Field(default=64, ge=1, le=100_000)
    upstream: UpstreamConfig | None = None
    # language models: ``hf_lm`` (a local model directory in ``path``) or ``openai`` (an
    # OpenAI-compatible server at ``upstream.url``, its model name ``upstream_model``)
    upstream_model: str | None = None
    max_tokens: int = Field(default=1024, ge=1, le=1_000_000)

    @property
    def is_text(self) -> bool:
        return self.kind in ("hf_lm", "openai")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.kind == "openai":
            if self.upstream is None:
                raise ValueError("kind 'openai' needs an upstream: {url} (the server's base URL)")
        elif self.kind == "proxy":
            if self.upstream is None:
                raise ValueError("kind 'proxy' needs an upstream: {url, preset, returns}")
            if self.input_shape is None or self.num_classes is None:
                raise ValueError("kind 'proxy' needs input_shape and num_classes")
        elif self.path is None:
            raise ValueError(f"kind {self.kind!r} needs a path (a model file or reference/<name>)")
        lo, hi = self.input_range
        if not lo < hi:
            raise ValueError(f"input_range must be [low, high] with low < high, got {list(self.input_range)}")
        return self


class CanaryConfig(_Strict):
    """A second version of the model served to a fixed share of clients (``canary:`` in guard.yaml),
    compared with the stable version on the privacy SLIs and rolled back automatically when it
    breaches (see :mod:`invguard.guard.canary`). Its model source is its own (``path``, or
    ``upstream`` for a proxy); everything else (shape, classes, input range) is the stable model's."""

    version: str = Field(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")
    weight: float = Field(gt=0, lt=1)  # the share of clients the canary answers
    kind: Literal["torch", "sklearn", "proxy"] | None = None  # default: the stable model's kind
    path: str | None = None
    upstream: UpstreamConfig | None = None
    window_seconds: float = Field(default=3600.0, gt=0)  # the SLIs are compared over this window
    check_seconds: float = Field(default=60.0, gt=0)  # how often the comparison is made
    min_rows: int = Field(default=200, ge=1)  # M2: scored rows each version needs in the window
    min_requests: int = Field(default=200, ge=1)  # detections: requests each version needs
    min_clients: int = Field(default=5, ge=1)  # distinct clients each version needs
    alpha: float = Field(default=0.001, gt=0, lt=0.5)  # one-sided level of each comparison
    m2_margin: float = Field(default=0.02, ge=0, lt=1)  # tolerated rise of the M2 rate
    detection_margin: float = Field(default=0.005, ge=0, lt=1)  # tolerated rise of the detection rate
    # the canary version's name in the audit history (incidents.history); default <model>@<version>
    history_model: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _check(self) -> CanaryConfig:
        if self.path is None and self.upstream is None:
            raise ValueError("a canary needs its own model: path (a model file) or upstream: {url}")
        if self.check_seconds > self.window_seconds:
            raise ValueError(
                f"check_seconds ({self.check_seconds:g}) must not exceed window_seconds "
                f"({self.window_seconds:g})"
            )
        return self


class RateConfig(_Strict):
    """GCRA: up to ``burst`` requests at once, refilled at ``per_second`` requests per second."""

    burst: int = Field(default=20, ge=1)
    per_second: float = Field(default=10.0, gt=0)


class BudgetConfig(_Strict):
    """Query budgets (rows answered) per UTC calendar day and ISO week; None = unlimited. ``scope``
    says whose budget it is: each key's (``key``), shared by the keys of one owner (``owner``; a key
    without an owner keeps its own), or shared by the whole role (``role``)."""

    day: int | None = Field(default=None, ge=0)
    week: int | None = Field(default=None, ge=0)
    scope: Literal["key", "owner", "role"] = "key"


class RoleConfig(_Strict):
    policy: Any = "label_only"
    rate: RateConfig = Field(default_factory=RateConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)


class KeyEntry(_Strict):
    """An API key stored in the config file: only its SHA-256 hash (hex), never the key itself."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: str
    owner: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.@-]{1,64}$")


class AuthConfig(_Strict):
    header: str = "X-API-Key"
    keys: tuple[KeyEntry, ...] = ()
    key_store: str | None = None  # SQLite file managed with `invguard keys`


class RateLimitConfig(_Strict):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "invguard:rl"
    # refuse to start on a Redis that keeps neither snapshots nor an append-only file (a restart of
    # it would reset every budget); otherwise the guard only warns
    require_persistence: bool = False


class AuditConfig(_Strict):
    """The audit log. ``signing_key`` (Ed25519, PKCS#8 PEM) and ``hash_key`` (the HMAC secret of
    ``input_hmac``) are created if missing; by default they sit next to the log's directory, not in
    it: whoever can rewrite the log must not also find the key that signs it. ``fsync: false``
    drops the durability guarantee (an acknowledged record can be lost in a crash)."""

    path: str = "audit/guard.jsonl"
    store_inputs: bool = False
    checkpoint_every: int = Field(default=1000, ge=1)
    checkpoint_seconds: float | None = Field(default=5.0, gt=0)
    signing_key: str | None = None  # default: <log dir>/../<log name>.ed25519.pem
    hash_key: str | None = None  # default: <log dir>/../<log name>.hmac-key
    chain_key: str | None = None  # the record chain's HMAC key; default: beside the signing key
    # where every signed head is also published: file:<path on another mount>,
    # redis://host:port/db#key or an http(s):// endpoint (see invguard.guard.auditlog.witness)
    witnesses: tuple[str, ...] = ()
    rotate_bytes: int | None = Field(default=None, ge=4096)
    fsync: bool = True


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_000_000, ge=64)
    # a request's headers must be complete this many seconds after its connection opened (or, on a
    # kept-alive connection, after the previous response once the next request began); its body
    # within body_timeout of the headers; and one address may hold this many connections at once
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    max_connections_per_address: int = Field(default=64, ge=1)
    # requests without a valid key and requests to unknown routes: a GCRA limit per peer address
    anonymous_rate: RateConfig = Field(default_factory=lambda: RateConfig(burst=20, per_second=5.0))


class MetricsConfig(_Strict):
    high_confidence_entropy: float = Field(default=0.1, ge=0)
    # roles whose keys may read /metrics; None = no key needed (bind the guard to a private network)
    roles: tuple[str, ...] | None = None
    # several workers: where their metric files live (default: <audit log>.metrics/ beside the log)
    multiprocess_dir: str | None = None


class GuardConfig(_Strict):
    model: ModelConfig
    roles: dict[str, RoleConfig] = Field(default_factory=lambda: {"default": RoleConfig()})
    auth: AuthConfig = Field(default_factory=AuthConfig)
    ratelimit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    incidents: IncidentsConfig | None = None
    slos: tuple[SLOConfig, ...] = ()
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    canary: CanaryConfig | None = None
    # where it was read from (set by load()): the file and the line of every field path
    _source: str | None = PrivateAttr(default=None)
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)

    def locate(self, message: str) -> str:
        """``message`` (``field.path: what``) with the file and the field's line, when known:
        ``guard.yaml: incidents.webhook.secret_env (line 80): ...``."""
        field, sep, rest = message.partition(": ")
        if not sep or " " in field:
            return f"{self._source}: {message}" if self._source else message
        line = self._lines.get(tuple(field.split(".")))
        where = f"{field} (line {line})" if line else field
        return f"{self._source + ': ' if self._source else ''}{where}: {rest}"

    def canary_model(self) -> ModelConfig:
        """The canary's model config: the stable model's with the canary's source and version."""
        c = self.canary
        assert c is not None
        upd: dict[str, Any] = {"version": c.version, "kind": c.kind or self.model.kind}
        upd["path"], upd["upstream"] = c.path, c.upstream
        return ModelConfig.model_validate(self.model.model_dump() | upd)

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, v: Any) -> Any:
        # `partner: "top_k=3 round=2"` is shorthand for `partner: {policy: "top_k=3 round=2"}`
        if isinstance(v, dict):
            return {k: (r if isinstance(r, dict) and "policy" in r else {"policy": r}) for k, r in v.items()}
        return v

    @model_validator(mode="after")
    def _check(self) -> GuardConfig:
        # every cross-field problem at once, each at its own field (and so its own line)
        found: list[tuple[tuple[Any, ...], str]] = []
        if not self.roles:
            found.append((("roles",), "define at least one role"))
        names = [s.name for s in self.slos]
        if len(set(names)) != len(names):
            found.append((("slos",), f"names must be unique, got {names}"))
        if any(s.sli == "incident_resolution" for s in self.slos) and self.incidents is None:
            found.append(
                (("slos",), "sli incident_resolution needs an incident store (incidents: {store: ...})")
            )
        known = sorted(self.roles)
        for r in self.metrics.roles or ():
            if r not in self.roles:
                found.append((("metrics", "roles"), f"{r!r} is not one of the roles {known}"))
        for i, k in enumerate(self.auth.keys):
            if k.role not in self.roles:
                found.append(
                    (("auth", "keys", i, "role"), f"{k.role!r} (key {k.id}) is not one of the roles {known}")
                )
        for r in self.detection.roles:
            if r not in self.roles:
                found.append((("detection", "roles", r), f"{r!r} is not one of the roles {known}"))
        for where, rs in (
            (("detection", "admin_roles"), list(self.detection.admin_roles)),
            (("incidents", "admin_roles"), list(self.incidents.admin_roles) if self.incidents else []),
        ):
            for r in rs:
                if r not in self.roles:
                    found.append((where, f"{r!r} is not one of the roles {known}"))
        if found:
            raise FieldProblems(found)
        return self

    def resolve(self, base: Path) -> GuardConfig:
        """Make relative file paths relative to the config file's directory."""

        def rel(p: str | None) -> str | None:
            if p is None or p.startswith("reference/") or Path(p).is_absolute():
                return p
            return os.path.normpath(base / p)

        model = self.model.model_copy(update={"path": rel(self.model.path)})
        auth = self.auth.model_copy(update={"key_store": rel(self.auth.key_store)})
        audit = self.audit.model_copy(
            update={
                "path": rel(self.audit.path),
                "signing_key": rel(self.audit.signing_key),
                "hash_key": rel(self.audit.hash_key),
                "chain_key": rel(self.audit.chain_key),
                "witnesses": tuple(
                    w if "://" in w else "file:" + str(rel(w.removeprefix("file:")))
                    for w in self.audit.witnesses
                ),
            }
        )
        inc = self.incidents
        if inc is not None:
            webhook = inc.webhook
            if webhook is not None:
                webhook = webhook.model_copy(update={"secret_file": rel(webhook.secret_file)})
            inc = inc.model_copy(
                update={"store": rel(inc.store), "history": rel(inc.history), "webhook": webhook}
            )
        detection = self.detection.model_copy(
            update={"calibration": rel(self.detection.calibration), "salt_key": rel(self.detection.salt_key)}
        )
        canary = self.canary
        if canary is not None:
            canary = canary.model_copy(update={"path": rel(canary.path)})
        return self.model_copy(
            update={
                "model": model,
                "auth": auth,
                "audit": audit,
                "incidents": inc,
                "detection": detection,
                "canary": canary,
            }
        )


def _format(e: ValidationError, where: str) -> str:
    from invguard.configfile import expand, path_text

    lines = []
    for err in e.errors():
        for loc, msg in expand(err):
            lines.append(f"{where}: {path_text(loc)}: {msg.removeprefix('Value error, ')}")
    return "\n".join(lines)


def from_dict(doc: Any, where: str = "guard config", base: Path | None = None) -> GuardConfig:
    """Validate a config mapping; relative paths are resolved against ``base`` if given."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(doc).__name__}")
    try:
        cfg = GuardConfig.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(_format(e, where)) from None
    # policies are checked here so that a bad spec fails at load, not at the first request
    from invguard.policies import parse

    for name, role in cfg.roles.items():
        if cfg.model.is_text:
            from invguard.policies.text import text_policy

            text_policy(role.policy, f"{where}: roles.{name}.policy")
        else:
            parse(role.policy, f"{where}: roles.{name}.policy")
    for name, rd in cfg.detection.roles.items():
        parse(rd.tighten_policy, f"{where}: detection.roles.{name}.tighten_policy")
    problem = canary_problem(cfg)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return cfg.resolve(base) if base is not None else cfg


def canary_problem(cfg: GuardConfig) -> str | None:
    """What is wrong with ``canary:`` given the rest of the config (field path first), or None."""
    c = cfg.canary
    if c is None:
        return None
    if cfg.model.is_text:
        return (
            f"canary: a canary is for classifier models (kind torch, sklearn or proxy); "
            f"model.kind is {cfg.model.kind!r}"
        )
    if c.version == cfg.model.version:
        return (
            f"canary.version: {c.version!r} is the stable version (model.version); "
            "the canary must serve another version"
        )
    if cfg.incidents is None:
        return "canary: needs an incident store to report a rollback in (incidents: {store: incidents.db})"
    kind = c.kind or cfg.model.kind
    if kind == "proxy" and c.upstream is None:
        return "canary.upstream: a proxy canary needs its own upstream: {url}"
    if kind != "proxy" and c.path is None:
        return f"canary.path: a {kind} canary needs a path (a model file or reference/<name>)"
    return None


def load(path: str | Path) -> GuardConfig:
    """Read and validate ``guard.yaml`` (problems with field paths and line numbers, see
    :mod:`invguard.configfile`)."""
    from invguard.configfile import line_map, read_yaml, validate

    p = Path(path)
    doc, text = read_yaml(p, "guard config")
    validate(GuardConfig, doc, source=str(p), what="guard config", text=text)
    cfg = from_dict(doc, str(p), base=p.parent)
    cfg._source, cfg._lines = str(p), line_map(text)
    return cfg
