"""Attacks, registered under dotted names (``inversion.whitebox``, ``membership.lira``, ...).

>>> import invguard as ig
>>> attack = ig.attacks.get("inversion.whitebox")(steps=200)
>>> result = attack.run(target, splits)          # doctest: +SKIP
"""

from invguard.attacks.base import ATTACKS, Attack, AttackOutput, RunContext

__all__ = ["ATTACKS", "Attack", "AttackOutput", "RunContext", "get", "names"]


def get(name: str) -> type[Attack]:
    """The attack class registered under ``name``."""
    return ATTACKS.get(name)


def names() -> list[str]:
    return ATTACKS.names()
