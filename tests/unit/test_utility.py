import numpy as np

from invguard import policies
from invguard.core import Access, Prediction
from invguard.metrics import exposure_utility


def test_exposure_utility_reads_what_the_policy_shows():
    logits = np.array([[3.0, 2.9, 0.0], [0.0, 4.0, 1.0], [1.0, 0.0, 5.0], [2.0, 1.9, 0.0]])
    raw = Prediction.from_logits(logits, Access.LOGITS)
    y = np.array([0, 1, 2, 1])
    label_only = exposure_utility(y, raw, policies.LabelOnly().apply(raw))
    assert label_only == {
        "utility": 0.75,
        "baseline_utility": 0.75,
        "argmax_agreement": 1.0,
        "utility_records": 4,
    }
    # scores noised enough to flip the close calls: the labels (and utility) stay, the shown argmax does not
    noised = exposure_utility(y, raw, policies.Noise(0.5, seed=1).apply(raw))
    assert noised["utility"] == 0.75 and noised["argmax_agreement"] < 1.0
