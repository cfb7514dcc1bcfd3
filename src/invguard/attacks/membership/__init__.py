"""Membership inference: was this record in the model's training set?

Registered attacks: ``membership.threshold`` (loss, confidence, entropy, modified entropy),
``membership.shadow`` (Shokri et al. 2017), ``membership.lira`` (Carlini et al. 2022),
``membership.rmia`` (Zarifzadeh et al. 2024) and ``membership.label_only`` (Choquette-Choo et al.
2021). Every one scores the members and non-members splits and reports the same metrics.
"""

import invguard.judges.membership  # noqa: F401  (registers the judge of MembershipScores)
from invguard.attacks.membership import label_only, lira, rmia, shadow, threshold

__all__ = ["label_only", "lira", "rmia", "shadow", "threshold"]
