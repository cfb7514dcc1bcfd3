"""Judges: evidence in, ``AttackOutput`` out (baselines, the independent evaluator, controls, CIs,
findings). One judge per evidence type, registered with ``register_judge``; each family's judge
module registers its judges when the family is imported."""

from invguard.judges.registry import judge_for, judged_types, register_judge

__all__ = ["judge_for", "judged_types", "register_judge"]
