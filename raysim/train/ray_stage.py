"""Run one trial (both stages and evaluation) under a Ray Train V2 TorchTrainer."""

from __future__ import annotations

from typing import Any

from raysim.config import RunConfig, to_dict

# Train's controller blocks each report for one health-check interval (2 s by default); set for
# every Ray process through ray.init's runtime_env (see raysim.tune.cluster.init_ray).
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def scaling_config(cfg: RunConfig):
    """The TorchTrainer's ScalingConfig from the config's resources."""
    from ray.train import ScalingConfig

    r = cfg.resources
    kwargs: dict[str, Any] = {
        "num_workers": r.num_workers,
        "use_gpu": r.use_gpu,
        "resources_per_worker": {"CPU": r.cpus_per_worker, **({"GPU": 1} if r.use_gpu else {})},
    }
    if r.accelerator_type:
        kwargs["accelerator_type"] = r.accelerator_type
    return ScalingConfig(**kwargs)


def _trainer_class():
    """TorchTrainer without the Ray Data actor it starts even when given no datasets.

    Ray 2.60's trainer always creates a DatasetManager actor (a process of its own) and waits for it
    before the training function starts: 2-6 s of every fit on 2 cores, for datasets raysim never
    passes (its loaders read HDF5 in the worker). Where Ray's internals differ, the stock trainer.
    """
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks import DatasetsCallback
    except ImportError:
        return TorchTrainer
    if not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return LeanTorchTrainer


def fit_trial(
    cfg: RunConfig,
    *,
    run_name: str,
    storage_path: str,
    wandb: dict[str, dict[str, Any] | None] | None = None,
    callbacks: list[Any] | None = None,
    max_failures: int = 2,
):
    """Fit one trial; a second call with the same `run_name` resumes that run from its latest checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig

    from raysim.train.pipeline import trial_train_fn_per_worker

    trainer = _trainer_class()(
        train_loop_per_worker=trial_train_fn_per_worker,
        train_loop_config={"run": to_dict(cfg), "wandb": wandb},
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.resources.use_gpu and not cfg.resources.force_cpu else "gloo"),
        run_config=TrainRunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),  # a lost worker resumes from its checkpoint
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks or None,
        ),
    )
    return trainer.fit()
