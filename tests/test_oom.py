"""Out-of-memory recovery: an injected OOM on CPU shrinks the micro-batch and keeps the effective batch."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from raysim.config import load_matrix, resolve_arm
from raysim.train import oom
from raysim.train.loop import epoch_steps
from raysim.train.oom import OOMAdjustment, StageOutOfMemory, is_oom, run_with_oom_recovery, shrink

PHASE3 = Path(__file__).resolve().parents[1] / "ablations" / "phase3.yaml"
CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"


@pytest.fixture(autouse=True)
def freed(monkeypatch):
    """Counts free_memory calls instead of a full gc.collect (up to a second each) per retry."""
    calls = []
    monkeypatch.setattr(oom, "free_memory", lambda: calls.append(1))
    return calls


@pytest.fixture(scope="module")
def operator_stage():
    """The smoke profile's operator StageConfig (batch 16, max_steps_per_epoch 20)."""
    matrix = load_matrix(PHASE3)
    return resolve_arm(matrix, next(iter(matrix.arms)), "smoke").operator


def _oom_above(limit: int, error=torch.OutOfMemoryError):
    calls = []

    def run(cfg):
        calls.append(cfg)
        if cfg.batch_size > limit:
            raise error(CUDA_OOM)
        return cfg

    return run, calls


def test_injected_oom_halves_the_micro_batch_until_it_fits(operator_stage, freed):
    start = dataclasses.replace(operator_stage, batch_size=64, grad_accum_steps=1)
    run, calls = _oom_above(16)
    retried: list[OOMAdjustment] = []
    final, adjustments = run_with_oom_recovery("operator", start, run, on_retry=retried.append)

    assert (final.batch_size, final.grad_accum_steps, final.max_steps_per_epoch) == (16, 4, 80)
    assert [c.batch_size * c.grad_accum_steps for c in calls] == [64, 64, 64]
    assert retried == adjustments and len(adjustments) == 2 and len(freed) == 2
    first, second = adjustments
    assert (first.attempt, first.batch_size_before, first.batch_size_after) == (1, 64, 32)
    assert (first.grad_accum_before, first.grad_accum_after) == (1, 2)
    assert (first.max_steps_per_epoch_before, first.max_steps_per_epoch_after) == (20, 40)
    assert (second.attempt, second.batch_size_before, second.batch_size_after) == (2, 32, 16)
    assert (second.grad_accum_before, second.grad_accum_after) == (2, 4)
    assert all(a.effective_batch == 64 and a.stage == "operator" for a in adjustments)
    assert first.error.startswith("OutOfMemoryError: CUDA out of memory") and "\n" not in first.error
    assert first.describe() == ("operator: out of memory at micro-batch 64; retried at 32 x 2 accumulation "
                                "(effective batch 64)")
    assert json.loads(json.dumps(second.as_dict()))["batch_size_after"] == 16


@pytest.mark.parametrize("message", [
    CUDA_OOM,
    "CUDA error: out of memory",
    "HIP out of memory. Tried to allocate 20.00 MiB",
    "MPS backend out of memory (MPS allocated: 1.2 GB, other allocations: 0 bytes, max allowed: 1.7 GB)",
    "XPU out of memory. Tried to allocate 59.61 GiB",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
])
def test_runtime_errors_that_say_out_of_memory_are_oom(message):
    assert is_oom(RuntimeError(message))


@pytest.mark.parametrize("exc", [RuntimeError("shape mismatch"), ValueError("out of memory"), MemoryError()])
def test_other_errors_are_not_oom(exc):
    assert not is_oom(exc)


def test_a_plain_runtime_error_with_cudas_message_is_retried(operator_stage):
    run, calls = _oom_above(8, error=RuntimeError)
    final, adjustments = run_with_oom_recovery("diffusion", operator_stage, run)
    assert (final.batch_size, final.grad_accum_steps, len(adjustments), len(calls)) == (8, 2, 1, 2)


def test_other_errors_propagate_unchanged_without_retry(operator_stage):
    error = RuntimeError("shape mismatch")
    calls, retried = [], []

    def run(cfg):
        calls.append(cfg)
        raise error

    with pytest.raises(RuntimeError) as info:
        run_with_oom_recovery("operator", operator_stage, run, on_retry=retried.append)
    assert info.value is error and len(calls) == 1 and not retried


def test_reaching_the_floor_raises_stage_out_of_memory(operator_stage):
    start = dataclasses.replace(operator_stage, batch_size=64)
    run, calls = _oom_above(0)
    with pytest.raises(StageOutOfMemory, match=r"'operator'.*micro-batch 16 \(floor 16") as info:
        run_with_oom_recovery("operator", start, run, floor=16)
    assert [c.batch_size for c in calls] == [64, 32, 16]
    assert len(info.value.adjustments) == 2 and is_oom(info.value.__cause__)
    with pytest.raises(StageOutOfMemory, match="micro-batch 64"):
        run_with_oom_recovery("operator", start, run, max_retries=0)


