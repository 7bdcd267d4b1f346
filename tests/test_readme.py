"""The README's commands and its Tune-search example stay true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_install_run_and_test_commands():
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert "pip install torch==2.13.0" in first[0] and "raysim run ablations/phase3.yaml" in first[0]
    assert first[1] == "python -m pytest -q"
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_tune_search_example_runs(tmp_path):
    block = README.split("## Your own Tune search", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    code = code.replace('STUDY_DIR = "results/pure-128-search"', f'STUDY_DIR = "{tmp_path}"')
    code = code.replace('PROFILE = "local"', 'PROFILE = "smoke"')
    assert str(tmp_path) in code and '"smoke"' in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = list((tmp_path / "trials").glob("pure-128__seed0__*/result.json"))
    assert len(trials) == 2  # two sampled configurations, two trial folders, no collision
    assert "operator.lr" in proc.stdout


def test_the_main_job_starts_on_a_fresh_clone(monkeypatch):
    # `raysim run ablations/phase3.yaml` refuses a storage folder that already holds a study: none may be committed
    from raysim.config import load_matrix

    monkeypatch.chdir(ROOT)
    from raysim.tune.study import default_study_dir

    matrix = load_matrix(ROOT / "ablations" / "phase3.yaml")
    assert not (Path(default_study_dir(matrix, matrix.default_profile)) / "study.json").exists()
