"""An output folder written whole or not at all, that never costs the user a file.

Both ``vesselseg segment``/``demo`` and ``vesselseg stream`` write their folder through
:class:`StagedOutputFolder` (or the :func:`staged_output_folder` context manager):

- **Checked first.** The target may not be, contain or be a link to any input (``--out`` equal to the input,
  ``--out x`` for ``x/tof.nii.gz``), may not be an existing file or a symbolic link, and may exist only with
  ``force``, and then only as a *previous VesselSeg output*: a folder whose ``summary.json`` parses and has
  ``vesselseg_version``, holding nothing but the files that summary lists (and ``.DS_Store``-style system
  files). An empty folder also qualifies. Anything else is refused with a message naming the folder and why.
- **Staged.** Everything is written into a hidden sibling ``.NAME.partial-<pid>-<random>``, locked with
  ``flock`` for as long as the run lives.
- **Committed atomically, never over anything.** The staging folder is renamed to the target with a rename
  that fails if the target exists (Linux ``renameat2(RENAME_NOREPLACE)``, macOS ``renamex_np(RENAME_EXCL)``,
  Windows ``os.rename``; elsewhere an exclusive ``mkdir`` then a rename onto that empty folder). With
  ``force`` the previous output is first renamed aside to ``.NAME.replaced-<pid>-<random>``, checked again
  there (so a file added to it during the run is not lost), the new folder renamed in, and only then the old
  one deleted; if the new one cannot be put in place, the old one is put back. A folder or file that appears
  at the target during the run is never replaced: the commit fails and says so.
- **Cleaned up on every signal that can be caught.** While staged, SIGINT raises ``KeyboardInterrupt`` and
  SIGTERM/SIGHUP raise :class:`~VesselSegLib.errors.TerminatedBySignal` (a ``SystemExit``) in the main
  thread (:class:`SignalsAsExceptions`); signals within :data:`STOPPING_GRACE_S` of it, or during the
  removal of the partial folder, are ignored, so two quick Ctrl+C cannot interrupt the cleanup. A signal
  landing where its exception would be lost or fatal (a weakref callback or ``__del__``, where Python only
  prints it; a VTK observer, where VTK calls ``Py_Exit``) is delivered again once that code has returned;
  an ``atexit`` hook removes what an exit that skips ``finally`` blocks would leave. A run killed outright (SIGKILL, power loss) leaves its staging folder; the next run
  with the same target removes it once its lock is free and its owner process is gone, and puts a previous
  output moved aside by such a run back in place if nothing took its name.

Failures of the file system (no space, permission denied, read-only) become one-line
:class:`~VesselSegLib.errors.OutputFolderError` messages; :func:`describe_os_error` words any other
``OSError`` the same way.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath

from VesselSegLib.errors import OutputFolderError, TerminatedBySignal
from VesselSegLib.io.atomic import default_file_mode

try:
    import fcntl
except ImportError:  # Windows: no flock; stale folders are then left for the user
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
VERSION_KEY = "vesselseg_version"
STAGING_MARK = ".partial-"
REPLACED_MARK = ".replaced-"
# An unlocked staging folder whose owner PID still answers (PID reuse, another PID namespace) is stale
# only once it has not changed for this long.
STALE_AFTER_S = 600.0
# Files an operating system drops into any folder a user opens: not user data, so --force may delete them.
SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".directory"})
_NAME_IN_STAGING = 100  # characters of the target's name kept in the hidden names (file names stop at 255)

__all__ = [
    "OutputFolderError",
    "StagedOutputFolder",
    "TerminatedBySignal",
    "check_output_folder",
    "describe_os_error",
    "discard_uncommitted",
    "previous_output_problem",
    "remove_stale_staging",
    "rename_noreplace",
    "raised_signal",
    "resolve_output_path",
    "SignalsAsExceptions",
    "staged_output_folder",
]


# ----------------------------------------------------------------------------------------------- messages

_OS_ERROR_WORDS = {
    errno.ENOSPC: ("no space left on device", "free space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another --out"),
    errno.EACCES: ("permission denied", "choose a folder you can write to, or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to, or change its permissions"),
    errno.EROFS: ("read-only file system", "choose a folder on a writable disk for --out"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter --out"),
    errno.EIO: ("input/output error", "check the disk, or choose another --out"),
    errno.EPIPE: ("the pipe or terminal it writes to was closed (broken pipe)", "keep it open to the end"),
}
_STAGED_TARGETS: dict[Path, Path] = {}  # staging folder -> target, to word errors with the user's path


def describe_os_error(
    error: OSError, *, action: str | None = None, path: str | os.PathLike | None = None
) -> str:
    """One line for ``error``: ``"cannot write to /x: no space left on device; free space or choose ..."``.

    ``action`` defaults to "write to" for a path in an output being staged (shown as the same path in the
    folder the user asked for) and to "use" for any other; ``path`` defaults to the error's file name.
    """
    reason, advice = _OS_ERROR_WORDS.get(
        error.errno, (error.strerror or str(error) or type(error).__name__, "")
    )
    if error.errno == errno.EPIPE:
        return f"cannot write output: {reason}; {advice}"
    target = path if path is not None else error.filename
    if target is None and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) and _STAGED_TARGETS:
        target = next(reversed(_STAGED_TARGETS.values()))  # the folder being written
    if target is None:
        return reason + (f"; {advice}" if advice else "")
    shown = _user_path(target)
    if action is None:
        ours = {str(out) for out in _STAGED_TARGETS.values()}
        action = "write to" if shown != os.fsdecode(target) or shown in ours else "use"
        if action == "use" and error.errno in (errno.EACCES, errno.EPERM):
            advice = "check its permissions"
    return f"cannot {action} {shown}: {reason}" + (f"; {advice}" if advice else "")


def _user_path(path: str | bytes | os.PathLike) -> str:
    text = os.fsdecode(path)
    for staging, target in _STAGED_TARGETS.items():
        staging_text = str(staging)
        if text == staging_text or text.startswith(staging_text + os.sep):
            return str(target) + text[len(staging_text) :]
    return text


# ------------------------------------------------------------------------------------------------- checks


def resolve_output_path(out: str | os.PathLike) -> Path:
    """``out`` as an absolute path with the links in its parent resolved and its last component kept as given
    (so that a link at ``out`` itself is seen, not followed)."""
    path = Path(out).expanduser()
    if path.name in ("", ".", ".."):
        path = Path(os.path.realpath(path))
    else:
        path = Path(os.path.realpath(path.parent)) / path.name
    if not path.name:
        raise OutputFolderError(f"Output folder {path} is the root of the file system; choose a new folder.")
    return path


def _existing_inputs(inputs: Iterable[str | os.PathLike | None]) -> list[Path]:
    return [Path(p).expanduser() for p in inputs if p is not None and Path(p).expanduser().exists()]


def _input_ids(inputs: Iterable[Path]) -> dict[tuple[int, int], Path]:
    ids = {}
    for path in inputs:
        try:
            info = os.stat(path)
        except OSError:
            continue
        ids[(info.st_dev, info.st_ino)] = path
    return ids


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _input_problem(target: Path, inputs: Sequence[Path]) -> str | None:
    """How ``target`` (which exists) overlaps an input, or None."""
    real_target = Path(os.path.realpath(target))
    for path in inputs:
        try:
            if os.path.samefile(target, path):
                return f"is the input {path}"
        except OSError:
            pass
        if _is_within(Path(os.path.realpath(path)), real_target) or _is_within(
            Path(os.path.abspath(path)), target
        ):
            return f"holds the input {path}"
    return None


def _listed_files(summary: dict) -> set[PurePosixPath]:
    """The relative paths a VesselSeg summary lists under "files" (any nesting of dicts and lists)."""
    listed: set[PurePosixPath] = set()

    def visit(value) -> None:
        if isinstance(value, str) and value:
            relative = PurePosixPath(value.replace("\\", "/"))
            if not relative.is_absolute() and ".." not in relative.parts:
                listed.add(relative)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)

    visit(summary.get("files"))
    return listed


def previous_output_problem(
    folder: str | os.PathLike, *, inputs: Sequence[str | os.PathLike | None] = ()
) -> str | None:
    """Why ``folder`` is not a previous VesselSeg output that ``force`` may replace, or None if it is one.

    A previous output is a real folder (not a link) that is empty, or whose ``summary.json`` is a JSON object
    with ``vesselseg_version`` and which holds only ``summary.json``, the files its ``"files"`` lists, the
    folders on their way, and system files such as ``.DS_Store``; no link, and no input of this run.
    The answer completes "FOLDER ...", e.g. "holds 2 files VesselSeg did not write (notes.txt, a/b.png)".
    """
    folder = Path(folder)
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return "no longer exists"
    except OSError as error:
        return f"cannot be read ({describe_os_error(error, action='read')})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is a file, not a folder"
    try:
        entries = os.listdir(folder)
    except OSError as error:
        return f"cannot be read ({describe_os_error(error, action='read')})"
    if not entries:
        return None
    summary_path = folder / SUMMARY_NAME
    try:
        if not stat.S_ISREG(os.lstat(summary_path).st_mode):
            return f"has a {SUMMARY_NAME} that is not a plain file"
        summary = json.loads(summary_path.read_bytes())
    except FileNotFoundError:
        return f"has no {SUMMARY_NAME}, so it is not a VesselSeg output"
    except (OSError, ValueError):
        return f"has a {SUMMARY_NAME} that cannot be read as JSON, so it is not a VesselSeg output"
    if not isinstance(summary, dict) or VERSION_KEY not in summary:
        return f"has a {SUMMARY_NAME} without {VERSION_KEY!r}, so it is not a VesselSeg output"

    allowed_files = {PurePosixPath(SUMMARY_NAME), *_listed_files(summary)}
    allowed_folders = {
        parent for path in allowed_files for parent in path.parents if parent != PurePosixPath(".")
    }
    input_ids = _input_ids(_existing_inputs(inputs))
    unexpected: list[str] = []

    def walk(directory: Path, relative: PurePosixPath) -> str | None:
        try:
            with os.scandir(directory) as scan:
                children = list(scan)
        except OSError as error:
            return f"cannot be read ({describe_os_error(error, action='read')})"
        for entry in children:
            name = relative / entry.name
            try:
                entry_info = entry.stat(follow_symlinks=False)
            except OSError:
                unexpected.append(str(name))
                continue
            if (entry_info.st_dev, entry_info.st_ino) in input_ids:
                return f"holds the input {input_ids[(entry_info.st_dev, entry_info.st_ino)]}"
            if stat.S_ISDIR(entry_info.st_mode):
                if name in allowed_folders:
                    problem = walk(Path(entry.path), name)
                    if problem:
                        return problem
                else:
                    unexpected.append(f"{name}/")
            elif stat.S_ISREG(entry_info.st_mode) and (name in allowed_files or entry.name in SYSTEM_FILES):
                continue
            else:  # a file it does not list, a link, a socket...
                unexpected.append(str(name))
        return None

    problem = walk(folder, PurePosixPath())
    if problem:
        return problem
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:3]) + (", ..." if len(unexpected) > 3 else "")
        plural = "s" if len(unexpected) > 1 else ""
        return f"holds {len(unexpected)} item{plural} VesselSeg did not write ({shown})"
    return None


def check_output_folder(
    out: str | os.PathLike, *, inputs: Sequence[str | os.PathLike | None] = (), force: bool = False
) -> Path:
    """Check that a run may write ``out``; return it resolved (:func:`resolve_output_path`).

    Raises :class:`OutputFolderError` when the parent folder is missing, when ``out`` is, holds or links to
    an input, is an existing file or a symbolic link, exists without ``force``, or exists with ``force`` but
    is not a previous VesselSeg output (:func:`previous_output_problem`).
    """
    target = resolve_output_path(out)
    parent = target.parent
    if not parent.is_dir():
        if parent.exists():
            raise OutputFolderError(f"The parent of the output folder ({parent}) is a file, not a folder.")
        raise OutputFolderError(f"The parent folder of --out ({parent}) does not exist; create it first.")
    if not os.path.lexists(target):
        return target
    existing_inputs = _existing_inputs(inputs)
    problem = _input_problem(target, existing_inputs)
    if problem:
        raise OutputFolderError(
            f"The output folder {target} {problem}; VesselSeg never writes over or deletes its inputs: "
            "choose a new folder for --out."
        )
    if os.path.islink(target):
        raise OutputFolderError(
            f"The output folder {target} is a symbolic link; VesselSeg neither writes through nor replaces "
            "links: give --out a new folder name."
        )
    if not os.path.isdir(target):
        raise OutputFolderError(
            f"--out {target} is an existing file, not a folder; give --out a new folder name."
        )
    if not force:
        raise OutputFolderError(
            f"Output folder {target} already exists; choose another or pass --force to replace it "
            "(--force replaces only a previous VesselSeg output)."
        )
    problem = previous_output_problem(target, inputs=existing_inputs)
    if problem:
        raise OutputFolderError(
            f"--force replaces only a previous VesselSeg output, and {target} {problem}; nothing was deleted. "
            "Choose another --out, or move those files away yourself."
        )
    return target


# ------------------------------------------------------------------------------------ rename, never replace

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # Linux
_RENAME_EXCL = 0x4  # macOS renamex_np
_NATIVE_UNAVAILABLE = {
    errno.EINVAL,
    errno.ENOSYS,
    errno.EOPNOTSUPP,
    getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
}
_native_rename = None


def _native_noreplace():
    """The C function renaming without replacing, with a uniform (src, dst) -> int call, or None."""
    global _native_rename
    if _native_rename is None:
        function = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
                renameat2 = libc.renameat2
                renameat2.argtypes = [
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_uint,
                ]
                renameat2.restype = ctypes.c_int

                def function(source: bytes, target: bytes) -> int:
                    return renameat2(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_NOREPLACE)

            elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
                renamex_np = libc.renamex_np
                renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
                renamex_np.restype = ctypes.c_int

                def function(source: bytes, target: bytes) -> int:
                    return renamex_np(source, target, _RENAME_EXCL)

        except (OSError, AttributeError, TypeError):
            function = None
        _native_rename = function or False
    return _native_rename or None


def rename_noreplace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename ``source`` to ``target`` atomically, raising ``FileExistsError`` if ``target`` exists in any form
    (folder, even empty; file; link, even dangling) instead of replacing it.

    Linux ``renameat2(RENAME_NOREPLACE)``, macOS ``renamex_np(RENAME_EXCL)``, Windows ``os.rename`` (which
    never replaces). Where those are missing or the file system refuses the flag, a folder is renamed onto an
    empty folder made with an exclusive ``mkdir`` (a rename over a non-empty folder fails), a file is hard
    linked and its old name removed.
    """
    if os.name == "nt":
        os.rename(source, target)
        return
    native = _native_noreplace()
    if native is not None:
        if native(os.fsencode(source), os.fsencode(target)) == 0:
            return
        code = ctypes.get_errno()
        if code not in _NATIVE_UNAVAILABLE:
            raise OSError(code, os.strerror(code), os.fsdecode(source), None, os.fsdecode(target))
    _rename_noreplace_portably(source, target)


