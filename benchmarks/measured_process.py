"""Run a command in a child process and measure its wall time and its own peak resident memory."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence


def run_measured(command: Sequence[str], what: str) -> dict:
    """Run ``command``; returns ``{"wall_s", "peak_rss_mib", "stdout", "stderr"}``, SystemExit on failure.

    The child is reaped with ``os.wait4``, whose rusage is this child's alone (``RUSAGE_CHILDREN`` would keep
    the largest peak of all children so far). Its pipes are read on threads so a chatty child cannot block.
    """
    started = time.perf_counter()
    child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda name=name, pipe=pipe: outputs.__setitem__(name, pipe.read()))
        for name, pipe in (("stdout", child.stdout), ("stderr", child.stderr))
    ]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    for reader in readers:
        reader.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{what} failed: {outputs.get('stderr', '').strip()[-2000:]}")
    return {
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports kilobytes
        "stdout": outputs.get("stdout", ""),
        "stderr": outputs.get("stderr", ""),
    }
