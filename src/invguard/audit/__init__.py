"""The audit: one config, every attack, a report people read and a gate CI trusts.

>>> import invguard as ig
>>> run = ig.audit.run("audit.yaml")          # doctest: +SKIP
>>> run.exit_code, run.paths["html"]          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from invguard.audit.config import AuditConfig, load_config, parse_config

if TYPE_CHECKING:
    from invguard.audit.runner import AuditRun

__all__ = ["AuditConfig", "AuditRun", "load_config", "parse_config", "run"]


def run(config: Any, **kw: Any) -> AuditRun:
    """Run the audit a config (path or :class:`AuditConfig`) describes; see ``invguard.audit.runner``."""
    from invguard.audit.runner import run_audit

    return run_audit(config, **kw)


def __getattr__(name: str) -> Any:
    if name == "AuditRun":
        from invguard.audit.runner import AuditRun

        return AuditRun
    raise AttributeError(name)
