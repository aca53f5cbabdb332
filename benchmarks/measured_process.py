"""Run a command in a child process and measure its wall time and its own peak resident memory.

Why a launcher: Linux carries a process's peak RSS across ``fork`` and ``exec`` (the forked copy of the
parent's memory map keeps the parent's high-water mark, and ``exec`` folds it into the rusage). A child
forked straight from a benchmark that holds a 1 GiB phantom would report at least the benchmark's own peak,
whatever it used itself. So the command is forked from a fresh, small Python process (this file run as a
script), whose own peak (about 15 MiB) is the only thing carried over; it reaps the command with
``os.wait4`` and writes the command's ``ru_maxrss`` to a report file.

    python benchmarks/measured_process.py REPORT.json -- COMMAND [ARG ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def run_measured(command: Sequence[str], what: str) -> dict:
    """Run ``command``; returns ``{"wall_s", "peak_rss_mib", "user_s", "sys_s", "stdout", "stderr"}`` (CPU
    seconds of the command itself), SystemExit on failure.

    The pipes are read on threads so a chatty child cannot block.
    """
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "rusage.json"
        launcher = [sys.executable, str(Path(__file__).resolve()), str(report), "--", *command]
        started = time.perf_counter()
        child = subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        outputs: dict[str, str] = {}
        readers = [
            threading.Thread(target=lambda name=name, pipe=pipe: outputs.__setitem__(name, pipe.read()))
            for name, pipe in (("stdout", child.stdout), ("stderr", child.stderr))
        ]
        for reader in readers:
            reader.start()
        code = child.wait()
        wall = time.perf_counter() - started
        for reader in readers:
            reader.join()
        if code != 0:
            raise SystemExit(f"{what} failed: {outputs.get('stderr', '').strip()[-2000:]}")
        usage = json.loads(report.read_text())
    return {
        "wall_s": wall,
        **usage,
        "stdout": outputs.get("stdout", ""),
        "stderr": outputs.get("stderr", ""),
    }


def _launch(report: str, command: list[str]) -> int:
    """Fork ``command`` from this small process, reap it with ``os.wait4`` and write its peak RSS."""
    child = subprocess.Popen(command)  # inherits our stdout/stderr, which the caller reads
    _, status, usage = os.wait4(child.pid, 0)
    Path(report).write_text(
        json.dumps(
            {
                "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: kilobytes
                "user_s": usage.ru_utime,
                "sys_s": usage.ru_stime,  # kernel time: page faults, file I/O
            }
        )
    )
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit("usage: measured_process.py REPORT.json -- COMMAND [ARG ...]")
    raise SystemExit(_launch(sys.argv[1], sys.argv[3:]))
