"""Processes of one command under test, read from /proc: started in a session of its own, tracked by
PID and start time (never by name), killed only by PID.

A `raysim` command started with `start_new_session=True` leads a session: its embedded Ray instance
(GCS, raylet, dashboard, agents) joins the command's process group, and the raylet's workers move to
process groups of their own but stay in the session. So the session id names every process of the run,
even ones reparented to init after their parent died; a `Tracker` also follows children that leave the
session (setsid) by their parent PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Proc:
    """One process as /proc showed it; `(pid, start)` identifies it even after the PID is reused."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot
    state: str
    cmdline: str

    def __str__(self) -> str:
        return f"pid {self.pid} (ppid {self.ppid}, pgid {self.pgid}, state {self.state}): {self.cmdline[:160]}"


def read(pid: int) -> Proc | None:
    """The process `pid`, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip() or stat[stat.index("(") + 1:stat.rindex(")")]
    return Proc(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]), start=int(fields[19]),
                state=fields[0], cmdline=cmdline)


def processes() -> list[Proc]:
    """Every process visible now."""
    found = (read(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [p for p in found if p is not None]


def alive(p: Proc) -> bool:
    """Still running (not a zombie) and still the same process (same start time)."""
    now = read(p.pid)
    return now is not None and now.start == p.start and now.state != "Z"


def kill(p: Proc) -> None:
    """SIGKILL `p` by PID, only if that PID is still the process we identified."""
    if alive(p):
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Tracker:
    """Every process a command's session ever held (seen at each `poll`), and which of them still live."""

    def __init__(self, sid: int):
        self.sid = sid
        self.seen: dict[tuple[int, int], Proc] = {}

    def poll(self) -> list[Proc]:
        """The session's living processes now (plus children that left it); all are remembered."""
        now = [p for p in processes() if p.state != "Z"]
        known = {p.pid for p in self.seen.values() if alive(p)}
        members = [p for p in now if p.sid == self.sid or p.ppid in known]
        for p in members:
            self.seen.setdefault((p.pid, p.start), p)
        return members

    def living(self) -> list[Proc]:
        self.poll()
        return [p for p in self.seen.values() if alive(p)]

    def wait_gone(self, timeout: float) -> list[Proc]:
        """Wait until none of the session's processes is left; returns those still there after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := self.living()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def kill_all(self) -> list[Proc]:
        """SIGKILL every living process of the session, by PID; returns what was killed."""
        left = self.living()
        for p in left:
            kill(p)
        return left


class Command:
    """A command in a session of its own, its output in a log file, its processes tracked."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], cwd: Path):
        self.args = args
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        self.tracker = Tracker(self.proc.pid)
        self.tracker.poll()

    def tail(self, chars: int = 4000) -> str:
        """The end of the command's output, for failure messages."""
        self._log.flush()
        text = self.log_path.read_bytes().decode(errors="replace")
        return f"--- {' '.join(self.args[2:])}: last {chars} characters of output ---\n{text[-chars:]}"

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
        """Poll `check` until it returns something truthy; fail (with the output's tail) on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tracker.poll()
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {what}\n{self.tail()}")
            time.sleep(interval)
        raise AssertionError(f"no {what} after {timeout:.0f} s\n{self.tail()}")

    def wait(self, timeout: float) -> int:
        """The exit status; fails with the output's tail if the command runs past `timeout`."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout:.0f} s\n{self.tail()}")
            self.tracker.poll()
            time.sleep(0.5)
        return self.proc.returncode

    def kill_group(self) -> None:
        """SIGKILL the command's process group (the driver and every Ray process that did not leave it)."""
        self.tracker.poll()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def close(self) -> list[Proc]:
        """Kill whatever of the run is left (by PID) and close the log; returns what had to be killed."""
        if self.proc.poll() is None:
            self.kill_group()
        left = self.tracker.kill_all()
        self._log.close()
        return left
