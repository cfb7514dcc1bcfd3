"""Attribute inference: which sensitive value does a record hold, given the model's answers?

Registered attacks: ``attribute.map`` (Fredrikson-style MAP inference), ``attribute.baseline`` (the
no-model attacker it is judged against) and ``hybrid.membership_attribute`` (membership inference
picks the most exposed records, then attribute inference on tabular data or a seeded inversion of a
hidden image region on images).
"""

import invguard.judges.attribute
import invguard.judges.hybrid  # noqa: F401
from invguard.attacks.attribute import baseline, hybrid, inference

__all__ = ["baseline", "hybrid", "inference"]
