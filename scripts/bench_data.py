"""Benchmark raysim's data layer: solver throughput and accuracy, DataLoader throughput.

    python scripts/bench_data.py [--samples 64] [--nu 0.01] [--num-workers 0] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raysim.data.bench import bench_loader, bench_solver
from raysim.data.burgers import generate


def threads_line() -> str:
    """How many threads numpy and torch use here."""
    import torch

    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                      "OPENBLAS_NUM_THREADS") if k in os.environ}
    return (f"threads: numpy FFT (pocketfft) 1 per call, single-threaded solver; "
            f"torch {torch.get_num_threads()} intra-op; cpus {os.cpu_count()}; env {env or 'unset'}")


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks, print the figures, write JSON to --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64, help="trajectories in the timed batch")
    p.add_argument("--nx", type=int, default=1024)
    p.add_argument("--nt", type=int, default=201)
    p.add_argument("--nu", type=float, default=0.01)
    p.add_argument("--reference-samples", type=int, default=4)
    p.add_argument("--file", type=Path, help="HDF5 file for the loader (default: generate one)")
    p.add_argument("--loader-samples", type=int, default=32, help="trajectories if generating")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--x-stride", type=int, default=4)
    p.add_argument("--t-stride", type=int, default=5)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--train-batches-per-second", type=float,
                   help="training consumption rate, to report loader_headroom")
    p.add_argument("--out", type=Path, help="JSON file (or folder: bench_data.json inside)")
    args = p.parse_args(argv)

    print(threads_line(), flush=True)
    solver = bench_solver(args.samples, args.nx, args.nt, args.nu,
                          reference_samples=args.reference_samples)
    print(f"solver: {solver['samples']} trajectories nx={solver['nx']} (solver grid "
          f"{solver['solver_nx']}) nt={solver['nt']} nu={solver['nu']} in "
          f"{solver['seconds']:.1f}s -> {solver['trajectories_per_second']:.2f} trajectories/s "
          f"(1024 in {solver['seconds_for_1024'] / 60:.1f} min)")
    print(f"solver: nRMSE vs twice-refined (2x grid, half step), {solver['reference_samples']} "
          f"trajectories: mean {solver['nrmse_vs_reference']:.2e}, "
          f"max {solver['nrmse_vs_reference_max']:.2e}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            path = generate(Path(tmp) / "bench_Nu0.01.h5", nu=args.nu,
                            samples=args.loader_samples, nx=args.nx, nt=args.nt)
        loader = bench_loader(path, args.batch_size, args.x_stride, args.t_stride,
                              seconds=args.seconds, num_workers=args.num_workers,
                              train_batches_per_second=args.train_batches_per_second)
    print(f"loader: batch {loader['batch_size']}, x_stride {loader['x_stride']}, t_stride "
          f"{loader['t_stride']}, {loader['num_workers']} workers -> "
          f"{loader['batches_per_second']:.1f} batches/s "
          f"({loader['samples_per_second']:.0f} pairs/s)")
    if "loader_headroom" in loader:
        print(f"loader: headroom {loader['loader_headroom']:.2f}x over training")

    result = {"threads": threads_line(), "solver": solver, "loader": loader,
              "trajectories_per_second": solver["trajectories_per_second"],
              "nrmse_vs_reference": solver["nrmse_vs_reference"],
              "loader_batches_per_second": loader["batches_per_second"]}
    if "loader_headroom" in loader:
        result["loader_headroom"] = loader["loader_headroom"]
    if args.out is not None:
        out = args.out / "bench_data.json" if args.out.is_dir() else args.out
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
