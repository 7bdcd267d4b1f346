"""Torch datasets over PDEBench-layout Burgers HDF5 files, read lazily one slice per item.

The h5py file is opened on the first item in each process (never in __init__), and the
handle is dropped when pickled, so a dataset travels to DataLoader and Ray workers.
Striding follows PDEBench: u[i, ::t_stride, ::x_stride]; 1024 x 201 with x_stride 4
and t_stride 5 gives 256 x 41 and a true time step of 5 * dt.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from raysim.data.pdebench import BurgersInfo, open_info
from raysim.errors import DataError

DATASET_CHECK_TRAJECTORIES = 8  # NaN/Inf scan when a dataset is built (inspect scans more)


def split_indices(n: int, fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint, sorted train/val/test trajectory indices covering range(n), fixed by seed.

    Each split gets floor(fraction * n) trajectories (at least one when its fraction
    is positive); what rounding leaves over goes to train.
    """
    names = ("train", "val", "test")
    if len(fractions) != 3 or any(not (f >= 0) for f in fractions):
        raise DataError(f"must be three non-negative numbers, got {fractions!r}", field="fractions")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"must sum to 1, got {sum(fractions):g}", field="fractions")
    if n < sum(1 for f in fractions if f > 0):
        raise DataError(f"{n} trajectories cannot fill {fractions}", field="n")
    counts = [max(math.floor(f * n), 1 if f > 0 else 0) for f in fractions[1:]]
    counts.insert(0, n - sum(counts))
    if fractions[0] > 0 and counts[0] < 1:
        raise DataError(f"{n} trajectories leave none for train", field="n")
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, count in zip(names, counts, strict=True):
        out[name] = np.sort(order[start:start + count]).astype(np.int64)
        start += count
    return out


def _strided_len(size: int, stride: int) -> int:
    """len(range(0, size, stride))."""
    return (size + stride - 1) // stride


