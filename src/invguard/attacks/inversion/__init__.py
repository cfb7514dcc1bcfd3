"""Model-inversion attacks: reconstruct what a model learned about each class.

``inversion.whitebox`` (gradients), ``inversion.blackbox`` (scores, NES), ``inversion.generative``
(a public-data generator's latent space, then refinement) and ``inversion.label_only`` (BREP-MI).
:func:`invguard.attacks.inversion.sweep.exposure_sweep` runs an attack across access levels and
output policies.
"""

import invguard.judges.inversion  # noqa: F401  (registers the judge of Reconstructions)
from invguard.attacks.inversion.blackbox import BlackBoxInversion
from invguard.attacks.inversion.common import InversionAttack
from invguard.attacks.inversion.generative import GenerativeInversion
from invguard.attacks.inversion.label_only import LabelOnlyInversion
from invguard.attacks.inversion.whitebox import WhiteBoxInversion

__all__ = [
    "BlackBoxInversion",
    "GenerativeInversion",
    "InversionAttack",
    "LabelOnlyInversion",
    "WhiteBoxInversion",
]
