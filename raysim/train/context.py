"""Where a trial runs: a Ray Train worker, or in-process (plain PyTorch, for benchmarks and tests).

Both offer what the training loop needs: rank, world size, the checkpoint to resume from,
model and loader preparation, and a report of metrics with a checkpoint directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from raysim.analysis.storage import write_text_atomic
from raysim.train.common import replace_dir


class RayWorker:
    """A Ray Train V2 worker: reports with a checkpoint directory, resumes from the latest one."""

    def __init__(self) -> None:
        import ray.train

        logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per checkpoint and report
        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self._resume_dir: Path | None = None
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            self._resume_dir = Path(tempfile.mkdtemp(prefix="raysim-resume-"))
            with ckpt.as_directory() as d:
                shutil.copytree(d, self._resume_dir, dirs_exist_ok=True)

    def resume_dir(self) -> Path | None:
        return self._resume_dir

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model) if self.world_size > 1 else model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader, move_to_device=False) if self.world_size > 1 else loader

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        from ray.train import Checkpoint

        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        self._train.report(metrics, checkpoint=checkpoint)


class LocalStageContext:
    """In-process, one worker: checkpoints kept under `out_dir/checkpoint`, metrics in a list."""

    rank = 0
    world_size = 1

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics: list[dict[str, Any]] = []

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def resume_dir(self) -> Path | None:
        return self.checkpoint_dir if self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.iterdir()) else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.metrics.append(dict(metrics))
        if checkpoint_dir is not None and checkpoint_dir != self.checkpoint_dir:
            replace_dir(checkpoint_dir, self.checkpoint_dir)
        write_text_atomic(self.out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics))
