"""Sweep the operator stage's learning rate, warm-up and batch size for one arm, through raysim's own Tune path.

    python scripts/sweep_operator.py ablations/phase3.yaml --arm ushaped-128 --profile local \
        --lr 1e-3 2e-3 4e-3 --batch-size 32 --warmup 0.05 --storage results/sweeps/ushaped-128

Every point of the grid is a `raysim.tune.trainable` trial (operator stage and evaluation; the corrector is
switched off, since the operator's own rollout is what the choice is for), so each trains and is scored exactly
as in a study. Prints one line per trial, best first, by the operator's rollout nRMSE on the test trajectories.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("matrix", help="ablation matrix YAML, e.g. ablations/phase3.yaml")
    parser.add_argument("--arm", required=True, help="the arm to tune, e.g. ushaped-128")
    parser.add_argument("--profile", default="local", help="profile whose sizes and budget are used (default: local)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every trial (default: 0)")
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3], help="peak learning rates")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32], help="micro-batch sizes")
    parser.add_argument("--warmup", type=float, nargs="+", default=[0.05], help="warm-up fractions of training")
    parser.add_argument("--storage", default=None, help="folder of the sweep (default: results/sweeps/<arm>)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (default: 2)")
    args = parser.parse_args(argv)

    from ray import tune

    import raysim.tune
    from raysim.config import load_matrix
    from raysim.errors import UserError

    try:
        matrix = load_matrix(args.matrix)
        if args.arm not in matrix.arms:
            raise UserError(f"unknown arm {args.arm!r} (arms: {', '.join(matrix.arms)})", args.matrix, "--arm")
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    storage = str(Path(args.storage or f"results/sweeps/{args.arm}").resolve())
    raysim.tune.init_ray()
    space = raysim.tune.param_space(matrix, args.profile, sets=["diffusion.enabled=false"], study_dir=storage)
    space.update(arm=args.arm, seed=args.seed, overrides={
        "operator.lr": tune.grid_search(args.lr),
        "operator.batch_size": tune.grid_search(args.batch_size),
        "operator.warmup_fraction": tune.grid_search(args.warmup),
    })
    tuner = tune.Tuner(
        tune.with_resources(raysim.tune.trainable, raysim.tune.trial_resources()),
        param_space=space,
        tune_config=tune.TuneConfig(metric="nrmse_rollout_operator", mode="min",
                                    max_concurrent_trials=args.concurrent),
        run_config=tune.RunConfig(storage_path=storage, name="tune"),
    )
    results = sorted(tuner.fit(), key=lambda r: r.metrics.get("nrmse_rollout_operator", float("inf")))
    for r in results:
        o = r.config["overrides"]
        print(f"lr {o['operator.lr']:g}  batch {o['operator.batch_size']}  warmup {o['operator.warmup_fraction']:g}  "
              f"one-step {r.metrics.get('nrmse_one_step_operator', float('nan')):.4f}  "
              f"rollout {r.metrics.get('nrmse_rollout_operator', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
