import numpy as np

from invguard.metrics import bootstrap_metric, proportion_metric


def test_bootstrap_ci_contains_value_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(20) < 0.5
    big = rng.random(2000) < 0.5
    m_small = bootstrap_metric(np.mean, small)
    m_big = bootstrap_metric(np.mean, big)
    assert m_small.low <= m_small.value <= m_small.high
    assert (m_big.high - m_big.low) < (m_small.high - m_small.low)


def test_wilson_interval_at_the_edges():
    m = proportion_metric(10, 10)
    assert m.value == 1.0 and m.high == 1.0 and 0.65 < m.low < 0.75
    m0 = proportion_metric(0, 50)
    assert m0.low == 0.0 and 0.0 < m0.high < 0.1
