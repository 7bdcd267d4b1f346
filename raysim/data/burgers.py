"""1D viscous Burgers (PDEBench convention) solved pseudo-spectrally with ETDRK4, written to HDF5.

Equation: u_t + (u^2/2)_x = (nu/pi) u_xx on a periodic domain of length L.

Solver: Fourier pseudo-spectral in x (numpy rfft, batched over trajectories, 2/3-rule
dealiasing of the quadratic term), exponential time differencing RK4 in t (Kassam &
Trefethen 2005) with the phi-function coefficients evaluated by contour integrals.
The time step obeys a CFL bound h <= cfl * dx / max|u|; viscous Burgers satisfies a
maximum principle, so max|u0| bounds |u| for all time and the step is fixed per solve.

generate() solves batches of trajectories serially, in spawned processes, or as Ray tasks from a
Ray driver; only the calling process writes the file, in trajectory order.
"""

from __future__ import annotations

import math
import multiprocessing
import numbers
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysim.errors import DataError
from raysim.progress import progress_bar

# Initial conditions (PDEBench "init_multi" style).
N_MODES = 2  # sine modes summed per sample
K_MAX = 4  # integer wavenumbers drawn from 1..K_MAX
P_ABS = 0.1  # probability of u0 -> |u0|
P_FLIP = 0.1  # probability of u0 -> -u0 (the whole field)
P_WINDOW = 0.1  # probability of multiplying by a tanh window
WINDOW_WIDTH = 0.01  # tanh transition width as a fraction of L
U_BOUND = float(N_MODES)  # |u0| <= sum of amplitudes <= N_MODES, for every sample

CFL = 1.0  # default Courant number h * max|u| / dx (RK4 limit without viscosity: ~1.35)
ROWS = 16  # trajectories integrated together (cache-sized blocks)
CONTOUR_POINTS = 32  # points on the half circle for the ETDRK4 coefficients
RESOLVE_CONST = 7.0  # solver grid: nx_solve >= RESOLVE_CONST / nu (see solver_nx)
IN_FLIGHT = 2  # batches submitted and not yet written, per parallel worker


