"""Exceptions shared by the library, the Slicer module and the command line."""


class SegmentationCancelled(Exception):
    """Raised when the user cancels a running segmentation; nothing has been written or added."""


class CommandError(Exception):
    """A command-line failure to report as one line and exit code 1."""


class CheckpointError(ValueError):
    """A weights file is missing, corrupt, or does not match the architecture it is loaded into."""


class OutputFolderError(ValueError):
    """An output folder cannot be used, replaced or written; the message names it, says why and what to do."""


class TerminatedBySignal(SystemExit):
    """SIGTERM or SIGHUP arrived while VesselSeg was working (see ``VesselSegLib.io.output_folder``).

    Raised in the main thread, as Ctrl+C raises ``KeyboardInterrupt``, so that ``finally`` blocks remove the
    partial output; uncaught, the process exits with status 128 + the signal number, as the shell reports.
    """

    def __init__(self, signum: int):
        super().__init__(128 + int(signum))
        self.signum = int(signum)

    def __str__(self) -> str:
        import signal

        try:
            return f"stopped by {signal.Signals(self.signum).name}"
        except ValueError:
            return f"stopped by signal {self.signum}"
