"""The guide's `python scripts/analyze_phase3_ablation.py --output-dir reports/phase3`: `raysim analyze`.

    python scripts/analyze_phase3_ablation.py [--study results/phase3-local] --output-dir reports/phase3

Rebuilds ablation_report.md, architecture_comparison.csv/.png and hypotheses.json from a study's storage.
"""

from __future__ import annotations

import argparse
import sys

from raysim.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="results/phase3-local", help="the study's storage folder or URI")
    parser.add_argument("--output-dir", default=None, help="where to write the report (default <study>/report)")
    args = parser.parse_args()
    sys.exit(main(["analyze", args.study, *(["--out", args.output_dir] if args.output_dir else [])]))
