"""``vesselseg`` as users run it, in separate processes: it never loses their data, whatever they type and
whatever signal arrives. The output folder is written whole or not at all, inputs and folders VesselSeg
did not write are never deleted or replaced, and every failure is one line, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = Path(sys.executable).with_name("vesselseg")
FAST = ["--method", "frangi", "--no-models"]
POSIX_SIGNALS = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


def vesselseg_command(*args: str | Path) -> list[str]:
    """The installed ``vesselseg`` script (as a user runs it), or the module where it is not installed."""
    prefix = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "VesselSegLib.cli.main"]
    return prefix + [str(a) for a in args]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def run(*args: str | Path, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        vesselseg_command(*args),
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def start(*args: str | Path, cwd: Path, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(vesselseg_command(*args), cwd=cwd, env=environment(), **kwargs)


def write_volume(path: Path, shape=(16, 32, 32)) -> Path:
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 100).astype(np.float32)
    image[:, shape[1] // 2 - 2 : shape[1] // 2 + 2, :] += 400  # a bright slab Frangi finds
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    return path


def write_mask(path: Path, shape=(16, 32, 32)) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.ones(shape, np.uint8)), str(path))
    return path


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name)


def one_error_line(stderr: str, starting: str = "vesselseg: error:") -> str:
    """The last line of stderr, checked to be the one-line message (the progress bar may precede it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("vesselseg:")]
    lines = [line for line in lines if "WARNING" not in line]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(starting), stderr[-3000:]
    return lines[0]


