"""`raysim run`: an ablation matrix as a Ray Tune grid, on an embedded local Ray or a cluster."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

from raysim.analysis import storage
from raysim.config import (
    MatrixConfig,
    RunConfig,
    expand_arms,
    load_matrix,
    profile_seeds,
    to_dict,
)
from raysim.errors import UserError
from raysim.train.ray_stage import TRAIN_ENV

# The trial function only drives trainers; its workers hold the CPUs. A fractional CPU per trial would leave
# 1.98 of 2 CPUs, and two 1-CPU stage workers could never run together: trials take a custom resource instead.
TRIAL_SLOT = "raysim_trial_slot"
TRIAL_RESOURCES = {TRIAL_SLOT: 1}


def param_space(
    matrix: MatrixConfig,
    profile: str | None = None,
    sets: list[str] | None = None,
    study_dir: str | None = None,
) -> dict[str, Any]:
    """The Tune param_space of a matrix: a grid over arms x seeds, every arm's resolved config carried along."""
    from ray import tune

    profile = profile or matrix.default_profile
    arms = expand_arms(matrix, profile, sets)
    arm_configs = {}
    for name, cfg in arms.items():
        data = to_dict(cfg)
        if data["data"]["path"]:
            data["data"]["path"] = str(Path(data["data"]["path"]).expanduser().resolve())
        arm_configs[name] = data
    return {
        "arm": tune.grid_search(list(arms)),
        "seed": tune.grid_search(profile_seeds(matrix, profile)),
        "arm_configs": json.dumps(arm_configs),  # one opaque value: Tune would flatten a dict into 500 columns
        "profile": profile,
        "study_name": matrix.name,
        "study_tags": list(matrix.tags),
        "study_dir": study_dir or default_study_dir(matrix, profile),
    }


def default_study_dir(matrix: MatrixConfig, profile: str) -> str:
    """`results/<study>-<profile>`, absolute."""
    return str(Path("results", f"{matrix.name}-{profile}").resolve())


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (ray job submit / ray submit), else start an embedded one."""
    import ray

    os.environ.update(TRAIN_ENV)
    # per-epoch stage results carry losses; the study metrics arrive with the trial's final report
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if "WANDB_API_KEY" not in os.environ:
        os.environ.setdefault("WANDB_MODE", "offline")
    env = {**TRAIN_ENV, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_SILENT": "true"}
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": env}, log_to_driver=True)
        return
    # Train's placement-group cleaner finds the dashboard by scanning for Ray instances and gives up when
    # several run on one machine (leaking the stage's resources): name ours explicitly.
    port = _free_port()
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=num_cpus, resources={TRIAL_SLOT: 1000}, runtime_env={"env_vars": env},
             dashboard_host="127.0.0.1", dashboard_port=port, include_dashboard=True, log_to_driver=True)


def trial_resources() -> dict[str, float]:
    """What a trial driver asks for on the current cluster: the head's resource, our slot, or a sliver of CPU."""
    import ray

    available = ray.cluster_resources()
    if available.get("head"):  # cluster.yaml: keeps trial drivers on the CPU head, off the A100 nodes
        return {"head": 0.001}
    if available.get(TRIAL_SLOT):
        return dict(TRIAL_RESOURCES)
    return {"CPU": 0.01}  # a foreign cluster: a sliver of CPU (leaves one CPU fewer for workers)


def worker_bundle(cfg: RunConfig) -> dict[str, float]:
    """What one trainer worker of a trial asks a node for."""
    r = cfg.resources
    bundle = {"CPU": float(r.cpus_per_worker)}
    if r.use_gpu:
        bundle["GPU"] = 1.0
    if r.accelerator_type:
        bundle[f"accelerator_type:{r.accelerator_type}"] = 0.001
    return bundle