def test_shrink_keeps_the_effective_batch_exact_for_odd_micro_batches(operator_stage):
    cfg, seen = dataclasses.replace(operator_stage, batch_size=48, grad_accum_steps=1), []
    while (cfg := shrink(cfg)) is not None:
        seen.append((cfg.batch_size, cfg.grad_accum_steps))
    assert seen == [(24, 2), (12, 4), (6, 8), (3, 16), (1, 48)]
    prime = shrink(dataclasses.replace(operator_stage, batch_size=7, grad_accum_steps=2))
    assert (prime.batch_size, prime.grad_accum_steps) == (1, 14)
    assert shrink(dataclasses.replace(operator_stage, batch_size=4), floor=3) is None


def test_shrink_doubles_max_steps_per_epoch_only_when_set(operator_stage):
    assert shrink(operator_stage).max_steps_per_epoch == 40
    assert shrink(dataclasses.replace(operator_stage, max_steps_per_epoch=None)).max_steps_per_epoch is None
    assert type(shrink(operator_stage)) is type(operator_stage)


def _total_opt_steps(stage, samples: int, drop_last: bool | None) -> int:
    """The scheduler's total steps as `fit` computes them from a real DataLoader (drop_last None: as the stages)."""
    drop_last = samples > stage.batch_size if drop_last is None else drop_last  # the rule of stages._loaders
    loader = DataLoader(TensorDataset(torch.zeros(samples, 1)), batch_size=stage.batch_size, drop_last=drop_last)
    return stage.epochs * epoch_steps(loader, stage)[1]


@pytest.mark.parametrize("samples", [5, 12, 64, 100, 108, 157, 1000])
@pytest.mark.parametrize(("batch_size", "grad_accum", "max_steps"), [(16, 1, 20), (16, 3, 7), (12, 2, None), (9, 1, 4),
                                                                    (16, 1, None)])
@pytest.mark.parametrize("drop_last", [False, None])
def test_shrink_keeps_the_lr_schedule(operator_stage, samples, batch_size, grad_accum, max_steps, drop_last):
    # 108 = 6 x 16 + 12: a drop_last loader at micro-batch 8 has a 13th micro-batch, which `epoch_steps` drops
    cfg = dataclasses.replace(operator_stage, batch_size=batch_size, grad_accum_steps=grad_accum,
                              max_steps_per_epoch=max_steps)
    assert _total_opt_steps(shrink(cfg), samples, drop_last) == _total_opt_steps(cfg, samples, drop_last)


def test_free_memory_runs_on_cpu(monkeypatch):
    monkeypatch.undo()
    oom.free_memory()


def test_recovered_training_matches_the_full_effective_batch_numerically(operator_stage):
    """Training as `fit` accumulates, with a forward that OOMs above 4 samples: same gradients, same weights."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    init = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    start = dataclasses.replace(operator_stage, batch_size=16, grad_accum_steps=1, max_steps_per_epoch=3)

    def train(stage, limit: int):
        model, first_grads = copy.deepcopy(init), None
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = DataLoader(TensorDataset(inputs, targets), batch_size=stage.batch_size)
        steps_per_epoch = min(len(loader), stage.max_steps_per_epoch)
        for _ in range(2):
            taken = 0
            for i, (x, y) in enumerate(loader):
                if i >= steps_per_epoch:
                    break
                if len(x) > limit:
                    raise torch.OutOfMemoryError(f"CUDA out of memory at micro-batch {len(x)}")
                loss = torch.mean((model(x) - y) ** 2)
                (loss / stage.grad_accum_steps).backward()
                taken += 1
                if taken % stage.grad_accum_steps == 0 or i == steps_per_epoch - 1:
                    if first_grads is None:
                        first_grads = [p.grad.clone() for p in model.parameters()]
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        return first_grads, model

    (grads, model), adjustments = run_with_oom_recovery("operator", start, lambda s: train(s, limit=4))
    assert [(a.batch_size_after, a.grad_accum_after) for a in adjustments] == [(8, 2), (4, 4)]

    direct = copy.deepcopy(init)
    torch.mean((direct(inputs[:16]) - targets[:16]) ** 2).backward()
    for g, p in zip(grads, direct.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-6)
    _, reference = train(start, limit=16)
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_oom_is_recovered(operator_stage):
    """Capped at 1 GiB, 32 MiB per sample: micro-batch 64 and 32 fail in the allocator, 16 fits."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(2**30 / total)
    try:
        def run(cfg):
            block = torch.empty(cfg.batch_size * 2**25, dtype=torch.uint8, device="cuda")
            return cfg.batch_size, block.numel()

        start = dataclasses.replace(operator_stage, batch_size=64, grad_accum_steps=1)
        (batch, _), adjustments = run_with_oom_recovery("operator", start, run)
        assert batch == 16 and [a.batch_size_after for a in adjustments] == [32, 16]
        assert adjustments[0].error.startswith("OutOfMemoryError: CUDA out of memory")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
