"""The audit configuration: one YAML file says what to attack, with what, and what must hold.

The schema is pydantic v2. Loading a file reports every problem at once, each with its field path
and the line it is on (``attacks[1].params.steps (line 14): ...``), and raises ``ConfigError``
(the CLI's exit code 2).

.. code-block:: yaml

    name: digits-mlp
    seed: 0
    target: {model: reference/digits-mlp}
    data: {dataset: digits}
    attacks:
      - inversion.whitebox
      - {name: membership.lira, params: {n_models: 8}, exposure: "top_k=3 round=2"}
    exposures:
      attacks: [inversion.blackbox]
      policies: [logits, scores, "top_k=3 round=2", label_only]
    gates:
      - "inversion.whitebox.attack_accuracy <= 0.2"
      - {metric: membership.lira.tpr_at_fpr_0.001, op: "<=", threshold: 0.01, severity: high}
      - {metric: membership.threshold.auc, threshold: 0.6, on: estimate}   # the point estimate
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from invguard.configfile import line_map, line_of, path_text, problems, read_yaml
from invguard.core.errors import ConfigError

SEVERITIES = ("low", "medium", "high", "critical")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FederatedDPConfig(_Strict):
    clip: float = Field(gt=0, description="L2 bound of one client's update")
    noise_multiplier: float = Field(ge=0, description="noise standard deviation / clip")
    placement: Literal["client", "server"] = "client"
    delta: float = Field(1e-5, gt=0, lt=1)


class FederatedConfig(_Strict):
    """The federated deployment a model is trained in (``target: {kind: federated, ...}``).

    Simulated with the members split as the clients' records (K clients, disjoint); the
    gradient attacks reconstruct from what ``attacker`` sees. ``snapshot``: the model the updates are
    computed from: ``model`` (the given weights, a federation late in training) or ``init`` (the
    same architecture freshly initialised, seeded: round 1 of a federation, where leakage is
    greatest).
    """

    clients: int = Field(4, ge=1)
    batch_size: int = Field(1, ge=1)
    algorithm: Literal["fedsgd", "fedavg"] = "fedsgd"
    local_steps: int = Field(1, ge=1)
    local_lr: float = Field(0.1, gt=0)
    local_batch: int | None = Field(None, ge=1)
    rounds: int = Field(1, ge=1)
    secure_aggregation: bool = False
    dp: FederatedDPConfig | None = None
    topk: float | None = Field(None, gt=0, le=1)
    attacker: Literal["server", "client"] = "server"
    snapshot: Literal["model", "init"] = "model"

    @model_validator(mode="after")
    def _coherent(self) -> FederatedConfig:
        problems = self.setup().problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def setup(self) -> Any:
        from invguard.federated.dp import DPConfig
        from invguard.federated.updates import FederatedSetup

        d = self.model_dump(exclude={"dp", "snapshot"})
        dp = None if self.dp is None else DPConfig(**self.dp.model_dump())
        return FederatedSetup(**d, dp=dp)


TEXT_KINDS = ("hf_lm", "openai")
_CLASSIFIER_ACCESS = ("label", "scores", "logits", "whitebox")
_TEXT_ACCESS = ("text", "topk_logprobs", "logprobs", "whitebox")


class TargetConfig(_Strict):
    """What is audited.

    ``kind`` is inferred when omitted: ``url`` -> http, ``factory`` -> torch, a ``model`` of the form
    ``reference/NAME`` or a ``.pt`` file -> model, a ``.pkl``/``.joblib`` file -> sklearn, a
    ``federated`` section -> federated (a model trained with shared gradients), ``path`` or a
    ``.onnx`` model -> onnx (a model file shipped to a device: unlimited queries, logits, and
    gradients where the graph converts to torch).

    Language models (the ``text.*`` attacks): ``kind: hf_lm`` is a local Hugging Face causal-LM
    directory (``path``; never a hub download) or invguard's tiny reference LM (``model:
    reference/pydoc-gpt2-micro`` or ``reference/pydoc-gpt2-tiny``, trained by the audit on its corpus
    with the canaries inserted, then cached); ``kind: openai`` is an OpenAI-compatible endpoint
    (``url`` of the server or its ``/v1``, ``model_name`` sent in each request, ``api: completions``
    or ``chat``), the guard's own ``/v1/completions`` included. Their ``access`` is ``text``,
    ``topk_logprobs``, ``logprobs`` or (local only) ``whitebox``.
    """

    kind: Literal["model", "torch", "sklearn", "http", "federated", "onnx", "hf_lm", "openai"] | None = None
    name: str | None = Field(None, description="The model's name in the history store and the report.")
    model: str | None = Field(None, description="reference/NAME, a file from `invguard train`, or a pickle")
    factory: str | None = Field(None, description="module:callable that builds the torch module")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="state_dict file loaded into the factory's module")
    url: str | None = None
    path: str | None = Field(
        None,
        description="an ONNX file (kind: onnx) or a local Hugging Face causal-LM directory (kind: hf_lm)",
    )
    model_name: str | None = Field(None, description="the model name sent to an OpenAI-compatible endpoint")
    api: Literal["completions", "chat"] = Field(
        "completions", description="which OpenAI-compatible route an openai target calls"
    )
    token_budget: int | None = Field(
        None, ge=0, description="generated and scored tokens a language-model target may spend per attack job"
    )
    max_top_logprobs: int = Field(
        20, ge=0, le=20, description="the most top log-probabilities an OpenAI-compatible endpoint returns"
    )
    preset: Literal["kserve-v2", "instances", "invguard", "custom"] = "kserve-v2"
    returns: Literal["labels", "scores", "logits"] = "scores"
    api_key_env: str | None = None
    api_key_header: str = "X-API-Key"
    request_template: Any = None
    response_field: str | None = None
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(3, ge=0)
    budget: int | None = Field(
        None,
        ge=0,
        description="query budget of the whole audit: divided among the attack jobs up front (the probe "
        "query included), so the sum never exceeds it",
    )
    max_wait: float = Field(
        60.0,
        ge=0,
        description="longest Retry-After (s) of a 429 worth waiting for; a longer one, or a 429 that says "
        "the budget is exhausted, ends the attack job as budget exhausted",
    )
    access: Literal["label", "scores", "logits", "whitebox", "text", "topk_logprobs", "logprobs"] | None = (
        Field(
            None,
            description="lower the access the target grants (e.g. attack a torch model as a black box; a "
            "language model: text, topk_logprobs, logprobs or whitebox)",
        )
    )
    input_shape: list[int] | None = None
    num_classes: int | None = Field(None, ge=2)
    defence: dict[str, Any] | None = Field(
        None,
        description="train the reference model defended: DP-SGD (epsilon, delta, max_grad_norm, "
        "accountant, poisson) and regularisers (weight_decay, label_smoothing, augment, early_stopping)",
    )

    @field_validator("defence")
    @classmethod
    def _defence(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from invguard.models.defended import Defence

            try:
                Defence.from_dict(v, "defence")
            except ConfigError as e:
                raise ValueError(str(e).removeprefix("defence: ")) from None
        return v

    federated: FederatedConfig | None = Field(None, description="the federated deployment (kind: federated)")

    @model_validator(mode="after")
    def _infer_kind(self) -> TargetConfig:
        kind = self.kind
        if kind is None:
            if self.model_name is not None:
                kind = "openai"
            elif self.model and self.model.startswith("reference/") and _is_reference_lm(self.model):
                kind = "hf_lm"
            elif self.federated is not None:
                kind = "federated"
            elif self.url:
                kind = "http"
            elif self.path and Path(self.path).is_dir():
                kind = "hf_lm"  # a Hugging Face model directory
            elif self.path or (self.model and self.model.endswith(".onnx")):
                kind = "onnx"
            elif self.factory:
                kind = "torch"
            elif self.model and self.model.endswith((".pkl", ".pickle", ".joblib")):
                kind = "sklearn"
            elif self.model:
                kind = "model"
            else:
                raise ValueError("give one of model (reference/NAME or a file), factory + weights, or url")
            object.__setattr__(self, "kind", kind)
        if kind == "onnx" and self.path is None and self.model:
            object.__setattr__(self, "path", self.model)
        need = {
            "model": ["model"],
            "sklearn": ["model"],
            "torch": ["factory", "weights"],
            "http": ["url"],
            "federated": ["model"],
            "onnx": ["path"],
            "hf_lm": [],
            "openai": ["url", "model_name"],
        }
        missing = [f for f in need[kind] if not getattr(self, f)]
        if missing:
            raise ValueError(f"a {kind} target needs {' and '.join(missing)}")
        self._check_text_kind(kind)
        if self.defence is not None and not (self.model or "").startswith("reference/"):
            raise ValueError(
                "defence applies to invguard-built reference models (model: reference/NAME); a model "
                "file carries its own training (train it with `invguard train --defence ...`)"
            )
        if self.federated is not None and kind != "federated":
            raise ValueError(f"a federated section belongs to a federated target, not a {kind} target")
        if kind == "federated" and self.federated is None:
            object.__setattr__(self, "federated", FederatedConfig.model_validate({}))
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory must look like 'package.module:callable', got {self.factory!r}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        return self

    def _check_text_kind(self, kind: str) -> None:
        """The fields of a language-model target, and the access levels of each kind."""
        if kind in TEXT_KINDS:
            if self.access is not None and self.access not in _TEXT_ACCESS:
                raise ValueError(
                    f"access {self.access!r} is a classifier's; a language model grants one of "
                    f"{list(_TEXT_ACCESS)}"
                )
            if kind == "openai" and self.access == "whitebox":
                raise ValueError("an OpenAI-compatible endpoint grants at most logprobs access, not whitebox")
            if kind == "hf_lm":
                if (self.path is None) == (self.model is None):
                    raise ValueError(
                        "a hf_lm target needs exactly one of path (a local Hugging Face causal-LM directory) "
                        "or model (reference/pydoc-gpt2-micro or reference/pydoc-gpt2-tiny)"
                    )
                if self.model is not None and not (
                    self.model.startswith("reference/") and _is_reference_lm(self.model)
                ):
                    from invguard.models.lm import REFERENCE_LMS

                    raise ValueError(
                        f"unknown reference LM {self.model!r}; known: "
                        + ", ".join(f"reference/{n}" for n in sorted(REFERENCE_LMS))
                        + " (a model of your own: path: its Hugging Face directory)"
                    )
                if self.url is not None:
                    raise ValueError(
                        "a hf_lm target is loaded from path, not url (an endpoint is kind: openai)"
                    )
            for f in ("factory", "weights", "federated", "defence"):
                if getattr(self, f) is not None:
                    raise ValueError(f"{f} belongs to a classifier target, not a {kind} target")
            return
        if self.access is not None and self.access not in _CLASSIFIER_ACCESS:
            raise ValueError(
                f"access {self.access!r} is a language model's; a {kind} target grants one of "
                f"{list(_CLASSIFIER_ACCESS)}"
            )
        for f in ("model_name", "token_budget"):
            if getattr(self, f) is not None:
                raise ValueError(f"{f} belongs to a language-model target (kind: openai or hf_lm)")

    @property
    def is_text(self) -> bool:
        return self.kind in TEXT_KINDS

    @property
    def display_name(self) -> str:
        return (
            self.name
            or self.model
            or self.path
            or (f"{self.model_name} at {self.url}" if self.model_name else self.url)
            or f"{self.factory} ({self.weights})"
        )


def _is_reference_lm(model: str) -> bool:
    from invguard.models.lm import REFERENCE_LMS

    return model.split("/", 1)[1] in REFERENCE_LMS


class MembersConfig(_Strict):
    """Which records of a user's dataset were the model's training members.

    ``indices``: a file of row indices into the dataset (``.npy``, or text with one index per line);
    ``file``: a separate dataset file holding exactly the members (then ``data.dataset`` holds the
    non-members and public data).
    """

    indices: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> MembersConfig:
        if (self.indices is None) == (self.file is None):
            raise ValueError("give exactly one of indices (a row-index file) or file (a members dataset)")
        return self


class CanaryFormatConfig(_Strict):
    """A canary's sentence and secret: ``template`` (with ``{name}``), then ``length`` characters
    of ``alphabet``."""

    template: str = "the pin of {name} is "
    alphabet: str = "0123456789"
    length: int = Field(6, ge=1, le=32)

    @model_validator(mode="after")
    def _valid(self) -> CanaryFormatConfig:
        from invguard.core.errors import DataError
        from invguard.data.text import CanaryFormat

        try:
            CanaryFormat(**self.model_dump())
        except DataError as e:
            raise ValueError(str(e).removeprefix("canary format: ")) from None
        return self


class TextDataConfig(_Strict):
    """A language model's text: the corpus cut into documents and split (seeded) into members (the
    private training text), non-members and public documents, with canaries of ``canary_format``
    inserted ``insertions`` times (``canaries_per_count`` each; 0: never inserted, the controls).
    The model audited must have been trained on exactly this stream (a reference LM is)."""

    corpus: str = Field(
        "pydoc", description="pydoc (Python's bundled topic help), a .txt file or a folder of them"
    )
    seed: int | None = Field(None, description="split and canary seed (default: the audit seed)")
    max_documents: int | None = Field(None, ge=8)
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    insertions: list[int] = Field(default_factory=lambda: [0, 1, 10, 100])
    canaries_per_count: int = Field(4, ge=1)
    canary_format: CanaryFormatConfig = Field(default_factory=CanaryFormatConfig)  # type: ignore[arg-type]

    @field_validator("insertions")
    @classmethod
    def _counts(cls, v: list[int]) -> list[int]:
        if not v or any(k < 0 for k in v):
            raise ValueError(f"insertions must be a non-empty list of counts >= 0, got {v}")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be three positive shares summing to 1, got {list(v)}")
        return v


class DataConfig(_Strict):
    dataset: str = Field("digits", description="digits, mnist5k, adult, or a .npz/.csv/image-folder path")
    text: TextDataConfig | None = Field(
        None, description="a language model's corpus and canaries (targets of kind hf_lm / openai)"
    )
    label: str | None = Field(None, description="label column of a CSV dataset")
    seed: int | None = Field(None, description="split seed (default: the audit seed)")
    limit: int | None = Field(None, ge=8)
    fractions: dict[str, float] | None = None
    public_classes: list[int] | None = None
    members: MembersConfig | None = None


class AttackConfig(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    exposure: str | dict[str, Any] | list[Any] | None = Field(
        None, description="output policy between the attack and the model, e.g. 'top_k=3 round=2'"
    )
    seed: int | None = None

    budget: int | None = Field(
        None, ge=0, description="this attack's share of target.budget (default: an equal share of the rest)"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from invguard.attacks.names import check_name

        problem = check_name(v)  # from the name table: no implementation is imported
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("exposure")
    @classmethod
    def _policy(cls, v: Any) -> Any:
        if v is not None:
            parse_exposure(v, "exposure", text=None)
        return v

    @field_validator("params")
    @classmethod
    def _no_reveal(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "show_secrets" in v:
            raise ValueError(
                "show_secrets cannot be set in a config file (a committed config would put secrets in "
                "every report); run `invguard audit --show-secrets` to see extracted strings in clear"
            )
        return v


def parse_exposure(spec: Any, where: str, *, text: bool | None) -> Any:
    """The output policy an exposure names: a classifier policy (``text=False``), a text policy
    (``text=True``: ``strip_logprobs``, ``"top_logprobs=5 round=2"``, ``secret_filter``), or either
    (``None``: the first that reads it; the target's kind decides later)."""
    from invguard import policies
    from invguard.policies.text import text_policy

    if text is True:
        return text_policy(spec, where)
    if text is False:
        return policies.parse(spec, where)
    try:
        return policies.parse(spec, where)
    except ConfigError as first:
        try:
            return text_policy(spec, where)
        except ConfigError:
            raise first from None


def is_whitebox(spec: Any) -> bool:
    return isinstance(spec, str) and spec.strip().lower() == "whitebox"


def exposure_label(spec: Any, *, text: bool = False) -> str:
    """The name an exposure goes by in the report: ``whitebox`` or the policy's own label."""
    if spec is None:
        return "as deployed"
    if is_whitebox(spec):
        return "whitebox"
    return str(parse_exposure(spec, "exposure", text=text).label())


class ExposureSweepConfig(_Strict):
    """Run attacks against the model behind each exposure, least restrictive first.

    An exposure is ``whitebox`` (the model itself) or an output policy (``logits``, ``scores``,
    ``"top_k=3 round=2"``, ``label_only``, ...). Where an inversion attack needs more access than an
    exposure grants, the strongest inversion attack allowed there runs instead (the row says which).
    """

    attacks: list[str] = Field(min_length=1)
    policies: list[str | dict[str, Any] | list[Any]] = Field(min_length=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-attack parameters")

    @field_validator("attacks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from invguard.attacks.names import check_name

        problems = [p for a in v if (p := check_name(a))]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("policies")
    @classmethod
    def _parse(cls, v: list[Any]) -> list[Any]:
        for i, p in enumerate(v):
            if not is_whitebox(p):
                parse_exposure(p, f"policies[{i}]", text=None)
        return v

    @model_validator(mode="after")
    def _sweep_params(self) -> ExposureSweepConfig:
        for name in self.params:
            if name not in self.attacks:
                raise ValueError(f"params.{name}: not one of the sweep's attacks {self.attacks}")
        return self


class GateConfig(_Strict):
    """``metric`` is ``family.name.metric`` (the metric name may itself hold dots)."""

    metric: str
    op: Literal["<=", "<", ">=", ">", "=="] = "<="
    threshold: float
    severity: Literal["low", "medium", "high", "critical"] = "high"
    on: Literal["bound", "estimate"] = Field(
        "bound",
        description="bound: decide on the conservative end of the 95% CI (a straddling interval is "
        "inconclusive); estimate: decide on the point estimate",
    )
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict) and True in v:  # YAML 1.1 reads an unquoted `on:` key as true
            v = {("on" if k is True else k): x for k, x in v.items()}
        if isinstance(v, dict) and "bound" in v:
            raise ValueError(
                "bound is no longer a gate field: a gate decides on the conservative end of the 95% CI "
                "by default (on: bound); write on: estimate to decide on the point estimate"
            )
        return _parse_gate(v)

    @field_validator("metric")
    @classmethod
    def _dotted(cls, v: str) -> str:
        if len(v.split(".")) < 3 or any(not p for p in v.split(".")[:2]):
            raise ValueError(
                f"metric must be family.name.metric (e.g. inversion.whitebox.attack_accuracy), got {v!r}"
            )
        return v

    @property
    def attack(self) -> str:
        return ".".join(self.metric.split(".")[:2])

    @property
    def metric_name(self) -> str:
        return self.metric.split(".", 2)[2]

    @property
    def expression(self) -> str:
        on = " (on the estimate)" if self.on == "estimate" else ""
        return f"{self.metric} {self.op} {self.threshold:g}{on}"


_OPS = ("<=", ">=", "==", "<", ">")


def _parse_gate(v: Any) -> Any:
    """Accept ``"inversion.whitebox.attack_accuracy <= 0.2 [severity]"`` as well as the mapping form."""
    if not isinstance(v, str):
        return v
    text = v.strip()
    for op in _OPS:
        if op in text:
            left, right = text.split(op, 1)
            parts = right.split()
            if not parts:
                raise ValueError(f"gate {v!r}: no threshold after {op!r}")
            try:
                threshold = float(parts[0])
            except ValueError:
                raise ValueError(f"gate {v!r}: threshold {parts[0]!r} is not a number") from None
            out: dict[str, Any] = {"metric": left.strip(), "op": op, "threshold": threshold}
            if len(parts) > 1:
                out["severity"] = parts[1]
            return out
    raise ValueError(
        f"gate {v!r}: expected 'family.name.metric OP threshold [severity]' with OP one of {_OPS}"
    )


class OutputConfig(_Strict):
    dir: str = "reports/audit"
    formats: list[Literal["html", "json", "junit", "markdown"]] = Field(
        default_factory=lambda: ["html", "json", "junit", "markdown"]  # type: ignore[arg-type]
    )


class AuditConfig(_Strict):
    version: Literal[1] = 1
    name: str | None = None
    plugins: list[str] = Field(
        default_factory=list, description="modules to import first: they register third-party attacks"
    )
    seed: int = 0
    target: TargetConfig
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    attacks: list[AttackConfig] = Field(default_factory=list)
    exposures: ExposureSweepConfig | None = None
    gates: list[GateConfig] = Field(default_factory=list)
    fail_on: Literal["low", "medium", "high", "critical"] = Field(
        "low", description="the lowest severity of a failed gate that fails the audit (exit 1)"
    )
    output: OutputConfig = Field(default_factory=OutputConfig)
    cache_dir: str = ".invguard/cache"
    history: str | None = Field(".invguard/history.db", description="SQLite history store; null to disable")
    max_workers: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("plugins"), list):
            import importlib

            for i, mod in enumerate(v["plugins"]):
                try:
                    importlib.import_module(str(mod))
                except ImportError as e:
                    raise ValueError(f"plugins[{i}]: cannot import {mod!r} ({e})") from None
        return v

    @field_validator("attacks", mode="before")
    @classmethod
    def _attack_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):  # {name: params}
            return [{"name": k, "params": p or {}} for k, p in v.items()]
        if isinstance(v, list):
            return [{"name": a} if isinstance(a, str) else a for a in v]
        return v

    @model_validator(mode="after")
    def _cross(self) -> AuditConfig:
        if not self.attacks and self.exposures is None:
            raise ValueError("no attacks: give attacks (and/or an exposures sweep)")
        names = {a.name for a in self.attacks} | set(self.exposures.attacks if self.exposures else [])
        text = self.target.is_text
        wrong = sorted(n for n in names if n.startswith("text.") != text)
        if wrong:
            raise ValueError(
                f"attacks {wrong} do not fit the target: "
                + (
                    "a language model (kind hf_lm / openai) is attacked by the text.* attacks only"
                    if text
                    else "the text.* attacks need a language-model target (kind: hf_lm or openai)"
                )
            )
        if text and self.exposures is not None:
            raise ValueError(
                "exposures: the exposure sweep compares classifier output policies; for a language model "
                'give each attack its own exposure (e.g. exposure: "top_logprobs=5 round=2")'
            )
        for i, a in enumerate(self.attacks):
            if a.exposure is not None:
                try:
                    parse_exposure(a.exposure, f"attacks[{i}].exposure", text=text)
                except ConfigError as e:
                    raise ValueError(str(e)) from None
        if text and self.data.text is None and self.data.dataset != "digits":
            raise ValueError("data.dataset is a classifier's dataset; a language model's corpus is data.text")
        unknown = sorted({g.attack for g in self.gates} - names)
        if unknown:
            raise ValueError(
                f"gates refer to attacks that are not run: {unknown}; attacks run: {sorted(names)}"
            )
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.target.display_name

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- YAML with line numbers
# (one reader for every config: invguard.configfile)
_line_map, _path_text, _line_of, _problems = line_map, path_text, line_of, problems


