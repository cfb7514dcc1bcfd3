"""Volume and spread: what similarity cannot see.

- ``rows``: rows this UTC hour against the client's own baseline: flagged at ``rate_factor`` times
  its mean over its earlier hours (at least ``rows_per_hour``), or above ``rows_per_hour`` before
  it has a baseline.
- ``distinct``: distinct inputs per client per UTC day above ``distinct_per_day``: a membership
  sweep queries many different real records once each, which the similarity detectors rightly
  find natural.
- ``keys``: ``linked_keys`` or more keys whose queries match each other (each link at least as
  many matched queries as the fingerprint detector's threshold) (one actor behind several
  keys; the fingerprint index is global, so the links cross accounts).

The statistic is the largest of the three ratios to their thresholds (flagged at >= 1).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from invguard.guard.detect.base import DETECTORS, Detector, Observation


def linked_clients(obs: Observation, min_matches: float) -> list[str]:
    """Clients with at least ``min_matches`` queries matching this client's (the fingerprint
    detector's own threshold: two clients are linked by as much similarity as flags one client;
    natural traffic does share the odd popular image across clients)."""
    return sorted(k for k, n in obs.exchange.linked.items() if n >= min_matches)


@DETECTORS.register("volume")
class VolumeDetector(Detector):
    name: ClassVar[str] = "volume"
    thresholds: ClassVar[tuple[str, ...]] = (
        "volume.ratio",
        "volume.rows_per_hour",
        "volume.distinct_per_day",
    )

    def ratios(self, obs: Observation) -> dict[str, float]:
        x, v = obs.exchange, self.values
        out: dict[str, float] = {}
        floor = v["volume.rows_per_hour"]
        if x.rows_per_hour_before:
            base = float(np.mean(x.rows_per_hour_before))
            out["rows"] = x.rows_this_hour / max(floor, self.cfg.rate_factor * base)
        else:
            out["rows"] = x.rows_this_hour / floor
        out["distinct"] = x.distinct_today / v["volume.distinct_per_day"]
        out["keys"] = (
            len(linked_clients(obs, self.values["fingerprint.matches"])) + 1
        ) / self.cfg.linked_keys
        return out

    def statistic(self, obs: Observation) -> float | None:
        return max(self.ratios(obs).values())

    def check(self, obs: Observation) -> Any:
        f = super().check(obs)
        return f if f is None else type(f)(f.detector, f.score, self.values["volume.ratio"], f.evidence)

    def evidence(self, obs: Observation) -> dict[str, Any]:
        r = self.ratios(obs)
        x = obs.exchange
        return {
            "reason": max(r, key=lambda k: r[k]),
            "rows_this_hour": x.rows_this_hour,
            "distinct_today": x.distinct_today,
            "linked": linked_clients(obs, self.values["fingerprint.matches"]),
        }
