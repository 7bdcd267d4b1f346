"""Burgers data: ETDRK4 generator, PDEBench-layout HDF5 reading, lazy torch datasets.

`raysim.data.dataset` (torch) is imported on first use of its names.
"""

from __future__ import annotations

from typing import Any

from raysim.data.burgers import generate, initial_conditions, solve, solver_nx
from raysim.data.pdebench import BurgersInfo, find_problems, inspect_lines, open_info

_DATASET_NAMES = ("PairDataset", "RolloutDataset", "Normalizer", "split_indices", "grid",
                  "spacing")

__all__ = ["BurgersInfo", "find_problems", "generate", "initial_conditions", "inspect_lines",
           "open_info", "solve", "solver_nx", *_DATASET_NAMES]


def __getattr__(name: str) -> Any:
    if name in _DATASET_NAMES:
        from raysim.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'raysim.data' has no attribute {name!r}")
