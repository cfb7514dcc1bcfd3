"""The one way a YAML config file is read and validated (audit, inventory and guard configs).

Every problem is reported at once, each with its field path and the line it is on::

    audit.yaml: 2 problems in the audit config
      - attacks[0].name (line 7): unknown attack 'inversion.whitebx'; did you mean ...
      - gates[1] (line 12): ...

A file that is missing or not valid YAML is one ``ConfigError`` naming the file (and the line and
column of the YAML error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from invguard.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

__all__ = ["FieldProblems", "line_map", "problems", "read_yaml", "validate"]


class FieldProblems(ValueError):
    """Raised by a model validator that checks fields against each other: every problem found,
    each at its own field path (relative to the model validated), so that :func:`problems` reports
    each at its own line instead of at the model's."""

    def __init__(self, items: list[tuple[tuple[Any, ...], str]]) -> None:
        self.items = items
        super().__init__("; ".join(f"{path_text(loc)}: {msg}" for loc, msg in items))


def expand(err: Any) -> list[tuple[tuple[Any, ...], str]]:
    """``(loc, message)`` of one pydantic error; a :class:`FieldProblems` becomes one per field."""
    loc = tuple(err["loc"])
    exc = (err.get("ctx") or {}).get("error")
    if isinstance(exc, FieldProblems):
        return [((*loc, *sub), msg) for sub, msg in exc.items]
    return [(loc, err["msg"])]


def read_yaml(path: str | Path, what: str) -> tuple[Any, str]:
    """(parsed document, text) of the YAML file at ``path``; ``what`` names it in errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    text = p.read_text()
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{p}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None


def validate(model: type[M], raw: Any, *, source: str, what: str, text: str | None = None) -> M:
    """``raw`` validated as ``model``; every problem at once, with field paths and (given the YAML
    ``text``) line numbers, in one ``ConfigError``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the {what} must be a YAML mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        probs = problems(e, line_map(text) if text is not None else {})
        head = f"{source}: {len(probs)} problem{'s' if len(probs) != 1 else ''} in the {what}"
        raise ConfigError(head + "\n" + "\n".join(f"  - {p}" for p in probs)) from None


def line_map(text: str) -> dict[tuple[Any, ...], int]:
    """``(path) -> 1-based line`` for every node of the YAML document."""
    lines: dict[tuple[Any, ...], int] = {}
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return lines

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value
                lines[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, i))

    walk(node, ())
    return lines


def path_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def line_of(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def problems(e: ValidationError, lines: dict[tuple[Any, ...], int]) -> list[str]:
    """One line per pydantic error: ``field.path (line N): message``."""
    out = []
    for err in e.errors():
        for raw_loc, raw_msg in expand(err):
            # pydantic names the Literal/union branch tried in the loc; keep only real field names/indices
            loc = tuple(
                p for p in raw_loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
            )
            msg = raw_msg
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling)"
            line = line_of(loc, lines)
            out.append(path_text(loc) + (f" (line {line})" if line else "") + f": {msg}")
    return out
