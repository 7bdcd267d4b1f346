"""Data benchmarks: solver throughput and accuracy, and DataLoader throughput."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from raysim.data.burgers import CFL, U_BOUND, cell_centres, initial_conditions, solve, solver_nx


def _initial(seed: int, count: int, x: np.ndarray, domain: tuple[float, float]) -> np.ndarray:
    """Initial conditions (count, len(x)) of trajectories 0..count-1, as generate() draws them."""
    return np.concatenate([
        initial_conditions(np.random.default_rng([seed, i]), 1, x, domain) for i in range(count)
    ])


def nrmse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PDEBench nRMSE over the last axis: sqrt(mean (p - y)^2) / sqrt(mean y^2), shape (...)."""
    num = np.sqrt(np.mean((pred - target) ** 2, axis=-1))
    return num / np.maximum(np.sqrt(np.mean(target**2, axis=-1)), 1e-30)


def refined_solution(seed: int, count: int, nu: float, nx: int, nt: int, t_end: float,
                     domain: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Twice-refined (2x grid, half step) solution (count, nt, nx) of generate()'s first trajectories.

    When generate() stores point values (solver grid == nx), the refined grid is offset so
    that it contains the stored cell centres; otherwise it averages to the same cells.
    """
    lo, hi = domain
    nxs = solver_nx(nu, nx)
    if nxs == nx:
        xf = cell_centres(nx, lo, hi)[0] + np.arange(2 * nx) * (hi - lo) / (2 * nx)
        u0 = _initial(seed, count, xf, domain)
        return solve(u0, nu, t_end, nt, length=hi - lo, cfl=CFL / 2, umax=U_BOUND)[:, :, ::2]
    u0 = _initial(seed, count, cell_centres(2 * nxs, lo, hi), domain)
    return solve(u0, nu, t_end, nt, length=hi - lo, cfl=CFL / 2, umax=U_BOUND, out_nx=nx)


def bench_solver(samples: int = 64, nx: int = 1024, nt: int = 201, nu: float = 0.01,
                 t_end: float = 2.0, reference_samples: int = 4, seed: int = 0) -> dict:
    """Time generate()'s solver path on one batch and compare a few trajectories to a refined solve."""
    domain = (-1.0, 1.0)
    nxs = solver_nx(nu, nx)
    x = cell_centres(nxs, *domain)
    t0 = time.perf_counter()
    u0 = _initial(seed, samples, x, domain)
    frames = solve(u0, nu, t_end, nt, length=2.0, umax=U_BOUND, out_nx=nx)  # (S, nt, nx)
    seconds = time.perf_counter() - t0
    tps = samples / seconds
    count = min(reference_samples, samples)
    ref = refined_solution(seed, count, nu, nx, nt, t_end, domain)
    err = nrmse(frames[:count, 1:], ref[:, 1:])  # (count, nt - 1); frame 0 is exact
    return {
        "samples": samples, "nx": nx, "solver_nx": nxs, "nt": nt, "nu": nu,
        "seconds": seconds, "trajectories_per_second": tps,
        "seconds_for_1024": 1024 / tps,
        "reference_samples": count,
        "nrmse_vs_reference": float(err.mean()),
        "nrmse_vs_reference_max": float(err.max()),
    }


def bench_loader(path: str | Path, batch_size: int = 32, x_stride: int = 4, t_stride: int = 5,
                 seconds: float = 3.0, num_workers: int = 0, unroll: int = 1,
                 train_batches_per_second: float | None = None) -> dict:
    """Batches per second of a shuffled PairDataset through a torch DataLoader (first batch untimed).

    With train_batches_per_second (what a training step consumes), also reports
    loader_headroom = loader rate / training rate (> 1: the loader keeps up).
    """
    import torch
    from torch.utils.data import DataLoader

    from raysim.data.dataset import PairDataset
    from raysim.data.pdebench import open_info

    info = open_info(path, check_trajectories=0)
    ds = PairDataset(path, np.arange(info.n), x_stride, t_stride, unroll)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0),
                        persistent_workers=num_workers > 0)
    batches, start = 0, None
    while start is None or time.perf_counter() - start < seconds:
        for _ in loader:
            if start is None:  # the first batch pays for worker start-up and file opening
                start = time.perf_counter()
                continue
            batches += 1
            if time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - start
    out = {
        "batch_size": batch_size, "num_workers": num_workers, "x_stride": x_stride,
        "t_stride": t_stride, "unroll": unroll, "batches": batches, "seconds": elapsed,
        "batches_per_second": batches / elapsed,
        "samples_per_second": batches * batch_size / elapsed,
        "item_shape": [ds.nx], "dataset_len": len(ds),
    }
    if train_batches_per_second:
        out["loader_headroom"] = out["batches_per_second"] / train_batches_per_second
    return out