def _workers_that_fit(bundle: dict[str, float], nodes: list[dict[str, float]]) -> int:
    return sum(min(int(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items()) for node in nodes)


def autoscaler_can_add_nodes() -> bool:
    """Whether this cluster runs an autoscaler with node types to launch (not the read-only one every head has)."""
    import ray._raylet
    from ray.experimental.internal_kv import _internal_kv_get

    if _internal_kv_get(ray._raylet.GCS_AUTOSCALER_V2_ENABLED_KEY) == b"1":
        return True
    status = _internal_kv_get("__autoscaling_status")
    if not status:
        return False
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    # the read-only provider names each node's type after the node itself: nothing it could launch
    return any(kind != f"node_{node}" for node, kind in mapping.items())


def check_resources(arms: dict[str, RunConfig], file: str) -> None:
    """Fail fast when no node can hold a trial's trainer workers and no autoscaler can add one.

    Ray Train would otherwise wait for the workers forever (RAY_NOTES.md: V2 retries forever).
    """
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    missing = {name: cfg for name, cfg in arms.items()
               if _workers_that_fit(worker_bundle(cfg), nodes) < cfg.resources.num_workers}
    if not missing or autoscaler_can_add_nodes():
        return
    name, cfg = next(iter(missing.items()))
    r = cfg.resources
    have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU") or k.startswith("accelerator")}
    if r.use_gpu and not any(n.get("GPU") for n in nodes):
        field, why = "resources.use_gpu", "asks for a GPU"
    elif r.accelerator_type and not any(n.get(f"accelerator_type:{r.accelerator_type}") for n in nodes):
        field, why = "resources.accelerator_type", f"asks for accelerator_type {r.accelerator_type}"
    else:
        field, why = "resources.num_workers", f"asks for {r.num_workers} x {worker_bundle(cfg)}"
    raise UserError(f"arm {name} {why}, which no node of this Ray cluster has ({have}) and no autoscaler can "
                    "add; it would wait forever", file=file, field=field)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def max_concurrent(matrix: MatrixConfig, profile: str, arms: dict[str, RunConfig]) -> int:
    """Trials whose trainer workers the cluster can actually hold at once (never a deadlock on 2 CPUs)."""
    import ray

    total = ray.cluster_resources()
    limits = []
    any_cfg = next(iter(arms.values()))
    r = any_cfg.resources
    if r.use_gpu:
        limits.append(int(total.get("GPU", 0) // r.num_workers) or matrix.profiles[profile].max_concurrent_trials or 1)
    else:
        limits.append(max(1, int(total.get("CPU", 1) // (r.num_workers * r.cpus_per_worker))))
    cap = matrix.profiles[profile].max_concurrent_trials
    if cap:
        limits.append(cap)
    return max(1, min(limits))


def _claim_storage(study_dir: str, matrix: MatrixConfig, profile: str, resume: bool) -> bool:
    """Refuse a folder holding another study (or this one, without --resume); True when study.json is due."""
    path = storage.join(study_dir, "study.json")
    if storage.exists(path):
        try:
            existing = storage.read_json(path)
        except ValueError as exc:
            raise UserError(f"holds a study.json that does not parse ({exc}); choose another --storage",
                            file=study_dir, field="--storage") from None
        if existing.get("name") != matrix.name or existing.get("profile") != profile:
            raise UserError(f"holds a different study ({existing.get('name')}, {existing.get('profile')}); "
                            "choose another --storage", file=study_dir, field="--storage")
        if not resume:
            raise UserError(
                f"already holds study {existing.get('name')} ({existing.get('profile')}); "
                "pass --resume to continue it or --storage for a new folder",
                file=study_dir, field="--storage")
        return False
    if resume:
        raise UserError("no study to resume here", file=study_dir, field="--resume")
    return True


def _write_study_json(study_dir: str, matrix: MatrixConfig, profile: str) -> None:
    storage.write_json_atomic(storage.join(study_dir, "study.json"), {
        "name": matrix.name, "matrix": to_dict(matrix), "profile": profile,
        "seeds": profile_seeds(matrix, profile), "arms": list(matrix.arms),
        "baseline_arms": [name for name, arm in matrix.arms.items() if arm.baseline],  # the report marks them
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })


def run_study(
    matrix_path: str,
    profile: str | None = None,
    storage_uri: str | None = None,
    resume: bool = False,
    dry_run: bool = False,
    sets: list[str] | None = None,
) -> int:
    """Run (or resume, or only plan) a whole study; prints the hypothesis table and the report path."""
    matrix = load_matrix(matrix_path)
    profile = profile or matrix.default_profile
    arms = expand_arms(matrix, profile, sets)
    study_dir = storage_uri or default_study_dir(matrix, profile)
    if not storage.is_uri(study_dir):
        study_dir = str(Path(study_dir).resolve())
    if dry_run:
        from raysim.tune.plan import print_plan

        print_plan(matrix, profile, arms, study_dir)
        return 0
    fresh = _claim_storage(study_dir, matrix, profile, resume)
    init_ray()
    check_resources(arms, matrix_path)  # a trial no node can ever hold would wait forever
    _prepare_data(arms)  # before anything is written: a data problem leaves the folder untouched
    if fresh:
        _write_study_json(study_dir, matrix, profile)
    from ray import tune

    from raysim.tune.callbacks import StudyCallback
    from raysim.tune.trial import trainable

    trainable_with_resources = tune.with_resources(trainable, trial_resources())
    callback = StudyCallback(study_dir, matrix)
    experiment = storage.join(study_dir, "tune")
    if resume and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable_with_resources, resume_errored=True)
    else:
        space = param_space(matrix, profile, sets, study_dir)
        tuner = tune.Tuner(
            trainable_with_resources,
            param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent(matrix, profile, arms)),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=study_dir,
                callbacks=[callback],
                failure_config=tune.FailureConfig(max_failures=1),
                progress_reporter=_reporter(matrix),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    errors = [r for r in grid if r.error]
    report_path = callback.finish()  # a restored tuner runs its own unpickled copy of the callback
    print(callback.table())
    print(f"report: {report_path}")
    if errors:  # the study ran and reported; exit 1 tells a script or job it is not a clean one
        print(f"{len(errors)} trial(s) failed; see the report", file=sys.stderr)
        return 1
    return 0


def _prepare_data(arms: dict[str, RunConfig]) -> None:
    """Generate each distinct cache data file once, before any trial starts (workers then find it)."""
    from raysim.train.common import data_file, ensure_data

    seen = set()
    for cfg in arms.values():
        path = data_file(cfg.data)
        if path not in seen and not cfg.resources.use_gpu:
            seen.add(path)
            if not path.is_file():
                print(f"generating {path.name} ...", flush=True)
            ensure_data(cfg.data)


def _reporter(matrix: MatrixConfig):
    from ray.tune import CLIReporter

    return CLIReporter(parameter_columns=["arm", "seed"],
                       metric_columns=["stage", "epoch", "train_loss", "val_loss", matrix.metric],
                       max_report_frequency=15)


def estimate_trial_seconds(cfg: RunConfig, flops_per_sample: float, train_pairs: int) -> float:
    """A rough trial-time estimate from model FLOPs, data size and an assumed device throughput."""
    # achieved FLOP/s: A100 bf16 at ~30 % of peak (assumed); one CPU core as measured by `raysim bench train`
    # (ushaped-128 at the local profile: ~140 samples/s x 3 x 9.1e7 FLOPs, forward and backward)
    per_second = 3e13 if cfg.resources.use_gpu else 3.5e10
    op = cfg.operator
    steps = train_pairs if not op.max_steps_per_epoch else min(train_pairs, op.max_steps_per_epoch * op.batch_size)
    compute = 3 * flops_per_sample * steps * (op.epochs * op.unroll_steps + cfg.diffusion.epochs * 0.5)
    overhead = 20.0  # one TorchTrainer start-up and shut-down (RAY_NOTES.md)
    return overhead + compute / per_second + 10 * math.log2(max(2, train_pairs))
