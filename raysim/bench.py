"""`raysim bench {overhead,train,data}`: reproducible figures, written as JSON.

These machines are noisy: comparisons alternate their two sides (A B A B ...) and report medians.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raysim.config import RunConfig, expand_arms, load_matrix, to_dict

PHASE3 = Path(__file__).resolve().parents[1] / "ablations" / "phase3.yaml"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        info["device"] = "cpu"
    return info


def _write(out: Path, name: str, figures: dict[str, Any]) -> Path:
    from raysim.analysis import storage

    path = out / f"{name}.json"
    storage.write_json_atomic(path, {**figures, "machine": machine()})
    return path


def _arms(profile: str, sets: list[str] | None = None) -> dict[str, RunConfig]:
    return expand_arms(load_matrix(PHASE3), profile, sets)


# ----------------------------------------------------------------------------- train


def _train_step_rate(cfg: RunConfig, steps: int, device: torch.device) -> dict[str, float]:
    """Optimiser steps per second of the operator stage on synthetic batches of the config's shape."""
    from raysim.models.build import build_operator, count_params, flops_per_sample
    from raysim.train.common import autocast
    from raysim.train.stages import operator_loss

    torch.manual_seed(0)
    nx = cfg.data.generate.nx // cfg.data.x_stride
    model = build_operator(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.operator.lr)
    b = cfg.operator.batch_size
    x = torch.linspace(-1, 1, nx + 1, device=device)[:-1] + 1.0 / nx
    batch = {"u": torch.randn(b, nx, device=device), "target": torch.randn(b, 1, nx, device=device),
             "nu": torch.full((b,), 0.01, device=device), "dt": torch.full((b,), 0.05, device=device)}
    loss_fn = operator_loss(x, dataclasses.replace(cfg.operator, unroll_steps=1))  # one step: the step rate
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with autocast(cfg.operator, device):
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    flops = flops_per_sample(model, nx)
    out = {"samples_per_second": b / step, "step_seconds_median": step, "batch_size": b,
           "params": count_params(model), "flops_per_sample": flops,
           "train_flops_per_second": 3 * flops * b / step}
    if device.type == "cuda":
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    else:
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def bench_train(out: Path, quick: bool = False) -> dict[str, Any]:
    """Per arm of the local profile: samples/s, params, FLOPs per sample, peak memory (bf16 + MFU on GPU)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # as each trial's worker runs
    profile = "smoke" if quick else "local"
    arms = _arms(profile)
    figures: dict[str, Any] = {"profile": profile, "device": device.type, "arms": {}}
    for name, cfg in arms.items():
        if device.type == "cuda":
            cfg.operator.amp = "bf16"
        figures["arms"][name] = _train_step_rate(cfg, 3 if quick else 10, device)
        if device.type == "cuda":
            peak = 989e12 if "H100" in torch.cuda.get_device_name(0) else 312e12  # dense bf16 peak
            figures["arms"][name]["mfu"] = figures["arms"][name]["train_flops_per_second"] / peak
    path = _write(out, "train", figures)
    print(f"train bench on {device.type} ({'1 thread' if device.type == 'cpu' else 'bf16'}), profile {profile}:")
    for name, f in figures["arms"].items():
        print(f"  {name:18s} {f['samples_per_second']:9.1f} samples/s  params {f['params']:>9,d}  "
              f"{f['flops_per_sample'] / 1e9:.3f} GFLOP/sample")
    print(f"wrote {path}")
    return figures


# ----------------------------------------------------------------------------- data


def bench_data(out: Path, quick: bool = False) -> dict[str, Any]:
    """Solver throughput and accuracy; loader batches/s against the training step's consumption."""
    from raysim.data.bench import bench_loader, bench_solver
    from raysim.train.common import ensure_data

    solver = bench_solver(samples=8 if quick else 64)
    cfg = _arms("smoke" if quick else "local")["pure-128"]
    path = ensure_data(cfg.data)
    loader = bench_loader(path, cfg.operator.batch_size, cfg.data.x_stride, cfg.data.t_stride,
                          seconds=2.0 if quick else 5.0)
    torch.set_num_threads(1)
    step = _train_step_rate(cfg, 3 if quick else 8, torch.device("cpu"))
    steps_per_second = 1.0 / step["step_seconds_median"]
    figures = {**solver, **{f"loader_{k}": v for k, v in loader.items()},
               "train_steps_per_second": steps_per_second,
               "loader_headroom": loader["batches_per_second"] / steps_per_second}
    path = _write(out, "data", figures)
    print(f"solver: {figures['trajectories_per_second']:.2f} trajectories/s, "
          f"nRMSE vs refined {figures['nrmse_vs_reference']:.2e}")
    print(f"loader: {loader['batches_per_second']:.1f} batches/s vs training {steps_per_second:.2f} steps/s "
          f"(pure-128, local profile, 1 thread): headroom {figures['loader_headroom']:.0f}x")
    print(f"wrote {path}")
    return figures


# ----------------------------------------------------------------------------- overhead


