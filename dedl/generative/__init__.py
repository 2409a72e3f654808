"""Part VI: generative models through differential equations.

* :mod:`dedl.generative.cnf` -- continuous normalizing flows and FFJORD (a density by the instantaneous change
  of variables);
* :mod:`dedl.generative.flow_matching` -- conditional flow matching, rectified flow and reflow, straightness;
* :mod:`dedl.generative.metrics` -- sliced Wasserstein distance for 2-D sets, Fréchet distances (digits).
"""

from dedl.generative.cnf import CNF, TRACES, standard_normal_log_prob
from dedl.generative.flow_matching import (
    GaussianPath,
    OTPath,
    VPPath,
    flow_matching_loss,
    flow_sample,
    reflow_pairs,
    straightness,
)
from dedl.generative.metrics import (
    digit_classifier,
    digit_features,
    digit_frechet_distance,
    frechet_distance,
    gaussian_statistics,
    sliced_wasserstein,
    wasserstein_1d,
)

__all__ = [
    "CNF",
    "TRACES",
    "standard_normal_log_prob",
    "GaussianPath",
    "OTPath",
    "VPPath",
    "flow_matching_loss",
    "flow_sample",
    "reflow_pairs",
    "straightness",
    "digit_classifier",
    "digit_features",
    "digit_frechet_distance",
    "frechet_distance",
    "gaussian_statistics",
    "sliced_wasserstein",
    "wasserstein_1d",
]