def _check_strides(info: BurgersInfo, x_stride: int, t_stride: int) -> None:
    """Raise DataError unless strides are positive and x_stride keeps the periodic grid uniform."""
    for name, value in (("x_stride", x_stride), ("t_stride", t_stride)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise DataError(f"must be a positive integer, got {value!r}", field=name)
    if info.nx % x_stride:
        raise DataError(f"must divide the {info.nx} grid points (periodic grid), got {x_stride}",
                        file=str(info.path), field="x_stride")
    if _strided_len(info.nt, t_stride) < 2:
        raise DataError(f"leaves fewer than 2 of {info.nt} frames", file=str(info.path),
                        field="t_stride")


def _check_indices(info: BurgersInfo, indices: Any) -> np.ndarray:
    """Trajectory indices as int64 (K,), each in range(N)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= info.n):
        raise DataError(f"must lie in [0, {info.n}), got {idx.min()}..{idx.max()}",
                        file=str(info.path), field="indices")
    return idx


def grid(path: str | Path, x_stride: int = 1) -> np.ndarray:
    """Strided x coordinates (X',) of a file (cell centres on (0, 1) if it has none)."""
    import h5py

    info = open_info(path, check_trajectories=0)
    _check_strides(info, x_stride, 1)
    with h5py.File(info.path, "r") as f:
        if "x-coordinate" in f:
            x = np.asarray(f["x-coordinate"][...], dtype=np.float64).reshape(-1)
        else:
            lo, hi = info.x_range
            x = lo + (np.arange(info.nx) + 0.5) * (hi - lo) / info.nx
    return x[::x_stride]


def spacing(path: str | Path, x_stride: int = 1) -> tuple[float, float]:
    """(dx, L): strided grid spacing and periodic domain length of a file."""
    info = open_info(path, check_trajectories=0)
    _check_strides(info, x_stride, 1)
    return info.length / (info.nx // x_stride), info.length


@dataclass
class Normalizer:
    """Scalar normalisation u -> (u - mean) / std, fitted on the training split only.

    `step_std` is the RMS of one strided time step's change, u[t+1] - u[t]: the scale
    of what a one-step model predicts in residual form.
    """

    mean: float = 0.0
    std: float = 1.0
    step_std: float = 1.0

    @classmethod
    def fit(cls, path: str | Path, train_indices: Any, x_stride: int = 1,
            t_stride: int = 1) -> Normalizer:
        """Mean and std over the strided training trajectories, streamed one trajectory at a time."""
        import h5py

        info = open_info(path, check_trajectories=0)
        _check_strides(info, x_stride, t_stride)
        idx = _check_indices(info, train_indices)
        if idx.size == 0:
            raise DataError("no training trajectories to fit on", field="train_indices")
        count, mean, m2 = 0, 0.0, 0.0  # Chan et al. pairwise combination of (n, mean, M2)
        step_sq, step_count = 0.0, 0
        with h5py.File(info.path, "r") as f:
            tensor = f["tensor"]
            for i in idx:
                u = np.asarray(tensor[int(i), ::t_stride, ::x_stride], dtype=np.float64)  # (T', X')
                n_b, mean_b = u.size, float(u.mean())
                m2_b = float(((u - mean_b) ** 2).sum())
                step_sq += float((np.diff(u, axis=0) ** 2).sum())
                step_count += u[1:].size
                delta, total = mean_b - mean, count + n_b
                mean += delta * n_b / total
                m2 += m2_b + delta * delta * count * n_b / total
                count = total
        std = math.sqrt(m2 / count)
        step_std = math.sqrt(step_sq / step_count) if step_count else 0.0
        return cls(mean=mean, std=std if std > 0 else 1.0, step_std=step_std if step_std > 0 else 1.0)

    def encode(self, u: Any) -> Any:
        """(u - mean) / std for arrays or tensors."""
        return (u - self.mean) / self.std

    def decode(self, z: Any) -> Any:
        """z * std + mean for arrays or tensors."""
        return z * self.std + self.mean

    def to_dict(self) -> dict[str, float]:
        """Plain dict for checkpoints and JSON."""
        return {"mean": float(self.mean), "std": float(self.std), "step_std": float(self.step_std)}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Normalizer:
        """Inverse of to_dict."""
        return cls(mean=float(d["mean"]), std=float(d["std"]), step_std=float(d.get("step_std", 1.0)))


class _LazyH5(Dataset):
    """Opens the HDF5 file on first use in each process; pickles without the handle."""

    def __init__(self, path: str | Path, indices: Any, x_stride: int, t_stride: int,
                 nu: float | None) -> None:
        self.info = open_info(path, check_trajectories=DATASET_CHECK_TRAJECTORIES)
        self.path = self.info.path
        _check_strides(self.info, x_stride, t_stride)
        self.indices = _check_indices(self.info, indices)  # (K,) file trajectory indices
        self.x_stride, self.t_stride = int(x_stride), int(t_stride)
        self.nt = _strided_len(self.info.nt, t_stride)  # T' frames after striding
        self.nx = self.info.nx // x_stride  # X' points after striding
        if self.info.dt is None:
            raise DataError("missing or invalid: the time step is unknown", file=str(self.path),
                            field="t-coordinate")
        self.dt = float(self.info.dt * t_stride)  # true time between strided frames
        nu = self.info.nu if nu is None else nu
        if nu is None:
            raise DataError("unknown: no nu attribute and no _Nu<value> in the file name; "
                            "pass nu=", file=str(self.path), field="nu")
        self.nu = float(nu)
        self._file = None
        self._pid = -1

    def _tensor(self):
        """The `tensor` dataset, opened in this process on first use."""
        if self._file is None or self._pid != os.getpid():
            import h5py

            if self._file is not None:  # inherited through fork: keep, never close it here
                self._inherited = self._file
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file["tensor"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, -1
        state.pop("_inherited", None)
        return state

    def close(self) -> None:
        """Close this process's file handle (reopened on the next item)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to close
            pass


class PairDataset(_LazyH5):
    """(u_t, u_{t+1..t+unroll}) pairs from strided trajectories; one h5py slice per item.

    Item: u (X',) float32, target (unroll, X') float32, nu, dt (strided), traj (file
    index), t (strided frame index of u). Length = len(indices) * (T' - unroll).
    """

    def __init__(self, path: str | Path, indices: Any, x_stride: int = 1, t_stride: int = 1,
                 unroll: int = 1, nu: float | None = None) -> None:
        super().__init__(path, indices, x_stride, t_stride, nu)
        if not isinstance(unroll, (int, np.integer)) or unroll < 1 or unroll >= self.nt:
            raise DataError(f"must be an integer in [1, {self.nt - 1}] for {self.nt} strided "
                            f"frames, got {unroll!r}", field="unroll")
        self.unroll = int(unroll)
        self.starts = self.nt - self.unroll  # start frames per trajectory

    def __len__(self) -> int:
        return len(self.indices) * self.starts

    def __getitem__(self, k: int) -> dict[str, Any]:
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        j, t = divmod(int(k), self.starts)
        i = int(self.indices[j])
        t0 = t * self.t_stride
        t1 = t0 + self.unroll * self.t_stride + 1
        block = np.asarray(self._tensor()[i, t0:t1:self.t_stride, ::self.x_stride],
                           dtype=np.float32)  # (unroll + 1, X')
        return {"u": torch.from_numpy(block[0].copy()), "target": torch.from_numpy(block[1:]),
                "nu": self.nu, "dt": self.dt, "traj": i, "t": t}


class RolloutDataset(_LazyH5):
    """Whole strided trajectories from frame 0: u (horizon + 1, X') float32, one per index."""

    def __init__(self, path: str | Path, indices: Any, x_stride: int = 1, t_stride: int = 1,
                 horizon: int | None = None, nu: float | None = None) -> None:
        super().__init__(path, indices, x_stride, t_stride, nu)
        horizon = self.nt - 1 if horizon is None else horizon
        if not isinstance(horizon, (int, np.integer)) or not 1 <= horizon <= self.nt - 1:
            raise DataError(f"must be an integer in [1, {self.nt - 1}] for {self.nt} strided "
                            f"frames, got {horizon!r}", field="horizon")
        self.horizon = int(horizon)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = int(self.indices[j])
        t1 = self.horizon * self.t_stride + 1
        u = np.asarray(self._tensor()[i, 0:t1:self.t_stride, ::self.x_stride],
                       dtype=np.float32)  # (horizon + 1, X')
        return {"u": torch.from_numpy(u), "nu": self.nu, "dt": self.dt, "traj": i}