def _rename_noreplace_portably(source: str | os.PathLike, target: str | os.PathLike) -> None:
    if not os.path.isdir(source) or os.path.islink(source):
        os.link(source, target, follow_symlinks=False)  # FileExistsError if the name is taken
        os.unlink(source)
        return
    os.mkdir(target)  # FileExistsError if the name is taken: from here on the empty folder is ours
    try:
        os.rename(source, target)  # replaces only an empty folder: ours, unless someone wrote into it
    except OSError as error:
        with suppress(OSError):
            os.rmdir(target)  # only if still empty
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(target)) from None
        raise


# ------------------------------------------------------------------------------------------------ signals

_RAISE, _STOPPING, _DEFER, _IGNORE = "raise", "stopping", "defer", "ignore"
# After a signal has been raised, more signals within this many seconds are ignored (a second quick Ctrl+C
# cannot interrupt the cleanup the first one started); a later one raises again, in case the first exception
# was swallowed by some library.
STOPPING_GRACE_S = 3.0
_CAUGHT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _SignalState:
    depth = 0
    mode = _RAISE
    stopped_at = 0.0
    raised: int | None = None  # the signal last turned into an exception
    pending: list[int] = []
    previous: dict[int, object] = {}
    previous_unraisablehook = None
    requested = 0  # redeliveries asked for
    handled = 0  # the last redelivery whose handler ran


