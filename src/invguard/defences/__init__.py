"""Training-time defences, measured: the epsilon / utility / leakage / cost trade-off
(:mod:`invguard.defences.tradeoff`), the one-run empirical epsilon audit of a DP claim
(:mod:`invguard.defences.one_run`) and leakage checks for synthetic data
(:mod:`invguard.defences.synth`). Modules load torch only when they train."""
