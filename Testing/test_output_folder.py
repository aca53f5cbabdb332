"""The staged output folder: written whole or not at all, and never at the cost of a file VesselSeg did not
write (``VesselSegLib.io.output_folder``)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from VesselSegLib.io import output_folder
from VesselSegLib.io.atomic import default_file_mode
from VesselSegLib.io.output_folder import (
    OutputFolderError,
    StagedOutputFolder,
    TerminatedBySignal,
    describe_os_error,
    discard_uncommitted,
    previous_output_problem,
    remove_stale_staging,
    rename_noreplace,
    signals_deferred,
    staged_output_folder,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_previous_output(folder: Path) -> Path:
    """A folder as ``vesselseg segment`` leaves it: summary.json listing its files."""
    (folder / "models").mkdir(parents=True)
    (folder / "labels.nii.gz").write_bytes(b"old labels")
    (folder / "models" / "artery.vtk").write_bytes(b"old model")
    summary = {
        "vesselseg_version": "0.1.0",
        "files": {"labels": "labels.nii.gz", "models": {"artery": "models/artery.vtk"}, "probabilities": {}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def tree(path: Path) -> dict[str, bytes | str]:
    """Everything under ``path`` (links as their target), to compare before and after."""
    if path.is_symlink():
        return {".": f"-> {os.readlink(path)}"}
    if path.is_file():
        return {".": path.read_bytes()}
    found: dict[str, bytes | str] = {}
    for item in sorted(path.rglob("*")):
        key = str(item.relative_to(path))
        found[key] = (
            f"-> {os.readlink(item)}" if item.is_symlink() else (item.read_bytes() if item.is_file() else "/")
        )
    return found


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def write_result(folder: Path, text: str = "new") -> None:
    (folder / "labels.nii.gz").write_text(text)
    (folder / "summary.json").write_text(
        json.dumps({"vesselseg_version": "0.1.0", "files": {"labels": "labels.nii.gz"}})
    )


# ------------------------------------------------------------------------------------- whole or nothing


def test_folder_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with staged_output_folder(out) as folder:
        assert folder.parent == tmp_path and folder.name.startswith(".out.partial-")
        write_result(folder)
        assert not out.exists()
    assert (out / "labels.nii.gz").read_text() == "new"
    assert hidden(tmp_path) == []
    assert out.stat().st_mode & 0o777 == default_file_mode(directory=True)  # not tempfile's private 0700


def test_an_exception_leaves_nothing(tmp_path):
    with pytest.raises(OSError), staged_output_folder(tmp_path / "out") as folder:
        write_result(folder)
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "labels.nii.gz"))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- the inputs


def _layouts(tmp_path: Path):
    """(out, inputs) pairs where the output folder is, holds or links to an input."""
    data = tmp_path / "data"
    data.mkdir()
    image, mask = data / "tof.nii.gz", data / "mask.nii.gz"
    image.write_bytes(b"image")
    mask.write_bytes(b"mask")
    (tmp_path / "link-to-data").symlink_to(data)
    previous = write_previous_output(
        tmp_path / "previous"
    )  # a real previous output, whose labels are an input
    return {
        "out is the input": (image, [image, mask]),
        "out holds the inputs": (data, [image, mask]),
        "out holds the mask": (data, [tmp_path / "elsewhere.nii.gz", mask]),
        "out reached through a linked parent": (tmp_path / "link-to-data" / "..", [image]),
        "input reached through a link": (data, [tmp_path / "link-to-data" / "tof.nii.gz"]),
        "out is a link to the input": (_link(tmp_path / "link.nii.gz", image), [image]),
        "previous output holding an input": (previous, [previous / "labels.nii.gz"]),
    }


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


@pytest.mark.parametrize(
    "layout",
    [
        "out is the input",
        "out holds the inputs",
        "out holds the mask",
        "input reached through a link",
        "out is a link to the input",
        "previous output holding an input",
    ],
)
@pytest.mark.parametrize("force", [False, True])
def test_an_input_is_never_the_output(tmp_path, layout, force):
    out, inputs = _layouts(tmp_path)[layout]
    before = tree(tmp_path)
    with pytest.raises(OutputFolderError, match="input") as refused:
        StagedOutputFolder(out, inputs=inputs, force=force).stage()
    assert "\n" not in str(refused.value)
    assert tree(tmp_path) == before


def test_a_linked_parent_is_resolved(tmp_path):
    out, inputs = _layouts(tmp_path)["out reached through a linked parent"]
    before = tree(tmp_path / "data")
    with pytest.raises(OutputFolderError, match="holds the input"):
        StagedOutputFolder(tmp_path / "link-to-data", inputs=inputs, force=True).stage()
    with pytest.raises(OutputFolderError, match="holds the input"):
        StagedOutputFolder(out, inputs=inputs, force=True).stage()
    assert tree(tmp_path / "data") == before


@pytest.mark.parametrize("kind", ["file", "link to a previous output", "dangling link"])
def test_force_never_replaces_a_file_or_a_link(tmp_path, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("mine")
        message = "existing file"
    else:
        target = write_previous_output(tmp_path / "real") if "previous" in kind else tmp_path / "missing"
        out.symlink_to(target)
        message = "symbolic link"
    before = tree(tmp_path)
    with pytest.raises(OutputFolderError, match=message):
        StagedOutputFolder(out, force=True).stage()
    assert tree(tmp_path) == before


# -------------------------------------------------------------------------------------- --force's rule


@pytest.mark.parametrize(
    ("contents", "reason"),
    [
        ({"notes.txt": "mine"}, "has no summary.json"),
        ({"summary.json": "{not json"}, "cannot be read as JSON"),
        ({"summary.json": json.dumps({"patient": "x"})}, "without 'vesselseg_version'"),
        ({"notes.txt": "mine"}, "holds 1 item VesselSeg did not write \\(notes.txt\\)"),
        ({"models/notes.txt": "mine"}, "models/notes.txt"),
        ({"mine/photo.png": "mine"}, "mine/"),
    ],
)
def test_force_replaces_only_a_previous_vesselseg_output(tmp_path, contents, reason):
    out = tmp_path / "out"
    if "summary.json" in contents or reason.startswith("has no"):
        out.mkdir()
    else:
        write_previous_output(out)
    for name, text in contents.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = tree(out)
    with pytest.raises(OutputFolderError, match=f"{out}.*{reason}") as refused:
        StagedOutputFolder(out, force=True).stage()
    assert "--force replaces only a previous VesselSeg output" in str(refused.value)
    assert tree(out) == before and hidden(tmp_path) == []


def test_force_refuses_a_previous_output_holding_a_link(tmp_path):
    out = write_previous_output(tmp_path / "out")
    (out / "data").symlink_to(tmp_path)
    with pytest.raises(OutputFolderError, match="did not write \\(data\\)"):
        StagedOutputFolder(out, force=True).stage()
    assert (out / "data").is_symlink()


@pytest.mark.parametrize("kind", ["previous output", "previous output opened in Finder", "empty folder"])
def test_force_replaces_a_previous_output(tmp_path, kind):
    out = tmp_path / "out"
    if kind == "empty folder":
        out.mkdir()
    else:
        write_previous_output(out)
        if "Finder" in kind:
            (out / ".DS_Store").write_bytes(b"\0")
    with staged_output_folder(out, force=True) as folder:
        write_result(folder)
    assert sorted(tree(out)) == ["labels.nii.gz", "summary.json"]
    assert (out / "labels.nii.gz").read_text() == "new"
    assert hidden(tmp_path) == []


def test_existing_folder_without_force_and_missing_parent(tmp_path):
    out = write_previous_output(tmp_path / "out")
    with pytest.raises(OutputFolderError, match="already exists; choose another or pass --force"):
        StagedOutputFolder(out).stage()
    with pytest.raises(OutputFolderError, match="does not exist; create it first"):
        StagedOutputFolder(tmp_path / "no" / "out").stage()
    assert previous_output_problem(out) is None


# ------------------------------------------------------------------------------- the commit never replaces


def _make(kind: str, path: Path) -> None:
    if kind == "user folder":
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    elif kind == "empty folder":
        path.mkdir()
    elif kind == "file":
        path.write_text("mine")
    else:
        path.symlink_to(path.parent / "elsewhere")


@pytest.mark.parametrize(
    ("kind", "force"),
    [(kind, False) for kind in ("user folder", "empty folder", "file", "link")]
    + [(kind, True) for kind in ("user folder", "file", "link")],  # --force may replace an empty folder
)
def test_something_appearing_at_out_during_the_run_is_kept(tmp_path, kind, force):
    out = tmp_path / "out"
    with pytest.raises(OutputFolderError) as refused, staged_output_folder(out, force=force) as folder:
        write_result(folder)
        _make(kind, out)
        before = tree(out)
    message = str(refused.value)
    assert str(out) in message and "\n" not in message
    if not force:
        assert "appeared while VesselSeg was running" in message
    else:
        expected = {"user folder": "--force replaces only", "file": "existing file", "link": "symbolic link"}
        assert expected[kind] in message
    assert tree(out) == before
    assert hidden(tmp_path) == []


def test_a_file_added_to_the_previous_output_during_the_run_is_kept(tmp_path):
    out = write_previous_output(tmp_path / "out")
    with pytest.raises(OutputFolderError, match="notes.txt"), staged_output_folder(out, force=True) as folder:
        write_result(folder)
        (out / "notes.txt").write_text("written while it ran")
        before = tree(out)
    assert tree(out) == before and hidden(tmp_path) == []


def test_a_failed_swap_puts_the_previous_output_back(tmp_path, monkeypatch):
    out = write_previous_output(tmp_path / "out")
    before = tree(out)
    original = output_folder.rename_noreplace

    def failing_rename(source, target):
        if Path(source).name.startswith(".out.partial-") and Path(target) == out:
            raise OSError(errno.EIO, "Input/output error", str(target))
        original(source, target)

    monkeypatch.setattr(output_folder, "rename_noreplace", failing_rename)
    refused = pytest.raises(OutputFolderError, match="cannot create .*out: input/output error")
    with refused, staged_output_folder(out, force=True) as folder:
        write_result(folder)
    assert tree(out) == before and hidden(tmp_path) == []


def test_a_folder_taking_the_name_during_the_swap_is_kept_and_so_is_the_previous_output(
    tmp_path, monkeypatch
):
    out = write_previous_output(tmp_path / "out")
    before = tree(out)
    original = output_folder.rename_noreplace

    def racing_rename(source, target):
        if Path(source).name.startswith(".out.partial-") and Path(target) == out:
            _make("user folder", out)  # another program, between the two renames
        original(source, target)

    monkeypatch.setattr(output_folder, "rename_noreplace", racing_rename)
    with (
        pytest.raises(OutputFolderError, match="appeared while .* kept at") as refused,
        staged_output_folder(out, force=True) as folder,
    ):
        write_result(folder)
    assert tree(out) == {"keep.txt": b"mine"}
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.replaced-")]
    assert str(kept) in str(refused.value) and tree(kept) == before


@pytest.mark.parametrize("implementation", ["native", "portable"])
@pytest.mark.parametrize("kind", ["user folder", "empty folder", "file", "link"])
def test_rename_noreplace_refuses_every_existing_target(tmp_path, implementation, kind):
    rename = rename_noreplace if implementation == "native" else output_folder._rename_noreplace_portably
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    (source / "a").write_text("a")
    _make(kind, target)
    before = tree(tmp_path)
    with pytest.raises(FileExistsError):
        rename(source, target)
    assert tree(tmp_path) == before
    fresh = tmp_path / "fresh"
    rename(source, fresh)
    assert (fresh / "a").read_text() == "a" and not source.exists()


# ----------------------------------------------------------------------------------------- file systems


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on device; free space or choose another --out"),
        (errno.EACCES, "permission denied; choose a folder you can write to"),
        (errno.EROFS, "read-only file system"),
    ],
)
def test_file_system_failures_are_one_line(tmp_path, monkeypatch, code, words):
    def failing_mkdtemp(**kwargs):
        raise OSError(code, os.strerror(code), kwargs.get("dir"))

    monkeypatch.setattr(output_folder.tempfile, "mkdtemp", failing_mkdtemp)
    with pytest.raises(OutputFolderError) as refused:
        StagedOutputFolder(tmp_path / "out").stage()
    assert str(refused.value).startswith(f"cannot write to {tmp_path}: {words}")
    assert list(tmp_path.iterdir()) == []


def test_errors_inside_the_staging_folder_name_the_users_folder(tmp_path):
    out = tmp_path / "out"
    staged = StagedOutputFolder(out)
    folder = staged.stage()
    try:
        full = OSError(errno.ENOSPC, "No space left on device", str(folder / "labels.nii.gz"))
        assert describe_os_error(full) == (
            f"cannot write to {out / 'labels.nii.gz'}: no space left on device; free space or choose another --out"
        )
        unreadable = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "tof.nii.gz"))
        assert describe_os_error(unreadable) == (
            f"cannot use {tmp_path / 'tof.nii.gz'}: permission denied; check its permissions"
        )
    finally:
        staged.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_parent_is_one_line(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(OutputFolderError, match="cannot write to .*locked: permission denied"):
            StagedOutputFolder(parent / "out").stage()
    finally:
        parent.chmod(0o755)


# ------------------------------------------------------------------------------------------------ signals


@pytest.mark.parametrize(
    ("signum", "expected", "code"),
    [(signal.SIGINT, KeyboardInterrupt, None), (signal.SIGTERM, TerminatedBySignal, 143)]
    + ([(signal.SIGHUP, TerminatedBySignal, 129)] if hasattr(signal, "SIGHUP") else []),
)
def test_a_signal_while_staged_removes_the_staging_folder(tmp_path, signum, expected, code):
    previous = signal.getsignal(signum)
    with pytest.raises(expected) as stopped, staged_output_folder(tmp_path / "out") as folder:
        write_result(folder)
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises here
    if code is not None:
        assert stopped.value.code == code
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signum) is previous


def test_a_second_ctrl_c_during_cleanup_is_ignored(tmp_path, monkeypatch):
    real_rmtree = output_folder.shutil.rmtree

    def impatient_rmtree(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl+C again
        time.sleep(0.05)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(output_folder.shutil, "rmtree", impatient_rmtree)
    with pytest.raises(KeyboardInterrupt), staged_output_folder(tmp_path / "out") as folder:
        write_result(folder)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert list(tmp_path.iterdir()) == []


def test_a_swallowed_ctrl_c_does_not_disable_the_next(tmp_path, monkeypatch):
    monkeypatch.setattr(output_folder, "STOPPING_GRACE_S", 0.0)
    with pytest.raises(KeyboardInterrupt), staged_output_folder(tmp_path / "out") as folder:
        write_result(folder)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass  # some library swallows it
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl+C again
        time.sleep(5)
    assert list(tmp_path.iterdir()) == []


class FakeVtkObject:
    """Looks like a VTK object to the signal handler."""

    __module__ = "vtkmodules.vtkCommonCore"

    def GetClassName(self):  # noqa: N802 (VTK's name)
        return "vtkObject"


def test_a_signal_inside_a_vtk_observer_waits_until_it_returns(tmp_path):
    """VTK exits the process (skipping every finally) on an exception in an observer: raise after it."""
    returned = []

    def observer(caller, event):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, inside the "callback"
        returned.append(event)

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), staged_output_folder(tmp_path / "out") as folder:
        write_result(folder)
        observer(FakeVtkObject(), "NodeAddedEvent")
        time.sleep(5)  # redelivered here
    assert returned == ["NodeAddedEvent"] and time.monotonic() - started < 3
    assert list(tmp_path.iterdir()) == []


def test_a_signal_landing_in_a_weakref_callback_is_delivered_again(tmp_path):
    """Python prints and drops an exception raised in a weakref callback ("Exception ignored in ...")."""
    import gc
    import weakref

    class Thing:
        pass

    def callback(reference):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside the callback

    started = time.monotonic()
    stopped = None
    try:
        with staged_output_folder(tmp_path / "out") as folder:
            write_result(folder)
            thing = Thing()
            reference = weakref.ref(thing, callback)
            del thing
            gc.collect()
            time.sleep(5)  # delivered again here
    except TerminatedBySignal as error:
        stopped = error
    assert stopped is not None and stopped.code == 143
    assert reference() is None and time.monotonic() - started < 3
    assert list(tmp_path.iterdir()) == []


def test_a_signal_inside_signals_deferred_is_raised_when_the_block_ends(tmp_path):
    """An import of VTK's extension modules must run to its end (interrupted, the process segfaults later)."""
    finished = []
    with pytest.raises(KeyboardInterrupt), staged_output_folder(tmp_path / "out") as folder:
        write_result(folder)
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here and holds the signal back
            finished.append("import")
        finished.append("after the block")  # not reached: raised on leaving the block
    assert finished == ["import"]
    assert list(tmp_path.iterdir()) == []


