"""The ablation engine on Ray Tune: matrix -> param_space, the per-trial trainable, callbacks."""

from raysim.tune.study import TRIAL_RESOURCES, init_ray, param_space, run_study, trial_resources
from raysim.tune.trial import trainable

__all__ = ["TRIAL_RESOURCES", "init_ray", "param_space", "run_study", "trainable", "trial_resources"]
