"""One progress bar for the project: tqdm live on a terminal, a few plain lines in a log, nothing when off."""

from __future__ import annotations

import io
import sys

from tqdm import tqdm

LOG_LINES = 4  # plain lines per bar when stderr is not a terminal (one at each quarter of the total)
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"


class _LogBar(tqdm):
    """tqdm for a log file: one plain line on stderr at each 1/LOG_LINES of the total, no redraws."""

    def __init__(self, total: int, desc: str, unit: str):
        self._lines = 0  # lines printed so far
        # tqdm's own carriage-return output goes to a sink; display() prints the lines.
        super().__init__(total=total, desc=desc, unit=unit, file=io.StringIO(), mininterval=0, miniters=1,
                         bar_format=LOG_FORMAT)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is None and self.total:  # tqdm passes a msg only to clear the line
            line = LOG_LINES * self.n // self.total
            if line > self._lines:
                self._lines = line
                print(self.format_meter(**self.format_dict), file=sys.stderr, flush=True)
        return True


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> tqdm:
    """A bar counting `total` units on stderr (count, rate, ETA): live on a terminal, else a few lines; off: silent."""
    if enabled and not sys.stderr.isatty():
        return _LogBar(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)