def wait_for_staging(process: subprocess.Popen, parent: Path, timeout: float = 120) -> Path:
    """Poll ``parent`` until the run's hidden staging folder appears; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in parent.iterdir() if ".partial-" in p.name]
        if found:
            return found[0]
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended (code {process.returncode}) before staging: {err[-2000:]!r}")
        time.sleep(0.005)
    process.kill()
    pytest.fail("no staging folder appeared")


@pytest.fixture
def slow_input(tmp_path) -> Path:
    """A volume whose segmentation takes seconds, so that a run can be interrupted."""
    return write_volume(tmp_path / "slow.nii.gz", shape=(48, 128, 128))


# --------------------------------------------------------------------------------------- inputs are kept


def test_force_never_deletes_the_inputs_of_segment(tmp_path):
    x = tmp_path / "x"
    x.mkdir()
    image, mask = write_volume(x / "tof.nii.gz"), write_mask(x / "mask.nii.gz")
    before = contents(x)
    completed = run("segment", image, "--mask", mask, "--out", x, "--force", *FAST, "--quiet", cwd=tmp_path)
    assert completed.returncode == 1
    assert "holds the input" in one_error_line(completed.stderr)
    assert contents(x) == before and leftovers(tmp_path) == []


def test_force_never_deletes_the_input_of_stream(tmp_path):
    x = tmp_path / "x"
    x.mkdir()
    np.save(x / "stack.npy", np.zeros((8, 32, 32), np.uint16))
    before = contents(x)
    arguments = ["--method", "unet3d-baseline", "--spacing", "0.5", "0.5", "1", "--device", "cpu"]
    completed = run("stream", x / "stack.npy", "--out", x, "--force", *arguments, "--quiet", cwd=tmp_path)
    assert completed.returncode == 1
    assert "holds the input" in one_error_line(completed.stderr)
    assert contents(x) == before and leftovers(tmp_path) == []


def _previous_output(tmp_path: Path) -> Path:
    previous = tmp_path / "previous"
    completed = run(
        "segment", write_volume(tmp_path / "tof.nii.gz"), "--out", previous, *FAST, "--quiet", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return previous


def test_refusals_are_one_line_and_change_nothing(tmp_path):
    previous = _previous_output(tmp_path)
    image = tmp_path / "tof.nii.gz"
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (tmp_path / "link").symlink_to(previous)
    cases = [
        (["--out", notes, "--force"], "is an existing file, not a folder"),
        (["--out", image, "--force"], "is the input"),
        (["--out", tmp_path / "link", "--force"], "is a symbolic link"),
        (["--out", mine, "--force"], "--force replaces only a previous VesselSeg output"),
        (["--out", mine], "already exists"),
        (["--out", tmp_path / "missing" / "out"], "does not exist; create it first"),
        (["--out", tmp_path, "--force"], "holds the input"),
        (["--out", previous, "--reference", previous / "labels.nii.gz", "--force"], "holds the input"),
    ]
    before = contents(tmp_path)
    for arguments, message in cases:
        completed = run("segment", image, *arguments, *FAST, "--quiet", cwd=tmp_path)
        assert completed.returncode == 1, (arguments, completed.stderr[-2000:])
        assert message in one_error_line(completed.stderr), arguments
    assert contents(tmp_path) == before and leftovers(tmp_path) == []
    assert (tmp_path / "link").is_symlink()


def test_force_replaces_a_previous_output(tmp_path):
    previous = _previous_output(tmp_path)
    old_summary = (previous / "summary.json").read_text()
    completed = run(
        "segment", tmp_path / "tof.nii.gz", "--out", previous, "--force", *FAST, "--quiet", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (previous / "summary.json").read_text() != old_summary  # new run times
    assert json.loads((previous / "summary.json").read_text())["method"] == "frangi"
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_an_unwritable_parent_is_one_line(tmp_path):
    image = write_volume(tmp_path / "tof.nii.gz")
    parent = tmp_path / "locked"
    parent.mkdir()
    if os.geteuid() != 0:
        parent.chmod(0o555)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", parent]).returncode != 0:
        pytest.skip("root writes anywhere, and chattr +i is not available")
    try:
        completed = run("segment", image, "--out", parent / "out", *FAST, "--quiet", cwd=tmp_path)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", parent])
        parent.chmod(0o755)
    assert completed.returncode == 1
    line = one_error_line(completed.stderr)
    assert f"cannot write to {parent}: " in line and ("permission denied" in line or "not permitted" in line)
    assert list(parent.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="mounts a tiny tmpfs (Linux, root)")
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, slow_input):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", disk], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        completed = run("segment", slow_input, "--out", disk / "out", *FAST, "--quiet", cwd=tmp_path)
        left = sorted(p.name for p in disk.iterdir())
    finally:
        subprocess.run(["umount", disk])
    assert completed.returncode == 1
    assert "no space left on device; free space or choose another --out" in one_error_line(completed.stderr)
    assert left == []


# ------------------------------------------------------------------------------ nothing replaced, ever


def test_a_second_run_does_not_replace_the_first(tmp_path):
    previous = _previous_output(tmp_path)
    before = contents(previous)
    completed = run("segment", tmp_path / "tof.nii.gz", "--out", previous, *FAST, "--quiet", cwd=tmp_path)
    assert completed.returncode == 1
    assert "already exists" in one_error_line(completed.stderr)
    assert contents(previous) == before


@POSIX_SIGNALS
def test_a_folder_appearing_at_out_during_the_run_is_kept(tmp_path, slow_input):
    out = tmp_path / "out"
    process = start("segment", slow_input, "--out", out, *FAST, cwd=tmp_path, text=True)
    wait_for_staging(process, tmp_path)
    out.mkdir()  # another program, or a second run finishing first
    (out / "keep.txt").write_text("mine")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    assert "appeared while VesselSeg was running" in one_error_line(stderr)
    assert contents(out) == {"keep.txt": b"mine"} and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- signals


@POSIX_SIGNALS
@pytest.mark.parametrize(
    ("signals", "delay", "code", "message"),
    [
        ([signal.SIGINT], 0, 130, "vesselseg: cancelled; no output written."),
        ([signal.SIGINT, signal.SIGINT], 0, 130, "vesselseg: cancelled; no output written."),
        ([signal.SIGTERM], 0, 143, "vesselseg: stopped by SIGTERM; no output written."),
        ([getattr(signal, "SIGHUP", 1)], 0, 129, "vesselseg: stopped by SIGHUP; no output written."),
        ([signal.SIGINT, signal.SIGINT], 1.0, 130, "vesselseg: cancelled; no output written."),
    ],
    ids=["SIGINT", "two quick SIGINT", "SIGTERM", "SIGHUP", "two quick SIGINT mid-run"],
)
def test_a_signal_in_the_run_leaves_nothing(tmp_path, slow_input, signals, delay, code, message):
    out = tmp_path / "out"
    process = start("segment", slow_input, "--out", out, *FAST, cwd=tmp_path, text=True)  # progress bar on
    wait_for_staging(process, tmp_path)
    time.sleep(delay)
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.002)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr[-2000:]
    assert one_error_line(stderr, starting="vesselseg:") == message
    assert not out.exists() and leftovers(tmp_path) == []


@POSIX_SIGNALS
def test_a_closed_stderr_leaves_a_whole_output_or_nothing(tmp_path, slow_input):
    out = tmp_path / "out"
    process = start("segment", slow_input, "--out", out, *FAST, cwd=tmp_path)  # the bar writes to a pipe
    wait_for_staging(process, tmp_path)
    process.stderr.close()  # the terminal or the reading end goes away
    process.stdout.read()
    process.wait(timeout=300)
    assert leftovers(tmp_path) == []
    if process.returncode == 0:
        assert (out / "summary.json").is_file()
    else:
        assert process.returncode == 1 and not out.exists()


@POSIX_SIGNALS
def test_no_stderr_at_all_still_writes_the_output(tmp_path):
    image = write_volume(tmp_path / "tof.nii.gz")
    command = " ".join(
        f"'{a}'" for a in vesselseg_command("segment", image, "--out", tmp_path / "out", *FAST)
    )
    completed = subprocess.run(f"{command} 2>&-", shell=True, cwd=tmp_path, env=environment(), timeout=300)
    assert completed.returncode == 0
    assert (tmp_path / "out" / "summary.json").is_file() and leftovers(tmp_path) == []


@POSIX_SIGNALS
def test_a_killed_run_is_cleaned_up_by_the_next(tmp_path, slow_input):
    out = tmp_path / "out"
    process = start("segment", slow_input, "--out", out, *FAST, cwd=tmp_path)
    staging = wait_for_staging(process, tmp_path)
    process.kill()  # SIGKILL: nothing can clean up
    process.communicate(timeout=60)
    assert staging.exists()
    completed = run(
        "segment", write_volume(tmp_path / "tof.nii.gz"), "--out", out, *FAST, "--quiet", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert leftovers(tmp_path) == [] and (out / "summary.json").is_file()


INTERRUPT_AT_IMPORT = """
import os, signal, sys, time

class CtrlCAtImport:
    def find_spec(self, name, path=None, target=None):
        module, _, converted = sys.argv[1].partition(":")
        if name == module:
            sys.meta_path.remove(self)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # Ctrl+C lands while the module is being imported
            except KeyboardInterrupt:
                if converted:  # as VTK-wrapped extension modules do: "ImportError: Failed to load ..."
                    raise ImportError(f"Failed to load {name}") from None
                raise
        return None

sys.meta_path.insert(0, CtrlCAtImport())
from VesselSegLib.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@POSIX_SIGNALS
@pytest.mark.parametrize("module", ["SimpleITK", "torch", "VesselSegLib.mrml.logic", "slicer:ImportError"])
def test_ctrl_c_during_the_imports_is_one_line(tmp_path, module):
    image = write_volume(tmp_path / "tof.nii.gz")
    arguments = ["segment", str(image), "--out", str(tmp_path / "out"), *FAST]
    completed = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT_IMPORT, module, *arguments],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 130, completed.stderr[-2000:]
    assert (
        one_error_line(completed.stderr, starting="vesselseg:") == "vesselseg: cancelled; no output written."
    )
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
