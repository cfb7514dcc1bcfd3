"""What an output policy costs the model's users (pure functions on arrays)."""

from __future__ import annotations

from typing import Any

import numpy as np

from invguard.core.target import Prediction


def exposure_utility(y: np.ndarray, raw: Prediction, exposed: Prediction) -> dict[str, Any]:
    """Utility of an exposure on labelled held-out records.

    ``utility``: accuracy of the labels the exposure returns; ``baseline_utility``: the unrestricted
    model's accuracy; ``argmax_agreement``: how often the top entry of what the exposure *shows*
    (its scores or logits, else its label) is the unrestricted model's label. Labels are always the
    model's own, so a policy that noises scores shows its cost here, not in ``utility``.
    """
    y = np.asarray(y)
    shown_values = exposed.scores if exposed.scores is not None else exposed.logits
    shown = exposed.labels if shown_values is None else np.argmax(shown_values, axis=1)
    return {
        "utility": float(np.mean(exposed.labels == y)),
        "baseline_utility": float(np.mean(raw.labels == y)),
        "argmax_agreement": float(np.mean(shown == raw.labels)),
        "utility_records": int(y.shape[0]),
    }