def _plain_trial(cfg: RunConfig, work: Path) -> dict[str, float]:
    """The trial in plain PyTorch, in-process: the same pipeline of stages and evaluation, no Ray."""
    from raysim.train.context import LocalStageContext
    from raysim.train.pipeline import run_trial_pipeline

    start = time.perf_counter()
    timings = run_trial_pipeline(cfg, LocalStageContext(work))["timings"]
    return {**_parts(timings), "total": time.perf_counter() - start}


def _parts(timings: dict[str, float]) -> dict[str, float]:
    parts = {p: timings.get(f"{p}_seconds", 0.0) for p in ("operator", "diffusion", "evaluation")}
    parts["reporting_and_checkpoints"] = timings.get("report_seconds", 0.0)
    return parts


def _engine_trial(cfg: RunConfig, work: Path) -> dict[str, float]:
    """The same trial through the engine: a Tune trial driving one Ray Train fit (stages and evaluation)."""
    from ray import tune

    from raysim.analysis import storage
    from raysim.tune.study import trial_resources
    from raysim.tune.trial import trainable

    space = {"arm": cfg.name, "seed": cfg.seed, "arm_configs": {cfg.name: to_dict(cfg)}, "profile": "bench",
             "study_dir": str(work), "study_name": "bench"}
    start = time.perf_counter()
    tuner = tune.Tuner(tune.with_resources(trainable, trial_resources()), param_space=space,
                       run_config=tune.RunConfig(name="tune", storage_path=str(work), verbose=0))
    grid = tuner.fit()
    total = time.perf_counter() - start
    if grid.errors:
        raise RuntimeError(f"engine trial failed: {grid.errors[0]}")
    timings = storage.read_json(str(work / "trials" / f"{cfg.name}__seed{cfg.seed}" / "result.json"))["timings"]
    return {**_parts(timings), "trainer_startup": timings["startup_seconds"],
            "trainer_shutdown": timings["shutdown_seconds"], "total": total}


def bench_overhead(out: Path, quick: bool = False, repeats: int = 3) -> dict[str, Any]:
    """overhead_ratio = median(engine wall) / median(plain PyTorch wall) for one arm's whole trial."""
    from raysim.train.common import ensure_data
    from raysim.tune.study import init_ray

    profile = "smoke" if quick else "local"
    cfg = _arms(profile, ["logging.wandb=false"])["pure-128"]
    ensure_data(cfg.data)
    init_ray()
    plain: list[dict[str, float]] = []
    engine: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="raysim-bench-") as tmp:
        for i in range(1 if quick else repeats):  # alternate A B A B
            plain.append(_plain_trial(cfg, Path(tmp, f"plain{i}")))
            engine.append(_engine_trial(cfg, Path(tmp, f"engine{i}")))
            print(f"  repeat {i}: plain {plain[-1]['total']:.1f} s, engine {engine[-1]['total']:.1f} s", flush=True)

    def median(runs: list[dict[str, float]], part: str) -> float:
        return statistics.median(r[part] for r in runs)

    parts = ("operator", "diffusion", "evaluation", "reporting_and_checkpoints", "total")
    breakdown = {p: {"plain": median(plain, p), "engine": median(engine, p),
                     "difference": median(engine, p) - median(plain, p)} for p in parts}
    for p in ("trainer_startup", "trainer_shutdown"):  # nothing of the kind in plain PyTorch
        breakdown[p] = {"engine": median(engine, p), "difference": median(engine, p)}
    # stage seconds include their own reports: the rest is Tune's trial actor, the driver and the file writes
    accounted = sum(breakdown[p]["difference"] for p in ("operator", "diffusion", "evaluation", "trainer_startup",
                                                         "trainer_shutdown"))
    breakdown["tune_trial_and_driver"] = {"difference": breakdown["total"]["difference"] - accounted}
    figures: dict[str, Any] = {
        "profile": profile, "arm": "pure-128", "repeats": len(plain),
        "plain_seconds": [r["total"] for r in plain], "engine_seconds": [r["total"] for r in engine],
        "plain_median": median(plain, "total"), "engine_median": median(engine, "total"),
        "breakdown_median_seconds": breakdown,
    }
    figures["overhead_ratio"] = figures["engine_median"] / figures["plain_median"]
    figures["overhead_seconds"] = figures["engine_median"] - figures["plain_median"]
    path = _write(out, "overhead", figures)
    print(f"overhead: engine {figures['engine_median']:.1f} s / plain {figures['plain_median']:.1f} s "
          f"= {figures['overhead_ratio']:.3f} (median of {len(plain)}, profile {profile})")
    for part, f in figures["breakdown_median_seconds"].items():
        print(f"  {part:22s} +{f['difference']:.1f} s")
    print(f"wrote {path}")
    return figures


def run_bench(what: str, out: Path, quick: bool = False, repeats: int = 3) -> int:
    """Dispatch `raysim bench WHAT`."""
    if what == "overhead":
        bench_overhead(out, quick=quick, repeats=repeats)
    else:
        {"train": bench_train, "data": bench_data}[what](out, quick=quick)
    return 0
