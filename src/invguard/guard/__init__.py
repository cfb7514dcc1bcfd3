"""The guard: a gateway in front of a model (``invguard serve guard.yaml``).

API keys and roles (:mod:`.auth`), GCRA rate limits and query budgets in memory or Redis
(:mod:`.ratelimit`), output policies from :mod:`invguard.policies`, a tamper-evident audit log
(:mod:`.auditlog`), Prometheus metrics (:mod:`.metrics`) and in-process or upstream models
(:mod:`.upstream`). Torch is imported only when a torch model is loaded.
"""

from invguard.guard.config import GuardConfig, from_dict, load

__all__ = ["GuardConfig", "build_app", "from_dict", "load"]


def build_app(cfg: GuardConfig, **kw: object) -> object:
    """The guard's ASGI app for a config; see :func:`invguard.guard.app.build_app`."""
    from invguard.guard.app import build_app as _build

    return _build(cfg, **kw)
