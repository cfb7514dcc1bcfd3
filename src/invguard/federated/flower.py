"""The Flower adapter: audit what a Flower server actually receives, and check how a deployment is
protected.

- :class:`AuditingStrategy` wraps any Flower ``Strategy`` (the Message API of ``flwr.serverapp``):
  every round it hands the updates the server received to invguard as
  :class:`~invguard.federated.updates.Observation` objects (the client's returned arrays minus the
  global arrays it was sent: a FedAvg delta), and lets the wrapped strategy aggregate as before;
  both reads of each client's raw update (invguard's and the strategy's) are M5 events. The
  observations feed a :class:`~invguard.federated.target.FederatedTarget`, so the gradient attacks
  reconstruct from exactly what the operator's server holds (no ground truth for a live deployment).
- :func:`check_deployment` inspects the server strategy/workflow and the client mods for Flower's
  secure aggregation (``SecAggPlusWorkflow`` on the server *and* ``secaggplus_mod`` on the
  clients; either alone does not mask anything) and its DP wrappers (central:
  ``DifferentialPrivacy{Server,Client}SideFixedClipping`` / adaptive clipping; local: ``LocalDpMod``).
- :class:`LocalGrid` delivers a ServerApp strategy's messages to ``ClientApp`` objects in this
  process (what Flower's simulation engine does through Ray, without Ray), for audits and tests
  on one CPU.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from invguard.federated.access import RawAccessLog
from invguard.federated.updates import Observation


def _strategy_base() -> type:
    from flwr.serverapp.strategy import Strategy

    return Strategy


class AuditingStrategy:  # a flwr.serverapp.strategy.Strategy (subclassed lazily: flwr is optional)
    """Placeholder replaced on first use by :func:`auditing_strategy`'s class."""


def auditing_strategy(
    inner: Any,
    *,
    access_log: RawAccessLog | None = None,
    batch_size: int = 1,
    local_steps: int = 1,
    local_lr: float = 0.1,
    on_update: Callable[[Observation], None] | None = None,
    who: str = "invguard-audit",
) -> Any:
    """Wrap the Flower strategy ``inner`` so that invguard sees each round's received updates.

    ``batch_size``, ``local_steps`` and ``local_lr`` are what the operator knows of the clients'
    training configuration (the attacks need them to model a delta). ``on_update`` is called with
    each observation as it arrives; all of them are kept in ``.observations``.
    """
    return _auditing_class()(inner, access_log, batch_size, local_steps, local_lr, on_update, who)


_CLASS: list[type] = []


def _auditing_class() -> type:
    if _CLASS:
        return _CLASS[0]
    from flwr.app import ArrayRecord

    Base = _strategy_base()

    class _Auditing(Base):  # type: ignore[misc, valid-type]
        __doc__ = AuditingStrategy.__doc__

        def __init__(
            self,
            inner: Any,
            access_log: RawAccessLog | None,
            batch_size: int,
            local_steps: int,
            local_lr: float,
            on_update: Callable[[Observation], None] | None,
            who: str,
        ) -> None:
            self.inner = inner
            self.log = access_log if access_log is not None else RawAccessLog()
            self.batch_size = batch_size
            self.local_steps = local_steps
            self.local_lr = local_lr
            self.on_update = on_update
            self.who = who
            self.observations: list[Observation] = []
            self._sent: dict[int, tuple[list[str], list[np.ndarray]]] = {}

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
            names = list(arrays.keys())
            self._sent[server_round] = (names, [np.asarray(arrays[k].numpy()) for k in names])
            return self.inner.configure_train(server_round, arrays, config, grid)  # type: ignore[no-any-return]

        def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
            replies = list(replies)
            names, sent = self._sent.get(server_round, ([], []))
            for msg in replies:
                if msg.has_error():
                    continue
                record = next((v for v in msg.content.values() if isinstance(v, ArrayRecord)), None)
                if record is None:
                    continue
                client = int(msg.metadata.src_node_id)
                self.log.record(self.who, server_round, client, secure_aggregation=False)
                got = [np.asarray(record[k].numpy()) for k in names]
                obs = Observation(
                    round=server_round,
                    clients=(client,),
                    kind="delta",
                    names=tuple(names),
                    update=tuple((g - s).astype(np.float32) for g, s in zip(got, sent, strict=True)),
                    params=tuple(s.astype(np.float32) for s in sent),
                    batch_size=self.batch_size,
                    local_steps=self.local_steps,
                    local_lr=self.local_lr,
                    meta={"source": "flower", "node_id": client},
                )
                self.observations.append(obs)
                if self.on_update is not None:
                    self.on_update(obs)
            aggregator = f"strategy:{type(self.inner).__name__}"
            for msg in replies:  # the wrapped strategy reads every plaintext reply to aggregate it
                if not msg.has_error():
                    self.log.record(
                        aggregator, server_round, int(msg.metadata.src_node_id), secure_aggregation=False
                    )
            return self.inner.aggregate_train(server_round, replies)  # type: ignore[no-any-return]

        def configure_evaluate(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
            return self.inner.configure_evaluate(server_round, arrays, config, grid)  # type: ignore[no-any-return]

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Any]) -> Any:
            return self.inner.aggregate_evaluate(server_round, replies)

        def summary(self) -> None:
            self.inner.summary()

    _CLASS.append(_Auditing)
    return _Auditing


