"""The guide's `python scripts/validate_config.py CONFIG...`: the same checks as `raysim validate`.

Prints "valid" lines (exit 0) or one `FILE: field: reason` line per problem (exit 2).
"""

from __future__ import annotations

import sys

from raysim.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
