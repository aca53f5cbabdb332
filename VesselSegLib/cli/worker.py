"""The background segmentation worker: ``python -m VesselSegLib.cli.worker JOB_FOLDER [--parent-pid PID]``.

Reads the job :mod:`VesselSegLib.cli.job` describes, runs ``run_segmentation`` and writes the result into
``JOB_FOLDER/result/`` (staged, then renamed: whole or not at all). On stdout, one flushed line each:
``PROGRESS <fraction> <message>``, then ``DONE``, ``ERROR <one line>`` or ``CANCELLED``. SIGINT and SIGTERM
end it cleanly, without a result (exit status 130 and 143); an error exits with 1. With ``--parent-pid`` it
also stops, the same way, when that process is gone (Slicer closed or crashed while it ran).

The Slicer module starts it with PythonSlicer, so the segmentation runs outside Slicer's main thread and GIL;
the module's widget is its only user (:class:`VesselSegLib.cli.background.BackgroundSegmentation`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence

from VesselSegLib.cli.job import CANCELLED, DONE, ERROR, one_line, progress_line, read_job, write_result
from VesselSegLib.errors import SegmentationCancelled, TerminatedBySignal

PARENT_CHECK_INTERVAL_S = 1.0


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _watch_parent(pid: int) -> None:
    """Send this process SIGTERM once ``pid`` has ended (checked every second, in a daemon thread)."""
    try:
        import psutil

        parent = psutil.Process(pid)
    except Exception:  # psutil missing, or the parent already gone: nothing to watch
        return

    def watch() -> None:
        while parent.is_running():  # compares the start time too, so a reused PID does not count
            time.sleep(PARENT_CHECK_INTERVAL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="vesselseg-parent-watch", daemon=True).start()


def run_job(folder: str) -> int:
    """Run the job in ``folder``, reporting on stdout; returns the exit status."""
    written = None
    try:
        _emit(progress_line(0.0, "Reading the input"))
        inputs, request = read_job(folder)
        inputs.check(request.companion_modalities)  # a bad image is refused before PyTorch is imported
        _emit(progress_line(0.0, "Loading the method"))
        from VesselSegLib.inference.pipeline import run_segmentation

        result = run_segmentation(inputs, request, progress=lambda f, m: _emit(progress_line(f, m)))
        written = write_result(folder, result)
        _emit(DONE)
        return 0
    except (TerminatedBySignal, KeyboardInterrupt, SegmentationCancelled) as stop:
        if written is not None:  # stopped between the result's rename and DONE: take it back
            shutil.rmtree(written, ignore_errors=True)
        _emit(CANCELLED)
        return int(stop.code) if isinstance(stop, TerminatedBySignal) else 130
    except (ValueError, FileNotFoundError, MemoryError) as error:  # the library's messages for the user
        _emit(f"{ERROR} {one_line(error) or type(error).__name__}")
        return 1
    except Exception as error:  # a bug or an OSError: the traceback goes to the log, one line to the caller
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        _emit(f"{ERROR} {type(error).__name__}: {one_line(error)}")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m VesselSegLib.cli.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("job_folder", help="folder holding job.json and the input volumes")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process has ended")
    args = parser.parse_args(argv)
    # Protocol lines are UTF-8 whatever the locale, one per line; warnings go to stderr, apart from them.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace", line_buffering=True)
    logging.basicConfig(level=logging.WARNING, format="vesselseg worker: %(levelname)s: %(message)s")

    from VesselSegLib.io.output_folder import SignalsAsExceptions

    signals = SignalsAsExceptions().enter()  # SIGINT -> KeyboardInterrupt, SIGTERM -> TerminatedBySignal
    try:
        if args.parent_pid is not None:
            _watch_parent(args.parent_pid)
        return run_job(args.job_folder)
    finally:
        signals.exit(ignore_late_signals=True)


if __name__ == "__main__":
    sys.exit(main())
