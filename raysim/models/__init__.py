"""Neural models: the latent operator (encoder -> processor -> decoder) and the diffusion residual corrector."""

from raysim.models.build import (
    build_corrector,
    build_operator,
    count_params,
    flops_per_sample,
    load_model_state,
    model_state,
)
from raysim.models.diffusion import DiffusionCorrector, noise_schedule
from raysim.models.operator import LatentOperator

__all__ = [
    "DiffusionCorrector",
    "LatentOperator",
    "build_corrector",
    "build_operator",
    "count_params",
    "flops_per_sample",
    "load_model_state",
    "model_state",
    "noise_schedule",
]