# ------------------------------------------------------------------------------ deployment check


@dataclass
class DeploymentCheck:
    """What a Flower deployment does to protect the clients' updates."""

    secure_aggregation: bool
    dp: str | None  # "central", "local" or None
    details: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "secure_aggregation": self.secure_aggregation,
            "dp": self.dp,
            "details": self.details,
            "problems": self.problems,
        }


def _chain(obj: Any) -> list[Any]:
    """``obj`` and every strategy/workflow it wraps (``strategy``/``inner``/``fit_workflow`` attributes)."""
    out: list[Any] = []
    seen: set[int] = set()
    todo = [obj]
    while todo:
        o = todo.pop()
        if o is None or id(o) in seen:
            continue
        seen.add(id(o))
        out.append(o)
        todo.extend(getattr(o, a, None) for a in ("strategy", "inner", "fit_workflow"))
    return out


def check_deployment(
    *, strategy: Any = None, workflow: Any = None, client_mods: Sequence[Any] = ()
) -> DeploymentCheck:
    """Does this Flower deployment use secure aggregation (SecAgg+) and DP, and on which side?"""
    from flwr.client.mod import LocalDpMod, fixedclipping_mod, secagg_mod, secaggplus_mod
    from flwr.server.workflow import SecAggPlusWorkflow, SecAggWorkflow

    server_side = _chain(strategy) + _chain(workflow)
    server_secagg = [o for o in server_side if isinstance(o, (SecAggPlusWorkflow, SecAggWorkflow))]
    client_secagg = [m for m in client_mods if m in (secaggplus_mod, secagg_mod)]
    check = DeploymentCheck(secure_aggregation=bool(server_secagg and client_secagg), dp=None)
    if server_secagg and not client_secagg:
        check.problems.append(
            "the server runs SecAgg+ but the clients do not use secaggplus_mod: updates are not masked"
        )
    if client_secagg and not server_secagg:
        check.problems.append(
            "the clients use secaggplus_mod but the server workflow is not SecAggPlusWorkflow: the round "
            "fails or falls back to plaintext updates"
        )
    if check.secure_aggregation:
        w = server_secagg[0]
        check.details.append(
            f"{type(w).__name__}: shares {getattr(w, 'num_shares', '?')}, reconstruction threshold "
            f"{getattr(w, 'reconstruction_threshold', '?')}"
        )
    names = {type(o).__name__: o for o in server_side}
    central = [n for n in names if n.startswith("DifferentialPrivacy")]
    local = [m for m in client_mods if isinstance(m, LocalDpMod)]
    if central:
        check.dp = "central"
        o = names[central[0]]
        check.details.append(
            f"{central[0]}: noise multiplier {getattr(o, 'noise_multiplier', '?')}, clipping norm "
            f"{getattr(o, 'clipping_norm', getattr(o, 'initial_clipping_norm', '?'))}"
        )
        if "ClientSide" in central[0] and fixedclipping_mod not in client_mods:
            check.problems.append(
                f"{central[0]} expects the clients to clip (fixedclipping_mod), which they do not"
            )
        if not check.secure_aggregation:
            check.problems.append(
                "central DP adds noise to the aggregate only: without secure aggregation the server still "
                "reads every client's raw update"
            )
    if local:
        check.dp = "local" if check.dp is None else check.dp + "+local"
        m = local[0]
        check.details.append(
            f"LocalDpMod: clipping norm {getattr(m, 'clipping_norm', '?')}, sensitivity "
            f"{getattr(m, 'sensitivity', '?')}, epsilon {getattr(m, 'epsilon', '?')}, "
            f"delta {getattr(m, 'delta', '?')}"
        )
    if not check.secure_aggregation and check.dp is None:
        check.problems.append("neither secure aggregation nor DP: the server sees every client's raw update")
    return check