def test_signals_deferred_outside_a_run_leaves_python_s_handler_alone():
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # Python's default handler raises here


def test_a_signal_during_the_commit_lets_it_finish(tmp_path, monkeypatch):
    original = output_folder.rename_noreplace

    def interrupted_rename(source, target):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        original(source, target)

    monkeypatch.setattr(output_folder, "rename_noreplace", interrupted_rename)
    with staged_output_folder(tmp_path / "out") as folder:
        write_result(folder)
    assert (tmp_path / "out" / "labels.nii.gz").read_text() == "new" and hidden(tmp_path) == []


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signal")
def test_ignored_signals_stay_ignored(tmp_path):
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with staged_output_folder(tmp_path / "out") as folder:
            write_result(folder)
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
        assert (tmp_path / "out").is_dir()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_discard_uncommitted_is_the_last_safety_net(tmp_path):
    staged = StagedOutputFolder(tmp_path / "out")
    staged.stage()
    assert hidden(tmp_path) != []
    discard_uncommitted()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        staged.commit()


# ---------------------------------------------------------------------------------------- killed runs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(output_folder.fcntl is None, reason="needs flock")
def test_staging_folders_of_killed_runs_are_removed_and_only_those(tmp_path):
    out = tmp_path / "out"
    dead = _dead_pid()
    stale = tmp_path / f".out.partial-{dead}-abcd1234"
    stale.mkdir()
    (stale / "labels.nii.gz").write_text("partial")
    locked = tmp_path / f".out.partial-{dead}-locked12"  # its PID is gone but a process still holds the lock
    locked.mkdir()
    held = os.open(locked, os.O_RDONLY)
    import fcntl

    fcntl.flock(held, fcntl.LOCK_EX)
    mine = tmp_path / ".out.partial-notes"  # not a name VesselSeg makes
    mine.mkdir()
    other = tmp_path / f".other.partial-{dead}-abcd1234"  # another output's
    other.mkdir()
    # A previous output that a run killed while swapping it had moved aside: put back.
    write_previous_output(tmp_path / f".out.replaced-{dead}-abcd1234")
    try:
        with staged_output_folder(out, force=True) as folder:
            write_result(folder)
    finally:
        os.close(held)
    assert not stale.exists()
    assert locked.exists() and mine.exists() and other.exists()
    assert (out / "labels.nii.gz").read_text() == "new"  # the put-back previous output, then replaced
    assert sorted(hidden(tmp_path)) == sorted([locked.name, mine.name, other.name])
    assert remove_stale_staging(out) == [locked]


def test_an_exit_that_skips_finally_blocks_still_cleans_up(tmp_path):
    """VTK answers Ctrl+C in a Python observer with Py_Exit: no finally block runs, atexit does."""
    script = (
        "import sys\n"
        "from VesselSegLib.io.output_folder import StagedOutputFolder\n"
        "folder = StagedOutputFolder(sys.argv[1]).stage()\n"
        "(folder / 'labels.nii.gz').write_text('partial')\n"
        "sys.exit(3)\n"
    )
    exited = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], cwd=REPO_ROOT, timeout=120)
    assert exited.returncode == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(output_folder.fcntl is None or not hasattr(signal, "SIGKILL"), reason="needs flock")
def test_a_killed_process_leaves_a_folder_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    script = (
        "import os, signal, sys\n"
        "from VesselSegLib.io.output_folder import StagedOutputFolder\n"
        "folder = StagedOutputFolder(sys.argv[1]).stage()\n"
        "(folder / 'labels.nii.gz').write_text('partial')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO_ROOT, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert len(hidden(tmp_path)) == 1
    with staged_output_folder(out) as folder:
        write_result(folder)
    assert hidden(tmp_path) == [] and (out / "labels.nii.gz").read_text() == "new"
