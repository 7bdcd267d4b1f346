"""`raysim run --dry-run`: arms, seeds, resources, parallelism, estimated time and cost; trains nothing."""

from __future__ import annotations

import math

from tabulate import tabulate

from raysim.config import MatrixConfig, RunConfig, profile_seeds


def arm_rows(arms: dict[str, RunConfig], nx: dict[str, int]) -> list[dict[str, object]]:
    """One row per arm: architecture, parameters and FLOPs per sample of the operator."""
    import torch

    from raysim.models.build import build_corrector, build_operator, count_params, flops_per_sample

    rows = []
    for name, cfg in arms.items():
        torch.manual_seed(cfg.seed)
        op = build_operator(cfg.model)
        corrector = build_corrector(cfg.diffusion) if cfg.diffusion.enabled else None
        m = cfg.model
        upt = m.family == "upt"  # the latent operator's columns; an FNO names its own sizes under family
        family = "upt" if upt else f"fno: width {m.fno_width}, modes {m.fno_modes}, layers {m.fno_layers}"
        rows.append({
            "arm": name, "family": family, "processor": m.processor if upt else "-",
            "attention": m.attention if upt else "-", "tokens": m.tokens if upt else "-",
            "latent_dim": m.latent_dim if upt else "-",
            "params": count_params(op) + (count_params(corrector) if corrector else 0),
            "operator_params": count_params(op),
            "gflops_per_sample": flops_per_sample(op, nx[name]) / 1e9,
        })
    return rows


def print_plan(matrix: MatrixConfig, profile: str, arms: dict[str, RunConfig], study_dir: str) -> None:
    """Print what `raysim run` would do, with time and cost estimates."""
    from raysim.tune.study import estimate_trial_seconds

    seeds = profile_seeds(matrix, profile)
    nx = {n: c.data.generate.nx // c.data.x_stride for n, c in arms.items()}
    rows = arm_rows(arms, nx)
    any_cfg = next(iter(arms.values()))
    r = any_cfg.resources
    cap = matrix.profiles[profile].max_concurrent_trials or len(arms) * len(seeds)
    parallel = min(cap, len(arms) * len(seeds))
    total_seconds = gpu_hours = 0.0
    for row in rows:
        cfg = arms[row["arm"]]
        g = cfg.data.generate
        pairs = int(g.samples * cfg.data.splits[0]) * ((g.nt - 1) // cfg.data.t_stride)
        seconds = estimate_trial_seconds(cfg, row["gflops_per_sample"] * 1e9, pairs)
        row["est_minutes"] = round(seconds / 60, 1)
        total_seconds += seconds * len(seeds)
        if cfg.resources.use_gpu:
            gpu_hours += seconds * len(seeds) * cfg.resources.num_workers / 3600
    wall = total_seconds / parallel
    print(f"study {matrix.name}, profile {profile}: {len(arms)} arms x {len(seeds)} seed(s) {seeds} "
          f"= {len(arms) * len(seeds)} trials")
    print(tabulate(rows, headers="keys", floatfmt=".3g"))
    device = f"{r.num_workers} x GPU ({r.accelerator_type or 'any'})" if r.use_gpu else \
        f"{r.num_workers} worker(s) x {r.cpus_per_worker:g} CPU"
    print(f"resources per trial: {device} (both stages and evaluation); the trial driver holds no CPU "
          f"(a trial slot, or the cluster head's `head` resource); up to {parallel} trials in parallel")
    print(f"estimated wall time: {math.ceil(wall / 60)} min (rough: FLOP count at an assumed device throughput)")
    cost = gpu_hours * r.cost_per_gpu_hour
    print(f"estimated GPU-hours: {gpu_hours:.2f}, cost: ${cost:.2f} at ${r.cost_per_gpu_hour:.2f}/GPU-hour")
    print(f"storage: {study_dir}")
    print("dry run: nothing was trained")