_SIGNALS = _SignalState()


def _signal_exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else TerminatedBySignal(signum)


def _raise_for(signum: int):
    state = _SIGNALS
    state.mode, state.stopped_at, state.raised = _STOPPING, time.monotonic(), signum
    raise _signal_exception(signum)


def raised_signal() -> int | None:
    """The signal that :class:`SignalsAsExceptions` last turned into an exception while entered, or None.

    Some libraries turn the exception into another (an interrupted extension import becomes an
    ``ImportError``): the command line then still reports the cancellation, not a traceback."""
    return _SIGNALS.raised if _SIGNALS.depth else None


_CALLBACK_MODULES = ("vtkmodules", "vtk", "slicer", "mrml")
REDELIVER_AFTER_S = 0.02


def _inside_c_callback(frame) -> bool:
    """Whether Python code called back from C++ is running: a VTK observer ``(caller, event)`` on the stack.

    VTK answers an exception raised there with ``Py_Exit`` ("Caught a Ctrl-C within python, exiting
    program."), which skips every ``finally``; the signal is delivered again once the callback returned."""
    while frame is not None:
        code, names = frame.f_code, frame.f_code.co_varnames
        for first in range(min(2, max(code.co_argcount - 1, 0))):
            caller = frame.f_locals.get(names[first])
            event = frame.f_locals.get(names[first + 1])
            if (
                isinstance(event, str)
                and hasattr(caller, "GetClassName")
                and type(caller).__module__.split(".")[0] in _CALLBACK_MODULES
            ):
                return True
        frame = frame.f_back
    return False


