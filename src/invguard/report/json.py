"""The versioned results document: everything downstream (gates, HTML, JUnit, Markdown, history)
reads only this JSON.

Schema: ``invguard/schemas/results.schema.json`` (JSON Schema 2020-12), published with the package.
``validate`` checks a document against it with the ``jsonschema`` package.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError

RESULTS_FORMAT = "invguard-audit-results"
RESULTS_VERSION = "1.1"


def schema() -> dict[str, Any]:
    text = resources.files("invguard").joinpath("schemas/results.schema.json").read_text()
    out: dict[str, Any] = json.loads(text)
    return out


# ---------------------------------------------------------------------------- read / write / validate
def _json_default(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(x)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def dumps(results: dict[str, Any]) -> str:
    return json.dumps(_finite(results), indent=1, default=_json_default, allow_nan=False)


def write(results: dict[str, Any], path: Path) -> Path:
    from invguard.storage import atomic_write

    atomic_write(path, dumps(results).encode())
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a results file written by ``invguard audit``; refuse anything else with a clear message."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: results file not found")
    try:
        doc = json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise ConfigError(f"{p}: not an invguard audit results file (expected format {RESULTS_FORMAT!r})")
    major = str(doc.get("schema_version", "")).split(".")[0]
    if major != RESULTS_VERSION.split(".")[0]:
        raise ConfigError(
            f"{p}: results schema version {doc.get('schema_version')!r} is not readable by this invguard "
            f"(reads {RESULTS_VERSION.split('.')[0]}.x)"
        )
    problems = validate(doc)
    if problems:
        raise ConfigError(
            f"{p}: does not match the results schema:\n" + "\n".join(f"  - {m}" for m in problems[:20])
        )
    return doc


def validate(doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` departs from the published schema (empty when it conforms)."""
    import jsonschema

    v = jsonschema.Draft202012Validator(schema())
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in v.iter_errors(doc)]
