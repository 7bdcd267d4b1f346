"""Run an ablation study on the Ray cluster this script runs on: the `ray submit` entry point.

    ray submit cluster.yaml scripts/run_ablation.py -- ablations/phase3.yaml --profile cloud \\
        --storage gs://YOUR_BUCKET/raysim/phase3-cloud

The arguments are those of `raysim run` (the same function runs). `ray submit` copies this file
alone to the head node's home directory and runs it there, with raysim pip-installed (editable)
from the synced tree ~/raysim (cluster.yaml). So:

- relative paths (the matrix, `--storage`) are resolved from the project root, as on a laptop;
- with no RAY_ADDRESS the study joins the Ray cluster already running on this node
  (`RAY_ADDRESS=auto`) instead of starting a private one beside it. Locally, use `raysim run`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import raysim
from raysim.cli import main


def project_root() -> Path | None:
    """The source tree raysim is installed from (editable install), if there is one."""
    root = Path(raysim.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


if __name__ == "__main__":
    root = project_root()
    if root is not None and not Path.cwd().resolve().is_relative_to(root):
        os.chdir(root)
    os.environ.setdefault("RAY_ADDRESS", "auto")
    sys.exit(main(["run", *sys.argv[1:]]))
