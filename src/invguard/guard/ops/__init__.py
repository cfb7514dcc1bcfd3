"""Operations files that ship with the guard: ``invguard ops export DIR`` writes

- ``prometheus/invguard-rules.yml``: recording and alerting rules (:mod:`.rules`), generated from the
  guard config's SLOs, every alert with a ``runbook_url``;
- ``grafana/{executive,oncall,debug}.json``: three dashboards generated with grafana-foundation-sdk
  (:mod:`.dashboards`), templated by data source, model, version and role;
- ``runbooks/*.md``: what on-call does for each alert, with the exact commands (the same files as
  ``docs/runbooks/`` of the repository).

Each file is written to a temporary name and renamed, so a failed export leaves no half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["RUNBOOKS", "export", "runbook_names"]


def runbook_names() -> list[str]:
    return sorted(
        p.name[:-3]
        for p in resources.files("invguard.guard.ops").joinpath("runbooks").iterdir()
        if p.name.endswith(".md") and p.name != "README.md"
    )


RUNBOOKS = (
    "audit-log-integrity-failure",
    "canary-rolled-back",
    "confirmed-leak",
    "detector-false-positive",
    "incident-overdue",
    "key-compromise",
    "suspected-inversion-probe",
)


def _write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(
    out_dir: str | Path,
    *,
    slos: Sequence[Any] = (),
    runbook_base: str | None = None,
) -> list[Path]:
    """Write the rules, dashboards and runbooks under ``out_dir``; returns the files written.

    ``runbook_base`` is where the runbooks are served (an https URL of your wiki or repository);
    by default the ``file://`` URL of the exported ``runbooks/`` folder."""
    import json

    import yaml

    from invguard.guard.ops.dashboards import DASHBOARDS, build_dashboard
    from invguard.guard.ops.rules import build_rules

    out = Path(out_dir)
    base = runbook_base or (out.resolve() / "runbooks").as_uri()
    written = []
    rules = build_rules(slos, runbook_base=base)
    p = out / "prometheus" / "invguard-rules.yml"
    _write(p, yaml.safe_dump(rules, sort_keys=False, width=1000))
    written.append(p)
    for name in DASHBOARDS:
        p = out / "grafana" / f"{name}.json"
        _write(p, json.dumps(build_dashboard(name), indent=2, sort_keys=True) + "\n")
        written.append(p)
    src = resources.files("invguard.guard.ops").joinpath("runbooks")
    for f in sorted(src.iterdir(), key=lambda x: x.name):
        if f.name.endswith(".md"):
            p = out / "runbooks" / f.name
            _write(p, f.read_text())
            written.append(p)
    return written