def cell_centres(nx: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Cell-centre coordinates (nx,) of a uniform periodic grid on (lo, hi)."""
    dx = (hi - lo) / nx
    return lo + (np.arange(nx) + 0.5) * dx


def initial_conditions(
    rng: np.random.Generator, n: int, x: np.ndarray, domain: tuple[float, float] | None = None
) -> np.ndarray:
    """Draw n PDEBench-style initial conditions on points x: returns (n, nx) float64.

    u0 = sum_i A_i sin(2 pi k_i x / L + phi_i), k_i in 1..4, A_i ~ U(0,1), phi_i ~ U(0, 2pi);
    then, each with probability 0.1: u0 -> |u0|, u0 -> -u0, u0 -> u0 * tanh window.
    `domain` (lo, hi) is the periodic domain (default: x taken as uniform cell centres).
    Every random number is drawn whatever the flags, so the stream layout is fixed.
    """
    x = np.asarray(x, dtype=np.float64)  # (nx,)
    if domain is None:
        half = 0.5 * (x[1] - x[0]) if len(x) > 1 else 0.5
        domain = (float(x[0]) - half, float(x[-1]) + half)
    lo, length = float(domain[0]), float(domain[1]) - float(domain[0])
    k = rng.integers(1, K_MAX + 1, size=(n, N_MODES))  # (n, M)
    amp = rng.uniform(0.0, 1.0, size=(n, N_MODES))  # (n, M)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, N_MODES))  # (n, M)
    do_abs = rng.uniform(size=n) < P_ABS  # (n,)
    do_flip = rng.uniform(size=n) < P_FLIP  # (n,)
    do_window = rng.uniform(size=n) < P_WINDOW  # (n,)
    x_left = lo + length * rng.uniform(0.1, 0.45, size=n)  # (n,) window edges
    x_right = lo + length * rng.uniform(0.55, 0.9, size=n)  # (n,)

    arg = 2.0 * np.pi * k[:, :, None] * x[None, None, :] / length + phase[:, :, None]
    u = np.sum(amp[:, :, None] * np.sin(arg), axis=1)  # (n, nx)
    u = np.where(do_abs[:, None], np.abs(u), u)
    u = np.where(do_flip[:, None], -u, u)
    width = WINDOW_WIDTH * length
    window = 0.5 * (
        np.tanh((x[None, :] - x_left[:, None]) / width)
        - np.tanh((x[None, :] - x_right[:, None]) / width)
    )  # (n, nx)
    return np.where(do_window[:, None], u * window, u)


def solver_nx(nu: float, nx: int) -> int:
    """Solver grid size: nx * 2^j, the smallest such that nx_solve >= 7 / nu.

    A viscous shock of jump 2U has width ~ 2 eps / U (eps = nu / pi); with U <= 2 its
    Fourier tail at the 2/3 cutoff is exp(-pi^3 eps nx / 6), below ~1e-5 once
    nx >= 7 / nu. nu = 0.01 -> 1024 (for nx = 1024), nu = 0.001 -> 8192.
    """
    n = nx
    while n < RESOLVE_CONST / nu:
        n *= 2
    return n


def _phi_coefficients(c: np.ndarray, h: float) -> tuple[np.ndarray, ...]:
    """ETDRK4 coefficients (E, E2, Q, f1, f2, f3), each shaped like c = h * L (real, <= 0)."""
    m = CONTOUR_POINTS
    r = np.exp(1j * np.pi * (np.arange(1, m + 1) - 0.5) / m)  # (m,) upper half circle
    lr = c[:, None] + r[None, :]  # (nk, m)
    e = np.exp(lr)
    q = h * np.real(np.mean((np.exp(lr / 2) - 1.0) / lr, axis=1))
    f1 = h * np.real(np.mean((-4.0 - lr + e * (4.0 - 3.0 * lr + lr**2)) / lr**3, axis=1))
    f2 = h * np.real(np.mean((2.0 + lr + e * (lr - 2.0)) / lr**3, axis=1))
    f3 = h * np.real(np.mean((-4.0 - 3.0 * lr - lr**2 + e * (4.0 - lr)) / lr**3, axis=1))
    return np.exp(c), np.exp(c / 2), q, f1, f2, f3


def _reduce(u: np.ndarray, out_nx: int) -> np.ndarray:
    """Cell averages (B, out_nx) of point values u (B, nx) at fine cell centres."""
    b, nx = u.shape
    if nx == out_nx:
        return u
    return u.reshape(b, out_nx, nx // out_nx).mean(axis=2)


def solve(
    u0: np.ndarray,
    nu: float,
    t_end: float,
    nt: int,
    *,
    length: float = 2.0,
    cfl: float = CFL,
    umax: float | None = None,
    out_nx: int | None = None,
    dtype: np.dtype | type = np.float64,
) -> np.ndarray:
    """Integrate u0 (B, nx) with ETDRK4 and return frames (B, nt, out_nx) at linspace(0, t_end, nt).

    The step is h = frame_dt / ceil(frame_dt * umax / (cfl * dx)) so frames fall on steps;
    umax defaults to max|u0| over the batch (pass a fixed bound to make every row's
    result independent of its batch). out_nx < nx stores cell averages of r = nx / out_nx
    fine points per coarse cell (exact midpoint-rule averages); out_nx = nx stores point values.
    """
    u0 = np.atleast_2d(np.asarray(u0, dtype=np.float64))  # (B, nx)
    b, nx = u0.shape
    out_nx = nx if out_nx is None else int(out_nx)
    if nu <= 0:
        raise DataError(f"must be > 0, got {nu}", field="nu")
    if nt < 1:
        raise DataError(f"must be >= 1, got {nt}", field="nt")
    if nx % 2 or out_nx < 1 or nx % out_nx:
        raise DataError(f"solver grid {nx} must be even and a multiple of {out_nx}", field="nx")
    frames = np.empty((b, nt, out_nx), dtype=dtype)  # (B, nt, out_nx)
    frames[:, 0] = _reduce(u0, out_nx)
    if nt == 1:
        return frames

    eps = nu / np.pi
    dx = length / nx
    frame_dt = t_end / (nt - 1)
    bound = float(np.max(np.abs(u0))) if umax is None else float(umax)
    steps = max(1, math.ceil(frame_dt * max(bound, 1e-12) / (cfl * dx)))
    h = frame_dt / steps

    k = 2.0 * np.pi / length * np.arange(nx // 2 + 1)  # (nk,) angular wavenumbers
    coef = _phi_coefficients(-eps * k**2 * h, h)
    # Nonlinear term -(u^2/2)_x in Fourier space, 2/3-rule dealiased.
    g = -0.5j * k * (np.arange(nx // 2 + 1) < nx / 3)  # (nk,)
    for r0 in range(0, b, ROWS):  # rows are independent: work in cache-sized blocks
        r1 = min(r0 + ROWS, b)
        _integrate(u0[r0:r1], frames[r0:r1], steps, coef, g, out_nx)
    return frames


def _integrate(u0: np.ndarray, frames: np.ndarray, steps: int, coef: tuple[np.ndarray, ...],
               g: np.ndarray, out_nx: int) -> None:
    """ETDRK4 from u0 (b, nx), `steps` steps per frame, filling frames[:, 1:] (b, nt, out_nx)."""
    nx = u0.shape[1]
    e, e2, q, f1, f2, f3 = coef
    f2 = 2.0 * f2
    rfft, irfft = np.fft.rfft, np.fft.irfft

    def nonlinear(v: np.ndarray) -> np.ndarray:
        """-(u^2/2)_x in Fourier space for v = rfft(u), (b, nk)."""
        w = irfft(v, n=nx)
        w *= w
        out = rfft(w)
        out *= g
        return out

    v = rfft(u0)  # (b, nk) complex
    for j in range(1, frames.shape[1]):
        for _ in range(steps):
            nv = nonlinear(v)
            e2v = e2 * v
            a = q * nv
            a += e2v
            na = nonlinear(a)
            c = q * na  # c holds b = E2 v + Q N(a) until N(b) is known
            c += e2v
            nb = nonlinear(c)
            np.multiply(nb, 2.0, out=c)
            c -= nv
            c *= q
            a *= e2
            c += a  # c = E2 a + Q (2 N(b) - N(v))
            nc = nonlinear(c)
            v = e * v
            nv *= f1
            v += nv
            na += nb
            na *= f2
            v += na
            nc *= f3
            v += nc
        frames[:, j] = _reduce(irfft(v, n=nx), out_nx)


def _check_generate_args(nu: float, samples: int, nx: int, nt: int, t_end: float,
                         batch: int, seed: int, workers: int = 1) -> None:
    """Raise DataError naming the first bad argument of generate()."""
    if not (isinstance(nu, numbers.Real) and math.isfinite(nu) and nu > 0):
        raise DataError(f"must be a positive number, got {nu!r}", field="nu")
    for name, value, least in (("samples", samples, 1), ("nx", nx, 4), ("nt", nt, 2),
                               ("batch", batch, 1), ("seed", seed, 0), ("workers", workers, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise DataError(f"must be an integer >= {least}, got {value!r}", field=name)
    if nx % 2:
        raise DataError(f"must be even (the spectral solver needs it), got {nx}", field="nx")
    if not (isinstance(t_end, numbers.Real) and math.isfinite(t_end) and t_end > 0):
        raise DataError(f"must be a positive number, got {t_end!r}", field="t_end")


# ----------------------------------------------------------------------------- batches, serial or parallel


@dataclass(frozen=True)
class _Problem:
    """Everything a batch of trajectories depends on besides its indices (small: sent with every task)."""

    nu: float
    t_end: float
    nt: int
    nx: int  # stored grid
    solver_nx: int
    lo: float
    hi: float
    seed: int


def _solve_batch(problem: _Problem, start: int, stop: int) -> np.ndarray:
    """Trajectories start..stop-1 as (stop - start, nt, nx) float32; trajectory i starts from default_rng([seed, i])."""
    lo, hi = problem.lo, problem.hi
    xs = cell_centres(problem.solver_nx, lo, hi)  # (nxs,) solver grid
    u0 = np.concatenate([
        initial_conditions(np.random.default_rng([problem.seed, i]), 1, xs, (lo, hi)) for i in range(start, stop)
    ])  # (b, nxs)
    return solve(u0, problem.nu, problem.t_end, problem.nt, length=hi - lo, umax=U_BOUND, out_nx=problem.nx,
                 dtype=np.float32)


def _ray_driver() -> bool:
    """Whether Ray is initialised in this process and it is the driver, not a Ray task or actor."""
    ray = sys.modules.get("ray")  # not imported: not initialised
    return bool(ray and ray.is_initialized() and ray.get_runtime_context().worker.mode != ray.WORKER_MODE)


def available_cpus() -> int:
    """CPUs generate() may use: the cluster's from a Ray driver, the task's own in a Ray worker, else this process's."""
    ray = sys.modules.get("ray")
    if ray and ray.is_initialized():
        if _ray_driver():
            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _pool_batches(problem: _Problem, spans: list[tuple[int, int]], workers: int) -> Iterator[np.ndarray]:
    """Each span's frames, in order, solved by `workers` spawned processes; at most IN_FLIGHT * workers queued."""
    # spawn, not fork (h5py's state does not survive a fork); workers ignore Ctrl-C, the driver stops them
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    pending: deque = deque()  # futures in span order
    try:
        for start, stop in spans:
            pending.append(pool.submit(_solve_batch, problem, start, stop))
            if len(pending) == IN_FLIGHT * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BaseException:  # an error, Ctrl-C or the consumer stopping: drop queued batches, end running ones
        processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before 3.14
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        raise
    pool.shutdown()


def _ray_batches(problem: _Problem, spans: list[tuple[int, int]], workers: int) -> Iterator[np.ndarray]:
    """Each span's frames, in order, solved as Ray tasks of one CPU (on any node); at most IN_FLIGHT * workers out."""
    import ray

    task = ray.remote(num_cpus=1)(_solve_batch)
    pending: deque = deque()  # object refs in span order
    try:
        for start, stop in spans:
            pending.append(task.remote(problem, start, stop))
            if len(pending) == IN_FLIGHT * workers:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


def _solved_batches(problem: _Problem, spans: list[tuple[int, int]], workers: int) -> Iterator[np.ndarray]:
    """Each span's frames (stop - start, nt, nx), in order: here (one worker), as Ray tasks, or in processes.

    Ray tasks only from a Ray driver: a Ray task or actor holds its own CPUs, and tasks it waited on could
    find none free, so there the local processes (as many as it holds CPUs) solve the batches.
    """
    if workers == 1:
        return (_solve_batch(problem, start, stop) for start, stop in spans)
    if _ray_driver():
        return _ray_batches(problem, spans, workers)
    return _pool_batches(problem, spans, workers)


def generate(
    out: str | Path,
    nu: float = 0.01,
    samples: int = 1024,
    nx: int = 1024,
    nt: int = 201,
    t_end: float = 2.0,
    seed: int = 0,
    batch: int = 64,
    *,
    x_range: tuple[float, float] = (-1.0, 1.0),
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write a PDEBench-layout HDF5 file of `samples` Burgers trajectories and return its path.

    `tensor` (N, nt, nx) float32, `x-coordinate` (nx,) cell centres on x_range,
    `t-coordinate` (nt + 1,) = j * dt like PDEBench's files. Trajectory i's initial
    condition comes from default_rng([seed, i]) and every batch uses the same step
    (CFL with the bound |u0| <= 2), so the file is byte-identical for any batch size and
    any number of workers (on machines with the same numpy build and CPU features).
    The solver grid is solver_nx(nu, nx): when it equals nx the file holds point values at
    the cell centres, otherwise cell averages of the finer solver grid (not spectral
    truncation, which rings at under-resolved shocks). With workers > 1 (capped at the
    number of batches) batches run as Ray tasks when this process is a Ray driver, else in
    `workers` spawned processes (a script that calls this needs the usual `if __name__ ==
    "__main__":` guard); this process writes them in order as they arrive.
    `progress` shows trajectories done, rate and ETA on stderr. Written to a temporary
    file in the same folder, then renamed; on any error the temporary file is removed.
    """
    import h5py

    _check_generate_args(nu, samples, nx, nt, t_end, batch, seed, workers)
    lo, hi = float(x_range[0]), float(x_range[1])
    if not hi > lo:
        raise DataError(f"must be (lo, hi) with lo < hi, got {x_range!r}", field="x_range")
    out = Path(out)
    if not out.parent.is_dir():
        raise DataError("folder does not exist", file=str(out.parent), field="out")
    if out.is_dir():
        raise DataError("is a folder, not a file name", file=str(out), field="out")
    nxs = solver_nx(float(nu), nx)
    problem = _Problem(float(nu), float(t_end), int(nt), int(nx), nxs, lo, hi, int(seed))
    spans = [(start, min(start + batch, samples)) for start in range(0, samples, batch)]
    x = cell_centres(nx, lo, hi)  # (nx,) stored grid
    dt = t_end / (nt - 1)
    t = np.arange(nt + 1) * dt  # (nt + 1,) PDEBench stores one extra time

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # same folder: os.replace is atomic
    batches = _solved_batches(problem, spans, min(int(workers), len(spans)))  # starts nothing until iterated
    bar = progress_bar(samples, f"generate {out.name}", "traj", progress)
    try:
        with h5py.File(tmp, "w", track_order=False) as f:
            f.attrs["nu"] = float(nu)
            f.attrs["seed"] = int(seed)
            f.attrs["generator"] = "raysim"
            f.attrs["t_end"] = float(t_end)
            f.attrs["solver_nx"] = nxs
            f.create_dataset("x-coordinate", data=x.astype(np.float32))
            f.create_dataset("t-coordinate", data=t.astype(np.float32))
            tensor = f.create_dataset("tensor", shape=(samples, nt, nx), dtype=np.float32,
                                      chunks=(1, 1, nx))
            for (start, stop), frames in zip(spans, batches, strict=True):
                tensor[start:stop] = frames  # (b, nt, nx)
                bar.update(stop - start)
        os.replace(tmp, out)
    except BaseException:
        batches.close()  # cancels the work still pending
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return out
