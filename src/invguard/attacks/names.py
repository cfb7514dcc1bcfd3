"""The names of the built-in attacks and the module that registers each, known without importing them.

A config's attack names are checked against this table (and the attacks plugins have already
registered) before any implementation, and so torch, is imported: a typo is reported at once.
``tests/unit/test_attack_names.py`` keeps it equal to the registry, so a new attack adds its line.
"""

from __future__ import annotations

import difflib

BUILTIN: dict[str, str] = {
    "attribute.baseline": "invguard.attacks.attribute.baseline",
    "attribute.map": "invguard.attacks.attribute.inference",
    "gradient.analytic": "invguard.attacks.gradient.analytic",
    "gradient.dlg": "invguard.attacks.gradient.dlg",
    "gradient.inverting": "invguard.attacks.gradient.inverting",
    "gradient.labels": "invguard.attacks.gradient.labels",
    "hybrid.membership_attribute": "invguard.attacks.attribute.hybrid",
    "inversion.blackbox": "invguard.attacks.inversion.blackbox",
    "inversion.generative": "invguard.attacks.inversion.generative",
    "inversion.label_only": "invguard.attacks.inversion.label_only",
    "inversion.whitebox": "invguard.attacks.inversion.whitebox",
    "membership.label_only": "invguard.attacks.membership.label_only",
    "membership.lira": "invguard.attacks.membership.lira",
    "membership.rmia": "invguard.attacks.membership.rmia",
    "membership.shadow": "invguard.attacks.membership.shadow",
    "membership.threshold": "invguard.attacks.membership.threshold",
    "text.exposure": "invguard.attacks.text.exposure",
    "text.exposure_generations": "invguard.attacks.text.exposure",
    "text.extraction": "invguard.attacks.text.extraction",
    "text.membership": "invguard.attacks.text.membership",
    "text.membership_reference": "invguard.attacks.text.membership",
}


def known_names() -> list[str]:
    """Built-in names and those already registered (by plugins), without importing any family."""
    from invguard.attacks.base import ATTACKS

    return sorted(set(BUILTIN) | set(ATTACKS.loaded_names()))


def check_name(name: str) -> str | None:
    """None when ``name`` is a known attack, else the message the registry would give."""
    names = known_names()
    if name in names:
        return None
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown attack {name!r}{hint} (known: {', '.join(names)})"
