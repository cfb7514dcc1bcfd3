"""Language-model leakage: canary exposure, training-text extraction and text membership.

``text.exposure`` / ``text.exposure_generations`` (Carlini et al. 2019, "The Secret Sharer"),
``text.extraction`` (Carlini et al. 2021), ``text.membership`` (loss, zlib, Min-K%) and
``text.membership_reference`` (reference-LM calibration). They attack an
:class:`invguard.targets.lm.TextTarget` on :class:`invguard.data.text.TextSplits`; their evidence is
judged in :mod:`invguard.judges.text`.
"""

from invguard.attacks.text import exposure, extraction, membership

__all__ = ["exposure", "extraction", "membership"]
