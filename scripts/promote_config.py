"""The guide's `python scripts/promote_config.py ... --update-leaderboard`: `raysim promote`.

    python scripts/promote_config.py STUDY_DIR --arm pure-256 [--leaderboard results/leaderboard.csv]

Gates the arm against the leaderboard's champion; on pass records it and writes its resolved config to
ablations/promoted/ (exit 0), else explains the refusal (exit 1).
"""

from __future__ import annotations

import sys

from raysim.cli import main

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--update-leaderboard"]  # the leaderboard is always updated on pass
    sys.exit(main(["promote", *args]))
