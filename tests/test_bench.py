"""The benchmark harness runs and writes the figures INTERFACE.md names (quick mode: a harness check only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(what: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "raysim.cli", "bench", what, "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / f"{what}.json").read_text())


def test_bench_train_quick(tmp_path):
    figures = _bench("train", tmp_path)
    assert figures["device"] == "cpu" and figures["machine"]["device"] == "cpu"
    assert set(figures["arms"]) == {"ushaped-128", "ushaped-256", "pure-128", "pure-256", "pure-128-chansep",
                                    "fno-baseline"}
    for arm in figures["arms"].values():
        assert arm["samples_per_second"] > 0 and arm["params"] > 0 and arm["flops_per_sample"] > 0


def test_bench_data_quick(tmp_path, monkeypatch):
    figures = _bench("data", tmp_path)
    for key in ("trajectories_per_second", "nrmse_vs_reference", "loader_headroom"):
        assert figures[key] > 0, key
    assert figures["nrmse_vs_reference"] < 1e-3


@pytest.mark.slow
def test_bench_overhead_quick(tmp_path):
    figures = _bench("overhead", tmp_path)
    assert figures["overhead_ratio"] > 0 and figures["plain_median"] > 0
    assert set(figures["breakdown_median_seconds"]) >= {"operator", "diffusion", "evaluation", "total"}


def test_bench_rejects_non_positive_repeats(capsys):
    from raysim.cli import main

    assert main(["bench", "overhead", "--repeats", "0"]) == 2
    err = capsys.readouterr().err
    assert "--repeats" in err and "Traceback" not in err
