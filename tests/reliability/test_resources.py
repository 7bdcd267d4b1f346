"""No hang: a trial no node can ever hold fails fast, exit 2, one line naming the field, nothing written.

Ray Train would otherwise wait for its workers forever (RAY_NOTES.md: V2 retries forever). These run
`raysim` for real: each starts its own embedded local Ray instance, which has no GPU and no autoscaler.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysim.tune.study import _workers_that_fit

ROOT = Path(__file__).resolve().parents[2]
PHASE3 = str(ROOT / "ablations" / "phase3.yaml")


def test_workers_that_fit_counts_whole_bundles_across_nodes():
    a100 = {"CPU": 1.0, "GPU": 1.0, "accelerator_type:A100": 0.001}
    nodes = [{"CPU": 8.0, "GPU": 2.0, "accelerator_type:A100": 1.0}, {"CPU": 2.0}, {"CPU": 1.5, "GPU": 1.0}]
    assert _workers_that_fit(a100, nodes) == 2  # the GPU-less node and the non-A100 node hold none
    assert _workers_that_fit({"CPU": 1.0}, nodes) == 11
    assert _workers_that_fit({"CPU": 1.0, "GPU": 1.0}, nodes) == 3


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "run"])
def test_a_gpu_trial_on_a_machine_without_one_fails_fast(command, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "raysim.cli", command, PHASE3, "--profile", "smoke",
            "--set", "resources.use_gpu=true", "--set", f"data.cache_dir={tmp_path / 'data'}"]
    argv += ["--arm", "pure-128", "--out", str(out)] if command == "train" else ["--storage", str(out)]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    seconds = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "resources.use_gpu" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{PHASE3}: resources.use_gpu: "), proc.stderr[-3000:]
    assert "asks for a GPU" in errors[0] and "no autoscaler" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "data").exists(), "wrote before refusing"
    assert seconds < 120, f"took {seconds:.0f} s to refuse"