def _send_to_main_thread(signum: int) -> None:
    if hasattr(signal, "pthread_kill"):  # wakes the main thread from a sleep or a blocking call
        signal.pthread_kill(threading.main_thread().ident, signum)
    else:
        signal.raise_signal(signum)


def _redeliver(signum: int) -> None:
    """Send ``signum`` to the main thread again shortly, and again until its handler has run: a signal
    arriving just as the main thread enters a sleep or a blocking call would wait until that call ends."""
    state = _SIGNALS
    state.requested += 1
    ticket = state.requested

    def keep_sending() -> None:
        for _ in range(500):
            time.sleep(REDELIVER_AFTER_S)
            if state.handled >= ticket or state.depth == 0:
                return
            _send_to_main_thread(signum)

    threading.Thread(target=keep_sending, name="vesselseg-signal", daemon=True).start()


def _on_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` while signals are exceptions: the exception raised for a signal landed where
    Python can only print and drop it (a weakref callback, ``__del__``): deliver the signal again instead."""
    state = _SIGNALS
    if (
        state.mode == _STOPPING
        and state.raised is not None
        and isinstance(unraisable.exc_value, KeyboardInterrupt | TerminatedBySignal)
    ):
        state.mode = _RAISE
        _redeliver(state.raised)
        return
    (state.previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def _on_signal(signum: int, frame) -> None:
    state = _SIGNALS
    state.handled = state.requested
    if state.mode == _RAISE or (
        state.mode == _STOPPING and time.monotonic() - state.stopped_at > STOPPING_GRACE_S
    ):
        if _inside_c_callback(frame):
            _redeliver(signum)
            return
        _raise_for(signum)
    elif state.mode == _DEFER:
        state.pending.append(signum)
    # _IGNORE (cleaning up), or _STOPPING within the grace time: the cleanup runs to its end


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class SignalsAsExceptions:
    """While entered (main thread only; re-entrant), SIGINT raises ``KeyboardInterrupt`` and SIGTERM/SIGHUP
    :class:`TerminatedBySignal` in the main thread. Signals arriving within :data:`STOPPING_GRACE_S` of the
    one raised, or while a staging folder is being removed, are ignored, so that the cleanup runs to its end.
    Signals the process ignores (``nohup``, background jobs) stay ignored. The previous handlers are
    restored on the outermost exit. Use as ``with SignalsAsExceptions():`` or with :meth:`enter`/:meth:`exit`."""

    def __init__(self) -> None:
        self._entered = False

    def enter(self) -> SignalsAsExceptions:
        if self._entered or not _in_main_thread():
            return self
        state = _SIGNALS
        if state.depth == 0:
            state.mode, state.pending, state.previous, state.raised = _RAISE, [], {}, None
            state.previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _on_unraisable
            for signum in _CAUGHT_SIGNALS:
                try:
                    current = signal.getsignal(signum)
                    if current is signal.SIG_IGN:
                        continue
                    state.previous[signum] = current
                    signal.signal(signum, _on_signal)
                except (ValueError, OSError):  # not the main interpreter, or not allowed
                    state.previous.pop(signum, None)
        state.depth += 1
        self._entered = True
        return self

    def exit(self, *, ignore_late_signals: bool = False) -> None:
        """Leave; on the outermost exit restore the previous handlers, or, with ``ignore_late_signals`` and
        after a signal was raised, ignore those signals (a process about to exit: a second Ctrl+C must not
        turn its one-line message into a traceback)."""
        if not self._entered:
            return
        self._entered = False
        state = _SIGNALS
        state.depth -= 1
        if state.depth == 0:
            stopping = ignore_late_signals and state.mode == _STOPPING
            for signum, previous in state.previous.items():
                handler = signal.SIG_IGN if stopping else previous if previous is not None else signal.SIG_DFL
                with suppress(ValueError, OSError, TypeError):
                    signal.signal(signum, handler)
            if sys.unraisablehook is _on_unraisable and state.previous_unraisablehook is not None:
                sys.unraisablehook = state.previous_unraisablehook
            state.previous, state.pending, state.mode = {}, [], _RAISE

    def __enter__(self) -> SignalsAsExceptions:
        return self.enter()

    def __exit__(self, *exc_info) -> None:
        self.exit()


@contextmanager
def _signal_mode(mode: str, *, deliver: bool = False) -> Iterator[None]:
    """Defer or ignore the caught signals inside the block; with ``deliver``, a signal deferred meanwhile is
    raised on leaving it (if no signal was raised before)."""
    state = _SIGNALS
    if state.depth == 0 or not _in_main_thread():
        yield
        return
    previous_mode, previous_pending = state.mode, state.pending
    state.mode, state.pending = mode, []
    try:
        yield
    finally:
        pending, state.pending = state.pending, previous_pending
        if state.mode == mode:
            state.mode = previous_mode
        if deliver and pending and state.mode == _RAISE:
            _raise_for(pending[0])


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold the caught signals back inside the block and raise the first one on leaving it.

    For imports of extension modules that register C++ classes (VTK, Slicer's MRML): an exception raised
    while such a module initialises leaves its class tables half-built, and the process later dies with a
    segmentation fault instead of its one-line message (seen: exit -11 after Ctrl+C during ``import vtk``).
    Outside :class:`SignalsAsExceptions` this does nothing."""
    with _signal_mode(_DEFER, deliver=True):
        yield


# ------------------------------------------------------------------------------------------------ locking


def _open_folder(path: str | os.PathLike) -> int:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags)


def _try_lock(fd: int) -> bool | None:
    """Take the exclusive lock on ``fd`` without waiting: True if taken, False if another process holds it,
    None where the file system or platform has no locks."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return True  # no harmless probe (os.kill terminates there)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def _short_name(target: Path) -> str:
    return target.name[:_NAME_IN_STAGING]


_OWNED_SUFFIX = re.compile(r"(\d+)-[A-Za-z0-9_]{8}")  # "<pid>-<tempfile.mkdtemp's 8 random characters>"


def _owner_pid(name: str, head: str) -> int | None:
    """The PID in a staging name VesselSeg made, or None for any other name (never touched)."""
    match = _OWNED_SUFFIX.fullmatch(name[len(head) :])
    return int(match.group(1)) if match else None


def remove_stale_staging(out: str | os.PathLike) -> list[Path]:
    """Remove the staging folders (``.NAME.partial-<pid>-*``) that killed runs left beside ``out``; return them.

    A folder is stale when no process holds its lock and its owner PID is gone (or it has not changed for
    :data:`STALE_AFTER_S`, against PID reuse). A previous output that a killed run had moved aside
    (``.NAME.replaced-*``) is renamed back to ``out`` if nothing took that name, else kept (a warning says
    where). Without file locks (Windows) nothing is touched.
    """
    if fcntl is None:
        return []
    target = resolve_output_path(out)
    parent, short = target.parent, _short_name(target)
    staging_head, replaced_head = f".{short}{STAGING_MARK}", f".{short}{REPLACED_MARK}"
    try:
        names = [n for n in os.listdir(parent) if n.startswith((staging_head, replaced_head))]
    except OSError:
        return []
    removed: list[Path] = []
    for name in sorted(names):
        head = staging_head if name.startswith(staging_head) else replaced_head
        owner = _owner_pid(name, head)
        if owner is None:
            continue  # not a name VesselSeg makes: not ours to judge
        path = parent / name
        try:
            fd = _open_folder(path)
        except OSError:  # gone, a link, a file: not ours to judge
            continue
        try:
            locked = _try_lock(fd)
            if locked is False:
                continue  # a live run
            info, current = os.fstat(fd), os.lstat(path)
            if (info.st_dev, info.st_ino) != (current.st_dev, current.st_ino) or not stat.S_ISDIR(
                info.st_mode
            ):
                continue
            old = time.time() - info.st_mtime > STALE_AFTER_S
            alive = _pid_alive(owner)
            if (alive and not old) or (locked is None and not (old and not alive)):
                continue
            if head == staging_head:
                shutil.rmtree(path, ignore_errors=True)
                if not os.path.lexists(path):
                    removed.append(path)
            elif not os.path.lexists(target):
                try:
                    rename_noreplace(path, target)
                    logger.warning("Put back %s, which an interrupted run had moved to %s.", target, path)
                except OSError:
                    pass
            else:
                logger.warning(
                    "%s holds a previous output of %s that an interrupted run moved aside; delete it if unneeded.",
                    path,
                    target,
                )
        finally:
            os.close(fd)
    return removed


# ----------------------------------------------------------------------------------------- staged folder

_UNCOMMITTED: dict[int, StagedOutputFolder] = {}


def discard_uncommitted() -> None:
    """Remove every staging folder of this process that was neither committed nor discarded (the command
    line's last safety net, e.g. after an exception between staging and the code that would discard it).
    Also run at interpreter exit: a ``sys.exit`` from a C++ callback (VTK exits on Ctrl+C in an observer)
    skips ``finally`` blocks but not ``atexit``."""
    for staged in list(_UNCOMMITTED.values()):
        staged.discard()


atexit.register(discard_uncommitted)


class StagedOutputFolder:
    """A folder written in a hidden staging folder beside ``out`` and renamed into place on :meth:`commit`.

    Parameters
    ----------
    out : path
        The folder to create. Its parent must exist.
    inputs : paths
        Every file the run reads (``None`` entries are skipped): ``out`` may not be, hold or link to one.
    force : bool
        Replace ``out`` if it is a previous VesselSeg output (:func:`previous_output_problem`).
    handle_signals : bool
        While staged, turn SIGINT/SIGTERM/SIGHUP into exceptions (main thread only; see
        :class:`SignalsAsExceptions`), so the staging folder is removed whatever arrives.

    Use :meth:`stage` (returns the staging folder, also at :attr:`path`), write into it, then :meth:`commit`;
    call :meth:`discard` on any exception. Or use :func:`staged_output_folder`.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        inputs: Sequence[str | os.PathLike | None] = (),
        force: bool = False,
        handle_signals: bool = True,
    ) -> None:
        self.out = resolve_output_path(out)
        self.inputs = tuple(Path(p).expanduser() for p in inputs if p is not None)
        self.force = force
        self.path: Path | None = None
        self.committed = False
        self._signals = SignalsAsExceptions() if handle_signals else None
        self._state = "new"
        self._lock_fd: int | None = None
        self._token = ""

    # -- life cycle

    def stage(self) -> Path:
        """Remove stale staging folders (:func:`remove_stale_staging`), check ``out``
        (:func:`check_output_folder`), create and lock the staging folder; return it. Raises
        :class:`OutputFolderError`."""
        if self._state != "new":
            raise RuntimeError("StagedOutputFolder.stage() can only be called once.")
        self._state = "staging"
        if self._signals is not None:
            self._signals.enter()
        try:
            remove_stale_staging(
                self.out
            )  # first: it may put back a previous output a killed run moved aside
            check_output_folder(self.out, inputs=self.inputs, force=self.force)
            with _signal_mode(_DEFER, deliver=True):  # the new folder is known before any signal can stop us
                self._create()
        except BaseException:
            with _signal_mode(_IGNORE):
                self._release(remove=True)
            raise
        return self.path

    def commit(self) -> Path:
        """Rename the staging folder to ``out``, never over anything that appeared there meanwhile; with
        ``force``, swap a previous VesselSeg output out (put back if the swap fails). Returns ``out``.

        Signals arriving during the renames are held back and then dropped: the output is complete. On any
        failure the staging folder is removed and :class:`OutputFolderError` says why.
        """
        if self._state != "staged":
            raise RuntimeError(f"Cannot commit an output folder that is {self._state}.")
        with _signal_mode(_DEFER):
            try:
                self._commit()
            except BaseException:
                with _signal_mode(_IGNORE):
                    self._release(remove=True)
                raise
            self.committed = True
            self._release(remove=False)
        return self.out

    def discard(self) -> None:
        """Remove the staging folder (idempotent; a no-op after :meth:`commit`). Signals are ignored meanwhile."""
        if self._state not in ("staging", "staged"):
            return
        with _signal_mode(_IGNORE):
            self._release(remove=True)

    def __enter__(self) -> Path:
        return self.stage()

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()

    # -- steps

    def _create(self) -> None:
        parent = self.out.parent
        prefix = f".{_short_name(self.out)}{STAGING_MARK}{os.getpid()}-"
        try:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError as error:
            raise OutputFolderError(describe_os_error(error, action="write to", path=parent)) from None
        self.path = path
        self._state = "staged"
        _UNCOMMITTED[id(self)] = self
        _STAGED_TARGETS[path] = self.out
        self._token = path.name[len(prefix) - len(f"{os.getpid()}-") :]  # "<pid>-<random>"
        try:
            os.chmod(path, default_file_mode(directory=True))
        except OSError as error:
            raise OutputFolderError(describe_os_error(error, action="write to", path=parent)) from None
        if fcntl is not None:
            try:
                self._lock_fd = _open_folder(path)
                _try_lock(self._lock_fd)
            except OSError:
                self._lock_fd = None

    def _release(self, *, remove: bool) -> None:
        path = self.path
        try:
            if remove and path is not None and self._state == "staged" and os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                if os.path.lexists(path):
                    logger.warning("Could not remove the partial output %s; delete it yourself.", path)
        finally:
            if self._lock_fd is not None:
                with suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = None
            _UNCOMMITTED.pop(id(self), None)
            self._state = "committed" if self.committed else "discarded"
            if self._signals is not None:
                self._signals.exit()

    def _appeared_message(self) -> str:
        hint = "" if self.force else ", or pass --force to replace a previous VesselSeg output"
        return (
            f"{self.out} appeared while VesselSeg was running; it was left as it is and no output was written. "
            f"Choose another --out{hint}."
        )

    def _commit(self) -> None:
        target = self.out
        replaced = None
        if os.path.lexists(target):
            if not self.force:
                raise OutputFolderError(self._appeared_message())
            check_output_folder(target, inputs=self.inputs, force=True)  # again: it may have changed
            replaced = self._move_aside(target)
        try:
            rename_noreplace(self.path, target)
        except BaseException as error:
            note = self._put_back(replaced) if replaced is not None else ""
            if isinstance(error, FileExistsError) or (
                isinstance(error, OSError) and error.errno in (errno.EEXIST, errno.ENOTEMPTY)
            ):
                raise OutputFolderError(self._appeared_message() + note) from None
            if isinstance(error, OSError):
                raise OutputFolderError(
                    describe_os_error(error, action="create", path=target) + note
                ) from None
            raise
        # Published: from here on nothing may fail. The old output goes to the freed staging name, so a
        # run killed while deleting it leaves an ordinary stale staging folder.
        _STAGED_TARGETS.pop(self.path, None)
        if replaced is not None:
            self._delete_replaced(*replaced)

    def _move_aside(self, target: Path) -> tuple[Path, int | None]:
        aside = target.parent / f".{_short_name(target)}{REPLACED_MARK}{self._token}"
        fd = None
        if fcntl is not None:  # lock it, so that two runs cannot swap the same folder at once
            try:
                fd = _open_folder(target)
            except OSError as error:
                raise OutputFolderError(describe_os_error(error, action="replace", path=target)) from None
        try:
            if fd is not None and _try_lock(fd) is False:
                raise OutputFolderError(
                    f"Another vesselseg run is replacing {target}; wait for it to finish or choose another --out."
                )
            locked = os.fstat(fd) if fd is not None else os.lstat(target)
            try:
                rename_noreplace(target, aside)
            except OSError as error:
                raise OutputFolderError(describe_os_error(error, action="replace", path=target)) from None
            moved = os.lstat(aside)
            problem = None
            if (moved.st_dev, moved.st_ino) != (locked.st_dev, locked.st_ino):
                problem = "was replaced by another folder"
            else:
                problem = previous_output_problem(aside, inputs=self.inputs)
            if problem:
                note = self._put_back((aside, None))
                raise OutputFolderError(
                    f"--force replaces only a previous VesselSeg output, and {target} {problem} while VesselSeg "
                    f"was running; nothing was deleted and no output was written.{note}"
                )
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        return aside, fd

    def _put_back(self, replaced: tuple[Path, int | None]) -> str:
        """Rename the moved-aside previous output back; '' or a sentence saying where it was kept."""
        aside, fd = replaced
        try:
            rename_noreplace(aside, self.out)
            return ""
        except OSError:
            return f" The previous output could not be put back and is kept at {aside}."
        finally:
            if fd is not None:
                os.close(fd)

    def _delete_replaced(self, aside: Path, fd: int | None) -> None:
        try:
            trash = self.path
            try:
                rename_noreplace(aside, trash)
            except OSError:
                trash = aside
            shutil.rmtree(trash, ignore_errors=True)
            if os.path.lexists(trash):
                logger.warning("Could not delete the replaced output, now at %s; delete it yourself.", trash)
        except Exception as error:  # the new output is in place: report, do not fail
            logger.warning("Could not delete the replaced output at %s: %s", aside, error)
        finally:
            if fd is not None:
                os.close(fd)


@contextmanager
def staged_output_folder(
    out: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike | None] = (),
    force: bool = False,
    handle_signals: bool = True,
) -> Iterator[Path]:
    """Yield a staging folder for ``out``; committed when the block ends normally, removed otherwise.

    See :class:`StagedOutputFolder` for the rules (inputs, ``force``, signals)::

        with staged_output_folder(out, inputs=[image, mask], force=force) as folder:
            write_volume(labels, folder / "labels.nii.gz")
            (folder / "summary.json").write_text(...)
    """
    staged = StagedOutputFolder(out, inputs=inputs, force=force, handle_signals=handle_signals)
    path = staged.stage()
    try:
        yield path
        staged.commit()
    except BaseException:
        staged.discard()
        raise