def _raise(source: str, probs: list[str]) -> None:
    head = f"{source}: {len(probs)} problem{'s' if len(probs) != 1 else ''} in the audit config"
    raise ConfigError(head + "\n" + "\n".join(f"  - {p}" for p in probs)) from None


def _where(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> str:
    line = _line_of(loc, lines)
    return _path_text(loc) + (f" (line {line})" if line else "")


# targets whose architecture the audit cannot read (reference models must be told it)
_OPAQUE_TARGETS = {"http": "an HTTP endpoint", "sklearn": "a scikit-learn model", "torch": "a torch factory"}


def check_attacks(cfg: AuditConfig, lines: dict[tuple[Any, ...], int]) -> list[str]:
    """The checks that need the attack classes (so they import them): parameters, reference models'
    architecture on targets that do not reveal theirs, and budget shares. Before any query."""
    import dataclasses

    from invguard.attacks import ATTACKS

    probs: list[str] = []

    def check(name: str, params: dict[str, Any], loc: tuple[Any, ...]) -> None:
        """``loc``: where the attack's parameters are (or would be) in the config."""
        cls = ATTACKS.get(name)
        try:
            attack = cls(**params)
        except (TypeError, ConfigError) as e:
            probs.append(f"{_where(loc, lines)}: bad parameters for {name}: {e}")
            return
        fields = {f.name for f in dataclasses.fields(attack)}
        kind = cfg.target.kind or ""
        if "arch" in fields and getattr(attack, "arch", None) is None and kind in _OPAQUE_TARGETS:
            probs.append(
                f"{_where((*loc, 'arch'), lines)}: {name} trains reference models like the "
                f"target, and {_OPAQUE_TARGETS[kind]} does not say its architecture: give params.arch, "
                "e.g. {arch: mlp, hidden: [128]} (an invguard.models.build spec)"
            )

    for i, a in enumerate(cfg.attacks):
        check(a.name, a.params, ("attacks", i, "params"))
    if cfg.exposures is not None:
        for name in cfg.exposures.attacks:
            check(name, cfg.exposures.params.get(name, {}), ("exposures", "params", name))
    shares = [(i, a.budget) for i, a in enumerate(cfg.attacks) if a.budget is not None]
    if shares and cfg.target.budget is None:
        i = shares[0][0]
        probs.append(
            f"{_where(('attacks', i, 'budget'), lines)}: an attack's budget is its share of target.budget; "
            "set target.budget (the audit's total)"
        )
    elif shares and cfg.target.budget is not None and sum(b for _, b in shares) > cfg.target.budget:
        total = sum(b for _, b in shares)
        probs.append(
            f"{_where(('attacks', shares[0][0], 'budget'), lines)}: the attacks' budget shares add up to "
            f"{total}, more than target.budget ({cfg.target.budget})"
        )
    return probs


def check_files(cfg: AuditConfig, lines: dict[tuple[Any, ...], int]) -> list[str]:
    """Every file the config names that does not exist, with its field path and line."""
    probs = []
    t, d = cfg.target, cfg.data
    named: list[tuple[tuple[Any, ...], str | None]] = [
        (("target", "model"), None if t.model is None or t.model.startswith("reference/") else t.model),
        (("target", "weights"), t.weights),
        (("data", "dataset"), None if d.dataset in ("digits", "mnist5k", "adult") else d.dataset),
        (("target", "path"), t.path),
    ]
    if d.text is not None and d.text.corpus != "pydoc":
        named.append((("data", "text", "corpus"), d.text.corpus))
    if d.members is not None:
        named += [
            (("data", "members", "indices"), d.members.indices),
            (("data", "members", "file"), d.members.file),
        ]
    for loc, path in named:
        if path is not None and not Path(path).exists():
            probs.append(
                f"{_where(loc, lines)}: file not found: {path} "
                "(a relative path is relative to the config file)"
            )
    return probs


def parse_config(
    raw: Any, *, source: str = "<config>", text: str | None = None, base: Path | None = None
) -> AuditConfig:
    """Validate a config mapping; every problem is reported at once in one ``ConfigError``.

    Structure, names, policies and gates are checked first without importing any attack (a typo is
    reported at once); then missing files and the checks that need the attack classes
    (``check_attacks``). ``base``: the folder relative file paths are resolved against."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}")
    lines = _line_map(text) if text is not None else {}
    try:
        cfg = AuditConfig.model_validate(raw)
    except ValidationError as e:
        _raise(source, _problems(e, lines))
    if base is not None:
        cfg = _resolve_paths(cfg, base)
    probs = check_files(cfg, lines) + check_attacks(cfg, lines)
    if probs:
        _raise(source, probs)
    return cfg


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate an audit config file (relative paths in it are relative to the file)."""
    p = Path(path)
    raw, text = read_yaml(p, "config file")
    return parse_config(raw, source=str(p), text=text, base=p.parent)


def _resolve_paths(cfg: AuditConfig, base: Path) -> AuditConfig:
    """Make the file paths in a config relative to the config's folder absolute."""

    def fix(v: str | None) -> str | None:
        if v is None or v.startswith("reference/") or Path(v).is_absolute():
            return v
        return str((base / v).resolve()) if (base / v).exists() else v

    t = cfg.target.model_copy(
        update={
            "model": fix(cfg.target.model),
            "weights": fix(cfg.target.weights),
            "path": fix(cfg.target.path),
        }
    )
    members = cfg.data.members
    if members is not None:
        members = members.model_copy(update={"indices": fix(members.indices), "file": fix(members.file)})
    ds = cfg.data.dataset
    text = cfg.data.text
    if text is not None and text.corpus != "pydoc":
        text = text.model_copy(update={"corpus": fix(text.corpus)})
    d = cfg.data.model_copy(
        update={
            "dataset": ds if ds in ("digits", "mnist5k", "adult") else fix(ds),
            "members": members,
            "text": text,
        }
    )
    return cfg.model_copy(update={"target": t, "data": d})
