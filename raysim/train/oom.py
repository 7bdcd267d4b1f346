"""Out-of-memory recovery for a training stage: split the micro-batch, raise accumulation, retry.

The effective batch (batch_size * grad_accum_steps) stays exact, and so do the samples and optimiser
steps per epoch (the LR schedule: `raysim.train.loop.epoch_steps` keeps whole effective batches only).
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from raysim.config import StageConfig

T = TypeVar("T")
S = TypeVar("S", bound=StageConfig)

# torch's allocator messages: "CUDA out of memory. Tried to allocate ...", "HIP out of memory. ...",
# "XPU out of memory. ...", "MPS backend out of memory (...)", and "CUDA error: out of memory".
_OOM_MARKERS = ("out of memory", "cublas_status_alloc_failed")


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is a device out-of-memory error (torch.OutOfMemoryError, or a RuntimeError that says so)."""
    if isinstance(exc, torch.OutOfMemoryError):  # torch.cuda.OutOfMemoryError is the same class
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc).lower() for marker in _OOM_MARKERS)


@dataclass(frozen=True)
class OOMAdjustment:
    """One retry after an out-of-memory error: the stage settings before and after."""

    stage: str
    attempt: int  # 1 for the first retry
    batch_size_before: int
    batch_size_after: int
    grad_accum_before: int
    grad_accum_after: int
    max_steps_per_epoch_before: int | None
    max_steps_per_epoch_after: int | None
    effective_batch: int
    error: str  # the error's first line, truncated

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return (f"{self.stage}: out of memory at micro-batch {self.batch_size_before}; retried at "
                f"{self.batch_size_after} x {self.grad_accum_after} accumulation "
                f"(effective batch {self.effective_batch})")


class StageOutOfMemory(RuntimeError):
    """A stage ran out of memory and its micro-batch cannot be split any further."""

    def __init__(self, stage: str, batch_size: int, floor: int, adjustments: list[OOMAdjustment]):
        self.stage, self.batch_size, self.floor, self.adjustments = stage, batch_size, floor, adjustments
        super().__init__(
            f"stage {stage!r} ran out of memory at micro-batch {batch_size} (floor {floor}, "
            f"{len(adjustments)} retries); reduce the model size or the batch size, or use a GPU with more memory"
        )


def shrink(stage_cfg: S, floor: int = 1) -> S | None:
    """A copy with the micro-batch split by its smallest prime factor (halved when even) and
    grad_accum_steps and max_steps_per_epoch multiplied by it; None below `floor` or at micro-batch 1.

    Dividing by a factor, never rounding, keeps the effective batch exact: an odd micro-batch goes
    48 -> 24 -> 12 -> 6 -> 3 -> 1 x 48 accumulation. max_steps_per_epoch counts micro-batches in `fit`;
    scaled, it keeps the samples and optimiser steps per epoch (the LR schedule; see `epoch_steps`).
    """
    factor = next((d for d in range(2, math.isqrt(stage_cfg.batch_size) + 1) if stage_cfg.batch_size % d == 0),
                  stage_cfg.batch_size)
    batch_size = stage_cfg.batch_size // factor
    if factor < 2 or batch_size < max(floor, 1):
        return None
    steps = stage_cfg.max_steps_per_epoch
    return dataclasses.replace(stage_cfg, batch_size=batch_size, grad_accum_steps=stage_cfg.grad_accum_steps * factor,
                               max_steps_per_epoch=steps * factor if steps else steps)


def free_memory() -> None:
    """Collect garbage and return cached device blocks after an out-of-memory error."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


def run_with_oom_recovery(
    stage_name: str,
    stage_cfg: S,
    run: Callable[[S], T],
    *,
    floor: int = 1,
    on_retry: Callable[[OOMAdjustment], None] | None = None,
    max_retries: int = 8,
) -> tuple[T, list[OOMAdjustment]]:
    """`run(stage_cfg)`, retried with a `shrink`-ed config after each out-of-memory error.

    `run` should resume from the stage's last checkpoint, so a retry continues the stage rather
    than restarting it. Other exceptions propagate unchanged; when the micro-batch cannot shrink
    (floor, micro-batch 1, or `max_retries` reached) StageOutOfMemory is raised from the last OOM.
    """
    adjustments: list[OOMAdjustment] = []
    while True:
        try:
            return run(stage_cfg), adjustments
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            smaller = shrink(stage_cfg, floor) if len(adjustments) < max_retries else None
            if smaller is None:
                raise StageOutOfMemory(stage_name, stage_cfg.batch_size, floor, adjustments) from exc
            lines = str(exc).strip().splitlines() or [""]
            error = f"{type(exc).__name__}: {lines[0]}"[:200]
        # out of the except block: the traceback and the tensors its frames held are released
        free_memory()
        adjustment = OOMAdjustment(
            stage=stage_name,
            attempt=len(adjustments) + 1,
            batch_size_before=stage_cfg.batch_size,
            batch_size_after=smaller.batch_size,
            grad_accum_before=stage_cfg.grad_accum_steps,
            grad_accum_after=smaller.grad_accum_steps,
            max_steps_per_epoch_before=stage_cfg.max_steps_per_epoch,
            max_steps_per_epoch_after=smaller.max_steps_per_epoch,
            effective_batch=smaller.batch_size * smaller.grad_accum_steps,
            error=error,
        )
        adjustments.append(adjustment)
        if on_retry is not None:
            on_retry(adjustment)
        stage_cfg = smaller
