"""Run a segmentation in a worker process, watch its progress, stop it: the Slicer module's engine.

No Qt and no Slicer here, so it is tested as is. The module's widget uses it as MONAIAuto3DSeg runs its
inference: :meth:`BackgroundSegmentation.start` writes the job into a fresh temporary folder
(:mod:`VesselSegLib.cli.job`) and launches ``PYTHON -m VesselSegLib.cli.worker JOB_FOLDER``; a thread reads
the worker's stdout; the widget's QTimer calls :meth:`~BackgroundSegmentation.poll`, which never blocks; once
it answers ``DONE`` the GUI thread loads :meth:`~BackgroundSegmentation.result` and builds the nodes.
:meth:`~BackgroundSegmentation.cancel` kills the worker's whole process tree (PythonSlicer is a launcher
that starts the real interpreter as its child) and :meth:`~BackgroundSegmentation.cleanup` removes the job
folder. Example::

    job = BackgroundSegmentation(inputs, request).start()
    while job.poll() is WorkerState.RUNNING:
        time.sleep(0.1)
    result = job.result() if job.state is WorkerState.DONE else None
    job.cleanup()
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from VesselSegLib.cli.job import (
    CANCELLED,
    DONE,
    ERROR,
    PROGRESS,
    has_result,
    parse_line,
    read_result,
    write_job,
)

if TYPE_CHECKING:
    from VesselSegLib.inference.inputs import SegmentationInputs
    from VesselSegLib.inference.pipeline import SegmentationResult
    from VesselSegLib.request import SegmentationRequest

logger = logging.getLogger(__name__)

#: The folder holding the ``VesselSegLib`` package: the worker's working directory and PYTHONPATH entry.
LIBRARY_ROOT = Path(__file__).resolve().parents[2]
WORKER_MODULE = "VesselSegLib.cli.worker"
#: Last lines of the worker's log text kept for an error message (a traceback's end).
LOG_TAIL_LINES = 20

#: ``launcher(args, cwd, environment_updates) -> subprocess.Popen`` with stdout a pipe (stderr merged in);
#: ``slicer.util.launchConsoleProcess`` fits, given ``cwd=`` and ``updateEnvironment=``.
Launcher = Callable[[Sequence[str], str, Mapping[str, str]], subprocess.Popen]


class WorkerState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def popen_launcher(args: Sequence[str], cwd: str, environment_updates: Mapping[str, str]) -> subprocess.Popen:
    """Start ``args`` as ``slicer.util.launchConsoleProcess`` would, in this process's environment."""
    return subprocess.Popen(
        list(args),
        cwd=cwd,
        env={**os.environ, **environment_updates},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "an unknown status"
    import signal

    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode > 128:  # a handled signal: 128 + its number, as a shell reports it
        with contextlib.suppress(ValueError):
            return f"exit status {returncode}, {signal.Signals(returncode - 128).name}"
    return f"exit status {returncode}"


class BackgroundSegmentation:
    """One segmentation run in a worker process (see the module's docstring).

    Parameters
    ----------
    inputs : SegmentationInputs
        Input, mask and companions (the reference is not sent: score it against the result).
    request : SegmentationRequest
    python_executable : str, optional
        Interpreter that runs the worker; default ``sys.executable`` (inside Slicer: PythonSlicer).
    launcher : callable, optional
        Starts the process (:data:`Launcher`); default :func:`popen_launcher`.
    temporary_root : path, optional
        Where the job folder is made; default the system's temporary folder.
    progress_callback : callable(fraction, message), optional
        Called by :meth:`poll`, in its caller's thread, for each progress line of the worker.
    """

    def __init__(
        self,
        inputs: SegmentationInputs,
        request: SegmentationRequest,
        *,
        python_executable: str | os.PathLike | None = None,
        launcher: Launcher | None = None,
        temporary_root: str | os.PathLike | None = None,
        progress_callback: Callable[[float, str], None] | None = None,
    ) -> None:
        self.inputs = inputs
        self.request = request
        self.python_executable = str(python_executable or sys.executable)
        self.launcher = launcher or popen_launcher
        self.temporary_root = None if temporary_root is None else str(temporary_root)
        self.progress_callback = progress_callback
        self.job_folder: Path | None = None
        self.state = WorkerState.NOT_STARTED
        self.progress: tuple[float, str] = (0.0, "Starting the segmentation process")
        self.error: str | None = None
        self.returncode: int | None = None
        self.log_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._process: subprocess.Popen | None = None
        self._ps_process = None  # psutil.Process: signals only the process started (not a reused PID)
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._ended = threading.Event()
        self._reported: str | None = None
        self._reported_error: str | None = None
        self._cancelled = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def command(self) -> list[str]:
        return [
            self.python_executable,
            "-m",
            WORKER_MODULE,
            str(self.job_folder),
            "--parent-pid",
            str(os.getpid()),
        ]

    @staticmethod
    def environment_updates() -> dict[str, str]:
        """The library first on the worker's PYTHONPATH (its cwd is the library root too), output unbuffered."""
        path = os.environ.get("PYTHONPATH", "")
        return {
            "PYTHONPATH": os.pathsep.join(p for p in (str(LIBRARY_ROOT), path) if p),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> BackgroundSegmentation:
        """Write the job and launch the worker; raises (and removes the folder) if either fails."""
        import psutil

        if self.state is not WorkerState.NOT_STARTED:
            raise RuntimeError("This background segmentation was started already; make a new one.")
        self.job_folder = Path(tempfile.mkdtemp(prefix="VesselSeg-job-", dir=self.temporary_root))
        try:
            write_job(self.job_folder, self.inputs, self.request)
            self._process = self.launcher(self.command(), str(LIBRARY_ROOT), self.environment_updates())
            try:
                self._ps_process = psutil.Process(self._process.pid)
            except psutil.NoSuchProcess:  # ended already: the reader still collects its output
                self._ps_process = None
        except BaseException:
            self.state = WorkerState.FAILED
            self._kill_tree()
            self._remove_folder()
            raise
        self.state = WorkerState.RUNNING
        self._reader = threading.Thread(target=self._read_output, name="VesselSeg worker output", daemon=True)
        self._reader.start()
        return self

    def _read_output(self) -> None:
        process = self._process
        stream = process.stdout
        # Bytes, decoded here: a text pipe (launchConsoleProcess) would decode with the locale's encoding.
        raw = getattr(stream, "buffer", stream)
        try:
            for line in iter(raw.readline, b""):
                self._lines.put(line.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError):  # the pipe closed under us (cleanup)
            pass
        finally:
            process.wait()
            self._ended.set()

    def poll(self) -> WorkerState:
        """Take in the worker's new output (progress, outcome) and return the state; never blocks."""
        if self.state is not WorkerState.RUNNING:
            return self.state
        ended = self._ended.is_set()  # before draining: every line is queued before this is set
        self._drain()
        if ended:
            self._finish()
        return self.state

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> WorkerState:
        """Poll until the worker ends or ``timeout`` seconds pass; returns the state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is WorkerState.RUNNING:
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._ended.wait(interval)
        return self.state

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            parsed = parse_line(line)
            if parsed is None:
                if line.strip():
                    self.log_tail.append(line)
                    # The worker's warnings (a corrected voxel size, a missing mask) reach the user's log.
                    level = logging.WARNING if ": WARNING: " in line else logging.INFO
                    logger.log(level, "VesselSeg worker: %s", line)
                continue
            kind, fraction, message = parsed
            if kind == PROGRESS:
                self.progress = (fraction, message or self.progress[1])
                if self.progress_callback is not None:
                    self.progress_callback(*self.progress)
            else:
                self._reported = kind
                self._reported_error = message if kind == ERROR else None

    def _finish(self) -> None:
        self.returncode = self._process.returncode
        if self._cancelled:
            self.state = WorkerState.CANCELLED
        elif self._reported == DONE and self.returncode == 0 and has_result(self.job_folder):
            self.state = WorkerState.DONE
            self.progress = (1.0, self.progress[1])
        elif self._reported == ERROR:
            self.state, self.error = WorkerState.FAILED, self._reported_error
        elif self._reported == CANCELLED:  # stopped by a signal from elsewhere (the system, the user)
            self.state = WorkerState.CANCELLED
            self.error = f"The segmentation process was stopped ({_signal_name(self.returncode)})."
        else:
            last = next((line for line in reversed(self.log_tail) if line.strip()), "")
            self.state = WorkerState.FAILED
            self.error = f"The segmentation process ended unexpectedly ({_signal_name(self.returncode)})" + (
                f": {last.strip()}" if last else "."
            )

    # ------------------------------------------------------------------ result, cancel, cleanup

    def result(self) -> SegmentationResult:
        """The worker's result (GUI thread: this only loads the arrays); only once :meth:`poll` said DONE."""
        if self.state is not WorkerState.DONE:
            raise RuntimeError(f"No result: the segmentation is {self.state.value}.")
        return read_result(self.job_folder)

    def cancel(self) -> None:
        """Kill the worker and every process it started, now; :meth:`poll` then answers CANCELLED."""
        if self.state is not WorkerState.RUNNING:
            return
        self._cancelled = True
        self._kill_tree()
        self._ended.wait(5.0)
        self.poll()

    def _kill_tree(self) -> None:
        """SIGKILL (TerminateProcess on Windows) to the worker and all its descendants.

        Killed outright rather than asked to stop: the job folder, and any half-written result in it, is
        removed by :meth:`cleanup` anyway, and a kill cannot wait on a long native call as a signal handler
        would. The children are listed first, since a launcher's child outlives its killed parent."""
        import psutil

        parent = self._ps_process
        if parent is None:
            return
        try:
            children = parent.children(recursive=True)
        except psutil.Error:
            children = []
        for process in [*children, parent]:
            with contextlib.suppress(psutil.Error):
                process.kill()  # psutil checks the start time: a reused PID is left alone
        psutil.wait_procs(children, timeout=5.0)  # the direct child is reaped by the reader thread

    def _remove_folder(self) -> None:
        if self.job_folder is not None:
            shutil.rmtree(self.job_folder, ignore_errors=True)
            if self.job_folder.exists():
                logger.warning("Could not remove the VesselSeg job folder %s.", self.job_folder)

    def cleanup(self) -> None:
        """Stop a running worker and remove the job folder (results included: read them first)."""
        self.cancel()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        if self._process is not None and self._process.stdout is not None:
            with contextlib.suppress(OSError):
                self._process.stdout.close()
        self._remove_folder()

    def __enter__(self) -> BackgroundSegmentation:
        return self

    def __exit__(self, *exc_info) -> None:
        self.cleanup()


__all__ = ["BackgroundSegmentation", "WorkerState", "popen_launcher"]
