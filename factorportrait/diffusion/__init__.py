"""Rectified-flow training objective, guidance and sampling (DESIGN "Diffusion").

- :mod:`~factorportrait.diffusion.flow_matching`: shift, noising, velocity target, loss,
  condition dropout and the null conditions shared with guidance.
- :mod:`~factorportrait.diffusion.guidance`: CFG modes as per-step branch weights, including
  DeX-Portrait's progressive hybrid CFG (Eq. 5).
- :mod:`~factorportrait.diffusion.sampler`: Wan's sigma schedule and the Euler sampler.
"""

from factorportrait.diffusion.flow_matching import (CONDITION_NAMES, DEFAULT_SHIFT,
                                                    ConditionDropout, add_noise,
                                                    flow_matching_loss, null_conditions,
                                                    sample_training_sigmas, shift_sigma,
                                                    timestep_from_sigma, velocity_target)
from factorportrait.diffusion.guidance import (BRANCH_DROPS, GUIDANCE_MODES, Guidance,
                                               StepGuidance, branch_conditions, combine,
                                               guidance_weights, progressive_expression_blend)
from factorportrait.diffusion.sampler import (concat_conditions, flow_sigmas, initial_noise,
                                              latent_shape, predict_branches, sample)

__all__ = [
    "BRANCH_DROPS", "CONDITION_NAMES", "DEFAULT_SHIFT", "GUIDANCE_MODES", "add_noise",
    "branch_conditions", "combine", "concat_conditions", "ConditionDropout", "flow_matching_loss",
    "flow_sigmas", "Guidance", "guidance_weights", "initial_noise", "latent_shape",
    "null_conditions", "predict_branches", "progressive_expression_blend", "sample",
    "sample_training_sigmas", "shift_sigma", "StepGuidance", "timestep_from_sigma",
    "velocity_target",
]