# ------------------------------------------------------------------------------- local transport


class LocalGrid:  # a flwr.serverapp.grid.Grid (subclassed lazily)
    """Placeholder replaced by :func:`local_grid`'s class."""


NODE_BASE = 101


@contextlib.contextmanager
def _identity(run_id: int, node_id: int) -> Iterator[None]:
    """Flower's process-wide task identity (which its ServerApp/ClientApp processes set at start-up),
    set for the duration of an in-process call and restored afterwards."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, node_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def run_local(
    strategy: Any,
    client_apps: Sequence[Any],
    initial_arrays: Any,
    *,
    num_rounds: int,
    run_id: int = 1,
    **kw: Any,
) -> Any:
    """Run a ServerApp strategy for ``num_rounds`` against ``client_apps`` in this process
    (:func:`local_grid`); returns Flower's ``Result``."""
    from flwr.common.constant import SUPERLINK_NODE_ID

    with _identity(run_id, SUPERLINK_NODE_ID):
        return strategy.start(
            local_grid(client_apps, run_id=run_id), initial_arrays, num_rounds=num_rounds, **kw
        )


def local_grid(client_apps: Sequence[Any], *, run_id: int = 1) -> Any:
    """A Flower ``Grid`` that delivers each message to ``client_apps[node]`` in this process.

    Node ids are 101..100+K (``client_apps[i]`` is node 101 + i); each node keeps its own
    ``Context`` (state persists across rounds).
    """
    from flwr.app import Context, Message, RecordDict
    from flwr.serverapp import Grid

    class _Local(Grid):
        def __init__(self) -> None:
            self._apps = {NODE_BASE + i: app for i, app in enumerate(client_apps)}
            self._contexts = {
                n: Context(run_id=run_id, node_id=n, node_config={}, state=RecordDict(), run_config={})
                for n in self._apps
            }
            self._ids = itertools.count(1)
            self._replies: dict[str, Any] = {}
            self._run: Any = None

        def set_run(self, run: Any) -> None:
            self._run = run

        @property
        def run(self) -> Any:
            return self._run

        def create_message(
            self, content: Any, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
        ) -> Any:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> Iterable[int]:
            return list(self._apps)

        def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
            ids = []
            for msg in messages:
                mid = f"m{next(self._ids)}"
                msg.metadata.__dict__["_message_id"] = mid
                node = int(msg.metadata.dst_node_id)
                with _identity(run_id, node):
                    reply = self._apps[node](msg, self._contexts[node])
                reply.metadata.__dict__["_src_node_id"] = node
                self._replies[mid] = reply
                ids.append(mid)
            return ids

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
            return [self._replies.pop(m) for m in message_ids if m in self._replies]

        def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
            return self.pull_messages(self.push_messages(messages))

    return _Local()
