"""Part VI: generative models through differential equations.

* :mod:`dedl.generative.cnf` -- continuous normalizing flows and FFJORD (a density by the instantaneous change
  of variables);
* :mod:`dedl.generative.flow_matching` -- conditional flow matching, rectified flow and reflow, straightness;
* :mod:`dedl.generative.metrics` -- sliced Wasserstein distance for 2-D sets, Fréchet distances (digits);
* :mod:`dedl.generative.score_sde` -- score-based models as SDEs (VP, VE, sub-VP), denoising score matching,
  score networks, exact likelihoods through the probability-flow ODE;
* :mod:`dedl.generative.samplers` -- samplers as SDE/ODE solvers (Euler–Maruyama, predictor–corrector,
  probability flow, DDPM, DDIM, DPM-Solver, Heun).
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
from dedl.generative.samplers import (
    Samples,
    ddim_sampler,
    ddpm_sampler,
    dpm_solver_sampler,
    euler_maruyama_sampler,
    heun_sampler,
    pc_sampler,
    probability_flow_sampler,
)
from dedl.generative.score_sde import (
    SDE,
    VESDE,
    VPSDE,
    WEIGHTINGS,
    LogLikelihood,
    ReverseSDE,
    ScoreMLP,
    ScoreUNet,
    SubVPSDE,
    bits_per_dim,
    denoising_score_matching_loss,
    gaussian_score,
    ode_log_likelihood,
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
    "SDE",
    "VPSDE",
    "VESDE",
    "SubVPSDE",
    "ReverseSDE",
    "WEIGHTINGS",
    "denoising_score_matching_loss",
    "gaussian_score",
    "ScoreMLP",
    "ScoreUNet",
    "LogLikelihood",
    "ode_log_likelihood",
    "bits_per_dim",
    "Samples",
    "euler_maruyama_sampler",
    "pc_sampler",
    "probability_flow_sampler",
    "ddpm_sampler",
    "ddim_sampler",
    "dpm_solver_sampler",
    "heun_sampler",
]
